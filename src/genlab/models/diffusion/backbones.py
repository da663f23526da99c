"""Other libraries' denoising UNets as genlab diffusion networks (`model.backbone`), so that they
train under the same engine, schedule, loss and samplers as genlab's own UNet: a comparison at
matched work (benchmarks/diffusion_backbones.py).

Each wraps a network to genlab's signature `net(x_t (B, C, H, W), t (B,) long, y (B,) long | None)
-> (B, C, H, W)`, sized from the DiffusionConfig's UNet fields:
  - `diffusers`: diffusers' UNet2DModel (the DDPM UNet of Ho et al. as diffusers builds it) with
    widths base_channels x channel_mults, num_res_blocks per level, GroupNorm groups, dropout,
    attention at the middle level with `heads` heads, and class embeddings (plus the "no label"
    class) for conditional runs. Its levels need sizes divisible by 2^(levels - 1) (28 for three
    levels: as is); other sizes are zero-padded at the right and bottom and the output cropped back.
  - `ddpm-pytorch`: denoising-diffusion-pytorch's Unet (lucidrains): dim = base_channels, dim_mults
    = channel_mults, dropout, `heads` attention heads (full attention at the innermost level, linear
    attention elsewhere, two ResNet blocks per level and its own norms, as that library fixes them);
    unconditional only.
genlab's `patch` stem and `attention_resolutions` apply to genlab's UNet only. Both libraries come
with `pip install -e '.[bench]'` (and `.[test]`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genlab.errors import ConfigError
from genlab.extras import require

BACKBONES = ("unet", "diffusers", "ddpm-pytorch")


class DiffusersUNet(nn.Module):
    def __init__(self, channels: int, image_size: int, base: int, mults: tuple[int, ...], blocks: int, groups: int,
                 num_classes: int | None, heads: int = 4, dropout: float = 0.0):
        super().__init__()
        lib = require("diffusers", "bench", "model.backbone=diffusers")
        levels = len(mults)
        widths = tuple(base * m for m in mults)
        if any(w % groups for w in widths) or widths[levels // 2] % heads:
            raise ConfigError(f"model.backbone=diffusers needs every width {widths} divisible by model.groups={groups} "
                              f"and the middle one by model.heads={heads}")
        down = ["AttnDownBlock2D" if i == levels // 2 else "DownBlock2D" for i in range(levels)]
        up = ["AttnUpBlock2D" if i == (levels - 1) // 2 else "UpBlock2D" for i in range(levels)]
        step = 2 ** (levels - 1)  # the last level does not downsample
        self.size = -(-image_size // step) * step
        self.image_size, self.num_classes = image_size, num_classes
        self.net = lib.UNet2DModel(sample_size=self.size, in_channels=channels, out_channels=channels,
                                   block_out_channels=widths, layers_per_block=blocks, norm_num_groups=groups,
                                   down_block_types=tuple(down), up_block_types=tuple(up), dropout=dropout,
                                   attention_head_dim=widths[levels // 2] // heads,
                                   num_class_embeds=num_classes + 1 if num_classes is not None else None)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        pad = self.size - self.image_size
        if self.num_classes is not None and y is None:  # the "no label" class of guidance
            y = torch.full((len(x),), self.num_classes, dtype=torch.long, device=x.device)
        out = self.net(F.pad(x, (0, pad, 0, pad)) if pad else x, t, class_labels=y).sample  # (B, C, size, size)
        return out[..., :self.image_size, :self.image_size] if pad else out


class LucidrainsUNet(nn.Module):
    def __init__(self, channels: int, image_size: int, base: int, mults: tuple[int, ...], heads: int = 4,
                 dropout: float = 0.0):
        super().__init__()
        lib = require("denoising_diffusion_pytorch", "bench", "model.backbone=ddpm-pytorch")
        if image_size % 2 ** (len(mults) - 1):
            raise ConfigError(f"model.backbone=ddpm-pytorch needs image_size divisible by {2 ** (len(mults) - 1)}")
        self.net = lib.Unet(dim=base, dim_mults=tuple(mults), channels=channels, dropout=dropout, attn_heads=heads,
                            flash_attn=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x, t)


def build_backbone(cfg) -> nn.Module:
    """The network `cfg.backbone` names, sized by the DiffusionConfig's UNet fields."""
    if cfg.backbone == "diffusers":
        return DiffusersUNet(cfg.channels, cfg.image_size, cfg.base_channels, cfg.channel_mults, cfg.num_res_blocks,
                             cfg.groups, cfg.num_classes if cfg.conditional else None, cfg.heads, cfg.dropout)
    if cfg.conditional:
        raise ConfigError("model.backbone=ddpm-pytorch has no class conditioning; use backbone unet or diffusers, "
                          "or drop the labels")
    return LucidrainsUNet(cfg.channels, cfg.image_size, cfg.base_channels, cfg.channel_mults, cfg.heads, cfg.dropout)
