"""The molecule presets on MOSES: the MOSES table after 30 and 60 CPU minutes of training, beside
the published MOSES rows and genlab's own train-vs-test reference row.

    # one preset per core, one thread each (so a CPU minute is a minute of one core), back to back
    # with nothing else running on the machine:
    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/molecules_moses.py --preset smiles-gpt-moses
    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/molecules_moses.py --preset smiles-lstm-moses
    # the conditioned row (goal-directed generation: QED bins, success rate for the top bin):
    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/molecules_moses.py --preset smiles-lstm-moses \\
        --condition qed --skip reference
    # a rerun kept beside the preset's rows instead of replacing them (e.g. on another machine), or a
    # recipe variant (--set needs a --tag):
    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/molecules_moses.py --preset smiles-vae-moses \\
        --tag amd-epyc --skip reference
    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/molecules_moses.py --preset smiles-vae-moses \\
        --set data.kekulize=true --tag kekule --skip reference
    .venv/bin/python benchmarks/molecules_moses.py --smoke       # end to end in a few minutes

Presets: every molecule preset of genlab.presets (named *-moses, or reading SMILES/SELFIES:
smiles-gpt-moses, smiles-lstm-moses, and the SMILES VAE and graph presets once they exist),
discovered when the script starts; --preset picks some. Per preset (parts can be skipped with --skip):
  - train: the preset for max(--minutes) minutes of training time on one thread, a checkpoint kept
    when training time passes each smaller mark (`min-30`); with --condition PROP the run is trained
    with data.condition=PROP (its own row, `PRESET +PROP`);
  - eval: at every mark, `genlab evaluate` of --n molecules (default 30,000, MOSES's count; seed 0)
    against the MOSES test and scaffold-test sets: validity, unique@1k/@10k, FCD, SNN, Frag, Scaf
    (Test and TestSF), IntDiv, IntDiv2, filters, novelty, and generated molecules per second;
    conditioned runs add the success rate of the top property bin beside its base rate;
  - reference: --n training molecules (a fixed choice, seed 0) scored as if generated: the
    floor/ceiling a generator that reproduces the training distribution reaches (once per results
    file: a process skips it when the file holds the row for the same --n already).
The first run reads and validates the 1.58M MOSES training SMILES (minutes; cached), and the first
evaluation computes the statistics of the 176k-molecule test sets (cached); --condition computes
the property of every training molecule once (QED, SA: tens of minutes; cached).
Each process merges its rows into benchmarks/results/molecules-moses.json (under a file lock) and
re-renders the .md from it, naming the command and machine behind every row. --smoke writes
benchmarks/runs/molecules-moses-smoke.{json,md} instead.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

from _common import (RESULTS, RUNS, evaluate_marks, fresh_run_dir, machine_lines, merge_parts, pinned_command,
                     previous_part, results_lock, setting_key, train_of, train_with_marks, write_results)

import numpy as np

import genlab
from genlab.bench import machine_info
from genlab.config import load_config, resolve

PARTS = ("train", "eval", "reference")
NAME = "molecules-moses"
SMOKE_OVERRIDES = ["data.max_molecules=20000", "data.reference_size=1000", "train.log_every=5"]

# (column, metric name in genlab's report) of the MOSES table, in the README's order
COLUMNS = (("Valid", "validity"), ("Unique@1k", "unique_1k"), ("Unique@10k", "unique_10k"),
           ("FCD/Test", "fcd"), ("FCD/TestSF", "fcd_tsf"), ("SNN/Test", "snn"), ("SNN/TestSF", "snn_tsf"),
           ("Frag/Test", "frag"), ("Frag/TestSF", "frag_tsf"), ("Scaf/Test", "scaf"), ("Scaf/TestSF", "scaf_tsf"),
           ("IntDiv", "intdiv"), ("IntDiv2", "intdiv2"), ("Filters", "filters"), ("Novelty", "novelty"))

# The MOSES README's table (mean ± std over three seeds; GPU training, 30,000 samples), as published at
# https://github.com/molecularsets/moses/blob/ffbc4dbad1afddc38b0bcd0a68801b56524c3ca9/README.md
# in the COLUMNS order. Strings, copied as printed there.
PUBLISHED_URL = "https://github.com/molecularsets/moses/blob/ffbc4dbad1afddc38b0bcd0a68801b56524c3ca9/README.md"
PUBLISHED = {
    "Train": ("1.0", "1.0", "1.0", "0.008", "0.4755", "0.6419", "0.5859", "1.0", "0.9986", "0.9907", "0.0",
              "0.8567", "0.8508", "1.0", "1.0"),
    "CharRNN": ("0.9748±0.0264", "1.0±0.0", "0.9994±0.0003", "0.0732±0.0247", "0.5204±0.0379", "0.6015±0.0206",
                "0.5649±0.0142", "0.9998±0.0002", "0.9983±0.0003", "0.9242±0.0058", "0.1101±0.0081",
                "0.8562±0.0005", "0.8503±0.0005", "0.9943±0.0034", "0.8419±0.0509"),
    "AAE": ("0.9368±0.0341", "1.0±0.0", "0.9973±0.002", "0.5555±0.2033", "1.0572±0.2375", "0.6081±0.0043",
            "0.5677±0.0045", "0.991±0.0051", "0.9905±0.0039", "0.9022±0.0375", "0.0789±0.009", "0.8557±0.0031",
            "0.8499±0.003", "0.996±0.0006", "0.7931±0.0285"),
    "VAE": ("0.9767±0.0012", "1.0±0.0", "0.9984±0.0005", "0.099±0.0125", "0.567±0.0338", "0.6257±0.0005",
            "0.5783±0.0008", "0.9994±0.0001", "0.9984±0.0003", "0.9386±0.0021", "0.0588±0.0095", "0.8558±0.0004",
            "0.8498±0.0004", "0.997±0.0002", "0.6949±0.0069"),
    "JTN-VAE": ("1.0±0.0", "1.0±0.0", "0.9996±0.0003", "0.3954±0.0234", "0.9382±0.0531", "0.5477±0.0076",
                "0.5194±0.007", "0.9965±0.0003", "0.9947±0.0002", "0.8964±0.0039", "0.1009±0.0105",
                "0.8551±0.0034", "0.8493±0.0035", "0.976±0.0016", "0.9143±0.0058"),
    "LatentGAN": ("0.8966±0.0029", "1.0±0.0", "0.9968±0.0002", "0.2968±0.0087", "0.8281±0.0117", "0.5371±0.0004",
                  "0.5132±0.0002", "0.9986±0.0004", "0.9972±0.0007", "0.8867±0.0009", "0.1072±0.0098",
                  "0.8565±0.0007", "0.8505±0.0006", "0.9735±0.0006", "0.9498±0.0006"),
}
# The figures the issue quotes (CharRNN validity 0.96, FCD/Test 0.32; VAE 0.95, 0.25; JT-VAE 1.0, 4.4) are the
# README's earlier table, on MOSES's earlier split:
EARLIER_URL = "https://github.com/molecularsets/moses/blob/0447c9fa00a2dc487b28e826dd601343ac537c80/README.md"


def molecule_presets() -> list[str]:
    """Every preset of genlab.presets that generates molecules: named *-moses, or reading SMILES/SELFIES."""
    from genlab.data.molecules import is_molecule_config
    from genlab.presets import PRESETS

    return [name for name, p in PRESETS.items()
            if name.endswith("-moses") or is_molecule_config(SimpleNamespace(**p.tree.get("data", {})))]


def key_of(preset: str, condition: str | None, tag: str | None = None) -> str:
    """A run's row key: the preset, `+PROP` when conditioned, `[TAG]` for a run kept apart from the
    preset's own (e.g. on another machine); never a parenthesis, which opens a setting (setting_key)."""
    return preset + (f" +{condition}" if condition else "") + (f" [{tag}]" if tag else "")


