"""Char-level GPT on tiny Shakespeare against nanoGPT's documented CPU run, and what the
bigger `gpt-shakespeare` reaches in 30 CPU minutes.

    .venv/bin/python benchmarks/gpt_shakespeare.py                  # both parts
    .venv/bin/python benchmarks/gpt_shakespeare.py --part cpu       # gpt-shakespeare-cpu only
    .venv/bin/python benchmarks/gpt_shakespeare.py --part 30min     # gpt-shakespeare, 30 CPU minutes
    .venv/bin/python benchmarks/gpt_shakespeare.py --compare-nanogpt PATH   # nanoGPT back to back

--compare-nanogpt PATH (a nanoGPT checkout, or its bare git directory; also $NANOGPT) runs, one
after another on this machine: nanoGPT's documented CPU command (train.py with its README's
flags, on a temporary copy of the checkout, with tiny Shakespeare from GENLAB_DATA), then
`genlab train gpt-shakespeare-muon` and `genlab train gpt-shakespeare-cpu`, each as its own
process, timing the whole command. All three final models are then scored on the same 2,048
val windows of 65 characters (nanoGPT's with its own model code, benchmarks/_nanogpt_driver.py),
and generate 500 characters at batch 1 (nanoGPT: `model.generate` as its sample.py calls it).

Writes benchmarks/results/gpt-shakespeare.{json,md} (a part run alone keeps the other part's
figures). Validation loss: mean next-token cross-entropy (nats/token) over 2,048 random
windows of 64 characters of the val split (the last 10% of the text), as
`genlab evaluate --metrics val_loss` computes it; nanoGPT estimates its figure from 20 x 12
windows. MFU follows nanoGPT's `estimate_mfu` (6N + 12 L T C FLOPs per token) against the
fp32 or bf16 matmul peak measured at the start of the run (whichever autocast used).
The machine load (1-minute load average) is recorded before and after each part: other
work on the machine understates throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import RESULTS, fresh_run_dir, machine_lines, mean_train_throughput, write_results

import genlab
from genlab.bench import machine_info
from genlab.engine.device import cxx_compiler
from genlab.engine.logs import read_log
from genlab.evaluation.text import evaluate_text
from genlab.models.autoregressive.generation import SamplingConfig, generate

NANOGPT = {"val_loss": 1.8857, "seconds": 64.6, "ms_per_iter": 29, "tokens_per_s": 26_500, "gen_tokens_per_s": 651,
           "machine": "2-core Xeon (as quoted in issue 8)"}


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def flops_per_token(model) -> int:
    """nanoGPT's estimate_mfu: 6 N + 12 L T C, N = parameters without the position table."""
    c = model.cfg
    n = sum(p.numel() for p in model.parameters()) - (model.wpe.weight.numel() if model.wpe is not None else 0)
    return 6 * n + 12 * c.n_layer * c.block_size * c.n_embd


def generation_rate(model, tokenizer, n_tokens: int, use_cache: bool, repeats: int = 3) -> float:
    """Best-of-`repeats` tokens/s generating n_tokens at batch 1 from a newline."""
    prompt = torch.tensor([tokenizer.encode("\n")])
    best = 0.0
    for r in range(repeats):
        t0 = time.perf_counter()
        generate(model, prompt, n_tokens, SamplingConfig(temperature=0.8), generator=torch.Generator().manual_seed(r),
                 use_cache=use_cache)
        best = max(best, n_tokens / (time.perf_counter() - t0))
    return best


def generation_rates(model, tokenizer, n_tokens: int = 500) -> dict:
    """Batch-1 tokens/s with the KV cache (eager), without it, and compiled (`GPT.compile_decode`:
    chunks of one-token steps with their picks, when a C++ compiler is there; the compile's seconds
    beside it).
    Leaves the model compiled."""
    out = {k: round(generation_rate(model, tokenizer, n_tokens, use_cache=k == "kv_cache"))
           for k in ("kv_cache", "no_cache")}
    if cxx_compiler() is not None:
        t0 = time.perf_counter()
        model.compile_decode()
        # the compiles, on first use: the one-token step, the chunk of steps and the window refill
        generate(model, torch.tensor([tokenizer.encode("\n")]), 2 * model.cfg.block_size, SamplingConfig(temperature=0.8),
                 generator=torch.Generator().manual_seed(0))
        out["compile_seconds"] = round(time.perf_counter() - t0, 1)
        out["compiled"] = round(generation_rate(model, tokenizer, n_tokens, use_cache=True))
    return out


