"""`genlab compare RUN_DIR...`: the runs' key metrics, throughput and training time in one
table (text, or a self-contained HTML page with each run's samples and loss curves)."""

from __future__ import annotations

import html
from pathlib import Path

from genlab.config import load_config
from genlab.engine.checkpoint import latest_valid
from genlab.engine.logs import mean_throughput, newest_sample
from genlab.errors import CheckpointError, ConfigError
from genlab.evaluation import read_report
from genlab.metrics.catalog import arrow, key_metrics
from genlab.registry import model_family

FIXED = ["run", "model", "step", "train min", "throughput"]




def collect(run_dirs: list[str | Path], metrics: list[str] | None = None) -> tuple[list[str], list[list]]:
    """(header, rows): one row per run. Metric columns are, by default, the key metrics of the
    families compared (`genlab.metrics.catalog.KEY_METRICS`) that some run's report has; with
    `metrics`, those names in that order (a name no run has: ConfigError naming those they
    have). A metric measured with different extractors gets a column per extractor; headers
    name the extractor and the better direction ("fid (lenet-mnist) ↓")."""
    from genlab.data.molecules import is_molecule_config

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
        found = report.get("metrics", {}) if isinstance(report.get("metrics"), dict) else {}
        family = "molecules" if is_molecule_config(cfg.data) else model_family(cfg.model_name)  # MOSES columns
        runs.append((d, model, family, state, rate, unit, found))
    have = list(dict.fromkeys(name for *_, found in runs for name in found))
    if metrics is not None:
        unknown = [m for m in metrics if m not in have]
        if unknown:
            raise ConfigError(f"no run has metric(s) {', '.join(unknown)}; the runs have "
                              f"{', '.join(have) or 'no metrics (run genlab evaluate first)'}")
        names = list(dict.fromkeys(metrics))
    else:
        wanted = dict.fromkeys(m for _, _, family, *_ in runs for m in key_metrics(family))
        names = [m for m in wanted if m in have]
    columns: list[tuple[str, str | None]] = []  # (metric, extractor)
    for name in names:
        for *_, found in runs:
            m = found.get(name)
            key = (name, m.get("extractor") if isinstance(m, dict) else None)
            if m is not None and key not in columns:
                columns.append(key)
    rows = []
    for d, model, _, state, rate, unit, found in runs:
        cells = []
        for name, ext in columns:
            m = found.get(name)
            same = isinstance(m, dict) and m.get("extractor") == ext
            cells.append(m.get("value") if same else None)
        rows.append([str(d), model, state.get("step"), round(state["elapsed"] / 60, 2) if "elapsed" in state else None,
                     f"{rate:,.0f} {unit}" if rate else None] + cells)
    header = [(f"{n} ({e})" if e else n) + (f" {arrow(n)}" if arrow(n) else "") for n, e in columns]
    return FIXED + header, rows


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


def write_compare_html(header: list[str], rows: list[list], out: Path,
                       run_dirs: list[str | Path] | None = None) -> Path:
    """One self-contained page: the table, then side by side per run its sample picture and
    loss curves (embedded). `run_dirs` default to the rows' first column."""
    from genlab.engine.checkpoint import atomic_write_text
    from genlab.evaluation.html import figure, loss_curve_png, page, table

    dirs = [Path(d) for d in (run_dirs if run_dirs is not None else [r[0] for r in rows])]
    cols = []
    for d in dirs:
        figs = []
        sample = newest_sample(d)
        if sample:
            figs.append(figure(f"samples/{sample.name}", sample.read_bytes(), max_width=500))
        curve = loss_curve_png(d)
        if curve:
            figs.append(figure("training losses", curve, max_width=500))
        if not figs:
            figs.append("<p class='small'>no sample picture or training log</p>")
        cols.append(f"<div><h3>{html.escape(d.name)}</h3><p class='small'><code>{html.escape(str(d))}</code></p>"
                    + "".join(figs) + "</div>")
    body = (table(header, rows) + "<p class='small'>↓: lower is better, ↑: higher is better.</p>"
            + "<h2>Samples and training curves</h2><div class='runs'>" + "".join(cols) + "</div>")
    atomic_write_text(Path(out), page("genlab: run comparison", body))
    return Path(out)
