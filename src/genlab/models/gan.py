"""Generative adversarial networks: the seeds' MLP GAN, DCGAN, WGAN-GP, conditional GAN with a
projection discriminator, and spectral normalisation with the hinge loss
(Goodfellow et al., 2014; Radford et al., 2016; Gulrajani et al., 2017; Miyato & Koyama, 2018;
Miyato et al., 2018).

One model, two optimisers: `schedule()` is [("discriminator", n_critic), ("generator", 1)],
so the shared engine runs n_critic discriminator updates per generator update.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from genlab.errors import ConfigError
from genlab.models.base import LatentVariableModel, check_image_fields, check_widths
from genlab.registry import register


@dataclass
class GANConfig:
    arch: str = "dcgan"  # mlp | dcgan
    loss: str = "bce"  # bce (non-saturating) | hinge | wgan-gp
    latent_dim: int = 100
    g_channels: int = 64  # dcgan: channels of the generator's last hidden layer (x2, x4 before it)
    d_channels: int = 64  # dcgan: channels of the discriminator's first layer (x2 after it)
    mlp_widths: tuple[int, ...] = (256, 512, 1024)  # mlp: generator widths; the discriminator mirrors them
    # The generator's hidden widths when narrower than the above (a structurally pruned run):
    # dcgan (4c, 2c, c) channels, mlp one per mlp_widths entry; None: from g_channels / mlp_widths.
    g_widths: tuple[int, ...] | None = None
    g_batchnorm: bool = True
    spectral_norm: bool = False  # on every discriminator layer
    n_critic: int = 1  # discriminator updates per generator update
    gp_weight: float = 10.0  # wgan-gp: gradient-penalty weight
    d_lr_scale: float = 1.0  # discriminator LR = train.lr x this (two time-scale update rule)
    conditional: bool = False  # class-conditional G (label embedding) and projection D
    # Filled in from the data when left None.
    channels: int | None = None
    image_size: int | None = None
    num_classes: int | None = None

    def validate(self) -> None:
        if self.arch not in ("mlp", "dcgan"):
            raise ConfigError(f"model.arch must be mlp or dcgan, got {self.arch!r}")
        if self.loss not in ("bce", "hinge", "wgan-gp"):
            raise ConfigError(f"model.loss must be bce, hinge or wgan-gp, got {self.loss!r}")
        if self.n_critic < 1 or self.latent_dim < 1:
            raise ConfigError("model.n_critic and model.latent_dim must be >= 1")
        check_widths("g_widths", self.g_widths, 3 if self.arch == "dcgan" else len(self.mlp_widths), self.arch)

    def generator_widths(self) -> tuple[int, ...]:
        """The generator's hidden widths: dcgan (4c, 2c, c) channels, mlp mlp_widths, unless g_widths."""
        if self.g_widths is not None:
            return tuple(self.g_widths)
        c = self.g_channels
        return (4 * c, 2 * c, c) if self.arch == "dcgan" else tuple(self.mlp_widths)


# --------------------------------------------------------------------------- losses (pure)


def d_loss_terms(loss: str, d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator loss (without the gradient penalty) from raw scores (B,)."""
    if loss == "bce":
        return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
    if loss == "hinge":
        return F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
    return d_fake.mean() - d_real.mean()  # wgan: minus the Wasserstein estimate


def g_loss_term(loss: str, d_fake: torch.Tensor) -> torch.Tensor:
    """Generator loss from the discriminator's scores of fakes (B,)."""
    return F.softplus(-d_fake).mean() if loss == "bce" else -d_fake.mean()


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor,
                     y: torch.Tensor | None = None) -> torch.Tensor:
    """WGAN-GP: E[(||grad_x D(x_hat)||_2 - 1)^2] at x_hat = eps * real + (1 - eps) * fake,
    eps of shape (B, 1, ..., 1) in [0, 1]."""
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    score = critic(x_hat, y)
    (grad,) = torch.autograd.grad(score.sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(2, dim=1) - 1).pow(2).mean()


# --------------------------------------------------------------------------- networks