def part_train(preset: str, run_dir: Path, marks: list[float], seed: int, overrides: list[str]) -> dict:
    from genlab.engine.logs import mean_throughput

    t0 = time.time()
    res, ckpts, steps = train_with_marks(preset, run_dir, marks, seed, threads=1, overrides=overrides)
    run = genlab.load(run_dir)
    rate, unit = mean_throughput(run_dir)  # tokens/s for the text models
    return {"preset": preset, "overrides": overrides, "marks": marks, "checkpoints": ckpts, "steps": steps,
            "train_seconds": round(res.state.elapsed, 1), "wall_seconds": round(time.time() - t0, 1),
            "train_throughput": None if rate is None else round(rate), "throughput_unit": unit,
            "batch_size": run.cfg.train.batch_size, "params": sum(p.numel() for p in run.model.parameters()),
            "run_dir": os.path.relpath(run_dir.resolve(), RUNS.parent.parent)}


def part_eval(key: str, run_dir: Path, train: dict, n: int, seed: int, temperature: float = 1.0,
              smiles_syntax: bool = False, marks: list[float] | None = None) -> list[dict]:
    rows = []
    for row, m in evaluate_marks(key, run_dir, train, n, seed, marks=marks, html=False, temperature=temperature,
                                 smiles_syntax=smiles_syntax):
        v = m.get("validity", {})
        gen = v.get("generation_seconds")
        row["molecules_per_s"] = round(n / gen, 1) if gen else None
        c = m.get("condition_success")
        if c:
            row["condition"] = {k: c[k] for k in ("property", "bins", "bin", "threshold", "base_rate", "validity",
                                                  "in_bin_of_valid", "n")}
        rows.append(row)
    return rows


