"""Perceptual losses of neural style transfer (Gatys et al. 2016) on a random-feature network.

Feature network: genlab ships no VGG and must work offline, so the features come from a fixed
multi-scale *random* convolutional network (`RandomFeatures`): levels of 3x3 convolutions with
Gaussian filters drawn from a fixed seed (He initialisation, so every level's activations keep
the input's scale), ReLU, and 2x2 average pooling between levels, so level l sees the image at
1/2^l of its size with a receptive field of about 2^(l+2) pixels. Random shallow networks are
known to capture texture and style statistics through their Gram matrices (Ustyuzhaninov et al.
2017, "What does it take to generate natural textures?"; He et al. 2016, random-weight
networks for style transfer); nothing is trained or downloaded, and the filters are a pure
function of the seed and widths (regenerated, never stored).

Losses, for images in [0, 1] (B, 3, H, W), features F_l (B, C_l, H_l, W_l) at level l:
  - Gram matrix: G_l = F_l F_l^T / (H_l W_l), (B, C_l, C_l): the features' second moments,
    independent of the image size (a style image of any size compares with any content);
  - style loss: sum over the style levels of mean((G_l(x) - G_l(s))^2), the mean over the
    C_l^2 entries (so wide levels do not dominate);
  - content loss: mean((F_l(x) - F_l(c))^2) over the content level's C_l H_l W_l values;
  - total variation: mean over pixels of the squared differences of horizontal and vertical
    neighbours (a smoothness prior against high-frequency artefacts).
Every loss is per image, (B,).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genlab.errors import ShapeError


@dataclass(frozen=True)
class FeatureSpec:
    """The random feature network and which of its levels the losses read."""
    widths: tuple[int, ...] = (16, 32, 64, 128, 256)  # channels at each level (level l: 1/2^l of the size)
    seed: int = 0  # the filters' seed
    style_levels: tuple[int, ...] = (0, 1, 2, 3, 4)
    content_level: int = 2


def gram(f: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) features -> (B, C, C) Gram matrices F F^T / (H W)."""
    B, C, H, W = f.shape
    flat = f.reshape(B, C, H * W)  # (B, C, HW)
    return flat @ flat.transpose(1, 2) / (H * W)  # (B, C, C)


def style_loss(grams_x: list[torch.Tensor], grams_s: list[torch.Tensor]) -> torch.Tensor:
    """sum_l mean over the C_l^2 entries of (G_l(x) - G_l(s))^2; grams_x[l] (B, C, C), grams_s[l]
    (B or 1, C, C). -> (B,)."""
    return sum((gx - gs).pow(2).flatten(1).mean(1) for gx, gs in zip(grams_x, grams_s))


def content_loss(fx: torch.Tensor, fc: torch.Tensor) -> torch.Tensor:
    """mean((F(x) - F(c))^2) per image over (C, H, W); fx, fc (B, C, H, W) -> (B,)."""
    return (fx - fc).pow(2).flatten(1).mean(1)


def tv_loss(x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of vertical plus horizontal neighbours; x (B, C, H, W) -> (B,)."""
    dv = (x[..., 1:, :] - x[..., :-1, :]).pow(2).flatten(1).mean(1)
    dh = (x[..., :, 1:] - x[..., :, :-1]).pow(2).flatten(1).mean(1)
    return dv + dh


def random_filters(widths: tuple[int, ...], seed: int, in_channels: int = 3) -> list[torch.Tensor]:
    """The networks' 3x3 filters, (C_out, C_in, 3, 3) per level, Gaussian with std
    sqrt(2 / fan_in) (He initialisation) from torch.Generator(seed)."""
    g = torch.Generator().manual_seed(seed)
    out, c_in = [], in_channels
    for c in widths:
        out.append(torch.randn(c, c_in, 3, 3, generator=g) * math.sqrt(2.0 / (9 * c_in)))
        c_in = c
    return out


class RandomFeatures(nn.Module):
    """The fixed random feature network: images in [0, 1] (B, 3, H, W) -> one feature map
    (B, C_l, H / 2^l, W / 2^l) per level. Its filters are non-persistent buffers (not in
    checkpoints: a pure function of `spec`) and take no gradient."""

    def __init__(self, spec: FeatureSpec = FeatureSpec()):
        super().__init__()
        self.spec = spec
        for i, w in enumerate(random_filters(spec.widths, spec.seed)):
            self.register_buffer(f"w{i}", w, persistent=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ShapeError(f"the style feature network takes RGB images (B, 3, H, W), got {tuple(x.shape)}")
        h = 2 * x - 1  # centred: a filter responds to contrast, not to the mean grey
        feats = []
        for i in range(len(self.spec.widths)):
            if i:
                h = F.avg_pool2d(h, 2, ceil_mode=True)
            h = F.relu(F.conv2d(F.pad(h, (1, 1, 1, 1), mode="reflect"), getattr(self, f"w{i}")))
            feats.append(h)
        return feats

    def min_side(self) -> int:
        """The smallest image side every level can read (2 pixels at the deepest level)."""
        return 2 ** len(self.spec.widths)


class PerceptualLoss(nn.Module):
    """Weighted content + style + total-variation loss of images x against content images c and
    one style image s, on `RandomFeatures`."""

    def __init__(self, spec: FeatureSpec = FeatureSpec(), content_weight: float = 1.0, style_weight: float = 1.0,
                 tv_weight: float = 0.0):
        super().__init__()
        self.features = RandomFeatures(spec)
        self.spec = spec
        self.content_weight, self.style_weight, self.tv_weight = content_weight, style_weight, tv_weight

    def targets(self, content: torch.Tensor, style: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(content features (B, C, h, w) at the content level, the style's Gram matrices
        [(1, C_l, C_l)]) for content (B, 3, H, W) and style (1, 3, H', W'), without gradient."""
        with torch.no_grad():
            fc = self.features(content)[self.spec.content_level]
            fs = self.features(style)
            return fc, [gram(fs[i]) for i in self.spec.style_levels]

    def forward(self, x: torch.Tensor, content_target: torch.Tensor,
                style_grams: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-image terms (B,) of x (B, 3, H, W): {"loss": the weighted sum, "content",
        "style", "tv"} (unweighted)."""
        f = self.features(x)
        terms = {"content": content_loss(f[self.spec.content_level], content_target),
                 "style": style_loss([gram(f[i]) for i in self.spec.style_levels], style_grams),
                 "tv": tv_loss(x)}
        terms["loss"] = (self.content_weight * terms["content"] + self.style_weight * terms["style"]
                         + self.tv_weight * terms["tv"])
        return terms
