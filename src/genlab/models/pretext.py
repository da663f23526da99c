"""Self-supervised pretext tasks that train an image encoder without labels, for reuse through
`genlab train PRESET --init-from RUN` and for linear probes (`genlab evaluate RUN --metrics probe`).

  rotation  every image is shown rotated by 0, 90, 180 and 270 degrees (all four, in one batch,
            as Gidaris et al. 2018 found best) and a linear 4-way head on the encoder's output
            predicts which; cross-entropy, logged with the `accuracy` of the prediction.
  masked    random square patches of each image are zeroed (a fixed share of a grid of
            `patch` x `patch` cells) and a decoder reconstructs the image from the encoder's
            output; the loss is the squared error on the masked pixels only (`masked_mse`).

The encoder is the conv (or MLP) VAE's encoder, the same class (genlab.models.vae._Encoder) under
the same name (`encoder.*`), so a VAE of the same arch, latent_dim, hidden and base_channels
loads every encoder tensor from a pretext run: the presets match `vae-mnist --set
model.arch=conv`. The tasks read the encoder's mean `mu` (the representation a VAE passes on);
the rows of the encoder's last layer that give the VAE its log-variance get no gradient here
and load as they were initialised. The masked task's decoder is the VAE's decoder too
(`decoder.*`), so it loads as well. (The GAN discriminator's trunk is not offered: its last layer
is a 1-unit score, and the VAE is where a transferred encoder is used.)

A pretext model draws no samples (`draws_samples = False`): `genlab sample` refuses it,
`genlab evaluate` gives it the linear probe, and the training grids show `gallery`, what the
task does to held-out images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genlab.errors import ConfigError
from genlab.models.base import GenerativeModel, check_image_fields
from genlab.models.vae import VAEConfig, _Decoder, _Encoder
from genlab.registry import register

TASKS = ("rotation", "masked")


@dataclass
class PretextConfig:
    task: str = "rotation"  # rotation | masked
    # The encoder, as the VAE's (genlab.models.vae.VAEConfig): set these as the VAE that reuses it.
    arch: str = "conv"  # mlp | conv
    latent_dim: int = 32
    hidden: int = 512
    base_channels: int = 32
    patch: int = 7  # masked: side of the square cells of the masking grid, pixels
    mask_ratio: float = 0.25  # masked: share of the grid's cells zeroed in each image
    # Filled in from the data when left None (see genlab.engine.run.resolve_data_fields).
    channels: int | None = None
    image_size: int | None = None

    def validate(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"model.task must be rotation or masked, got {self.task!r}")
        if self.patch < 1:
            raise ConfigError(f"model.patch must be >= 1 pixel, got {self.patch}")
        if not 0 < self.mask_ratio < 1:
            raise ConfigError(f"model.mask_ratio must be in (0, 1), got {self.mask_ratio}")
        self.vae_config().validate()

    def vae_config(self) -> VAEConfig:
        """The VAE config whose encoder (and decoder) this model builds: an unconditional VAE with
        the same arch, latent_dim, hidden, base_channels and data fields."""
        return VAEConfig(arch=self.arch, latent_dim=self.latent_dim, hidden=self.hidden,
                         base_channels=self.base_channels, channels=self.channels, image_size=self.image_size)


# ----------------------------------------------------------------------------- pure functions

def rotations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All four rotations of each image: (B, C, S, S) -> ((4B, C, S, S), labels (4B,)), label k
    for `torch.rot90(x, k, (2, 3))` (k quarter turns); `torch.rot90(r, -k, (2, 3))` undoes it."""
    B = x.shape[0]
    xs = torch.cat([torch.rot90(x, k, (2, 3)) for k in range(4)])  # (4B, C, S, S), block k turned k times
    labels = torch.arange(4, device=x.device).repeat_interleave(B)  # (4B,)
    return xs, labels