def part_reference(preset: str, overrides: list[str], n: int, seed: int) -> dict:
    """n training molecules (rng(seed) choice of the preset's training file) scored as if generated."""
    from genlab.config import resolve
    from genlab.data.datasets import resolve_data_root
    from genlab.data.molecules import load_molecules, molecule_path, moses_references
    from genlab.evaluation.molecules import METRICS, reference_sets, score_molecules

    cfg = resolve(preset, overrides).data
    path = molecule_path(cfg, resolve_data_root(None))
    train = load_molecules(path, cfg.column, max_molecules=cfg.max_molecules).smiles
    t0 = time.time()
    pick = np.random.default_rng(seed).choice(len(train), min(n, len(train)), replace=False)
    generated = [train[i] for i in pick]
    refs = moses_references(path)
    holder = SimpleNamespace(molecules={"reference": {k: str(v) for k, v in refs.items()} if refs else "val"},
                             val_smiles=[])
    scores = score_molecules(generated, train, reference_sets(holder, cfg.reference_size), list(METRICS))
    return {"n": len(generated), "seed": seed, "train_file": str(path), "train_molecules": len(train),
            "reference_size": cfg.reference_size, "seconds": round(time.time() - t0, 1),
            **{k: v for k, (v, _) in scores.items()}}


# --------------------------------------------------------------------------- results


def _f(v, fmt: str = ".4f") -> str:
    return "-" if v is None else format(v, fmt)


