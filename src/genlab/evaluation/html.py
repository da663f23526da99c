"""HTML pages for evaluation reports and run comparisons: a metric table, sample grids and
loss curves (PNG plots), all files written beside the page, atomically. Audio samples are
embedded in the page itself (WAV and spectrogram PNG as base64 data URIs)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from genlab.engine.checkpoint import atomic_write_bytes, atomic_write_text
from genlab.engine.logs import is_total_loss, read_log

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
figure{display:inline-block;margin:0 1.5em 1em 0;vertical-align:top}img{image-rendering:pixelated;border:1px solid #ddd}
pre{background:#f7f7f7;padding:1em;white-space:pre-wrap}.small{color:#666;font-size:90%}
.clip{display:flex;align-items:center;gap:1.5em;margin:0.4em 0}.clip span{min-width:6em}"""


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


def write_report_html(report: dict, out: Path, images: dict[str, bytes], text: str | None = None,
                      audio: list[tuple[str, bytes, bytes]] | None = None, notes: list[str] | None = None) -> Path:
    """report.json's content as a page beside it; `images` maps caption -> PNG bytes; `audio`
    holds (caption, WAV bytes, spectrogram PNG bytes) per clip, with `notes` above them."""
    out = Path(out)
    assets = out.parent / (out.stem + "_files")
    rows = [[name, m["value"], m.get("extractor") or "", m.get("n"), m.get("seed"), m.get("seconds")]
            for name, m in report["metrics"].items()]
    parts = [f"<p class='small'>run <code>{html.escape(str(report['run']))}</code>, step {fmt(report.get('step'))}, "
             f"model {fmt(report.get('model'))}, evaluated {fmt(report.get('created'))} on "
             f"{fmt(report.get('machine'))} in {fmt(report.get('seconds'))} s</p>",
             "<h2>Metrics</h2>", table(["metric", "value", "extractor", "n", "seed", "seconds"], rows),
             "<p class='small'>Feature-space metrics name their extractor: an FID (lenet-mnist) is not "
             "comparable with an Inception FID.</p>"]
    figs = []
    for i, (caption, png) in enumerate(images.items()):
        name = f"{i}-{''.join(c if c.isalnum() else '-' for c in caption.lower())}.png"
        atomic_write_bytes(assets / name, png)
        width = _png_width(png)
        size = f" width='{width * 2}'" if width < 400 else ""  # small grids of 28x28 images: show them 2x
        figs.append(f"<figure><img src='{assets.name}/{name}'{size} alt='{html.escape(caption)}'>"
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    if figs:
        parts += ["<h2>Figures</h2>", "".join(figs)]
    if text:
        parts += ["<h2>Sample text</h2>", f"<pre>{html.escape(text)}</pre>"]
    if audio:
        parts.append(audio_section(audio, notes))
    atomic_write_text(out, page(f"genlab report: {Path(report['run']).name}", "".join(parts)))
    return out
