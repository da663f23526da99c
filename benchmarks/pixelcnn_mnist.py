"""pixelcnn-mnist: exact test NLL against CPU training time, sampling time, sample and
completion grids.

    .venv/bin/python benchmarks/pixelcnn_mnist.py --minutes 15 30 60

One run is trained for the largest budget; a checkpoint is kept when the training time passes
each smaller budget, and each is evaluated on the whole binarised test split (10,000 images,
exact NLL; the binarisation is fixed by the seed). Writes benchmarks/results/pixelcnn-mnist.{md,json}
and the grids beside them. The published reference is 81.3 nats (Gated PixelCNN, van den Oord
et al. 2016, long GPU training).
"""

from __future__ import annotations

import argparse
import time

from _common import RESULTS, fresh_run_dir, machine_lines, mean_train_throughput, train_with_marks, write_results

import torch

import genlab
from genlab.bench import machine_info
from genlab.evaluation import evaluate
from genlab.images import save_grid
from genlab.seed import make_generator


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", nargs="+", type=float, default=[15.0, 30.0, 60.0])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    marks = sorted(a.minutes)
    machine = machine_info()
    run_dir = fresh_run_dir("pixelcnn-mnist")
    t0 = time.time()
    res, ckpts, _ = train_with_marks("pixelcnn-mnist", run_dir, marks, a.seed)
    wall = time.time() - t0
    rows = []
    for m, ckpt in zip(marks, ckpts):
        rep = evaluate(run_dir, n=10_000, metrics=["nll_nats", "bits_per_dim"], checkpoint=ckpt, seed=a.seed,
                       out=RESULTS / f".pixelcnn-{m:g}.json", html=False)
        (RESULTS / f".pixelcnn-{m:g}.json").unlink()
        rows.append({"minutes": m, "checkpoint": ckpt, "step": rep["step"],
                     "nll_nats": rep["metrics"]["nll_nats"]["value"],
                     "bits_per_dim": rep["metrics"]["bits_per_dim"]["value"]})
    run = genlab.load(run_dir)
    t = time.time()
    images, _ = run.sample(64, seed=a.seed)
    sample_s = time.time() - t
    save_grid(images, RESULTS / "pixelcnn-mnist-samples.png", nrow=8)
    data = run.data()
    x = data.test_x[:8]
    batch = run.pipeline(x, None, train=False)
    known = torch.zeros(1, 1, 28, 28, dtype=torch.bool)
    known[..., :14, :] = True
    done = run.model.complete(batch["x"].repeat(2, 1, 1, 1), known, generator=make_generator(a.seed))
    shown = torch.cat([run.pipeline.to_uint8(batch["x"]), run.pipeline.to_uint8(done)])
    save_grid(shown, RESULTS / "pixelcnn-mnist-completion.png", nrow=8)
    out = {"machine": machine, "rows": rows, "steps": res.state.step, "wall_seconds": wall,
           "train_images_per_s": mean_train_throughput(run_dir), "sample_64_seconds": sample_s}
    md = ["# pixelcnn-mnist: exact NLL against CPU time\n",
          f"Command: `.venv/bin/python benchmarks/pixelcnn_mnist.py --minutes {' '.join(f'{m:g}' for m in marks)}` "
          f"(seed {a.seed}).\n", machine_lines(machine),
          "| CPU minutes | step | test NLL (nats, exact) | bits/dim |", "|---|---|---|---|"]
    md += [f"| {r['minutes']:g} | {r['step']:,} | {r['nll_nats']:.2f} | {r['bits_per_dim']:.4f} |" for r in rows]
    md += [f"\nTraining throughput {out['train_images_per_s']:,.0f} images/s; sampling 64 images (28x28, "
           f"784 sequential steps) took {sample_s:.1f} s. Published reference: 81.3 nats (Gated PixelCNN).\n",
           "Samples:\n\n![samples](pixelcnn-mnist-samples.png)\n",
           "Completion of the bottom half (row 1: test images; rows 2-3: two completions each):\n\n"
           "![completion](pixelcnn-mnist-completion.png)\n"]
    write_results("pixelcnn-mnist", out, "\n".join(md))


if __name__ == "__main__":
    main()
