"""Reconstruction / restoration metrics between image pairs: MSE, PSNR, SSIM (torchmetrics)
and a feature-space distance in a domain extractor (LPIPS itself needs downloaded weights).

Images are uint8 (N, C, H, W); the metrics see them in [0, 1] (data_range 1), the usual
convention, so PSNR of 8-bit images is comparable with published numbers.
"""

from __future__ import annotations

import torch

from genlab.errors import ShapeError


def _pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if a.shape != b.shape or a.dim() != 4:
        raise ShapeError(f"image pairs must share one (N, C, H, W) shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    f = (lambda t: t.double() / 255.0) if a.dtype == torch.uint8 else (lambda t: t.double())  # noqa: E731
    return f(a), f(b)


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared error in [0, 1] units over all pixels."""
    x, y = _pair(a, b)
    return float(((x - y) ** 2).mean())


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over images of the per-image PSNR in dB (data range 1)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio  # slow import: only when used

    x, y = _pair(a, b)
    return float(peak_signal_noise_ratio(x, y, data_range=1.0, reduction="none", dim=(1, 2, 3)).mean())


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM (Gaussian window 11, sigma 1.5, data range 1)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    x, y = _pair(a, b)
    return float(structural_similarity_index_measure(x, y, data_range=1.0))


def feature_distance(extractor, a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean L2 distance between unit-normalised extractor features of paired uint8 images."""
    _pair(a, b)
    fa, fb = extractor(a)[0], extractor(b)[0]
    fa = fa / fa.norm(dim=1, keepdim=True).clamp_min(1e-12)
    fb = fb / fb.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return float((fa - fb).norm(dim=1).double().mean())
