"""The one contract between a model and the training engine.

A model is an `nn.Module` with:
  - `loss(batch, opt) -> dict[str, Tensor]`: named scalar terms for optimiser `opt`;
    `"loss"` is the total that is back-propagated, the others are logged.
  - `sample(n, *, generator, labels=None) -> Tensor`: n samples in the model's data space
    (the normalised space batches arrive in), shape (n, C, H, W) for images.
  - `optimizers() -> dict[str, list[Parameter]]` and `schedule() -> list[(opt, repeats)]`:
    which parameters each optimiser owns and how many updates of each make one training step
    (a VAE: [("model", 1)]; a WGAN: [("discriminator", 5), ("generator", 1)]), and
    `lr_scale(opt)`, a per-optimiser multiplier of the learning rate.
The engine knows nothing else about the model.
"""

from __future__ import annotations

import torch
from torch import nn

from genlab.errors import ConfigError


class GenerativeModel(nn.Module):
    """Base class with the single-optimiser defaults."""

    family: str = "image"  # which evaluator and sampler apply: "image", "text", "graph"
    conditional: bool = False
    num_classes: int | None = None
    # False for models whose loss says nothing about quality (GANs): no validation loss,
    # no best-by-loss checkpoint, no early stopping on it.
    validation_loss: bool = True
    # False for models that transform given images (translation, style transfer): no `sample`.
    draws_samples: bool = True

    def optimizers(self) -> dict[str, list[nn.Parameter]]:
        return {"model": [p for p in self.parameters() if p.requires_grad]}

    def schedule(self) -> list[tuple[str, int]]:
        return [(name, 1) for name in self.optimizers()]

    def lr_scale(self, opt: str) -> float:
        """Multiplier of train.lr for optimiser `opt` (e.g. a faster discriminator)."""
        return 1.0

    def loss(self, batch: dict[str, torch.Tensor], opt: str = "model") -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def private_modules(self) -> dict[str, nn.Module]:
        """Private training (DP-SGD): {optimiser: the module whose per-example gradients are
        clipped and noised}, for every optimiser whose loss reads training data. Its loss must be
        a mean of per-example terms. Optimisers left out must train on `public_batch`."""
        return {name: self for name in self.optimizers()}

    def public_batch(self, n: int, device) -> dict[str, torch.Tensor]:
        """A batch of n draws that holds no training data, for the optimisers `private_modules`
        leaves out (a GAN's generator)."""
        raise NotImplementedError(f"{type(self).__name__} has no optimiser that trains without data")

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator,
               labels: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError


class LatentVariableModel(GenerativeModel):
    """A model that decodes prior draws z ~ N(0, I) (VAEs, GANs): sampling and latent
    interpolation follow from `latent_shape()` and `decode_latent(z, labels)`."""

    def latent_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def decode_latent(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def initial_noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """The n prior draws z (n, *latent_shape) `sample` decodes, on the generator's device."""
        return torch.randn(n, *self.latent_shape(), generator=generator, device=generator.device)

    def sample(self, n: int, *, generator: torch.Generator,
               labels: torch.Tensor | None = None) -> torch.Tensor:
        dev = next(self.parameters()).device
        z = self.initial_noise(n, generator).to(dev)
        return self.decode_latent(z, None if labels is None else labels.to(dev))


def check_widths(field: str, widths, n: int, arch: str) -> None:
    """A ConfigError unless `widths` (a structured shrink's hidden widths, model.<field>) is None
    or `n` widths >= 1."""
    if widths is not None and (len(widths) != n or min(widths) < 1):
        raise ConfigError(f"model.{field} must be {n} widths >= 1 for arch {arch} (or null for the defaults), "
                          f"got {list(widths)}")


def check_image_fields(cfg, family: str, divisor: int | None = None) -> None:
    """The data-dependent fields an image model needs, with errors that say what to set.
    `divisor`: the image size must be a multiple of it (strided conv stacks)."""
    if cfg.channels is None or cfg.image_size is None:
        raise ConfigError(f"{family} needs model.channels and model.image_size (taken from the data)")
    if divisor and cfg.image_size % divisor:
        raise ConfigError(f"the {family} needs an image size divisible by {divisor}, got {cfg.image_size}; "
                          "set data.image_size")
    if getattr(cfg, "conditional", False) and not cfg.num_classes:
        raise ConfigError(f"a conditional {family} needs labelled data (class sub-folders or labels)")
