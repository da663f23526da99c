"""Likelihood metrics: importance-weighted log-likelihood bounds (Burda et al., 2016),
NLL in nats and bits per dimension, and the discretised Gaussian that turns a continuous
decoder into a probability of 8-bit pixels (Kingma et al., 2016; Salimans et al., 2017)."""

from __future__ import annotations

import math

import torch

from genlab.seed import make_generator


def iw_log_likelihood(log_w: torch.Tensor) -> torch.Tensor:
    """log (1/k) sum_i exp(log_w_i) over dim 0: (k, B) -> (B,). A lower bound on log p(x)
    that tightens as k grows; k = 1 gives the ELBO."""
    return torch.logsumexp(log_w.double(), dim=0) - math.log(log_w.shape[0])


def discretized_gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor,
                                  low: float | torch.Tensor, high: float | torch.Tensor,
                                  levels: int = 256) -> torch.Tensor:
    """log P(x) of pixels under N(mean, exp(log_scale)^2) integrated over each pixel's bin, elementwise.

    Args:
        x: pixels in model space, (B, C, H, W); each is one of `levels` evenly spaced values from
            `low` (pixel 0) to `high` (pixel 255), as the data normalisation maps them.
        mean, log_scale: the Gaussian's parameters, broadcastable to x.
        low, high: model-space values of the first and last level, floats or (1, C, 1, 1).
    Returns:
        (B, C, H, W) log-probabilities <= 0. A level owns the bin of width (high - low) / (levels - 1)
        centred on it; the first and last bins reach to -inf and +inf, so the levels' probabilities
        sum to 1 and -sum(log P) / (D ln 2) is bits per dimension of 8-bit images.
    """
    half = (high - low) / (2 * (levels - 1))
    inv_scale = torch.exp(-log_scale)
    a = torch.where(x < low + half, -math.inf, (x - half - mean) * inv_scale)  # (B, C, H, W)
    b = torch.where(x > high - half, math.inf, (x + half - mean) * inv_scale)
    return _log_normal_mass(a, b)


def _log_normal_mass(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(Phi(b) - Phi(a)) for a < b, accurate in both tails: the upper tail is mirrored to
    the lower one (Phi(b) - Phi(a) = Phi(-a) - Phi(-b)), where log_ndtr keeps its precision."""
    flip = (a + b) > 0
    lo, hi = torch.where(flip, -b, a), torch.where(flip, -a, b)
    log_hi = torch.special.log_ndtr(hi)
    return log_hi + torch.log(-torch.expm1(torch.special.log_ndtr(lo) - log_hi))


def bits_per_dim(nll_nats: float, dims: int) -> float:
    """Convert a per-example NLL in nats to bits per dimension."""
    return nll_nats / (dims * math.log(2))


@torch.no_grad()
def iw_nll(model, x: torch.Tensor, y: torch.Tensor | None = None, *, k: int = 1000, seed: int = 0,
           batch_size: int = 100, k_chunk: int = 250, pixel_range: tuple | None = None) -> torch.Tensor:
    """Per-example importance-weighted NLL in nats, (N,), float64.

    `model` provides iw_log_weights(x, y, k, generator, pixel_range) -> (k, B) (see genlab.models.vae);
    the k samples are drawn in chunks of `k_chunk` to bound memory. `pixel_range`: model-space
    values (low, high) of pixels 0 and 255, which a continuous (Gaussian) decoder needs to give
    probabilities of 8-bit images rather than densities."""
    g = make_generator(seed)
    out = []
    was_training = model.training
    model.eval()
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        yb = None if y is None else y[i:i + batch_size]
        parts = []
        for j in range(0, k, k_chunk):
            parts.append(model.iw_log_weights(xb, yb, min(k_chunk, k - j), g, pixel_range).double())
        out.append(-iw_log_likelihood(torch.cat(parts)))
    model.train(was_training)
    return torch.cat(out)
