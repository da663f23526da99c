"""Which sampler to draw a trained image-diffusion run with: FID (lenet-mnist, against the 10,000
MNIST test images) of N samples of one checkpoint under each sampler setting SAMPLER:STEPS:ETA
(`genlab sample --sampler SAMPLER --sampling-steps STEPS --eta ETA`), with samples/s.

    .venv/bin/genlab train ddpm-mnist --minutes 30 --threads 1 --out RUN_DIR
    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/diffusion_samplers.py RUN_DIR --n 2000
    .venv/bin/python benchmarks/diffusion_samplers.py RUN_DIR --settings ddpm:1000:1 --n 2000

Every setting draws from the same seed; the FID of N samples is biased upwards at small N, so
compare rows of the same N only (benchmarks/results/diffusion-mnist.md has the 10,000-sample
figures of its own run). Rows are merged into benchmarks/results/diffusion-samplers.json as each
finishes (a rerun of the same checkpoint, setting and N replaces the row) and the .md is
re-rendered from it, with the command and machine of every run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import RESULTS, machine_lines, next_run_id, pinned_command, results_lock, write_results

import genlab
from genlab.bench import machine_info
from genlab.engine.checkpoint import atomic_write_json
from genlab.metrics.features import get_extractor
from genlab.metrics.sample_quality import FeatureSet, fid

NAME = "diffusion-samplers"
DEFAULT = ["dpmpp:20:0", "dpmpp:20:1", "dpmpp:50:0", "dpmpp:50:1", "ddim:50:0", "ddim:50:1", "ddim:100:1",
           "ddim:250:1"]
NAMES = {"ddpm": "DDPM", "ddim": "DDIM", "dpmpp": "DPM-Solver++(2M)"}


def parse_setting(text: str, model) -> tuple[str, int, float]:
    """SAMPLER:STEPS:ETA, checked by the model as `genlab sample` checks its flags (before any sampling)."""
    from genlab.errors import ConfigError

    parts = text.split(":")
    try:
        sampler, steps, eta = parts[0], int(parts[1]), float(parts[2])
        if len(parts) != 3:
            raise ValueError
        model.sampling_options(sampler, steps, None, eta)
    except (ValueError, IndexError, ConfigError) as e:
        raise SystemExit(f"--settings: {text!r} is not SAMPLER:STEPS:ETA with SAMPLER one of {', '.join(NAMES)} "
                         f"(e.g. dpmpp:20:1){': ' + str(e) if isinstance(e, ConfigError) else ''}") from None
    return sampler, steps, eta


def describe(sampler: str, steps: int, eta: float) -> str:
    if sampler == "dpmpp":
        return f"{NAMES[sampler]} {steps}" + (" SDE" if eta == 1 else f", eta {eta:g}" if eta else "")
    return f"{NAMES[sampler]} {steps}" + ("" if sampler == "ddpm" else f", eta {eta:g}")


def checkpoint_of(run) -> dict:
    """What the rows were drawn from: the run, its step and its training minutes, CPU and threads."""
    st = run.checkpoint.state["state"]
    man = json.loads((run.run_dir / "manifest.json").read_text())
    return {"run_dir": str(run.run_dir), "preset": run.cfg.preset,
            "step": st["step"], "train_minutes": round(st["elapsed"] / 60, 1), "cpu": man.get("cpu_model"),
            "threads": man.get("threads"), "amp": st.get("amp"),
            "trained_by": " ".join(["genlab", *man["command_line"][1:]])}


def merge(old: dict, rows: list[dict], ckpt: dict, command: str, machine: dict, rid: str) -> dict:
    """old + rows of run `rid`; a row of the same checkpoint, setting and N replaces the old one."""
    key = lambda r: (r["run_dir"], r["step"], r["setting"], r["n"])  # noqa: E731
    new = [{**ckpt, **r, "run": rid} for r in rows]
    fresh = {key(r) for r in new}
    out_rows = [r for r in old.get("rows", []) if key(r) not in fresh] + new
    runs = {**old.get("runs", {}), rid: {"command": command, "machine": machine}}
    cited = {r["run"] for r in out_rows}
    return {"benchmark": NAME, "rows": out_rows, "runs": {k: v for k, v in runs.items() if k in cited},
            "last_run": max(int(rid), old.get("last_run", 0))}


def markdown(d: dict) -> str:
    md = ["# Samplers for a trained diffusion run: FID against network evaluations\n",
          "Produced by `benchmarks/diffusion_samplers.py` (commands and machines below). FID (lenet-mnist) of N "
          "samples of one checkpoint, all from seed 0, against the 10,000 MNIST test images; the FID of N "
          "samples is biased upwards at small N, so compare rows of the same N. 'eta' is the fresh noise per "
          "step: DDIM at eta 1 is DDPM's ancestral sampler on the strided steps; DPM-Solver++(2M) SDE is its "
          "stochastic form (Lu et al. 2022) at eta 1.\n"]
    groups: dict[tuple, list[dict]] = {}
    for r in d["rows"]:
        groups.setdefault((r["run_dir"], r["step"]), []).append(r)
    for (run_dir, step), rows in groups.items():
        c = rows[0]
        md.append(f"## {c['preset'] or run_dir} at step {step:,} ({c['train_minutes']:g} training minutes on "
                  f"{c['threads']} thread(s) of {c['cpu']}, amp {c['amp']})\n")
        md.append(f"Trained by `{c['trained_by']}`.\n")
        md.append("| sampler | steps | eta | N | FID | samples/s | run |")
        md.append("|---|---|---|---|---|---|---|")
        order = list(NAMES)
        for r in sorted(rows, key=lambda r: (-r["n"], order.index(r["sampler"]), r["steps"], r["eta"])):
            md.append(f"| {describe(r['sampler'], r['steps'], r['eta'])} | {r['steps']} | {r['eta']:g} | "
                      f"{r['n']:,} | {r['fid']:.2f} | {r['samples_per_s']:.1f} | {r['run']} |")
        md.append("")
    md.append("## Runs\n")
    for rid, v in sorted(d["runs"].items(), key=lambda kv: int(kv[0])):
        md.append(f"Run {rid}: `{v['command']}`\n")
        md.append(machine_lines(v["machine"]))
    return "\n".join(md) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", nargs="?", help="a trained image-diffusion run (e.g. of ddpm-mnist)")
    ap.add_argument("--checkpoint", default="last")
    ap.add_argument("--n", type=int, default=2000, help="samples per setting")
    ap.add_argument("--settings", nargs="+", default=DEFAULT, metavar="SAMPLER:STEPS:ETA")
    ap.add_argument("--render-only", action="store_true", help="rewrite the .md from the .json")
    a = ap.parse_args()
    path = RESULTS / f"{NAME}.json"
    if a.render_only:
        d = json.loads(path.read_text())
        write_results(NAME, d, markdown(d))
        return
    if not a.run_dir:
        ap.error("give the run directory to sample (or --render-only)")
    run = genlab.load(Path(a.run_dir), a.checkpoint)
    if run.cfg.model_name != "diffusion":
        raise SystemExit(f"{a.run_dir} is a {run.cfg.model_name} run; this benchmark samples image-diffusion runs")
    settings = [parse_setting(s, run.model) for s in a.settings]
    ckpt = checkpoint_of(run)
    ext = get_extractor("lenet-mnist")
    real = FeatureSet()
    real.update(ext(run.data().test_x)[0])
    command, machine = pinned_command(), machine_info()
    with results_lock(NAME):  # reserve the run id now: a second process started meanwhile gets the next one
        old = json.loads(path.read_text()) if path.exists() else {"benchmark": NAME, "rows": [], "runs": {}}
        rid = next_run_id(old)
        atomic_write_json(path, {**old, "last_run": int(rid)})
    for sampler, steps, eta in settings:
        t0 = time.perf_counter()
        images, _ = run.sample(a.n, seed=0, sampler=sampler, steps=steps, eta=eta)
        secs = time.perf_counter() - t0
        fs = FeatureSet()
        fs.update(ext(images)[0])
        row = {"setting": f"{sampler}:{steps}:{eta:g}", "sampler": sampler, "steps": steps, "eta": eta, "n": a.n,
               "fid": fid(real, fs), "samples_per_s": a.n / secs, "seconds": round(secs, 1)}
        print(f"{describe(sampler, steps, eta)}: FID {row['fid']:.2f} (N={a.n:,}), {row['samples_per_s']:.1f} "
              "samples/s", flush=True)
        with results_lock(NAME):
            old = json.loads(path.read_text()) if path.exists() else {}
            d = merge(old, [row], ckpt, command, machine, rid)
            write_results(NAME, d, markdown(d))


if __name__ == "__main__":
    main()