def part_cpu(seed: int, threads: int | None) -> dict:
    load0 = load_avg()
    run_dir = fresh_run_dir("gpt-shakespeare-cpu")
    t0 = time.time()
    res = genlab.train("gpt-shakespeare-cpu", run_dir, seed=seed, threads=threads)
    wall = time.time() - t0
    load1 = load_avg()
    run = genlab.load(run_dir)
    ev = evaluate_text(run, n=100, seed=0, metrics=None)
    tokens_per_s = mean_train_throughput(run_dir)
    fpt = flops_per_token(run.model)
    m = machine_info()
    peak = m["matmul_bf16_gflops"] if m["bf16_autocast"] else m["matmul_fp32_gflops"]
    vals = [r for r in read_log(run_dir) if r["kind"] == "val"]
    sample = "".join(run.generate("ROMEO:", 500, temperature=0.8, seed=0))
    gen = generation_rates(run.model, run.tokenizer)
    return {
        "preset": "gpt-shakespeare-cpu", "seed": seed, "machine": m, "steps": res.state.step,
        "wall_seconds": round(wall, 1), "train_seconds": round(res.state.elapsed, 1),
        "ms_per_iter": round(1000 * res.state.elapsed / res.state.step, 1),
        "train_tokens_per_s": round(tokens_per_s), "flops_per_token": fpt,
        "mfu": tokens_per_s * fpt / (peak * 1e9), "peak_used_gflops": peak,
        "val_loss": ev["val_loss"]["value"], "val_loss_tokens": ev["val_loss"]["n"],
        "val_loss_trainer_estimate": vals[-1]["loss"] if vals else None,
        "metrics": {k: v["value"] for k, v in ev.items()},
        "generation_tokens_per_s_batch1": gen,
        "sample_prompt": "ROMEO:", "sample": sample, "load_before": load0, "load_after": load1,
        "params": sum(p.numel() for p in run.model.parameters()),
    }


def part_30min(seed: int, threads: int | None, minutes: float) -> dict:
    load0 = load_avg()
    run_dir = fresh_run_dir("gpt-shakespeare-30min")
    t0 = time.time()
    res = genlab.train("gpt-shakespeare", run_dir, seed=seed, threads=threads, minutes=minutes)
    wall = time.time() - t0
    load1 = load_avg()
    run = genlab.load(run_dir)
    ev = evaluate_text(run, n=20, seed=0, metrics=["val_loss"])
    vals = [r["loss"] for r in read_log(run_dir) if r["kind"] == "val"]
    return {
        "preset": "gpt-shakespeare", "seed": seed, "budget_minutes": minutes, "steps": res.state.step,
        "stop_reason": res.state.stop_reason, "wall_seconds": round(wall, 1),
        "train_seconds": round(res.state.elapsed, 1), "train_tokens_per_s": round(mean_train_throughput(run_dir)),
        "val_loss": ev["val_loss"]["value"], "val_loss_tokens": ev["val_loss"]["n"],
        "best_val_loss_trainer_estimates": min(vals) if vals else None,
        "sample": "".join(run.generate("ROMEO:", 300, temperature=0.8, seed=0)),
        "load_before": load0, "load_after": load1, "params": sum(p.numel() for p in run.model.parameters()),
    }


