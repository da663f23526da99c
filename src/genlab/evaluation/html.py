"""HTML pages for evaluation reports and run comparisons: a metric table (with what each
metric measures and which way is better), sample grids, loss curves and audio clips. Each page
is one self-contained file: pictures and sounds are embedded as base64 data URIs, so a page can
be mailed or attached. Pages are written atomically."""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path

from genlab.engine.checkpoint import atomic_write_text
from genlab.engine.logs import is_total_loss, read_log

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}td.what{text-align:left;color:#444}
td.better{text-align:center}
figure{display:inline-block;margin:0 1.5em 1em 0;vertical-align:top}img{image-rendering:pixelated;border:1px solid #ddd}
pre{background:#f7f7f7;padding:1em;white-space:pre-wrap}.small{color:#666;font-size:90%}
.clip{display:flex;align-items:center;gap:1.5em;margin:0.4em 0}.clip span{min-width:6em}
.runs{display:flex;gap:1.5em;align-items:flex-start;overflow-x:auto}.runs>div{flex:0 0 auto;max-width:520px}
.runs img{max-width:500px}"""

# Files `write_report_html` used to write into a side folder (`<stem>_files/<i>-<caption>.png`).
_OLD_ASSET = re.compile(r"^\d+-[a-z0-9-]+\.png$")


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
    return html.escape(str(v)) if v is not None else ""


def table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n")


def loss_curve_png(run_dir: Path) -> bytes | None:
    """Training totals and validation loss against step, as PNG bytes (None without a log)."""
    recs = read_log(run_dir)
    train = [r for r in recs if r.get("kind") == "train"]
    val = [r for r in recs if r.get("kind") == "val" and "loss" in r]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for r in train for k in r if is_total_loss(k)})
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(5 * max(1, len(keys)), 3.2), squeeze=False)
    for ax, k in zip(axes[0], keys or ["loss"]):
        pts = [(r["step"], r[k]) for r in train if k in r]
        ax.plot(*zip(*pts), label=f"train {k}", lw=1)
        if k == "loss" and val:
            ax.plot([r["step"] for r in val], [r["loss"] for r in val], "o-", ms=3, label="val loss")
        ax.set_xlabel("step")
        ax.set_title(k)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _png_width(png: bytes) -> int:
    return int.from_bytes(png[16:20], "big")  # the IHDR chunk's width field


def data_uri(mime: str, blob: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(blob).decode('ascii')}"


def figure(caption: str, png: bytes, *, max_width: int | None = None) -> str:
    """A captioned <figure> with the PNG embedded; small grids (28x28 images) shown at 2x."""
    width = _png_width(png)
    shown = width * 2 if width < 400 else width
    if max_width:
        shown = min(shown, max_width)
    size = f" width='{shown}'" if shown != width else ""
    return (f"<figure><img src='{data_uri('image/png', png)}'{size} alt='{html.escape(caption)}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def metric_table(metrics: dict[str, dict]) -> str:
    """The report's metrics, one row each, with what the metric measures and which way is better."""
    from genlab.metrics.catalog import ARROWS, describe

    head = "".join(f"<th>{h}</th>" for h in
                   ("metric", "value", "what it measures", "better", "extractor", "n", "seed", "seconds"))
    body = []
    for name, m in metrics.items():
        what, better = describe(name)
        m = m if isinstance(m, dict) else {"value": m}
        body.append(f"<tr><td>{html.escape(name)}</td><td>{fmt(m.get('value'))}</td>"
                    f"<td class='what'>{html.escape(what)}</td>"
                    f"<td class='better'{f' title={chr(39)}{better} is better{chr(39)}' if better else ''}>"
                    f"{ARROWS[better]}</td>"
                    f"<td>{fmt(m.get('extractor') or '')}</td><td>{fmt(m.get('n'))}</td><td>{fmt(m.get('seed'))}</td>"
                    f"<td>{fmt(m.get('seconds'))}</td></tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _header_line(report: dict) -> str:
    """run, step and what else the report records (training's report has no machine or time)."""
    parts = [f"run <code>{html.escape(str(report.get('run', '')))}</code>", f"step {fmt(report.get('step'))}"]
    if report.get("model"):
        parts.append(f"model {fmt(report['model'])}")
    if report.get("stop_reason"):
        parts.append(f"training stopped by {fmt(report['stop_reason'])}")
    if report.get("created"):
        where = f" on {fmt(report['machine'])}" if report.get("machine") else ""
        took = f" in {fmt(report['seconds'])} s" if report.get("seconds") is not None else ""
        parts.append(f"evaluated {fmt(report['created'])}{where}{took}")
    p = report.get("privacy")
    line = f"<p class='small'>{', '.join(parts)}</p>" + _federation_lines(report.get("federation"))
    if isinstance(p, dict) and p.get("epsilon") is not None:
        line = (f"<p><b>Trained with differential privacy: epsilon {p['epsilon']:.3g} "
                f"(delta {p.get('delta', float('nan')):g})</b></p>") + line
    return line


def _federation_lines(f) -> str:
    """A federated run's settings and its rounds (replies, seconds, bytes), or ""."""
    if not isinstance(f, dict) or not isinstance(f.get("per_round"), list):
        return ""
    extras = [x for x, on in (("SecAgg+", f.get("secure_aggregation")), ("client-level DP", f.get("client_dp")))
              if on]
    head = (f"<p>Federated: {fmt(f.get('clients'))} clients ({fmt(f.get('partition'))}), {fmt(f.get('rounds'))} "
            f"rounds x {fmt(f.get('local_steps'))} local steps, {fmt(f.get('strategy'))}"
            f"{''.join(', ' + x for x in extras)}</p>")
    cols = ("round", "clients_ok", "clients_failed", "round_seconds", "bytes_to_clients", "bytes_from_clients",
            "client_loss", "epsilon")
    shown = [c for c in cols if any(c in r for r in f["per_round"] if isinstance(r, dict))]
    rows = "".join("<tr>" + "".join(f"<td>{fmt(r.get(c))}</td>" for c in shown) + "</tr>"
                   for r in f["per_round"] if isinstance(r, dict))
    return head + f"<table><tr>{''.join(f'<th>{c}</th>' for c in shown)}</tr>{rows}</table>"


def run_figures(run_dir: Path, final_samples: bool = True) -> dict[str, bytes]:
    """A run folder's own pictures: training's last sample picture (samples/final.png, when
    there is one and `final_samples`) and the loss curves from its log."""
    out: dict[str, bytes] = {}
    final = Path(run_dir) / "samples" / "final.png"
    if final_samples and final.is_file():
        try:
            out["samples at the end of training (samples/final.png)"] = final.read_bytes()
        except OSError:
            pass
    curve = loss_curve_png(Path(run_dir))
    if curve:
        out["training losses"] = curve
    return out


def report_page(report: dict, images: dict[str, bytes] | None = None, text: str | None = None,
                audio: list[tuple[str, bytes, bytes]] | None = None, notes: list[str] | None = None,
                sections: str = "") -> str:
    """The HTML of a report (report.json's content): header, metric table, figures, sample
    text and audio clips, every picture and sound embedded; `sections` (HTML) at the end."""
    parts = [_header_line(report), "<h2>Metrics</h2>", metric_table(report.get("metrics", {})),
             "<p class='small'>↓: lower is better, ↑: higher is better. Feature-space metrics name their "
             "extractor: an FID (lenet-mnist) is not comparable with an Inception FID.</p>"]
    figs = [figure(caption, png) for caption, png in (images or {}).items()]
    if figs:
        parts += ["<h2>Figures</h2>", "".join(figs)]
    if text:
        parts += ["<h2>Sample text</h2>", f"<pre>{html.escape(text)}</pre>"]
    if audio:
        parts.append(audio_section(audio, notes))
    parts.append(sections)
    return page(f"genlab report: {Path(str(report.get('run', 'run'))).name}", "".join(parts))


def audio_section(clips: list[tuple[str, bytes, bytes]], notes: list[str] | None = None) -> str:
    """One row per clip: its caption, an <audio> player and its spectrogram, both embedded in
    the page (no files, no external assets); `clips` holds (caption, WAV bytes, PNG bytes)."""
    rows = []
    for caption, wav, png in clips:
        width, height = _png_width(png), int.from_bytes(png[20:24], "big")  # IHDR width, height
        rows.append(f"<div class='clip'><span>{html.escape(caption)}</span>"
                    f"<audio controls preload='none' src='{data_uri('audio/wav', wav)}'></audio>"
                    f"<img src='{data_uri('image/png', png)}' width='{width * 3}' height='{height * 2}' "
                    f"alt='log-mel spectrogram of {html.escape(caption)}'></div>")
    note = "".join(f"<p class='small'>{html.escape(n)}</p>" for n in notes or [])
    return ("<h2>Audio samples</h2>" + note
            + "<p class='small'>The first generated clips; spectrograms are log-mel power, low frequencies "
              "at the bottom, 80 dB below each clip's peak in dark blue.</p>" + "".join(rows))


def _remove_old_assets(out: Path) -> None:
    """Pages used to keep their pictures in `<stem>_files/`: remove the PNGs genlab wrote there
    (named `<i>-<caption>.png`) and the folder if that empties it; anything else stays."""
    folder = out.parent / (out.stem + "_files")
    if not folder.is_dir():
        return
    for f in folder.iterdir():
        if f.is_file() and _OLD_ASSET.match(f.name):
            f.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:  # not empty: someone else's files
        pass


def write_report_html(report: dict, out: Path, images: dict[str, bytes] | None = None, text: str | None = None,
                      audio: list[tuple[str, bytes, bytes]] | None = None, notes: list[str] | None = None,
                      run_dir: Path | None = None, final_samples: bool = True) -> Path:
    """report.json's content as one self-contained page at `out`. `images` maps caption -> PNG
    bytes (the caller's figures, e.g. evaluation sample grids); with `run_dir`, the run's own
    figures follow (`run_figures`: training's final samples unless not `final_samples`, loss
    curves) and the Interpretability section of `genlab explain`. `audio` holds
    (caption, WAV bytes, spectrogram PNG bytes) per clip, with `notes` above them."""
    out = Path(out)
    pics = dict(images or {})
    sections = ""
    if run_dir is not None:
        pics.update(run_figures(Path(run_dir), final_samples))
        sections = run_explain_section(Path(run_dir))  # what `genlab explain` drew, if it ran
    atomic_write_text(out, report_page(report, pics, text, audio, notes, sections))
    _remove_old_assets(out)
    return out


def write_run_report_html(run_dir: Path, report: dict) -> Path:
    """RUN_DIR/report.html from `report` (what report.json holds) and the run folder: what
    training writes after its test report, so the page never shows an older step. Text runs'
    last continuation (samples/final.txt) is shown as sample text."""
    run_dir = Path(run_dir)
    final_text = run_dir / "samples" / "final.txt"
    text = final_text.read_text(encoding="utf-8", errors="replace") if final_text.is_file() else None
    return write_report_html(report, run_dir / "report.html", text=text, run_dir=run_dir)


# --------------------------------------------------------------------------- genlab explain

EXPLAIN_DIR = "explain"  # the folder `genlab explain` writes into inside a run
_EXPLAIN_SECTION = re.compile(r"<section id='explain'>.*?</section>", re.S)


def explain_section(record: dict, folder: Path) -> str:
    """`genlab explain`'s summary lines, notes and figures (PNG files in `folder`, listed in
    explain.json's `record`) as an "Interpretability" section, pictures embedded; "" when
    there is nothing to show."""
    items = "".join(f"<li>{html.escape(str(s))}</li>" for s in record.get("summary", []))
    notes = "".join(f"<p class='small'>{html.escape(str(n))}</p>" for n in record.get("notes", []))
    figs = []
    for f in record.get("figures", []):
        try:
            figs.append(figure(str(f.get("caption", "")), (Path(folder) / f["file"]).read_bytes(), max_width=1000))
        except (OSError, KeyError, TypeError, AttributeError):  # a figure removed or a damaged record
            continue
    if not figs and not items:
        return ""
    head = (f"<p class='small'>genlab explain at step {fmt(record.get('step'))}, {fmt(record.get('created'))}; "
            f"views: {fmt(', '.join(record.get('views', [])))}</p>")
    return f"<section id='explain'><h2>Interpretability</h2>{head}<ul>{items}</ul>{notes}{''.join(figs)}</section>"


def run_explain_section(run_dir: Path) -> str:
    """The Interpretability section from RUN_DIR/explain/explain.json, or "" when there is none."""
    folder = Path(run_dir) / EXPLAIN_DIR
    try:
        record = json.loads((folder / "explain.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    return explain_section(record, folder) if isinstance(record, dict) else ""


def explain_page(record: dict, folder: Path) -> str:
    """explain.html: the header of the record (run, step, when, where) and its section."""
    return page(f"genlab explain: {Path(str(record.get('run', 'run'))).name}",
                _header_line(record) + explain_section(record, folder))


def refresh_explain_section(report_html: Path, run_dir: Path) -> None:
    """Replace (or add) the Interpretability section of an existing report page with what
    RUN_DIR/explain holds now; the rest of the page stays as it was."""
    text = _EXPLAIN_SECTION.sub("", Path(report_html).read_text(encoding="utf-8"))
    section = run_explain_section(Path(run_dir))
    end = text.rfind("</body>")
    text = text[:end] + section + text[end:] if end >= 0 else text + section
    atomic_write_text(Path(report_html), text)
