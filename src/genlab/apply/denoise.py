"""Denoising with a diffusion model: an image with Gaussian noise of std sigma is, up to scale,
a point of the forward process, x_t / sqrt(alpha_bar_t) = x0 + sqrt((1 - ab_t) / ab_t) eps.
So the reverse process starts at the step t whose noise level matches sigma, from
x_t = sqrt(ab_t) y, and runs down to t = 0.

`--sigma` is the noise std on the [0, 1] pixel scale (pixel / 255), the scale PSNR is quoted
on; it is converted to the model's data space (x2 for data in [-1, 1]). One sampling step
returns the network's estimate E[x0 | x_t] (the minimum-MSE denoiser, smooth); more steps
sample a sharp image from the posterior.
"""

from __future__ import annotations

import math

import torch

from genlab.apply.io import pixel_scale, to_model_space
from genlab.errors import ConfigError
from genlab.models.diffusion.schedules import step_for_noise
from genlab.seed import make_generator


def start_step(model, sigma_model: float) -> int:
    """The step whose noise-to-signal ratio sqrt((1 - ab) / ab) is closest to sigma_model."""
    return step_for_noise(model.alpha_bar.cpu(), sigma_model)


@torch.no_grad()
def denoise(model, y: torch.Tensor, sigma_model: float, *, steps: int | None = None, sampler: str = "dpmpp",
            eta: float = 0.0, generator: torch.Generator, labels: torch.Tensor | None = None,
            guidance: float = 1.0) -> torch.Tensor:
    """Noisy data y (B, *data_shape: images (B, C, H, W), waveform windows (B, 1, L)) in data
    space, noise std sigma_model there -> x0 estimates, from the step `start_step` picks for
    sigma_model (the one place that choice is made; genlab.apply.audio denoises through here).
    Default steps: the run's sampling steps scaled by the share of the process left."""
    t = start_step(model, sigma_model)
    if steps is None:
        steps = max(1, round(model.cfg.sampling_steps * (t + 1) / model.T))
    steps = min(steps, t + 1)
    x_t = math.sqrt(model.ab(t)) * y
    return model.sample_from(x_t, t, steps=steps, sampler=sampler, eta=eta, guidance=guidance, labels=labels,
                             generator=generator)


def run_denoise(run, images: torch.Tensor, labels: torch.Tensor | None, *, sigma: float | None = None,
                seed: int = 0, sampling_steps: int | None = None, sampler: str | None = None, eta: float | None = None,
                guidance: float | None = None) -> torch.Tensor:
    """uint8 (N, C, H, W) noisy images -> uint8 (N, C, H, W) denoised."""
    if run.cfg.model_name != "diffusion":
        raise ConfigError(f"denoise works with diffusion runs; {run.run_dir} is a {run.cfg.model_name} run")
    if sigma is None or not sigma > 0:
        raise ConfigError(f"--sigma must be > 0 (noise std on the [0, 1] pixel scale), got {sigma}")
    model = run.model
    sampler, _, w, eta = model.sampling_options(sampler, sampling_steps, guidance, eta)  # checks the values
    y = labels.to(run.device) if labels is not None and model.conditional else None
    x0 = denoise(model, to_model_space(run, images), sigma * pixel_scale(run), steps=sampling_steps, sampler=sampler,
                 eta=eta, generator=make_generator(seed), labels=y, guidance=w)
    return run.pipeline.to_uint8(x0)
