"""Likelihood metrics: importance-weighted log-likelihood bounds (Burda et al., 2016),
NLL in nats and bits per dimension."""

from __future__ import annotations

import math

import torch

from genlab.seed import make_generator


def iw_log_likelihood(log_w: torch.Tensor) -> torch.Tensor:
    """log (1/k) sum_i exp(log_w_i) over dim 0: (k, B) -> (B,). A lower bound on log p(x)
    that tightens as k grows; k = 1 gives the ELBO."""
    return torch.logsumexp(log_w.double(), dim=0) - math.log(log_w.shape[0])


def bits_per_dim(nll_nats: float, dims: int) -> float:
    """Convert a per-example NLL in nats to bits per dimension."""
    return nll_nats / (dims * math.log(2))


@torch.no_grad()
def iw_nll(model, x: torch.Tensor, y: torch.Tensor | None = None, *, k: int = 1000, seed: int = 0,
           batch_size: int = 100, k_chunk: int = 250) -> torch.Tensor:
    """Per-example importance-weighted NLL in nats, (N,), float64.

    `model` provides iw_log_weights(x, y, k, generator) -> (k, B) (see genlab.models.vae);
    the k samples are drawn in chunks of `k_chunk` to bound memory."""
    g = make_generator(seed)
    out = []
    was_training = model.training
    model.eval()
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        yb = None if y is None else y[i:i + batch_size]
        parts = []
        for j in range(0, k, k_chunk):
            parts.append(model.iw_log_weights(xb, yb, min(k_chunk, k - j), g).double())
        out.append(-iw_log_likelihood(torch.cat(parts)))
    model.train(was_training)
    return torch.cat(out)
