"""Train, package and measure the demo models shipped in src/genlab/demos/.

    .venv/bin/python scripts/make_demos.py [--only NAME ...] [--work runs/demos]

For each demo: train its preset with a fixed step budget and seed into WORK/NAME (a killed
script resumes there), copy the run into src/genlab/demos/NAME keeping only what sampling needs
(config, data.json, tokenizer, one checkpoint holding only the sampling weights, the final
sample picture, the training report), then evaluate the packaged demo itself with
`genlab evaluate demo:NAME`, add its figures to the demo's report.json (what `genlab info
demo:NAME` shows) and record every figure, the commands and the machine in
src/genlab/demos/README.md. Figures are those of the shipped files, not of the training run.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import genlab  # noqa: E402
from genlab import demos  # noqa: E402
from genlab.engine import checkpoint as ckpt  # noqa: E402

# name -> training steps (the preset's own schedule otherwise), weight dtype kept on disk, evaluate flags
DEMOS = {
    "cvae-mnist": {"steps": 6000, "dtype": "float32", "evaluate": ["--n", "10000", "--metrics", "fid", "kid",
                                                                   "label_accuracy", "class_coverage"]},
    "ddpm-mnist": {"steps": 2500, "dtype": "float16", "evaluate": ["--n", "1000", "--metrics", "fid", "kid"]},
    "gpt-shakespeare-cpu": {"steps": 2000, "dtype": "float32", "evaluate": []},
    "dcgan-mnist": {"steps": 4000, "dtype": "float32", "evaluate": ["--n", "10000", "--metrics", "fid", "kid"]},
}
KEEP_FILES = ("config.yaml", "data.json", "tokenizer.json", "report.json", "manifest.json")


def train(name: str, spec: dict, work: Path, data_root: str | None) -> Path:
    run = work / name
    if (run / "checkpoints").is_dir():
        res = genlab.train(resume=run, steps=spec["steps"], data_root=data_root)
    else:
        res = genlab.train(name, run, steps=spec["steps"], seed=0, data_root=data_root)
    return Path(res.run_dir)


def package(run: Path, name: str, dtype: str) -> tuple[Path, str]:
    """Copy `run` into the package as a read-only demo, atomically (built beside, then renamed)."""
    c = ckpt.latest_valid(run / "checkpoints")
    prefix = "ema." if any(k.startswith("ema.") for k in c.tensors) else "model."
    tensors = {k: (v.to(getattr(torch, dtype)) if v.is_floating_point() else v).contiguous()
               for k, v in c.tensors.items() if k.startswith(prefix)}
    state = {"state": c.state["state"], "demo": {"from_run": str(run), "weights": prefix.rstrip("."),
                                                 "dtype": dtype}}
    dest = demos.HERE / name
    tmp = demos.HERE / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for f in KEEP_FILES:
        if (run / f).is_file():
            shutil.copy2(run / f, tmp / f)
    manifest = json.loads((tmp / "manifest.json").read_text())
    manifest["data_root"] = None  # a path on the machine that trained it: users' data come from their own root
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    for pic in sorted((run / "samples").glob("final.*")):
        (tmp / "samples").mkdir(exist_ok=True)
        shutil.copy2(pic, tmp / "samples" / pic.name)
    ckpt.save_checkpoint(tmp / "checkpoints", c.name, tensors, state)
    old = demos.HERE / f".{name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest, "EMA" if prefix == "ema." else "model"


def evaluate(name: str, flags: list[str], work: Path, data_root: str | None) -> dict:
    out = work / f"{name}-demo-report.json"
    cmd = [sys.executable, "-m", "genlab", "evaluate", f"demo:{name}", "--out", str(out), *flags]
    if data_root:
        cmd += ["--data-root", data_root]
    subprocess.run(cmd, check=True, cwd=ROOT)
    return json.loads(out.read_text())


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def write_readme(records: dict[str, dict]) -> None:
    lines = ["# Demo models", "",
             "Small trained runs shipped in the package, usable offline as `demo:NAME` wherever a run "
             "directory is accepted (`genlab sample demo:cvae-mnist --out s.png`, `genlab.load(\"demo:NAME\")`).",
             "Written by `scripts/make_demos.py` (this file included); the figures below are measured on the "
             "packaged files by `genlab evaluate demo:NAME`, not on the training run.", ""]
    for name, r in records.items():
        lines += [f"## {name}", "",
                  f"- trained: `genlab train {name} --steps {r['steps']} --seed 0` ({r['step']} steps, "
                  f"{r['train_minutes']:.1f} min on {r['cpu']}, {r['threads']} thread(s), commit {r['commit']})",
                  f"- shipped: {r['weights']} weights as {r['dtype']}, {r['size_mb']:.1f} MB on disk",
                  f"- evaluated: `genlab evaluate demo:{name} {' '.join(r['flags'])}` on {r['eval_date']}", "",
                  "| metric | value | n |", "|---|---|---|"]
        for m, v in r["metrics"].items():
            ext = f" ({v['extractor']})" if v.get("extractor") else ""
            lines.append(f"| {m}{ext} | {v['value']:.4g} | {v.get('n')} |")
        lines.append("")
    ckpt.atomic_write_text(demos.HERE / "README.md", "\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=sorted(DEMOS), help="demos to (re)make (default all)")
    p.add_argument("--work", default="runs/demos", help="folder for the training runs (default runs/demos)")
    p.add_argument("--data-root", help="datasets folder (default: $GENLAB_DATA, ../shared/data)")
    a = p.parse_args()
    work = Path(a.work)
    old = demos.HERE / "records.json"
    records = json.loads(old.read_text()) if old.is_file() else {}
    for name in a.only or DEMOS:
        spec = DEMOS[name]
        t0 = time.time()
        run = train(name, spec, work, a.data_root)
        state = ckpt.latest_valid(run / "checkpoints").state["state"]
        dest, weights = package(run, name, spec["dtype"])
        report = evaluate(name, spec["evaluate"], work, a.data_root)
        trained = dest / "report.json"  # the training's test losses (none for GANs), then these
        shipped = json.loads(trained.read_text()) if trained.is_file() else {"metrics": {}}
        shipped["metrics"].update(report["metrics"])
        ckpt.atomic_write_json(dest / "report.json", shipped)
        manifest = json.loads((run / "manifest.json").read_text())
        records[name] = {"steps": spec["steps"], "step": state["step"], "train_minutes": state["elapsed"] / 60,
                         "cpu": manifest.get("cpu_model") or platform.processor(), "threads": manifest.get("threads"),
                         "commit": manifest.get("git_commit") or "unknown", "dtype": spec["dtype"],
                         "weights": weights,
                         "size_mb": size_mb(dest), "flags": spec["evaluate"],
                         "eval_date": time.strftime("%Y-%m-%d"), "metrics": report["metrics"]}
        ckpt.atomic_write_json(old, records)
        print(f"{name}: packaged in {dest} ({size_mb(dest):.1f} MB) in {time.time() - t0:.0f} s", file=sys.stderr)
    write_readme(records)


if __name__ == "__main__":
    main()
