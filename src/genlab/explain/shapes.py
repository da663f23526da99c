"""dSprites-like shapes with known generative factors, made offline and deterministically.

Each image is one white shape on black, `size` x `size` grey pixels (28 by default, MNIST's
size), drawn from five independent factors (after Matthey et al. 2017's dSprites, smaller):

    shape     square, ellipse, heart
    scale     6 values in [0.5, 1]
    rotation  10 angles in [0, 2 pi) (as in dSprites, a square looks the same every quarter
              turn and an ellipse every half turn: those angles are not identifiable)
    x, y      8 positions each, the centre between 0.3 and 0.7 of the image side

Images are antialiased by 4 x 4 supersampling. `write_shapes` saves them as an .npz that genlab's
array dataset trains on (`--set data.dataset=array data.path=FILE.npz`), with the factor indices
beside the images (`factors`, int64 (N, 5)), for disentanglement scores
(genlab.explain.disentanglement.mig).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from genlab.engine.checkpoint import atomic_write_bytes
from genlab.errors import DataError, ShapeError

FACTORS = ("shape", "scale", "rotation", "x", "y")
SHAPES = ("square", "ellipse", "heart")
RADIUS = 0.25  # a shape's radius at scale 1, as a fraction of the image size


def factor_values() -> dict[str, np.ndarray]:
    """The values each factor takes, in index order (shape: 0, 1, 2; positions as fractions of
    the image size; rotation in radians)."""
    return {"shape": np.arange(len(SHAPES), dtype=np.float32),
            "scale": np.linspace(0.5, 1.0, 6, dtype=np.float32),
            "rotation": np.linspace(0.0, 2 * math.pi, 10, endpoint=False, dtype=np.float32),
            "x": np.linspace(0.3, 0.7, 8, dtype=np.float32),
            "y": np.linspace(0.3, 0.7, 8, dtype=np.float32)}


def factor_sizes() -> tuple[int, ...]:
    """How many values each factor in FACTORS takes: (3, 6, 10, 8, 8)."""
    v = factor_values()
    return tuple(len(v[f]) for f in FACTORS)


def sample_factors(n: int, seed: int) -> np.ndarray:
    """n independent uniform draws of every factor's index -> int64 (n, 5), fixed by `seed`."""
    if n < 1:
        raise ShapeError(f"the number of shapes must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, k, n) for k in factor_sizes()], axis=1).astype(np.int64)


def _inside(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether points (u, v) of the shape's own frame (radius 1, v pointing down) are inside it."""
    if shape == 0:  # square, half side 0.8
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if shape == 1:  # ellipse, semi-axes 1 and 0.5
        return u * u + (v / 0.5) ** 2 <= 1.0
    x, y = u / 0.9, -v / 0.9 + 0.15  # heart: (x^2 + y^2 - 1)^3 <= x^2 y^3, point up, centred
    return (x * x + y * y - 1.0) ** 3 - x * x * y ** 3 <= 0.0


def render(factors: np.ndarray, size: int = 28, supersample: int = 4, chunk: int = 256) -> np.ndarray:
    """Draw shapes from factor indices.

    Args:
        factors: int (N, 5) indices into factor_values(), columns in FACTORS order.
        size: image side in pixels (>= 8).
        supersample: sub-pixels per pixel side for antialiasing.
        chunk: images drawn at once (bounds memory: chunk x (size x supersample)^2 floats).
    Returns:
        uint8 (N, 1, size, size), the shape white (255) on black (0).
    """
    f = np.asarray(factors)
    sizes = factor_sizes()
    if f.ndim != 2 or f.shape[1] != len(FACTORS) or not np.issubdtype(f.dtype, np.integer):
        raise ShapeError(f"factors must be integer indices (N, {len(FACTORS)}), got {f.dtype} {f.shape}")
    if len(f) and ((f < 0).any() or (f >= np.array(sizes)).any()):
        raise ShapeError(f"factor indices must be in 0..k-1 with k = {sizes} ({', '.join(FACTORS)})")
    if size < 8:
        raise ShapeError(f"shapes need images of at least 8 x 8 pixels, got {size}")
    vals = factor_values()
    fine = size * supersample
    grid = ((np.arange(fine, dtype=np.float32) + 0.5) / supersample)  # (fine,) sub-pixel centres, pixel units
    out = np.empty((len(f), 1, size, size), dtype=np.uint8)
    for i0 in range(0, len(f), chunk):
        fc = f[i0:i0 + chunk]
        b = len(fc)
        r = (RADIUS * size * vals["scale"][fc[:, 1]])[:, None, None]  # (b, 1, 1)
        th = vals["rotation"][fc[:, 2]][:, None, None]
        dx = grid[None, None, :] - (vals["x"][fc[:, 3]] * size)[:, None, None]  # (b, 1, fine)
        dy = grid[None, :, None] - (vals["y"][fc[:, 4]] * size)[:, None, None]  # (b, fine, 1)
        # the shape turned by th: its own frame is the offset turned back by -th
        u = (np.cos(th) * dx + np.sin(th) * dy) / r  # (b, fine, fine)
        v = (-np.sin(th) * dx + np.cos(th) * dy) / r
        inside = np.zeros((b, fine, fine), dtype=bool)
        for k in range(len(SHAPES)):
            m = fc[:, 0] == k
            if m.any():
                inside[m] = _inside(k, u[m], v[m])
        cover = inside.reshape(b, size, supersample, size, supersample).mean(axis=(2, 4))  # (b, size, size)
        out[i0:i0 + b, 0] = np.round(cover * 255).astype(np.uint8)
    return out


def make_shapes(n: int, seed: int = 0, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """n random shapes -> (uint8 images (n, 1, size, size), int64 factor indices (n, 5))."""
    factors = sample_factors(n, seed)
    return render(factors, size), factors


def write_shapes(path: str | Path, n: int, seed: int = 0, size: int = 28) -> Path:
    """Write n random shapes as an .npz (atomically): `images` uint8 (n, 1, size, size),
    `factors` int64 (n, 5), `factor_names` (5,) and `factor_sizes` int64 (5,). genlab trains on it
    with `--set data.dataset=array data.path=PATH`."""
    path = Path(path)
    if path.suffix != ".npz":
        raise DataError(f"shapes are written as an .npz, got {path.name}")
    images, factors = make_shapes(n, seed, size)
    buf = io.BytesIO()
    np.savez_compressed(buf, images=images, factors=factors, factor_names=np.array(FACTORS),
                        factor_sizes=np.array(factor_sizes(), dtype=np.int64))
    atomic_write_bytes(path, buf.getvalue())
    return path


def read_shapes(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """An .npz written by `write_shapes` -> (uint8 images (N, 1, H, W), int64 factors (N, 5))."""
    try:
        with np.load(Path(path), allow_pickle=False) as z:
            if "images" not in z or "factors" not in z:
                raise DataError(f"{path} holds no `images` and `factors`; write it with genlab.explain.shapes."
                                "write_shapes")
            return z["images"], z["factors"].astype(np.int64)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read shapes from {path}: {e}") from None
