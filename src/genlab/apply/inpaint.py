"""Inpainting: fill the masked pixels of images, keep every other pixel exactly.

  - diffusion: RePaint (Lugmayr et al. 2022): at each reverse step the known region is the
    input noised to that step, the unknown region comes from the model, and each step can be
    undone and redone `resample` times (x_s -> x_t by the forward process) so the two agree.
    With few steps, replacement alone fills the hole with a digit that often ignores the known
    border, so the unknown region is also pushed along -grad_{x_t} |known - x0_hat(x_t)|^2 with
    step zeta / |known - x0_hat| (reconstruction guidance, as in DPS, Chung et al. 2023).
    `average` > 1 returns the mean of that many independent fills: an estimate of the posterior
    mean, which has the lowest expected squared error (higher PSNR, blurrier);
  - VAE: latent optimisation, z minimising -log p(known pixels | z) + |z|^2 / 2 (a MAP
    estimate under the prior), started from the encoder's mean of the image with the hole
    filled with the known pixels' mean; conditional VAEs try every class and keep the best;
  - PixelCNN: its exact raster-order completion, when every unknown pixel comes after all the
    known ones (e.g. bottom-half).

Masks name the pixels to fill: center (the middle half of each side, 7:21 of 28), left-half,
bottom-half, boxes (three random rectangles per image, from --seed), or MASK.png (white = fill,
black = keep; the images' size).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import BinaryIO

import torch

from genlab.apply.io import to_model_space
from genlab.errors import ConfigError, ShapeError
from genlab.progress import advance, subpart
from genlab.seed import make_generator

MASKS = ("center", "left-half", "bottom-half", "boxes")


def make_mask(spec: str | torch.Tensor, n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """bool (n or 1, 1, h, w), True where pixels are to be filled. `spec` names a mask, or is
    one already made (e.g. by `decode_mask` from an upload)."""
    m = torch.zeros(1, 1, h, w, dtype=torch.bool)
    if isinstance(spec, torch.Tensor):
        if spec.dtype != torch.bool or tuple(spec.shape) != (1, 1, h, w):
            raise ShapeError(f"the mask must be bool (1, 1, {h}, {w}), got {spec.dtype} {tuple(spec.shape)}")
        m = spec
    elif spec == "center":
        m[..., h // 4:h // 4 + h // 2, w // 4:w // 4 + w // 2] = True
    elif spec == "left-half":
        m[..., :, :w // 2] = True
    elif spec == "bottom-half":
        m[..., h // 2:, :] = True
    elif spec == "boxes":
        g = make_generator(seed)
        m = torch.zeros(n, 1, h, w, dtype=torch.bool)
        for i in range(n):
            for _ in range(3):
                bh, bw = (int(torch.randint(max(1, s // 4), max(2, s // 2) + 1, (1,), generator=g)) for s in (h, w))
                y0 = int(torch.randint(0, h - bh + 1, (1,), generator=g))
                x0 = int(torch.randint(0, w - bw + 1, (1,), generator=g))
                m[i, 0, y0:y0 + bh, x0:x0 + bw] = True
    elif spec.endswith(".png"):
        m = _mask_from_png(Path(spec), h, w)
    else:
        raise ConfigError(f"--mask must be one of {', '.join(MASKS)} or a MASK.png, got {spec!r}")
    if not m.any():
        raise ConfigError("the mask selects no pixel to fill")
    return m


def _mask_from_png(path: Path, h: int, w: int) -> torch.Tensor:
    if not path.is_file():
        raise ConfigError(f"mask file {path} not found")
    return decode_mask(path, h, w, str(path))


def decode_mask(source: str | Path | BinaryIO, h: int, w: int, name: str) -> torch.Tensor:
    """A mask PNG (a file or a binary stream; white = fill) -> bool (1, 1, h, w); `name` is how
    error messages call it."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        a = np.asarray(Image.open(source).convert("L"))
    except UnidentifiedImageError:
        raise ConfigError(f"cannot read the mask {name}: not an image format Pillow knows") from None
    except (Image.DecompressionBombError, OSError, ValueError) as e:  # truncated, damaged, huge
        raise ConfigError(f"cannot read the mask {name}: {e}") from None
    if a.shape != (h, w):
        raise ShapeError(f"the mask {name} is {a.shape[0]}x{a.shape[1]}, the images are {h}x{w}")
    return torch.from_numpy(a > 127)[None, None]


