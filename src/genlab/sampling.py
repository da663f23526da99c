"""Drawing samples from a trained model as uint8 images at the data's native size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from genlab.data.transforms import BatchPipeline
from genlab.errors import ConfigError
from genlab.images import resize_uint8
from genlab.progress import Progress
from genlab.seed import make_generator

BATCH = 500  # images per model.sample call in draw_samples
DIFFUSION_MODELS = ("diffusion", "diffwave")  # the runs that take sampler/steps/guidance/eta


GUIDED_MODELS = ("wavenet",)  # runs whose sampling takes classifier-free guidance, and no other diffusion option


def check_diffusion_options(run, given: list[str], who: str, *, sampling: bool = False) -> None:
    """A ConfigError when diffusion sampling options (`given`, spelled as the caller's user
    wrote them: --sampler, sampling_steps) are given for a run of another family. `sampling`:
    the caller samples the run (genlab sample, POST /v1/generate), so a WaveNet takes guidance."""
    if sampling and run.cfg.model_name in GUIDED_MODELS:
        given = [g for g in given if g.lstrip("-") != "guidance"]
    if given and run.cfg.model_name not in DIFFUSION_MODELS:
        raise ConfigError(f"{', '.join(given)}: diffusion options, but {who} is a {run.cfg.model_name} run")


def balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    """0, 1, ..., K-1, 0, 1, ...: each class gets n/K samples (the first n % K one more)."""
    return torch.arange(n) % num_classes


def sample_labels(model: nn.Module, n: int, label: int | None) -> torch.Tensor | None:
    """The n labels draw_samples gives a model: None (unconditional), class `label` n times, or
    all classes in equal shares; a ConfigError for a label the model cannot take."""
    conditional = getattr(model, "conditional", False)
    k = getattr(model, "num_classes", None)
    if label is not None and not conditional:
        raise ConfigError("--label needs a conditional model; this one is unconditional")
    if label is not None and not 0 <= label < k:
        raise ConfigError(f"--label must be in 0..{k - 1}, got {label}")
    if not conditional:
        return None
    return torch.full((n,), label) if label is not None else balanced_labels(n, k)


@dataclass(frozen=True)
class NoiseDecoder:
    """How a model's `sample` splits into drawing all its noise first and a deterministic rest
    (VAE/GAN prior draws; diffusion: x_T and its stochastic steps' noise). Requests with equal
    `key`s can then share one `decode` call on their concatenated noise and labels, each getting
    what `model.sample` gives alone."""
    noise: Callable[[int, torch.Generator], torch.Tensor]  # (n, generator) -> (n, ...) noise
    decode: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]  # (noise, labels) -> data space
    key: tuple  # the resolved sampling settings


def noise_decoder(model: nn.Module, options: dict | None = None) -> NoiseDecoder | None:
    """The NoiseDecoder that reproduces `model.sample(n, generator=g, labels=y, **options)`, or
    None when sampling draws from the generator as it goes (PixelCNN, GraphRNN). A diffusion
    sampler's stochastic steps (DDPM; DDIM or DPM-Solver++ at eta > 0) take noise drawn with x_T
    (GaussianDiffusion.sampling_noise). Checks the options as `model.sample` would (a ConfigError
    for bad ones)."""
    from genlab.models.base import LatentVariableModel
    from genlab.models.diffusion.ddpm import Diffusion

    options = options or {}
    dev = next(model.parameters()).device
    if isinstance(model, LatentVariableModel) and not options:  # LatentVariableModel.sample
        return NoiseDecoder(
            noise=model.initial_noise,
            decode=lambda z, y: model.decode_latent(z.to(dev), None if y is None else y.to(dev)),
            key=("latent",))
    if isinstance(model, Diffusion):  # Diffusion.sample
        sampler, steps, guidance, eta = model.sampling_options(options.get("sampler"), options.get("steps"),
                                                               options.get("guidance"), options.get("eta"))
        return NoiseDecoder(
            noise=lambda n, g: model.sampling_noise(n, g, steps=steps, eta=eta),
            decode=lambda z, y: model.sample_from(z[:, 0].to(dev), model.T - 1, steps=steps, sampler=sampler,
                                                  eta=eta, guidance=guidance, noises=z[:, 1:],
                                                  labels=None if y is None else y.to(dev)),
            key=(sampler, steps, guidance, eta))
    return None


def _batches(model: nn.Module, n: int, *, seed: int, label: int | None, batch_size: int,
             options: dict | None, unit: str = "images"):
    """(labels, an iterator of (start index, model.sample output)) for n samples in batches, all
    from one generator seeded `seed`; the model is in eval mode while the iterator runs, and
    its progress ("sampling k/n `unit`") is shown, moved within a batch by the model's own loop."""
    if n < 1:
        raise ConfigError(f"--n must be >= 1, got {n}")
    labels = sample_labels(model, n, label)

    def run():
        was_training = model.training
        model.eval()
        g = make_generator(seed)
        try:
            with Progress("sampling", n, unit=unit) as bar:
                for i in range(0, n, batch_size):
                    yb = None if labels is None else labels[i:i + batch_size]
                    b = min(batch_size, n - i)
                    with bar.part(i, b):
                        x = model.sample(b, generator=g, labels=yb, **(options or {}))
                    yield i, x
        finally:
            model.train(was_training)

    return labels, run()


@torch.no_grad()
def draw_samples(model: nn.Module, pipeline: BatchPipeline, n: int, *, seed: int,
                 native_size: tuple[int, int], label: int | None = None,
                 batch_size: int = BATCH, options: dict | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """n samples -> (uint8 (n, C, H, W) at `native_size`, int64 labels or None).
    A conditional model samples class `label`, or all classes in equal shares. `options` are
    passed on to `model.sample` (diffusion: sampler, steps, guidance, eta)."""
    labels, batches = _batches(model, n, seed=seed, label=label, batch_size=batch_size, options=options)
    out = None  # filled in place: the n images are held once, not twice as chunks + their concatenation
    for i, x in batches:
        x = resize_uint8(pipeline.to_uint8(x), native_size)  # (b, C, H, W)
        if out is None:
            out = torch.empty((n, *x.shape[1:]), dtype=torch.uint8)
        out[i:i + len(x)] = x
    return out, labels


@torch.no_grad()
def draw_audio(model: nn.Module, n: int, *, seed: int, label: int | None = None, batch_size: int = BATCH,
               options: dict | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """n waveforms from an audio model -> (float32 (n, T) in [-1, 1], int64 labels or None);
    labels as `draw_samples` gives them."""
    labels, batches = _batches(model, n, seed=seed, label=label, batch_size=batch_size, options=options,
                               unit="clips")
    chunks = [x.reshape(len(x), -1).float().clamp(-1, 1).cpu() for _, x in batches]  # (b, T) each
    return torch.cat(chunks), labels


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between rows of a and b (B, D) at fractions t (S,) -> (B, S, D).
    Gaussian latents keep their typical norm along the path, unlike linear interpolation."""
    an, bn = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    omega = torch.acos((an * bn).sum(1).clamp(-1 + 1e-7, 1 - 1e-7)).view(-1, 1, 1)  # (B, 1, 1)
    t = t.view(1, -1, 1)
    so = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / so) * a[:, None] + (torch.sin(t * omega) / so) * b[:, None]


@torch.no_grad()
def interpolation_grid(run, *, rows: int, steps: int, seed: int,
                       label: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """rows x steps images walking the latent space between pairs of prior draws."""
    from genlab.models.base import LatentVariableModel

    model = run.model
    if not isinstance(model, LatentVariableModel):
        raise ConfigError(f"{run.cfg.model_name} models have no latent space to interpolate")
    g = make_generator(seed)
    dim = model.latent_shape()
    z0 = torch.randn(rows, *dim, generator=g)
    z1 = torch.randn(rows, *dim, generator=g)
    z = slerp(z0.flatten(1), z1.flatten(1), torch.linspace(0, 1, steps)).reshape(rows * steps, *dim)
    labels = None
    if getattr(model, "conditional", False):
        per_row = torch.full((rows,), label) if label is not None else balanced_labels(rows, model.num_classes)
        labels = per_row.repeat_interleave(steps)
    x = model.decode_latent(z.to(run.device), None if labels is None else labels.to(run.device))
    return resize_uint8(run.pipeline.to_uint8(x), tuple(run.meta["native_size"])), labels