def nanogpt_copy(path: Path, into: Path) -> Path:
    """A scratch copy of the user's nanoGPT (a checkout or a bare git directory) with tiny
    Shakespeare prepared by its own prepare.py from genlab's data folder."""
    tree = into / "nanoGPT"
    if (path / "train.py").is_file():
        shutil.copytree(path, tree, ignore=shutil.ignore_patterns(".git", "out*", "*.bin"))
    elif (path / "HEAD").is_file():  # a bare repository: its newest commit
        tree.mkdir()
        archive = subprocess.run(["git", "--git-dir", str(path), "archive", "HEAD"], check=True, capture_output=True)
        subprocess.run(["tar", "x", "-C", str(tree)], input=archive.stdout, check=True)
    else:
        sys.exit(f"--compare-nanogpt: {path} is neither a nanoGPT checkout (no train.py) nor a git directory")
    from genlab.data.datasets import resolve_data_root

    src = (resolve_data_root() or Path("../shared/data")) / "shakespeare" / "input.txt"
    if not src.is_file():
        sys.exit(f"--compare-nanogpt: {src} not found (set GENLAB_DATA to the shared data folder)")
    shutil.copy(src, tree / "data" / "shakespeare_char" / "input.txt")  # prepare.py downloads only without it
    subprocess.run([sys.executable, "data/shakespeare_char/prepare.py"], cwd=tree, check=True, capture_output=True)
    return tree


# genlab's runs beside nanoGPT: (row key, preset, --set overrides). All in fp32, as nanoGPT's CPU run:
# train.amp=auto's short probe of this 128-wide model's step sees bf16 within noise of fp32 here and
# has chosen either, which would make the rows' precision (and an MFU against the fp32 peak) vary.
GENLAB_RUNS = [("gpt-shakespeare-muon", "gpt-shakespeare-muon", ["train.amp=off"]),
               ("gpt-shakespeare-cpu", "gpt-shakespeare-cpu", ["train.amp=off"]),
               ("gpt-shakespeare-cpu compiled", "gpt-shakespeare-cpu", ["train.amp=off", "train.compile=true"])]

NANOGPT_CPU_FLAGS = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
                     "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4",
                     "--n_embd=128", "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0"]


def val_windows(text: str, n: int = 2048, length: int = 65, seed: int = 0) -> list[str]:
    """n random windows of `length` characters of the val split (the last 10%), fixed by seed."""
    val = text[int(len(text) * 0.9):]
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(val) - length, (n,), generator=g).tolist()
    return [val[s:s + length] for s in starts]


@torch.no_grad()
def window_loss(model, tokenizer, windows: list[str]) -> float:
    """Mean next-token cross-entropy (nats/token) of a genlab text model over the windows."""
    ids = torch.tensor([tokenizer.encode(w) for w in windows])
    total, count = 0.0, 0
    model.eval()
    for i in range(0, len(ids), 64):
        chunk = ids[i:i + 64]
        total += float(model.loss({"x": chunk[:, :-1], "y": chunk[:, 1:]})["loss"]) * chunk[:, 1:].numel()
        count += chunk[:, 1:].numel()
    return total / count


def timed(cmd: list[str], cwd: Path | None = None, env: dict | None = None) -> tuple[float, str]:
    """Run a command to completion; (wall seconds, its output). A failure stops the benchmark."""
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return wall, r.stdout + r.stderr