# --------------------------------------------------------------------------- diffusion


@torch.no_grad()
def repaint(model, x_known: torch.Tensor, fill: torch.Tensor, *, steps: int = 50, resample: int = 1,
            zeta: float = 3.0, generator: torch.Generator, labels: torch.Tensor | None = None,
            guidance: float = 1.0) -> torch.Tensor:
    """RePaint with `steps` strided reverse steps, each done `resample` times, and reconstruction
    guidance of strength `zeta` (0: none). x_known (B, C, H, W) in data space; fill bool
    (B or 1, 1, H, W) True = unknown. -> x0 (B, C, H, W)."""
    from genlab.models.diffusion.ddpm import ddim_step
    from genlab.models.diffusion.schedules import timesteps

    def randn(shape):
        return torch.randn(shape, generator=generator, device=generator.device).to(x_known.device)

    keep = (~fill).to(x_known.device).float()
    ts = timesteps(model.T, steps)
    x = randn(x_known.shape)
    for i, t in enumerate(ts):
        s = ts[i + 1] if i + 1 < len(ts) else -1
        a_t, a_s = model.ab(t), model.ab(s)
        advance(i, len(ts))  # progress within the caller's job (genlab.progress)
        for u in range(resample):
            if s < 0:  # the last step: the estimate itself
                return keep * x_known + (1 - keep) * model.predict(x, t, labels, guidance)[0]
            push = 0.0
            if zeta > 0:
                with torch.enable_grad():
                    xg = x.detach().requires_grad_(True)
                    x0, eps = model.predict(xg, t, labels, guidance)
                    err = (keep * (x0 - x_known)).pow(2).flatten(1).sum(1)  # (B,)
                    (grad,) = torch.autograd.grad(err.sum(), [xg])
                x0, eps = x0.detach(), eps.detach()
                push = zeta * grad / err.detach().sqrt().clamp_min(1e-8).view(-1, 1, 1, 1)
            else:
                x0, eps = model.predict(x, t, labels, guidance)
            unknown = ddim_step(x0, eps, a_t, a_s, 1.0, randn(x.shape)) - push
            known = math.sqrt(a_s) * x_known + math.sqrt(1 - a_s) * randn(x.shape)
            x = keep * known + (1 - keep) * unknown
            if u < resample - 1:  # back to step t: q(x_t | x_s)
                x = math.sqrt(a_t / a_s) * x + math.sqrt(1 - a_t / a_s) * randn(x.shape)
    return x  # not reached: the last step returns


# --------------------------------------------------------------------------- VAE


def vae_latent_fill(model, x: torch.Tensor, fill: torch.Tensor, *, iters: int = 200, lr: float = 0.05,
                    labels: torch.Tensor | None = None) -> torch.Tensor:
    """MAP latent for the known pixels; returns the decoder mean (B, C, H, W) in data space."""
    keep = (~fill).to(x.device).float().expand_as(x)
    if model.conditional and labels is None:
        best, best_obj = None, None
        for k in range(model.num_classes):
            y = torch.full((x.shape[0],), k, dtype=torch.long, device=x.device)
            with subpart(k, 1, model.num_classes):
                out, obj = _vae_fit(model, x, keep, iters, lr, y)
            if best is None:
                best, best_obj = out, obj
            else:
                better = obj < best_obj
                best = torch.where(better.view(-1, 1, 1, 1), out, best)
                best_obj = torch.minimum(obj, best_obj)
        return best
    return _vae_fit(model, x, keep, iters, lr, labels)[0]


