"""Structured pruning that really shrinks a model (`genlab compress RUN --method prune
--structured shrink`): whole attention heads, MLP hidden units or channels are removed and the
layers rebuilt narrower, so the new run holds fewer parameters and computes less.

The units of one layer are a UnitGroup: where they are written (the rows of the layer making
them, its bias, the BatchNorm entries after it) and where they are read (the input columns or
channels of the next layer). Removing a unit drops all of these; the narrower model computes
exactly what the original computes with the unit's read columns zeroed (`zero_units`), since
nothing else sees the unit.

Which units go: each unit's importance is the mean |activation| the next layer reads from it,
over a few batches of the generation path's inputs, times the L2 norm of the weights reading
it: the size of what it adds. The inputs: training windows for a GPT, prior draws z for a GAN
generator or VAE decoder. Every group loses the same fraction `amount` (rounded, one unit
kept at least), so the new model is described by its config alone:

    gpt  heads and MLP units of every block: model.n_head (head_size kept), model.mlp_hidden
    gan  the generator's hidden channels (dcgan) or units (mlp): model.g_widths
    vae  the decoder's hidden units and channels: model.dec_widths

and every command loads the new run like any other. The discriminator and encoder are left
whole (sampling does not run them). Fine-tuning (prune.finetune) starts fresh optimiser
moments: the source's belong to the removed shapes.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from genlab.compress.newrun import Compressed
from genlab.engine import checkpoint as ckpt
from genlab.engine.optim import build_optimizer, muon_matrices
from genlab.errors import ConfigError, ShapeError

PRODUCERS = (nn.Linear, nn.modules.conv._ConvNd)
# modules between two layers that act on each unit alone (and BatchNorm / Unflatten, handled below)
ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.Dropout)


@dataclass(frozen=True)
class Cut:
    """Where a layer's units sit in a state-dict tensor: dimension `dim` of `key`, viewed as
    (outer, units, inner): `inner` consecutive entries per unit (a head's hs rows, a channel's
    h*w features of the Linear before an Unflatten), repeated `outer` times (q, k and v of a
    fused projection)."""

    key: str
    dim: int
    inner: int = 1


@dataclass
class UnitGroup:
    """One layer's `size` prunable units: the tensors writing them, and the weight reading them
    (the next layer's, whose input is what the importance measures)."""

    name: str
    size: int
    write: list[Cut]
    read: Cut

    @property
    def reader(self) -> str:
        """The module name of the layer reading the units."""
        return self.read.key.rsplit(".", 1)[0]


# --------------------------------------------------------------------------- tensors (pure)


def _unit_shape(t: torch.Tensor, cut: Cut, size: int) -> list[int]:
    """t's shape with dimension cut.dim split into (outer, size, inner)."""
    n = t.shape[cut.dim]
    if n % (size * cut.inner):
        raise ShapeError(f"{cut.key}: dimension {cut.dim} of size {n} does not hold {size} units of {cut.inner}")
    d = cut.dim % t.dim()
    return [*t.shape[:d], n // (size * cut.inner), size, cut.inner, *t.shape[d + 1:]]


def take_units(t: torch.Tensor, cut: Cut, size: int, keep: torch.Tensor) -> torch.Tensor:
    """The entries of the units `keep` (sorted indices into `size`) of tensor t."""
    shape = _unit_shape(t, cut, size)
    d = cut.dim % t.dim()
    out = t.reshape(shape).index_select(d + 1, keep)
    return out.reshape(*t.shape[:d], -1, *t.shape[d + 1:]).contiguous()


def unit_norms(t: torch.Tensor, cut: Cut, size: int) -> torch.Tensor:
    """The L2 norm of each unit's entries in t, (size,)."""
    d = cut.dim % t.dim()
    v = t.detach().float().reshape(_unit_shape(t, cut, size)).movedim(d + 1, 0)  # (size, ...)
    return v.reshape(size, -1).norm(dim=1)


@torch.no_grad()
def zero_units(model: nn.Module, groups: list[UnitGroup], removed: dict[str, torch.Tensor]) -> None:
    """Zero, in place, the weights reading the units `removed[group name]`: the dense
    equivalent of removing them."""
    sd = model.state_dict()
    for g in groups:
        t = sd[g.read.key]
        mask = torch.ones(g.size, dtype=t.dtype)
        mask[removed[g.name]] = 0
        shape = [1] * (len(_unit_shape(t, g.read, g.size)))
        shape[g.read.dim % t.dim() + 1] = g.size
        t.mul_(mask.view(shape).expand(_unit_shape(t, g.read, g.size)).reshape(t.shape))


# --------------------------------------------------------------------------- the units of a model


def _in_out_dims(m: nn.Module) -> tuple[int, int]:
    """Dimensions of m's weight holding its input and output channels."""
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        return 0, 1  # (in, out, k, k)
    return 1, 0  # Linear (out, in), Conv (out, in, k, k)


def chain_groups(net: nn.Sequential, prefix: str) -> list[UnitGroup]:
    """The hidden units of a feed-forward Sequential: Linear / Conv / ConvTranspose layers with
    BatchNorms, Unflattens and elementwise activations between them. One group per layer but the
    last (its outputs are the network's output), in order.

    Args:
        net: the Sequential.
        prefix: its name in the model's state dict (e.g. "generator.net").
    Returns:
        the groups; each layer's output units, read by the next layer's input channels.
    """
    groups, open_ = [], None  # open_: the group whose units flow to the next layer
    for i, m in enumerate(net):
        name = f"{prefix}.{i}"
        if isinstance(m, PRODUCERS):
            if getattr(m, "groups", 1) != 1:
                raise ConfigError(f"cannot shrink {name}: grouped convolutions are not supported")
            d_in, d_out = _in_out_dims(m)
            if open_ is not None:
                groups.append(dataclasses.replace(open_, read=Cut(f"{name}.weight", d_in)))
            size = m.weight.shape[d_out]
            write = [Cut(f"{name}.weight", d_out)] + ([Cut(f"{name}.bias", 0)] if m.bias is not None else [])
            open_ = UnitGroup(name, size, write, Cut("", 0))
        elif open_ is None:
            continue  # before the first layer
        elif isinstance(m, nn.Unflatten):  # (B, F) features -> (B, ch, h, w): a channel is h*w features
            ch, *rest = m.unflattened_size
            open_ = dataclasses.replace(open_, size=ch, write=[Cut(c.key, c.dim, c.inner * math.prod(rest))
                                                               for c in open_.write])
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            open_.write += [Cut(f"{name}.{k}", 0) for k in m.state_dict() if k != "num_batches_tracked"]
        elif not isinstance(m, ELEMENTWISE):
            raise ConfigError(f"cannot shrink {name}: {type(m).__name__} between layers is not supported")
    return groups


def gpt_groups(model: nn.Module) -> list[UnitGroup]:
    """Per block, the attention heads (q, k, v rows and c_proj columns, head_dim each) and the
    MLP hidden units (c_fc rows, c_proj columns)."""
    cfg, sd = model.cfg, model.state_dict()
    hs, out = cfg.head_dim, []
    for i in range(cfg.n_layer):
        a, m = f"blocks.{i}.attn", f"blocks.{i}.mlp"
        heads = [Cut(f"{a}.c_attn.weight", 0, hs), Cut(f"{a}.c_attn.bias", 0, hs)]
        units = [Cut(f"{m}.c_fc.weight", 0), Cut(f"{m}.c_fc.bias", 0)]
        out += [UnitGroup(f"{a}.heads", cfg.n_head, [c for c in heads if c.key in sd], Cut(f"{a}.c_proj.weight", 1, hs)),
                UnitGroup(f"{m}.units", cfg.mlp_dim, [c for c in units if c.key in sd], Cut(f"{m}.c_proj.weight", 1))]
    return out


# --------------------------------------------------------------------------- families


def _gpt_inputs(source, data_root, g: torch.Generator) -> None:
    """Two batches of 32 training windows through the GPT."""
    data = source.data(data_root)
    for _ in range(2):
        source.model(data.random_batch("train", 32, generator=g)["x"])


def _latent_inputs(source, data_root, g: torch.Generator) -> None:
    """256 prior draws z (balanced labels when conditional) through the generator / decoder."""
    model, n = source.model, 256
    z = torch.randn(n, *model.latent_shape(), generator=g)
    labels = torch.arange(n) % model.num_classes if model.conditional else None
    model.decode_latent(z, labels)


def _gpt_narrower(cfg, groups: list[UnitGroup]):
    heads = {g.size for g in groups if g.name.endswith(".heads")}
    units = {g.size for g in groups if g.name.endswith(".units")}
    if len(heads) != 1 or len(units) != 1:
        raise ShapeError(f"a GPT's blocks must keep equal widths, got heads {sorted(heads)}, units {sorted(units)}")
    return dataclasses.replace(cfg, n_head=heads.pop(), head_size=cfg.head_dim, mlp_hidden=units.pop())


@dataclass(frozen=True)
class Family:
    """How one model family is shrunk: its unit groups, the inputs its importance is measured
    on, and the config of the narrower model (from the groups' new sizes)."""

    groups: Callable[[nn.Module], list[UnitGroup]]
    inputs: Callable[..., None]
    narrower: Callable[..., object]
    what: str  # for the record


FAMILIES: dict[str, Family] = {
    "gpt": Family(gpt_groups, _gpt_inputs, _gpt_narrower, "attention heads and MLP units of every block"),
    "gan": Family(lambda m: chain_groups(m.generator.net, "generator.net"), _latent_inputs,
                  lambda cfg, gs: dataclasses.replace(cfg, g_widths=tuple(g.size for g in gs)),
                  "the generator's hidden channels / units"),
    "vae": Family(lambda m: chain_groups(m.decoder.net, "decoder.net"), _latent_inputs,
                  lambda cfg, gs: dataclasses.replace(cfg, dec_widths=tuple(g.size for g in gs)),
                  "the decoder's hidden units / channels"),
}


@torch.no_grad()
def importance(model: nn.Module, groups: list[UnitGroup], run_inputs: Callable[[], None]) -> dict[str, torch.Tensor]:
    """Each unit's mean |activation| as its reader sees it (over what `run_inputs` feeds the
    model) times the L2 norm of the reader's weights on it: {group name: (size,)}."""
    sums = {g.name: torch.zeros(g.size, dtype=torch.float64) for g in groups}
    rows = dict.fromkeys(sums, 0)
    hooks = []
    for g in groups:
        reader = model.get_submodule(g.reader)
        unit_dim = 1 if isinstance(reader, nn.modules.conv._ConvNd) else -1  # conv: channels; Linear: features

        def hook(_m, args, g=g, unit_dim=unit_dim):
            a = args[0].detach().abs().movedim(unit_dim, -1).reshape(-1, g.size, g.read.inner)  # (N, size, inner)
            sums[g.name] += a.double().mean(2).sum(0)
            rows[g.name] += a.shape[0]

        hooks.append(reader.register_forward_pre_hook(hook))
    try:
        run_inputs()
    finally:
        for h in hooks:
            h.remove()
    sd = model.state_dict()
    return {g.name: (sums[g.name] / max(1, rows[g.name])).float() * unit_norms(sd[g.read.key], g.read, g.size)
            for g in groups}


def keep_units(scores: dict[str, torch.Tensor], amount: float) -> dict[str, torch.Tensor]:
    """The sorted indices of the units kept in each group: all but the round(amount * size) of
    lowest score (one kept at least)."""
    out = {}
    for name, s in scores.items():
        n = len(s)
        drop = min(n - 1, int(amount * n + 0.5))
        out[name] = torch.topk(s, n - drop).indices.sort().values
    return out


def shrink_state(sd: dict[str, torch.Tensor], groups: list[UnitGroup], keep: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict of the narrower model: every cut tensor keeps only the kept units' entries
    (a tensor cut by two groups, a layer's input and output channels, is cut along both)."""
    out = dict(sd)
    for g in groups:
        for c in [*g.write, g.read]:
            out[c.key] = take_units(out[c.key], c, g.size, keep[g.name])
    return out


def _fresh_optimizers(model: nn.Module, train_cfg) -> tuple[dict[str, torch.Tensor], dict]:
    """Empty optimiser states for `model` (moments start at zero), as a checkpoint holds them."""
    tensors, meta = {}, {}
    for name, params in model.optimizers().items():
        opt = build_optimizer(params, train_cfg, muon_matrices(model))
        t, meta[name] = ckpt.optimizer_to_flat(opt, f"optim.{name}")
        tensors.update(t)
    return tensors, meta


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def shrink_run(source, amount: float, options: dict, data_root: str | os.PathLike | None = None) -> Compressed:
    """Remove the `amount` fraction of least important units of every group of the run's model
    (computed on the weights it samples with, EMA when kept) and rebuild it narrower.

    Args:
        source: the loaded run (genlab.engine.run.Run).
        amount: the fraction of each layer's heads / units / channels removed, in (0, 1).
        options: the prune options to record.
        data_root: where the run's data is (a GPT's importance is measured on training windows).
    Returns:
        the new run's config, tensors (model and EMA; fresh optimiser state) and record.
    """
    from genlab.engine.run import build_model

    name = source.cfg.model_name
    family = FAMILIES.get(name)
    if family is None:
        raise ConfigError(f"--structured shrink supports {', '.join(FAMILIES)} runs, not {name}; "
                          "use --structured true to zero channels in place")
    model = source.model.cpu().eval()
    groups = family.groups(model)
    if not groups:
        raise ConfigError(f"{source.run_dir} has no hidden layer to shrink")
    g = torch.Generator().manual_seed(0)
    scores = importance(model, groups, lambda: family.inputs(source, data_root, g))
    keep = keep_units(scores, float(amount))
    narrow = [dataclasses.replace(gr, size=len(keep[gr.name])) for gr in groups]
    cfg = dataclasses.replace(source.cfg, model=family.narrower(source.cfg.model, narrow))
    new_model = build_model(cfg)

    tensors = {}
    for head in ("model", "ema"):
        sd = {k[len(head) + 1:]: v for k, v in source.checkpoint.tensors.items() if k.startswith(f"{head}.")}
        if sd:
            tensors |= {f"{head}.{k}": v for k, v in shrink_state(sd, groups, keep).items()}
    if not any(k.startswith("model.") for k in tensors):  # a shipped demo keeps its EMA weights only
        tensors |= {"model." + k[4:]: v.clone() for k, v in tensors.items() if k.startswith("ema.")}
    new_model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})  # the shapes fit
    optim, optimizers = _fresh_optimizers(new_model, cfg.train)
    tensors |= optim
    before, after = _n_params(model), _n_params(new_model)
    removed = {gr.name: sorted(set(range(gr.size)) - set(keep[gr.name].tolist())) for gr in groups}
    record = {"method": "prune", "options": options, "targets": [], "finetuned_steps": 0,  # no zeros to keep
              "shrunk": family.what, "removed": removed,
              "widths": {gr.name: [gr.size, len(keep[gr.name])] for gr in groups},
              "params": {"before": before, "after": after},
              "speed": "faster: narrower dense layers (fewer parameters and multiply-adds)"}
    return Compressed(tensors, record, optimizers=optimizers, config=cfg)
