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


class GenerativeModel(nn.Module):
    """Base class with the single-optimiser defaults."""

    conditional: bool = False
    num_classes: int | None = None
    # False for models whose loss says nothing about quality (GANs): no validation loss,
    # no best-by-loss checkpoint, no early stopping on it.
    validation_loss: bool = True

    def optimizers(self) -> dict[str, list[nn.Parameter]]:
        return {"model": [p for p in self.parameters() if p.requires_grad]}

    def schedule(self) -> list[tuple[str, int]]:
        return [(name, 1) for name in self.optimizers()]

    def lr_scale(self, opt: str) -> float:
        """Multiplier of train.lr for optimiser `opt` (e.g. a faster discriminator)."""
        return 1.0

    def loss(self, batch: dict[str, torch.Tensor], opt: str = "model") -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator,
               labels: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError
