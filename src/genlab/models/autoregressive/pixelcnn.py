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
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genlab.errors import ConfigError, ShapeError
from genlab.models.base import GenerativeModel, check_image_fields
from genlab.progress import advance
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

    def conditioning(self, cond: torch.Tensor | None) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        """Class terms added to the vertical and horizontal pre-activations, (B, 2c, 1, 1) each."""
        if self.cond is None:
            return 0.0, 0.0
        cv, ch = self.cond(cond)[:, :, None, None].chunk(2, dim=1)
        return cv, ch

    def vertical(self, v: torch.Tensor, padded: bool = True) -> torch.Tensor:
        """The vertical stack's pre-activation (B, 2c, H, W) (before the class term).
        padded=False: v holds exactly the k//2 + 1 rows that one output row reads."""
        p = self.k // 2
        return self.v_conv(F.pad(v, (p, p, p if padded else 0, 0)))

    def horizontal(self, h: torch.Tensor, from_v: torch.Tensor, ch) -> torch.Tensor:
        """The horizontal stack's output from its input h and the vertical stack's term from_v."""
        h_pre = self.h_conv(F.pad(h, (self.k // 2, 0, 0, 0))) + from_v + ch
        h_new = self.h_out(_gate(h_pre))
        return h_new if self.first else h + h_new

    def horizontal_column(self, h: torch.Tensor, from_v: torch.Tensor, ch) -> torch.Tensor:
        """`horizontal` for one output column, as matrix products (tiny convolutions cost far
        more in call overhead): h (B, C_in, k//2 + 1) holds the columns it reads, from_v and
        ch (B, 2c) (or ch = 0). Returns (B, c)."""
        h_pre = F.linear(h.flatten(1), self.h_conv.weight.flatten(1), self.h_conv.bias) + from_v + ch
        h_new = _pointwise(self.h_out, _gate(h_pre))
        return h_new if self.first else h[..., -1] + h_new

    def forward(self, v: torch.Tensor, h: torch.Tensor, cond: torch.Tensor | None):
        cv, ch = self.conditioning(cond)
        v_pre = self.vertical(v)  # (B, 2c, H, W)
        return _gate(v_pre + cv), self.horizontal(h, self.v_to_h(shift_down(v_pre)), ch)


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

    # Sampling caches every layer's output, as the Fast PixelCNN++ generation does (Ramachandran
    # et al., 2017): once a row is complete, each layer computes the vertical stack's one new row
    # from the k//2 + 1 rows of its input that row reads; within a row, each new pixel costs one
    # column of the horizontal stack per layer, read from the k//2 + 1 columns to its left (as
    # matrix products). The logits equal the full network's (tested), at about 1/(H W) of its
    # cost per pixel.
    def _raster(self, x: torch.Tensor, rows: list[int], cond: torch.Tensor | None,
                visit: Callable[[int, int, torch.Tensor], None]) -> None:
        """Call visit(i, j, logits (B, C, levels)) for every pixel of the rows in `rows` (sorted),
        in raster order; visit may write x[:, :, i, j] before the next pixel is computed."""
        B, C, H, W = x.shape
        conds = [layer.conditioning(cond) for layer in self.layers]
        ch = [c if isinstance(c, float) else c.flatten(1) for _, c in conds]  # (B, 2c) or 0
        v_out = [x.new_zeros(B, self.cfg.hidden, H, W) for _ in self.layers]  # gated vertical outputs
        zero = x.new_zeros(B, 2 * self.cfg.hidden, 1, W)
        wanted = set(rows)
        for i in range(rows[-1] + 1 if rows else 0):
            # the vertical stack's terms for row i come from row i - 1 (shift_down), now complete
            terms = []
            for li, layer in enumerate(self.layers):
                if i == 0:
                    terms.append(layer.v_to_h(zero)[:, :, 0])
                    continue
                src = self._input(x) if li == 0 else v_out[li - 1]  # zero padding comes after _input
                v = _left(src, i - 1, layer.k // 2 + 1, 2)
                v_pre = layer.vertical(v, padded=False)  # (B, 2c, 1, W): row i - 1
                terms.append(layer.v_to_h(v_pre)[:, :, 0])  # (B, 2c, W)
                v_out[li][:, :, i - 1:i] = _gate(v_pre + conds[li][0])
            if i not in wanted:
                continue
            h = [x.new_zeros(B, C, W)] + [x.new_zeros(B, self.cfg.hidden, W) for _ in self.layers]
            for j in range(W):
                if j > 0:  # the first layer's input is the row shifted right by one pixel
                    h[0][:, :, j] = self._input(x[:, :, i, j - 1])
                for li, layer in enumerate(self.layers):
                    h[li + 1][:, :, j] = layer.horizontal_column(_left(h[li], j, layer.k // 2 + 1, 2),
                                                                 terms[li][:, :, j], ch[li])
                out = h[-1][:, :, j]
                for mod in self.head:  # ReLU and 1x1 convolutions, as matrix products
                    out = _pointwise(mod, out) if isinstance(mod, nn.Conv2d) else mod(out)
                visit(i, j, out.view(B, C, self.levels))
                advance(i * W + j + 1, (rows[-1] + 1) * W)  # progress within the caller's batch

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
        if self.conditional and labels is None:
            raise ConfigError("this PixelCNN is class-conditional: pass labels (--label)")
        rows = torch.nonzero((~known).any(dim=3).any(dim=1).any(dim=0)).flatten().tolist()  # rows with gaps

        def draw(i: int, j: int, logits: torch.Tensor) -> None:
            todo = ~known[:, 0, i, j]
            if todo.any():
                x[todo, :, i, j] = self._draw(logits, generator)[todo]

        self._raster(x, rows, self.embed(labels) if self.embed is not None else None, draw)
        return x

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator, labels: torch.Tensor | None = None) -> torch.Tensor:
        c = self.cfg
        dev = next(self.parameters()).device
        x = torch.zeros(n, c.channels, c.image_size, c.image_size, device=dev)
        known = torch.zeros(1, 1, c.image_size, c.image_size, dtype=torch.bool, device=dev)
        return self.complete(x, known, generator=generator, labels=None if labels is None else labels.to(dev))


def _pointwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution applied to one position's features x (B, C_in) -> (B, C_out)."""
    return F.linear(x, conv.weight.flatten(1), conv.bias)


def _left(t: torch.Tensor, end: int, n: int, dim: int) -> torch.Tensor:
    """Entries end - n + 1 .. end of t along dim, zeros standing in for those before 0: what a
    convolution n wide, run without padding, reads to give position `end`."""
    lo = end - n + 1
    part = t.narrow(dim, max(lo, 0), end + 1 - max(lo, 0))
    if lo >= 0:
        return part
    return F.pad(part, [0, 0] * (t.dim() - 1 - dim) + [-lo, 0])


register("pixelcnn", PixelCNNConfig, PixelCNN)
