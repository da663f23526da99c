"""Style transfer: a content photo rendered in the style of another image.

  - without a run (`genlab apply style --content PHOTO --style IMAGE --out OUT.png`): Gatys et
    al. (2016) by optimisation. The image starts as the content photo and L-BFGS (strong Wolfe
    line search, history 50) minimises content + style_weight * style + tv_weight * TV on the
    random-feature network of `genlab.metrics.style` for `iters` iterations; pixels are clamped
    to [0, 1] at the end. Seconds to minutes per image on a CPU;
  - with a style-transfer run (`genlab apply RUN_DIR style --content PHOTO --out OUT.png`): the
    run's feed-forward network (`genlab.models.style`), one forward pass (real time); its style
    was fixed in training.

Photos: colour images of any format Pillow reads, or sample:china.jpg / sample:flower.jpg
(genlab.data.photos), between MIN_SIDE and MAX_SIDE pixels a side; the output keeps the
content's size. The style image may be greyscale and of any size: it is scaled (aspect kept)
so its shorter side matches the content's, which sets the scale of its strokes.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import torch

from genlab.data.photos import read_photo, scale_to
from genlab.errors import ConfigError, ShapeError
from genlab.metrics.style import FeatureSpec, PerceptualLoss
from genlab.options import check_output
from genlab.progress import Progress, advance

MAX_SIDE = 640  # the largest content photo, in pixels a side (the sample photos are 640 x 427)
MIN_SIDE = 32  # the smallest: the feature network's deepest level needs 2 x 2 pixels
ITERS = 200  # L-BFGS iterations by default
STYLE_WEIGHT = 100.0
CONTENT_WEIGHT = 1.0
TV_WEIGHT = 1.0


def stylise(content: torch.Tensor, style: torch.Tensor, *, iters: int = ITERS, style_weight: float = STYLE_WEIGHT,
            content_weight: float = CONTENT_WEIGHT, tv_weight: float = TV_WEIGHT,
            spec: FeatureSpec = FeatureSpec()) -> torch.Tensor:
    """Gatys et al. by L-BFGS on the pixels.

    Args:
        content: (B, 3, H, W) in [0, 1], also the starting image.
        style: (1, 3, h, w) in [0, 1].
        iters: L-BFGS iterations (each evaluates the loss about 1.25 times).
    Returns:
        (B, 3, H, W) in [0, 1].
    """
    loss_fn = PerceptualLoss(spec, content_weight, style_weight, tv_weight).to(content.device)
    target, grams = loss_fn.targets(content, style)
    x = content.detach().clone().contiguous().requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1.0, max_iter=iters, history_size=50, line_search_fn="strong_wolfe")
    evals = [0]

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn(x, target, grams)["loss"].sum()
        loss.backward()
        evals[0] += 1
        advance(evals[0], 1.25 * iters)  # progress within the caller's job (genlab.progress)
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return x.detach().clamp(0, 1)


def check_photo_size(images: torch.Tensor, what: str) -> None:
    """Content photos (N, 3, H, W) must be MIN_SIDE..MAX_SIDE pixels a side."""
    H, W = images.shape[-2:]
    if max(H, W) > MAX_SIDE or min(H, W) < MIN_SIDE:
        raise ShapeError(f"{what} is {W}x{H} pixels; style transfer takes images of {MIN_SIDE} to {MAX_SIDE} "
                         "pixels a side: resize it")


def run_style(run, images: torch.Tensor, labels: torch.Tensor | None, *, style: str | torch.Tensor | None = None,
              iters: int | None = None, style_weight: float | None = None, seed: int = 0) -> torch.Tensor:
    """uint8 content photos (N, 3, H, W) -> uint8 stylisations (N, 3, H, W).

    Args:
        run: a style-transfer run (feed-forward), or None (optimisation, with `style`).
        style: the style image (a file, sample:NAME, or uint8 (1, 3, h, w)); optimisation only.
        iters, style_weight: the optimisation's; a run's were fixed in training.
        seed: unused (both ways are deterministic); accepted as every apply task accepts it.
    """
    if images.shape[1] != 3:
        raise ShapeError(f"style transfer works on colour photos (3 channels), got {images.shape[1]}")
    check_photo_size(images, "the content photo")
    x = images.float() / 255
    if run is not None:
        given = [f"--{k.replace('_', '-')}" for k, v in (("style", style), ("iters", iters),
                                                         ("style_weight", style_weight)) if v is not None]
        if given:
            raise ConfigError(f"{', '.join(given)}: options of style transfer by optimisation; {run.run_dir} is a "
                              "style-transfer run with its style built in: drop them, or drop RUN_DIR")
        with torch.no_grad():
            out = run.model(x.to(run.device))
    else:
        if style is None:
            raise ConfigError("style transfer without a run needs --style IMAGE (a file, or sample:flower.jpg)")
        s = style if isinstance(style, torch.Tensor) else read_photo(style, "--style", colour=False)
        s = scale_to(s, min(images.shape[-2:])).float() / 255
        out = stylise(x, s, iters=ITERS if iters is None else iters,
                      style_weight=STYLE_WEIGHT if style_weight is None else style_weight)
    return (out.cpu() * 255).round().clamp(0, 255).to(torch.uint8)


def apply_style(run_dir: str | os.PathLike | None, *, input: str | os.PathLike | None, out: Path,
                checkpoint: str = "last", device: str = "cpu", **options) -> Path:
    """`genlab apply [RUN_DIR] style --content PHOTO --out OUT.png|OUT.npz`: read the photo,
    stylise it (with the run, or by optimisation without one) and write the result atomically."""
    from genlab.apply import run_task
    from genlab.apply.io import ImageBatch, output_bytes
    from genlab.engine.checkpoint import atomic_write_bytes

    check_output(out, (".png", ".npz"))
    if input is None:
        raise ConfigError("style needs --content PHOTO (an image file, or sample:china.jpg)")
    content = read_photo(input, "--content", max_side=MAX_SIDE)
    check_photo_size(content, f"--content {input}")
    if run_dir is None:
        options = {k: v for k, v in options.items() if v is not None}
        for k in options:  # as run_task checks a run's options
            if k not in inspect.signature(run_style).parameters:
                raise ConfigError(f"--{k.replace('_', '-')} is not an option of style")
        with Progress("styling", 1, unit="images") as bar, bar.part(0, 1):
            result = run_style(None, content, None, **options)
    else:
        from genlab.engine.run import load

        run = load(run_dir, checkpoint, device)
        result, _, _ = run_task(run, "style", ImageBatch(content, None, "png"), input_name=str(input), **options)
    out = Path(out)
    atomic_write_bytes(out, output_bytes(out.suffix[1:].lower(), result))
    return out
