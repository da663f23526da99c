"""Experiment trackers beside TensorBoard: Weights & Biases and MLflow, chosen with
`--set train.trackers=[wandb]` (or `[mlflow]`, or both). Each receives the run's config once and
then every log record (train and val scalars, keyed `train/loss`, `val/loss`, ... at their step).

Only the main process logs (RunLog is disabled elsewhere). The tracker's run id is kept in
`RUN/logs/trackers.json`, so `genlab train --resume RUN` continues the same W&B / MLflow run
instead of starting a second one. Neither package is a dependency: asking for one that is not
installed is a one-line ConfigError naming `pip install wandb` / `pip install mlflow`.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any, Protocol, Sequence

from genlab.errors import ConfigError

TRACKERS = ("wandb", "mlflow")
IDS_FILE = "trackers.json"  # in RUN/logs: {"wandb": run id, "mlflow": run id}


class Tracker(Protocol):
    def log(self, kind: str, step: int, values: dict[str, float]) -> None: ...

    def close(self) -> None: ...


def check_trackers(names: Sequence[str]) -> None:
    """ConfigError for an unknown tracker name or one whose package is not installed."""
    for n in names:
        if n not in TRACKERS:
            raise ConfigError(f"unknown tracker {n!r} in train.trackers; choose from {', '.join(TRACKERS)}")
        if sys.modules.get(n) is None and importlib.util.find_spec(n) is None:
            raise ConfigError(f"train.trackers={n} needs the {n} package ({n} is missing): pip install {n}")


def flat_config(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 0.001}} -> {"train.lr": 0.001} (MLflow params are flat)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flat_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _scalars(kind: str, values: dict[str, float]) -> dict[str, float]:
    return {f"{kind}/{k}": float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


class WandbTracker:
    """wandb.init(project="genlab" or $WANDB_PROJECT, name=run folder, config, dir=RUN/logs);
    resumed by the id kept in trackers.json (resume="allow")."""

    def __init__(self, run_dir: Path, config: dict, ids: dict[str, str]):
        self.wandb = importlib.import_module("wandb")
        new = "wandb" not in ids
        run_id = ids.get("wandb") or secrets.token_hex(8)
        self.wandb.init(project=os.environ.get("WANDB_PROJECT", "genlab"), name=run_dir.name, id=run_id,
                        resume="allow", config=config if new else None, dir=str(run_dir / "logs"))
        ids["wandb"] = run_id

    def log(self, kind: str, step: int, values: dict[str, float]) -> None:
        self.wandb.log(_scalars(kind, values), step=step)

    def close(self) -> None:
        self.wandb.finish()


class MlflowTracker:
    """An MLflow run named after the run folder in the experiment "genlab" (unless
    $MLFLOW_EXPERIMENT_NAME/_ID chooses one), the config as params; resumed by its run id."""

    def __init__(self, run_dir: Path, config: dict, ids: dict[str, str]):
        self.mlflow = importlib.import_module("mlflow")
        if "mlflow" in ids:  # params were logged when the run started (MLflow refuses changed ones)
            self.mlflow.start_run(run_id=ids["mlflow"])
            return
        if not (os.environ.get("MLFLOW_EXPERIMENT_NAME") or os.environ.get("MLFLOW_EXPERIMENT_ID")):
            self.mlflow.set_experiment("genlab")
        run = self.mlflow.start_run(run_name=run_dir.name)
        ids["mlflow"] = run.info.run_id
        self.mlflow.log_params(flat_config(config))

    def log(self, kind: str, step: int, values: dict[str, float]) -> None:
        self.mlflow.log_metrics(_scalars(kind, values), step=step)

    def close(self) -> None:
        self.mlflow.end_run()


_CLASSES = {"wandb": WandbTracker, "mlflow": MlflowTracker}


def tracker_names(run_dir: Path) -> list[str]:
    """The train.trackers of the run's saved config.yaml ([] without one)."""
    import yaml

    p = Path(run_dir) / "config.yaml"
    if not p.is_file():
        return []
    tree = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    return list((tree.get("train") or {}).get("trackers") or [])


def open_trackers(run_dir: Path, names: Sequence[str]) -> list[Tracker]:
    """Start (or, with ids in RUN/logs/trackers.json, resume) the named trackers and log the
    run's config to each."""
    if not names:
        return []
    import yaml

    from genlab.engine.checkpoint import atomic_write_json

    run_dir = Path(run_dir)
    check_trackers(names)
    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    path = run_dir / "logs" / IDS_FILE
    try:
        ids = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        ids = {}
    out: list[Tracker] = []
    for n in names:
        try:
            out.append(_CLASSES[n](run_dir, config, ids))
        except Exception as e:  # noqa: BLE001 - the tracker's own failure (login, server): one line, the rest closed
            for t in out:
                t.close()
            first = (str(e).strip().splitlines() or [""])[0]
            raise ConfigError(f"train.trackers: {n} did not start ({type(e).__name__}: {first}); log in or start "
                              f"its server, or drop {n} from train.trackers") from None
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, ids)
    return out
