"""`genlab apply`: use a trained model on given images. One module per task; this dispatcher
checks the family, reads the input, runs the task and writes the output atomically.

    apply(run_dir, "inpaint", input="x.npz", out="y.npz", mask="center")
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

from genlab.apply.denoise import run_denoise
from genlab.apply.inpaint import run_inpaint
from genlab.apply.interpolate import run_interpolate
from genlab.apply.io import check_size, read_images, write_output
from genlab.apply.upscale import FACTOR, run_upscale
from genlab.errors import ConfigError, ShapeError
from genlab.options import check_number, check_output

# task -> (function(run, images, labels, **options) -> uint8 images, families that can do it)
TASKS = {
    "inpaint": (run_inpaint, ("diffusion", "vae", "pixelcnn")),
    "denoise": (run_denoise, ("diffusion",)),
    "upscale": (run_upscale, ("diffusion",)),
    "interpolate": (run_interpolate, ("diffusion", "vae", "gan")),
}

DIFFUSION_OPTIONS = ("sampler", "sampling_steps", "eta", "guidance", "resample", "zeta", "average")

# The numeric options' ranges, checked for every task before the run is loaded
# (the upper bound of --sampling-steps, the run's T, is checked by the model).
BOUNDS = {"steps": dict(lo=2, integer=True), "sampling_steps": dict(lo=1, integer=True),
          "resample": dict(lo=1, integer=True), "average": dict(lo=1, integer=True),
          "iters": dict(lo=1, integer=True), "zeta": dict(lo=0), "eta": dict(lo=0),
          "sigma": dict(lo=0, lo_open=True), "guidance": {}, "label": dict(lo=0, integer=True)}


def apply(run_dir: str | os.PathLike, task: str, *, input: str | os.PathLike | None, out: str | os.PathLike,
          checkpoint: str = "last", device: str = "cpu", **options) -> Path:
    """Run `task` of run_dir's model on the images in `input`, write them to `out`; returns `out`.
    `options` are the task's keyword arguments (mask, sigma, seed, steps, ...)."""
    from genlab.engine.run import load

    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    fn, families = TASKS[task]
    check_output(out, (".npz", ".png"))
    for k, v in options.items():
        if k in BOUNDS:
            check_number("--" + k.replace("_", "-"), v, **BOUNDS[k])
    if options.get("seeds") is not None:
        for v in options["seeds"]:
            check_number("--seeds", v, integer=True)
    run = load(run_dir, checkpoint, device)
    name = run.cfg.model_name
    if name not in families:
        raise ConfigError(f"{task} works with {', '.join(families)} runs; {run_dir} is a {name} run")
    given = sorted(k for k in DIFFUSION_OPTIONS if options.get(k) is not None)
    if given and name != "diffusion":
        raise ConfigError(f"{', '.join('--' + k.replace('_', '-') for k in given)}: diffusion options, "
                          f"but {run_dir} is a {name} run")
    if run.family != "image":
        raise ConfigError(f"{task} works on images; {run_dir} is a {run.family} run")
    native = tuple(run.meta["native_size"])
    if getattr(run.model.cfg, "image_size", None) != native[0] or native[0] != native[1]:
        raise ConfigError(f"{task} needs a run trained at its data's native (square) size, {native[0]}x{native[1]}")
    images = labels = None
    if input is not None:
        batch = read_images(input, run.meta["channels"])
        images, labels = batch.images, batch.labels
        k = run.model.num_classes if getattr(run.model, "conditional", False) else None
        if labels is not None and k and not bool(((labels >= 0) & (labels < k)).all()):
            raise ShapeError(f"{input}: 'labels' must be classes in 0..{k - 1} for this run, got values "
                             f"{int(labels.min())}..{int(labels.max())}")
        want = (native[0] // FACTOR, native[1] // FACTOR) if task == "upscale" else native
        check_size(images, want, f"{task} input")
    elif task != "interpolate":
        raise ConfigError(f"{task} needs --input FILE.npz or FILE.png")
    given = {k: v for k, v in options.items() if v is not None}
    accepted = inspect.signature(fn).parameters
    for k in given:
        if k not in accepted:
            raise ConfigError(f"--{k.replace('_', '-')} is not an option of {task}")
    result = fn(run, images, labels, **given)
    nrow = (options.get("steps") or 8) if task == "interpolate" else None
    keep = labels if task != "interpolate" else None
    return write_output(out, result, keep, nrow=nrow)
