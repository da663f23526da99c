"""Variational autoencoders: VAE, beta-VAE and conditional VAE, with MLP or conv
encoder/decoder and a Bernoulli or Gaussian likelihood (Kingma & Welling, 2014;
Higgins et al., 2017; Sohn et al., 2015)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genlab.errors import ConfigError
from genlab.metrics.likelihood import discretized_gaussian_log_prob
from genlab.models.base import LatentVariableModel, check_image_fields, check_widths
from genlab.registry import register


@dataclass
class VAEConfig:
    arch: str = "mlp"  # mlp | conv
    latent_dim: int = 32
    hidden: int = 512  # MLP width; conv: width of the dense layer
    base_channels: int = 32  # conv: channels of the first conv layer (doubled once)
    # The decoder's hidden widths when narrower than the above (a structurally pruned run):
    # mlp (hidden, hidden), conv (hidden, 2c, c) with c = base_channels; None: the defaults.
    dec_widths: tuple[int, ...] | None = None
    likelihood: str = "bernoulli"  # bernoulli (data in [0,1]) | gaussian (learned global scale)
    beta: float = 1.0  # weight of the KL term (beta-VAE when > 1)
    conditional: bool = False
    # Filled in from the data when left None (see genlab.engine.run.resolve_data_fields).
    channels: int | None = None
    image_size: int | None = None
    num_classes: int | None = None

    def validate(self) -> None:
        if self.arch not in ("mlp", "conv"):
            raise ConfigError(f"model.arch must be mlp or conv, got {self.arch!r}")
        if self.likelihood not in ("bernoulli", "gaussian"):
            raise ConfigError(f"model.likelihood must be bernoulli or gaussian, got {self.likelihood!r}")
        if self.latent_dim < 1 or self.hidden < 1:
            raise ConfigError("model.latent_dim and model.hidden must be >= 1")
        if self.beta < 0:
            raise ConfigError("model.beta must be >= 0")
        check_widths("dec_widths", self.dec_widths, 2 if self.arch == "mlp" else 3, self.arch)

    def decoder_widths(self) -> tuple[int, ...]:
        """The decoder's hidden widths: mlp (hidden, hidden), conv (hidden, 2c, c), unless dec_widths."""
        if self.dec_widths is not None:
            return tuple(self.dec_widths)
        c = self.base_channels
        return (self.hidden, self.hidden) if self.arch == "mlp" else (self.hidden, 2 * c, c)


