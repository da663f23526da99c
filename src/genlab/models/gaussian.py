"""A class-conditional Gaussian in a principal subspace: probabilistic PCA (Tipping & Bishop,
1999) with one basis for all classes and a full covariance per class, fitted in one pass of
sufficient statistics instead of by gradient descent.

The model of a (flattened, normalised) image x of class c, with V the top-k principal directions
of the training images (d x k, orthonormal) and b the mean image's part off the subspace:

    z ~ N(m_c, S_c)  (k dims),   x = b + V z + e,   e ~ N(0, s^2 I_d)

so a' = V^T x ~ N(m_c, S_c + s^2 I_k) and the rest of x is isotropic noise around b. Samples are
b + V z (the pixel noise e left out, as a VAE shows its decoder's mean). The loss is the exact
negative log-density of x in nats per image (a density over the normalised pixels: not comparable
with the discrete-pixel NLL of the other image models).

Private fitting (privacy.epsilon or privacy.noise_multiplier): each image is scaled down to L2
norm at most C = privacy.max_grad_norm, and the statistics are released by the Gaussian mechanism
(Dwork & Roth 2014, Dwork et al. 2014's "Analyze Gauss" for the second moments), each with the
same noise multiplier sigma on its sensitivity:
  pass 1: the class counts (sensitivity 1), the sum of images (C), the sum of x x^T (C^2);
  pass 2, in the subspace found from pass 1: the class sums of z = V^T x (C) and of z z^T (C^2).
One image changes one class's entries, so each release's sensitivity holds over all classes at
once. Five releases of the Gaussian mechanism = five updates of the sampled Gaussian mechanism at
sampling rate 1, which the run's accountant (Opacus's RDP or PRV) composes into (epsilon, delta).
The fitted model is post-processing of those releases: samples, weights and reports are covered.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from genlab.errors import ConfigError
from genlab.models.base import GenerativeModel, check_image_fields
from genlab.registry import register

MAX_DIMS = 4096  # the d x d second moment is held in float64: 128 MiB at this size
RELEASES = 5  # Gaussian-mechanism releases of a private fit (see the module docstring)


@dataclass
class GaussianConfig:
    components: int = 40  # k: dimensions of the principal subspace
    conditional: bool = True
    # Filled in from the data when left None (see genlab.engine.run.resolve_data_fields).
    channels: int | None = None
    image_size: int | None = None
    num_classes: int | None = None

    def validate(self) -> None:
        if self.components < 1:
            raise ConfigError(f"model.components must be >= 1, got {self.components}")


def _noisy(value: torch.Tensor, scale: float, g: torch.Generator | None) -> torch.Tensor:
    """value + N(0, scale^2) per entry (the Gaussian mechanism); unchanged when g is None."""
    if g is None:
        return value
    return value + scale * torch.randn(value.shape, generator=g, dtype=value.dtype)


def _noisy_symmetric(m: torch.Tensor, scale: float, g: torch.Generator | None) -> torch.Tensor:
    """Symmetric matrices (..., k, k) + noise drawn once per entry on and above the diagonal and
    mirrored: the upper triangle of x x^T has L2 norm <= ||x||^2, its sensitivity."""
    if g is None:
        return m
    e = torch.triu(scale * torch.randn(m.shape, generator=g, dtype=m.dtype))
    return m + e + torch.triu(e, 1).transpose(-1, -2)


class GaussianModel(GenerativeModel):
    """Probabilistic PCA per class in one shared principal subspace (see the module docstring).
    It has no optimiser: the engine calls `fit_statistics` as the run's single step."""

    releases = RELEASES

    def __init__(self, cfg: GaussianConfig):
        super().__init__()
        check_image_fields(cfg, "Gaussian model")
        self.cfg, self.conditional = cfg, cfg.conditional
        self.num_classes = cfg.num_classes if cfg.conditional else None
        self.shape = (cfg.channels, cfg.image_size, cfg.image_size)
        d = math.prod(self.shape)
        if d > MAX_DIMS:
            raise ConfigError(f"the Gaussian model holds a d x d second moment; {d} pixel values per image is more "
                              f"than its {MAX_DIMS}: set data.image_size smaller")
        k, K = min(cfg.components, d), (cfg.num_classes if cfg.conditional else 1)
        self.register_buffer("offset", torch.zeros(d))  # b: the mean image's part off the subspace
        self.register_buffer("basis", torch.zeros(d, k))  # V, orthonormal columns
        self.register_buffer("class_mean", torch.zeros(K, k))  # m_c
        self.register_buffer("class_eigvals", torch.ones(K, k))  # S_c = P diag(w) P^T
        self.register_buffer("class_eigvecs", torch.eye(k).repeat(K, 1, 1))
        self.register_buffer("noise_var", torch.ones(()))  # s^2

    def optimizers(self) -> dict:
        return {}

    def _classes(self, y: torch.Tensor | None, n: int) -> torch.Tensor:
        if not self.conditional:
            return torch.zeros(n, dtype=torch.long, device=self.basis.device)
        if y is None:
            raise ConfigError("a conditional Gaussian model needs labels")
        return y.long().to(self.basis.device)

    # ------------------------------------------------------------------ fitting
    @torch.no_grad()
    def fit_statistics(self, batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor | None]]],
                       clip: float | None = None, sigma: float = 0.0,
                       noise: torch.Generator | None = None) -> None:
        """Fit from two passes over `batches()` ((x, y) of training images as the model sees them).
        Private when `noise` is given: images scaled to L2 norm <= `clip`, each statistic released
        with N(0, (sigma * sensitivity)^2) noise drawn from `noise` (see the module docstring)."""
        d, k = self.basis.shape
        K = self.class_mean.shape[0]
        g = noise if sigma > 0 else None
        c = 1.0 if clip is None else clip

        def rows():
            for x, y in batches():
                x = x.reshape(len(x), -1).double().cpu()
                if clip is not None:
                    x = x * (clip / x.norm(dim=1, keepdim=True).clamp(min=1e-12)).clamp(max=1)
                yield x, self._classes(y, len(x)).cpu()

        count, total, second = torch.zeros(K, dtype=torch.float64), torch.zeros(d, dtype=torch.float64), \
            torch.zeros(d, d, dtype=torch.float64)
        for x, y in rows():
            count += torch.bincount(y, minlength=K).double()
            total += x.sum(0)
            second += x.T @ x
        count = _noisy(count, sigma, g).clamp(min=1.0)
        n = count.sum()
        mean = _noisy(total, sigma * c, g) / n
        cov = _noisy_symmetric(second, sigma * c * c, g) / n - torch.outer(mean, mean)
        evals, evecs = torch.linalg.eigh(cov)  # ascending
        V = evecs[:, -k:].flip(1)
        resid = (evals[:-k].clamp(min=0).sum() / max(d - k, 1)) if d > k else evals.new_tensor(0.0)

        zsum, zsecond = torch.zeros(K, k, dtype=torch.float64), torch.zeros(K, k, k, dtype=torch.float64)
        for x, y in rows():
            z = x @ V
            zsum.index_add_(0, y, z)
            zsecond.index_add_(0, y, z[:, :, None] * z[:, None, :])
        m = _noisy(zsum, sigma * c, g) / count[:, None]
        S = _noisy_symmetric(zsecond, sigma * c * c, g) / count[:, None, None] - m[:, :, None] * m[:, None, :]
        w, P = torch.linalg.eigh(S)
        floor = max(float(resid), 1e-6)  # keeps every density proper where noise made S_c indefinite
        self.offset.copy_(mean - V @ (V.T @ mean))
        self.basis.copy_(V)
        self.class_mean.copy_(m)
        self.class_eigvals.copy_(w.clamp(min=0))
        self.class_eigvecs.copy_(P)
        self.noise_var.fill_(floor)

    # ------------------------------------------------------------------ density and samples
    def example_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """-log p(x | y) of each image, nats (B,)."""
        x = batch["x"].reshape(len(batch["x"]), -1).to(self.basis.dtype)
        c = self._classes(batch.get("y"), len(x))
        d, k = self.basis.shape
        s2 = self.noise_var
        a = (x - self.offset) @ self.basis  # (B, k)
        off = (x - self.offset) - a @ self.basis.T  # the part off the subspace
        u = ((a - self.class_mean[c])[:, None, :] @ self.class_eigvecs[c]).squeeze(1)  # (B, k) in S_c's eigenbasis
        lam = self.class_eigvals[c] + s2
        inside = (u * u / lam).sum(1) + lam.log().sum(1)
        outside = off.pow(2).sum(1) / s2 + (d - k) * s2.log()
        return {"loss": 0.5 * (inside + outside + d * math.log(2 * math.pi))}

    def loss(self, batch: dict[str, torch.Tensor], opt: str = "model") -> dict[str, torch.Tensor]:
        return {"loss": self.example_loss(batch)["loss"].mean()}

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator, labels: torch.Tensor | None = None) -> torch.Tensor:
        c = self._classes(labels, n)
        e = torch.randn(n, self.basis.shape[1], generator=generator, device=generator.device).to(self.basis)
        z = self.class_mean[c] + ((e * self.class_eigvals[c].sqrt())[:, None, :]
                                  @ self.class_eigvecs[c].transpose(1, 2)).squeeze(1)
        return (self.offset + z @ self.basis.T).reshape(n, *self.shape)


register("gaussian", GaussianConfig, GaussianModel)
