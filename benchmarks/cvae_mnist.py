"""Train `cvae-mnist` for a CPU budget, sample 10,000 balanced digits and measure how often the
shipped lenet-mnist classifier sees the requested class (target: >= 90% after 5 minutes).

    .venv/bin/python benchmarks/cvae_mnist.py --minutes 5
"""

from __future__ import annotations

import argparse
import time


from _common import mean_train_throughput, RESULTS, fresh_run_dir, machine_lines, write_results

import genlab
from genlab.bench import machine_info
from genlab.metrics.classifier import class_histogram, label_accuracy, load_classifier, predict


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    machine = machine_info()
    run_dir = fresh_run_dir("cvae-mnist")
    res = genlab.train("cvae-mnist", run_dir, minutes=a.minutes, seed=a.seed)
    ips = mean_train_throughput(run_dir)
    run = genlab.load(run_dir)
    t0 = time.time()
    images, labels = run.sample(a.n, seed=a.seed)
    sample_s = time.time() - t0
    clf = load_classifier("lenet-mnist")
    acc = label_accuracy(clf, images, labels)
    pred = predict(clf, images)
    per_class = [(pred[labels == c] == c).float().mean().item() for c in range(10)]
    hist = class_histogram(clf, images).tolist()
    RESULTS.mkdir(exist_ok=True)
    grid, _ = run.sample(100, seed=a.seed)
    from genlab.images import save_grid

    save_grid(grid, RESULTS / "cvae-mnist-samples.png", nrow=10)  # row i: one of each class
    out = {"benchmark": "cvae-mnist", "machine": machine, "budget_minutes": a.minutes, "seed": a.seed,
           "steps": res.state.step, "train_images_per_s": ips, "n": a.n, "label_accuracy": acc,
           "per_class_accuracy": per_class, "predicted_class_fractions": hist, "sampling_seconds": sample_s}
    md = f"""# cvae-mnist benchmark

Command: `.venv/bin/python benchmarks/cvae_mnist.py --minutes {a.minutes:g}` (seed {a.seed})

{machine_lines(machine)}
| figure | value |
|---|---|
| training budget | {a.minutes:g} CPU minutes ({res.state.step:,} steps, batch 128) |
| training throughput | {ips:,.0f} images/s |
| **label accuracy** of {a.n:,} balanced samples under lenet-mnist (test acc. 99.45%) | **{100 * acc:.2f}%** (target >= 90%) |
| worst class | {min(per_class) * 100:.1f}% (digit {per_class.index(min(per_class))}) |
| sampling time for {a.n:,} images | {sample_s:.2f} s |

Per-class accuracy: {', '.join(f'{c}: {100 * v:.1f}%' for c, v in enumerate(per_class))}

Samples (column j is class j):

![samples](cvae-mnist-samples.png)
"""
    write_results("cvae-mnist", out, md)


if __name__ == "__main__":
    main()
