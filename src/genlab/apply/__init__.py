"""`genlab apply`: use a trained model on given images. One module per task; this dispatcher
checks the family, reads the input, runs the task and writes the output atomically. Audio runs
(denoise, inpaint of waveforms) go to `genlab.apply.audio`.

    apply(run_dir, "inpaint", input="x.npz", out="y.npz", mask="center")
    apply(audio_run_dir, "inpaint", input="rec.wav", out="filled.wav", gap="0.20:0.30")
"""

from __future__ import annotations

import inspect
import os
import sys
import types
from pathlib import Path

import torch

from genlab.apply.denoise import run_denoise
from genlab.apply.edit import check_png_channels, run_edit
from genlab.apply.inpaint import run_inpaint
from genlab.apply.interpolate import run_interpolate
from genlab.apply.io import ImageBatch, check_size, labelled_rows, output_bytes, read_images
from genlab.apply.style import run_style
from genlab.apply.translate import run_translate
from genlab.apply.upscale import FACTOR, run_upscale
from genlab.engine.checkpoint import atomic_write_bytes
from genlab.errors import ConfigError, ShapeError
from genlab.images import png_bytes
from genlab.options import check_number, check_output
from genlab.progress import Progress
from genlab.sampling import check_diffusion_options

# task -> (function(run, images, labels, **options) -> uint8 images, families that can do it)
TASKS = {
    "inpaint": (run_inpaint, ("diffusion", "vae", "pixelcnn")),
    "denoise": (run_denoise, ("diffusion",)),
    "upscale": (run_upscale, ("diffusion",)),
    "interpolate": (run_interpolate, ("diffusion", "vae", "gan")),
    "edit": (run_edit, ("diffusion",)),
    "style": (run_style, ("style",)),  # `genlab apply style ...` without a run: by optimisation
    "translate": (run_translate, ("pix2pix", "cyclegan")),
}

VERBS = {"inpaint": "inpainting", "denoise": "denoising", "upscale": "upscaling", "interpolate": "interpolating",
         "edit": "editing", "style": "styling", "translate": "translating"}

# image-to-image tasks: a PNG input must already have the run's mode (grey or RGB), not be converted
SAME_MODE = ("edit", "translate")
# tasks of fully convolutional networks: inputs of any size, not only the run's native size
ANY_SIZE = ("style",)

DIFFUSION_OPTIONS = ("sampler", "sampling_steps", "eta", "guidance", "resample", "zeta", "average")

# The numeric options' ranges, checked for every task before the run is loaded
# (the upper bound of --sampling-steps, the run's T, is checked by the model).
BOUNDS = {"steps": dict(lo=2, integer=True), "sampling_steps": dict(lo=1, integer=True),
          "resample": dict(lo=1, integer=True), "average": dict(lo=1, integer=True),
          "iters": dict(lo=1, integer=True), "zeta": dict(lo=0), "eta": dict(lo=0),
          "sigma": dict(lo=0, lo_open=True), "guidance": {}, "label": dict(lo=0, integer=True),
          "snr": {}, "strength": dict(lo=0, hi=1), "style_weight": dict(lo=0)}


def check_options(options: dict) -> None:
    """The numeric options' ranges and --seeds, checked before the run is loaded."""
    for k, v in options.items():
        if k in BOUNDS:
            check_number("--" + k.replace("_", "-"), v, **BOUNDS[k])
    if options.get("seeds") is not None:
        for v in options["seeds"]:
            check_number("--seeds", v, integer=True)


def task_problem(run, task: str, name: str | None = None) -> str | None:
    """Why `run` cannot do `task` (a one-line reason naming the run as `name`), or None if it can."""
    if task not in TASKS:
        return f"unknown task {task!r}; choose one of {', '.join(TASKS)}"
    name = name or str(run.run_dir)
    families = TASKS[task][1]
    model = run.cfg.model_name
    if model not in families:
        return f"{task} works with {', '.join(families)} runs; {name} is a {model} run"
    if run.family != "image":
        return f"{task} works on images; {name} is a {run.family} run"
    native = tuple(run.meta["native_size"])
    if task not in ANY_SIZE and (getattr(run.model.cfg, "image_size", None) != native[0] or native[0] != native[1]):
        return f"{task} needs a run trained at its data's native (square) size, {native[0]}x{native[1]}"
    return None