def part_nanogpt(path: Path, seed: int, rounds: int) -> dict:
    """nanoGPT's CPU run and genlab's two presets, back to back, scored on the same windows; then
    `rounds` rounds of batch-1 generation in fresh processes (generation_rounds)."""
    m = machine_info()
    with tempfile.TemporaryDirectory(prefix="genlab-nanogpt-") as tmp:
        tree = nanogpt_copy(path, Path(tmp))
        text_path = tree / "data" / "shakespeare_char" / "input.txt"
        windows = val_windows(text_path.read_text(), seed=seed)
        load0 = load_avg()
        wall, out = timed([sys.executable, "train.py", *NANOGPT_CPU_FLAGS], cwd=tree)
        iter_ms = [float(x) for x in re.findall(r"^iter \d+: loss [\d.]+, time ([\d.]+)ms", out, re.M)]
        evals = re.findall(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)", out, re.M)
        ng = nanogpt_driver(tree, Path(tmp), windows, new_tokens=0)  # generation: the rounds below
        c = NANOGPT_CPU_FLAGS
        T, L, C = 64, 4, 128
        ng_tokens_per_s = 12 * T / (statistics.median(iter_ms[1:]) / 1000)
        ng_fpt = 6 * ng["params_without_positions"] + 12 * L * T * C
        nano = {"command": "python train.py " + " ".join(c), "wall_seconds": round(wall, 1),
                "val_loss_windows": ng["val_loss"], "own_val_estimate": float(evals[-1][2]) if evals else None,
                "checkpoint_iter": ng["iter_num"], "median_ms_per_iter": statistics.median(iter_ms[1:]),
                "train_tokens_per_s": round(ng_tokens_per_s), "flops_per_token": ng_fpt,
                "mfu": ng_tokens_per_s * ng_fpt / (m["matmul_fp32_gflops"] * 1e9),
                "params": ng["params"], "load_before": load0}
        runs, run_dirs = {}, {}
        for name, preset, sets in GENLAB_RUNS:
            run_dir = fresh_run_dir(f"nanogpt-compare-{name.replace(' ', '-').replace('=', '-')}")
            if "train.compile=true" not in sets:  # the compiled-training run decodes as its eager twin does
                run_dirs[name] = run_dir
            load0 = load_avg()
            # a compiled run compiles into an empty inductor cache: its wall time includes a cold compile
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(Path(tmp) / f"inductor-train-{preset}")}
            wall, _ = timed([sys.executable, "-m", "genlab", "train", preset, "--out", str(run_dir), "--seed",
                             str(seed), *(["--set", *sets] if sets else [])], env=env)
            run = genlab.load(run_dir)
            st = run.checkpoint.state["state"]
            tps = mean_train_throughput(run_dir)
            fpt = flops_per_token(run.model)
            runs[name] = {
                "command": f"genlab train {preset}" + (f" --set {' '.join(sets)}" if sets else ""),
                "wall_seconds": round(wall, 1), "steps": st["step"],
                "train_seconds": round(st["elapsed"], 1), "precision": st.get("amp"),
                "val_loss_windows": window_loss(run.model, run.tokenizer, windows),
                "train_tokens_per_s": round(tps), "flops_per_token": fpt,
                "mfu": tps * fpt / (m["matmul_fp32_gflops"] * 1e9),
                "optimizer": run.cfg.train.optimizer, "batch_size": run.cfg.train.batch_size, "load_before": load0,
            }
        per_round = generation_rounds(tree, Path(tmp), run_dirs, rounds)
    nano["gen_rounds"] = per_round["nanogpt"]
    nano["gen_tokens_per_s"] = round(statistics.median(per_round["nanogpt"]))
    for name in run_dirs:
        r = runs[name]
        r["gen_rounds"] = per_round[name]
        r["gen_tokens_per_s"] = {k: round(statistics.median(x[k] for x in per_round[name]), 1)
                                 for k in per_round[name][0]}
    return {"machine": m, "seed": seed, "threads": torch.get_num_threads(), "windows": len(windows),
            "generation_rounds": rounds, "first_round_cold_compile": True, "nanogpt": nano, "genlab": runs}


def nanogpt_driver(tree: Path, tmp: Path, windows: list[str], new_tokens: int) -> dict:
    """benchmarks/_nanogpt_driver.py in a fresh process: nanoGPT's loss on `windows` (none: skip)
    and its batch-1 generation rate over `new_tokens` characters (0: skip)."""
    spec, res = tmp / "windows.json", tmp / "nanogpt.json"
    spec.write_text(json.dumps({"windows": windows, "prompt": "\n", "new_tokens": new_tokens}))
    subprocess.run([sys.executable, str(Path(__file__).parent / "_nanogpt_driver.py"), "out-shakespeare-char",
                    str(spec), str(res)], cwd=tree, check=True)
    return json.loads(res.read_text())