def _vae_fit(model, x, keep, iters, lr, y):
    mean_known = (x * keep).sum((1, 2, 3), keepdim=True) / keep.sum((1, 2, 3), keepdim=True).clamp_min(1)
    start = keep * x + (1 - keep) * mean_known
    with torch.no_grad():
        z0, _ = model.encode(start, y)
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    with torch.enable_grad():  # callers may be in no_grad; only z is optimised
        for it in range(iters):
            advance(it, iters)  # progress within the caller's job (genlab.progress)
            opt.zero_grad()
            obj = _vae_objective(model, z, x, keep, y)
            (grad,) = torch.autograd.grad(obj.sum(), [z])
            z.grad = grad
            opt.step()
    with torch.no_grad():
        obj = _vae_objective(model, z, x, keep, y)
        return model.mean(model.decode(z, y)), obj


def _vae_objective(model, z, x, keep, y) -> torch.Tensor:
    """-log p(known pixels | z) - log p(z) per image, (B,)."""
    import torch.nn.functional as F

    out = model.decode(z, y)
    if model.cfg.likelihood == "bernoulli":
        nll = F.binary_cross_entropy_with_logits(out, x, reduction="none")
    else:
        s = model.log_sigma.clamp(min=-6.0).exp()
        nll = 0.5 * ((x - out) / s) ** 2
    return (nll * keep).flatten(1).sum(1) + 0.5 * z.pow(2).sum(1)


# --------------------------------------------------------------------------- dispatcher


def run_inpaint(run, images: torch.Tensor, labels: torch.Tensor | None, *, mask: str | torch.Tensor = "center",
                seed: int = 0, sampling_steps: int | None = None, resample: int = 1, zeta: float = 3.0, average: int = 1,
                guidance: float | None = None, iters: int = 200) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C, H, W) with the masked pixels filled and all others
    equal to the input's."""
    N, C, H, W = images.shape
    fill = make_mask(mask, N, H, W, seed)
    x = to_model_space(run, images)
    name = run.cfg.model_name
    g = make_generator(seed)
    model = run.model
    y = labels.to(run.device) if labels is not None and model.conditional else None
    if name == "diffusion":
        steps = 50 if sampling_steps is None else sampling_steps
        _, steps, w, _ = model.sampling_options("ddpm", steps, guidance, None)  # checks the values
        out = 0
        for k in range(average):  # fill k: seed + k
            with subpart(k, 1, average):
                out = out + repaint(model, x, fill, steps=steps, resample=resample, zeta=zeta,
                                    generator=make_generator(seed + k), labels=y, guidance=w)
        out = out / average
    elif name == "vae":
        out = vae_latent_fill(model, x, fill, iters=iters, labels=y)
    elif name == "pixelcnn":
        flat = fill.expand(N, 1, H, W).reshape(N, -1)
        first_unknown = flat.float().argmax(1)  # index of the first pixel to fill, per image
        last_known = (H * W - 1) - (~flat).flip(1).float().argmax(1)
        if bool(((~flat).any(1) & (last_known > first_unknown)).any()):
            raise ConfigError("PixelCNN completes pixels in raster order: every pixel to fill must come after "
                              "all known pixels (e.g. --mask bottom-half); use a diffusion or VAE run for this mask")
        if model.conditional and y is None:
            raise ConfigError("a conditional PixelCNN needs the images' labels: give an .npz with 'labels'")
        xb = (x > 0.5).float() if model.cfg.likelihood == "bernoulli" else x
        out = model.complete(xb, ~fill.to(run.device), generator=g, labels=y)
    else:
        raise ConfigError(f"inpaint works with diffusion, vae and pixelcnn runs; {run.run_dir} is a {name} run")
    filled = run.pipeline.to_uint8(out)
    return torch.where(fill.expand(N, C, H, W), filled, images)
