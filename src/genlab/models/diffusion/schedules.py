"""Noise schedules and the algebra of Gaussian diffusion, as pure functions.

Discrete time t = 0..T-1 (index t is the paper's step t+1). alpha_bar[t] is the signal
fraction of x_t = sqrt(alpha_bar[t]) x0 + sqrt(1 - alpha_bar[t]) eps; the clean image is
"t = -1" with alpha_bar = 1. Schedules are computed in float64; callers cast.

Prediction targets (Ho et al. 2020; Salimans & Ho 2022), with a = sqrt(ab), s = sqrt(1 - ab):
    eps               x0 = (x_t - s eps) / a
    x0                eps = (x_t - a x0) / s
    v = a eps - s x0  x0 = a x_t - s v,  eps = s x_t + a v
"""

from __future__ import annotations

import math

import torch


def linear_beta_schedule(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM's linear betas, rescaled so that any T spans the same noise range as T = 1000. (T,) float64."""
    scale = 1000 / T
    return torch.linspace(scale * beta_start, scale * beta_end, T, dtype=torch.float64)


def cosine_beta_schedule(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule: alpha_bar(t) = f(t) / f(0), f(t) = cos^2((t/T + s)/(1 + s) pi/2),
    betas clipped at `max_beta` so the last step stays finite. (T,) float64."""
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    ab = f / f[0]
    return (1 - ab[1:] / ab[:-1]).clamp(max=max_beta)


SCHEDULES = {"linear": linear_beta_schedule, "cosine": cosine_beta_schedule}


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """alpha_bar[t] = prod_{i<=t} (1 - beta_i). (T,) same dtype."""
    return torch.cumprod(1 - betas, dim=0)


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-example coefficients (B,) -> (B, 1, 1, 1) in x's dtype and device."""
    return v.to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.dim() - 1)))


def q_sample(x0: torch.Tensor, t: torch.Tensor, alpha_bar: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The closed-form forward process q(x_t | x0): x0 (B, C, H, W), t (B,) long -> x_t (B, C, H, W)."""
    ab = alpha_bar.to(x0.device)[t]
    return _bcast(ab.sqrt(), x0) * x0 + _bcast((1 - ab).sqrt(), x0) * noise


def q_step(x_prev: torch.Tensor, t: int, betas: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """One step of the forward chain q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)."""
    b = float(betas[t])
    return math.sqrt(1 - b) * x_prev + math.sqrt(b) * noise


def to_x0_eps(pred: torch.Tensor, x_t: torch.Tensor, ab_t: torch.Tensor, target: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A network output of kind `target` (eps | x0 | v) -> (x0, eps). ab_t: (B,) alpha_bar at each x_t's step."""
    a, s = _bcast(ab_t.sqrt(), x_t), _bcast((1 - ab_t).sqrt(), x_t)
    if target == "eps":
        return (x_t - s * pred) / a, pred
    if target == "x0":
        return pred, (x_t - a * pred) / s
    if target == "v":
        return a * x_t - s * pred, s * x_t + a * pred
    raise ValueError(f"unknown prediction target {target!r}")


def from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, ab_t: torch.Tensor, target: str) -> torch.Tensor:
    """(x0, eps) -> what a network predicting `target` should output (the training target)."""
    if target == "eps":
        return eps
    if target == "x0":
        return x0
    if target == "v":
        return _bcast(ab_t.sqrt(), x0) * eps - _bcast((1 - ab_t).sqrt(), x0) * x0
    raise ValueError(f"unknown prediction target {target!r}")


def snr(alpha_bar: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar)."""
    return alpha_bar / (1 - alpha_bar)


def min_snr_weight(snr_t: torch.Tensor, gamma: float, target: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023) for an MSE on `target`: the x0-space weight
    min(snr, gamma) expressed for each target (eps: / snr; v: / (snr + 1))."""
    w = snr_t.clamp(max=gamma)
    if target == "eps":
        return w / snr_t
    if target == "v":
        return w / (snr_t + 1)
    return w


def step_for_noise(alpha_bar: torch.Tensor, noise_std: float) -> int:
    """The step t whose x_t / sqrt(alpha_bar[t]) = x0 + sqrt((1 - ab)/ab) eps carries noise of std
    `noise_std` (closest match): where the reverse process starts for a noisy image."""
    ratio = ((1 - alpha_bar) / alpha_bar).sqrt()
    return int((ratio - noise_std).abs().argmin())


def timesteps(T: int, k: int, start: int | None = None) -> list[int]:
    """k descending steps from `start` (default T-1) towards 0, "trailing" spacing: the first
    step is always `start` itself, e.g. T=1000, k=4 -> [999, 749, 499, 249]; k = start + 1
    gives every step. Used by every sampler and by `denoise`, which starts part-way."""
    start = T - 1 if start is None else start
    if not 0 <= start < T:
        raise ValueError(f"start step must be in 0..{T - 1}, got {start}")
    if not 1 <= k <= start + 1:
        raise ValueError(f"sampling steps must be in 1..{start + 1}, got {k}")
    return [round((start + 1) * i / k) - 1 for i in range(k, 0, -1)]


def logsnr_timesteps(alpha_bar: torch.Tensor, k: int, start: int | None = None,
                     floor: float | None = None) -> list[int]:
    """k descending steps from `start` (default T-1) to 0, spaced uniformly in the log-SNR
    lambda = 0.5 log(ab / (1 - ab)) (DPM-Solver's time variable; Lu et al. 2022): denser at the
    clean end than `timesteps`, which matters for data of small amplitude (audio), whose detail
    lives at noise levels `timesteps` crosses in one final step.

    The steps are the k lambdas evenly spaced from max(lambda[start], floor) to lambda[0], the
    first moved to `start` itself. `floor` skips the stretch of very low SNR (the cosine schedule's clipped last
    betas put lambda[T-1] ~ -10 against -4.3 at T-10) where the x0 estimate is just the data mean,
    which one step crosses exactly. Each step is the one with the lambda nearest its target, kept
    strictly descending with room for the rest: the last is 0 (k >= 2); k = start + 1 gives every step."""
    T = len(alpha_bar)
    start = T - 1 if start is None else start
    if not 0 <= start < T:
        raise ValueError(f"start step must be in 0..{T - 1}, got {start}")
    if not 1 <= k <= start + 1:
        raise ValueError(f"sampling steps must be in 1..{start + 1}, got {k}")
    ab = alpha_bar[:start + 1].double()
    lam = 0.5 * torch.log(ab / (1 - ab))  # (start + 1,), decreasing in t
    hi = float(lam[start]) if floor is None else max(float(lam[start]), floor)
    out = [start]
    for i, target in enumerate(torch.linspace(hi, float(lam[0]), k, dtype=torch.float64).tolist()[1:], start=1):
        t = min(int((lam - target).abs().argmin()), out[-1] - 1)
        out.append(max(t, k - 1 - i))
    return out
