"""`genlab apply RUN translate`: translate images with a pix2pix or CycleGAN run.

    genlab apply RUN translate --input edges.png --out digit.png
    genlab apply CYCLEGAN_RUN translate --input garments.npz --direction BtoA --out digits.npz

The output keeps the input's size and mode: images must be at the run's size (it translates at
the size it was trained at) and in its mode; a grey PNG given to a colour model (or the other way
round) is refused rather than converted (genlab.apply's SAME_MODE tasks), so what comes out is
what went in, translated.
"""

from __future__ import annotations

import torch

from genlab.errors import ConfigError, DataError, ShapeError

MODE_NAMES = {1: "grey", 3: "colour (RGB)"}


@torch.no_grad()
def run_translate(run, images: torch.Tensor, labels: torch.Tensor | None, *,
                  direction: str | None = None, batch_size: int = 256) -> torch.Tensor:
    """uint8 (N, C, S, S) images of the source domain -> uint8 (N, C, S, S) translations.

    Args:
        direction: "AtoB" (default) or "BtoA" (CycleGAN runs, which have both generators).
    """
    from genlab.apply.io import to_model_space

    model = run.model
    if not hasattr(model, "translate"):
        raise ConfigError(f"translate works with pix2pix and cyclegan runs; {run.run_dir} is a "
                          f"{run.cfg.model_name} run")
    direction = direction or "AtoB"
    if direction not in model.directions:
        raise ConfigError(f"{run.cfg.model_name} runs translate {' and '.join(model.directions)}, not {direction}; "
                          f"use --direction {model.directions[0]}")
    C = run.meta["channels"]
    if images.dim() != 4 or images.shape[1] != C:
        raise ShapeError(f"translate input must be {MODE_NAMES.get(C, f'{C}-channel')} images (N x {C} x H x W), "
                         f"got {tuple(images.shape)}")
    if len(images) == 0:
        raise DataError("translate got no images")
    out = [run.pipeline.to_uint8(model.translate(to_model_space(run, images[i:i + batch_size]), direction))
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)
