"""Train GAN presets for CPU budgets and record throughput, class coverage of 5,000 samples
under the shipped lenet-mnist classifier, and sample grids.

    .venv/bin/python benchmarks/gan_mnist.py --presets dcgan-mnist --minutes 5
    .venv/bin/python benchmarks/gan_mnist.py --minutes 5 15      # every GAN preset, both budgets, one run each

Writes benchmarks/results/gan-mnist.{md,json} (rows are merged with earlier runs of other
presets/budgets) and benchmarks/results/<preset>-<minutes>min.png."""

from __future__ import annotations

import argparse
import json
import time

from _common import mean_train_throughput, RESULTS, fresh_run_dir, machine_lines, train_with_marks, write_results

import genlab
from genlab.bench import machine_info
from genlab.evaluation import evaluate
from genlab.images import save_grid
from genlab.metrics.classifier import label_accuracy, load_classifier, predict

GAN_PRESETS = ["gan-mlp-mnist", "dcgan-mnist", "wgan-gp-mnist", "cgan-mnist", "sngan-mnist"]


def bench_preset(preset: str, marks: list[float], n: int, seed: int, threads: int) -> list[dict]:
    """One run trained for the largest budget; a checkpoint is kept when the training time passes
    each smaller one, and every budget is measured from its own checkpoint."""
    marks = sorted(marks)
    run_dir = fresh_run_dir(f"{preset}-{marks[-1]:g}min")
    t0 = time.time()
    res, ckpts, steps = train_with_marks(preset, run_dir, marks, seed)
    wall = time.time() - t0
    ips = mean_train_throughput(run_dir)
    clf = load_classifier("lenet-mnist")
    rows = []
    for m, ckpt, step in zip(marks, ckpts, steps):
        run = genlab.load(run_dir, checkpoint=ckpt)
        images, labels = run.sample(n, seed=seed)
        fractions = (predict(clf, images).bincount(minlength=10).float() / n).tolist()
        grid_name = f"{preset}-{m:g}min-{threads}thread.png"
        save_grid(images[:100], RESULTS / grid_name, nrow=10)
        row = {"preset": preset, "minutes": m, "steps": step, "checkpoint": ckpt,
               "run_wall_seconds": wall, "train_images_per_s": ips, "n": n, "class_fractions": fractions,
               "min_class_fraction": min(fractions), "max_class_fraction": max(fractions),
               "all_classes_5_to_15pct": all(0.05 <= f <= 0.15 for f in fractions), "grid": grid_name}
        if labels is not None:
            row["label_accuracy"] = label_accuracy(clf, images, labels)
        t0 = time.time()
        report = evaluate(run_dir, n=10_000, metrics=["fid", "kid", "precision", "recall"], seed=seed,
                          checkpoint=ckpt, out=RESULTS / f".{preset}-{m:g}.json", html=False)
        (RESULTS / f".{preset}-{m:g}.json").unlink()
        row["evaluate_seconds"] = time.time() - t0
        row.update({k: report["metrics"][k]["value"] for k in ("fid", "kid", "precision", "recall")})
        rows.append(row)
    return rows


def _m(row: dict, key: str, fmt: str) -> str:
    return format(row[key], fmt) if key in row else "-"


def _ordered(rows: dict) -> list[dict]:
    return sorted(rows.values(), key=lambda r: (GAN_PRESETS.index(r["preset"]) if r["preset"] in GAN_PRESETS
                                                else 99, r["minutes"], r["machine"]["threads"]))


def _markdown(ordered: list[dict], machine: dict, a: argparse.Namespace) -> str:
    md = ["# GAN presets on MNIST\n",
          "Command: `.venv/bin/python benchmarks/gan_mnist.py --presets PRESET... --minutes M...` (seed "
          f"{a.seed}): one run per preset trained for the largest budget, each smaller budget measured from "
          f"the checkpoint kept when training time passed it. Class shares are of {a.n:,} samples (EMA "
          "generator) as labelled by lenet-mnist (test accuracy 99.45%). Target for dcgan-mnist at 5 minutes: "
          "every class 5-15%.\n",
          "Machine of the latest run:\n", machine_lines(machine),
          "| preset | CPU minutes | CPU, date | threads | fp32 GFLOP/s | steps | images/s | min class share | max class share | all in 5-15% | "
          "label accuracy | FID (lenet-mnist) | KID | precision | recall | samples |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in ordered:
        acc = f"{100 * r['label_accuracy']:.1f}%" if "label_accuracy" in r else "-"
        cpu = f"{r['machine']['cpu_model'].split(' Processor')[0].replace('(R)', '')}, {r['machine']['date'][:10]}"
        md.append(f"| {r['preset']} | {r['minutes']:g} | {cpu} | {r['machine']['threads']} | "
                  f"{r['machine']['matmul_fp32_gflops']} | {r['steps']:,} | "
                  f"{r['train_images_per_s']:,.0f} | "
                  f"{100 * r['min_class_fraction']:.1f}% | {100 * r['max_class_fraction']:.1f}% | "
                  f"{'yes' if r['all_classes_5_to_15pct'] else 'no'} | {acc} | {_m(r, 'fid', '.2f')} | "
                  f"{_m(r, 'kid', '.4f')} | {_m(r, 'precision', '.3f')} | {_m(r, 'recall', '.3f')} | ![]({r['grid']}) |")
    md.append("\nFID, KID and precision/recall (k=3): `genlab evaluate RUN --n 10000` against the 10,000 MNIST "
              "test images in the lenet-mnist feature space (not comparable with Inception FIDs); the "
              "train-vs-test floor is in [evaluation.md](evaluation.md). '-' = not measured for that row. "
              "images/s is the run's mean over its whole budget. The fp32 column is the matmul peak measured in "
              "that row's run: a CPU minute on a slower machine buys fewer steps.")
    md.append("\nEach row's CPU model, thread count, matmul peak, genlab commit and date are in gan-mnist.json "
              "(`machine`). dcgan-mnist rows dated before 2026-12-03 are of the earlier preset (learning rate "
              "2e-4, EMA 0.999; now 4e-3 and 0.99).\n")
    return "\n".join(md) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=GAN_PRESETS)
    ap.add_argument("--minutes", nargs="+", type=float, default=[5.0, 15.0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--render-only", action="store_true", help="rewrite the .md from the existing .json")
    a = ap.parse_args()
    path = RESULTS / "gan-mnist.json"
    old = json.loads(path.read_text()) if path.is_file() else {"rows": []}
    if a.render_only:
        rows = _ordered({i: r for i, r in enumerate(old["rows"])})
        latest = max(rows, key=lambda r: r["machine"]["date"])["machine"]
        write_results("gan-mnist", {"rows": rows}, _markdown(rows, latest, a))
        return
    machine = machine_info()
    # a row is replaced only by a run of the same preset, budget and thread count: budgets in CPU
    # minutes mean different things on different machines, so the table keeps both
    rows = {(r["preset"], r["minutes"], r["machine"]["threads"]): r for r in old["rows"]}
    for p in a.presets:
        for row in bench_preset(p, a.minutes, a.n, a.seed, machine["threads"]):
            row["machine"] = machine
            rows[(p, row["minutes"], machine["threads"])] = row
        # written after every preset: a long benchmark cut short keeps what it measured
        write_results("gan-mnist", {"rows": _ordered(rows)}, _markdown(_ordered(rows), machine, a))


if __name__ == "__main__":
    main()
