"""Optimisers, the learning-rate schedule (a pure function) and EMA weights."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.optim.adamw import adamw

from genlab.config import TrainConfig
from genlab.engine.device import cpu_bf16_is_fast
from genlab.errors import ConfigError


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


def build_optimizer(params: list[nn.Parameter], cfg: TrainConfig, matrices: set[int] = frozenset()
                    ) -> torch.optim.Optimizer:
    """The optimiser of `params` that cfg.optimizer names. `matrices`: ids of the parameters Muon
    orthogonalises (`muon_matrices(model)`); with adam/adamw it is unused."""
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    if cfg.optimizer != "muon":
        matrices = frozenset()
    groups: list = params
    if cfg.weight_decay > 0 or cfg.optimizer == "muon":
        # Decay weight matrices and embeddings only, not biases or norm gains (as nanoGPT, minGPT).
        groups = [g for g in ({"params": [p for p in params if p.dim() >= 2 and id(p) not in matrices]},
                              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}) if g["params"]]
    if cfg.optimizer == "muon":
        hidden = [p for p in params if id(p) in matrices]
        if not hidden:
            raise ConfigError("train.optimizer=muon found no weight matrix to orthogonalise (a trainable parameter of 2 "
                              "or more dimensions that is not an embedding); use train.optimizer=adamw")
        # the Newton-Schulz precision is fixed here and kept in checkpoints (a resumed run never switches)
        bf16 = any(p.is_cuda for p in hidden) or cpu_bf16_is_fast()
        groups.append({"params": hidden, "muon": True, "lr_ratio": cfg.muon_lr / cfg.lr, "weight_decay": 0.0,
                       "ns_bf16": bf16})
        return Muon(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    # fused=True: one kernel for the whole update (CPU and CUDA), faster than foreach.
    return cls(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=True)


def muon_matrices(model: nn.Module) -> set[int]:
    """ids of the weights Muon updates: every trainable parameter of 2 or more dimensions
    (Linear, Conv and ConvTranspose weights, spectral norm's weight_orig, LoRA adapters, RNN
    matrices) except embeddings and parameters under the model's `muon_exclude` name prefixes (an
    output layer not tied to an embedding, if a model wants it on AdamW). Biases and norm gains
    (1-D) stay with AdamW."""
    exclude = tuple(getattr(model, "muon_exclude", ()))
    out = set()
    for name, m in model.named_modules():
        if not (exclude and name.startswith(exclude)):
            out.update(id(p) for p in m.parameters(recurse=False) if p.dim() >= 2 and p.requires_grad)
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return out - embeddings  # embedding tables, and any weight tied to one, stay with AdamW


def newton_schulz(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """An approximately orthogonal matrix with g's singular vectors (U S' V^T, S' ~ 0.7-1.2):
    Muon's quintic Newton-Schulz iteration (coefficients 3.4445, -4.7750, 2.0315, Jordan et al.
    2024) on a stack of matrices g (n, A, B), in g's dtype."""
    a, b, c = 3.4445, -4.7750, 2.0315
    tall = g.shape[-2] > g.shape[-1]
    x = g.mT if tall else g  # (n, short, long): the Gram matrix is the small one
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)  # (aI + bG + cG^2) x
    return x.mT if tall else x


class Muon(torch.optim.Optimizer):
    """Muon (momentum orthogonalised by Newton-Schulz; Jordan et al. 2024) for the groups marked
    `muon`, AdamW for the others (embeddings, gains, biases), in one optimiser the engine steps,
    schedules and checkpoints like any other.

    A Muon group's learning rate is the scheduled lr times its `lr_ratio` (train.muon_lr /
    train.lr), scaled per matrix by sqrt(max(1, rows / cols)) as in the reference (torch.optim.Muon's
    "original"); its weight decay, if a group sets one, is decoupled, p *= 1 - lr * weight_decay
    (build_optimizer sets none, as the reference Muon). Momentum 0.95, Nesterov.
    Matrices of one shape are orthogonalised together (one batched matmul per iteration), in
    bfloat16 as the reference (`ns_bf16`), except on CPUs where bfloat16 matmuls are not faster:
    build_optimizer decides once and the group, saved in checkpoints, keeps the choice."""

    def __init__(self, groups: list[dict], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 weight_decay: float = 0.0, momentum: float = 0.95, ns_steps: int = 5, eps: float = 1e-8):
        # fused=True: load_state_dict then keeps AdamW's `step` on the parameters' device, as the fused kernel needs
        super().__init__(groups, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, momentum=momentum,
                                      ns_steps=ns_steps, eps=eps, muon=False, lr_ratio=1.0, ns_bf16=True, fused=True))

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            ps = [p for p in g["params"] if p.grad is not None]
            if ps:
                (self._muon if g["muon"] else self._adamw)(g, ps)

    def _adamw(self, g: dict, ps: list[torch.Tensor]) -> None:
        for p in ps:
            if not self.state[p]:  # step on the parameter's device, as torch's fused AdamW keeps it
                self.state[p] = {"step": torch.zeros((), dtype=torch.float32, device=p.device),
                                 "exp_avg": torch.zeros_like(p),
                                 "exp_avg_sq": torch.zeros_like(p)}
        st = [self.state[p] for p in ps]
        adamw(ps, [p.grad for p in ps], [s["exp_avg"] for s in st], [s["exp_avg_sq"] for s in st], [],
              [s["step"] for s in st], fused=True, amsgrad=False, beta1=g["betas"][0], beta2=g["betas"][1],
              lr=g["lr"], weight_decay=g["weight_decay"], eps=g["eps"], maximize=False)

    def _muon(self, g: dict, ps: list[torch.Tensor]) -> None:
        lr, mu = g["lr"] * g["lr_ratio"], g["momentum"]
        by_shape: dict[tuple, list[torch.Tensor]] = {}
        for p in ps:
            if "momentum_buffer" not in self.state[p]:
                self.state[p]["momentum_buffer"] = torch.zeros_like(p)
            by_shape.setdefault(tuple(p.shape), []).append(p)
        for shape, same in by_shape.items():
            bufs = [self.state[p]["momentum_buffer"] for p in same]
            grads = [p.grad for p in same]
            torch._foreach_lerp_(bufs, grads, 1 - mu)
            upd = torch.stack([gr.lerp(b, mu).flatten(1) for gr, b in zip(grads, bufs)])  # Nesterov, (n, A, B)
            dtype = torch.bfloat16 if g["ns_bf16"] else torch.float32
            upd = newton_schulz(upd.to(dtype), g["ns_steps"]).to(same[0].dtype)
            scale = lr * math.sqrt(max(1.0, upd.shape[1] / upd.shape[2]))
            if g["weight_decay"]:
                torch._foreach_mul_(same, 1 - lr * g["weight_decay"])
            torch._foreach_add_(same, [u.view(shape) for u in upd.unbind(0)], alpha=-scale)


def ema_decay_at(step: int, decay: float, warmup: float) -> float:
    """EMA decay at step t with the usual warmup, (1 + t) / (warmup + t), so early EMA weights are
    useful: the average then spans about the last t / (warmup - 1) steps, until `decay` caps it."""
    return min(decay, (1 + step) / (warmup + step))


class EMA:
    """An exponential moving average of a module's floating-point parameters and buffers."""

    def __init__(self, model: nn.Module, decay: float, warmup: float):
        self.decay, self.warmup = decay, warmup
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = ema_decay_at(step, self.decay, self.warmup)
        ema_p = [p for p in self.module.parameters()]
        cur_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, cur_p, 1.0 - d)
        for e, b in zip(self.module.buffers(), model.buffers()):
            e.copy_(b)
