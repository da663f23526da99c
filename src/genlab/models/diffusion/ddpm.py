"""Gaussian diffusion (Ho et al. 2020): training by denoising at random steps, and three samplers
on one shared set of update rules, for data of any shape (B, ...).

`GaussianDiffusion` is the process (schedule, prediction targets, guidance, loss, samplers,
inversion); a subclass supplies the network (`build_net`) and the shape of one example
(`data_shape`): `Diffusion` here (images on the UNet of `unet.py`, registered "diffusion") and
`diffwave.WaveDiffusion` (waveforms, "diffwave"). Their configs share `ProcessConfig`.

  - `ddpm`: ancestral sampling (the posterior q(x_s | x_t, x0) at every step; with fewer than T
    steps, the same posterior between the strided steps), i.e. DDIM with eta = 1;
  - `ddim`: Song et al. 2021, deterministic at eta = 0, ancestral at eta = 1;
  - `dpmpp`: DPM-Solver++(2M) (Lu et al. 2022), a second-order multistep solver of the
    probability-flow ODE in data prediction; 10-20 steps. With eta > 0 its stochastic form
    (SDE-DPM-Solver++(2M) at eta = 1), which adds fresh noise each step as DDPM does.

The network predicts eps, x0 or v (`model.prediction`); every sampler works on (x0, eps) pairs
converted from it (schedules.to_x0_eps). Classifier-free guidance (Ho & Salimans 2022): labels
are replaced by a "no label" token with probability `label_dropout` in training, and sampling
combines eps = eps_uncond + w (eps_cond - eps_uncond) (w = 1: plain conditional, w = 0:
unconditional). Each target is an affine function of eps for a fixed x_t and t, so the same
combination of the raw network outputs is exactly that eps combination.

Data space: the model sees batches as the data pipeline makes them; the presets use
data.normalize=minus_one_one ([-1, 1]), which `clip_denoised` = 1 assumes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from genlab.errors import ConfigError
from genlab.options import check_number
from genlab.progress import advance
from genlab.models.base import GenerativeModel, check_image_fields
from genlab.models.diffusion import schedules as sch
from genlab.models.diffusion.unet import UNet, UNetConfig
from genlab.registry import register

SAMPLERS = ("ddpm", "ddim", "dpmpp")
PREDICTIONS = ("eps", "x0", "v")


@dataclass
class ProcessConfig:
    """The diffusion process and its sampling defaults: the fields every diffusion model's config
    shares (subclasses add their network's fields and the data-dependent ones)."""
    schedule: str = "cosine"  # cosine | linear
    timesteps: int = 1000  # T
    prediction: str = "v"  # eps | x0 | v: what the network outputs
    loss_weight: str = "min_snr"  # none (plain MSE on the target) | min_snr (Hang et al. 2023)
    snr_gamma: float = 5.0
    conditional: bool = False
    label_dropout: float = 0.1  # classifier-free guidance: share of training labels replaced by "no label"
    # sampling defaults (genlab sample --sampler/--sampling-steps/--guidance/--eta override them)
    sampler: str = "dpmpp"
    sampling_steps: int = 20
    guidance: float = 1.0
    eta: float = 0.0  # ddim, dpmpp: fresh noise per step (0 deterministic; ddim 1 = ddpm, dpmpp 1 = its SDE form)
    clip_denoised: float | None = 1.0  # clamp predicted x0 to [-c, c]; null for none
    num_classes: int | None = None  # filled in from the data when left None

    def validate(self) -> None:
        if self.schedule not in sch.SCHEDULES:
            raise ConfigError(f"model.schedule must be one of {', '.join(sch.SCHEDULES)}, got {self.schedule!r}")
        if self.prediction not in PREDICTIONS:
            raise ConfigError(f"model.prediction must be eps, x0 or v, got {self.prediction!r}")
        if self.loss_weight not in ("none", "min_snr"):
            raise ConfigError(f"model.loss_weight must be none or min_snr, got {self.loss_weight!r}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"model.sampler must be ddpm, ddim or dpmpp, got {self.sampler!r}")
        if self.timesteps < 2 or not 1 <= self.sampling_steps <= self.timesteps:
            raise ConfigError("model.timesteps must be >= 2 and model.sampling_steps in 1..timesteps")
        if not 0 <= self.label_dropout < 1:
            raise ConfigError("model.label_dropout must be in [0, 1)")


@dataclass
class DiffusionConfig(ProcessConfig):
    """Image diffusion: the process fields (ProcessConfig) plus the UNet's and the image's."""
    # the UNet (see unet.UNetConfig)
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (7,)  # at the network's resolution (image_size / patch)
    heads: int = 4
    dropout: float = 0.0
    groups: int = 8
    patch: int = 2  # pixel-unshuffle stem: 28x28x1 -> 14x14x4 (4x fewer convolution FLOPs)
    # unet (genlab's) | diffusers (UNet2DModel) | ddpm-pytorch (lucidrains' Unet): see backbones.py
    backbone: str = "unet"
    noise_draws: int = 1  # (t, noise) draws per image in a training step (DPDM's noise multiplicity)
    # Filled in from the data when left None (and ProcessConfig.num_classes).
    channels: int | None = None
    image_size: int | None = None

    def validate(self) -> None:
        super().validate()
        if self.noise_draws < 1:
            raise ConfigError(f"model.noise_draws must be >= 1, got {self.noise_draws}")
        from genlab.models.diffusion.backbones import BACKBONES

        if self.backbone not in BACKBONES:
            raise ConfigError(f"model.backbone must be one of {', '.join(BACKBONES)}, got {self.backbone!r}")
        if self.base_channels % self.heads or self.patch < 1:
            raise ConfigError("model.base_channels must be divisible by model.heads, and model.patch >= 1")


class GaussianDiffusion(GenerativeModel):
    """The diffusion process on examples x0 (B, *data_shape()) in data space: T discrete steps and
    a network `net(x_t, t, y) -> (B, *data_shape())` predicting `cfg.prediction`, which the
    subclass builds in `build_net` (labels y (B,) long; None or index num_classes: "no label")."""

    # the preset named when --guidance is given to an unconditional run
    conditional_example: str = "ddpm-cond-mnist"

    def __init__(self, cfg: ProcessConfig):
        super().__init__()
        self.cfg = cfg
        self.conditional = cfg.conditional
        self.num_classes = cfg.num_classes if cfg.conditional else None
        self.net = self.build_net(cfg)
        betas = sch.SCHEDULES[cfg.schedule](cfg.timesteps)
        # float64 and not saved: a pure function of the config
        self.register_buffer("alpha_bar", sch.alphas_cumprod(betas), persistent=False)

    def build_net(self, cfg: ProcessConfig) -> torch.nn.Module:
        """The denoising network for `cfg` (class-conditional with num_classes + 1 labels when
        cfg.conditional); called once, by __init__."""
        raise NotImplementedError

    def data_shape(self) -> tuple[int, ...]:
        """The shape of one example, e.g. (C, H, W) or (1, T)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ pieces
    @property
    def T(self) -> int:
        return self.cfg.timesteps

    def ab(self, t: int) -> float:
        """alpha_bar at step t; t = -1 is clean data (1.0)."""
        return 1.0 if t < 0 else float(self.alpha_bar[t])

    def sampling_timesteps(self, steps: int, start: int | None = None) -> list[int]:
        """The `steps` descending steps the samplers and `invert` visit from `start` (default
        T-1): schedules.timesteps' even "trailing" spacing; subclasses may space them otherwise."""
        return sch.timesteps(self.T, steps, start)

    def _null(self, n: int, device) -> torch.Tensor:
        return torch.full((n,), self.cfg.num_classes, dtype=torch.long, device=device)

    def raw(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None, guidance: float = 1.0) -> torch.Tensor:
        """The network's guided output (B, ...) for x_t (B, ...) at steps t (B,).
        Unconditional models, or labels None: one unconditional pass; w = 1: one conditional pass;
        w = 0: one unconditional pass; otherwise both in one batch, u + w (c - u)."""
        if not self.conditional or labels is None or guidance == 0:
            return self.net(x, t, None)
        if guidance == 1:
            return self.net(x, t, labels)
        B = x.shape[0]
        out = self.net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, self._null(B, x.device)]))
        c, u = out.float().chunk(2)  # (B, ...) each
        return u + guidance * (c - u)

    def predict(self, x: torch.Tensor, t: int, labels: torch.Tensor | None = None,
                guidance: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) estimated from x_t (B, ...) at the single step t; x0 clipped to
        [-clip, clip] when `clip_denoised` is set, and eps recomputed from the clipped x0 so the
        pair stays consistent with x_t."""
        B = x.shape[0]
        tt = torch.full((B,), t, dtype=torch.long, device=x.device)
        ab = self.alpha_bar[tt]
        x0, eps = sch.to_x0_eps(self.raw(x, tt, labels, guidance).float(), x, ab, self.cfg.prediction)
        c = self.cfg.clip_denoised
        if c is not None:
            x0 = x0.clamp(-c, c)
            eps = (x - math.sqrt(self.ab(t)) * x0) / math.sqrt(1 - self.ab(t))
        return x0, eps

    # ------------------------------------------------------------------ training
    def example_loss(self, batch: dict[str, torch.Tensor], *, label_dropout: bool = False) -> dict[str, torch.Tensor]:
        """Per-example denoising losses at one random (t, noise) draw each, from torch's global
        generator: {"loss": weighted (B,), "mse": unweighted (B,)}. Training averages them (with
        `label_dropout` for classifier-free guidance); membership audits read them per example."""
        x0 = batch["x"]
        B = x0.shape[0]
        t = torch.randint(0, self.T, (B,), device=x0.device)
        noise = torch.randn_like(x0)
        ab = self.alpha_bar[t]
        x_t = sch.q_sample(x0, t, self.alpha_bar, noise)
        y = None
        if self.conditional:
            y = batch["y"]
            if label_dropout:
                drop = torch.rand(B, device=x0.device) < self.cfg.label_dropout
                y = torch.where(drop, self._null(B, x0.device), y)
        pred = self.net(x_t, t, y).float()
        target = sch.from_x0_eps(x0, noise, ab, self.cfg.prediction)
        per = (pred - target).pow(2).flatten(1).mean(1)  # (B,)
        if self.cfg.loss_weight == "min_snr":
            w = sch.min_snr_weight(sch.snr(ab), self.cfg.snr_gamma, self.cfg.prediction).float()
            return {"loss": w * per, "mse": per}
        return {"loss": per, "mse": per}

    def loss(self, batch: dict[str, torch.Tensor], opt: str = "model") -> dict[str, torch.Tensor]:
        # `noise_draws` (t, noise) draws per example, averaged: DPDM's noise multiplicity. Each draw
        # is a separate pass over the same B examples, so a per-sample gradient (DP-SGD) sums an
        # example's draws before it is clipped.
        k = getattr(self.cfg, "noise_draws", 1)
        draws = [self.example_loss(batch, label_dropout=True) for _ in range(k)]
        return {name: sum(d[name] for d in draws).mean() / k for name in ("loss", "mse")}

    # ------------------------------------------------------------------ sampling
    def sampling_options(self, sampler, steps, guidance, eta) -> tuple[str, int, float, float]:
        c = self.cfg
        sampler = sampler or c.sampler
        if sampler not in SAMPLERS:
            raise ConfigError(f"--sampler must be ddpm, ddim or dpmpp, got {sampler!r}")
        if steps is None:
            steps = self.T if sampler == "ddpm" else c.sampling_steps
        check_number("--sampling-steps", steps, lo=1, hi=self.T, integer=True)
        check_number("--guidance", guidance)
        check_number("--eta", eta, lo=0)
        if guidance is not None and not self.conditional:
            raise ConfigError(f"--guidance needs a class-conditional diffusion run (e.g. {self.conditional_example}); "
                              "this one is unconditional: drop --guidance")
        guidance = c.guidance if guidance is None else guidance
        return sampler, steps, guidance, self.eta_for(sampler, eta)

    def eta_for(self, sampler: str, eta: float | None = None) -> float:
        """The eta `sampler` runs at: `eta` when given, else ddpm's 1 (ancestral by definition)
        or the config's model.eta for ddim and dpmpp."""
        if eta is not None:
            return eta
        return 1.0 if sampler == "ddpm" else self.cfg.eta

    @torch.no_grad()
    def sample_from(self, x: torch.Tensor, start: int, *, steps: int, sampler: str = "dpmpp", eta: float = 0.0,
                    guidance: float = 1.0, labels: torch.Tensor | None = None,
                    generator: torch.Generator | None = None, noises: torch.Tensor | None = None,
                    x0_hook: Callable[[torch.Tensor, int], torch.Tensor] | None = None) -> torch.Tensor:
        """Run the reverse process from x_start (B, ...) at step `start` down to clean data in
        `steps` model evaluations; returns x0 (B, ...) in data space. At eta > 0 each step but the
        last draws fresh noise (B, ...) from `generator`, or takes the next of `noises` (B, k, ...)
        drawn beforehand (`sampling_noise`).
        `x0_hook(x0, t)` may change each x0 estimate (e.g. a measurement-consistency
        projection); eps is then recomputed to match."""
        ts = self.sampling_timesteps(steps, start)
        x = x.float()
        x0_prev, h_prev = None, None
        for i, t in enumerate(ts):
            s = ts[i + 1] if i + 1 < len(ts) else -1
            x0, eps = self.predict(x, t, labels, guidance)
            advance(i + 1, len(ts))  # progress within the caller's batch (genlab.progress)
            if x0_hook is not None:
                x0 = x0_hook(x0, t)
                eps = (x - math.sqrt(self.ab(t)) * x0) / math.sqrt(1 - self.ab(t))
            if s < 0:
                return x0
            noise = None
            if eta > 0 and noises is not None:
                noise = noises[:, i].to(x.device)
            elif eta > 0:
                noise = torch.randn(x.shape, generator=generator,
                                    device=generator.device if generator else x.device).to(x.device)
            if sampler == "dpmpp":
                x = dpmpp_2m_step(x, x0, x0_prev, h_prev, self.ab(t), self.ab(s), eta, noise)
                x0_prev, h_prev = x0, log_snr_half(self.ab(s)) - log_snr_half(self.ab(t))
            else:
                x = ddim_step(x0, eps, self.ab(t), self.ab(s), eta, noise)
        return x  # not reached: the last step always returns

    def initial_noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """The x_T (n, *data_shape()) `sample` starts from, on the generator's device."""
        return torch.randn(n, *self.data_shape(), generator=generator, device=generator.device)

    def sampling_noise(self, n: int, generator: torch.Generator, *, steps: int, eta: float) -> torch.Tensor:
        """Everything `sample` with these options draws from `generator`, in its order, drawn now:
        x_T and, at eta > 0, the fresh noise of each of its stochastic steps, as (n, 1 + k, ...).
        sample_from(z[:, 0], T - 1, ..., noises=z[:, 1:]) then gives what `sample` gives
        (genlab.sampling.noise_decoder: requests with their own seeds share one batch)."""
        draws = [self.initial_noise(n, generator)]
        if eta > 0:  # every step but the last draws (n, ...) noise
            k = len(self.sampling_timesteps(steps, self.T - 1)) - 1
            draws += [torch.randn(n, *self.data_shape(), generator=generator, device=generator.device)
                      for _ in range(k)]
        return torch.stack(draws, 1)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator, labels: torch.Tensor | None = None,
               sampler: str | None = None, steps: int | None = None, guidance: float | None = None,
               eta: float | None = None) -> torch.Tensor:
        """n samples (n, *data_shape()) in data space; options default to the config's."""
        sampler, steps, guidance, eta = self.sampling_options(sampler, steps, guidance, eta)
        dev = self.alpha_bar.device
        x = self.initial_noise(n, generator).to(dev)
        return self.sample_from(x, self.T - 1, steps=steps, sampler=sampler, eta=eta, guidance=guidance,
                                labels=None if labels is None else labels.to(dev), generator=generator)

    @torch.no_grad()
    def invert(self, x0: torch.Tensor, steps: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Deterministic DDIM inversion: clean data (B, ...) -> the noise x_{T-1} that
        DDIM (eta = 0) with the same `steps` maps back to (approximately) them."""
        up = list(reversed(self.sampling_timesteps(steps)))
        x, cur = x0.float(), -1
        for k, t in enumerate(up):
            _, eps = self.predict(x, max(cur, 0), labels)
            advance(k + 1, len(up))
            x0_hat = (x - math.sqrt(1 - self.ab(cur)) * eps) / math.sqrt(self.ab(cur))
            x = math.sqrt(self.ab(t)) * x0_hat + math.sqrt(1 - self.ab(t)) * eps
            cur = t
        return x


class Diffusion(GaussianDiffusion):
    """Images x0 (B, C, H, W) in data space on a UNet (`unet.py`)."""

    def __init__(self, cfg: DiffusionConfig):
        check_image_fields(cfg, "diffusion model", cfg.patch if cfg.patch > 1 else None)
        super().__init__(cfg)

    def build_net(self, cfg: DiffusionConfig) -> torch.nn.Module:
        if cfg.backbone != "unet":
            from genlab.models.diffusion.backbones import build_backbone

            return build_backbone(cfg)
        return UNet(UNetConfig(
            in_channels=cfg.channels, out_channels=cfg.channels, image_size=cfg.image_size,
            base_channels=cfg.base_channels, channel_mults=cfg.channel_mults, num_res_blocks=cfg.num_res_blocks,
            attention_resolutions=cfg.attention_resolutions, heads=cfg.heads, dropout=cfg.dropout,
            groups=cfg.groups, num_classes=cfg.num_classes if cfg.conditional else None, patch=cfg.patch))

    def data_shape(self) -> tuple[int, int, int]:
        return (self.cfg.channels, self.cfg.image_size, self.cfg.image_size)


def log_snr_half(ab: float) -> float:
    """lambda = log(alpha / sigma) = 0.5 log(ab / (1 - ab)) (DPM-Solver's time variable)."""
    return 0.5 * math.log(ab / (1 - ab))


def ddim_step(x0: torch.Tensor, eps: torch.Tensor, ab_t: float, ab_s: float, eta: float,
              noise: torch.Tensor | None) -> torch.Tensor:
    """One generalised DDIM step x_t -> x_s (s < t) from the (x0, eps) estimate:
    sigma = eta sqrt((1 - ab_s) / (1 - ab_t)) sqrt(1 - ab_t / ab_s);
    x_s = sqrt(ab_s) x0 + sqrt(1 - ab_s - sigma^2) eps + sigma z.
    eta = 1 is the DDPM posterior q(x_s | x_t, x0); eta = 0 is deterministic."""
    sigma = eta * math.sqrt((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)) if ab_s < 1 else 0.0
    x = math.sqrt(ab_s) * x0 + math.sqrt(max(1 - ab_s - sigma ** 2, 0.0)) * eps
    if sigma > 0:
        x = x + sigma * noise
    return x


def dpmpp_2m_step(x: torch.Tensor, x0: torch.Tensor, x0_prev: torch.Tensor | None, h_prev: float | None,
                  ab_t: float, ab_s: float, eta: float = 0.0, noise: torch.Tensor | None = None) -> torch.Tensor:
    """DPM-Solver++(2M), x_t -> x_s (s < t, ab_s < 1): with h = lambda_s - lambda_t,
    x_s = (sigma_s / sigma_t) e^(-eta h) x_t + alpha_s (1 - e^(-(1 + eta) h)) D
          + sigma_s sqrt(1 - e^(-2 eta h)) z,
    where D = x0 on the first step and (1 + 1/(2r)) x0 - 1/(2r) x0_prev after it (r = h_prev / h).
    eta = 0 is the ODE solver (x_s = (sigma_s / sigma_t) x_t - alpha_s (e^-h - 1) D); eta = 1 is
    SDE-DPM-Solver++(2M) (Lu et al. 2022, its midpoint form), noise z ~ N(0, I) needed then."""
    a_s, sg_s, sg_t = math.sqrt(ab_s), math.sqrt(1 - ab_s), math.sqrt(1 - ab_t)
    h = log_snr_half(ab_s) - log_snr_half(ab_t)
    D = x0
    if x0_prev is not None and h_prev is not None:
        r = h_prev / h
        D = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
    x = (sg_s / sg_t) * math.exp(-eta * h) * x - a_s * math.expm1(-(1 + eta) * h) * D
    if eta > 0:
        x = x + sg_s * math.sqrt(-math.expm1(-2 * eta * h)) * noise
    return x


def guided(model: GaussianDiffusion, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, w: float) -> torch.Tensor:
    """eps_u + w (eps_c - eps_u) from two separate passes (for tests and reference)."""
    eps_c = sch.to_x0_eps(model.net(x, t, labels).float(), x, model.alpha_bar[t], model.cfg.prediction)[1]
    eps_u = sch.to_x0_eps(model.net(x, t, None).float(), x, model.alpha_bar[t], model.cfg.prediction)[1]
    return eps_u + w * (eps_c - eps_u)


def avg_pool_consistency(low: torch.Tensor, factor: int) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """An x0 hook forcing avg_pool(x0, factor) == low (B, C, H/f, W/f): x0 + up(low - down(x0)),
    the projection onto the images whose f x f block means are `low` (range/null-space split)."""
    def hook(x0: torch.Tensor, t: int) -> torch.Tensor:
        return x0 + F.interpolate(low - F.avg_pool2d(x0, factor), scale_factor=factor, mode="nearest")
    return hook


register("diffusion", DiffusionConfig, Diffusion)