class _Network(nn.Module):
    """A network whose 4-D weights (and, in the discriminator, input) are kept in one memory
    layout: channels_last for the DCGAN on CPU (oneDNN's preferred layout: a dcgan-mnist D+G step
    8% faster than contiguous on the 2-core AMD EPYC, 1 or 2 threads), while private
    training asks for torch.contiguous_format, the layout Opacus's per-example conv gradients
    are right for."""

    memory_format = torch.contiguous_format

    def use_memory_format(self, fmt: torch.memory_format) -> None:
        self.memory_format = fmt
        self.to(memory_format=fmt)


class Generator(_Network):
    def __init__(self, cfg: GANConfig):
        super().__init__()
        C, S = cfg.channels, cfg.image_size
        self.out_shape = (C, S, S)
        cond = cfg.num_classes if cfg.conditional else 0
        self.embed = nn.Embedding(cond, cond) if cond else None
        zin = cfg.latent_dim + cond
        bn = (lambda n, d=1: nn.BatchNorm1d(n) if d == 1 else nn.BatchNorm2d(n)) if cfg.g_batchnorm else None
        widths = cfg.generator_widths()
        if cfg.arch == "mlp":
            layers, prev = [], zin
            for w in widths:
                layers += [nn.Linear(prev, w)] + ([bn(w)] if bn else []) + [nn.LeakyReLU(0.2)]
                prev = w
            self.net = nn.Sequential(*layers, nn.Linear(prev, C * S * S), nn.Tanh())
        else:
            (c4, c2, c), s0 = widths, S // 4  # 4c, 2c, c unless pruned
            norm2d = (lambda n: nn.BatchNorm2d(n)) if cfg.g_batchnorm else (lambda n: nn.Identity())
            self.net = nn.Sequential(
                nn.Linear(zin, c4 * s0 * s0), nn.Unflatten(1, (c4, s0, s0)), norm2d(c4), nn.ReLU(),
                nn.ConvTranspose2d(c4, c2, 4, 2, 1), norm2d(c2), nn.ReLU(),  # (B, 2c, S/2, S/2)
                nn.ConvTranspose2d(c2, c, 4, 2, 1), norm2d(c), nn.ReLU(),  # (B, c, S, S)
                nn.Conv2d(c, C, 3, 1, 1), nn.Tanh(),  # (B, C, S, S)
            )

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(y)], dim=1)
        return self.net(z).view(-1, *self.out_shape)


