"""Diffusion UNets at matched work: genlab's ddpm-mnist UNet, diffusers' UNet2DModel and
denoising-diffusion-pytorch's Unet (`model.backbone`, genlab.models.diffusion.backbones), each
trained by genlab's engine on MNIST with everything else equal (ddpm-mnist's v-prediction, cosine
schedule, batch, optimiser, learning-rate schedule, EMA, and its DPM-Solver++ 20-step sampler:
the ODE in the recorded runs of 2026-12-04, the SDE form (model.eta=1) since the preset's change
of 2026-12-05) for the same CPU minutes. Per backbone: parameters, training FLOPs per step (forward and backward of one
batch, counted by torch.utils.flop_counter), ms per step (the training log's mean), and FID
(lenet-mnist, --n samples) at each minute mark.

    .venv/bin/python benchmarks/diffusion_backbones.py                     # 15 and 30 min, three backbones
    .venv/bin/python benchmarks/diffusion_backbones.py --backbones diffusers --minutes 15 30
    .venv/bin/python benchmarks/diffusion_backbones.py --smoke             # end to end in about 2 minutes

Needs `pip install -e '.[bench]'` (diffusers, denoising-diffusion-pytorch). Run it alone on the
machine (training time is the budget: other work on the cores costs the trained network steps).
Each backbone's rows replace its older ones in benchmarks/results/diffusion-backbones.json.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _common import (RESULTS, RUNS, evaluate_marks, fresh_run_dir, machine_lines, mean_train_throughput,
                     pinned_command, results_lock, train_with_marks, write_results)

from genlab.bench import machine_info

NAMES = {"unet": "genlab UNet (ddpm-mnist: 2x2 patch stem, attention at 7x7)",
         "unet-patch1": "genlab UNet without the patch stem (model.patch=1)",
         "diffusers": "diffusers UNet2DModel", "ddpm-pytorch": "denoising-diffusion-pytorch Unet"}
OVERRIDES = {"unet": [], "unet-patch1": ["model.patch=1"], "diffusers": ["model.backbone=diffusers"],
             "ddpm-pytorch": ["model.backbone=ddpm-pytorch"]}


def train_flops(overrides: list[str], batch_size: int) -> tuple[int, int]:
    """(FLOPs of one training step's forward and backward at batch_size, parameters), counted on
    MNIST-shaped random images with the run's own loss."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from genlab.config import resolve
    from genlab.engine.run import build_model

    cfg = resolve("ddpm-mnist", overrides=overrides + ["model.channels=1", "model.image_size=28"])
    model = build_model(cfg)
    x = torch.rand(batch_size, 1, 28, 28) * 2 - 1
    # the math attention kernel: the flop counter does not know the CPU flash kernel (it would count 0)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        model.loss({"x": x})["loss"].backward()
    return fc.get_total_flops(), sum(p.numel() for p in model.parameters())


def run_backbone(backbone: str, marks: list[float], n: int, seed: int, smoke: bool) -> dict:
    over = OVERRIDES[backbone] + (["train.batch_size=16", "train.log_every=5"] if smoke else [])
    from genlab.config import resolve

    batch = resolve("ddpm-mnist", overrides=over).train.batch_size
    flops, params = train_flops(over, batch)  # before training: a failure here costs no training time
    run_dir = fresh_run_dir(f"ddpm-mnist-{backbone}{'-smoke' if smoke else ''}")
    t0 = time.time()
    res, ckpts, steps = train_with_marks("ddpm-mnist", run_dir, marks, seed, overrides=over)
    train = {"marks": marks, "checkpoints": ckpts, "steps": steps, "train_seconds": round(res.state.elapsed, 1),
             "wall_seconds": round(time.time() - t0, 1)}
    ips = mean_train_throughput(run_dir) or batch * res.state.step / res.state.elapsed
    rows = [{"minutes": row["minutes"], "step": row["step"], "fid": row["fid"], "n": n}
            for row, _ in evaluate_marks(backbone, run_dir, train, n, seed, metrics=["fid"], extractor="lenet-mnist")]
    return {"backbone": backbone, "params": params, "batch_size": batch, "train_flops_per_step": flops,
            "ms_per_step": 1000 * batch / ips, "images_per_s": ips, "train": train, "fid": rows,
            "overrides": over}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbones", nargs="+", choices=list(NAMES), default=list(NAMES))
    ap.add_argument("--minutes", nargs="+", type=float, default=[15.0, 30.0])
    ap.add_argument("--n", type=int, default=10_000, help="samples per FID")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="0.2-minute budgets and 200 samples; results to benchmarks/runs")
    ap.add_argument("--render-only", action="store_true")
    a = ap.parse_args()
    name = "diffusion-backbones-smoke" if a.smoke else "diffusion-backbones"
    folder = RUNS if a.smoke else RESULTS
    path = folder / f"{name}.json"

    def save(rows: dict) -> None:
        """Merge `rows` into the results file and re-render it (another process may have added rows)."""
        with results_lock(name):
            d = json.loads(path.read_text()) if path.is_file() else {"benchmark": "diffusion-backbones", "rows": {}}
            d["rows"].update(rows)
            write_results(name, d, render(d), folder)

    if a.render_only:
        save({})
        return
    marks, n = ([0.1, 0.2], 200) if a.smoke else (sorted(a.minutes), a.n)
    for b in a.backbones:
        m = machine_info()  # per network: its own date and matmul peak
        row = run_backbone(b, marks, n, a.seed, a.smoke)
        save({b: {**row, "machine": m, "command": pinned_command()}})


