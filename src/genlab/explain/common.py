"""What the views of `genlab explain` share: their options, what each returns, and drawing."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class ExplainOptions:
    n: int = 8  # samples explained (attribution, neighbours)
    seed: int = 0
    label: int | None = None  # conditional models: the class of samples and traversals
    prompt: str | None = None  # attention: the text to continue (default a newline)
    max_tokens: int = 48  # attention: tokens generated after the prompt
    data_root: str | None = None
    input: str | None = None  # attribution: images to explain (.npz or .png) instead of samples


@dataclass
class Part:
    """What one view made: figures as (file name, caption, PNG bytes), its numbers for
    explain.json, one-line summaries (stdout and the page) and notes."""

    figures: list[tuple[str, str, bytes]] = field(default_factory=list)
    record: dict = field(default_factory=dict)
    summary: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_png(values: np.ndarray, *, title: str, ylabel: str, xlabel: str = "latent dimension") -> bytes:
    """A bar chart of one value per index (e.g. KL per latent dimension) as PNG bytes."""
    plt = pyplot()
    v = np.asarray(values, dtype=float)
    fig, ax = plt.subplots(figsize=(min(12, 2 + 0.25 * len(v)), 2.8))
    ax.bar(np.arange(len(v)), v, color="#4477aa")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return figure_png(fig)


def heatmap_rgb(a: torch.Tensor) -> torch.Tensor:
    """Signed maps (B, H, W) -> uint8 (B, 3, H, W) pictures: white at 0, red for positive and
    blue for negative values, full colour at each map's 99th percentile of |value| (so a few
    extreme pixels do not wash out the rest)."""
    a = a.detach().float().cpu()
    m = a.abs().flatten(1).quantile(0.99, dim=1).clamp(min=1e-12)[:, None, None]  # (B, 1, 1)
    t = (a / m).clamp(-1, 1)
    pos, neg = t.clamp(min=0), (-t).clamp(min=0)
    rgb = torch.stack([1 - neg, 1 - pos - neg, 1 - pos], dim=1)  # (B, 3, H, W)
    return (rgb * 255).round().to(torch.uint8)


def rgb(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 1 or 3, H, W) -> uint8 (B, 3, H, W)."""
    return images.expand(-1, 3, -1, -1).contiguous() if images.shape[1] == 1 else images


def slug(text: str) -> str:
    """A file-name-safe lower-case form of `text`: 'label evidence' -> 'label-evidence'."""
    s = "".join(c if c.isalnum() else "-" for c in text.lower())
    return "-".join(p for p in s.split("-") if p)
