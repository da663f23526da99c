"""The private presets (dp-cvae-mnist, dp-cgan-mnist, dp-diffusion-mnist, and the classical baseline
dp-gaussian-mnist) at epsilon 1, 3 and 10 (delta 1e-5) and without privacy: CPU minutes, FID (lenet-mnist), label accuracy, TSTR accuracy
(a LeNet trained on samples only, tested on the real test split, beside the same recipe on as
many real images), membership-inference AUC and TPR at low FPR, and the memorisation figures.

    # two worker processes, one per core, one thread each, nothing else running; each takes the
    # next (preset, epsilon) job nobody has taken, so the two cores share the list:
    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/privacy_mnist.py &
    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/privacy_mnist.py
    .venv/bin/python benchmarks/privacy_mnist.py --smoke     # end to end in a few minutes
    # longer schedules for the issue's aim (TSTR at epsilon 10 within 60 CPU minutes), e.g.:
    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/privacy_mnist.py --presets dp-cvae-mnist \
        --epsilons 10 inf --set train.steps=10000 train.ema_decay=0.999 --tag 60min --minutes 60 --n 10000

A job is claimed by a marker file benchmarks/runs/.privacy-mnist-JOB.claimed; delete those to rerun.

Every run trains for its preset's train.steps (the noise multiplier is set so that those steps
spend exactly the target epsilon; --minutes is only a safety cap, and a run it stops has spent
less, which the table shows). Each process merges its rows into
benchmarks/results/privacy-mnist.json (under a file lock) and re-renders the .md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time

from _common import RESULTS, RUNS, fresh_run_dir, machine_lines, pinned_command, results_lock, write_results

import torch

import genlab
from genlab.bench import machine_info
from genlab.config import resolve

PRESETS = ("dp-cvae-mnist", "dp-cgan-mnist", "dp-diffusion-mnist", "dp-gaussian-mnist")
EPSILONS = (1.0, 3.0, 10.0, math.inf)
NAME = "privacy-mnist"


def job_name(preset: str, eps: float, tag: str = "") -> str:
    return f"{preset}-eps{'inf' if math.isinf(eps) else f'{eps:g}'}{'-' + tag if tag else ''}"


def claim(job: str) -> bool:
    """Take `job` for this process unless another process has (a marker file, created atomically)."""
    RUNS.mkdir(parents=True, exist_ok=True)
    try:
        with open(RUNS / f".{NAME}-{job}.claimed", "x") as f:
            f.write(str(os.getpid()))
        return True
    except FileExistsError:
        return False


def run_job(preset: str, eps: float, a: argparse.Namespace) -> dict:
    job = job_name(preset, eps, a.tag)
    run_dir = fresh_run_dir(f"{NAME}/{job}")
    sets = ["privacy.epsilon=null"] if math.isinf(eps) else [f"privacy.epsilon={eps}"]
    sets += a.set
    t0 = time.time()
    steps = None if a.steps is None else min(a.steps, resolve(preset, sets).train.steps)  # one-pass fits: 1
    res = genlab.train(preset, run_dir, overrides=sets, minutes=a.minutes, seed=0, steps=steps,
                       threads=torch.get_num_threads())
    train_wall = time.time() - t0
    ckpt = json.loads(sorted((run_dir / "checkpoints").glob("step-*.json"))[-1].read_text())
    dp = ckpt.get("privacy")
    row = {"preset": preset, "tag": a.tag, "sets": a.set, "target_epsilon": None if math.isinf(eps) else eps,
           "steps": res.state.step, "batch_size": genlab.load(run_dir).cfg.train.batch_size,
           "stop_reason": res.state.stop_reason, "cpu_minutes": round(res.state.elapsed / 60, 2),
           "train_wall_s": round(train_wall, 1),
           "epsilon": None if dp is None else round(dp["epsilon"], 3),
           "noise_multiplier": None if dp is None else round(dp["noise_multiplier"], 4),
           "run_dir": os.path.relpath(run_dir.resolve(), RUNS.parent.parent)}
    t0 = time.time()
    from genlab.evaluation import evaluate

    report = evaluate(run_dir, n=a.n, metrics=["fid", "label_accuracy", "tstr"], seed=0, html=True)
    m = report["metrics"]
    row.update(fid=round(m["fid"]["value"], 2), label_accuracy=round(m["label_accuracy"]["value"], 4),
               n=a.n, tstr=round(m["tstr"]["value"], 4), tstr_real=round(m["tstr"]["real_baseline"], 4),
               eval_s=round(time.time() - t0, 1))
    t0 = time.time()
    from genlab.evaluation.privacy import run_audit

    audit = run_audit(run_dir, members=a.members, samples=a.samples, seed=0)
    row["audit"] = audit_figures(audit)
    row["audit_s"] = round(time.time() - t0, 1)
    return row


def audit_figures(audit: dict) -> dict:
    """The membership and memorisation figures the table shows, from audit.json's layout."""
    out = {name: {"auc": e["auc"], "tpr_1pct": e["tpr_at_fpr_0.01"], "tpr_01pct": e["tpr_at_fpr_0.001"]}
           for name, e in audit["membership"]["attacks"].items()}
    pix = audit["memorisation"]["spaces"]["pixel"]
    out["memorisation"] = {"near_copies": pix.get("near_copies"), "exact_copies": pix["exact_copies"],
                           "heldout_near_copies": pix.get("heldout", {}).get("near_copies")}
    return out


