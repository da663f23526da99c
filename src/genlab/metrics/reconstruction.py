"""Reconstruction / restoration metrics between image pairs: MSE, PSNR, SSIM (torchmetrics)
and a feature-space distance in a domain extractor (LPIPS itself needs downloaded weights).

Images are uint8 (N, C, H, W); the metrics see them in [0, 1] (data_range 1), the usual
convention, so PSNR of 8-bit images is comparable with published numbers.

MSE, PSNR and SSIM are means over images of a per-image value, computed `chunk` (default
CHUNK) images at a time and summed in float64, so the result does not depend on the chunk
size: torchmetrics' SSIM of 10,000 images in one call asked for 38 GB.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from genlab.errors import ConfigError, ShapeError

CHUNK = 1000  # images per call of a per-image metric


def _check(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.dim() != 4:
        raise ShapeError(f"image pairs must share one (N, C, H, W) shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def _pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _check(a, b)
    f = (lambda t: t.double() / 255.0) if a.dtype == torch.uint8 else (lambda t: t.double())  # noqa: E731
    return f(a), f(b)


def _per_image_mean(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], a: torch.Tensor, b: torch.Tensor,
                    chunk: int) -> float:
    """Mean over images of fn(x, y) -> (n,) per-image values, fn seeing float64 [0, 1] pairs of
    at most `chunk` images; the chunks' sums are added, i.e. chunk means weighted by their size.

    Args:
        a, b: image pairs (N, C, H, W), uint8 or float in [0, 1].
        chunk: images per call of fn (>= 1).
    Returns:
        the mean of the N per-image values.
    """
    _check(a, b)
    if chunk < 1:
        raise ConfigError(f"chunk must be at least one image, got {chunk}")
    if len(a) == 0:
        raise ShapeError("no images to compare: got (0, C, H, W) pairs")
    total = torch.zeros((), dtype=torch.float64)
    for i in range(0, len(a), chunk):
        x, y = _pair(a[i:i + chunk], b[i:i + chunk])
        total += fn(x, y).sum()  # (n,) -> ()
    return float(total / len(a))


def mse(a: torch.Tensor, b: torch.Tensor, chunk: int = CHUNK) -> float:
    """Mean squared error in [0, 1] units over all pixels (every image has as many)."""
    return _per_image_mean(lambda x, y: ((x - y) ** 2).flatten(1).mean(1), a, b, chunk)


def psnr(a: torch.Tensor, b: torch.Tensor, chunk: int = CHUNK) -> float:
    """Mean over images of the per-image PSNR in dB (data range 1)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio  # slow import: only when used

    return _per_image_mean(
        lambda x, y: peak_signal_noise_ratio(x, y, data_range=1.0, reduction="none", dim=(1, 2, 3)), a, b, chunk)


def ssim(a: torch.Tensor, b: torch.Tensor, chunk: int = CHUNK) -> float:
    """Mean over images of the SSIM (Gaussian window 11, sigma 1.5, data range 1)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return _per_image_mean(
        lambda x, y: structural_similarity_index_measure(x, y, data_range=1.0, reduction="none"), a, b, chunk)


def feature_distance(extractor, a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean L2 distance between unit-normalised extractor features of paired uint8 images."""
    _check(a, b)
    fa, fb = extractor(a)[0], extractor(b)[0]
    fa = fa / fa.norm(dim=1, keepdim=True).clamp_min(1e-12)
    fb = fb / fb.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return float((fa - fb).norm(dim=1).double().mean())
