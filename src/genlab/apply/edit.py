"""Guided editing with a diffusion model: SDEdit (Meng et al. 2022). A rough guide (a crude
drawing, a damaged or blurred image) is noised to step t0 of the forward process and the reverse
process runs from there, so the result keeps the guide's coarse layout and the model supplies
realistic detail. The strength S in [0, 1] sets t0 = ceil(S T) - 1: a larger S noises more and
trades faithfulness to the guide for realism.

  - S = 0: no noise at all; the guide comes back unchanged (no model call);
  - S = 1: t0 = T - 1, where sampling starts from pure noise N(0, I) (the schedule's
    alpha_bar[T-1] ~ 0 is taken as 0, as `sample` does), so the guide has no influence: the
    result is an unconditional (or label-conditional) sample fixed by the seed.

The run's sampler takes `sampling_steps * (t0 + 1) / T` steps from t0 (at least 1), as
`denoise` does, unless --sampling-steps says otherwise.

Local edits (a mask, white = the pixels to edit): every x0 estimate is replaced by the guide
outside the mask (an `x0_hook` of `sample_from`). With the deterministic samplers the outside of
x_t then stays exactly on the noised guide sqrt(ab_t) guide + sqrt(1 - ab_t) z at every step
(the known region blended in, as inpainting does), so the edited region is denoised in agreement
with its surroundings; the returned pixels outside the mask are the guide's, exactly.
"""

from __future__ import annotations

import io

import math
from pathlib import Path
from typing import Callable

import torch

from genlab.apply.inpaint import make_mask
from genlab.apply.io import to_model_space
from genlab.errors import ConfigError, DataError, ShapeError
from genlab.options import check_number
from genlab.seed import make_generator


def start_step(T: int, strength: float) -> int:
    """The step t0 = ceil(strength T) - 1 (strength in (0, 1]) an edit starts from, in 0..T-1."""
    return min(T - 1, max(0, math.ceil(strength * T) - 1))


def keep_outside(guide: torch.Tensor, edit: torch.Tensor) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """An x0 hook keeping the guide (B, C, H, W) where `edit` (bool (B or 1, 1, H, W)) is False."""
    def hook(x0: torch.Tensor, t: int) -> torch.Tensor:
        return torch.where(edit, x0, guide)
    return hook


@torch.no_grad()
def sdedit(model, guide: torch.Tensor, strength: float, *, steps: int | None = None, sampler: str = "dpmpp",
           eta: float = 0.0, generator: torch.Generator, labels: torch.Tensor | None = None,
           guidance: float = 1.0, edit: torch.Tensor | None = None) -> torch.Tensor:
    """SDEdit a batch of guides.

    Args:
        model: a GaussianDiffusion.
        guide: (B, C, H, W) in the model's data space.
        strength: in [0, 1]; 0 returns `guide` itself.
        steps: reverse steps from t0 (default: the run's sampling steps scaled by (t0 + 1) / T).
        edit: bool (B or 1, 1, H, W), True where pixels may change; None: everywhere.
    Returns:
        x0 (B, C, H, W) in data space.
    """
    if strength == 0:
        return guide.clone()
    t0 = start_step(model.T, strength)
    if steps is None:
        steps = max(1, round(model.cfg.sampling_steps * (t0 + 1) / model.T))
    steps = min(steps, t0 + 1)
    z = torch.randn(guide.shape, generator=generator, device=generator.device).to(guide.device)
    a = 0.0 if t0 == model.T - 1 else model.ab(t0)  # the last step is pure noise, as sampling starts
    x = math.sqrt(a) * guide + math.sqrt(1 - a) * z
    hook = None if edit is None else keep_outside(guide, edit.to(guide.device))
    return model.sample_from(x, t0, steps=steps, sampler=sampler, eta=eta, guidance=guidance, labels=labels,
                             generator=generator, x0_hook=hook)


def check_png_channels(path: str | Path | io.BytesIO, channels: int, name: str | None = None) -> None:
    """A ShapeError when the PNG at `path` (or in an upload's bytes, called `name`) is greyscale
    and the run makes colour images or the other way round (image-to-image tasks keep the
    input's mode instead of converting it)."""
    if not isinstance(path, io.BytesIO):
        path = Path(path)
        if path.suffix.lower() != ".png" or not path.is_file():
            return  # .npz inputs are checked by their layout; a missing file by read_images
    from PIL import Image, UnidentifiedImageError

    name = name or str(path)
    try:
        with Image.open(path) as im:
            grey = Image.getmodebase(im.mode) == "L"
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"cannot read {name} as a PNG: {e}") from None
    if grey != (channels == 1):
        have, want = ("greyscale", "RGB") if grey else ("RGB", "greyscale")
        raise ShapeError(f"{name} is {have} but the run makes {want} images; give a {want} PNG of the run's size")


def run_edit(run, images: torch.Tensor, labels: torch.Tensor | None, *, strength: float = 0.5,
             mask: str | torch.Tensor | None = None, label: int | None = None, seed: int = 0,
             sampling_steps: int | None = None, sampler: str | None = None, eta: float | None = None,
             guidance: float | None = None) -> torch.Tensor:
    """uint8 guides (N, C, H, W) -> uint8 edits (N, C, H, W); pixels outside `mask` (a mask
    name or MASK.png, white = edit; None: the whole image) equal the guide's.

    Labels of a conditional run: `label` for every image, else the .npz's `labels`, else none
    (the unconditional model, through the "no label" token)."""
    if run.cfg.model_name != "diffusion":
        raise ConfigError(f"edit works with diffusion runs; {run.run_dir} is a {run.cfg.model_name} run")
    check_number("--strength", strength, lo=0, hi=1)
    model = run.model
    N, C, H, W = images.shape
    if label is not None:
        if not model.conditional:
            raise ConfigError("--label needs a class-conditional diffusion run; this one is unconditional: "
                              "drop --label")
        check_number("--label", label, lo=0, hi=model.num_classes - 1, integer=True)
        labels = torch.full((N,), label, dtype=torch.long)
    sampler, _, w, eta = model.sampling_options(sampler, sampling_steps, guidance, eta)  # checks the values
    y = labels.to(run.device) if labels is not None and model.conditional else None
    edit = None if mask is None else make_mask(mask, N, H, W, seed)
    if strength == 0:
        return images.clone()  # exactly the guide, without a rounding trip through the data space
    x0 = sdedit(model, to_model_space(run, images), strength, steps=sampling_steps, sampler=sampler, eta=eta,
                generator=make_generator(seed), labels=y, guidance=w, edit=edit)
    out = run.pipeline.to_uint8(x0)
    return out if edit is None else torch.where(edit.expand(N, C, H, W), out, images)
