"""Semi-supervised VAE: the M2 model of Kingma, Rezende, Mohamed & Welling (2014),
"Semi-Supervised Learning with Deep Generative Models".

Generative model p(y) = Cat(1/K), p(z) = N(0, I), p(x|y,z) Bernoulli (binarised data in [0, 1]);
inference model q(y|x) (the classifier) and q(z|x,y) = N(mu, diag sigma^2). Per example:

    labelled (x, y):   L(x, y) + alpha * CE(q(y|x), y),   L(x, y) = -ELBO(x, y)
                       = E_q(z|x,y)[-log p(x|y,z)] + KL(q(z|x,y) || p(z)) - log p(y)
    unlabelled x:      U(x) = sum_y q(y|x) L(x, y) - H(q(y|x))  (= -ELBO(x) with y latent)

Labels of -1 mark unlabelled images (data.num_labels, genlab.data.datasets.SemiSupervisedFeeder).
The classifier learns from the labels (the alpha term) and from every unlabelled image through
U(x), which pulls q(y|x) towards the generative model's posterior p(y|x) ~ exp(-L(x, y)).

Recipe choices (documented, not in the paper): q(y|x) may be a small conv net (`classifier=conv`)
and the labelled images it classifies are randomly shifted by up to `shift` pixels (the ELBO
terms see them unshifted); q(z|x,y) and p(x|y,z) are the paper's MLPs. The first layer of each
takes x (or z) and the one-hot y through separate weight matrices, so the x (z) part is computed
once and the K classes of an unlabelled image only add a row each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genlab.data.transforms import random_crop
from genlab.errors import ConfigError
from genlab.models.base import LatentVariableModel, check_image_fields
from genlab.registry import register


@dataclass
class SemiVAEConfig:
    latent_dim: int = 50
    hidden: int = 500  # width of the MLPs q(z|x,y) and p(x|y,z) (two hidden layers each)
    classifier: str = "conv"  # q(y|x): conv (two conv layers, then a dense one) | mlp (two hidden layers)
    classifier_width: int = 32  # conv: channels of the first conv layer (doubled once); mlp: hidden width / 16
    alpha: float = 1.0  # weight of the labelled images' cross-entropy (the paper: 0.1 N over its sums)
    shift: int = 2  # random shifts (pixels) of the labelled images the classifier trains on; 0 = none
    conditional: bool = True  # samples are drawn per class (p(x|y,z)); always true
    # Filled in from the data when left None (see genlab.engine.run.resolve_data_fields).
    channels: int | None = None
    image_size: int | None = None
    num_classes: int | None = None

    def validate(self) -> None:
        if self.classifier not in ("conv", "mlp"):
            raise ConfigError(f"model.classifier must be conv or mlp, got {self.classifier!r}")
        if min(self.latent_dim, self.hidden, self.classifier_width) < 1:
            raise ConfigError("model.latent_dim, model.hidden and model.classifier_width must be >= 1")
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise ConfigError(f"model.alpha must be a finite number >= 0, got {self.alpha}")
        if self.shift < 0:
            raise ConfigError(f"model.shift must be >= 0 pixels, got {self.shift}")
        if not self.conditional:
            raise ConfigError("the semivae is class-conditional (p(x|y,z)); leave model.conditional=true")


def m2_unlabelled(neg_elbo: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """U(x) = sum_y q(y|x) L(x, y) - H(q(y|x)) per example: neg_elbo (B, K) holds L(x, y) for
    every class, logits (B, K) those of q(y|x). Returns (B,)."""
    log_q = F.log_softmax(logits.float(), dim=1)  # (B, K)
    return (log_q.exp() * (neg_elbo + log_q)).sum(1)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) summed over the last dim."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum(-1)


def _classifier(cfg: SemiVAEConfig) -> nn.Module:
    C, S, K, c = cfg.channels, cfg.image_size, cfg.num_classes, cfg.classifier_width
    if cfg.classifier == "mlp":
        h = 16 * c
        return nn.Sequential(nn.Flatten(), nn.Linear(C * S * S, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(),
                             nn.Linear(h, K))
    return nn.Sequential(
        nn.Conv2d(C, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, c, S/2, S/2)
        nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 2c, S/4, S/4)
        nn.Flatten(), nn.Linear(2 * c * (S // 4) ** 2, 4 * c), nn.ReLU(),
        nn.Linear(4 * c, K),
    )


class SemiVAE(LatentVariableModel):
    """M2: classifier q(y|x), encoder q(z|x,y), decoder p(x|y,z); labels -1 are unlabelled."""

    def __init__(self, cfg: SemiVAEConfig):
        super().__init__()
        check_image_fields(cfg, "semivae", 4 if cfg.classifier == "conv" else None)
        if not cfg.num_classes or cfg.num_classes < 2:
            raise ConfigError("the semivae classifies: it needs labelled data with at least 2 classes")
        self.cfg = cfg
        self.conditional, self.num_classes = True, cfg.num_classes
        C, S, K, h, z = cfg.channels, cfg.image_size, cfg.num_classes, cfg.hidden, cfg.latent_dim
        D = C * S * S
        self.shape = (C, S, S)
        self.classifier = _classifier(cfg)
        self.enc_x, self.enc_y = nn.Linear(D, h), nn.Linear(K, h, bias=False)
        self.enc = nn.Sequential(nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 2 * z))
        self.dec_z, self.dec_y = nn.Linear(z, h), nn.Linear(K, h, bias=False)
        self.dec = nn.Sequential(nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, D))

    # ------------------------------------------------------------------ pieces
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of q(y|x), (B, K)."""
        return self.classifier(x)

    def _y_rows(self, layer: nn.Linear, y: torch.Tensor) -> torch.Tensor:
        """The one-hot y's contribution to a first layer: its weight column per label, (N, h)."""
        return layer.weight.t()[y.long()]

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x,y): (mu, logvar), (B, z) each."""
        mu, logvar = self.enc(self.enc_x(x.flatten(1)) + self._y_rows(self.enc_y, y)).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """p(x|y,z): Bernoulli logits, (B, C, H, W)."""
        return self.dec(self.dec_z(z) + self._y_rows(self.dec_y, y)).view(-1, *self.shape)

    def neg_elbo(self, x: torch.Tensor, y: torch.Tensor, hx: torch.Tensor | None = None) -> torch.Tensor:
        """L(x, y) = -ELBO(x, y) per example at one draw z ~ q(z|x,y) from torch's global
        generator, (N,). `hx` (N, h): enc_x(x) already computed (shared by the K labels of an image)."""
        hx = self.enc_x(x.flatten(1)) if hx is None else hx
        mu, logvar = (t.float() for t in self.enc(hx + self._y_rows(self.enc_y, y)).chunk(2, dim=1))  # (N, z)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()  # reparameterisation
        out = self.decode(z, y).float()
        recon = F.binary_cross_entropy_with_logits(out, x.float(), reduction="none").flatten(1).sum(1)
        return recon + gaussian_kl(mu, logvar) + math.log(self.num_classes)  # - log p(y), p(y) uniform

    # ------------------------------------------------------------------ contract
    def loss(self, batch: dict[str, torch.Tensor], opt: str = "model") -> dict[str, torch.Tensor]:
        x, y = batch["x"], batch.get("y")
        if y is None:
            raise ConfigError("the semivae trains on labelled data (labels -1 mark unlabelled images)")
        B, K = x.shape[0], self.num_classes
        lab = y >= 0
        total = x.new_zeros((), dtype=torch.float32)
        terms: dict[str, torch.Tensor] = {}
        if lab.any():
            xl, yl = x[lab], y[lab].long()
            nel = self.neg_elbo(xl, yl)  # (L,)
            # the classifier sees shifted copies in training (augmentation); the ELBO the originals
            xc = random_crop(xl, self.cfg.shift) if self.training and self.cfg.shift else xl
            logits = self.classify(xc).float()  # (L, K)
            ce = F.cross_entropy(logits, yl, reduction="none")  # (L,)
            total = total + (nel + self.cfg.alpha * ce).sum()
            terms.update(neg_elbo_labelled=nel.mean().detach(), classification=ce.mean().detach(),
                         accuracy=(logits.argmax(1) == yl).float().mean())
        if not lab.all():
            xu = x[~lab]
            U = xu.shape[0]
            hx = self.enc_x(xu.flatten(1)).repeat_interleave(K, 0)  # (U*K, h): rows x0y0, x0y1, ...
            ys = torch.arange(K, device=x.device).repeat(U)  # (U*K,)
            nel_all = self.neg_elbo(xu.repeat_interleave(K, 0), ys, hx).view(U, K)  # L(x, y) per class
            u = m2_unlabelled(nel_all, self.classify(xu))  # (U,)
            total = total + u.sum()
            terms["neg_elbo_unlabelled"] = u.mean().detach()
        return {"loss": total / B, **terms}

    def latent_shape(self) -> tuple[int, ...]:
        return (self.cfg.latent_dim,)

    @torch.no_grad()
    def decode_latent(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Latent codes (B, z) and classes (B,) -> images (the decoder's mean)."""
        if labels is None:
            raise ConfigError("the semivae is conditional: pass labels")
        return torch.sigmoid(self.decode(z, labels))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decoded posterior mean; without labels, the classifier's guess is the class."""
        y = self.classify(x).argmax(1) if y is None else y
        mu, _ = self.encode(x, y)
        return torch.sigmoid(self.decode(mu, y))


register("semivae", SemiVAEConfig, SemiVAE)
