"""x2 super-resolution with a diffusion model: sample a full-size image while forcing every x0
estimate to be consistent with the low-resolution input, i.e. its 2x2 block means equal the
low-resolution pixels (the projection x0 + up(low - down(x0)), as in DDNM, Wang et al. 2023).
The low-resolution image is taken to be the 2x2 box average of the full one (14x14 for MNIST).
"""

from __future__ import annotations

import torch

from genlab.apply.io import check_size, to_model_space
from genlab.errors import ConfigError
from genlab.models.diffusion.ddpm import avg_pool_consistency
from genlab.seed import make_generator

FACTOR = 2


@torch.no_grad()
def upscale(model, low: torch.Tensor, *, steps: int = 50, sampler: str = "ddim", eta: float = 1.0,
            generator: torch.Generator, labels: torch.Tensor | None = None, guidance: float = 1.0) -> torch.Tensor:
    """low (B, C, h, w) in data space -> (B, C, 2h, 2w) whose 2x2 block means are `low`."""
    B, C, h, w = low.shape
    x = torch.randn(B, C, FACTOR * h, FACTOR * w, generator=generator, device=generator.device).to(low.device)
    return model.sample_from(x, model.T - 1, steps=steps, sampler=sampler, eta=eta, guidance=guidance,
                             labels=labels, generator=generator, x0_hook=avg_pool_consistency(low, FACTOR))


def run_upscale(run, images: torch.Tensor, labels: torch.Tensor | None, *, seed: int = 0, sampling_steps: int | None = None,
                sampler: str | None = None, eta: float | None = None, guidance: float | None = None) -> torch.Tensor:
    """uint8 (N, C, H/2, W/2) -> uint8 (N, C, H, W) at the run's native size."""
    if run.cfg.model_name != "diffusion":
        raise ConfigError(f"upscale works with diffusion runs; {run.run_dir} is a {run.cfg.model_name} run")
    H, W = run.meta["native_size"]
    if H != run.model.cfg.image_size or W != run.model.cfg.image_size:
        raise ConfigError("upscale needs a run trained at its data's native size")
    check_size(images, (H // FACTOR, W // FACTOR), "upscale input")
    model = run.model
    sampler = sampler or "ddim"
    steps = 50 if sampling_steps is None else sampling_steps
    sampler, steps, w, eta = model.sampling_options(sampler, steps, guidance, 1.0 if eta is None else eta)
    y = labels.to(run.device) if labels is not None and model.conditional else None
    out = upscale(model, to_model_space(run, images), steps=steps, sampler=sampler, eta=eta,
                  generator=make_generator(seed), labels=y, guidance=w)
    return run.pipeline.to_uint8(out)
