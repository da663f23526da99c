"""A UNet for small images (Ho et al. 2020; Nichol & Dhariwal 2021), sized by `UNetConfig`.

Residual blocks with GroupNorm and scale-shift time conditioning, a sinusoidal time embedding,
self-attention only at the low resolutions listed in `attention_resolutions` (attention at
28x28 would cost more than every convolution together on a CPU), optional class conditioning
added to the time embedding (index `num_classes` is the "no label" token for classifier-free
guidance).

An optional pixel-unshuffle stem (`patch`) folds p x p pixel blocks into channels, so the
whole network runs at 1/p of the resolution (p = 2: 28x28x1 -> 14x14x4, about 3.7x fewer
FLOPs for the same widths) and a pixel shuffle unfolds the output.

CPU speed: activations and 4-D weights are kept channels_last (oneDNN's preferred layout; a
training step at batch 64 ran 4% faster than contiguous on the AMD EPYC development machine);
attention is one fused SDPA call; down/up sampling are a strided conv and nearest + conv (no
transposed convs). Under bf16 autocast the convolutions run in bf16 but GroupNorm and, on a
CPU, the attention product run in fp32 (`float_norm`, `Attention`): in bf16 those two made a
ddpm-mnist training step 1.35x slower than fp32 on an Intel Xeon with AMX (batch 64, 2 threads),
where with them in fp32 the step is 1.4x faster than fp32 (146 against 199 ms in the train log).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class UNetConfig:
    in_channels: int = 1
    out_channels: int = 1
    image_size: int = 28
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)  # one level per entry; each level but the last halves the size
    num_res_blocks: int = 2  # per level on the way down (one more on the way up)
    attention_resolutions: tuple[int, ...] = (7,)  # feature-map sizes (after the stem) that get self-attention
    heads: int = 4
    dropout: float = 0.0
    groups: int = 8  # GroupNorm groups
    num_classes: int | None = None  # class-conditional when set (+1 "no label" embedding)
    patch: int = 1  # pixel-unshuffle stem: the network runs at image_size / patch with C * patch^2 channels


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of (B,) steps -> (B, dim): [cos(t w_i), sin(t w_i)], w_i geometric."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def _in_fp32(fn, *xs: torch.Tensor) -> torch.Tensor:
    """fn(*xs) with autocast off and 16-bit inputs in fp32, the result in the first input's dtype;
    other inputs (fp32, fp64) pass as they are."""
    if xs[0].dtype not in (torch.bfloat16, torch.float16):
        return fn(*xs)
    with torch.autocast(xs[0].device.type, enabled=False):
        return fn(*(x.float() for x in xs)).to(xs[0].dtype)


def float_norm(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """`norm(x)` computed in fp32 and returned in x's dtype: the same numbers as the bf16 kernel
    (which accumulates in fp32 too) but on a CPU the fp32 kernel and its backward are ~3x faster.
    The module is called as it is, so hooks on it (Opacus's per-example gradients) still see it."""
    return _in_fp32(norm, x)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, temb: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(temb, 2 * c_out)  # scale and shift of norm2
        self.norm2 = nn.GroupNorm(min(groups, c_out), c_out)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(float_norm(self.norm1, x)))  # (B, c_out, H, W)
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)  # (B, c_out, 1, 1) each
        h = float_norm(self.norm2, h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    def __init__(self, c: int, heads: int, groups: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(min(groups, c), c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj = nn.Conv2d(c, c, 1)
        self.memory_format = torch.channels_last  # see UNet.use_memory_format
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        nh = self.heads
        qkv = self.qkv(float_norm(self.norm, x)).reshape(B, 3, nh, C // nh, H * W)  # (B, 3, nh, hs, HW)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # (B, nh, HW, hs) each
        if q.device.type == "cpu":  # the CPU's 16-bit attention backward is slow: fp32 there
            h = _in_fp32(F.scaled_dot_product_attention, q, k, v)  # (B, nh, HW, hs)
        else:
            h = F.scaled_dot_product_attention(q, k, v)
        h = h.transpose(-1, -2).reshape(B, C, H, W)  # (B, C, H, W)
        return x + self.proj(h.contiguous(memory_format=self.memory_format))


class Down(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)  # (B, c, ceil(H/2), ceil(W/2))


class Up(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=size, mode="nearest"))  # (B, c, *size)


class UNet(nn.Module):
    """(x_t (B, C, H, W), t (B,) long, y (B,) long or None) -> (B, out_channels, H, W)."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        ch = cfg.base_channels
        temb = 4 * ch
        self.time_mlp = nn.Sequential(nn.Linear(ch, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.class_emb = nn.Embedding(cfg.num_classes + 1, temb) if cfg.num_classes else None
        if cfg.image_size % cfg.patch:
            raise ValueError(f"image size {cfg.image_size} is not divisible by patch {cfg.patch}")
        p2 = cfg.patch ** 2
        self.conv_in = nn.Conv2d(cfg.in_channels * p2, ch, 3, padding=1)
        g, dr = cfg.groups, cfg.dropout

        # feature-map size of each level: 28 -> 14 -> 7 (odd sizes round up, as the strided conv does)
        sizes = [cfg.image_size // cfg.patch]
        for _ in cfg.channel_mults[1:]:
            sizes.append((sizes[-1] + 1) // 2)
        self.down = nn.ModuleList()
        skips, c = [ch], ch
        for i, m in enumerate(cfg.channel_mults):
            for _ in range(cfg.num_res_blocks):
                blocks = [ResBlock(c, ch * m, temb, g, dr)]
                c = ch * m
                if sizes[i] in cfg.attention_resolutions:
                    blocks.append(Attention(c, cfg.heads, g))
                self.down.append(nn.ModuleList(blocks))
                skips.append(c)
            if i < len(cfg.channel_mults) - 1:
                self.down.append(Down(c))
                skips.append(c)
        self.mid = nn.ModuleList([ResBlock(c, c, temb, g, dr), Attention(c, cfg.heads, g), ResBlock(c, c, temb, g, dr)])
        self.up = nn.ModuleList()
        for i, m in reversed(list(enumerate(cfg.channel_mults))):
            for _ in range(cfg.num_res_blocks + 1):
                blocks = [ResBlock(c + skips.pop(), ch * m, temb, g, dr)]
                c = ch * m
                if sizes[i] in cfg.attention_resolutions:
                    blocks.append(Attention(c, cfg.heads, g))
                self.up.append(nn.ModuleList(blocks))
            if i > 0:
                self.up.append(Up(c))  # the output size is taken from the matching skip
        self.out = nn.Sequential(nn.GroupNorm(min(g, c), c), nn.SiLU(), nn.Conv2d(c, cfg.out_channels * p2, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)
        self.use_memory_format(torch.channels_last)

    def use_memory_format(self, fmt: torch.memory_format) -> None:
        """Keep weights and activations in `fmt`: channels_last for speed; private training
        switches to torch.contiguous_format, the layout Opacus's per-example conv gradients
        are right for (with channels_last they were not, in a test against autograd)."""
        self.memory_format = fmt
        for m in self.modules():
            if isinstance(m, Attention):
                m.memory_format = fmt
        self.to(memory_format=fmt)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.cfg.base_channels))  # (B, 4ch)
        if self.class_emb is not None:
            if y is None:  # unconditional: the "no label" token
                y = torch.full((x.shape[0],), self.cfg.num_classes, device=x.device, dtype=torch.long)
            emb = emb + self.class_emb(y)
        emb = F.silu(emb)
        if self.cfg.patch > 1:
            x = F.pixel_unshuffle(x, self.cfg.patch)  # (B, C p^2, H/p, W/p)
        h = self.conv_in(x.contiguous(memory_format=torch.contiguous_format))  # (B, ch, H/p, W/p)
        hs = [h]
        for blk in self.down:
            if isinstance(blk, Down):
                h = blk(h)
            else:
                h = blk[0](h, emb)
                for a in blk[1:]:
                    h = a(h)
            hs.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, emb)), emb)
        for blk in self.up:
            if isinstance(blk, Up):
                h = blk(h, hs[-1].shape[-2:])
            else:
                h = blk[0](torch.cat([h, hs.pop()], dim=1), emb)  # (B, c + c_skip, H, W)
                for a in blk[1:]:
                    h = a(h)
        out = self.out[2](self.out[1](float_norm(self.out[0], h)))  # (B, out_channels p^2, H/p, W/p)
        return F.pixel_shuffle(out, self.cfg.patch) if self.cfg.patch > 1 else out
