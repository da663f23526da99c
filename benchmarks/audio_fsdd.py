"""wavenet-fsdd and diffwave-fsdd: spoken digits after 30 and 60 CPU minutes, judged by the shipped
`digits-fsdd` classifier, and the diffusion model's denoising and gap filling beside classical
baselines.

    # one preset per core, one thread each (so a CPU minute is a minute of one core), back to back
    # with nothing else running on the machine:
    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/audio_fsdd.py --preset wavenet-fsdd
    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/audio_fsdd.py --preset diffwave-fsdd
    .venv/bin/python benchmarks/audio_fsdd.py --smoke          # end to end in a few minutes

Per preset (parts can be skipped with --skip):
  - train: the preset for max(--minutes) minutes of training time on one thread, a checkpoint kept
    when training time passes each smaller mark (`min-30`);
  - eval: at every mark, `genlab evaluate` of --n conditional samples (balanced digits, seed 0):
    label accuracy under the judge (the judge's own test accuracy beside it), the Frechet distance
    in the judge's feature space against the test split (the train-vs-test floor beside it), the
    IS-style score (real test clips' beside it), WaveNet's exact test NLL, and the real-time factor
    of generating them; one clip per digit is written to results/ as WAV and spectrogram PNG;
  - apply (diffwave only): on --apply-n test clips, SI-SDR/PESQ/STOI of denoising at 5 dB SNR
    (white, pink, babble noise) against spectral subtraction and a Wiener filter, and SI-SDR
    inside a 50 ms gap filled by the model against linear interpolation.
Each process merges its rows into benchmarks/results/audio-fsdd.json (under a file lock) and
re-renders the .md from it, naming the command and machine behind every row.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from _common import (RESULTS, RUNS, base_key, evaluate_marks, fresh_run_dir, machine_lines,
                     mean_train_throughput, merge_parts, pinned_command, previous_part, results_lock,
                     setting_key, train_of, train_with_marks, write_results)

import torch

import genlab
from genlab.audio import write_audio
from genlab.bench import machine_info

PRESETS = ("wavenet-fsdd", "diffwave-fsdd")
PARTS = ("train", "eval", "apply")
NAME = "audio-fsdd"


def run_folder(key: str) -> str:
    """The run folder (under RUNS) of a run's row key: PRESET, or PRESET-TAG for `PRESET [TAG]`."""
    return key.replace(" [", "-").rstrip("]")


def part_train(preset: str, run_dir: Path, marks: list[float], seed: int, overrides: list[str]) -> dict:
    t0 = time.time()
    res, ckpts, steps = train_with_marks(preset, run_dir, marks, seed, threads=torch.get_num_threads(),
                                         overrides=overrides)
    run = genlab.load(run_dir)
    return {"preset": preset, "overrides": overrides, "marks": marks, "checkpoints": ckpts, "steps": steps,
            "train_seconds": round(res.state.elapsed, 1), "wall_seconds": round(time.time() - t0, 1),
            "samples_per_s": round(mean_train_throughput(run_dir)),
            "batch_size": run.cfg.train.batch_size, "audio_length": run.meta["audio_length"],
            "params": sum(p.numel() for p in run.model.parameters()),
            "run_dir": os.path.relpath(run_dir.resolve(), RUNS.parent.parent)}


def part_eval(key: str, run_dir: Path, train: dict, n: int, seed: int, out: Path,
              options: dict | None = None) -> list[dict]:
    """`options`: sampling options of the evaluation (guidance), recorded in each row. Sample files are
    named after the run's folder (PRESET or PRESET-TAG) and the options."""
    rows = []
    stem = run_dir.name + "".join(f"-{'w' if k == 'guidance' else k}{v:g}" for k, v in (options or {}).items())
    for row, _ in evaluate_marks(key, run_dir, train, n, seed, sample_options=options or None,
                                 extras=("judge_test_accuracy", "floor", "real_test", "std")):
        row["samples"] = write_samples(run_dir, row["checkpoint"], f"{stem}-{row['minutes']:g}min", seed, out,
                                       options)
        row["sample_options"] = options or {}
        rows.append(row)
    return rows


def write_samples(run_dir: Path, ck: str, stem: str, seed: int, out: Path, options: dict | None = None) -> str:
    """One clip per digit (seed `seed`) of checkpoint `ck` as out/audio-fsdd-STEM.wav + .png."""
    run = genlab.load(run_dir, ck)
    clips, labels = run.sample(10, seed=seed, **(options or {}))
    write_audio(out / f"{NAME}-{stem}.wav", clips, labels, run.meta["sample_rate"], nrow=10)
    return f"{NAME}-{stem}.wav"


