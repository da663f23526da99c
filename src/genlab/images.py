"""Writing image batches: a PNG grid, an .npz (`images` uint8 N x C x H x W, `labels`),
or a folder of PNGs. All writes are atomic."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from genlab.engine.checkpoint import atomic_write_bytes
from genlab.errors import ShapeError


def resize_uint8(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize uint8 (N, C, H, W) images to `size` (antialiased bilinear); no-op if equal."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    y = F.interpolate(x.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8)


def make_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """uint8 (N, C, H, W) -> one uint8 (H', W', C) grid image."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ShapeError(f"expected uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    N, C, H, W = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(N)))
    rows = math.ceil(N / nrow)
    grid = torch.zeros(C, rows * (H + pad) + pad, nrow * (W + pad) + pad, dtype=torch.uint8)
    for i in range(N):
        r, c = divmod(i, nrow)
        y0, x0 = pad + r * (H + pad), pad + c * (W + pad)
        grid[:, y0:y0 + H, x0:x0 + W] = images[i]
    return grid.permute(1, 2, 0).numpy()


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    a = array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def npz_bytes(images: torch.Tensor, labels: torch.Tensor | None = None) -> bytes:
    """uint8 (N, C, H, W) images (and int64 labels) as the bytes of a compressed .npz."""
    arrays = {"images": images.numpy()}
    if labels is not None:
        arrays["labels"] = labels.to(torch.int64).numpy()
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def encode_images(fmt: str, images: torch.Tensor, labels: torch.Tensor | None = None,
                  nrow: int | None = None) -> bytes:
    """The bytes `write_images` writes for FILE.png (a grid) or FILE.npz: fmt "png" | "npz"."""
    if fmt == "png":
        return png_bytes(make_grid(images, nrow))
    if fmt == "npz":
        return npz_bytes(images, labels)
    raise ShapeError(f"image batches are encoded as png or npz, got {fmt!r}")


def save_grid(images: torch.Tensor, path: Path, nrow: int | None = None) -> None:
    atomic_write_bytes(Path(path), encode_images("png", images, nrow=nrow))


def save_npz(path: Path, images: torch.Tensor, labels: torch.Tensor | None = None) -> None:
    atomic_write_bytes(Path(path), encode_images("npz", images, labels))


def numbered_names(n: int, labels: torch.Tensor | None, suffix: str) -> list[str]:
    """The file names of a folder of n samples: 00.png, 01_label3.png, ... (zero-padded indices,
    the label when there is one)."""
    digits = len(str(n - 1))
    return [f"{i:0{digits}d}{'' if labels is None else f'_label{int(labels[i])}'}{suffix}" for i in range(n)]


def save_folder(folder: Path, images: torch.Tensor, labels: torch.Tensor | None = None) -> None:
    folder = Path(folder)
    for img, name in zip(images, numbered_names(len(images), labels, ".png")):
        atomic_write_bytes(folder / name, png_bytes(img.permute(1, 2, 0).numpy()))


def write_images(out: str | Path, images: torch.Tensor, labels: torch.Tensor | None = None,
                 nrow: int | None = None) -> Path:
    """Dispatch on the output name: `.png` grid, `.npz` batch, or `DIR/` of PNGs."""
    out_s = str(out)
    if out_s.endswith(("/", "\\")) or Path(out_s).is_dir():
        save_folder(Path(out_s), images, labels)
    elif out_s.endswith(".png"):
        save_grid(images, Path(out_s), nrow)
    elif out_s.endswith(".npz"):
        save_npz(Path(out_s), images, labels)
    else:
        raise ShapeError(f"--out must end in .png, .npz or / (a folder), got {out_s!r}")
    return Path(out_s)