class _Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig, cond_dim: int):
        super().__init__()
        C, S, h = cfg.channels, cfg.image_size, cfg.hidden
        if cfg.arch == "mlp":
            self.features = nn.Flatten()
            feat = C * S * S
            self.body = nn.Sequential(nn.Linear(feat + cond_dim, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU())
        else:
            c = cfg.base_channels
            self.features = nn.Sequential(
                nn.Conv2d(C, c, 4, 2, 1), nn.SiLU(),  # (B, c, S/2, S/2)
                nn.Conv2d(c, 2 * c, 4, 2, 1), nn.SiLU(),  # (B, 2c, S/4, S/4)
                nn.Flatten(),
            )
            feat = 2 * c * (S // 4) ** 2
            self.body = nn.Sequential(nn.Linear(feat + cond_dim, h), nn.SiLU())
        self.head = nn.Linear(h, 2 * cfg.latent_dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        if cond is not None:
            f = torch.cat([f, cond], dim=1)
        mu, logvar = self.head(self.body(f)).chunk(2, dim=1)  # (B, z) each
        return mu, logvar


class _Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig, cond_dim: int):
        super().__init__()
        C, S, z = cfg.channels, cfg.image_size, cfg.latent_dim
        self.shape = (C, S, S)
        if cfg.arch == "mlp":
            h1, h2 = cfg.decoder_widths()  # hidden, hidden unless pruned
            self.net = nn.Sequential(
                nn.Linear(z + cond_dim, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(), nn.Linear(h2, C * S * S)
            )
        else:
            h, c2, c = cfg.decoder_widths()  # hidden, 2c, c unless pruned
            self.net = nn.Sequential(
                nn.Linear(z + cond_dim, h), nn.SiLU(),
                nn.Linear(h, c2 * (S // 4) ** 2), nn.SiLU(),
                nn.Unflatten(1, (c2, S // 4, S // 4)),
                nn.ConvTranspose2d(c2, c, 4, 2, 1), nn.SiLU(),  # (B, c, S/2, S/2)
                nn.ConvTranspose2d(c, C, 4, 2, 1),  # (B, C, S, S)
            )

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        if cond is not None:
            z = torch.cat([z, cond], dim=1)
        return self.net(z).view(-1, *self.shape)


class VAE(LatentVariableModel):
    """Encoder q(z|x[,y]) = N(mu, diag sigma^2), prior p(z) = N(0, I), decoder p(x|z[,y])."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        check_image_fields(cfg, "conv VAE" if cfg.arch == "conv" else "VAE", 4 if cfg.arch == "conv" else None)
        self.cfg = cfg
        self.conditional = cfg.conditional
        self.num_classes = cfg.num_classes if cfg.conditional else None
        cond_dim = cfg.num_classes if cfg.conditional else 0
        self.encoder = _Encoder(cfg, cond_dim)
        self.decoder = _Decoder(cfg, cond_dim)
        if cfg.likelihood == "gaussian":
            self.log_sigma = nn.Parameter(torch.zeros(()))  # global decoder scale, learned

    # ------------------------------------------------------------------ pieces
    def _cond(self, y: torch.Tensor | None, n: int) -> torch.Tensor | None:
        if not self.conditional:
            return None
        if y is None:
            raise ConfigError("this VAE is conditional: pass labels")
        return F.one_hot(y.long(), self.num_classes).float()

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x, self._cond(y, x.shape[0]))

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder output: Bernoulli logits or Gaussian means, (B, C, H, W)."""
        return self.decoder(z, self._cond(y, z.shape[0]))

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """The decoder distribution's mean in data space."""
        return torch.sigmoid(out) if self.cfg.likelihood == "bernoulli" else out

    def log_px_z(self, out: torch.Tensor, x: torch.Tensor, pixel_range: tuple | None = None) -> torch.Tensor:
        """log p(x|z) summed over pixels, (B,). Gaussian: a density (training), or with
        pixel_range = (low, high), the model-space values of pixels 0 and 255, the probability
        of x's 8-bit pixels (the density integrated over each pixel's bin)."""
        if self.cfg.likelihood == "bernoulli":
            return -F.binary_cross_entropy_with_logits(out, x, reduction="none").flatten(1).sum(1)
        log_sigma = self.log_sigma.clamp(min=-6.0)
        if pixel_range is not None:
            lp = discretized_gaussian_log_prob(x, out, log_sigma, *pixel_range)
        else:
            lp = -0.5 * ((x - out) / log_sigma.exp()) ** 2 - log_sigma - 0.5 * math.log(2 * math.pi)
        return lp.flatten(1).sum(1)

    # ------------------------------------------------------------------ contract
    def example_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-example terms (B,) at one draw z ~ q(z|x) from torch's global generator:
        {"loss": recon + beta KL, "recon", "kl", "neg_elbo"}; training averages them, membership
        audits read them per example."""
        x, y = batch["x"], batch.get("y")
        mu, logvar = (t.float() for t in self.encode(x, y))  # loss maths in fp32 under autocast
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()  # reparameterisation
        recon = -self.log_px_z(self.decode(z, y).float(), x)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum(1)
        return {"loss": recon + self.cfg.beta * kl, "recon": recon, "kl": kl, "neg_elbo": recon + kl}

    def loss(self, batch: dict[str, torch.Tensor], opt: str = "model") -> dict[str, torch.Tensor]:
        return {k: v.mean() for k, v in self.example_loss(batch).items()}

    def latent_shape(self) -> tuple[int, ...]:
        return (self.cfg.latent_dim,)

    @torch.no_grad()
    def decode_latent(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Latent codes (B, z) -> images in data space (the decoder's mean)."""
        return self.mean(self.decode(z, labels))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        mu, _ = self.encode(x, y)
        return self.mean(self.decode(mu, y))

    @torch.no_grad()
    def iw_log_weights(self, x: torch.Tensor, y: torch.Tensor | None, k: int,
                       generator: torch.Generator, pixel_range: tuple | None = None) -> torch.Tensor:
        """log p(x, z_i) - log q(z_i | x) for k samples z_i ~ q(z|x): shape (k, B). A Gaussian
        decoder needs pixel_range (see log_px_z): bounds of densities are not likelihoods."""
        if self.cfg.likelihood == "gaussian" and pixel_range is None:
            raise ConfigError("a Gaussian VAE's likelihood bound needs pixel_range=(low, high), the model-space "
                              "values of pixels 0 and 255, to score 8-bit pixels rather than a density")
        B = x.shape[0]
        mu, logvar = self.encode(x, y)  # (B, z)
        std = (0.5 * logvar).exp()
        eps = torch.randn(k, *mu.shape, generator=generator, device=generator.device).to(mu.device)
        z = mu + eps * std  # (k, B, z)
        log_q = (-0.5 * eps.pow(2) - 0.5 * logvar - 0.5 * math.log(2 * math.pi)).sum(-1)  # (k, B)
        log_p_z = (-0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)).sum(-1)  # (k, B)
        yk = None if y is None else y.repeat(k)
        out = self.decode(z.reshape(k * B, -1), yk)  # (k*B, C, H, W)
        log_px = self.log_px_z(out, x.repeat(k, 1, 1, 1), pixel_range).view(k, B)
        return log_px + log_p_z - log_q


register("vae", VAEConfig, VAE)