def part_apply(run_dir: Path, n: int, seed: int) -> dict:
    from genlab.apply.audio import denoise_benchmark, inpaint_benchmark

    run = genlab.load(run_dir)
    data = run.data()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.test_x), generator=g)[:n]
    clips, labels = data.test_x[idx, 0], data.test_y[idx]
    sr = run.meta["sample_rate"]
    t0 = time.time()
    den = denoise_benchmark(run, clips, sr, snr_db=5.0, seed=seed, labels=labels)
    t1 = time.time()
    inp = inpaint_benchmark(run, clips, sr, gap_s=0.05, seed=seed, labels=labels)
    return {"n": n, "denoise": den, "denoise_seconds": round(t1 - t0, 1), "inpaint": inp,
            "inpaint_seconds": round(time.time() - t1, 1), "step": run.step}


# --------------------------------------------------------------------------- results


def _f(v, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def markdown(d: dict) -> str:
    md = ["# Spoken digits (FSDD): WaveNet and DiffWave on a CPU\n",
          "Produced by `benchmarks/audio_fsdd.py` (commands and machines below). Each preset trains on "
          "one thread for the stated minutes of training time; 'CPU minutes' are minutes of one core. "
          "Judge: the shipped `digits-fsdd` classifier (see src/genlab/weights/README.md).\n",
          *d.get("notes", [])]
    rows = []
    for preset, e in d.get("presets", {}).items():
        tr = train_of(d, preset)
        for r in e.get("eval", {}).get("value", []):
            rows.append((preset, tr, r, e["eval"]["run"]))
    if rows:
        md += ["| preset | CPU min | steps | train samples/s | label acc. (judge on real) | FD (train-test floor) "
               "| IS-style (real) | test NLL bits/sample | generation RTF | n | run |",
               "|---|---|---|---|---|---|---|---|---|---|---|"]
        for preset, tr, r, rid in rows:
            mins = f"{r['minutes']:g}"
            if r["checkpoint"] == "last" and tr and tr["train_seconds"] < r["minutes"] * 60 - 30:
                mins = f"{tr['train_seconds'] / 60:.1f} (steps ended)"  # the preset's steps ran out first
            md.append(
                f"| {preset} | {mins} | {r['step']:,} | {_f(tr and tr['samples_per_s'], ',')} "
                f"| {_f(r.get('label_accuracy'))} ({_f(r.get('label_accuracy_judge_test_accuracy'))}) "
                f"| {_f(r.get('fad'), '.2f')} ({_f(r.get('fad_floor'), '.2f')}) "
                f"| {_f(r.get('audio_is'), '.2f')} ({_f(r.get('audio_is_real_test'), '.2f')}) "
                f"| {_f(r.get('nll_bits_per_sample'))} | {_f(r.get('generation_rtf'), '.2f')} | {r['n']} | {rid} |")
        md.append("\nRTF: seconds of audio generated per second of wall time (batched, one thread). "
                  "Samples, one per digit 0-9 in order (WAV; the spectrograms are the PNG beside it):\n")
        for preset, tr, r, _ in rows:
            png = r["samples"].replace(".wav", ".png")
            md.append(f"- {preset}, {r['minutes']:g} min: [{r['samples']}]({r['samples']}) "
                      f"![spectrograms of {preset} at {r['minutes']:g} min]({png})")
        md.append("")
    for preset, e in d.get("presets", {}).items():
        ap = e.get("apply")
        if not ap:
            continue
        v, rid = ap["value"], ap["run"]
        den = v["denoise"]
        md += [f"## {preset}: denoising at {den['snr_db']:g} dB SNR and gap filling "
               f"({v['n']} test clips, model at step {v['step']:,}; run {rid})\n",
               "| noise | method | SI-SDR dB | PESQ (nb) | STOI |", "|---|---|---|---|---|"]
        for kind, methods in den["kinds"].items():
            for meth, s in methods.items():
                md.append(f"| {kind} | {meth} | {_f(s.get('si_sdr'), '.2f')} | {_f(s.get('pesq'), '.2f')} "
                          f"| {_f(s.get('stoi'), '.3f')} |")
        inp = v["inpaint"]
        gap = inp["gap"]
        md += ["", f"Gap of samples {gap[0]}-{gap[1]} in the middle of each clip (inside the gap):\n",
               "| method | SI-SDR dB (gap) | SNR dB (gap) | PESQ (nb, whole clip) | STOI (whole clip) |",
               "|---|---|---|---|---|"]
        for meth, s in inp["methods"].items():
            md.append(f"| {meth} | {_f(s.get('si_sdr'), '.2f')} | {_f(s.get('snr'), '.2f')} "
                      f"| {_f(s.get('pesq'), '.2f')} | {_f(s.get('stoi'), '.3f')} |")
        md.append(f"\nDenoising took {v['denoise_seconds']} s and gap filling {v['inpaint_seconds']} s.\n")
    md.append("## Runs\n")
    for rid, r in sorted(d.get("runs", {}).items(), key=lambda kv: int(kv[0])):
        md += [f"Run {rid}: `{r['command']}`\n", machine_lines(r["machine"])]
    return "\n".join(md) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", choices=PRESETS, action="append", help="default: both, one after the other")
    ap.add_argument("--minutes", nargs="+", type=float, default=[30.0, 60.0])
    ap.add_argument("--n", type=int, default=1000, help="conditional samples per evaluation")
    ap.add_argument("--apply-n", type=int, default=100, help="test clips for denoising and gap filling")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--guidance", type=float, help="classifier-free guidance weight of the evaluation (default: the "
                    "preset's); a row of its own, e.g. `--skip train apply --guidance 1` re-scores a trained run")
    ap.add_argument("--eta", type=float, help="stochasticity of the diffusion sampler's steps (0: the ODE, 1: the SDE "
                    "form; default: the preset's); a row of its own, like --guidance")
    ap.add_argument("--skip", nargs="+", choices=PARTS, default=[])
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="config overrides of the preset for training (a recipe variant: needs --tag)")
    ap.add_argument("--tag", help="keep this run's rows apart from the preset's own: its key becomes `PRESET [TAG]`, "
                                  "its run folder and sample files PRESET-TAG")
    ap.add_argument("--smoke", action="store_true", help="tiny budgets and counts: checks the script end to end")
    ap.add_argument("--render-only", action="store_true", help="rewrite the .md from the .json")
    ap.add_argument("--rewrite-samples", action="store_true",
                    help="with --render-only: draw the sample WAVs/PNGs of every evaluated checkpoint again")
    a = ap.parse_args()
    if a.set and not a.tag:
        ap.error("--set needs --tag (a name for the recipe's rows)")
    if a.tag and any(c in a.tag for c in "()[]/ "):
        ap.error(f"--tag {a.tag!r}: no spaces, parentheses, brackets or slashes (it names rows and files)")
    path = RESULTS / f"{NAME}.json"
    if a.render_only:
        d = json.loads(path.read_text())
        for key, e in d.get("presets", {}).items() if a.rewrite_samples else ():
            run_key = base_key(key)
            trained = d["presets"].get(run_key, {}).get("train", {}).get("run")
            folder = RUNS / run_folder(run_key)
            if "eval" not in e or trained is None or int(e["eval"]["run"]) < int(trained) or not folder.is_dir():
                continue  # evaluated from an earlier run of the preset (or a renamed row), not in its folder
            for r in e["eval"]["value"]:
                write_samples(folder, r["checkpoint"], r["samples"][len(NAME) + 1:-len(".wav")], a.seed,
                              RESULTS, r.get("sample_options"))
        write_results(NAME, d, markdown(d))
        return
    if a.eta is not None and any(not p.startswith("diffwave") for p in a.preset or PRESETS):
        ap.error("--eta is a diffusion sampler's option: give --preset diffwave-fsdd with it")
    if a.smoke:
        a.minutes, a.n, a.apply_n = [0.5, 1.0], 20, 4
    command = pinned_command()
    options = {k: v for k, v in (("guidance", a.guidance), ("eta", a.eta)) if v is not None}
    setting = ", ".join(f"{k} {v:g}" for k, v in options.items()) or None
    for preset in a.preset or PRESETS:
        key = preset + (f" [{a.tag}]" if a.tag else "")
        run_dir = RUNS / (run_folder(key) + ("-smoke" if a.smoke else ""))
        ekey = setting_key(key, setting)  # rows sampled with other options
        new: dict = {}
        if "train" not in a.skip:
            new[key] = {"train": part_train(preset, fresh_run_dir(run_dir.name), a.minutes, a.seed, a.set)}
        train = new[key]["train"] if new else previous_part(path, key, "train")
        if "eval" not in a.skip:
            new.setdefault(ekey, {})["eval"] = part_eval(ekey, run_dir, train, a.n, a.seed,
                                                         run_dir if a.smoke else RESULTS, options)
        if "apply" not in a.skip and preset.startswith("diffwave"):
            new.setdefault(key, {})["apply"] = part_apply(run_dir, a.apply_n, a.seed)
        machine = machine_info()
        if a.smoke:
            print(json.dumps(new, indent=1, default=str))
            continue
        with results_lock(NAME):  # the other core's process merges too
            old = json.loads(path.read_text()) if path.exists() else {"benchmark": NAME}
            out = merge_parts(old, new, command, machine)
            write_results(NAME, out, markdown(out))


if __name__ == "__main__":
    main()
