"""Reading and writing the images `genlab apply` works on, and moving them in and out of a
run's data space.

Inputs: `.npz` holding `images` (uint8, N x C x H x W, as `genlab sample` writes; `labels` kept
if present) or one `.png`. Outputs are written atomically by name: `.npz` keeps the `images` key,
uint8 dtype and N x C x H x W layout (and the input's labels); `.png` is the image itself for one
image, else a grid (`genlab apply` writes several as a strip of labelled rows: `labelled_rows`).
"""

from __future__ import annotations

import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from genlab.data.transforms import normalize
from genlab.errors import DataError, ShapeError
from genlab.images import encode_images, make_grid, png_bytes


@dataclass
class ImageBatch:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor | None  # int64 (N,) from an .npz, else None
    kind: str  # "npz" | "png"


def read_images(path: str | Path, channels: int) -> ImageBatch:
    """An .npz (`images` uint8 N x C x H x W) or a PNG (converted to `channels` channels)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"input {p} not found")
    if p.suffix not in (".png", ".npz"):
        raise DataError(f"--input must be an .npz (images uint8 N x C x H x W) or a .png, got {p.name}")
    return decode_images(p, p.suffix[1:], channels, str(p))


def decode_images(source: str | Path | BinaryIO, kind: str, channels: int, name: str) -> ImageBatch:
    """`read_images` for a file or a binary stream (an upload) of `kind` "png" or "npz";
    `name` is how error messages call it."""
    if kind == "png":
        from PIL import Image, UnidentifiedImageError

        try:
            img = Image.open(source).convert("L" if channels == 1 else "RGB")
        except UnidentifiedImageError:
            raise DataError(f"cannot read {name} as a PNG: not an image format Pillow knows") from None
        except (Image.DecompressionBombError, OSError, ValueError) as e:  # truncated, damaged, huge
            raise DataError(f"cannot read {name} as a PNG: {e}") from None
        a = np.asarray(img, dtype=np.uint8)
        a = a[None, None] if a.ndim == 2 else a.transpose(2, 0, 1)[None]  # (1, C, H, W)
        return ImageBatch(torch.from_numpy(a.copy()), None, "png")
    try:
        z = np.load(source)
        if not isinstance(z, np.lib.npyio.NpzFile):  # a bare .npy array
            raise DataError(f"cannot read {name} as .npz: it holds one bare array; save it with "
                            "np.savez(FILE, images=...)")
        with z:
            if "images" not in z:
                raise ShapeError(f"{name} has no 'images' array (found: {', '.join(z.files) or 'nothing'})")
            a, labels = z["images"], (z["labels"] if "labels" in z else None)
    except (OSError, ValueError, EOFError, RuntimeError, NotImplementedError, zipfile.BadZipFile, zlib.error) as e:
        # damaged, encrypted or oddly compressed archives, pickled objects (refused)
        raise DataError(f"cannot read {name} as .npz: {e}") from None
    if a.dtype != np.uint8 or a.ndim != 4 or a.shape[1] != channels or a.shape[0] == 0:
        raise ShapeError(f"{name}: 'images' must be uint8 N x {channels} x H x W with N >= 1, "
                         f"got {a.dtype} {tuple(a.shape)}")
    if labels is not None and (labels.shape != (len(a),) or labels.dtype.kind not in "iu"):
        raise ShapeError(f"{name}: 'labels' must be integers of shape ({len(a)},), one per image, "
                         f"got {labels.dtype} {tuple(labels.shape)}")
    return ImageBatch(torch.from_numpy(a.copy()), None if labels is None else torch.from_numpy(labels).long(), "npz")


def check_size(images: torch.Tensor, size: tuple[int, int], what: str) -> None:
    if tuple(images.shape[-2:]) != tuple(size):
        raise ShapeError(f"{what} must be {size[0]}x{size[1]} images, got {images.shape[-2]}x{images.shape[-1]}")


def output_bytes(fmt: str, images: torch.Tensor, labels: torch.Tensor | None = None,
                 nrow: int | None = None) -> bytes:
    """uint8 (N, C, H, W) -> the bytes of an .npz (same layout) or a .png (the image, or a grid of
    several); fmt "npz" | "png"."""
    if fmt not in ("npz", "png"):
        raise DataError(f"--out must end in .npz or .png, got {fmt!r}")
    if fmt == "png" and len(images) == 1 and nrow is None:  # one image: the image itself, not a grid
        return png_bytes(np.ascontiguousarray(images[0].permute(1, 2, 0).numpy()))
    return encode_images(fmt, images, labels, nrow)


LABEL_PAD = 4  # pixels of space either side of a row's label


def _font():
    from PIL import ImageFont

    return ImageFont.load_default()


def label_margin(labels: list[str]) -> int:
    """The width in pixels of the label column `labelled_rows` puts left of the rows."""
    font = _font()
    return max(math.ceil(font.getlength(t)) for t in labels) + 2 * LABEL_PAD


def labelled_rows(rows: list[tuple[str, torch.Tensor]], ncol: int, pad: int = 2) -> np.ndarray:
    """Rows of images with a text label at the left of each -> one uint8 (H', W', C) image: the
    `make_grid` of the rows (each (k <= ncol, C, H, W) uint8, short rows left blank at the end)
    with a column of width `label_margin` in front, the labels drawn in PIL's default font.

    Args:
        rows: (label, images) pairs, top to bottom.
        ncol: images per row.
    Returns:
        (rows (H + pad) + pad, label_margin + ncol (W + pad) + pad, C) uint8.
    """
    from PIL import Image, ImageDraw

    C, H, W = rows[0][1].shape[1:]
    blank = torch.zeros(1, C, H, W, dtype=torch.uint8)
    cells = torch.cat([torch.cat([imgs, blank.expand(ncol - len(imgs), C, H, W)]) for _, imgs in rows])
    grid = make_grid(cells, nrow=ncol, pad=pad)  # (H', W', C)
    margin = label_margin([t for t, _ in rows])
    canvas = Image.new("L" if C == 1 else "RGB", (margin + grid.shape[1], grid.shape[0]), 0)
    draw, font = ImageDraw.Draw(canvas), _font()
    for r, (text, _) in enumerate(rows):
        _, top, _, bottom = font.getbbox(text)
        y = pad + r * (H + pad) + (H - top - bottom) / 2  # the text's ink centred on the row
        draw.text((LABEL_PAD, y), text, fill=255 if C == 1 else (255, 255, 255), font=font)
    out = np.array(canvas).reshape(grid.shape[0], -1, C)
    out[:, margin:] = grid
    return out


def to_model_space(run, images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> floats in the run's data space (no augmentation or binarisation)."""
    p = run.pipeline
    return normalize(images, p.mode, p.mean, p.std).to(run.device)


def pixel_scale(run) -> float:
    """How far 1.0 on the [0, 1] pixel scale is in the run's data space (2 for [-1, 1])."""
    p = run.pipeline
    lo = normalize(torch.zeros(1, 1, 1, 1, dtype=torch.uint8), p.mode, p.mean[:1], p.std[:1])
    hi = normalize(torch.full((1, 1, 1, 1), 255, dtype=torch.uint8), p.mode, p.mean[:1], p.std[:1])
    return float(hi - lo)

