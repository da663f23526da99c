"""Write a compressed run: a NEW run directory made from an old one, atomically.

The new run holds the old run's config.yaml, data.json, manifest.json (and tokenizer.json for
text runs), one checkpoint `checkpoints/step-NNNNNNNN` with the compressed tensors, and
`compression.json` saying what was done, with which options, and from which run (its path, the
checkpoint used and that checkpoint's sha256). The checkpoint's JSON state carries the same
record under "compression": `Run.__init__` reads it there to rebuild the compressed modules.
The folder is built as a hidden temp folder beside `out` and renamed into place at the end, so
a kill leaves either no run or a complete one.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

import genlab
from genlab.config import RunConfig, save_config
from genlab.engine import checkpoint as ckpt
from genlab.errors import ConfigError
from genlab.options import check_run_dir_path

COPIED = ("config.yaml", "data.json", "manifest.json", "tokenizer.json")


@dataclass
class Compressed:
    """What a compression method returns: the new run's checkpoint tensors (keys "model.*",
    optionally "ema.*"/"optim.*"), the record of what was done, and optional extras."""

    tensors: dict[str, torch.Tensor]
    record: dict[str, Any]  # method, options and results (sparsity, sizes ...), JSON-able
    optimizers: dict | None = None  # the source's optimiser meta when "optim.*" tensors are kept
    config: RunConfig | None = None  # a different config for the new run (a distilled student)
    state: dict[str, Any] | None = None  # the new run's TrainState (a trained student); default: the source's
    after: Callable[[Path], None] | None = None  # run in the finished run (e.g. prune's fine-tuning)
    extra_files: dict[str, str] = field(default_factory=dict)  # name -> text written into the run


def check_out(out: str | Path) -> Path:
    """--out must be a new path: compressing never overwrites a run."""
    p = check_run_dir_path(out)
    if p.exists():
        raise ConfigError(f"--out {p} already exists; a compressed run is a new run directory: choose another --out")
    return p


def tensor_bytes(tensors: dict[str, torch.Tensor], prefix: str = "") -> int:
    return sum(t.numel() * t.element_size() for k, t in tensors.items() if k.startswith(prefix))


def write_run(source, out: Path, result: Compressed) -> Path:
    """Build the new run in a temp folder beside `out`, then rename it to `out`.

    Args:
        source: the loaded source run (genlab.engine.run.Run).
        out: the new run directory (must not exist).
        result: the method's Compressed.
    Returns:
        `out`.
    """
    out = check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    c = source.checkpoint
    src_file = ckpt.tensor_file(source.run_dir / "checkpoints", c.name)
    train_state = result.state if result.state is not None else c.state["state"]
    step = train_state["step"]
    name = f"step-{step:08d}"
    record = {
        **result.record,
        "source": {"run": str(Path(source.run_dir).resolve()), "checkpoint": c.name,
                   "sha256": c.state.get("sha256"), "checkpoint_bytes": src_file.stat().st_size},
        "genlab_version": genlab.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        for f in COPIED:
            if (source.run_dir / f).is_file():
                shutil.copy2(source.run_dir / f, tmp / f)
        if result.config is not None:
            save_config(result.config, tmp / "config.yaml")
        for f, text in result.extra_files.items():
            ckpt.atomic_write_text(tmp / f, text)
        state = {"state": {**train_state}, "config": (result.config or source.cfg).to_dict(),
                 "rng": c.state.get("rng"), "compression": record}
        if result.optimizers is not None:
            state["optimizers"] = result.optimizers
        folder = tmp / "checkpoints"
        folder.mkdir()
        ckpt.save_checkpoint(folder, name, result.tensors, state)
        record["checkpoint_bytes"] = ckpt.tensor_file(folder, name).stat().st_size
        ckpt.atomic_write_json(tmp / "compression.json", record)
        tmp.chmod(0o777 & ~ckpt._UMASK)  # mkdtemp makes 0700; a run folder has normal permissions
        if out.exists():  # created meanwhile by someone else
            raise ConfigError(f"--out {out} already exists; choose another --out")
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if result.after is not None:
        result.after(out)
    return out


def read_record(run_dir: str | Path) -> dict | None:
    """The compression.json of a run (None for a run that was not compressed)."""
    import json

    p = Path(run_dir) / "compression.json"
    return json.loads(p.read_text()) if p.is_file() else None
