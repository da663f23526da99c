"""`genlab info RUN_DIR`: a run's full record (`--json`) and a short human summary of it:
what was trained, for how long, on what, its key figures and where its files are."""

from __future__ import annotations

import json
from pathlib import Path

from genlab.metrics.catalog import arrow, key_metrics
from genlab.engine.logs import newest_sample
from genlab.registry import model_family

MAX_METRICS = 6  # key figures in the summary; report.json has them all


def run_record(run_dir: Path) -> dict:
    """The full record of a run: {"run", "config", "manifest"?, "report"?, "progress",
    "last_val"?}; a damaged manifest/report is recorded as "damaged: PATH is not valid JSON"."""
    from genlab.engine.logs import read_log
    from genlab.engine.run import run_status

    run_dir = Path(run_dir)
    cfg, state = run_status(run_dir)
    info = {"run": str(run_dir), "config": cfg.to_dict()}
    for name in ("manifest.json", "report.json"):
        p = run_dir / name
        if p.is_file():
            try:
                info[name.removesuffix(".json")] = json.loads(p.read_text())
            except (ValueError, UnicodeDecodeError):
                info[name.removesuffix(".json")] = f"damaged: {p} is not valid JSON"
    info["progress"] = state["state"] if state else None
    vals = [r for r in read_log(run_dir) if r.get("kind") == "val"]
    if vals:
        info["last_val"] = vals[-1]
    return info


def _read(path: Path, damaged: list[str]) -> dict | None:
    """A JSON object file's content; None when missing, and noted in `damaged` when unreadable."""
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        damaged.append(path.name)
        return None
    if not isinstance(d, dict):
        damaged.append(path.name)
        return None
    return d




def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def federation_line(run_dir: Path, fstate: dict, damaged: list[str]) -> str:
    """Round R of N, the clients, the partition and the strategy of a federated run."""
    text = f"round {fstate.get('round')} of {fstate.get('rounds')}"
    from genlab.errors import ConfigError
    from genlab.federated.config import FederationConfig

    try:
        f = FederationConfig.from_file(run_dir / "federation.yaml")
    except ConfigError:  # a damaged or missing file: the summary still shows the rest
        damaged.append("federation.yaml")
        return text
    part = f.partition + (f" alpha {f.alpha:g}" if f.partition == "dirichlet" else "")
    return (f"{text}, {f.clients} clients ({part}), {f.local_steps} local steps a round, {f.strategy}"
            + (", SecAgg+" if f.secure_aggregation else "") + (", client-level DP" if f.client_dp.enabled else ""))


