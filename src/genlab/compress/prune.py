"""Pruning of a trained run, with optional fine-tuning by the engine.

- unstructured (`structured=False`): the smallest |w| of each layer (`scope="layer"`,
  torch.nn.utils.prune.l1_unstructured) or of all layers together (`scope="global"`,
  global_unstructured) are set to zero, `amount` of them.
- structured, in place (`structured=True`): whole output channels (rows of a Linear, filters of
  a conv) with the smallest L2 norm are zeroed, per layer (ln_structured, n=2, dim=output
  channels). Works on any Conv/Linear model.
- structured, shrunk (`structured="shrink"`, shrink.py): whole attention heads, MLP units and
  generator/decoder channels are removed and the layers rebuilt narrower (gpt, gan, vae runs);
  the new run's config describes the narrower model.

Honest speed: the zeroing kinds keep dense float tensors, so they are neither faster nor
smaller in memory; their zeros only pay off with a sparse format or compression of the file
(quantise a pruned run to shrink it on disk). The shrunk kind is smaller and faster for real.

The pruned weights are zeros in the checkpoint, so the masks are the zeros themselves: loading
needs nothing special, and `finetune` rebuilds the masks from the zeros and re-applies them
after every optimiser step (the KeepPruned trainer callback), so that the sparsity survives
fine-tuning, checkpoints and `finetune` resumed after an interruption. Tied weights (an LSTM
head tied to its embedding) are not pruned.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune as tprune

from genlab.compress.newrun import Compressed, read_record
from genlab.compress.shrink import shrink_run
from genlab.engine import checkpoint as ckpt
from genlab.errors import ConfigError
from genlab.options import check_number

PRUNABLE = (nn.Linear, nn.modules.conv._ConvNd)
SCOPES = ("layer", "global")


def prunable(model: nn.Module) -> dict[str, nn.Module]:
    """Modules whose `weight` pruning covers, by name (Conv/Linear, weight not tied)."""
    from genlab.compress.quantize import _tied

    tied = _tied(model)
    return {name: m for name, m in model.named_modules()
            if isinstance(m, PRUNABLE) and f"{name}.weight" not in tied
            and isinstance(m._parameters.get("weight"), nn.Parameter)}  # not parametrised (spectral norm)


def sparsity(model: nn.Module, keys: list[str] | None = None) -> float:
    """Fraction of zeros over the prunable weights of `model` (or over the state-dict `keys`)."""
    sd = model.state_dict()
    keys = keys if keys is not None else [f"{n}.weight" for n in prunable(model)]
    zeros = sum(int((sd[k] == 0).sum()) for k in keys)
    return zeros / max(1, sum(sd[k].numel() for k in keys))


def _as_bool(name: str, v: bool | str) -> bool:
    if isinstance(v, bool):
        return v
    if str(v).lower() in ("true", "1", "yes"):
        return True
    if str(v).lower() in ("false", "0", "no"):
        return False
    raise ConfigError(f"--{name} must be true or false, got {v!r}")


def _structured(v: bool | str) -> bool | str:
    """--structured: False, True (zero channels in place) or "shrink" (rebuild narrower)."""
    if isinstance(v, str) and v.lower() == "shrink":
        return "shrink"
    try:
        return _as_bool("structured", v)
    except ConfigError:
        raise ConfigError(f"--structured must be true or false (or shrink: remove whole units, rebuilding the "
                          f"layers narrower), got {v!r}") from None


def masks_for(model: nn.Module, amount: float, structured: bool, scope: str) -> dict[str, torch.Tensor]:
    """Pruning masks (1 keep, 0 pruned) for `model`'s prunable weights, by state-dict key; the
    model itself is left unchanged."""
    model = copy.deepcopy(model)  # torch's pruning views weights flat: work on a contiguous copy
    for p in model.parameters():  # (the UNet keeps its conv weights channels-last)
        p.data = p.data.contiguous()
    targets = prunable(model)
    if not targets:
        raise ConfigError(f"{type(model).__name__} has no Conv/Linear weights to prune")
    if scope == "global":
        tprune.global_unstructured([(m, "weight") for m in targets.values()], tprune.L1Unstructured, amount=amount)
    for n, m in targets.items():
        if structured:  # output channels: dim 1 of a transposed conv's weight, dim 0 otherwise
            dim = 1 if isinstance(m, nn.modules.conv._ConvTransposeNd) else 0
            tprune.ln_structured(m, "weight", amount, n=2, dim=dim)
        elif scope == "layer":
            tprune.l1_unstructured(m, "weight", amount)
    return {f"{n}.weight": m.weight_mask.detach().clone() for n, m in targets.items()}


def prune_run(source, amount: float = 0.5, structured: bool | str = False, scope: str = "layer",
              finetune_steps: int = 0, data_root: str | os.PathLike | None = None) -> Compressed:
    """Prune the run's weights to `amount` sparsity (the masks are computed on the weights it
    samples with, EMA when kept, and applied to both the model and EMA weights).

    Args:
        source: the loaded run (genlab.engine.run.Run).
        amount: the fraction of the prunable weights set to zero, in (0, 1).
        structured: zero whole output channels instead of single weights (True), or remove
            whole heads / units / channels and rebuild the model narrower ("shrink"; gpt, gan
            and vae runs: `amount` is then the fraction of each layer's units removed).
        scope: "layer" (amount per layer) or "global" (over all layers; unstructured only).
        finetune_steps: train this many more steps with the masks kept (0: none).
        data_root: where the run's data is, for fine-tuning (default: as the run recorded).
    Returns:
        the new run's tensors (model, EMA and optimiser state: the run can be trained on) and record.
    """
    check_number("--amount", amount, lo=0, hi=1, lo_open=True)
    if amount >= 1:
        raise ConfigError(f"--amount must be below 1 (the fraction of weights set to zero), got {amount}")
    structured = _structured(structured)
    check_number("--finetune-steps", finetune_steps, lo=0, integer=True)
    if scope not in SCOPES:
        raise ConfigError(f"--scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    if structured and scope == "global":
        raise ConfigError("structured pruning is per layer; drop --scope global or --structured true")
    c = source.checkpoint
    if (c.state.get("compression") or {}).get("method") == "quantize":
        raise ConfigError(f"{source.run_dir} is quantised; prune its float source run, then quantise")
    after = (lambda out: finetune(out, finetune_steps, data_root=data_root)) if finetune_steps else None
    options = {"amount": amount, "structured": structured, "scope": scope, "finetune_steps": finetune_steps}
    if structured == "shrink":  # fresh optimiser state for the new shapes: any run can be fine-tuned
        return dataclasses.replace(shrink_run(source, amount, options, data_root), after=after)
    if "optimizers" not in c.state and finetune_steps:
        raise ConfigError(f"{source.run_dir} has no optimiser state to fine-tune from (a demo or compressed run); "
                          "use --finetune-steps 0")
    masks = masks_for(source.model.cpu().eval(), float(amount), structured, scope)
    tensors = {}
    for k, v in c.tensors.items():
        head, _, rest = k.partition(".")
        mask = masks.get(rest) if head in ("model", "ema") else None
        tensors[k] = v * mask.to(v.dtype) if mask is not None else v
    for k, m in masks.items():
        source.model.state_dict()[k].mul_(m)
    record = {"method": "prune", "options": options,
              "targets": sorted(masks), "sparsity": sparsity(source.model, sorted(masks)),
              "finetuned_steps": 0,
              "speed": "unchanged: the pruned weights are dense float tensors with zeros"}
    return Compressed(tensors, record, optimizers=c.state.get("optimizers"), after=after)


class KeepPruned:
    """Trainer callback (`genlab.engine.run.train(..., callbacks=[KeepPruned(masks)])`): after
    every optimiser step, multiply the pruned weights of the model and its EMA by their masks,
    so that they stay zero; the checkpoints written after it hold the zeros."""

    def __init__(self, masks: dict[str, torch.Tensor]):
        self.masks = masks

    def __call__(self, trainer) -> None:
        nets = [trainer.model] + ([trainer.ema.module] if trainer.ema else [])
        with torch.no_grad():
            for net in nets:
                sd = net.state_dict()
                for k, mask in self.masks.items():
                    sd[k].mul_(mask.to(sd[k].device, sd[k].dtype))


def finetune(run_dir: str | os.PathLike, steps: int, *, data_root: str | os.PathLike | None = None,
             callbacks: list | None = None):
    """Train a pruned run `steps` more steps with the engine (`train(resume=run_dir)`), keeping
    its zeros; the masks are the zeros of its newest checkpoint, so this also continues an
    interrupted fine-tuning (a shrunk run has no zeros to keep: it simply trains on). Returns
    the engine's TrainResult."""
    from genlab.engine.run import train

    check_number("--finetune-steps", steps, lo=1, integer=True)
    run_dir = Path(run_dir)
    rec = read_record(run_dir)
    if not rec or rec.get("method") != "prune":
        raise ConfigError(f"{run_dir} is not a pruned run (no compression.json with method prune)")
    c = ckpt.latest_valid(run_dir / "checkpoints")
    if c is None:
        raise ConfigError(f"{run_dir} has no valid checkpoint to fine-tune")
    masks = {k: c.tensors[f"model.{k}"] != 0 for k in rec["targets"]}
    res = train(resume=run_dir, steps=c.state["state"]["step"] + steps,
                data_root=str(data_root) if data_root else None,
                callbacks=[KeepPruned(masks), *(callbacks or [])])
    rec = read_record(run_dir)
    rec["finetuned_steps"] = rec.get("finetuned_steps", 0) + res.state.step - c.state["state"]["step"]
    ckpt.atomic_write_json(run_dir / "compression.json", rec)
    return res
