"""Compressing and exporting trained runs: quantize.py, prune.py, distill.py, export.py (ONNX).

`compress(run_dir, method, out, **options)` writes a NEW run directory (newrun.py) that every
command loading runs accepts (sample, evaluate, apply, compare, serve: all go through
`genlab.engine.run.Run`, which calls `load_compressed` for a checkpoint whose JSON state records
a compression). A method is a function `(source: Run, **options) -> newrun.Compressed`; METHODS
maps the CLI's `--method` names to them.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import torch
from torch import nn

from genlab.compress import distill, prune, quantize
from genlab.compress.newrun import Compressed, check_out, read_record, write_run
from genlab.errors import ConfigError
from genlab.finetune import merge_run

METHODS = {
    "quantize": quantize.quantize_run,
    "prune": prune.prune_run,
    "distill": distill.distill_run,
    "merge": merge_run,  # a LoRA run's adapters folded into its base weights (genlab.finetune)
}

# How a recorded compression is rebuilt at load; methods not listed load as plain float weights.
LOADERS = {"quantize": quantize.load_quantized}


def compress(run_dir: str | os.PathLike, method: str, out: str | os.PathLike, **options) -> Path:
    """Compress a trained run into the new run directory `out`.

    Args:
        run_dir: the source run (its newest valid checkpoint is used; `checkpoint="best"` in
            options picks another, as `genlab.load` does).
        method: a key of METHODS ("quantize", "prune", ...).
        out: the new run directory; it must not exist.
        options: the method's keyword options (quantize: dtype, scheme; prune: amount,
            structured, scope, finetune_steps, data_root).
    Returns:
        the new run directory.
    """
    from genlab.engine.run import Run

    if method not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    fn = METHODS[method]
    checkpoint = options.pop("checkpoint", "last")
    try:
        inspect.signature(fn).bind(None, **options)
    except TypeError:
        takes = [p for p in inspect.signature(fn).parameters if p != "source"]
        bad = sorted(set(options) - set(takes))
        raise ConfigError(f"--method {method} does not take {', '.join(bad) or 'those options'} "
                          f"(it takes: {', '.join(takes)})") from None
    out = check_out(out)
    source = Run(run_dir, checkpoint)
    return write_run(source, out, fn(source, **options))


def load_compressed(model: nn.Module, sd: dict[str, torch.Tensor], record: dict, device: torch.device) -> None:
    """Load a compressed checkpoint's weights `sd` (prefix stripped) into the freshly built
    `model`, rebuilding quantised modules in place (called by `Run.__init__`)."""
    loader = LOADERS.get(record.get("method"))
    if loader is None:
        model.load_state_dict(sd)
    else:
        loader(model, sd, record, device)


__all__ = ["METHODS", "Compressed", "compress", "load_compressed", "read_record"]
