"""Compression and export of trained runs (issue 23): size on disk, latency at batch 1,
throughput at batch 64 and quality before and after each method, and onnxruntime against
PyTorch eager, on the shipped demos.

    # pin it: one core, one thread, nothing else running
    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/compression.py
    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/compression.py --runs demo:cvae-mnist
    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/compression.py --smoke   # tiny, to /tmp

Methods per source run (a compressed run is written under --work, default benchmarks/runs/compression):
- GPT: float, int8 (dynamic), bf16, prune 0.5 (unstructured, no fine-tune), shrink 0.5 (structured: half
  the heads and MLP units removed, then --finetune-steps of training), distill (student with half the
  teacher's layers, --distill-steps), ONNX (onnxruntime, KV-cache step function) of the float run and of
  the int8 run (int8 weights in the graph).
- VAE / GAN: float, int8, fp16, prune 0.5, shrink 0.5 (decoder / generator channels, fine-tuned), ONNX (the
  decoder / generator).
- diffusion: float (its default sampler) and float at --few-steps, int8 (weight-only), fp16, prune 0.5,
  distill to --few-steps (progressive distillation; genlab.compress's defaults), ONNX (the UNet).

Size: bytes of the sampling weights (ema.* or model.* tensors) and of the checkpoint tensor file (ONNX: the
.onnx file). Latency: best of
--repeats calls at batch 1 after one warm-up call (images: `run.sample(1, seed=0)`; GPT: 200 tokens at
batch 1, temperature 0.8, seed 0, as `run.generate` yields them, reported as ms/token and tokens/s).
Throughput: best of --repeats calls at batch 64 (diffusion: --ddpm-batch, default 16), images/s or
generated tokens/s. Quality: GPT val loss and perplexity (`genlab.evaluate`, metrics val_loss and
perplexity); images FID in the lenet-mnist feature space over --n samples (seed 0).

Writes benchmarks/results/compression.{json,md} (--smoke: /tmp/compression-smoke.{json,md}).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from _common import RESULTS, RUNS, machine_lines, pinned_command

import torch

import genlab
from genlab import demos
from genlab.bench import machine_info

NAME = "compression"
DEMOS = ("demo:gpt-shakespeare-cpu", "demo:dcgan-mnist", "demo:cvae-mnist", "demo:ddpm-mnist")


# progressive distillation of the diffusion sampler: one stage of 16 -> 4 DDIM steps (each student
# step matches 4 teacher steps), 1,600 steps of batch 16 at lr 2e-4: the best setting found on
# demo:ddpm-mnist within about 11 minutes of one thread
DIFFUSION_DISTILL = {"stages": 1, "substeps": 4, "steps": 1600, "lr": 2e-4, "batch_size": 16}


def variants(kind: str, a: argparse.Namespace) -> list[tuple[str, str | None, dict]]:
    """(label, method, options) per row; method None: the source run, "onnx": its ONNX export."""
    prune = ("prune 0.5", "prune", {"amount": 0.5, "structured": False, "finetune_steps": 0})
    shrink = (f"shrink 0.5 + {a.finetune_steps} steps", "prune",
              {"amount": 0.5, "structured": "shrink", "finetune_steps": a.finetune_steps})
    if kind == "gpt":
        int8 = {"dtype": "int8", "scheme": "dynamic"}
        return [("float", None, {}), ("int8 dynamic", "quantize", int8),
                ("bf16", "quantize", {"dtype": "bf16"}), prune, shrink,
                ("distill", "distill", {"steps": a.distill_steps}), ("onnx", "onnx", {}), ("int8 onnx", "onnx", int8)]
    if kind == "diffusion":
        return [("float", None, {}), (f"float, {a.few_steps} steps", None, {"sampling_steps": a.few_steps}),
                ("int8 weight-only", "quantize", {"dtype": "int8", "scheme": "weight-only"}),
                ("fp16", "quantize", {"dtype": "fp16"}), prune,
                (f"distill to {a.few_steps} steps", "distill", {"sampling_steps": a.few_steps, **DIFFUSION_DISTILL}), ("onnx", "onnx", {})]
    rows = [("float", None, {}), ("int8", "quantize", {"dtype": "int8"}), ("fp16", "quantize", {"dtype": "fp16"}),
            prune]
    return rows + [shrink, ("onnx", "onnx", {})]


def kind_of(run) -> str:
    if run.family == "text":
        return "gpt"
    return "diffusion" if run.cfg.model_name == "diffusion" else "image"


def slug(label: str) -> str:
    return label.replace(" ", "-").replace(".", "")


def tensor_bytes(run) -> int:
    c = run.checkpoint
    return (Path(run.run_dir) / "checkpoints" / c.state.get("file", f"{c.name}.safetensors")).stat().st_size


def weight_bytes(run) -> int:
    """Bytes of the tensors sampling reads (ema.* if the checkpoint has them, else model.*): a
    checkpoint may also keep optimiser state for resuming (a distilled student does)."""
    t = run.checkpoint.tensors
    prefix = "ema." if any(k.startswith("ema.") for k in t) else "model."
    return sum(v.numel() * v.element_size() for k, v in t.items() if k.startswith(prefix))


def weight_dtypes(run) -> dict[str, int]:
    """Elements per stored dtype of the sampling tensors (a shipped run may already store fp16)."""
    t = run.checkpoint.tensors
    prefix = "ema." if any(k.startswith("ema.") for k in t) else "model."
    out: dict[str, int] = {}
    for k, v in t.items():
        if k.startswith(prefix):
            out[str(v.dtype).removeprefix("torch.")] = out.get(str(v.dtype).removeprefix("torch."), 0) + v.numel()
    return out


def best_time(fn, repeats: int) -> tuple[float, list[float]]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), [round(t, 4) for t in times]


def speed_images(run, batch: int, repeats: int) -> dict:
    t1, all1 = best_time(lambda: run.sample(1, seed=0), repeats)
    tb, allb = best_time(lambda: run.sample(batch, seed=0), repeats)
    return {"latency_ms": round(t1 * 1000, 2), "latency_runs_s": all1, "batch": batch,
            "throughput": round(batch / tb, 2), "throughput_unit": "images/s", "throughput_runs_s": allb}


def speed_text(run, tokens: int, batch: int, repeats: int) -> dict:
    from genlab.models.autoregressive.generation import SamplingConfig, generate

    def one():
        for _ in run.generate("\n", tokens, seed=0, temperature=0.8):
            pass

    prompt = torch.tensor([run.tokenizer.encode("\n")]).repeat(batch, 1)

    def many():
        with torch.no_grad():
            generate(run.model, prompt, tokens, SamplingConfig(temperature=0.8),
                     generator=torch.Generator().manual_seed(0))

    t1, all1 = best_time(one, repeats)
    tb, allb = best_time(many, repeats)
    return {"tokens": tokens, "latency_ms": round(t1 * 1000 / tokens, 3), "latency_runs_s": all1,
            "gen_tokens_per_s": round(tokens / t1, 1), "batch": batch,
            "throughput": round(batch * tokens / tb, 1), "throughput_unit": "tokens/s", "throughput_runs_s": allb}


def quality(run, run_dir: Path | None, kind: str, a: argparse.Namespace, report: Path) -> dict:
    """The quality metrics; run_dir None (ONNX): the evaluator runs on the onnx-backed `run`."""
    metrics = ["val_loss", "perplexity"] if kind == "gpt" else ["fid"]
    n = None if kind == "gpt" else a.n
    t0 = time.perf_counter()
    if run_dir is not None:
        m = genlab.evaluate(run_dir, n=n, metrics=metrics, out=report, seed=0, html=False)["metrics"]
    else:
        from genlab.evaluation import EVALUATORS

        with torch.no_grad():
            m, _ = EVALUATORS[run.family](run, n=n, seed=0, metrics=metrics)
    out = {k: round(m[k]["value"], 4) for k in metrics}
    out["n"] = m[metrics[0]].get("n")
    out["eval_s"] = round(time.perf_counter() - t0, 1)
    return out


def bench_run(source: str, a: argparse.Namespace, work: Path) -> dict:
    src = demos.resolve(source) if source.startswith("demo:") else Path(source)
    base = genlab.load(src)
    kind = kind_of(base)
    name = Path(src).name
    wdir = work / name
    wdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, method, opts in variants(kind, a):
        print(f"== {name}: {label}", file=sys.stderr, flush=True)
        row = {"variant": label, "method": method, "options": opts}
        rows.append(row)
        try:
            out = wdir / slug(label)
            t0 = time.perf_counter()
            if method is None:
                run_dir, run = src, genlab.load(src)
                row["file_bytes"], row["size_bytes"] = tensor_bytes(run), weight_bytes(run)
                row["stored_dtypes"] = weight_dtypes(run)
                if opts.get("sampling_steps"):  # the teacher sampled in as few steps as a distilled student
                    run.model.cfg.sampling_steps = opts["sampling_steps"]
                    run_dir = None  # evaluated in memory, with this setting
            elif method == "onnx":
                from genlab.compress import compress
                from genlab.compress.export import export_onnx
                from genlab.compress.onnx_backend import load_onnx_backend

                shutil.rmtree(out, ignore_errors=True)
                exported = compress(src, "quantize", out / "run", **opts) if opts else src  # int8 onnx: an int8 run
                path = export_onnx(exported, out / "model.onnx")
                row["prepare_s"] = round(time.perf_counter() - t0, 1)
                run = load_onnx_backend(genlab.load(exported), path)
                run_dir = None
                row["file_bytes"] = row["size_bytes"] = path.stat().st_size
                row["path"] = str(path)
            else:
                from genlab.compress import compress

                if method == "distill" and a.distill_layers:
                    opts = row["options"] = {**opts, "n_layer": a.distill_layers}
                shutil.rmtree(out, ignore_errors=True)
                run_dir = compress(src, method, out, **opts)
                row["prepare_s"] = round(time.perf_counter() - t0, 1)
                run = genlab.load(run_dir)
                row["file_bytes"], row["size_bytes"] = tensor_bytes(run), weight_bytes(run)
                row["stored_dtypes"] = weight_dtypes(run)
                row["path"] = str(run_dir)
                if method == "distill" and kind == "gpt":
                    row["student"] = {k: getattr(run.cfg.model, k) for k in ("n_layer", "n_embd", "n_head")}
            row["params"] = sum(p.numel() for p in run.model.parameters()) if method != "onnx" else None
            if kind == "gpt":
                row["speed"] = speed_text(run, a.tokens, a.batch, a.repeats)
            else:
                row["speed"] = speed_images(run, a.ddpm_batch if kind == "diffusion" else a.batch, a.repeats)
            row["quality"] = quality(run, run_dir, kind, a, wdir / "reports" / f"{slug(label)}.json")
        except Exception as e:  # noqa: BLE001 - a failing method is a result, not the end of the benchmark
            traceback.print_exc()
            row["error"] = f"{type(e).__name__}: {e}"
    return {"source": source, "kind": kind, "step": base.step, "rows": rows}


def aims(results: list[dict]) -> list[dict]:
    """The issue's aims, checked on the numbers: the int8 GPT (eager and through onnxruntime)
    against the float eager GPT, and the distilled diffusion sampler against the teacher."""
    out = []
    for r in results:
        rows = {x["variant"]: x for x in r["rows"]}
        if r["kind"] == "diffusion":
            out += diffusion_aim(r["source"], rows)
            continue
        if r["kind"] != "gpt":
            continue
        for variant in ("int8 dynamic", "int8 onnx"):
            out += int8_aims(r["source"], rows.get("float"), rows.get(variant), variant)
    return out


def diffusion_aim(source: str, rows: dict) -> list[dict]:
    """The distilled sampler at few steps: FID within 25% of the teacher at its default steps."""
    f = rows.get("float")
    d = next((x for k, x in rows.items() if k.startswith("distill to")), None)
    aim = "distilled diffusion sampler: FID within 25% of the teacher's at its default steps"
    if not f or not d or "error" in f or "error" in d:
        return [{"source": source, "aim": aim, "status": "NOT MEASURED",
                 "detail": (d or {}).get("error") or (f or {}).get("error") or "missing rows"}]
    ff, fd = f["quality"]["fid"], d["quality"]["fid"]
    rel = (fd - ff) / ff
    return [{"source": source, "aim": aim, "status": "MET" if rel <= 0.25 else "NOT MET", "ratio": round(rel, 4),
             "detail": f"teacher FID {ff:.2f} -> {d['variant']} FID {fd:.2f}: {rel:+.1%}"}]


def int8_aims(source: str, f: dict | None, q: dict | None, variant: str) -> list[dict]:
    """The int8 GPT aims for row `q` against the float eager row `f`."""
    if not f or not q or "error" in f or "error" in q:
        return [{"source": source, "aim": f"int8 GPT ({variant})", "status": "NOT MEASURED",
                 "detail": (q or {}).get("error") or (f or {}).get("error") or "missing rows"}]
    size = f["size_bytes"] / q["size_bytes"]
    speed = q["speed"]["gen_tokens_per_s"] / f["speed"]["gen_tokens_per_s"]
    vl_f, vl_q = f["quality"]["val_loss"], q["quality"]["val_loss"]
    rel = (vl_q - vl_f) / vl_f
    out = []
    for aim, ok, detail in (
            ("int8 GPT >= 2x smaller", size >= 2,
             f"{f['size_bytes']:,} -> {q['size_bytes']:,} bytes: {size:.2f}x smaller"),
            ("int8 GPT >= 1.5x faster generation (batch 1) than float eager", speed >= 1.5,
             f"{f['speed']['gen_tokens_per_s']} -> {q['speed']['gen_tokens_per_s']} tokens/s: {speed:.2f}x"),
            ("int8 GPT val loss within 1%", rel <= 0.01,
             f"{vl_f:.4f} -> {vl_q:.4f} nats/token: {rel:+.2%}")):
        out.append({"source": source, "aim": f"{aim} [{variant}]", "status": "MET" if ok else "NOT MET",
                    "ratio": round(size if "smaller" in aim else speed if "faster" in aim else rel, 4),
                    "detail": detail})
    return out


def fmt(v, spec="{:.2f}"):
    return "-" if v is None else spec.format(v)


def render(data: dict) -> str:
    m = data["machine"]
    a = data["args"]
    out = ["# Compression and export: size, speed and quality before and after", "",
           "Produced by `benchmarks/compression.py` (command and machine below). Size: bytes of the sampling",
           "weights (the ema.* or model.* tensors of the checkpoint the run samples from), beside the whole",
           "checkpoint tensor file on disk (which may also hold optimiser state; ONNX: the .onnx file). Latency: best of "
           f"{a['repeats']} calls at batch 1 after a warm-up call; throughput: best of {a['repeats']} calls at",
           "the batch shown. Images: `run.sample` with seed 0 (diffusion: its default sampler); GPT: "
           f"{a['tokens']} tokens from a newline at temperature 0.8, seed 0 (latency per token). Quality: GPT",
           "val loss (nats/token) and perplexity on the val split; images FID (lenet-mnist) over "
           f"{a['n']} samples, seed 0 (FID grows as n shrinks). x: the ratio against the float row.", ""]
    for r in data["results"]:
        rows = r["rows"]
        f = next((x for x in rows if x["variant"] == "float" and "error" not in x), None)
        gpt = r["kind"] == "gpt"
        out += [f"## {r['source']} (step {r['step']})", ""]
        if r.get("command") and r["command"] != data["command"]:
            out += [f"Measured by `{r['command']}`.", ""]
        qh = "val loss | perplexity" if gpt else "FID"
        lat = "ms/token b1 | tokens/s b1" if gpt else "latency b1 ms"
        out += [f"| variant | weights bytes | file bytes | size x | {lat} | throughput | speed x | {qh} | prepare s |",
                "|---" * (11 if gpt else 9) + "|"]
        for x in rows:
            if "error" in x:
                out.append(f"| {x['variant']} | failed: {x['error'][:200]} |")
                continue
            s, q = x["speed"], x.get("quality") or {}
            size_x = f["size_bytes"] / x["size_bytes"] if f else None
            if gpt:
                speed_x = s["gen_tokens_per_s"] / f["speed"]["gen_tokens_per_s"] if f else None
                latc = f"{s['latency_ms']:.2f} | {s['gen_tokens_per_s']:.1f}"
                qc = f"{fmt(q.get('val_loss'), '{:.4f}')} | {fmt(q.get('perplexity'), '{:.3f}')}"
            else:
                speed_x = s["throughput"] / f["speed"]["throughput"] if f else None
                latc = f"{s['latency_ms']:.1f}"
                qc = fmt(q.get("fid"))
            out.append(f"| {x['variant']} | {x['size_bytes']:,} | {x['file_bytes']:,} | {fmt(size_x)} | {latc} | "
                       f"{s['throughput']:,.1f} {s['throughput_unit']} (b{s['batch']}) | {fmt(speed_x)} | {qc} | "
                       f"{fmt(x.get('prepare_s'), '{:.1f}')} |")
        notes = ["- stored element types: " + "; ".join(
            f"{x['variant']} {', '.join(f'{k} {v:,}' for k, v in x['stored_dtypes'].items())}"
            for x in rows if x.get("stored_dtypes"))]
        notes += [f"- {x['variant']}: {x['quality_note']}" for x in rows if x.get("quality_note")]
        notes += [f"- distill student: {x['student']} ({x['options'].get('steps')} steps)"
                  for x in rows if x.get("student")]
        if gpt:
            notes.append("- speed x: batch-1 generation tokens/s against float")
        else:
            notes.append("- speed x: throughput against float")
        out += [""] + notes + [""]
    out += ["## Aims (issue 23)", ""]
    for x in data["aims"]:
        out.append(f"- **{x['status']}** {x['aim']} ({x['source']}): {x['detail']}")
    out += ["- int8 onnx: the int8 run exported (int8 Linear weights, DequantizeLinear -> MatMul, which "
            "onnxruntime fuses into int8 matmuls) and run by onnxruntime; the onnx row is the float export, so "
            "onnx against float is the runtime's share of the gain and int8 onnx against onnx is int8's.", ""]
    out += ["## Command and machine", "", f"`{data['command']}`", "", machine_lines(m),
            f"- wall time: {data['wall_s'] / 60:.1f} min; compressed runs in `{data['work']}`; 1-minute load average "
            f"at the end {data.get('load_avg', '?')} (timings are only comparable within a quiet run)"]
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", default=None, help="source runs (demo:NAME or run dirs); default the four demos")
    p.add_argument("--n", type=int, default=1000, help="samples for FID")
    p.add_argument("--tokens", type=int, default=200, help="tokens generated per GPT timing")
    p.add_argument("--batch", type=int, default=64, help="throughput batch (images and GPT)")
    p.add_argument("--ddpm-batch", type=int, default=16, help="throughput batch for diffusion runs")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per figure (best is kept)")
    p.add_argument("--distill-steps", type=int, default=500)
    p.add_argument("--distill-layers", type=int, default=None, help="student layers (default half the teacher's)")
    p.add_argument("--few-steps", type=int, default=4, help="diffusion: the distilled student's sampling steps "
                                                            "(the teacher is also measured at this count)")
    p.add_argument("--finetune-steps", type=int, default=300, help="fine-tuning steps after structured shrinking")
    p.add_argument("--threads", type=int, default=1, help="torch threads (and onnxruntime's)")
    p.add_argument("--work", type=Path, default=RUNS / "compression", help="folder for compressed runs")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one run, temp work folder, results to /tmp")
    a = p.parse_args()
    results_dir, name = RESULTS, NAME
    if a.smoke:
        a.n, a.tokens, a.distill_steps, a.repeats, a.batch, a.ddpm_batch = 50, 20, 5, 1, 8, 4
        a.finetune_steps = 5
        DIFFUSION_DISTILL["steps"] = 5
        a.runs = a.runs[:1] if a.runs else [DEMOS[0]]
        a.work = Path(tempfile.mkdtemp(prefix="compression-smoke-"))
        results_dir, name = Path("/tmp"), "compression-smoke"
    a.runs = a.runs or list(DEMOS)
    torch.set_num_threads(a.threads)
    cpus = sorted(os.sched_getaffinity(0))
    if os.environ.get("OMP_NUM_THREADS") != str(a.threads) or len(cpus) > a.threads:
        print(f"note: pin the benchmark for stable timings, e.g. OMP_NUM_THREADS={a.threads} taskset -c "
              f"{','.join(map(str, range(a.threads)))} .venv/bin/python benchmarks/compression.py "
              f"(now OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, {len(cpus)} CPUs allowed)",
              file=sys.stderr)
    command = pinned_command()
    t0 = time.time()
    machine = machine_info()
    results = []
    for src in a.runs:
        results.append(bench_run(src, a, a.work))
        results[-1]["command"] = command
    path = results_dir / f"{name}.json"
    if not a.smoke and path.is_file():  # re-measured sources replace their old section, the others stay
        done = {r["source"] for r in results}
        before = json.loads(path.read_text())
        old = [{"command": before["command"], **r} for r in before["results"] if r["source"] not in done]
        results = sorted(old + results, key=lambda r: DEMOS.index(r["source"]) if r["source"] in DEMOS else 99)
    data = {"command": command, "machine": machine, "load_avg": round(os.getloadavg()[0], 2),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
            "work": str(a.work), "results": results, "aims": aims(results), "wall_s": round(time.time() - t0, 1)}
    from genlab.engine.checkpoint import atomic_write_json, atomic_write_text

    atomic_write_json(results_dir / f"{name}.json", data)
    atomic_write_text(results_dir / f"{name}.md", render(data))
    print(f"wrote {results_dir / name}.md and .json ({data['wall_s'] / 60:.1f} min)", file=sys.stderr)


if __name__ == "__main__":
    main()
