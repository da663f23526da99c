"""The batch pipeline, vectorised over the batch: gather uint8 images, random crop and flip,
normalise, optionally binarise. Functional core plus a thin `BatchPipeline` shell.

Randomness comes from torch's global generator, which the engine seeds per (step, shard)
so that a batch is a pure function of the run seed and its position in the run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop(x: torch.Tensor, padding: int) -> torch.Tensor:
    """Zero-pad by `padding` and crop back to the original size at a random offset per image.
    x: (B, C, H, W) any dtype -> same shape."""
    if padding <= 0:
        return x
    B, C, H, W = x.shape
    xp = F.pad(x, (padding,) * 4)  # (B, C, H+2p, W+2p)
    oy = torch.randint(0, 2 * padding + 1, (B, 1, 1))
    ox = torch.randint(0, 2 * padding + 1, (B, 1, 1))
    rows = oy + torch.arange(H).view(1, H, 1)  # (B, H, 1)
    cols = ox + torch.arange(W).view(1, 1, W)  # (B, 1, W)
    b = torch.arange(B).view(B, 1, 1)
    return xp.permute(0, 2, 3, 1)[b, rows, cols].permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)


def random_hflip(x: torch.Tensor) -> torch.Tensor:
    """Flip each image left-right with probability 1/2. x: (B, C, H, W)."""
    flip = torch.rand(x.shape[0]) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def normalize(x: torch.Tensor, mode: str, mean: list[float] | None = None,
              std: list[float] | None = None) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 in the model's space."""
    x = x.float()
    if mode == "zero_one":
        return x.mul_(1 / 255.0)
    if mode == "minus_one_one":
        return x.mul_(2 / 255.0).sub_(1.0)
    if mode == "standardize":
        m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        return x.mul_(1 / 255.0).sub_(m).div_(s)
    raise ValueError(f"unknown normalisation {mode!r}")


def denormalize(x: torch.Tensor, mode: str, mean: list[float] | None = None,
                std: list[float] | None = None) -> torch.Tensor:
    """The inverse of `normalize`, clamped and rounded: float (B, C, H, W) -> uint8."""
    x = x.detach().float().cpu()
    if mode == "zero_one":
        y = x * 255.0
    elif mode == "minus_one_one":
        y = (x + 1.0) * 127.5
    elif mode == "standardize":
        m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        y = (x * s + m) * 255.0
    else:
        raise ValueError(f"unknown normalisation {mode!r}")
    return y.round_().clamp_(0, 255).to(torch.uint8)


def binarize(x: torch.Tensor) -> torch.Tensor:
    """Dynamic binarisation: each pixel ~ Bernoulli(x), x in [0, 1]."""
    return torch.bernoulli(x)


class BatchPipeline:
    """uint8 images (+ labels) -> the batch dict a model's `loss` takes."""

    def __init__(self, normalize_mode: str, mean: list[float], std: list[float], *,
                 hflip: bool = False, crop_padding: int = 0, binarize: bool = False):
        self.mode, self.mean, self.std = normalize_mode, mean, std
        self.hflip, self.crop_padding, self.binarize = hflip, crop_padding, binarize

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None, *, train: bool = True,
                 device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        if train and self.crop_padding:
            x = random_crop(x, self.crop_padding)
        if train and self.hflip:
            x = random_hflip(x)
        out = normalize(x.to(device, non_blocking=True), self.mode, self.mean, self.std)
        if self.binarize:
            out = binarize(out)
        batch = {"x": out}
        if y is not None:
            batch["y"] = y.to(device, non_blocking=True)
        return batch

    def to_uint8(self, x: torch.Tensor) -> torch.Tensor:
        return denormalize(x, self.mode, self.mean, self.std)
