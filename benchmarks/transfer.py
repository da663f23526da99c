"""Learning from less (issue 28) on CPU: fine-tuning and LoRA, semi-supervised M2, self-supervised
pretraining, each at a stated CPU budget.

    # one process per core, one thread each, nothing else running (about an hour each):
    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/transfer.py --parts m2-100
    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/transfer.py --parts finetune,probe,m2-600,m2-1000
    # tiny budgets end to end (results and runs under /tmp/genlab-transfer-smoke)
    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/transfer.py --smoke

Parts (`--parts`, comma-separated):

finetune: 1,000 Fashion-MNIST training images (`ddpm-fashion --set data.train_size=1000`), three
runs of --ft-minutes (10) each, measured at half the budget and at the end: from scratch; fully
fine-tuned from the shipped MNIST diffusion model (`--init-from demo:ddpm-mnist`); LoRA adapters
(rank --lora-rank, 8) on that model's linear and conv layers. Same recipe (the preset's: Adam 1e-3,
EMA 0.999, cosine decay over the time budget) for all three; the pretraining's own CPU time is not
counted (it is the shipped demo's). FID in lenet-fashion's feature space of --n samples (2,000,
DPM-Solver++ 20 steps) against the 10,000 test images, beside the same FID of --n real training
images (the floor at this N) and of the 1,000 images the runs train on. Trainable parameters and
checkpoint sizes (weights only, and the whole checkpoint file with optimiser and EMA state).

m2-100, m2-600, m2-1000: `semi-vae-mnist` (M2, Kingma et al. 2014) with 100 / 600 / 1,000 labels
for --m2-minutes (60 for 100 labels, --m2-short-minutes, 15, for the others), the classifier's
test error on the 10,000 MNIST test images at the marks, beside the published M2 figures.
m2-100-of-200: the same with only 200 training images (100 labelled), --m2-short-minutes: what the
unlabelled images add.

probe: the pretext presets `rotation-mnist` and `masked-mnist` trained --pretext-minutes (5)
each; the linear probe (`genlab evaluate RUN --metrics probe probe_random --probe-labels N`: a
logistic regression on the frozen encoder's features of N class-balanced labelled training images,
tested on the 10,000 test images) with the pretrained encoder and with a randomly initialised one,
for N in --probe-labels (100, 1,000), averaged over --probe-seeds (5) seeds.

Results are merged into benchmarks/results/transfer.{json,md} part by part (under a file lock),
so the parts can run in separate processes; the Markdown names the command and the machine (CPU
model, threads, matmul peak) behind each part.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import time
from pathlib import Path

from _common import RESULTS, RUNS, machine_lines, mean_train_throughput, pinned_command, train_with_marks

import torch

import genlab
from genlab.bench import machine_info
from genlab.engine import checkpoint as ckpt
from genlab.evaluation import evaluate

NAME = "transfer"
PUBLISHED_M2 = {100: 11.97, 600: 4.94, 1000: 3.60}  # Kingma et al. 2014, Table 1, M2 test error %


def log(msg: str) -> None:
    print(f"[{NAME} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def train_marked(preset: str, run_dir: Path, minutes: float, a, overrides: list[str]):
    """`preset` trained for `minutes` (time alone: --steps lifted) with a checkpoint kept at half."""
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    t0 = time.time()
    res, ckpts, steps = train_with_marks(preset, run_dir, [minutes / 2, minutes], a.seed, steps=10**9,
                                         overrides=overrides)
    log(f"{run_dir.name}: {res.state.step} steps in {time.time() - t0:.0f} s")
    return ckpts, steps


def sizes(run_dir: Path) -> dict:
    """Parameters (all, and those the checkpoint holds: the trained ones) and the bytes of the newest
    checkpoint (weights only / the whole file with optimiser and EMA state)."""
    model = genlab.load(run_dir).model
    buffers = {f"model.{k}" for k, _ in model.named_buffers()}
    c = ckpt.latest_valid(run_dir / "checkpoints")
    weights = {k: v for k, v in c.tensors.items() if k.startswith("model.")}
    return {"params": sum(p.numel() for p in model.parameters()),
            "trainable_params": sum(v.numel() for k, v in weights.items() if k not in buffers),
            "weight_bytes": sum(v.numel() * v.element_size() for v in weights.values()),
            "checkpoint_bytes": ckpt.tensor_file(run_dir / "checkpoints", c.name).stat().st_size}


# --------------------------------------------------------------------------- fine-tuning and LoRA


def run_finetune(a) -> dict:
    from genlab.config import DataConfig
    from genlab.data.datasets import load_image_data
    from genlab.metrics.features import get_extractor
    from genlab.metrics.sample_quality import FeatureSet, fid

    base = ["data.train_size=1000"] + a.overrides
    variants = {"scratch": base, "finetune": base + ["train.init_from=demo:ddpm-mnist"],
                f"lora-r{a.lora_rank}": base + ["train.init_from=demo:ddpm-mnist", f"train.lora_rank={a.lora_rank}"]}
    rec = {"minutes": a.ft_minutes, "n": a.n, "seed": a.seed, "variants": {}}
    for name, over in variants.items():
        run_dir = a.runs / f"ddpm-fashion-1k-{name}"
        ckpts, steps = train_marked("ddpm-fashion", run_dir, a.ft_minutes, a, over)
        rows = []
        for m, ck, step in zip([a.ft_minutes / 2, a.ft_minutes], ckpts, steps):
            rep = evaluate(run_dir, n=a.n, checkpoint=ck, metrics=["fid"], extractor="lenet-fashion", seed=a.seed,
                           out=run_dir / f"report-{ck}.json", html=False)
            rows.append({"minutes": m, "step": step, "fid": rep["metrics"]["fid"]["value"]})
            log(f"{name} at {m:g} min (step {step}): FID {rows[-1]['fid']:.2f}")
        rec["variants"][name] = {"overrides": over, "rows": rows, **sizes(run_dir),
                                 "images_per_s": mean_train_throughput(run_dir)}
    # floors: real images in the same feature space, at the same N
    ext = get_extractor("lenet-fashion")
    data = load_image_data(DataConfig(dataset="fashion-mnist"), a.data_root)

    def feats(x):
        fs = FeatureSet()
        fs.update(ext(x)[0])
        return fs

    test = feats(data.test_x)
    g = torch.Generator().manual_seed(a.seed)
    pick = torch.randperm(len(data.train_x), generator=g)[:a.n]
    small = load_image_data(DataConfig(dataset="fashion-mnist", train_size=1000), a.data_root).train_x
    rec["floors"] = {"real_train_fid": fid(test, feats(data.train_x[pick])), "train_1000_fid": fid(test, feats(small))}
    return rec


def md_finetune(r: dict) -> str:
    f = r["floors"]
    lines = ["## Fine-tuning against training from scratch, and LoRA (1,000 Fashion-MNIST images)\n",
             f"`ddpm-fashion --set data.train_size=1000`, {r['minutes']:g} CPU minutes per run, measured at half the "
             f"budget and at the end; FID (lenet-fashion) of {r['n']:,} samples against the 10,000 test images "
             f"(seed {r['seed']}). The pretrained model is the shipped `demo:ddpm-mnist` (trained on MNIST; its "
             "pretraining time is not counted).\n",
             "| run | FID at half ↓ | FID at end ↓ | steps | trainable params | weights | checkpoint file | images/s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, v in r["variants"].items():
        half, end = v["rows"]
        ips = v["images_per_s"]
        lines.append(f"| {name} | {half['fid']:.2f} | {end['fid']:.2f} | {end['step']:,} | {v['trainable_params']:,} "
                     f"of {v['params']:,} | {v['weight_bytes'] / 1e6:.2f} MB | {v['checkpoint_bytes'] / 1e6:.2f} MB | "
                     f"{'-' if ips is None else f'{ips:,.0f}'} |")
    lines += [f"| real training images (floor at N={r['n']:,}) | | {f['real_train_fid']:.2f} | | | | | |",
              f"| the 1,000 training images themselves | | {f['train_1000_fid']:.2f} | | | | | |", "",
              "A LoRA run's checkpoint holds only the adapters (and buffers); loading it reads the base from the "
              "shipped demo and merges them in. All three runs use the preset's recipe (Adam, learning rate 1e-3); "
              "the LoRA run's rate was not tuned (adapters are often trained at a higher rate than full "
              "fine-tuning), and its adapters make a step about 20% slower here.\n"]
    return "\n".join(lines)


# --------------------------------------------------------------------------- semi-supervised M2


def run_m2(a, labels: int, train_size: int | None = None) -> dict:
    """semi-vae-mnist with `labels` labels (train_size: keep only that many training images, the
    check of what the unlabelled images add)."""
    minutes = a.m2_minutes if labels == 100 and train_size is None else a.m2_short_minutes
    run_dir = a.runs / (f"semi-vae-mnist-{labels}" + (f"-of-{train_size}" if train_size else ""))
    over = [f"data.num_labels={labels}"] + ([f"data.train_size={train_size}"] if train_size else []) + a.overrides
    ckpts, steps = train_marked("semi-vae-mnist", run_dir, minutes, a, over)
    rows = []
    for m, ck, step in zip([minutes / 2, minutes], ckpts, steps):
        rep = evaluate(run_dir, checkpoint=ck, metrics=["classifier_accuracy", "classifier_error"], seed=a.seed,
                       out=run_dir / f"report-{ck}.json", html=False)
        err = rep["metrics"]["classifier_error"]
        rows.append({"minutes": m, "step": step, "error": err["value"], "n": err.get("n")})
        log(f"M2 {labels} labels at {m:g} min (step {step}): test error {100 * err['value']:.2f}%")
    return {"labels": labels, "train_size": train_size, "minutes": minutes, "overrides": over, "rows": rows,
            "images_per_s": mean_train_throughput(run_dir)}


def md_m2(recs: list[dict]) -> str:
    lines = ["## Semi-supervised M2 on MNIST (`semi-vae-mnist`)\n",
             "Test error of the model's classifier q(y|x) on the 10,000 MNIST test images, at half the budget and "
             "at the end, beside Kingma et al. (2014), Table 1 (M2). Not like for like: genlab's q(y|x) is a small "
             "conv net trained on labelled images shifted by up to 2 pixels, the paper's an MLP. The last row keeps "
             "only 200 training images (100 of them labelled), to show what the 55,000 unlabelled images add "
             "through the M2 objective.\n",
             "| labels | training images | CPU minutes | error at half | error at end | steps | published M2 |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(recs, key=lambda r: (r.get("train_size") is not None, r["labels"])):
        half, end = r["rows"]
        size = f"{r['train_size']:,}" if r.get("train_size") else "55,000"
        pub = f"{PUBLISHED_M2[r['labels']]:.2f}%" if not r.get("train_size") else "-"
        lines.append(f"| {r['labels']:,} | {size} | {r['minutes']:g} | {100 * half['error']:.2f}% | "
                     f"{100 * end['error']:.2f}% | {end['step']:,} | {pub} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- self-supervised probe


def run_probe(a) -> dict:
    from statistics import mean, stdev

    from genlab.evaluation.probe import probe_run

    rec = {"minutes": a.pretext_minutes, "seeds": a.probe_seeds, "tasks": {}}
    for preset in ("rotation-mnist", "masked-mnist"):
        run_dir = a.runs / preset
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)
        res = genlab.train(preset, run_dir, minutes=a.pretext_minutes, steps=10**9, seed=a.seed, overrides=a.overrides)
        report = json.loads((run_dir / "report.json").read_text())["metrics"]
        task = {"step": res.state.step, "pretext": {k: v["value"] for k, v in report.items() if k.startswith("test_")},
                "probes": []}
        for labels in a.probe_labels:
            row = {"labels": labels}
            for name, random_init in (("pretrained", False), ("random", True)):
                v = [probe_run(run_dir, labels=labels, seed=s, random_init=random_init)["value"]
                     for s in range(a.probe_seeds)]
                row[name] = {"values": v, "mean": mean(v), "sd": stdev(v) if len(v) > 1 else 0.0}
            task["probes"].append(row)
            log(f"{preset}, {labels} labels: probe {row['pretrained']['mean']:.4f}, random {row['random']['mean']:.4f}")
        rec["tasks"][preset] = task
    return rec


def md_probe(r: dict) -> str:
    lines = ["## Self-supervised pretraining and a linear probe (MNIST)\n",
             f"Each pretext preset trained {r['minutes']:g} CPU minutes. The probe is a logistic regression on the "
             "frozen encoder's features (its mean latent, 32 wide) of n class-balanced labelled training images, "
             "tested on the 10,000 test images; the random encoder is the same architecture at its initialisation. "
             f"Mean and standard deviation over {r['seeds']} seeds (the labelled images and the random encoder "
             "change with the seed).\n",
             "| pretext task | steps | pretext test figures | labels | probe, pretrained ↑ | probe, random encoder ↑ |",
             "|---|---|---|---|---|---|"]
    for name, t in r["tasks"].items():
        pre = ", ".join(f"{k} {v:.4g}" for k, v in t["pretext"].items())
        for row in t["probes"]:
            p, q = row["pretrained"], row["random"]
            lines.append(f"| {name} | {t['step']:,} | {pre} | {row['labels']:,} | {100 * p['mean']:.2f}% "
                         f"± {100 * p['sd']:.2f} | {100 * q['mean']:.2f}% ± {100 * q['sd']:.2f} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- driver


def merge(a, part: str, record: dict) -> dict:
    """Add one part's record to the results JSON (under a lock) and re-render the Markdown."""
    path = a.results / f"{NAME}.json"
    with open(a.results / f".{NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(path.read_text()) if path.is_file() else {"parts": {}}
        data["parts"][part] = {**record, "machine": a.machine, "command": a.command}
        ckpt.atomic_write_json(path, data)
        ckpt.atomic_write_text(a.results / f"{NAME}.md", render(data))
    return data


def render(data: dict) -> str:
    parts = data["parts"]
    out = ["# Learning from less: fine-tuning, LoRA, semi-supervised and self-supervised (issue 28)\n",
           "Written by `benchmarks/transfer.py`; each part names the command and machine it ran on. Processes were "
           "pinned to one core each (`taskset`, `OMP_NUM_THREADS=1`), with nothing else running.\n"]
    sections = []
    if "finetune" in parts:
        sections.append(("finetune", md_finetune(parts["finetune"])))
    m2 = [p for k, p in parts.items() if k.startswith("m2-")]
    if m2:
        sections.append((next(k for k in parts if k.startswith("m2-")), md_m2(m2)))
    if "probe" in parts:
        sections.append(("probe", md_probe(parts["probe"])))
    for key, text in sections:
        out.append(text)
        if key.startswith("m2-"):
            for k in sorted(k for k in parts if k.startswith("m2-")):
                out.append(f"`{k}`: `{parts[k]['command']}`\n")
                out.append(machine_lines(parts[k]["machine"]))
        else:
            out.append(f"Command: `{parts[key]['command']}`\n")
            out.append(machine_lines(parts[key]["machine"]))
    return "\n".join(out)


PARTS = {"finetune": run_finetune, "probe": run_probe,
         **{f"m2-{n}": (lambda a, n=n: run_m2(a, n)) for n in (100, 600, 1000)},
         "m2-100-of-200": lambda a: run_m2(a, 100, train_size=200)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="finetune,probe,m2-100,m2-600,m2-1000,m2-100-of-200")
    p.add_argument("--ft-minutes", type=float, default=10.0)
    p.add_argument("--m2-minutes", type=float, default=60.0)
    p.add_argument("--m2-short-minutes", type=float, default=15.0)
    p.add_argument("--pretext-minutes", type=float, default=5.0)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--probe-labels", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--probe-seeds", type=int, default=5)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="overrides", nargs="+", default=[])
    p.add_argument("--smoke", action="store_true", help="tiny budgets; results under /tmp/genlab-transfer-smoke")
    a = p.parse_args()
    parts = [s for s in a.parts.split(",") if s]
    unknown = [s for s in parts if s not in PARTS]
    if unknown:
        p.error(f"unknown part {unknown[0]!r}; choose from {', '.join(PARTS)}")
    a.runs, a.results = RUNS, RESULTS
    if a.smoke:
        a.runs = a.results = Path("/tmp/genlab-transfer-smoke")
        a.ft_minutes, a.m2_minutes, a.m2_short_minutes, a.pretext_minutes, a.n = 0.2, 0.2, 0.2, 0.1, 200
    a.runs.mkdir(parents=True, exist_ok=True)
    a.data_root = os.environ.get("GENLAB_DATA")
    a.command = pinned_command()
    a.machine = machine_info()
    log(f"machine: {a.machine['cpu_model']}, {a.machine['threads']} threads; parts {parts}")
    for part in parts:
        t0 = time.time()
        record = PARTS[part](a)
        record["wall_s"] = time.time() - t0
        merge(a, part, record)
        log(f"{part} done in {record['wall_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
