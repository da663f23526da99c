"""pixelcnn-mnist: exact test NLL against CPU training time, sampling time, sample and
completion grids.

    OMP_NUM_THREADS=2 taskset -c 0,1 .venv/bin/python benchmarks/pixelcnn_mnist.py --minutes 15 30 60
    ... --set train.lr=3e-3 --tag lr3e-3      (a recipe variant: its own rows)

One run is trained for the largest budget; a checkpoint is kept when the training time passes
each smaller budget, and each is evaluated on the whole binarised test split (10,000 images,
exact NLL; the binarisation is fixed by the seed). The results file keeps every run: a new run
replaces only the earlier one of the same recipe (preset or tag) and seed on the same CPU model
and thread count. Writes benchmarks/results/pixelcnn-mnist.{md,json}, and the latest run's grids beside them.
The published reference is 81.3 nats (Gated PixelCNN, van den Oord et al. 2016, long GPU training).
"""

from __future__ import annotations

import argparse
import json
import time

from _common import (RESULTS, fresh_run_dir, machine_lines, mean_train_throughput, pinned_command, results_lock,
                     train_with_marks, write_results)

import torch

import genlab
from genlab.bench import machine_info
from genlab.evaluation import evaluate
from genlab.images import save_grid
from genlab.seed import make_generator

PRESET = "pixelcnn-mnist"


def train_and_measure(marks: list[float], seed: int, overrides: list[str], run_dir) -> tuple[dict, list]:
    """Train, evaluate each mark's checkpoint exactly and time 64 samples: (the run's record, its
    sample and completion grids as (images, file))."""
    t0 = time.time()
    res, ckpts, _ = train_with_marks(PRESET, run_dir, marks, seed, overrides=overrides)
    wall = time.time() - t0
    rows = []
    for m, ckpt in zip(marks, ckpts):
        rep = evaluate(run_dir, n=10_000, metrics=["nll_nats", "bits_per_dim"], checkpoint=ckpt, seed=seed,
                       out=run_dir / f"report-{ckpt}.json", html=False)
        rows.append({"minutes": m, "checkpoint": ckpt, "step": rep["step"],
                     "nll_nats": rep["metrics"]["nll_nats"]["value"],
                     "bits_per_dim": rep["metrics"]["bits_per_dim"]["value"]})
    run = genlab.load(run_dir)
    t = time.time()
    images, _ = run.sample(64, seed=seed)
    sample_s = time.time() - t
    x = run.data().test_x[:8]
    batch = run.pipeline(x, None, train=False)
    known = torch.zeros(1, 1, 28, 28, dtype=torch.bool)
    known[..., :14, :] = True
    done = run.model.complete(batch["x"].repeat(2, 1, 1, 1), known, generator=make_generator(seed))
    shown = torch.cat([run.pipeline.to_uint8(batch["x"]), run.pipeline.to_uint8(done)])
    record = {"seed": seed, "lr": run.cfg.train.lr, "precision": res.state.amp, "rows": rows, "steps": res.state.step,
              "wall_seconds": wall, "train_images_per_s": mean_train_throughput(run_dir), "sample_64_seconds": sample_s}
    return record, [(images, "pixelcnn-mnist-samples.png"), (shown, "pixelcnn-mnist-completion.png")]


def merged(old: dict, new: dict) -> dict:
    """old results + one new run, which replaces a run of the same recipe, seed, CPU model and threads."""
    def same(r: dict) -> bool:
        return (r["key"], r["seed"], r["machine"]["cpu_model"], r["machine"]["threads"]) == \
            (new["key"], new["seed"], new["machine"]["cpu_model"], new["machine"]["threads"])
    rid = str(max([0, *map(int, old.get("runs", {}))]) + 1)
    return {"runs": {**{k: r for k, r in old.get("runs", {}).items() if not same(r)}, rid: new}, "grids_run": rid}


def render(d: dict) -> str:
    md = ["# pixelcnn-mnist: exact NLL against CPU time\n",
          "Produced by `benchmarks/pixelcnn_mnist.py` (each run's command and machine below): one run per row "
          "group, trained for its largest budget; each smaller budget is the checkpoint kept when the "
          "training time passed it. Test NLL: exact, on the 10,000 binarised test images (the run's "
          "seed fixes the binarisation). Minutes: training time on the run's threads (with one "
          "thread, CPU minutes). Precision: what the run trained in (train.amp=auto decides per model and "
          "CPU). Published reference: 81.3 nats (Gated PixelCNN, long GPU training).\n",
          "| run | recipe | lr, precision, seed | CPU, threads | training minutes | step | test NLL (nats, exact) | "
          "bits/dim | train images/s |",
          "|---|---|---|---|---|---|---|---|---|"]
    for rid, r in d["runs"].items():
        m = r["machine"]
        for row in r["rows"]:
            md.append(f"| {rid} | {r['key']} | {r['lr']:g}, {r['precision']}, {r['seed']} | {m['cpu_model']}, "
                      f"{m['threads']} | {row['minutes']:g} | {row['step']:,} | {row['nll_nats']:.2f} | "
                      f"{row['bits_per_dim']:.4f} | {r['train_images_per_s']:,.0f} |")
    md.append("")
    for rid, r in d["runs"].items():
        over = f"; overrides `{' '.join(r['overrides'])}`" if r["overrides"] else ""
        note = f" ({r['note']})" if r.get("note") else ""
        md += [f"Run {rid}: `{r['command']}`{note}{over}; sampling 64 images (784 sequential steps) took "
               f"{r['sample_64_seconds']:.1f} s\n", machine_lines(r["machine"])]
    md += [f"Samples of run {d['grids_run']}:\n\n![samples](pixelcnn-mnist-samples.png)\n",
           "Completion of the bottom half (row 1: test images; rows 2-3: two completions each):\n\n"
           "![completion](pixelcnn-mnist-completion.png)\n"]
    return "\n".join(md)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", nargs="+", type=float, default=[15.0, 30.0, 60.0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides of the preset")
    ap.add_argument("--tag", help="the recipe's name in the table (required with --set): 'pixelcnn-mnist + TAG'")
    ap.add_argument("--render-only", action="store_true", help="rewrite the .md from the .json")
    a = ap.parse_args()
    path = RESULTS / "pixelcnn-mnist.json"
    if a.render_only:
        d = json.loads(path.read_text())
        write_results("pixelcnn-mnist", d, render(d))
        return
    if a.set and not a.tag:
        ap.error("--set needs --tag (a name for the recipe's rows)")
    machine = machine_info()
    key = f"{PRESET} + {a.tag}" if a.tag else PRESET
    # a folder per recipe: a variant may train beside the preset, one core each
    measured, grids = train_and_measure(sorted(a.minutes), a.seed, a.set, fresh_run_dir(key.replace(" + ", "-")))
    new = {"key": key, "overrides": a.set, "command": pinned_command(), "machine": machine, **measured}
    with results_lock("pixelcnn-mnist"):
        d = merged(json.loads(path.read_text()) if path.exists() else {}, new)
        for images, name in grids:  # the latest run's, as grids_run says
            save_grid(images, RESULTS / name, nrow=8)
        write_results("pixelcnn-mnist", d, render(d))


if __name__ == "__main__":
    main()