def markdown(d: dict, smoke: bool = False) -> str:
    md = ["# Molecules on MOSES: genlab's presets after 30 and 60 CPU minutes\n",
          "Produced by `benchmarks/molecules_moses.py` (commands and machines below). Each preset trains on one "
          "thread for the stated minutes of training time on the MOSES training SMILES (1.58M; 5% held out for "
          "the val loss); 'CPU minutes' are minutes of one core. Metrics as MOSES defines them "
          "(genlab.metrics.molecules), on n generated molecules (MOSES: 30,000), against the MOSES test set "
          "(Test) and scaffold-test set (TestSF).\n",
          *(["**Smoke run**: tiny budgets (data.max_molecules, reference_size, n), figures meaningless.\n"]
            if smoke else []),
          *d.get("notes", [])]
    head = "| model | CPU min | steps | " + " | ".join(c for c, _ in COLUMNS) + " | gen. mol/s | n | run |"
    md += [head, "|" + "---|" * (len(COLUMNS) + 6)]
    for key, e in d.get("presets", {}).items():
        tr = train_of(d, key)
        for r in e.get("eval", {}).get("value", []):
            mins = f"{r['minutes']:g}"
            if r["checkpoint"] == "last" and tr and tr["train_seconds"] < r["minutes"] * 60 - 30:
                mins = f"{tr['train_seconds'] / 60:.1f} (steps ended)"  # the preset's steps ran out first
            cells = " | ".join(_f(r.get(m)) for _, m in COLUMNS)
            md.append(f"| {key} | {mins} | {r['step']:,} | {cells} | {_f(r.get('molecules_per_s'), ',.0f')} "
                      f"| {r['n']:,} | {e['eval']['run']} |")
    ref = d.get("reference")
    if ref:
        v = ref["value"]
        cells = " | ".join(_f(v.get(m)) for _, m in COLUMNS)
        md.append(f"| *genlab train-vs-test ({v['n']:,} training molecules, seed {v['seed']})* | - | - | {cells} "
                  f"| - | {v['n']:,} | {ref['run']} |")
    for model, figures in PUBLISHED.items():
        md.append(f"| *MOSES {model} (published)* | - | - | " + " | ".join(figures) + " | - | 30,000 | - |")
    md += ["", f"Published rows: the MOSES README's table ({PUBLISHED_URL}), GPU-trained models, mean ± std over "
               "three runs, copied as printed. Its Train row reports novelty 1.0; a set of training molecules "
               "has novelty 0 against the training set, as genlab's reference row shows. The figures quoted in "
               f"issue 27 (CharRNN validity 0.96, FCD/Test 0.32) are the README's earlier table ({EARLIER_URL}).",
           "genlab's reference row: n molecules of the training file scored as if generated (the floor of FCD "
           "and the ceiling of SNN/Frag/Scaf a model reaches by reproducing the training distribution).\n"]
    trains = [(k, e["train"]["value"], e["train"]["run"]) for k, e in d.get("presets", {}).items() if "train" in e]
    if trains:
        md += ["## Training\n", "| model | params | batch | train throughput | steps at marks | training s | wall s "
               "| run |", "|---|---|---|---|---|---|---|---|"]
        for k, t, rid in trains:
            rate = "-" if t["train_throughput"] is None else f"{t['train_throughput']:,} {t['throughput_unit']}"
            md.append(f"| {k} | {t['params']:,} | {t['batch_size']} | {rate} "
                      f"| {', '.join(f'{s:,}' for s in t['steps'])} | {t['train_seconds']} | {t['wall_seconds']} "
                      f"| {rid} |")
        md.append("")
    conds = [(k, r) for k, e in d.get("presets", {}).items() for r in e.get("eval", {}).get("value", [])
             if r.get("condition")]
    if conds:
        md += ["## Goal-directed generation (data.condition)\n",
               "n molecules sampled for the top property bin; success = share of all n that are valid and in "
               "that bin; base rate = share of training molecules in it (an unconditioned model matching the data).\n",
               "| model | CPU min | property | bins | success (top bin) | base rate | validity | in bin, of valid "
               "| threshold | n |", "|---|---|---|---|---|---|---|---|---|---|"]
        for k, r in conds:
            c = r["condition"]
            md.append(f"| {k} | {r['minutes']:g} | {c['property']} | {c['bins']} | {_f(r.get('condition_success'))} "
                      f"| {_f(c['base_rate'])} | {_f(c['validity'])} | {_f(c['in_bin_of_valid'])} "
                      f"| {c['threshold']} | {c['n']:,} |")
        md.append("")
    md.append("## Runs\n")
    for rid, r in sorted(d.get("runs", {}).items(), key=lambda kv: int(kv[0])):
        md += [f"Run {rid}: `{r['command']}`\n", machine_lines(r["machine"])]
    return "\n".join(md) + "\n"


