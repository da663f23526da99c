"""Learning from another run: a new run that starts from a trained run's weights.

    genlab train PRESET --init-from RUN_DIR          # train.init_from: fine-tune, transfer
    --set train.freeze=[encoder]                      # parameter-name prefixes kept fixed
    --set train.lora_rank=8                           # low-rank adapters only (genlab.finetune.lora)

`prepare` runs between building the model and training it (genlab.engine.run) and
  - loads every tensor of the source's weights (its EMA weights when it kept them) whose name
    and shape match; class-indexed rows (embeddings, class heads) are copied into a model with
    more classes, the new rows keep their initialisation; the rest is reported;
  - writes that report, with the source's path, checkpoint and sha256, to the run's `init.json`;
  - adds LoRA adapters and freezes what train.freeze names.
A LoRA run's checkpoints hold only what trains (adapters, new layers) and the buffers; loading it
(`genlab.load`) rebuilds the base from the exact source checkpoint init.json names, checks its
sha256, and merges the adapters in, so every command reads it as an ordinary run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from genlab.errors import CheckpointError, ConfigError
from genlab.finetune.lora import add_lora, is_adapter_key, merge_lora

log = logging.getLogger("genlab")

INIT_FILE = "init.json"


def prepare(model: nn.Module, cfg, run_dir: Path, *, resuming: bool, write: bool = True) -> dict | None:
    """Initialise, adapt and freeze `model` as cfg.train says (see the module docstring);
    returns the init report (None when the run has no train.init_from). A resumed run reloads
    the base only when its checkpoints do not hold the whole model (LoRA)."""
    t = cfg.train
    report = None
    if t.init_from and (not resuming or t.lora_rank):
        pinned = read_init(run_dir) if resuming else None
        if resuming and pinned is None:
            raise CheckpointError(f"{run_dir}/{INIT_FILE} is missing or corrupt: the LoRA run cannot find its base "
                                  "weights; the run directory is damaged")
        report = init_from(model, t.init_from, cfg, pinned=pinned["source"] if pinned else None)
        if write and not resuming:
            from genlab.engine.checkpoint import atomic_write_json

            atomic_write_json(Path(run_dir) / INIT_FILE, report)
    if t.lora_rank:
        wrapped = add_lora(model, t.lora_rank, t.lora_alpha, t.lora_layers)
        if report is not None:  # tensors that did not come from the base train beside the adapters
            fresh = set(report["new"]) | {k for k, *_ in report["grown"]} | {k for k, *_ in report["mismatched"]}
            model.not_from_base = {n for n in model.state_dict() if unwrapped(n) in fresh}  # saved by checkpoints
            for name, p in model.named_parameters():
                if name in model.not_from_base:
                    p.requires_grad_(True)
        log.info("LoRA rank %d on %d layers: %s trainable of %s parameters", t.lora_rank, len(wrapped),
                 f"{count(model, trainable=True):,}", f"{count(model):,}")
    if t.freeze:
        apply_freeze(model, t.freeze)
    return report


def unwrapped(name: str) -> str:
    """A parameter's name in the model without adapters (`fc.base.weight` -> `fc.weight`)."""
    return name.replace(".base.", ".")


