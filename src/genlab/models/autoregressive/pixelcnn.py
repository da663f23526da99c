"""Gated PixelCNN (van den Oord et al., 2016): an autoregressive image model with an exact
likelihood, p(x) = prod_i p(x_i | x_<i) over pixels in raster order.

Two stacks of causal convolutions, built by padding and cropping rather than masked weights:
  - the vertical stack at (i, j) sees rows <= i (a (k//2+1) x k kernel over the rows above and
    the current one); it reaches the horizontal stack only shifted down by one row, so the
    horizontal stack at (i, j) gets everything in rows < i, with no blind spot;
  - the horizontal stack at (i, j) sees columns <= j of row i (a 1 x (k//2+1) kernel); the
    first layer takes the image shifted right by one pixel ("mask A": the pixel itself is
    excluded); later layers include their own position ("mask B").
Each layer is gated, tanh(a) * sigmoid(b), with an optional class embedding added to both
stacks. Pixels are Bernoulli (binarised data) or 256-way categorical; the channels of one pixel
are modelled independently given the previous pixels (still an exact, normalised likelihood).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genlab.errors import ConfigError, ShapeError
from genlab.models.base import GenerativeModel, check_image_fields
from genlab.registry import register


@dataclass
class PixelCNNConfig:
    likelihood: str = "bernoulli"  # bernoulli (binarised data in {0, 1}) | categorical (256 levels)
    hidden: int = 64  # channels of each stack
    layers: int = 10  # gated layers
    kernel: int = 5  # odd kernel width of the stacks (the first layer uses 7)
    out_hidden: int = 256  # width of the 1x1 output head
    conditional: bool = False
    # Filled in from the data when left None.
    channels: int | None = None
    image_size: int | None = None
    num_classes: int | None = None

    def validate(self) -> None:
        if self.likelihood not in ("bernoulli", "categorical"):
            raise ConfigError(f"model.likelihood must be bernoulli or categorical, got {self.likelihood!r}")
        if self.kernel < 3 or self.kernel % 2 == 0:
            raise ConfigError(f"model.kernel must be odd and >= 3, got {self.kernel}")
        if self.layers < 1 or self.hidden < 1:
            raise ConfigError("model.layers and model.hidden must be >= 1")


def shift_down(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> row i holds row i-1 (row 0 zeros)."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def shift_right(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> column j holds column j-1 (column 0 zeros)."""
    return F.pad(x, (1, 0))[..., :-1]


