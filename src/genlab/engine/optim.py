"""Optimisers, the learning-rate schedule (a pure function) and EMA weights."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from genlab.config import TrainConfig


def lr_at(step: int, total_steps: int, base_lr: float, *, warmup: int = 0, schedule: str = "cosine",
          min_ratio: float = 0.1, time_fraction: float = 0.0) -> float:
    """Linear warmup over `warmup` steps, then cosine decay to `base_lr * min_ratio` at the end
    of the run. The run's progress is the larger of step/total_steps and `time_fraction`
    (elapsed/budget when a --minutes budget is set), so time-budgeted runs still anneal."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule == "constant":
        return base_lr
    span = max(1, total_steps - warmup)
    progress = min(1.0, max((step - warmup) / span, time_fraction))
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def build_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    groups: list = params
    if cfg.weight_decay > 0:
        # Decay weight matrices and embeddings only, not biases or norm gains (as nanoGPT, minGPT).
        groups = [g for g in ({"params": [p for p in params if p.dim() >= 2]},
                              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}) if g["params"]]
    # fused=True: one kernel for the whole update (CPU and CUDA), faster than foreach.
    return cls(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=True)


def ema_decay_at(step: int, decay: float) -> float:
    """EMA decay with the usual warmup, (1 + t) / (10 + t), so early EMA weights are useful."""
    return min(decay, (1 + step) / (10 + step))


class EMA:
    """An exponential moving average of a module's floating-point parameters and buffers."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = ema_decay_at(step, self.decay)
        ema_p = [p for p in self.module.parameters()]
        cur_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, cur_p, 1.0 - d)
        for e, b in zip(self.module.buffers(), model.buffers()):
            e.copy_(b)