def count(model: nn.Module, trainable: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


def source_weights(source: str, pinned: dict | None = None):
    """(state dict, record) of the run `source` (a run directory or demo:NAME): its EMA weights
    when it kept them. `pinned`: the record of an earlier load; that exact checkpoint is read and
    its sha256 checked."""
    from genlab.engine.run import load

    checkpoint = pinned["checkpoint"] if pinned else "last"
    where = pinned["run"] if pinned else source
    try:
        run = load(where, checkpoint=checkpoint)
    except (CheckpointError, ConfigError) as e:
        if pinned:
            raise CheckpointError(f"the base run of this fine-tuned run, {where} ({checkpoint}), cannot be read: {e}; "
                                  "restore it there") from None
        raise ConfigError(f"train.init_from={source}: {e}") from None
    c = run.checkpoint
    if pinned and c.state.get("sha256") != pinned.get("sha256"):
        raise CheckpointError(f"the base run {where} changed: its checkpoint {checkpoint} is not the one this run was "
                              "fine-tuned from (sha256 differs); restore that checkpoint")
    if c.state.get("compression", {}).get("method") == "quantize":
        raise ConfigError(f"train.init_from={source} holds quantised weights; start from its source run instead")
    record = {"run": str(source) if str(where).startswith("demo:") else str(run.run_dir.resolve()),
              "checkpoint": c.name, "step": run.step, "sha256": c.state.get("sha256"),
              "weights": "ema" if any(k.startswith("ema.") for k in c.tensors) else "model",
              "model": run.cfg.model_name, "num_classes": getattr(run.cfg.model, "num_classes", None)}
    return run.model.state_dict(), record


def init_from(model: nn.Module, source: str, cfg, pinned: dict | None = None) -> dict:
    """Load the matching tensors of run `source` into `model` (in place) and report what was
    loaded, grown for new classes, left new, mismatched, or unused."""
    sd, record = source_weights(source, pinned)
    report = load_matching(model, sd, record["num_classes"], getattr(cfg.model, "num_classes", None))
    if not report["loaded"] and not report["grown"]:
        raise ConfigError(f"train.init_from={source}: none of its tensors fits this model (it is a {record['model']} "
                          f"run, this is {cfg.model_name}); start from a run of the same model")
    report = {"source": record, **report}
    n_all = len(model.state_dict())
    log.info("init from %s (%s, %s weights): %d of %d tensors loaded%s%s%s", record["run"], record["checkpoint"],
             record["weights"], len(report["loaded"]), n_all,
             f", {len(report['grown'])} grown for new classes" if report["grown"] else "",
             f", {len(report['new'])} new (initialised): {', '.join(report['new'][:4])}" if report["new"] else "",
             f", {len(report['mismatched'])} of another shape (initialised): "
             f"{', '.join(m[0] for m in report['mismatched'][:4])}" if report["mismatched"] else "")
    return report


@torch.no_grad()
def load_matching(model: nn.Module, sd: dict[str, torch.Tensor], src_classes: int | None,
                  new_classes: int | None) -> dict:
    """Copy every tensor of `sd` whose name and shape match into `model`; a tensor indexed by
    class (see `_grow_classes`) goes into a model with more classes slice by slice. Returns
    {loaded, grown: [(name, source shape)], new, mismatched: [(name, source shape, shape)], unused}."""
    own = model.state_dict()
    out: dict[str, list] = {"loaded": [], "grown": [], "new": [], "mismatched": [], "unused": []}
    for k, v in own.items():
        s = sd.get(k)
        if s is None:
            out["new"].append(k)
        elif s.shape == v.shape:
            v.copy_(s)
            out["loaded"].append(k)
        elif _grow_classes(v, s, src_classes, new_classes):
            out["grown"].append((k, list(s.shape)))
        else:
            out["mismatched"].append((k, list(s.shape), list(v.shape)))
    out["unused"] = [k for k in sd if k not in own]
    return out


def _grow_classes(v: torch.Tensor, s: torch.Tensor, src: int | None, new: int | None) -> bool:
    """Copy `s` into the leading slice of `v` when they differ in one dimension by the number of
    added classes (class rows of an embedding or head, one-hot columns of a layer's input; the
    new classes come last); an embedding's trailing "no class" row (s has src + 1 rows) goes to
    v's last row. The same classes and one row more in v: a model that adds the "no class" row
    (trained for guidance from one without it) keeps the class rows. False when `s` is not
    class-indexed so."""
    if src and new == src and v.dim() == s.dim() == 2 and v.shape[1:] == s.shape[1:] \
            and s.shape[0] == src and v.shape[0] == src + 1:
        v[:src] = s
        return True
    if not (src and new and new > src and v.dim() == s.dim()):
        return False
    diff = [d for d in range(v.dim()) if v.shape[d] != s.shape[d]]
    if len(diff) != 1 or v.shape[diff[0]] - s.shape[diff[0]] != new - src:
        return False
    d = diff[0]
    if d == 0 and s.shape[0] == src + 1:  # classes, then the "no class" row
        v[:src] = s[:src]
        v[-1] = s[-1]
    else:
        v.narrow(d, 0, s.shape[d]).copy_(s)
    return True


def apply_freeze(model: nn.Module, prefixes: tuple[str, ...]) -> int:
    """Fix the parameters whose names start with one of `prefixes` (whole name parts); returns
    how many tensors were frozen."""
    names = [n for n, _ in model.named_parameters()]
    frozen = 0
    for prefix in prefixes:
        hit = [n for n in names if n == prefix or n.startswith(prefix + ".")
               or unwrapped(n) == prefix or unwrapped(n).startswith(prefix + ".")]
        if not hit:
            tops = sorted({n.split(".")[0] for n in names})
            raise ConfigError(f"train.freeze: no parameter of this model is under {prefix!r}; its parts are "
                              f"{', '.join(tops)}")
        for n, p in model.named_parameters():
            if n in hit:
                p.requires_grad_(False)
        frozen += len(hit)
    return frozen


def checkpoint_keys(model: nn.Module) -> set[str] | None:
    """The state-dict keys a checkpoint of `model` holds: None (all) for an ordinary model; for
    a model with LoRA adapters what trains and the buffers, not the frozen base."""
    params = dict(model.named_parameters())
    if not any(is_adapter_key(n) for n in params):
        return None
    keep = ({n for n, p in params.items() if p.requires_grad} | {n for n, _ in model.named_buffers()}
            | getattr(model, "not_from_base", set()))
    return {k for k in model.state_dict() if k in keep}


def read_init(run_dir: Path) -> dict | None:
    try:
        rec = json.loads((Path(run_dir) / INIT_FILE).read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(rec, dict) and isinstance(rec.get("source"), dict) and all(
        isinstance(rec["source"].get(k), str) for k in ("run", "checkpoint"))
    return rec if ok else None


def load_adapted(model: nn.Module, cfg, run_dir: Path, sd: dict[str, torch.Tensor]) -> nn.Module:
    """A LoRA run's model for use: the pinned base, the adapters of `sd`, merged (in place)."""
    prepare(model, cfg, run_dir, resuming=True, write=False)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    expected = checkpoint_keys(model) or set()
    absent = [k for k in expected if k not in sd]
    if unexpected or absent:
        raise CheckpointError(f"the adapter checkpoint of {run_dir} does not fit its config "
                              f"({(unexpected or absent)[0]})")
    return merge_lora(model)


def merge_run(source):
    """`genlab compress RUN --method merge`: the LoRA run `source` (a loaded Run, adapters already
    merged by loading) as a standalone run: full weights, train.lora_rank 0, the base recorded."""
    import dataclasses

    from genlab.compress.newrun import Compressed

    cfg = source.cfg
    if not cfg.train.lora_rank:
        raise ConfigError(f"{source.run_dir} has no LoRA adapters to merge (train.lora_rank is 0); it is standalone")
    base = (read_init(source.run_dir) or {}).get("source", {})
    plain = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lora_rank=0))
    tensors = {f"model.{k}": v for k, v in source.model.state_dict().items()}
    return Compressed(tensors, {"method": "merge", "base": base, "lora_rank": cfg.train.lora_rank}, config=plain)