def summary_text(run_dir: Path) -> str:
    """A short human summary of a run (at most about 15 lines): a private run's guarantee
    first (`epsilon: E (delta D)`), then what, trained how long on what and where, its key
    metrics with the better direction, and where its files are. Damaged or missing JSON files
    are named in one line each; a run without a checkpoint says "not trained yet"."""
    from genlab.config import load_config
    from genlab.engine.checkpoint import latest_valid
    from genlab.engine.privacy import privacy_summary
    from genlab.engine.run import is_finished

    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    c = latest_valid(run_dir / "checkpoints")
    state = c.state if c else None
    damaged: list[str] = []
    manifest = _read(run_dir / "manifest.json", damaged)
    data = _read(run_dir / "data.json", damaged)
    report = _read(run_dir / "report.json", damaged)
    lines = []
    dp = privacy_summary(state)
    if dp:
        lines.append(f"epsilon: {dp['epsilon']:.3g} (delta {dp['delta']:g})"
                     + (", client-level (federated)" if dp.get("level") == "client" else ""))
    family = model_family(cfg.model_name)
    what = f"{cfg.preset} ({cfg.model_name}, {family})" if cfg.preset else f"{cfg.model_name} ({family})"
    if c is not None:
        prefix = "model." if any(k.startswith("model.") for k in c.tensors) else "ema."  # demos: EMA weights only
        n_params = sum(t.numel() for k, t in c.tensors.items() if k.startswith(prefix))
        if n_params:
            what += f", {_count(n_params)} parameters"
    lines.append(f"run:      {run_dir}")
    lines.append(f"model:    {what}")
    if state is None:
        lines.append(f"training: not trained yet (budget {cfg.train.steps} steps)")
    else:
        s = state["state"]
        budget = f"step {s['step']} of {cfg.train.steps}"
        if cfg.train.minutes is not None:
            budget += f" (or {cfg.train.minutes:g} min)"
        secs = s.get("elapsed", 0)
        how = f"{budget}, " + (f"{secs / 60:.1f} min" if secs >= 60 else f"{secs:.1f} s") + " of training"
        if s.get("amp"):  # the precision it trained in (train.amp=auto: chosen by timing the model's step)
            how += " in bf16 autocast" if s["amp"] == "bf16" else " in fp32"
        reason = s.get("stop_reason")
        if is_finished(cfg, state):
            how += f", finished ({reason})"
        else:
            again = (f"genlab federate FED.yaml --out {run_dir}" if "federation" in state
                     else f"genlab train --resume {run_dir}")
            how += (f", stopped ({reason})" if reason else ", unfinished") + f"; continue with `{again}`"
        lines.append(f"training: {how}")
        if "federation" in state:
            lines.append(f"federated: {federation_line(run_dir, state['federation'], damaged)}")
    dataset = (data or {}).get("dataset") or cfg.data.dataset
    source = (manifest or {}).get("data_source") or (data or {}).get("source")
    on = str(dataset) + (f" from {source}" if source and source != dataset else "")
    train_n = ((data or {}).get("sizes") or {}).get("train")
    if isinstance(train_n, int):
        on += f", {train_n:,} training examples"
    lines.append(f"data:     {on}")
    if manifest:
        machine = manifest.get("device_name") or manifest.get("device") or "?"
        lines.append(f"machine:  {machine}; genlab {manifest.get('genlab_version', '?')}, "
                     f"torch {manifest.get('torch_version', '?')}")
    elif "manifest.json" not in damaged:
        lines.append("machine:  unknown (no manifest.json)")
    metrics = (report or {}).get("metrics")
    if isinstance(metrics, dict) and metrics:
        from genlab.data.molecules import is_molecule_config

        shown = "molecules" if is_molecule_config(cfg.data) else family  # SMILES runs: the MOSES metrics
        names = [m for m in key_metrics(shown) if m in metrics] or list(metrics)
        step = f" at step {report['step']}" if report.get("step") is not None else ""
        more = len(metrics) - len(names[:MAX_METRICS])
        lines.append(f"metrics{step}" + (f" ({more} more in report.json):" if more > 0 else ":"))
        shown = []
        for name in names[:MAX_METRICS]:
            m = metrics[name] if isinstance(metrics[name], dict) else {"value": metrics[name]}
            shown.append((f"{name} ({m['extractor']})" if m.get("extractor") else name, m.get("value"), arrow(name)))
        width = max(len(label) for label, *_ in shown)
        lines += [f"  {label:<{width}}  {_fmt(v):>10} {a}".rstrip() for label, v, a in shown]
    elif "report.json" not in damaged:
        lines.append(f"metrics:  none yet; `genlab evaluate {run_dir}` measures them")
    files = []
    if c is not None:
        from genlab.engine.checkpoint import list_steps

        steps = list_steps(run_dir / "checkpoints")
        files.append(f"checkpoints/{steps[-1]}" if steps else "checkpoints/")
    sample = newest_sample(run_dir, (".png", ".txt"))
    sample = f"samples/{sample.name}" if sample else None
    if sample:
        files.append(sample)
    files += [n for n in ("report.json", "report.html") if (run_dir / n).is_file()]
    files += [n for n in ("logs/train.jsonl", "logs/tb/") if (run_dir / n).exists()]
    if files:
        lines.append(f"files:    {', '.join(files)}")
    for name in damaged:
        lines.append(f"damaged:  {run_dir / name} is not valid JSON")
    return "\n".join(lines)
