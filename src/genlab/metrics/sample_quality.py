"""Sample-quality metrics computed on extractor features: FID, KID, precision/recall, IS.

`FeatureSet` is the accumulator (update / compute / reset): it keeps float64 sums for the
mean and covariance, and the features themselves for the kernel and k-NN metrics. The
formulas are private pure functions, each tested against an independent implementation.

References: FID, Heusel et al. 2017; KID, Binkowski et al. 2018 (cubic polynomial kernel,
unbiased MMD^2 averaged over subsets); precision/recall, Kynkaanniemi et al. 2019 (k-NN
balls, k = 3); Inception Score, Salimans et al. 2016 (10 splits).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from genlab.errors import ShapeError
from genlab.seed import make_generator


class FeatureSet:
    """Accumulates features (B, D) batch by batch: float64 moments plus the raw rows."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self._sum: torch.Tensor | None = None
        self._outer: torch.Tensor | None = None
        self._rows: list[torch.Tensor] = []

    def update(self, features: torch.Tensor) -> None:
        if features.dim() != 2:
            raise ShapeError(f"features must be (B, D), got {tuple(features.shape)}")
        f = features.detach().double().cpu()
        if self._sum is None:
            self._sum, self._outer = f.sum(0), f.T @ f
        else:
            if f.shape[1] != self._sum.shape[0]:
                raise ShapeError(f"features of dimension {f.shape[1]} added to a set of dimension {self._sum.shape[0]}")
            self._sum += f.sum(0)
            self._outer += f.T @ f
        self.n += len(f)
        self._rows.append(features.detach().float().cpu())

    @property
    def features(self) -> torch.Tensor:
        """All rows seen, float32 (N, D)."""
        return torch.cat(self._rows)

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean (D,), unbiased covariance (D, D)), float64."""
        if self.n < 2:
            raise ShapeError(f"a feature set needs at least 2 rows for a covariance, has {self.n}")
        mu = self._sum / self.n
        cov = (self._outer - self.n * torch.outer(mu, mu)) / (self.n - 1)
        return mu, cov


@contextmanager
def _one_thread():
    """Small eigendecompositions run many short parallel regions; on a busy machine their
    thread barriers cost seconds, one thread takes milliseconds."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _sqrtm_trace(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """tr(sqrtm(A B)) for symmetric PSD A, B, via the symmetric matrix sqrt(A) B sqrt(A),
    which has the same eigenvalues as A B and can use eigh (stable, no complex parts)."""
    with _one_thread():
        ea, va = torch.linalg.eigh(a)
        sa = (va * ea.clamp_min(0).sqrt()) @ va.T  # sqrt(A)
        m = sa @ b @ sa
        ev = torch.linalg.eigvalsh((m + m.T) / 2)
    return ev.clamp_min(0).sqrt().sum()


def _compute_fid(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> float:
    """Frechet distance between N(mu1, cov1) and N(mu2, cov2):
    |mu1 - mu2|^2 + tr(cov1) + tr(cov2) - 2 tr(sqrtm(cov1 cov2)), all in float64."""
    mu1, cov1, mu2, cov2 = (t.double() for t in (mu1, cov1, mu2, cov2))
    diff = mu1 - mu2
    return float(diff @ diff + torch.trace(cov1) + torch.trace(cov2) - 2 * _sqrtm_trace(cov1, cov2))


def fid(real: FeatureSet, fake: FeatureSet) -> float:
    return _compute_fid(*real.compute(), *fake.compute())


def _mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2 with the kernel k(a, b) = (a.b / d + 1)^3; x (m, d), y (m, d)."""
    m, d = x.shape
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    off = lambda k: (k.sum() - k.diagonal().sum()) / (m * (m - 1))  # noqa: E731
    return off(kxx) + off(kyy) - 2 * kxy.mean()


def _compute_kid(real: torch.Tensor, fake: torch.Tensor, *, subsets: int = 100, subset_size: int = 1000,
                 seed: int = 0) -> tuple[float, float]:
    """KID: (mean, std) of the unbiased MMD^2 over `subsets` random subsets of `subset_size`
    rows drawn without replacement from each set (fixed by `seed`)."""
    m = min(subset_size, len(real), len(fake))
    if m < 2:
        raise ShapeError("KID needs at least 2 real and 2 generated samples")
    if m == len(real) == len(fake):
        subsets = 1  # every "subset" would be the whole of both sets: the same value each time
    g = make_generator(seed)
    x_all, y_all = real.double(), fake.double()
    vals = torch.empty(subsets, dtype=torch.float64)
    for s in range(subsets):
        xi = torch.randperm(len(real), generator=g)[:m]
        yi = torch.randperm(len(fake), generator=g)[:m]
        vals[s] = _mmd2_unbiased(x_all[xi], y_all[yi])
    return vals.mean().item(), (vals.std().item() if subsets > 1 else 0.0)


def _kth_nn_radii(x: torch.Tensor, k: int, chunk: int = 1000) -> torch.Tensor:
    """Distance from each row of x to its k-th nearest other row: (N,) float32."""
    out = []
    for i in range(0, len(x), chunk):
        d = torch.cdist(x[i:i + chunk], x)  # (c, N), includes the zero distance to itself
        out.append(d.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(out)


def _coverage_of(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int = 1000) -> float:
    """Fraction of `points` inside at least one ball (centres[j], radii[j])."""
    inside = 0
    for i in range(0, len(points), chunk):
        d = torch.cdist(points[i:i + chunk], centres)  # (c, M)
        inside += int((d <= radii[None]).any(1).sum())
    return inside / len(points)


def _compute_precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision (fake inside the real manifold) and recall (real inside the fake one)."""
    if min(len(real), len(fake)) <= k:
        raise ShapeError(f"precision/recall with k={k} needs more than {k} samples in each set")
    real, fake = real.float(), fake.float()
    precision = _coverage_of(fake, real, _kth_nn_radii(real, k))
    recall = _coverage_of(real, fake, _kth_nn_radii(fake, k))
    return precision, recall


def _compute_inception_score(logits: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) per split -> (mean, std) over `splits` consecutive splits."""
    logp = torch.log_softmax(logits.double(), dim=1)  # (N, K)
    scores = []
    for part in torch.tensor_split(logp, splits):
        p_y = torch.logsumexp(part, 0) - math.log(len(part))  # log of the marginal p(y)
        kl = (part.exp() * (part - p_y)).sum(1).mean()
        scores.append(kl.exp().item())
    t = torch.tensor(scores, dtype=torch.float64)
    return t.mean().item(), (t.std().item() if splits > 1 else 0.0)