def supported_tasks(run) -> list[str]:
    """The tasks of TASKS that `run` can do."""
    return [t for t in TASKS if task_problem(run, t) is None]


def check_run(run, task: str, options: dict, name: str | None = None) -> None:
    """Refuse a task the run cannot do, or diffusion options given for another family."""
    problem = task_problem(run, task, name)
    if problem:
        raise ConfigError(problem)
    given = sorted(k for k in DIFFUSION_OPTIONS if options.get(k) is not None)
    check_diffusion_options(run, ['--' + k.replace('_', '-') for k in given], name or run.run_dir)


def run_task(run, task: str, batch: ImageBatch | None, *, name: str | None = None,
             input_name: str = "--input", **options) -> tuple[torch.Tensor, torch.Tensor | None, int | None]:
    """The in-memory half of `apply`: check that the loaded `run` can do `task` with these
    options on `batch` (None: no input, for interpolate --seeds), and do it.

    Args:
        name: how messages call the run (default its folder); input_name: how they call the input.
    Returns:
        (uint8 (N, C, H, W) images, the input's labels to keep beside them or None, the number of
        images per row of a PNG grid or None).
    """
    check_options(options)
    check_run(run, task, options, name)
    fn = TASKS[task][0]
    native = tuple(run.meta["native_size"])
    images = labels = None
    if batch is not None:
        images, labels = batch.images, batch.labels
        k = run.model.num_classes if getattr(run.model, "conditional", False) else None
        if labels is not None and k and not bool(((labels >= 0) & (labels < k)).all()):
            raise ShapeError(f"{input_name}: 'labels' must be classes in 0..{k - 1} for this run, got values "
                             f"{int(labels.min())}..{int(labels.max())}")
        want = (native[0] // FACTOR, native[1] // FACTOR) if task == "upscale" else native
        if task not in ANY_SIZE:
            check_size(images, want, f"{task} input")
    elif task != "interpolate":
        raise ConfigError(f"{task} needs --input FILE.npz or FILE.png")
    given = {k: v for k, v in options.items() if v is not None}
    accepted = inspect.signature(fn).parameters
    for k in given:
        if k not in accepted:
            raise ConfigError(f"--{k.replace('_', '-')} is not an option of {task}")
    nrow = (options.get("steps") or 8) if task == "interpolate" else None
    total = len(images) if task != "interpolate" else (len(images) // 2 if images is not None else 1) * nrow
    # progress: the task's inner loops (sampler steps, VAE iterations, PixelCNN pixels) move it
    with Progress(VERBS[task], total, unit="images") as bar, bar.part(0, total):
        result = fn(run, images, labels, **given)
    keep = labels if task != "interpolate" else None
    return result, keep, nrow


def apply(run_dir: str | os.PathLike | None, task: str, *, input: str | os.PathLike | None, out: str | os.PathLike,
          checkpoint: str = "last", device: str = "cpu", **options) -> Path:
    """Run `task` of run_dir's model on the images in `input`, write them to `out`; returns `out`.
    `options` are the task's keyword arguments (mask, sigma, seed, steps, ...). run_dir None:
    style transfer by optimisation (task "style", options style=IMAGE), which needs no run."""
    from genlab.engine.run import load

    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    check_output(out, (".npz", ".png", ".wav", ".smi", ".txt"))  # .smi/.txt: molecule runs
    check_options(options)  # before the (slow) load
    if task == "style":  # photos of any format and size, with a style-transfer run or none
        from genlab.apply.style import apply_style

        return apply_style(run_dir, input=input, out=out, checkpoint=checkpoint, device=device, **options)
    if run_dir is None:
        raise ConfigError(f"{task} needs a trained run: genlab apply RUN_DIR {task} ...")
    run = load(run_dir, checkpoint, device)
    if run.family == "audio":
        from genlab.apply.audio import apply_audio

        return apply_audio(run, task, input=input, out=out, name=str(run_dir), **options)
    if hasattr(run.model, "encode_smiles"):  # molecule runs with a latent space (the SMILES VAE)
        from genlab.apply.molecules import apply_molecules

        return apply_molecules(run, task, input=input, out=out, name=str(run_dir), **options)
    if Path(out).suffix.lower() == ".wav":
        raise ConfigError(f"--out FILE.wav is for audio runs; {run_dir} is an image run: give FILE.npz or FILE.png")
    if Path(out).suffix.lower() in (".smi", ".txt"):
        raise ConfigError(f"--out FILE{Path(out).suffix.lower()} is for SMILES VAE runs; {run_dir} is a "
                          f"{run.cfg.model_name} run: give FILE.npz or FILE.png")
    check_run(run, task, options, str(run_dir))
    if task in SAME_MODE and input is not None:
        check_png_channels(input, run.meta["channels"])
    batch = read_images(input, run.meta["channels"]) if input is not None else None
    result, keep, nrow = run_task(run, task, batch, name=str(run_dir), input_name=str(input), **options)
    out = Path(out)
    atomic_write_bytes(out, result_bytes(out.suffix[1:], task, None if batch is None else batch.images, result,
                                         keep, nrow, options))
    return out


def result_bytes(fmt: str, task: str, inputs: torch.Tensor | None, result: torch.Tensor,
                 labels: torch.Tensor | None, nrow: int | None, options: dict) -> bytes:
    """What `genlab apply --out y.png|y.npz` writes and /v1/apply answers: an .npz of the results
    (the input's layout); a PNG strip with labelled rows (`strip_rows`) when there is more than
    one image, else the image itself."""
    if fmt == "png" and (task == "interpolate" or len(result) > 1):
        rows, ncol = strip_rows(task, inputs, result, nrow, options)
        return png_bytes(labelled_rows(rows, ncol))
    return output_bytes(fmt, result, labels, nrow)


def strip_rows(task: str, images: torch.Tensor | None, result: torch.Tensor, nrow: int | None,
               options: dict) -> tuple[list[tuple[str, torch.Tensor]], int]:
    """The labelled rows of an application's PNG strip, and the images per row.
    interpolate: one row per pair ("seeds A, B" or "pair k"); inpaint: "input", "masked" (the
    pixels to fill in grey), "output" for each block of up to 8 images; denoise and upscale:
    "input" (upscale: enlarged, nearest pixel) and "output"."""
    if task == "interpolate":
        seeds = options.get("seeds")
        names = [f"seeds {seeds[0]}, {seeds[1]}"] if images is None else [f"pair {k + 1}" for k in range(len(images) // 2)]
        return [(t, result[k * nrow:(k + 1) * nrow]) for k, t in enumerate(names)], nrow
    N, C, H, W = result.shape
    shown = [("input", images if task != "upscale" else images.repeat_interleave(FACTOR, -2).repeat_interleave(FACTOR, -1))]
    if task == "inpaint":
        from genlab.apply.inpaint import make_mask

        fill = make_mask(options.get("mask") or "center", N, H, W, options.get("seed") or 0).expand(N, C, H, W)
        shown.append(("masked", torch.where(fill, torch.full_like(images, 128), images)))
    shown.append(("output", result))
    ncol = min(N, 8)
    return [(t, x[i:i + ncol]) for i in range(0, N, ncol) for t, x in shown], ncol


class _CallableModule(types.ModuleType):
    """`genlab.apply(run_dir, task, ...)`: the package is callable as its `apply` function, so
    that the name genlab.apply means one thing (this package) and both uses work."""

    def __call__(self, *args, **kwargs) -> Path:
        return apply(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
