"""Feed-forward style transfer (Johnson et al. 2016): a small image-to-image network trained for
one style with the perceptual losses of `genlab.metrics.style`, so that stylising a photo is one
forward pass instead of an optimisation.

Network (all convolutions reflect-padded, instance norm (Ulyanov et al. 2016) and ReLU after
each but the last): a 9x9 convolution to `width` channels, two stride-2 3x3 convolutions (2w,
4w channels at 1/2 and 1/4 of the size), `res_blocks` residual blocks at 4w, and back up with
nearest-neighbour 2x upsampling + 3x3 convolution twice (instead of transposed convolutions,
which leave checkerboard artefacts; Odena et al. 2016), then a 9x9 convolution to RGB and a
sigmoid: pixels in [0, 1]. Fully convolutional: any image size (padded to a multiple of 4 and
cropped back).

Training batches ("x": content crops (B, 3, S, S) in [0, 1]; "style": the style image
(1, 3, h, w)) come from a style-transfer run's data (`genlab.data.photos.StyleData`); the loss
is content_weight * content + style_weight * style + tv_weight * tv of the output against its
own input (content) and the style image. Registered as "style"; preset `style-transfer`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genlab.errors import ConfigError
from genlab.metrics.style import FeatureSpec, PerceptualLoss
from genlab.models.base import GenerativeModel
from genlab.registry import register


@dataclass
class StyleConfig:
    width: int = 16  # channels of the first layer (2x and 4x after the two downsamplings)
    res_blocks: int = 5
    content_weight: float = 1.0
    style_weight: float = 100.0
    tv_weight: float = 1.0
    # the random feature network of the losses (genlab.metrics.style.FeatureSpec)
    feature_widths: tuple[int, ...] = FeatureSpec.widths
    feature_seed: int = FeatureSpec.seed
    content_level: int = FeatureSpec.content_level
    channels: int | None = None  # filled in from the data; must be 3 (colour)

    def validate(self) -> None:
        if self.width < 1 or self.res_blocks < 0:
            raise ConfigError(f"model.width must be >= 1 and model.res_blocks >= 0, got {self.width}, "
                              f"{self.res_blocks}")
        if min(self.content_weight, self.style_weight, self.tv_weight) < 0:
            raise ConfigError("model.content_weight, style_weight and tv_weight must be >= 0")
        if not self.feature_widths or min(self.feature_widths) < 1:
            raise ConfigError(f"model.feature_widths must be a list of channel counts >= 1, got "
                              f"{list(self.feature_widths)}")
        if not 0 <= self.content_level < len(self.feature_widths):
            raise ConfigError(f"model.content_level must be in 0..{len(self.feature_widths) - 1} (a level of "
                              f"model.feature_widths), got {self.content_level}")

    def feature_spec(self) -> FeatureSpec:
        return FeatureSpec(widths=tuple(self.feature_widths), seed=self.feature_seed,
                           style_levels=tuple(range(len(self.feature_widths))), content_level=self.content_level)


def conv(c_in: int, c_out: int, k: int, stride: int = 1, act: bool = True) -> nn.Sequential:
    """Reflect padding, convolution, then instance norm and ReLU when `act`."""
    layers = [nn.ReflectionPad2d(k // 2), nn.Conv2d(c_in, c_out, k, stride)]
    if act:
        layers += [nn.InstanceNorm2d(c_out, affine=True), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(conv(c, c, 3), nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3),
                                  nn.InstanceNorm2d(c, affine=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class StyleNet(GenerativeModel):
    """Images in [0, 1] (B, 3, H, W) -> their stylisation (B, 3, H, W) in [0, 1]."""

    draws_samples = False

    def __init__(self, cfg: StyleConfig):
        super().__init__()
        if cfg.channels not in (None, 3):
            raise ConfigError(f"style-transfer needs colour images (3 channels), the data has {cfg.channels}; "
                              "set data.channels=3")
        self.cfg = cfg
        w = cfg.width
        self.net = nn.Sequential(
            conv(3, w, 9), conv(w, 2 * w, 3, 2), conv(2 * w, 4 * w, 3, 2),
            *[ResBlock(4 * w) for _ in range(cfg.res_blocks)],
            nn.Upsample(scale_factor=2, mode="nearest"), conv(4 * w, 2 * w, 3),
            nn.Upsample(scale_factor=2, mode="nearest"), conv(2 * w, w, 3),
            conv(w, 3, 9, act=False))
        self.perceptual = PerceptualLoss(cfg.feature_spec(), cfg.content_weight, cfg.style_weight, cfg.tv_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        ph, pw = -H % 4, -W % 4  # to a multiple of 4, so both downsamplings come back to the same size
        h = F.pad(2 * x - 1, (0, pw, 0, ph), mode="reflect") if ph or pw else 2 * x - 1
        return torch.sigmoid(self.net(h))[..., :H, :W]  # (B, 3, H, W)

    def loss(self, batch: dict[str, torch.Tensor], opt: str = "model") -> dict[str, torch.Tensor]:
        """Content, style and TV terms (batch means) of the stylised batch["x"] against itself and
        batch["style"]; "loss" is their weighted sum."""
        if "style" not in batch:
            raise ConfigError("style-transfer batches need the style image: train with data.style=IMAGE")
        x = batch["x"]
        content, grams = self.perceptual.targets(x, batch["style"])
        terms = self.perceptual(self(x), content, grams)
        return {k: v.mean() for k, v in terms.items()}

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator, labels: torch.Tensor | None = None) -> torch.Tensor:
        raise ConfigError("a style-transfer run transforms photos and draws no samples: use "
                          "`genlab apply RUN_DIR style --content PHOTO --out OUT.png`")


register("style", StyleConfig, StyleNet)