def main() -> None:
    presets = molecule_presets()
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", action="append", help=f"default: every molecule preset ({', '.join(presets)}), "
                                                      "one after the other")
    ap.add_argument("--minutes", nargs="+", type=float, default=[30.0, 60.0])
    ap.add_argument("--n", type=int, default=30_000, help="molecules per evaluation (and for the reference row)")
    ap.add_argument("--condition", choices=("qed", "logp", "sa", "weight"),
                    help="train with data.condition=PROP: the conditioned row")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=1.0,
                    help="sampling temperature of the evaluation (MOSES: 1); other values are rows of their own, "
                         "e.g. `--skip train --temperature 0.8` re-scores a trained run")
    ap.add_argument("--smiles-syntax", action="store_true",
                    help="sample under SMILES's grammar (genlab evaluate --smiles-syntax): rows of their own")
    ap.add_argument("--skip", nargs="+", choices=PARTS, default=[])
    ap.add_argument("--eval-minutes", nargs="+", type=float,
                    help="evaluate only the checkpoints of these marks (default: every mark the run kept)")
    ap.add_argument("--tag", help="keep this run's rows apart from the preset's own (its key becomes "
                                  "`PRESET [TAG]`, its run directory PRESET-TAG), e.g. a rerun on another machine")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="config overrides of the preset for training (a recipe variant: needs --tag)")
    ap.add_argument("--smoke", action="store_true", help="tiny budgets and counts: checks the script end to end")
    ap.add_argument("--render-only", action="store_true", help="rewrite the .md from the .json")
    a = ap.parse_args()
    if a.set and not a.tag:
        ap.error("--set needs --tag (a name for the recipe's rows)")
    if a.tag and any(c in a.tag for c in "()[]/"):
        raise SystemExit(f"--tag {a.tag!r}: no parentheses, brackets or slashes (it names rows and a folder)")
    unknown = [p for p in a.preset or () if p not in presets]
    if unknown:
        raise SystemExit(f"not a molecule preset: {', '.join(unknown)} (choose from {', '.join(presets)})")
    folder, name = (RUNS, f"{NAME}-smoke") if a.smoke else (RESULTS, NAME)
    path = folder / f"{name}.json"
    if a.render_only:
        d = json.loads(path.read_text())
        write_results(name, d, markdown(d, a.smoke), folder)
        return
    overrides = list(SMOKE_OVERRIDES) if a.smoke else []
    if a.smoke:
        a.minutes, a.n = [0.25, 0.5], 500
    command = pinned_command()
    chosen = a.preset or presets
    reference = None
    if "reference" not in a.skip and not _has_reference(path, a.n):
        reference = part_reference(chosen[0], overrides, a.n, a.seed)
        print(json.dumps({"reference": reference}, indent=1, default=str))
        _write(path, folder, name, a.smoke, {}, reference, command)
    for preset in chosen:
        if "train" in a.skip and "eval" in a.skip:  # the reference row alone
            break
        key = key_of(preset, a.condition, a.tag)
        ov = overrides + ([f"data.condition={a.condition}"] if a.condition else []) + a.set
        run_dir = RUNS / (preset + (f"-{a.condition}" if a.condition else "") + (f"-{a.tag}" if a.tag else "")
                          + ("-smoke" if a.smoke else ""))
        saved = run_dir / "config.yaml"  # an earlier run's own config, else the one this process trains with
        cfg = load_config(saved) if "train" in a.skip and saved.is_file() else resolve(preset, ov)
        grammar = "SMILES syntax and valences" if cfg.data.kekulize else "SMILES syntax"  # valences: Kekule runs
        setting = ", ".join([f"temperature {a.temperature:g}"] * (a.temperature != 1) + [grammar] * a.smiles_syntax)
        ekey = setting_key(key, setting or None)  # rows sampled at T or under the grammar
        new: dict = {}
        if "train" not in a.skip:
            new[key] = {"train": part_train(preset, fresh_run_dir(run_dir.name), a.minutes, a.seed, ov)}
            _write(path, folder, name, a.smoke, new, None, command)  # kept if the evaluation fails
        train = new[key]["train"] if new else previous_part(path, key, "train")
        if "eval" not in a.skip:
            new = {ekey: {"eval": part_eval(ekey, run_dir, train, a.n, a.seed, a.temperature, a.smiles_syntax,
                                                  a.eval_minutes)}}
            _write(path, folder, name, a.smoke, new, None, command)
        print(json.dumps(new, indent=1, default=str))


def _write(path: Path, folder: Path, name: str, smoke: bool, new: dict[str, dict], reference: dict | None,
           command: str) -> None:
    """Merge one process's rows into the results file under a lock (the other core's process merges too)."""
    machine = machine_info()
    with results_lock(name):
        old = json.loads(path.read_text()) if path.exists() else {"benchmark": NAME}
        out = merge_parts(old, new, command, machine, top=None if reference is None else {"reference": reference})
        write_results(name, out, markdown(out, smoke), folder)


def _has_reference(path: Path, n: int) -> bool:
    """Whether the results file holds the reference row for n molecules already (it is computed once)."""
    return path.exists() and json.loads(path.read_text()).get("reference", {}).get("value", {}).get("n") == n


if __name__ == "__main__":
    main()