def _gate(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    """One gated layer of both stacks; `first` = mask A (no residual, input channels c_in)."""

    def __init__(self, c_in: int, c: int, k: int, first: bool, cond_dim: int):
        super().__init__()
        self.first, self.k = first, k
        self.v_conv = nn.Conv2d(c_in, 2 * c, (k // 2 + 1, k))  # rows i-k//2..i, cols j-k//2..j+k//2
        self.h_conv = nn.Conv2d(c_in, 2 * c, (1, k // 2 + 1))  # cols j-k//2..j of row i
        self.v_to_h = nn.Conv2d(2 * c, 2 * c, 1)
        self.h_out = nn.Conv2d(c, c, 1)
        self.cond = nn.Linear(cond_dim, 4 * c) if cond_dim else None

    def forward(self, v: torch.Tensor, h: torch.Tensor, cond: torch.Tensor | None):
        p = self.k // 2
        v_pre = self.v_conv(F.pad(v, (p, p, p, 0)))  # (B, 2c, H, W)
        h_pre = self.h_conv(F.pad(h, (p, 0, 0, 0))) + self.v_to_h(shift_down(v_pre))
        if self.cond is not None:
            cv, ch = self.cond(cond)[:, :, None, None].chunk(2, dim=1)  # (B, 2c, 1, 1) each
            v_pre, h_pre = v_pre + cv, h_pre + ch
        h_new = self.h_out(_gate(h_pre))
        return _gate(v_pre), (h_new if self.first else h + h_new)


class PixelCNN(GenerativeModel):
    def __init__(self, cfg: PixelCNNConfig):
        super().__init__()
        check_image_fields(cfg, "PixelCNN")
        self.cfg = cfg
        self.conditional, self.num_classes = cfg.conditional, cfg.num_classes
        self.levels = 1 if cfg.likelihood == "bernoulli" else 256
        C, c = cfg.channels, cfg.hidden
        cond_dim = c if cfg.conditional else 0
        self.embed = nn.Embedding(cfg.num_classes, cond_dim) if cfg.conditional else None
        self.layers = nn.ModuleList([GatedLayer(C, c, 7, True, cond_dim)] +
                                    [GatedLayer(c, c, cfg.kernel, False, cond_dim) for _ in range(cfg.layers - 1)])
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(c, cfg.out_hidden, 1), nn.ReLU(),
                                  nn.Conv2d(cfg.out_hidden, C * self.levels, 1))

    # ------------------------------------------------------------------ the network
    def _input(self, x: torch.Tensor) -> torch.Tensor:
        """Data space ({0,1} or [0,1] floats) -> network input centred on 0."""
        return 2 * x - 1

    def logits(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W) in data space -> logits (B, C, levels, H, W) (bernoulli: levels 1);
        position (c, i, j) depends only on pixels before (i, j) in raster order."""
        B, C, H, W = x.shape
        cond = self.embed(y) if self.embed is not None else None
        inp = self._input(x)
        v, h = inp, shift_right(inp)
        for layer in self.layers:
            v, h = layer(v, h, cond)
        return self.head(h).view(B, C, self.levels, H, W)

    def _nll_per_image(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """-log p(x) in nats per image, (B,), from one forward pass."""
        lg = self.logits(x, y).float()
        if self.levels == 1:
            return F.binary_cross_entropy_with_logits(lg[:, :, 0], x.float(), reduction="none").flatten(1).sum(1)
        target = (x * 255).round().long()  # (B, C, H, W) pixel levels
        return F.cross_entropy(lg.permute(0, 2, 1, 3, 4), target, reduction="none").flatten(1).sum(1)

    def _check(self, x: torch.Tensor) -> None:
        c = self.cfg
        if x.dim() != 4 or tuple(x.shape[1:]) != (c.channels, c.image_size, c.image_size):
            raise ShapeError(f"PixelCNN expects (B, {c.channels}, {c.image_size}, {c.image_size}), "
                             f"got {tuple(x.shape)}")

    def loss(self, batch: dict[str, torch.Tensor], opt: str = "model") -> dict[str, torch.Tensor]:
        x = batch["x"]
        self._check(x)
        nll = self._nll_per_image(x, batch.get("y")).mean()
        return {"loss": nll, "nll": nll, "bits_per_dim": nll / (x[0].numel() * math.log(2))}

    @torch.no_grad()
    def log_prob(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Exact log p(x) in nats per image, (B,)."""
        self._check(x)
        return -self._nll_per_image(x, y).double()

    # ------------------------------------------------------------------ sampling
    def _draw(self, lg: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Sample pixel values from logits (B, C, levels) -> (B, C) in data space."""
        if self.levels == 1:
            p = torch.sigmoid(lg[..., 0].float())
            return (torch.rand(p.shape, generator=generator, device=generator.device).to(p.device) < p).float()
        probs = torch.softmax(lg.float(), dim=-1).flatten(0, 1)  # (B*C, 256)
        idx = torch.multinomial(probs.cpu(), 1, generator=generator if generator.device.type == "cpu" else None)
        return idx.view(lg.shape[0], lg.shape[1]).to(lg.device).float() / 255

    @torch.no_grad()
    def complete(self, x: torch.Tensor, known: torch.Tensor, *, generator: torch.Generator,
                 labels: torch.Tensor | None = None) -> torch.Tensor:
        """Sample the pixels where `known` (B or 1, 1, H, W bool) is False, in raster order,
        keeping the known ones exactly. Each new pixel is conditioned on every pixel before it
        (known or sampled): exact conditional sampling when the unknown region comes last in
        raster order (e.g. the bottom half), an approximation otherwise."""
        self._check(x)
        x = x.clone()
        B, C, H, W = x.shape
        known = known.expand(B, 1, H, W).to(x.device)
        rows = torch.nonzero((~known).any(dim=3).any(dim=1).any(dim=0)).flatten().tolist()  # rows with gaps
        for i in rows:
            for j in range(W):
                todo = ~known[:, 0, i, j]
                if not todo.any():
                    continue
                lg = self.logits(x[:, :, :i + 1], labels)[:, :, :, i, j]  # rows > i never matter
                x[todo, :, i, j] = self._draw(lg, generator)[todo]
        return x

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator, labels: torch.Tensor | None = None) -> torch.Tensor:
        c = self.cfg
        dev = next(self.parameters()).device
        x = torch.zeros(n, c.channels, c.image_size, c.image_size, device=dev)
        known = torch.zeros(1, 1, c.image_size, c.image_size, dtype=torch.bool, device=dev)
        return self.complete(x, known, generator=generator, labels=None if labels is None else labels.to(dev))


register("pixelcnn", PixelCNNConfig, PixelCNN)