def patch_mask(n: int, size: int, patch: int, ratio: float, device=None,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """A bool mask (n, 1, size, size), True where a pixel is masked: in each image, round(ratio *
    cells) (at least one) of the ceil(size / patch)^2 cells of a patch x patch grid, drawn
    independently per image from `generator` (default torch's global one, which the engine
    seeds per micro-batch). Cells at the right and bottom edges are cut to the image."""
    g = -(-size // patch)  # cells per side
    k = max(1, round(ratio * g * g))
    order = torch.rand(n, g * g, generator=generator, device=generator.device if generator else device).argsort(1)
    cells = torch.zeros(n, g * g, dtype=torch.bool, device=order.device)
    cells.scatter_(1, order[:, :k], True)  # (n, g*g), k True per row
    m = cells.view(n, 1, g, g).repeat_interleave(patch, 2).repeat_interleave(patch, 3)  # (n, 1, g*patch, g*patch)
    return m[:, :, :size, :size].to(device) if device is not None else m[:, :, :size, :size]


def masked_mse(out: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error of `out` against `x` (B, C, H, W) over the masked pixels only (mask
    (B, 1, H, W) bool, True = masked, shared by the channels): pixels outside it do not count."""
    m = mask.expand_as(x).to(x.dtype)
    return ((out - x) ** 2 * m).sum() / m.sum().clamp(min=1.0)


# ----------------------------------------------------------------------------- the model

class PretextModel(GenerativeModel):
    """A VAE-shaped encoder trained on a pretext task (rotation or masked patches)."""

    draws_samples = False  # it learns features; `genlab sample` has nothing to draw

    def __init__(self, cfg: PretextConfig):
        super().__init__()
        check_image_fields(cfg, "conv pretext encoder" if cfg.arch == "conv" else "pretext encoder",
                           4 if cfg.arch == "conv" else None)
        self.cfg = cfg
        vcfg = cfg.vae_config()
        self.encoder = _Encoder(vcfg, 0)
        if cfg.task == "rotation":
            self.head = nn.Linear(cfg.latent_dim, 4)  # linear on mu: the rotation must be readable from it
        else:
            self.decoder = _Decoder(vcfg, 0)

    def probe_features(self, x: torch.Tensor) -> torch.Tensor:
        """The representation a linear probe reads: the encoder's mu, (B, latent_dim)."""
        return self.encoder(x, None)[0]

    def loss(self, batch: dict[str, torch.Tensor], opt: str = "model") -> dict[str, torch.Tensor]:
        x = batch["x"]
        if self.cfg.task == "rotation":
            xs, labels = rotations(x)
            logits = self.head(self.encoder(xs, None)[0]).float()  # (4B, 4)
            ce = F.cross_entropy(logits, labels)
            acc = (logits.argmax(1) == labels).float().mean()
            return {"loss": ce, "accuracy": acc}
        B, C, S, _ = x.shape
        mask = patch_mask(B, S, self.cfg.patch, self.cfg.mask_ratio, x.device)  # (B, 1, S, S)
        out = self.decoder(self.encoder(x * ~mask, None)[0], None).float()  # (B, C, S, S)
        mse = masked_mse(out, x.float(), mask)
        return {"loss": mse, "masked_mse": mse}

    @torch.no_grad()
    def gallery(self, x: torch.Tensor, seed: int = 0) -> list[tuple[str, torch.Tensor]]:
        """Labelled rows (data space, (k, C, S, S) each) showing the task on k held-out images:
        rotation: each image turned i quarter turns (i = its index mod 4) and turned back by
        the predicted rotation; masked: the images, their masked input and the reconstruction."""
        k = x.shape[0]
        if self.cfg.task == "rotation":
            turns = torch.arange(k) % 4
            turned = torch.stack([torch.rot90(x[i], int(t), (1, 2)) for i, t in enumerate(turns)])
            pred = self.head(self.encoder(turned, None)[0]).argmax(1).cpu()
            back = torch.stack([torch.rot90(turned[i], -int(p), (1, 2)) for i, p in enumerate(pred)])
            return [("rotated", turned), ("turned back as predicted", back)]
        g = torch.Generator().manual_seed(seed)
        mask = patch_mask(k, x.shape[-1], self.cfg.patch, self.cfg.mask_ratio, generator=g).to(x.device)
        xm = x * ~mask
        return [("image", x), ("masked", xm), ("reconstruction", self.decoder(self.encoder(xm, None)[0], None))]

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator, labels: torch.Tensor | None = None) -> torch.Tensor:
        raise ConfigError(f"a pretext ({self.cfg.task}) run trains an encoder and draws no samples: measure it "
                          "with `genlab evaluate RUN --metrics probe`, or reuse it with "
                          "`genlab train PRESET --init-from RUN`")


register("pretext", PretextConfig, PretextModel)
