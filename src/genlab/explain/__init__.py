"""`genlab explain`: what a trained model learned, and what its judges look at.

Views (`--what`; by default every one that applies to the run):
  latents      VAE and GAN latent traversals, dimensions ranked by KL on test images (VAE) or
               by how much the image changes (GAN)                        (genlab.explain.latents)
  attribution  Captum heat maps (integrated gradients, occlusion, GradientSHAP) of the shipped
               domain classifiers, a GAN's discriminator, conditional models' label evidence and
               the audio judge, with deletion curves                 (genlab.explain.attribution)
  attention    a GPT's attention per layer and head along a prompt and its continuation, and the
               probability of every next token                          (genlab.explain.attention)
  neighbours   the nearest training images of generated samples        (genlab.explain.neighbours)

Output: OUT/explain.json (the numbers and the list of figures), OUT/*.png and OUT/explain.html,
each written atomically, the JSON last. OUT defaults to RUN_DIR/explain; its figures then also
appear as the "Interpretability" section of RUN_DIR/report.html (refreshed now when the page
exists, and kept whenever `genlab evaluate` or training rewrites it).

Beside them: genlab.explain.shapes (dSprites-like shapes with known factors) and
genlab.explain.disentanglement (the MIG score), used by benchmarks/interpretability.py.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from genlab.errors import ConfigError
from genlab.explain.common import ExplainOptions, Part

log = logging.getLogger("genlab")


@dataclass(frozen=True)
class View:
    reason: Callable  # run -> None when the view applies, else why not (one clause)
    make: Callable  # (run, ExplainOptions) -> Part
    needs: str | None = None  # an optional module the view imports (its extra is named when missing)


def _views() -> dict[str, View]:
    from genlab.explain import attention, attribution, latents, neighbours

    return {"latents": View(latents.reason, latents.explain_latents),
            "attribution": View(attribution.reason, attribution.explain_attribution, needs="captum"),
            "attention": View(attention.reason, attention.explain_attention),
            "neighbours": View(neighbours.reason, neighbours.explain_neighbours)}


WHAT = ("latents", "attribution", "attention", "neighbours")


def plan(run, what: list[str] | None) -> tuple[list[str], list[str]]:
    """The views to draw for `run` and notes on what was left out.

    `what` None: every view that applies (attribution is left out, with a note, when Captum is
    not installed). Named views must all apply: a ConfigError names the one that does not and
    what the run can show. A run no view applies to is refused in one line.
    """
    import importlib.util

    views = _views()
    unknown = [w for w in what or [] if w not in views]
    if unknown:
        raise ConfigError(f"--what {unknown[0]!r} is not a view; choose from {', '.join(WHAT)}")
    applies = [w for w in WHAT if views[w].reason(run) is None]
    kind = f"{run.cfg.model_name} {run.family} run"
    if not applies:
        raise ConfigError(f"genlab explain cannot explain {run.run_dir}, a {kind}: it draws VAE/GAN latents, "
                          "attributions of image and audio models, GPT attention and nearest training images")
    if what:
        for w in what:
            why = views[w].reason(run)
            if why is not None:
                raise ConfigError(f"--what {w}: {why}; {run.run_dir} is a {kind}, which explain shows as: "
                                  f"{', '.join(applies)}")
        for w in what:  # before any view is drawn: a missing extra must not waste the others' work
            if views[w].needs:
                from genlab.extras import require

                require(views[w].needs, "explain", f"genlab explain --what {w}")
        return list(dict.fromkeys(what)), []
    notes, chosen = [], []
    for w in applies:
        needs = views[w].needs
        if needs and importlib.util.find_spec(needs) is None:
            notes.append(f"{w} left out: it needs the explain extra ({needs} is missing): "
                         "pip install 'genlab[explain]'")
            continue
        chosen.append(w)
    if not chosen:  # every view that applies needs the missing extra: the one-line error naming it
        from genlab.extras import require

        require(views[applies[0]].needs, "explain", f"genlab explain --what {applies[0]}")
    return chosen, notes


def _check_out_dir(out: Path) -> None:
    """The output folder may exist or not, but must not be (or sit under) a file."""
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                raise ConfigError(f"--out {out}: {p} is a file; give a folder for explain.json and its figures")
            return


def explain(run_dir: str | os.PathLike, *, what: list[str] | None = None, out: str | os.PathLike | None = None,
            n: int = 8, seed: int = 0, label: int | None = None, prompt: str | None = None, max_tokens: int = 48,
            checkpoint: str = "last", device: str = "cpu", data_root: str | None = None,
            input: str | os.PathLike | None = None) -> dict:
    """Draw the interpretability figures of a run and write them into `out` (default
    RUN_DIR/explain): explain.json, the PNGs and explain.html. Everything is checked before work
    starts; writing into the run folder owns it meanwhile (RunLock), as `genlab evaluate` does.

    Returns:
        explain.json's content: {"run", "step", "model", "created", "machine", "seconds", "seed",
        "views": [...], "summary": [...], "notes": [...], "figures": [{"what", "file", "caption"}],
        and one record per view under its name}.
    """
    from genlab import demos
    from genlab.engine.lock import RunLock
    from genlab.engine.run import load
    from genlab.options import check_number
    from genlab.seed import check_seed

    t0 = time.perf_counter()
    check_number("--n", n, lo=1, hi=256, integer=True)
    check_number("--max-tokens", max_tokens, lo=0, integer=True)
    check_seed(seed)
    if out is None:
        demos.refuse_write(run_dir, "give --out DIR for the figures")
    run_path = demos.resolve(run_dir)
    out_dir = Path(out) if out is not None else run_path / "explain"
    _check_out_dir(out_dir)
    run = load(run_dir, checkpoint, device)
    views, notes = plan(run, what)
    if input is not None and "attribution" not in views:
        raise ConfigError(f"--input: only attribution explains given images, and it is not drawn for {run_dir}; "
                          "add --what attribution (it needs the explain extra), or drop --input")
    if input is not None and not Path(input).is_file():
        raise ConfigError(f"--input {input} not found; give an .npz (images uint8 N x C x H x W) or a .png")
    o = ExplainOptions(n=n, seed=seed, label=label, prompt=prompt, max_tokens=max_tokens, data_root=data_root,
                       input=None if input is None else str(input))
    owned = out_dir.resolve().is_relative_to(run_path.resolve())
    with RunLock(run_path) if owned else nullcontext():
        parts: dict[str, Part] = {}
        for w in views:
            t = time.perf_counter()
            parts[w] = _views()[w].make(run, o)
            parts[w].record["seconds"] = round(time.perf_counter() - t, 3)
            log.info("%s: %d figure(s) in %.1f s", w, len(parts[w].figures), parts[w].record["seconds"])
        record = _record(run, parts, notes, seed, t0)
        write_explain(record, parts, out_dir)
        from genlab.evaluation.html import EXPLAIN_DIR, refresh_explain_section

        report_html = run_path / "report.html"
        if out_dir.resolve() == (run_path / EXPLAIN_DIR).resolve() and report_html.is_file():
            refresh_explain_section(report_html, run_path)
    return record


def _record(run, parts: dict[str, Part], notes: list[str], seed: int, t0: float) -> dict:
    from genlab.engine.device import device_name

    figures = [{"what": w, "file": name, "caption": caption} for w, p in parts.items() for name, caption, _ in p.figures]
    return {"run": str(run.run_dir), "step": run.step, "model": run.cfg.preset or run.cfg.model_name,
            "checkpoint": run.checkpoint.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": device_name(run.device), "seconds": round(time.perf_counter() - t0, 3), "seed": seed,
            "views": list(parts), "summary": [s for p in parts.values() for s in p.summary],
            "notes": notes + [s for p in parts.values() for s in p.notes], "figures": figures,
            **{w: p.record for w, p in parts.items()}}


def write_explain(record: dict, parts: dict[str, Part], out_dir: Path) -> tuple[Path, Path]:
    """The PNGs, explain.html and explain.json (last) into out_dir. Returns (json, html)."""
    from genlab.engine.checkpoint import atomic_write_bytes, atomic_write_json, atomic_write_text
    from genlab.evaluation.html import explain_page

    out_dir = Path(out_dir)
    for p in parts.values():
        for name, _, png in p.figures:
            atomic_write_bytes(out_dir / name, png)
    html_path, json_path = out_dir / "explain.html", out_dir / "explain.json"
    atomic_write_text(html_path, explain_page(record, out_dir))
    atomic_write_json(json_path, record)
    return json_path, html_path


__all__ = ["WHAT", "ExplainOptions", "Part", "explain", "plan", "write_explain"]
