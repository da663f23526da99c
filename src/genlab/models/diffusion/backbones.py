"""Other libraries' denoising UNets as genlab diffusion networks (`model.backbone`), so that they
train under the same engine, schedule, loss and samplers as genlab's own UNet: a comparison at
matched work (benchmarks/diffusion_mnist.py --part matched).

Each wraps a network to genlab's signature `net(x_t (B, C, H, W), t (B,) long, y (B,) long | None)
-> (B, C, H, W)`:
  - `diffusers`: diffusers' UNet2DModel (the DDPM UNet of Ho et al. as diffusers builds it), with
    genlab's widths, blocks per level and GroupNorm groups, attention at the middle level, and class
    embeddings for conditional runs; inputs are zero-padded to a multiple of 8 (28 -> 32), which its
    three levels need, and the output cropped back;
  - `ddpm-pytorch`: denoising-diffusion-pytorch's Unet (lucidrains), genlab's widths as dim and
    dim_mults; unconditional only.
Both come with `pip install -e '.[bench]'`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genlab.errors import ConfigError
from genlab.extras import require

BACKBONES = ("unet", "diffusers", "ddpm-pytorch")


class DiffusersUNet(nn.Module):
    def __init__(self, channels: int, image_size: int, base: int, mults: tuple[int, ...], blocks: int, groups: int,
                 num_classes: int | None):
        super().__init__()
        lib = require("diffusers", "bench", "model.backbone=diffusers")
        levels = len(mults)
        down = ["AttnDownBlock2D" if i == levels // 2 else "DownBlock2D" for i in range(levels)]
        up = ["AttnUpBlock2D" if i == (levels - 1) // 2 else "UpBlock2D" for i in range(levels)]
        step = 2 ** levels
        self.size = -(-image_size // step) * step
        self.image_size, self.num_classes = image_size, num_classes
        self.net = lib.UNet2DModel(sample_size=self.size, in_channels=channels, out_channels=channels,
                                   block_out_channels=tuple(base * m for m in mults), layers_per_block=blocks,
                                   norm_num_groups=groups, down_block_types=tuple(down), up_block_types=tuple(up),
                                   num_class_embeds=num_classes + 1 if num_classes is not None else None)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        pad = self.size - self.image_size
        if self.num_classes is not None and y is None:  # the "no label" class of guidance
            y = torch.full((len(x),), self.num_classes, dtype=torch.long, device=x.device)
        out = self.net(F.pad(x, (0, pad, 0, pad)), t, class_labels=y).sample  # (B, C, size, size)
        return out[..., :self.image_size, :self.image_size]


class LucidrainsUNet(nn.Module):
    def __init__(self, channels: int, image_size: int, base: int, mults: tuple[int, ...]):
        super().__init__()
        lib = require("denoising_diffusion_pytorch", "bench", "model.backbone=ddpm-pytorch")
        if image_size % 2 ** (len(mults) - 1):
            raise ConfigError(f"model.backbone=ddpm-pytorch needs image_size divisible by {2 ** (len(mults) - 1)}")
        self.net = lib.Unet(dim=base, dim_mults=tuple(mults), channels=channels, flash_attn=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x, t)


def build_backbone(cfg) -> nn.Module:
    """The network `cfg.backbone` names, sized by the DiffusionConfig's UNet fields."""
    if cfg.backbone == "diffusers":
        return DiffusersUNet(cfg.channels, cfg.image_size, cfg.base_channels, cfg.channel_mults, cfg.num_res_blocks,
                             cfg.groups, cfg.num_classes if cfg.conditional else None)
    if cfg.conditional:
        raise ConfigError("model.backbone=ddpm-pytorch has no class conditioning; use backbone unet or diffusers, "
                          "or drop the labels")
    return LucidrainsUNet(cfg.channels, cfg.image_size, cfg.base_channels, cfg.channel_mults)