def generation_rounds(tree: Path, tmp: Path, run_dirs: dict[str, Path], rounds: int) -> dict[str, list]:
    """Batch-1 generation, each measurement in a fresh process, alternating nanoGPT and each genlab
    run `rounds` times: one process's rate varies by up to 2x on these VMs (where its memory and
    threads land), so the table quotes medians and keeps every round. genlab's process
    (`--generation-rates RUN OUT`) measures eager KV cache, no cache and compiled."""
    out: dict[str, list] = {"nanogpt": [], **{p: [] for p in run_dirs}}
    for _ in range(rounds):
        out["nanogpt"].append(round(nanogpt_driver(tree, tmp, [], new_tokens=500)["gen_tokens_per_s"]))
        for preset, run_dir in run_dirs.items():
            res = tmp / "genlab-rates.json"
            # every round compiles with its preset's own inductor cache, empty in round 1 (a new machine's
            # first --compile); later rounds find round 1's graphs on disk, as a user's later runs do
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp / f"inductor-{preset}")}
            subprocess.run([sys.executable, __file__, "--generation-rates", str(run_dir), str(res)], check=True, env=env)
            out[preset].append(json.loads(res.read_text()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["cpu", "30min", "both"], default="both")
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's, all cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--render-only", action="store_true", help="rewrite the .md from the existing .json")
    ap.add_argument("--gen-rounds", type=int, default=5,
                    help="--compare-nanogpt: generation rounds, each model in a fresh process per round")
    ap.add_argument("--generation-rates", nargs=2, metavar=("RUN", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--compare-nanogpt", metavar="PATH", default=os.environ.get("NANOGPT"),
                    help="a nanoGPT checkout (or $NANOGPT): run it and genlab back to back (this part only)")
    a = ap.parse_args()
    if a.generation_rates:  # one round's genlab process (generation_rounds)
        run = genlab.load(a.generation_rates[0])
        Path(a.generation_rates[1]).write_text(json.dumps(generation_rates(run.model, run.tokenizer)))
        return
    path = RESULTS / "gpt-shakespeare.json"
    d = json.loads(path.read_text()) if path.is_file() else {"benchmark": "gpt-shakespeare"}
    if not a.render_only:
        if a.threads:
            torch.set_num_threads(a.threads)
        new = {}
        if a.compare_nanogpt:
            new["nanogpt_compare"] = part_nanogpt(Path(a.compare_nanogpt), a.seed, a.gen_rounds)
        elif a.part in ("cpu", "both"):
            new["cpu"] = part_cpu(a.seed, a.threads)
        if a.part in ("30min", "both") and not a.compare_nanogpt:
            new["30min"] = part_30min(a.seed, a.threads, a.minutes)
        # re-read: the parts may run as two processes at once, each keeping the other's figures
        d = json.loads(path.read_text()) if path.is_file() else {"benchmark": "gpt-shakespeare"}
        d.update(new, nanogpt=NANOGPT)
    write_results("gpt-shakespeare", d, render(d))


def render(d: dict) -> str:
    """The results page, from the JSON alone."""
    out = ["# gpt-shakespeare benchmark\n",
           "Command: `.venv/bin/python benchmarks/gpt_shakespeare.py` (parts: `--part cpu`, `--part 30min`)\n"]
    cmp_ = d.get("nanogpt_compare")
    if cmp_:
        out.append(render_compare(cmp_))
    c = d.get("cpu")
    ref = d.get("nanogpt", NANOGPT)
    if c:
        m = c["machine"]
        g = c["generation_tokens_per_s_batch1"]
        compiled = (f"| generation, batch 1, compiled step (after {g['compile_seconds']:.0f} s compiling) "
                    f"| {g['compiled']:,} tokens/s | |\n" if "compiled" in g else "")
        out.append(f"""## gpt-shakespeare-cpu (nanoGPT's CPU shape, 2,000 iterations)

Same layers, heads, width, block, batch, iterations, dropout, AdamW settings (beta2 0.99, weight
decay 0.1 on matrices, clip 1.0) and lr (1e-3, cosine to 1e-4 over the 2,000 iterations) as
nanoGPT's documented CPU run; different: rotary position embeddings instead of a learned table,
and 20 warmup iterations instead of 100. Trained with {m['threads']} torch thread(s).

{machine_lines(m)}- machine load (1-min average) before / after training: {c['load_before']} / {c['load_after']}
  (other work on the 2 cores makes the throughput figures understated)

| figure | genlab | nanoGPT ({ref['machine']}) |
|---|---|---|
| **validation loss** after 2,000 iterations (nats/token, {c['val_loss_tokens']:,} val tokens) | **{c['val_loss']:.4f}** | {ref['val_loss']} |
| trainer's own estimate at step {c['steps']} (20 x 12 windows, like nanoGPT's) | {c['val_loss_trainer_estimate']:.4f} | |
| training time (2,000 iterations incl. periodic validation) | {c['train_seconds']:.1f} s ({c['ms_per_iter']} ms/iteration) | {ref['seconds']} s ({ref['ms_per_iter']} ms/iteration) |
| training throughput | {c['train_tokens_per_s']:,} tokens/s | {ref['tokens_per_s']:,} tokens/s |
| model FLOPs utilisation | {100 * c['mfu']:.1f}% of {c['peak_used_gflops']:.1f} GFLOP/s ({c['flops_per_token']:,} FLOPs/token) | |
| generation, batch 1, KV cache | {g['kv_cache']:,} tokens/s | |
{compiled}| generation, batch 1, no cache | {g['no_cache']:,} tokens/s | {ref['gen_tokens_per_s']} tokens/s (no cache) |
| perplexity / bits per char (val) | {c['metrics']['perplexity']:.3f} / {c['metrics']['bits_per_char']:.4f} | |
| BLEU / ROUGE-L / distinct-2 (100 held-out prompts, 128 sampled chars) | {c['metrics']['bleu']:.4f} / {c['metrics']['rouge_l']:.4f} / {c['metrics']['distinct_2']:.4f} | |

Parameters: {c['params']:,}. The no-cache path recomputes the whole context window for
every token; both paths keep the last 32-64 characters (the window jumps by half a block
when full) and produce identical text.

Sample (`genlab sample RUN --prompt "ROMEO:" --max-tokens 500 --temperature 0.8 --seed 0`):

```
{c['sample_prompt']}{c['sample']}
```
""")
    t = d.get("30min")
    if t:
        out.append(f"""## gpt-shakespeare (nanoGPT's shakespeare_char shape) within {t['budget_minutes']:g} CPU minutes

- machine load before / after: {t['load_before']} / {t['load_after']}

| figure | value |
|---|---|
| steps trained (batch 64 x 256 chars) | {t['steps']:,} (stopped by {t['stop_reason']}, {t['train_seconds'] / 60:.1f} min of training) |
| **validation loss** (nats/token, {t['val_loss_tokens']:,} val tokens) | **{t['val_loss']:.4f}** |
| best trainer estimate during the run | {t['best_val_loss_trainer_estimates']:.4f} |
| training throughput | {t['train_tokens_per_s']:,} tokens/s |

Parameters: {t['params']:,}. Sample after {t['budget_minutes']:g} minutes:

```
ROMEO:{t['sample']}
```
""")
    return "\n".join(out)


def render_compare(c: dict) -> str:
    """The back-to-back table of --compare-nanogpt."""
    n, g = c["nanogpt"], c["genlab"]
    fast, same = g["gpt-shakespeare-muon"], g["gpt-shakespeare-cpu"]
    m = c["machine"]
    rows = [("nanoGPT, its README's CPU command (AdamW, batch 12, 2,000 iterations)", n, n["gen_tokens_per_s"], None),
            ("genlab `gpt-shakespeare-muon` (Muon, batch 16, 400 steps)", fast, fast["gen_tokens_per_s"]["kv_cache"],
             fast["gen_tokens_per_s"]),
            ("genlab `gpt-shakespeare-cpu` (nanoGPT's recipe: AdamW, batch 12, 2,000 steps)", same,
             same["gen_tokens_per_s"]["kv_cache"], same["gen_tokens_per_s"])]
    if "gpt-shakespeare-cpu compiled" in g:  # runs since train.compile: every genlab run in fp32
        rows.append(("genlab `gpt-shakespeare-cpu --set train.compile=true` (its training step compiled; the wall "
                     "time includes compiling into an empty cache)", g["gpt-shakespeare-cpu compiled"], None, None))
        rows = [(name.replace("` (", "` with `train.amp=off` (", 1) if "genlab" in name else name, *rest)
                for name, *rest in rows]
    R = c.get("generation_rounds")
    rounds = (f"; median of {R} rounds, each model measured in a fresh process per round, nanoGPT and genlab "
              "alternating (every round's figure is listed below the table)" if R else "")
    chosen = {name: r.get("precision") for name, r in c["genlab"].items()}
    precisions = ("every run trains in fp32: nanoGPT as its CPU command asks, genlab told so (train.amp=off)"
                  if "gpt-shakespeare-cpu compiled" in g else
                  "all three train in fp32: nanoGPT as its CPU command asks, genlab because its train.amp=auto "
                  "probe chose fp32 for this model" if set(chosen.values()) == {"off"} else
                  "nanoGPT trains in fp32; genlab's precision: " + ", ".join(
                      f"{name} {p or 'not recorded'}" for name, p in chosen.items()) +
                  " (bf16 makes an MFU against the fp32 peak overstate)")
    lines = [f"""## Back to back with nanoGPT (`--compare-nanogpt PATH`)

One process after another on this machine, nothing else running, {c['threads']} torch threads each; the wall
time is the whole command (imports, data, training, periodic validation, checkpoints; genlab also writes its
report and sample grid). All models have nanoGPT's CPU shape (4 layers, 4 heads, 128 wide, block 64; genlab
uses rotary positions, nanoGPT a learned table). Validation loss: mean next-token cross-entropy over the same
{c['windows']:,} random val windows of 64 predicted characters for all three (nanoGPT's model scored by its own
code). Generation: 500 characters at batch 1 from a newline, temperature 0.8, best of 3 (nanoGPT:
`model.generate` with top_k 200, as its sample.py, recomputing the context window for every character;
genlab: eager with its KV cache, then `--compile` (`GPT.compile_decode`: chunks of 8 one-token steps with
their picks in one torch.compile graph; the time of the first 128 tokens, which compile it, beside), then
without the cache){rounds}.
MFU: model FLOPs (6N + 12LTC per token, nanoGPT's estimate_mfu) at the mean training throughput, against the
fp32 matmul peak measured in the same run ({m['matmul_fp32_gflops']:.0f} GFLOP/s; {precisions}).

{machine_lines(m)}
| run | wall time | vs nanoGPT | val loss | training tokens/s | MFU | generation tokens/s (batch 1) |
|---|---|---|---|---|---|---|"""]
    for name, r, gen, more in rows:
        ratio = r["wall_seconds"] / n["wall_seconds"]
        gen_s = "as the row above (the same decoding)" if gen is None else f"{gen:,} ({gen / n['gen_tokens_per_s']:.1f}x)"
        if more and "compiled" in more:
            gen_s += (f"; compiled {more['compiled']:,} ({more['compiled'] / n['gen_tokens_per_s']:.1f}x, after "
                      f"{more['compile_seconds']:.0f} s compiling)")
        if more:
            gen_s += f"; {more['no_cache']:,} without cache"
        lines.append(f"| {name} | {r['wall_seconds']:.1f} s | {ratio:.2f}x | {r['val_loss_windows']:.4f} | "
                     f"{r['train_tokens_per_s']:,} | {100 * r['mfu']:.1f}% | {gen_s} |")
    lines.append(f"""
nanoGPT's own estimate of its val loss at iteration {n['checkpoint_iter']} (20 x 12 windows): {n['own_val_estimate']}.
nanoGPT command (in a scratch copy of the checkout): `{n['command']}`; its training throughput is from its
median iteration time ({n['median_ms_per_iter']:.1f} ms, evaluation excluded). genlab's from its training log.
Command: `.venv/bin/python benchmarks/gpt_shakespeare.py --compare-nanogpt PATH` (seed {c['seed']}).
""")
    if R:
        lines.append("Generation rounds (tokens/s, in the order measured):\n")
        lines.append(f"- nanoGPT: {n['gen_rounds']}")
        for name, r in g.items():
            per = r.get("gen_rounds")
            if not per:
                continue
            lines.append(f"- {name}: eager KV cache {[x['kv_cache'] for x in per]}"
                         + (f", compiled {[x['compiled'] for x in per]} after "
                            f"{[x['compile_seconds'] for x in per]} s compiling"
                            + (" (round 1 into an empty inductor cache)" if c.get("first_round_cold_compile") else "")
                            if "compiled" in per[0] else ""))
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