def merge(old: dict, rows: list[dict], command: str, machine: dict) -> dict:
    data = old or {"rows": {}}
    for r in rows:
        data["rows"][job_name(r["preset"], r["target_epsilon"] or math.inf, r.get("tag", ""))] = {
            **r, "command": command, "machine": machine}
    return data


def samples_n(r: dict) -> int:
    """TSTR's N of a row: recorded, or (rows written before it was) read from the row's command."""
    if r.get("n"):
        return r["n"]
    args = shlex.split(r["command"])
    return int(args[args.index("--n") + 1]) if "--n" in args else 1000  # 1000: the --n default


def batch_of(r: dict) -> int:
    """The row's batch size: recorded, or the preset's with the row's --set overrides."""
    return r.get("batch_size") or resolve(r["preset"], r.get("sets") or []).train.batch_size


def fmt(v, spec="{:.3f}"):
    return "-" if v is None else spec.format(v)


def render(data: dict) -> str:
    rows = sorted(data["rows"].values(), key=lambda r: (PRESETS.index(r["preset"]) if r["preset"] in PRESETS else 9,
                                                        bool(r.get("tag")), r["target_epsilon"] or math.inf))
    out = ["# Private training on MNIST: quality, utility and leakage at epsilon 1, 3, 10 and without privacy",
           "",
           "Produced by `benchmarks/privacy_mnist.py` (commands and machines below). delta = 1e-5 for every",
           "private run; epsilon is the accountant's (RDP) after the run's steps. FID in the lenet-mnist feature",
           "space and label accuracy over the row's n samples (FID grows as n shrinks); label accuracy: the",
           "shipped LeNet's agreement with the requested class; TSTR: a LeNet trained",
           "on the model's labelled samples only, tested on the 10,000 real test images, beside the same recipe",
           "trained on as many real training images. Membership inference: members are training images,",
           "non-members held-out validation images; AUC 0.5 is chance. Memorisation: generated samples' nearest",
           "training image in pixels; a near copy is one at under 1/3 of the distance to the second nearest,",
           "with the share among held-out real images beside it (see `genlab audit`). `dp-gaussian-mnist` is",
           "not trained by DP-SGD: it is fitted in one pass over all training images (its batch is the pass's",
           "chunk size, its one step the fit) and sigma is that of each of its five Gaussian-mechanism releases.",
           "",
           "| preset | target eps | eps spent | sigma | batch | steps | CPU min | FID | label acc | samples n | TSTR | real, same n |"
           " MIA loss AUC | TPR@1% | TPR@0.1% | MIA distance AUC | near copies (held-out real) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        au = r.get("audit", {})
        loss, dist, mem = au.get("loss", {}), au.get("distance", {}), au.get("memorisation", {})
        name = r["preset"] + (f" ({' '.join(r['sets'])})" if r.get("sets") else "")
        out.append(f"| {name} | {fmt(r['target_epsilon'], '{:g}') if r['target_epsilon'] else 'none'} | "
                   f"{fmt(r['epsilon'], '{:.2f}')} | {fmt(r['noise_multiplier'], '{:.3f}')} | {batch_of(r)} | {r['steps']} | "
                   f"{r['cpu_minutes']:.1f} | {fmt(r.get('fid'), '{:.2f}')} | {fmt(r.get('label_accuracy'), '{:.1%}')} | {samples_n(r):,} | "
                   f"{fmt(r.get('tstr'), '{:.1%}')} | {fmt(r.get('tstr_real'), '{:.1%}')} | "
                   f"{fmt(loss.get('auc'))} | {fmt(loss.get('tpr_1pct'))} | {fmt(loss.get('tpr_01pct'))} | "
                   f"{fmt(dist.get('auc'))} | {fmt(mem.get('near_copies'), '{:.1%}')} "
                   f"({fmt(mem.get('heldout_near_copies'), '{:.1%}')}) |")
    out += ["", "## Commands and machines", ""]
    seen = set()
    for r in rows:
        key = (r["command"], r["machine"]["date"][:10])
        if key in seen:
            continue
        seen.add(key)
        out += [f"`{r['command']}`", "", machine_lines(r["machine"])]
    out += ["Runs: `benchmarks/runs/privacy-mnist/` (not in git): each run's report.html and audit.html.",
            "", "Re-render this page from the .json: `.venv/bin/python benchmarks/privacy_mnist.py --render`."]
    return "\n".join(out) + "\n"


def main() -> None:
    global NAME
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    p.add_argument("--epsilons", nargs="+", type=float, default=list(EPSILONS), help="inf: without privacy")
    p.add_argument("--n", type=int, default=1000, help="samples for FID, label accuracy and TSTR")
    p.add_argument("--members", type=int, default=500, help="members (and as many non-members) attacked")
    p.add_argument("--samples", type=int, default=1000, help="samples for the distance attack and memorisation")
    p.add_argument("--minutes", type=float, default=12.0, help="safety cap on each run's training minutes")
    p.add_argument("--steps", type=int, default=None, help="override the presets' steps (smoke runs)")
    p.add_argument("--set", nargs="*", default=[], help="extra --set overrides for every run (e.g. a longer "
                   "schedule: train.steps=10000); give them a --tag")
    p.add_argument("--tag", default="", help="names these runs apart from the preset's own (rows are keyed by "
                   "preset, epsilon and tag)")
    p.add_argument("--smoke", action="store_true", help="a few steps and small n: checks the pipeline end to end")
    p.add_argument("--render", action="store_true", help="only re-render the .md from the .json")
    a = p.parse_args()
    if a.render:
        data = json.loads((RESULTS / f"{NAME}.json").read_text())
        write_results(NAME, data, render(data))
        return
    if a.smoke:
        NAME = "privacy-mnist-smoke"
        a.steps, a.n, a.members, a.samples = 4, 200, 100, 200
    command = pinned_command()
    machine = machine_info()
    for preset in a.presets:
        for eps in a.epsilons:
            if not claim(job_name(preset, eps, a.tag)):
                continue
            print(f"== {job_name(preset, eps, a.tag)}", file=sys.stderr, flush=True)
            row = run_job(preset, eps, a)
            with results_lock(NAME):  # the other core's process merges too
                path = RESULTS / f"{NAME}.json"
                old = json.loads(path.read_text()) if path.exists() else None
                data = merge(old, [row], command, machine)
                write_results(NAME, data, render(data))


if __name__ == "__main__":
    main()
