"""Run logs: JSONL (one record per line), TensorBoard scalars and a progress bar on stderr.
Only rank 0 logs."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from genlab.engine.checkpoint import atomic_write_text

log = logging.getLogger("genlab")


def is_total_loss(key: str) -> bool:
    """A back-propagated total: "loss", or "loss_<optimiser>" for models with several optimisers
    (the other terms are its components or diagnostics)."""
    return key == "loss" or key.startswith("loss_")


class RunLog:
    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "logs" / "train.jsonl"
        self.tb_dir = Path(run_dir) / "logs" / "tb"
        self._tb = None
        self._tb_wanted = tensorboard
        self._bar = None
        self._file = None
        # W&B / MLflow (train.trackers of the run's config.yaml), started before the first step
        from genlab.engine.trackers import open_trackers, tracker_names

        self._trackers = open_trackers(run_dir, tracker_names(run_dir)) if enabled else []

    def _writer(self):
        if self._tb is None and self._tb_wanted:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.tb_dir))
            except ImportError:  # tensorboard not installed: JSONL only
                self._tb_wanted = False
        return self._tb

    def record(self, kind: str, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a")
        rec = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        self._file.write(json.dumps(rec) + "\n")
        self._file.flush()
        tb = self._writer()
        if tb is not None:
            for k, v in values.items():
                tb.add_scalar(f"{kind}/{k}", v, step)
        for t in self._trackers:
            t.log(kind, step, values)
        if kind != "train" or self._bar is None:
            log.info("%s step %d: %s", kind, step, ", ".join(f"{k} {v:.4g}" for k, v in values.items()))

    def truncate_after(self, step: int) -> None:
        """On resume, drop records of steps the checkpoint does not include."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [ln for ln in self.path.read_text().splitlines() if ln.strip() and _step_of(ln) <= step]
        atomic_write_text(self.path, "".join(k + "\n" for k in kept))

    def open_progress(self, total: int, initial: int) -> None:
        """Training progress (genlab.progress): a bar on a terminal, a line every few seconds
        (step/total, loss, rate, time left) on any other stderr."""
        if not self.enabled:
            return
        from genlab.progress import Progress

        bar = Progress("training", total, unit="steps", initial=initial, leave=True)
        self._bar = bar if bar.shown else None  # progress off: `record` logs the train records instead

    def progress(self, terms: dict[str, float]) -> None:
        if self._bar is not None:
            shown = {k: f"{v:.4g}" for k, v in terms.items() if is_total_loss(k)}
            if shown:
                self._bar.set_postfix(shown)
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        for t in self._trackers:
            t.close()
        self._trackers = []


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return 0


def read_log(run_dir: Path) -> list[dict]:
    p = Path(run_dir) / "logs" / "train.jsonl"
    if not p.is_file():
        return []
    return [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()]


def mean_throughput(run_dir: Path) -> tuple[float | None, str | None]:
    """(mean training throughput, its unit) over a run's log records, skipping the first
    (start-up) window unless it is the only one; the unit is the log's `*_per_s` key that
    counts data (images_per_s, tokens_per_s, ...), not steps."""
    train = [r for r in read_log(run_dir) if r.get("kind") == "train"]
    keys = [k for k in (train[0] if train else {}) if k.endswith("_per_s") and k != "steps_per_s"]
    if not keys:
        return None, None
    vals = [r[keys[0]] for r in train if keys[0] in r]
    vals = vals[1:] if len(vals) > 1 else vals
    return sum(vals) / len(vals), keys[0].replace("_per_s", "/s")


def newest_sample(run_dir: Path, suffixes: tuple[str, ...] = (".png",)) -> Path | None:
    """A run's latest sample picture (or text): samples/final.<suffix> when training ended,
    else the newest samples/step-*.<suffix> (names sort by step); None when there is none."""
    folder = Path(run_dir) / "samples"
    for suffix in suffixes:
        if (folder / f"final{suffix}").is_file():
            return folder / f"final{suffix}"
    steps = sorted(p for suffix in suffixes for p in folder.glob(f"step-*{suffix}")) if folder.is_dir() else []
    return steps[-1] if steps else None

