"""`genlab evaluate`: the metrics that fit a run's model family, in one report.

report.json layout (shared by every family):
    {"run": str, "step": int, "model": str, "created": str, "machine": str, "seconds": float,
     "metrics": {NAME: {"value": float, "extractor": str | null, "n": int, "seed": int,
                        "seconds": float, ...extra fields}}}
The default output is RUN_DIR/report.json: metrics already there (e.g. the test losses
written at the end of training) are kept, and the ones just computed replace theirs.
An HTML page with the table, sample grids and loss curves is written beside the JSON.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from genlab import demos
from genlab.engine.checkpoint import atomic_write_json
from genlab.engine.device import device_name
from genlab.engine.lock import RunLock
from genlab.engine.privacy import privacy_summary
from genlab.errors import ConfigError
from genlab.options import check_number, check_output

log = logging.getLogger("genlab")


def _image_family(run, *, n, seed, metrics, **opts):
    from genlab.evaluation.images import ImageEvalOptions, evaluate_images, with_data_root

    import dataclasses

    stray = sorted(set(opts) - {f.name for f in dataclasses.fields(ImageEvalOptions)})
    if stray:
        raise ConfigError(f"option(s) {', '.join(stray)} do not apply to image runs")
    o = with_data_root(ImageEvalOptions(n=n or 10_000, seed=seed, metrics=metrics, **opts), run)
    if hasattr(run.model, "translate"):  # pix2pix, CycleGAN: test images translated, against the target domain
        from genlab.evaluation.translation import evaluate_translation

        return evaluate_translation(run, o)
    return evaluate_images(run, o)


def _text_family(run, *, n, seed, metrics, **opts):
    from genlab.data.molecules import is_molecule_config
    from genlab.evaluation.text import evaluate_text

    if is_molecule_config(run.cfg.data):  # SMILES/SELFIES runs: the MOSES metrics (genlab.evaluation.molecules)
        from genlab.evaluation.molecules import evaluate_molecules

        allowed = {"data_root", "reference_size", "temperature", "smiles_syntax"}
        if set(opts) - allowed:
            raise ConfigError(f"option(s) {', '.join(sorted(set(opts) - allowed))} "
                              "do not apply to molecule runs")
        return evaluate_molecules(run, n=n, seed=seed, metrics=metrics, **opts)
    if opts:
        raise ConfigError(f"option(s) {', '.join(opts)} do not apply to text runs")
    res = evaluate_text(run, n=n, seed=seed, metrics=metrics)
    return res if isinstance(res, tuple) else (res, {})


def _graph_family(run, *, n, seed, metrics, **opts):
    from genlab.data.molecules import is_molecule_config
    from genlab.evaluation.graphs import evaluate_graphs

    if is_molecule_config(run.cfg.data):  # molecule graphs (molgraphrnn): the MOSES metrics, as SMILES runs
        return _text_family(run, n=n, seed=seed, metrics=metrics, **opts)
    return evaluate_graphs(run, n=n, seed=seed, metrics=metrics, **opts)


def _audio_family(run, *, n, seed, metrics, **opts):
    from genlab.evaluation.audio import evaluate_audio

    allowed = {"data_root", "floor", "sample_options"}
    if set(opts) - allowed:
        raise ConfigError(f"option(s) {', '.join(sorted(set(opts) - allowed))} do not apply to audio runs")
    return evaluate_audio(run, n=n or 1000, seed=seed, metrics=metrics, **opts)


# model family -> evaluator(run, n, seed, metrics, **options) -> (metrics, artefacts)
EVALUATORS = {"image": _image_family, "text": _text_family, "graph": _graph_family, "audio": _audio_family}


def evaluate(run_dir: str | Path, *, n: int | None = None, metrics: list[str] | None = None,
             out: str | Path | None = None, seed: int = 0, checkpoint: str = "last", device: str = "cpu",
             html: bool = True, **options) -> dict:
    """Evaluate a run and write report.json (+ report.html). `options` go to the family's
    evaluator (images: extractor, inception_weights, download, iw_k, data_root)."""
    from genlab.engine.run import load

    t0 = time.perf_counter()
    check_number("--n", n, lo=2, integer=True)
    check_number("--iw-k", options.get("iw_k"), lo=1, integer=True)
    if out is not None:
        check_output(out, (".json",))
    else:
        demos.refuse_write(run_dir, "give --out FILE.json for the report")
    run = load(run_dir, checkpoint, device)
    run_dir = run.run_dir
    family = getattr(run.model, "family", "image")
    if family not in EVALUATORS:
        raise ConfigError(f"no evaluator for {family} models yet")
    # The default report goes into the run folder: own it meanwhile, as training does, so that
    # a training run (or a second evaluation) cannot interleave its report with this one.
    with RunLock(run_dir) if out is None else nullcontext():
        return _evaluate_and_write(run, run_dir, family, t0, n=n, metrics=metrics, out=out, seed=seed,
                                   html=html, **options)


def _evaluate_and_write(run, run_dir, family, t0, *, n, metrics, out, seed, html, **options) -> dict:
    with torch.no_grad():
        values, artefacts = EVALUATORS[family](run, n=n, seed=seed, metrics=metrics, **options)
    out = Path(out) if out else Path(run_dir) / "report.json"
    previous = read_report(out)
    same_run = previous.get("run") and Path(previous["run"]).resolve() == Path(run_dir).resolve()
    merged = dict(previous.get("metrics", {})) if same_run else {}
    merged.update(values)
    report = {"run": str(run_dir), "step": run.step, "model": run.cfg.preset or run.cfg.model_name,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "machine": device_name(run.device),
              "seconds": round(time.perf_counter() - t0, 3), "metrics": merged}
    dp = privacy_summary(run.checkpoint.state)
    if dp:  # the guarantee the numbers come with
        report["privacy"] = dp
    atomic_write_json(out, report)
    if html:
        _write_html(run, report, out, artefacts)
    report["seconds_with_report"] = round(time.perf_counter() - t0, 3)
    return report


def read_report(path: Path) -> dict:
    """A report.json's content, or {} when it is missing or not JSON (it is then rewritten)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_html(run, report: dict, out: Path, artefacts: dict) -> Path:
    from genlab.evaluation.html import write_report_html
    from genlab.images import make_grid, png_bytes

    pics: dict[str, bytes] = {}
    clips = None
    if artefacts.get("sample_rate") is not None:  # audio: players and spectrograms, not a grid
        from genlab.evaluation.audio import html_clips

        clips = html_clips(artefacts)
    elif artefacts.get("samples") is not None:
        s = artefacts["samples"][:100]
        k = run.model.num_classes if run.model.conditional else None
        pics[f"samples (seed {report['metrics'].get('fid', {}).get('seed', 0)})"] = png_bytes(
            make_grid(s, nrow=k if k and k <= 16 else 10))
    pics.update(artefacts.get("figures") or {})  # caption -> PNG bytes an evaluator drew (molecule properties)
    if artefacts.get("reconstructions") is not None:
        o, r = artefacts["originals"][:10], artefacts["reconstructions"][:10]
        pics["test images (top) and reconstructions (bottom)"] = png_bytes(make_grid(torch.cat([o, r]), nrow=len(o)))
    # the run's loss curves, and training's final samples when this evaluation drew none to show
    return write_report_html(report, out.with_suffix(".html"), pics, artefacts.get("text"), audio=clips,
                             notes=artefacts.get("notes"), run_dir=run.run_dir,
                             final_samples=artefacts.get("samples") is None and clips is None)
