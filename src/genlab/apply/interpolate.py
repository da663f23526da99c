"""Interpolation between two images or two seeds, by slerp in the model's noise/latent space:

  - diffusion: seeds give Gaussian noise x_T; images are mapped to their x_T by deterministic
    DDIM inversion; every frame is decoded by DDIM with eta = 0 (the same steps);
  - VAE: seeds give prior draws; images their encoder means; frames are decoder means;
  - GAN: seeds only (a GAN has no encoder).
Each pair becomes one row of `steps` frames, endpoints included (a strip PNG).
"""

from __future__ import annotations

import torch

from genlab.apply.io import to_model_space
from genlab.errors import ConfigError, ShapeError
from genlab.progress import subpart
from genlab.sampling import slerp
from genlab.seed import make_generator

FAMILIES = ("diffusion", "vae", "gan")


def _pairs(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(2k, ...) -> the k start points and k end points (rows 0, 2, ... and 1, 3, ...)."""
    return z[0::2], z[1::2]


def slerp_frames(za: torch.Tensor, zb: torch.Tensor, steps: int) -> torch.Tensor:
    """(k, *shape) pairs -> (k * steps, *shape): row-major frames from za to zb."""
    shape = za.shape[1:]
    return slerp(za.flatten(1), zb.flatten(1), torch.linspace(0, 1, steps, device=za.device)).reshape(-1, *shape)


def run_interpolate(run, images: torch.Tensor | None, labels: torch.Tensor | None, *, seeds: list[int] | None = None,
                    steps: int = 8, sampling_steps: int | None = None, label: int | None = None,
                    guidance: float | None = None) -> torch.Tensor:
    """Two images (or 2k: consecutive pairs) or two seeds -> uint8 (k * steps, C, H, W)."""
    name, model = run.cfg.model_name, run.model
    if name not in FAMILIES:
        raise ConfigError(f"interpolate works with {', '.join(FAMILIES)} runs; {run.run_dir} is a {name} run")
    if steps < 2:
        raise ConfigError(f"--steps must be >= 2 (frames per row, endpoints included), got {steps}")
    if (images is None) == (seeds is None):
        raise ConfigError("interpolate takes either --input (2 images, or pairs) or --seeds A B")
    if images is not None and (len(images) % 2 or len(images) == 0):
        raise ShapeError(f"interpolate needs an even number of images (consecutive pairs), got {len(images)}")
    if seeds is not None and len(seeds) != 2:
        raise ConfigError(f"--seeds takes two seeds, got {len(seeds)}")
    dev = run.device
    rows = len(images) // 2 if images is not None else 1
    y = None  # one label per row, (rows,)
    if model.conditional:
        if label is not None:
            y = torch.full((rows,), label, device=dev)
        elif labels is not None:
            y = labels[0::2].to(dev)
        elif name != "diffusion":
            raise ConfigError(f"this {name} is conditional: pass --label L")
    y_images = None if y is None else y.repeat_interleave(2)  # (2 rows,) for encoding the pairs
    y_frames = None if y is None else y.repeat_interleave(steps)  # (rows * steps,)
    if name == "diffusion":
        k = 50 if sampling_steps is None else sampling_steps
        _, k, w, _ = model.sampling_options("ddim", k, guidance, None)  # checks the values
        if images is not None:
            with subpart(0, 1, 2):  # inversion: the first half of the work
                z = model.invert(to_model_space(run, images), k, y_images)
        else:
            c = model.cfg
            z = torch.cat([torch.randn(1, c.channels, c.image_size, c.image_size, generator=make_generator(s))
                           for s in seeds]).to(dev)
        frames = slerp_frames(*_pairs(z), steps)
        with subpart(1 if images is not None else 0, 1, 2 if images is not None else 1):
            out = model.sample_from(frames, model.T - 1, steps=k, sampler="ddim", eta=0.0, guidance=w,
                                    labels=y_frames)
    else:
        if images is not None:
            if name != "vae":
                raise ConfigError("interpolating between images needs an encoder (diffusion or vae runs); "
                                  "a GAN interpolates between --seeds A B")
            with torch.no_grad():
                z, _ = model.encode(to_model_space(run, images), y_images)
        else:
            z = torch.cat([torch.randn(1, *model.latent_shape(), generator=make_generator(s)) for s in seeds]).to(dev)
        frames = slerp_frames(*_pairs(z), steps)
        with torch.no_grad():
            out = model.decode_latent(frames, y_frames)
    return run.pipeline.to_uint8(out)