class Discriminator(_Network):
    """Returns raw scores (B,). Conditional: projection, score = psi(h) + <embed(y), h>."""

    def __init__(self, cfg: GANConfig):
        super().__init__()
        C, S = cfg.channels, cfg.image_size
        sn = spectral_norm if cfg.spectral_norm else (lambda m: m)
        if cfg.arch == "mlp":
            layers, prev = [nn.Flatten()], C * S * S
            for w in reversed(cfg.mlp_widths):
                layers += [sn(nn.Linear(prev, w)), nn.LeakyReLU(0.2)]
                prev = w
            self.features = nn.Sequential(*layers)
            feat = prev
        else:
            c = cfg.d_channels
            self.features = nn.Sequential(
                sn(nn.Conv2d(C, c, 4, 2, 1)), nn.LeakyReLU(0.2),  # (B, c, S/2, S/2)
                sn(nn.Conv2d(c, 2 * c, 4, 2, 1)), nn.LeakyReLU(0.2),  # (B, 2c, S/4, S/4)
                sn(nn.Conv2d(2 * c, 4 * c, 3, 1, 1)), nn.LeakyReLU(0.2),  # (B, 4c, S/4, S/4)
                nn.Flatten(),
            )
            feat = 4 * c * (S // 4) ** 2
        self.head = sn(nn.Linear(feat, 1))
        self.embed = sn(nn.Embedding(cfg.num_classes, feat)) if cfg.conditional else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(x.contiguous(memory_format=self.memory_format))  # (B, F)
        out = self.head(h).squeeze(1)  # (B,)
        if self.embed is not None:
            out = out + (self.embed(y) * h).sum(1)
        return out


class GAN(LatentVariableModel):
    validation_loss = False  # no likelihood to validate: quality comes from `genlab evaluate`

    def __init__(self, cfg: GANConfig):
        super().__init__()
        check_image_fields(cfg, "DCGAN" if cfg.arch == "dcgan" else "GAN", 4 if cfg.arch == "dcgan" else None)
        self.cfg = cfg
        self.conditional = cfg.conditional
        self.num_classes = cfg.num_classes if cfg.conditional else None
        self.generator = Generator(cfg)
        self.discriminator = Discriminator(cfg)
        if cfg.arch == "dcgan":  # see _Network
            self.generator.use_memory_format(torch.channels_last)
            self.discriminator.use_memory_format(torch.channels_last)

    # ------------------------------------------------------------------ engine contract
    def optimizers(self) -> dict[str, list[nn.Parameter]]:
        return {"discriminator": list(self.discriminator.parameters()),
                "generator": list(self.generator.parameters())}

    def schedule(self) -> list[tuple[str, int]]:
        return [("discriminator", self.cfg.n_critic), ("generator", 1)]

    def lr_scale(self, opt: str) -> float:
        return self.cfg.d_lr_scale if opt == "discriminator" else 1.0

    def private_modules(self) -> dict[str, nn.Module]:
        """DP-SGD: only the discriminator reads data; the generator learns from it alone."""
        if self.cfg.loss == "wgan-gp":
            raise ConfigError("private training cannot clip per-example gradients of the gradient penalty "
                              "(a double backward); use model.loss=hinge or bce")
        return {"discriminator": self.discriminator}

    def public_batch(self, n: int, device) -> dict[str, torch.Tensor]:
        """The generator's batch in private training: n labels drawn uniformly (not the data's)."""
        y = torch.randint(0, self.num_classes, (n,), device=device) if self.conditional else None
        return {"n": torch.tensor(n), **({"y": y} if y is not None else {})}

    def loss(self, batch: dict[str, torch.Tensor], opt: str = "generator") -> dict[str, torch.Tensor]:
        x, y = batch.get("x"), batch.get("y") if self.conditional else None
        B = x.shape[0] if x is not None else int(batch["n"])
        device = x.device if x is not None else next(self.parameters()).device
        # Only the optimiser being stepped needs weight gradients; skipping D's in the
        # generator update saves a third of its backward pass.
        self.discriminator.requires_grad_(opt == "discriminator")
        z = torch.randn(B, self.cfg.latent_dim, device=device)
        if opt == "generator":
            d_fake = self.discriminator(self.generator(z, y), y).float()
            g = g_loss_term(self.cfg.loss, d_fake)
            return {"loss": g, "g_loss": g}
        with torch.no_grad():
            fake = self.generator(z, y)
        d_real = self.discriminator(x, y).float()
        d_fake = self.discriminator(fake, y).float()
        d = d_loss_terms(self.cfg.loss, d_real, d_fake)
        out = {"d_loss": d, "d_acc_real": (d_real > 0).float().mean(), "d_acc_fake": (d_fake < 0).float().mean()}
        if self.cfg.loss == "wgan-gp":
            eps = torch.rand(B, *([1] * (x.dim() - 1)), device=x.device)
            with torch.autocast(x.device.type, enabled=False):  # double backward in full precision
                gp = gradient_penalty(self.discriminator, x.float(), fake.float(), eps, y)
            out["gp"] = gp
            out["wasserstein"] = d_real.mean() - d_fake.mean()
            d = d + self.cfg.gp_weight * gp
        out["loss"] = d
        return out

    def example_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-example (B,) {"loss": -D(x, y)}: how unlike training data the discriminator finds
        each real example (lower: more like it), for membership audits (LOGAN's white-box score)."""
        y = batch.get("y") if self.conditional else None
        return {"loss": -self.discriminator(batch["x"], y).float()}

    # ------------------------------------------------------------------ sampling
    def latent_shape(self) -> tuple[int, ...]:
        return (self.cfg.latent_dim,)

    @torch.no_grad()
    def decode_latent(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.generator(z, labels)


register("gan", GANConfig, GAN)
