"""Linear probe: how much of the class a frozen representation makes linearly readable.

A multinomial logistic regression fitted on the features of a few labelled images (full batch,
L-BFGS, a little L2 on the weights, features standardised with the labelled set's statistics)
and scored by its accuracy on held-out features. Everything is deterministic: the fit starts
from zeros, and the labelled images are a class-balanced choice fixed by a seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from genlab.errors import ConfigError

L2 = 1e-3  # weight penalty (lambda / 2 * ||W||^2 beside the mean cross-entropy)
MAX_ITER = 500


@dataclass
class LinearProbe:
    """A fitted probe: standardisation (mean, std of the training features) and the linear map."""

    mean: torch.Tensor  # (D,)
    std: torch.Tensor  # (D,)
    weight: torch.Tensor  # (K, D)
    bias: torch.Tensor  # (K,)

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        """(N, D) features -> (N, K) class logits."""
        z = (feats.double() - self.mean) / self.std
        return z @ self.weight.T + self.bias

    def accuracy(self, feats: torch.Tensor, labels: torch.Tensor) -> float:
        """Fraction of `labels` (N,) the probe gets right from `feats` (N, D)."""
        return (self.logits(feats).argmax(1) == labels.to(self.weight.device)).double().mean().item()


def balanced_subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Indices (sorted) of n examples, n // K of each of the K classes present and one more for
    the first n % K classes, a random choice fixed by `seed`. ConfigError when n < K or a class
    has too few examples."""
    classes = torch.unique(labels)
    k = len(classes)
    if n < k:
        raise ConfigError(f"a linear probe needs at least one labelled image per class: {k} classes, asked {n}")
    from genlab.data.datasets import pick_per_class

    want = {c: n // k + (1 if i < n % k else 0) for i, c in enumerate(classes.tolist())}
    return pick_per_class(labels, want, torch.Generator().manual_seed(seed), lambda c, w, have: ConfigError(
        f"a linear probe with {n} labels takes {w} images of class {c}, which has only {have}; ask for fewer labels"))


def fit_linear_probe(feats: torch.Tensor, labels: torch.Tensor, num_classes: int, *, l2: float = L2,
                     max_iter: int = MAX_ITER) -> LinearProbe:
    """Multinomial logistic regression on (N, D) features and (N,) labels in 0..num_classes-1:
    minimises mean cross-entropy + l2 / 2 * ||W||^2 (bias not penalised) with L-BFGS in float64
    from zeros (so the same inputs give the same probe). Features are standardised by their
    mean and std over these N examples (constant features stay 0)."""
    x = feats.detach().double()
    y = labels.long().to(x.device)
    mean = x.mean(0)
    std = x.std(0, unbiased=False).clamp(min=1e-8)
    z = (x - mean) / std  # (N, D)
    W = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, device=x.device, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ W.T + b, y) + 0.5 * l2 * W.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return LinearProbe(mean, std, W.detach(), b.detach())