def render(d: dict) -> str:
    rows = [d["rows"][b] for b in NAMES if b in d["rows"]]
    if not rows:
        return "# diffusion backbones at matched work\n\n(no rows yet)\n"
    marks = sorted({r["minutes"] for row in rows for r in row["fid"]})
    base = d["rows"].get("unet")
    head = " | ".join(f"FID at {m:g} min" for m in marks)
    ns = sorted({r["n"] for row in rows for r in row["fid"]})
    n_text, mixed = " or ".join(f"{n:,}" for n in ns), len(ns) > 1
    bias = " (the FID of fewer samples is biased upwards: compare rows of the same N only)" if ns != [10_000] else ""
    out = ["# Diffusion UNets at matched work\n",
           "Command: `.venv/bin/python benchmarks/diffusion_backbones.py` (see its docstring). Every network is "
           "trained by genlab's engine with ddpm-mnist's settings (v-prediction, cosine schedule, batch, optimiser, "
           "EMA) and sampled with its DPM-Solver++ 20 steps; only `model.backbone` differs. FID: lenet-mnist "
           f"features of {n_text} samples against the MNIST test set{bias}. All see 28x28 images; genlab's ddpm-mnist "
           "UNet works at 14x14 after its 2x2 patch stem"
           + (" (the patch-1 row is the same UNet without it)" if "unet-patch1" in d["rows"] else "")
           + ". FLOPs: forward and backward of one training batch, counted by torch.utils.flop_counter with the math "
           "attention kernel. ms per step: the mean of the training log (data loading and the optimiser "
           "included).\n",
           f"| backbone | parameters | training GFLOP per step | ms per step | GFLOP/s (of the fp32 matmul peak) | "
           f"{head} |", "|---|---|---|---|---|" + "---|" * len(marks)]
    for r in rows:
        fids = {f["minutes"]: f for f in r["fid"]}
        cells = " | ".join(f"{fids[m]['fid']:.2f} (step {fids[m]['step']:,}" + (f", N {fids[m]['n']:,})" if mixed else ")")
                           if m in fids else "-" for m in marks)
        rate = r["train_flops_per_step"] / r["ms_per_step"] / 1e6
        rel = f" ({r['train_flops_per_step'] / base['train_flops_per_step']:.2f}x)" if base and r is not base else ""
        out.append(f"| {NAMES[r['backbone']]} | {r['params']:,} | {r['train_flops_per_step'] / 1e9:.2f}{rel} | "
                   f"{r['ms_per_step']:.0f} | {rate:.1f} ({rate / r['machine']['matmul_fp32_gflops']:.0%}) | {cells} |")
    out.append("")
    for r in rows:
        cmd = f"- command: `{r['command']}`\n" if "command" in r else ""
        out.append(f"### {NAMES[r['backbone']]}\n\n{cmd}{machine_lines(r['machine'])}- batch {r['batch_size']}, "
                   f"{r['train']['train_seconds'] / 60:.1f} min of training, overrides {' '.join(r['overrides'])}\n")
    return "\n".join(out)


if __name__ == "__main__":
    main()
