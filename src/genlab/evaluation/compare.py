"""`genlab compare RUN_DIR...`: the runs' metrics, throughput and training time in one table."""

from __future__ import annotations

from pathlib import Path

from genlab.config import load_config
from genlab.engine.checkpoint import latest_valid
from genlab.engine.logs import mean_throughput
from genlab.errors import CheckpointError
from genlab.evaluation import read_report

FIXED = ["run", "model", "step", "train min", "throughput"]


def collect(run_dirs: list[str | Path]) -> tuple[list[str], list[list]]:
    """(header, rows): one row per run; metric columns are the union over the runs' reports,
    labelled with their extractor ("fid (lenet-mnist)") where they have one."""
    runs = []
    for d in map(Path, run_dirs):
        if not (d / "config.yaml").is_file():
            raise CheckpointError(f"{d} is not a genlab run directory (no config.yaml)")
        report = read_report(d / "report.json")
        c = latest_valid(d / "checkpoints")
        state = c.state["state"] if c else {}
        rate, unit = mean_throughput(d)
        cfg = load_config(d / "config.yaml")
        model = cfg.preset or cfg.model_name
        runs.append((d, model, state, rate, unit, report.get("metrics", {})))
    columns: list[str] = []
    for *_, metrics in runs:
        for name, m in metrics.items():
            col = f"{name} ({m['extractor']})" if m.get("extractor") else name
            if col not in columns:
                columns.append(col)
    rows = []
    for d, model, state, rate, unit, metrics in runs:
        by_col = {(f"{k} ({m['extractor']})" if m.get("extractor") else k): m["value"] for k, m in metrics.items()}
        rows.append([str(d), model, state.get("step"), round(state["elapsed"] / 60, 2) if "elapsed" in state else None,
                     f"{rate:,.0f} {unit}" if rate else None] + [by_col.get(c) for c in columns])
    return FIXED + columns, rows


def format_table(header: list[str], rows: list[list]) -> str:
    """A plain aligned text table (numbers to 4 significant digits)."""
    def cell(v):
        if v is None:
            return "-"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    cells = [header] + [[cell(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_compare_html(header: list[str], rows: list[list], out: Path) -> Path:
    from genlab.engine.checkpoint import atomic_write_text
    from genlab.evaluation.html import page, table

    atomic_write_text(Path(out), page("genlab: run comparison", table(header, rows)))
    return Path(out)
