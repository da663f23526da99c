"""Low-rank adapters (LoRA, Hu et al. 2021) for genlab's linear and convolution layers.

A wrapped layer computes base(x) + scale * B(A(x)), scale = alpha / rank, with the base layer
frozen, A initialised like a layer (Kaiming uniform) and B at zero, so a freshly wrapped model
computes exactly what the base model does. Only A and B train. For a convolution, A is a
convolution with the base layer's kernel, stride, padding and dilation into `rank` channels
and B a 1x1 convolution back, so B·A is again a kernel of the base layer's shape and merging
is exact: W' = W + scale * B·A.

The `peft` library wraps the same layer types, but its adapters live in a model object of its
own; genlab's models, checkpoints and EMA are plain `nn.Module` state dicts, which these two
small classes keep (parameter names gain `.base.`, `.lora_A.`, `.lora_B.`).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from genlab.errors import ConfigError

LAYER_TYPES = {"linear": nn.Linear, "conv": nn.Conv2d}


class LoRALayer(nn.Module):
    """What both adapters share: the frozen base layer, A (rank x the base's inputs and kernel),
    B (the base's outputs x rank) at zero, and the adapted weight W + scale * B·A."""

    def __init__(self, base: nn.Module, rank: int, alpha: float, a_shape: tuple[int, ...], b_shape: tuple[int, ...]):
        super().__init__()
        self.base, self.rank, self.scale = base.requires_grad_(False), rank, alpha / rank
        p = base.weight
        self.lora_A = nn.Parameter(torch.empty(a_shape, device=p.device, dtype=p.dtype))
        self.lora_B = nn.Parameter(torch.zeros(b_shape, device=p.device, dtype=p.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def delta(self) -> torch.Tensor:
        """scale * B·A in the base weight's shape, the change of the base weight."""
        return self.scale * (self.lora_B.flatten(1) @ self.lora_A.flatten(1)).view_as(self.base.weight)

    @property
    def weight(self) -> torch.Tensor:  # the adapted weight, for code that reads a layer's weight directly
        return self.base.weight + self.delta()

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias


class LoRALinear(LoRALayer):
    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__(base, rank, alpha, (rank, base.in_features), (base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * F.linear(F.linear(x, self.lora_A), self.lora_B)


class LoRAConv2d(LoRALayer):
    def __init__(self, base: nn.Conv2d, rank: int, alpha: float):
        if base.groups != 1:
            raise ConfigError(f"LoRA wraps ungrouped convolutions; this one has groups={base.groups}")
        super().__init__(base, rank, alpha, (rank, base.in_channels, *base.kernel_size), (base.out_channels, rank, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.base
        if c.padding_mode != "zeros":
            h = F.conv2d(F.pad(x, c._reversed_padding_repeated_twice, mode=c.padding_mode), self.lora_A, None,
                         c.stride, 0, c.dilation)
        else:
            h = F.conv2d(x, self.lora_A, None, c.stride, c.padding, c.dilation)
        return c(x) + self.scale * F.conv2d(h, self.lora_B)


ADAPTERS = {nn.Linear: LoRALinear, nn.Conv2d: LoRAConv2d}


def add_lora(model: nn.Module, rank: int, alpha: float | None = None,
             layers: tuple[str, ...] = ("linear", "conv")) -> list[str]:
    """Wrap every layer of the `layers` types (linear, conv) in place, freeze all other
    parameters, and return the wrapped layers' names. alpha defaults to rank (scale 1)."""
    if rank < 1:
        raise ConfigError(f"train.lora_rank must be >= 1, got {rank}")
    unknown = [t for t in layers if t not in LAYER_TYPES]
    if unknown or not layers:
        raise ConfigError(f"train.lora_layers must list linear and/or conv, got {list(layers)}")
    types = tuple(LAYER_TYPES[t] for t in layers)
    model.requires_grad_(False)
    uses: dict[int, int] = {}  # a weight tied to another module's (an LSTM's head and embedding) is left alone:
    for _, p in model.named_parameters(remove_duplicate=False):  # merging into it would change both
        uses[id(p)] = uses.get(id(p), 0) + 1
    targets = [(name, m) for name, m in model.named_modules()
               if type(m) in types and not isinstance(m, LoRALayer)
               and not name.endswith(".base") and uses[id(m.weight)] == 1
               and getattr(m, "groups", 1) == 1]  # grouped convolutions keep their base weights
    if not targets:
        raise ConfigError(f"this model has no {' or '.join(layers)} layer for LoRA; set train.lora_layers")
    for name, m in targets:
        parent, _, leaf = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, leaf, ADAPTERS[type(m)](m, rank, float(alpha if alpha is not None else rank)))
    return [name for name, _ in targets]


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base layer (W += scale * B·A) and put the plain layer back,
    in place: the model then has its original structure and parameter names."""
    wrapped = [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALayer)]
    for name, m in wrapped:
        m.base.weight += m.delta().to(m.base.weight.dtype)
        parent, _, leaf = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, leaf, m.base)
    return model


def is_adapter_key(key: str) -> bool:
    return ".lora_A" in key or ".lora_B" in key or key.startswith(("lora_A", "lora_B"))
