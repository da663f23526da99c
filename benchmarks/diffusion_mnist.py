"""ddpm-mnist and ddpm-cond-mnist: FID against CPU training time for six samplers, label
accuracy of the conditional model, and the `genlab apply` tasks against simple baselines. The
comparison with diffusers' UNet2DModel and lucidrains' Unet is benchmarks/diffusion_backbones.py
(each trained by genlab's engine for the same minutes: FLOPs, step time and FID at matched work).

    .venv/bin/python benchmarks/diffusion_mnist.py                 # the full run (many hours, see below)
    .venv/bin/python benchmarks/diffusion_mnist.py --smoke         # end to end in a few minutes

Parts (each can be skipped): `train` (ddpm-mnist for the largest --minutes budget, a checkpoint
kept when training time passes each smaller budget), `fid` (lenet-mnist FID of --n samples for
DDPM-1000, DDIM-50, DPM-Solver++ 10 and 20 steps and 20 and 50 in its SDE form at every budget, with samples/s), `cond`
(ddpm-cond-mnist for --cond-minutes; share of --n samples the MNIST classifier labels as
requested, at guidance 1 and the preset's w), `apply` (on --apply-n MNIST test images: inpaint
centre vs mean fill and a vae-mnist trained --vae-minutes; denoise sigma 0.5 vs Gaussian blur and
median filter; upscale 14->28 vs bicubic). `--skip compare` is still accepted (that part moved to
diffusion_backbones.py; older commands in the results name it).
DDPM-1000 at N=10,000 is 10 million network evaluations: about 4 core-hours per checkpoint on the
2-core development machine (with --compile). It is drawn in chunks of --ddpm-chunk samples, each
saved under the run directory as it finishes and claimed by the process drawing it, so a killed
process loses one chunk, rerunning the same command resumes, and processes on both cores share the
work (the last to finish adds the row). --ddpm-last-only runs it for the largest budget only,
--ddpm-n lowers N (the FID of fewer samples is biased upwards, so compare it only with the same N:
every other sampler's row is then repeated for the first --ddpm-n of its samples).

`--threads 2` (with `taskset -c 0,1`) trains and samples on two threads, into results of its own
(diffusion-mnist-2thread.json/.md), where the minutes are wall minutes of two cores.

Parts can run in separate processes, one per core: `--run-dir` samples from a ddpm-mnist run the
`train` part made (its `min-M` checkpoints) instead of training, `--fid-minutes` and `--samplers`
pick the FID rows. Each process merges its parts into benchmarks/results/diffusion-mnist.json
(new rows of a budget and sampler replace all older ones of that pair) and re-renders the .md
from it, naming the command and machine behind every part; PNGs are written beside them.

    # core 0: train, then the 60-minute rows; core 1, once min-30 exists: the 30-minute rows
    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/diffusion_mnist.py --skip cond apply \
        --fid-minutes 60
    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/diffusion_mnist.py --run-dir benchmarks/runs/ddpm-mnist \
        --fid-minutes 30 --skip train cond apply
    # DDPM-1000 for one budget on both cores (run the same command on core 1 with taskset -c 1)
    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/diffusion_mnist.py --run-dir benchmarks/runs/ddpm-mnist \
        --skip train cond apply --samplers ddpm --compile --fid-minutes 60
"""

from __future__ import annotations

import argparse
import fcntl
import io
import os
import time
from contextlib import contextmanager
from pathlib import Path

from _common import (RESULTS, RUNS, fresh_run_dir, machine_lines, mean_train_throughput, next_run_id, pinned_command,
                     results_lock, train_with_marks, write_results)

import numpy as np
import torch
import torch.nn.functional as F

import genlab
from genlab.bench import machine_info
from genlab.engine.checkpoint import atomic_write_bytes
from genlab.engine.device import cpu_model
from genlab.images import save_grid
from genlab.metrics import reconstruction as rec
from genlab.metrics.classifier import label_accuracy, load_classifier
from genlab.metrics.features import get_extractor
from genlab.metrics.sample_quality import FeatureSet, fid
from genlab.sampling import BATCH
from genlab.seed import make_generator

# (key, sampler, steps, eta): DDPM's eta is 1 (ancestral); "SDE" is DPM-Solver++(2M)'s stochastic form
SAMPLERS = [("ddpm", "ddpm", 1000, 1.0), ("ddim50", "ddim", 50, 0.0), ("dpmpp10", "dpmpp", 10, 0.0),
            ("dpmpp20", "dpmpp", 20, 0.0), ("dpmpp20sde", "dpmpp", 20, 1.0), ("dpmpp50sde", "dpmpp", 50, 1.0)]
NAMES = {"ddpm": "DDPM", "ddim": "DDIM", "dpmpp": "DPM-Solver++"}  # in the tables' order
PARTS = ("train", "fid", "cond", "apply")
MOVED = ("compare",)  # parts now in other scripts: --skip accepts them so recorded commands rerun


def log(msg: str) -> None:
    print(f"[diffusion-mnist {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def features(ext, images: torch.Tensor) -> FeatureSet:
    fs = FeatureSet()
    fs.update(ext(images)[0])
    return fs


# --------------------------------------------------------------------------- training + FID


@contextmanager
def claimed(path: Path):
    """Yield True when this process holds the work item `path` (an exclusive, non-blocking flock on
    it), False when another process does. The kernel drops the lock when its holder exits or is
    killed, so nothing stale is left to take over."""
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def ddpm_chunks(run, ck: str, a) -> tuple[torch.Tensor, float, dict] | None:
    """The first --ddpm-n DDPM samples of checkpoint `ck`, drawn --ddpm-chunk at a time (chunk i
    from seed 1,000,000 * --seed + i) and each saved as it finishes, in
    <run>/ddpm-chunks/<ck>-<steps>steps-seed<seed>-chunk<size>/: hours of sampling survive a
    killed process, and processes on other cores (or later sessions) share the chunks.
    Returns (images, seconds summed over chunks (scaled to --ddpm-n when the last chunk is cut),
    row fields: chunk size, the CPUs that drew them, whether all ran compiled), or None while
    another process still draws some."""
    folder = run.run_dir / "ddpm-chunks" / f"{ck}-{a.ddpm_steps}steps-seed{a.seed}-chunk{a.ddpm_chunk}"
    folder.mkdir(parents=True, exist_ok=True)
    count, warm = -(-a.ddpm_n // a.ddpm_chunk), not a.compile
    for i in range(count):
        out = folder / f"{i:05d}.npz"
        if out.exists():
            continue
        with claimed(folder / f"{i:05d}.claim") as mine:
            if not mine or out.exists():  # drawn by another process, now or between the two checks
                continue
            if not warm:  # only a process that draws a chunk compiles for it
                warm_up(run, a.ddpm_chunk)
                warm = True
            t0 = time.perf_counter()
            images, _ = run.sample(a.ddpm_chunk, seed=1_000_000 * a.seed + i, sampler="ddpm", steps=a.ddpm_steps)
            buf = io.BytesIO()
            np.savez(buf, images=images.numpy(), seconds=time.perf_counter() - t0, step=run.step,
                     compiled=a.compile, cpu=cpu_model())
            atomic_write_bytes(out, buf.getvalue())
        log(f"{ck}: DDPM chunk {i + 1}/{count} in {time.perf_counter() - t0:.0f} s")
    if not all((folder / f"{i:05d}.npz").exists() for i in range(count)):
        return None
    images, secs, cpus, compiled = [], 0.0, set(), True
    for i in range(count):
        with np.load(folder / f"{i:05d}.npz", allow_pickle=False) as p:
            if int(p["step"]) != run.step:
                raise SystemExit(f"{folder} holds chunks of step {int(p['step'])}, not {ck}'s {run.step}; "
                                 "delete the folder")
            images.append(p["images"])
            secs += float(p["seconds"])
            cpus.add(str(p["cpu"]))
            compiled &= bool(p["compiled"])
    secs *= a.ddpm_n / (count * a.ddpm_chunk)  # the share of the samples used
    return torch.from_numpy(np.concatenate(images)[:a.ddpm_n]), secs, {
        "chunk": a.ddpm_chunk, "cpus": sorted(cpus), "compiled": compiled}


def warm_up(run, n: int) -> None:
    """Compile the UNet for every batch size sampling n images uses (draw_samples takes BATCH at a
    time; a compiled UNet has kernels per size), so no compiling is timed."""
    for b in {min(n, BATCH), n % BATCH} - {0}:
        run.sample(b, seed=0, sampler="ddim", steps=2)


def sampler_rows(run_dir, ckpts: list[str], marks: list[float], a, ext, real: FeatureSet) -> list[dict]:
    rows = []
    for m, ck in zip(marks, ckpts):
        if m not in a.fid_minutes:
            continue
        run = genlab.load(run_dir, ck)
        if a.compile:
            run.compile()
        for key, sampler, steps, eta in SAMPLERS:
            if key not in a.samplers or (sampler == "ddpm" and a.ddpm_last_only and m != marks[-1]):
                continue
            if sampler == "ddpm":
                steps = a.ddpm_steps
            label = f"{NAMES[sampler]} {steps}" + (" SDE" if sampler == "dpmpp" and eta else "")
            n = a.ddpm_n if sampler == "ddpm" else a.n
            extra = {}
            if a.compile and sampler != "ddpm":  # ddpm_chunks warms up when it draws a chunk
                warm_up(run, n)
            t0 = time.perf_counter()
            if sampler == "ddpm":
                drawn = ddpm_chunks(run, ck, a)
                if drawn is None:
                    log(f"{m:g} min, {label}: other processes still draw chunks; the last to finish adds the row")
                    continue
                images, secs, extra = drawn
            else:
                images, _ = run.sample(n, seed=a.seed, sampler=sampler, steps=steps, eta=eta)
                secs = time.perf_counter() - t0
            feats = ext(images)[0]
            row = {"minutes": m, "checkpoint": ck, "step": run.step, "sampler": label, "steps": steps,
                   "samples_per_s": n / secs, "seconds": secs, "compiled": a.compile, **extra}
            subsets = [n] + ([a.ddpm_n] if sampler != "ddpm" and a.ddpm_n < n else [])
            for k in subsets:  # the first k samples: an FID comparable with a smaller-N DDPM row
                fs = FeatureSet()
                fs.update(feats[:k])
                rows.append({**row, "n": k, "of_n": n, "fid": fid(real, fs)})
                log(f"{m:g} min, {label}: FID {rows[-1]['fid']:.2f} (N={k:,}), {n / secs:.1f} samples/s")
            if key == ("dpmpp20" if "dpmpp20" in a.samplers else a.samplers[0]):  # the mark's grid of samples
                save_grid(images[:100], RESULTS / f"{a.name}-{m:g}min.png", nrow=10)
                for r in rows[-len(subsets):]:
                    r["grid"] = True
    return rows


def cond_rows(a, clf) -> tuple[dict, list[dict]]:
    res = genlab.train("ddpm-cond-mnist", fresh_run_dir("ddpm-cond-mnist"), minutes=a.cond_minutes, seed=a.seed)
    run = genlab.load(res.run_dir)
    rows = []
    for w in sorted({1.0, run.model.cfg.guidance}):
        t0 = time.perf_counter()
        images, labels = run.sample(a.n, seed=a.seed, guidance=w)
        secs = time.perf_counter() - t0
        acc = label_accuracy(clf, images, labels)
        rows.append({"guidance": w, "label_accuracy": acc, "n": a.n, "samples_per_s": a.n / secs})
        log(f"conditional, w={w:g}: label accuracy {100 * acc:.2f}%")
        save_grid(images[:100], RESULTS / f"{a.name}-cond-w{w:g}.png", nrow=10)
    return {"steps": res.state.step, "minutes": a.cond_minutes,
            "images_per_s": mean_train_throughput(res.run_dir) or 64 * res.state.step / res.state.elapsed}, rows


# --------------------------------------------------------------------------- applications


def masked_psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over images of the PSNR (data range 1) over the masked pixels only."""
    d = ((a.double() - b.double()) / 255) ** 2
    m = mask.expand_as(d).double()
    mse = (d * m).flatten(1).sum(1) / m.flatten(1).sum(1)
    return float((10 * torch.log10(1 / mse.clamp_min(1e-10))).mean())


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    import torchvision.transforms.v2.functional as TF

    k = 2 * round(3 * sigma) + 1
    return TF.gaussian_blur(x.float(), [k, k], [sigma, sigma]).round().clamp(0, 255).to(torch.uint8)


def median_filter(x: torch.Tensor, k: int) -> torch.Tensor:
    p = k // 2
    patches = F.unfold(F.pad(x.float(), (p, p, p, p), mode="replicate"), k)  # (N, C k k, H W)
    N, C, H, W = x.shape
    return patches.view(N, C, k * k, H * W).median(2).values.view(N, C, H, W).to(torch.uint8)


def apply_rows(run_dir, a, ext) -> dict:
    from genlab.apply.denoise import run_denoise
    from genlab.apply.inpaint import make_mask, run_inpaint
    from genlab.apply.interpolate import run_interpolate
    from genlab.apply.upscale import run_upscale

    run = genlab.load(run_dir)
    data = run.data()
    x = data.test_x[:a.apply_n]
    out: dict = {"n": len(x)}
    # inpainting, centre mask
    mask = make_mask("center", 1, 28, 28)
    diff, secs = {}, {}
    for k in (1, a.inpaint_average):  # one fill, and the mean of several (the posterior mean's estimate)
        t0 = time.perf_counter()
        diff[k] = run_inpaint(run, x, None, mask="center", seed=a.seed, average=k)
        secs[k] = time.perf_counter() - t0
    mean_img = data.train_x.double().mean(0, keepdim=True).round().to(torch.uint8)
    mean_fill = torch.where(mask, mean_img, x)
    vae_res = genlab.train("vae-mnist", fresh_run_dir("vae-mnist-for-inpaint"), minutes=a.vae_minutes, seed=a.seed)
    vae = run_inpaint(genlab.load(vae_res.run_dir), x, None, mask="center", seed=a.seed)
    crop = (slice(None), slice(None), slice(7, 21), slice(7, 21))
    one, avg = "diffusion, one fill", f"diffusion, mean of {a.inpaint_average} fills (--average {a.inpaint_average})"
    out["inpaint"] = {name: {"psnr_masked": masked_psnr(img, x, mask), "ssim_masked": rec.ssim(img[crop], x[crop])}
                      for name, img in (("mean fill", mean_fill), (f"vae-mnist ({a.vae_minutes:g} min) latent "
                                                                   "optimisation", vae),
                                        (one, diff[1]), (avg, diff[a.inpaint_average]))}
    out["inpaint"][one]["seconds"], out["inpaint"][avg]["seconds"] = secs[1], secs[a.inpaint_average]
    masked_in = torch.where(mask, torch.full_like(x, 128), x)
    save_grid(torch.cat([t[:10] for t in (x, masked_in, mean_fill, vae, diff[1], diff[a.inpaint_average])]),
              RESULTS / f"{a.name}-inpaint.png", nrow=10)
    # denoising, sigma 0.5 on the [0, 1] scale
    g = make_generator(a.seed)
    noisy = (x.float() + 0.5 * 255 * torch.randn(x.shape, generator=g)).round().clamp(0, 255).to(torch.uint8)
    blur = {s: gaussian_blur(noisy, s) for s in (0.5, 1.0, 1.5, 2.0)}
    best_blur = max(blur, key=lambda s: rec.psnr(blur[s], x))
    med = {k: median_filter(noisy, k) for k in (3, 5)}
    best_med = max(med, key=lambda k: rec.psnr(med[k], x))
    d_sample = run_denoise(run, noisy, None, sigma=0.5, seed=a.seed)
    d_mmse = run_denoise(run, noisy, None, sigma=0.5, seed=a.seed, sampling_steps=1)
    out["denoise"] = {name: {"psnr": rec.psnr(img, x), "ssim": rec.ssim(img, x)} for name, img in (
        ("noisy input", noisy), (f"Gaussian blur (best sigma, {best_blur:g})", blur[best_blur]),
        (f"median filter (best, {best_med}x{best_med})", med[best_med]),
        ("diffusion, reverse process (default steps)", d_sample), ("diffusion, 1 step (E[x0 | x_t])", d_mmse))}
    save_grid(torch.cat([t[:10] for t in (x, noisy, blur[best_blur], med[best_med], d_sample, d_mmse)]),
              RESULTS / f"{a.name}-denoise.png", nrow=10)
    # x2 upscaling from 2x2 box averages
    low = F.avg_pool2d(x.float(), 2).round().to(torch.uint8)
    bicubic = F.interpolate(low.float(), scale_factor=2, mode="bicubic", align_corners=False).round().clamp(0, 255) \
        .to(torch.uint8)
    up = run_upscale(run, low, None, seed=a.seed)
    real = features(ext, data.test_x)
    out["upscale"] = {name: {"psnr": rec.psnr(img, x), "ssim": rec.ssim(img, x), "fid": fid(real, features(ext, img))}
                      for name, img in (("bicubic", bicubic), ("diffusion, low-res consistency", up))}
    nearest = F.interpolate(low, scale_factor=2, mode="nearest")
    save_grid(torch.cat([t[:10] for t in (x, nearest, bicubic, up)]), RESULTS / f"{a.name}-upscale.png", nrow=10)
    strip = run_interpolate(run, x[:4], None, steps=10)
    save_grid(strip, RESULTS / f"{a.name}-interpolate.png", nrow=10)
    return out


# --------------------------------------------------------------------------- report


def merge(old: dict, new: dict, command: str, machine: dict) -> dict:
    """`old` results with the parts of `new` (made by `command` on `machine`) replacing theirs;
    new FID rows of a (budget, sampler) pair replace all older rows of that pair. Runs no part
    cites are dropped; run numbers are never reused."""
    runs = old.get("runs", {})
    rid = next_run_id(old)
    out = {k: v for k, v in old.items() if k != "runs"}
    out["last_run"] = int(rid)
    for part, value in new.items():
        if part == "fid":
            key = lambda r: (r["minutes"], r["sampler"])  # noqa: E731
            fresh = {key(r) for r in value}
            rows = [r for r in out.get("fid", []) if key(r) not in fresh] + [{**r, "run": rid} for r in value]
            order = list(NAMES.values())
            out["fid"] = sorted(rows, key=lambda r: (r["minutes"], -r["n"], order.index(r["sampler"].split()[0]),
                                                     r["steps"]))
        elif part == "train" and (out.get("train", {}).get("run_dir"), out.get("train", {}).get("steps")) == \
                (value["run_dir"], value["steps"]):
            continue  # the same finished run, read again: keep the entry of the run that trained it
        else:
            out[part] = {**value, "run": rid}
    out["runs"] = {**runs, rid: {"command": command, "machine": machine}}
    return cited_runs(out)


def cited_runs(out: dict) -> dict:
    """`out` without the parts that moved to other scripts, and without runs no part cites."""
    out = {k: v for k, v in out.items() if k not in MOVED}
    parts = [v for v in out.values() if isinstance(v, dict) and "run" in v]
    cited = {r["run"] for r in out.get("fid", [])} | {v["run"] for v in parts}
    out["runs"] = {k: v for k, v in out.get("runs", {}).items() if k in cited}
    return out


def cell(text: str) -> str:
    """A markdown table cell's text (a | would end the cell)."""
    return text.replace("|", "\\|")


def markdown(out: dict, name: str) -> str:
    threads = sorted({r["machine"]["threads"] for r in out["runs"].values()})
    one = threads == [1]
    used = ("one thread (`OMP_NUM_THREADS=1 taskset -c N`)" if one else
            " or ".join(map(str, threads)) + " threads (`OMP_NUM_THREADS`, `taskset` as its command says); minutes "
            "are wall minutes of training time, so a minute of N threads is N CPU minutes")
    minutes = "CPU minutes" if one else "training minutes"
    md = ["# ddpm-mnist: FID against CPU time, samplers, guidance, applications\n",
          f"Each part names the run (command and machine, listed at the end) that measured it; every run used {used}.\n"]
    if "train" in out:
        tr = out["train"]
        who = (f"run {tr['run']}" if tr.get("trained_here") else f"`{Path(tr['run_dir']).name}`, trained by the "
               f"train part's call in its own process, read by run {tr['run']}")
        md += [f"Training ({who}): `ddpm-mnist`, {tr['params']:,} parameters, {tr['steps']:,} steps in "
               f"{tr['minutes']:g} {minutes}, {tr['images_per_s']:.1f} images/s = "
               f"**{tr['ms_per_step']:.0f} ms per step at batch 64**"
               + (f", {'bf16 autocast' if tr['precision'] == 'bf16' else 'fp32'} (as train.amp chose)" if "precision" in tr
                  else "") + ".\n"]
    if out.get("fid"):
        md += ["FID (lenet-mnist, against the 10,000 test images) of N samples; \"first k of n\" is the FID of "
               "the first k of that sampler's n samples, for comparison with a DDPM row of the same N "
               "(FID is biased upwards at small N).\n",
               f"| {minutes} | step | sampler | N | FID | samples/s | run |", "|---|---|---|---|---|---|---|"]
        for r in out["fid"]:
            n = f"{r['n']:,}" if r["n"] == r.get("of_n", r["n"]) else f"first {r['n']:,} of {r['of_n']:,}"
            speed = f"{r['samples_per_s']:.1f}" + (" compiled" if r.get("compiled") else "")
            md.append(f"| {r['minutes']:g} | {r['step']:,} | {r['sampler']} | {n} | {r['fid']:.2f} | {speed} | "
                      f"{r['run']} |")
        chunked = [r for r in out["fid"] if "chunk" in r]
        notes = []
        if chunked:
            sizes = " or ".join(f"{c:,}" for c in sorted({r["chunk"] for r in chunked}))
            which = ", ".join(sorted({f"{r['minutes']:g} min" for r in chunked}))
            notes.append(f"DDPM rows at {which}: drawn in saved chunks of {sizes} by one or more processes "
                         "(possibly in several sessions); their samples/s is N over the chunks' summed seconds. "
                         "CPUs that drew them: " + "; ".join(sorted({c for r in chunked for c in r["cpus"]})) + ".")
        if any(r.get("compiled") for r in out["fid"]):
            notes.append("\"compiled\": the UNet ran under torch.compile (`--compile`, `Run.compile`), compiled "
                         "before the clock started.")
        md += ["", " ".join(notes)] if notes else []
        for m in sorted({r["minutes"] for r in out["fid"]}):
            drawn = [r for r in out["fid"] if r["minutes"] == m and r.get("grid")]  # the newest grid's sampler
            by = max(drawn, key=lambda r: int(r["run"]))["sampler"] if drawn else "DPM-Solver++ 20"
            md += ["", f"Samples ({by}) after {m:g} minutes:\n", f"![samples]({name}-{m:g}min.png)"]
        md += [""]
    if out.get("cond"):
        c = out["cond"]
        md += [f"Conditional (run {c['run']}; `ddpm-cond-mnist`, {c['train']['minutes']:g} minutes, "
               f"{c['train']['steps']:,} steps, DPM-Solver++ 20 steps): share of samples the shipped MNIST LeNet "
               "labels as requested (target >= 95%):\n",
               "| guidance w | N | label accuracy | samples/s |", "|---|---|---|---|"]
        md += [f"| {r['guidance']:g} | {r['n']:,} | {100 * r['label_accuracy']:.2f}% | {r['samples_per_s']:.1f} |"
               for r in c["rows"]]
        md += [""]
    if out.get("apply"):
        ap = out["apply"]
        md += [f"## Applications on {ap['n']:,} MNIST test images (run {ap['run']})\n",
               "Inpainting, centre 14x14 masked (PSNR/SSIM over the masked region):\n",
               "| method | PSNR (dB) | SSIM |", "|---|---|---|"]
        md += [f"| {k} | {v['psnr_masked']:.2f} | {v['ssim_masked']:.4f} |" for k, v in ap["inpaint"].items()]
        md += ["", f"![inpaint]({name}-inpaint.png) (rows: original, input, mean fill, VAE, diffusion one fill, "
               "diffusion mean of fills)\n",
               "Denoising, sigma = 0.5 on the [0, 1] scale, noisy images clipped to 8 bits:\n",
               "| method | PSNR (dB) | SSIM |", "|---|---|---|"]
        md += [f"| {cell(k)} | {v['psnr']:.2f} | {v['ssim']:.4f} |" for k, v in ap["denoise"].items()]
        md += ["", f"![denoise]({name}-denoise.png) (rows: original, noisy, blur, median, diffusion, "
               "diffusion 1 step)\n", "Upscaling x2 from 2x2 box averages (14x14 -> 28x28):\n",
               "| method | PSNR (dB) | SSIM | FID (lenet-mnist) |", "|---|---|---|---|"]
        md += [f"| {k} | {v['psnr']:.2f} | {v['ssim']:.4f} | {v['fid']:.2f} |" for k, v in ap["upscale"].items()]
        md += ["", f"![upscale]({name}-upscale.png) (rows: original, low-res, bicubic, diffusion)\n",
               "Interpolation between test images (DDIM inversion, slerp):\n\n"
               f"![interpolate]({name}-interpolate.png)\n"]
    md += ["## Against other libraries\n", "At matched work (each UNet trained by genlab's engine for the same "
           "minutes; FLOPs per step, step time, FID at each minute mark): "
           "[diffusion-backbones.md](diffusion-backbones.md).\n"]
    md += ["## Runs\n"]
    for rid, r in sorted(out["runs"].items(), key=lambda kv: int(kv[0])):
        md += [f"Run {rid}: `{r['command']}`\n", machine_lines(r["machine"])]
    return "\n".join(md) + "\n"


def run_info(run_dir, marks: list[float], need: list[float]) -> tuple[dict | None, list[str]]:
    """(the `train` part's figures, or None while the run is still training; its checkpoint per
    mark) for a ddpm-mnist run trained with `marks`. Stops with a message when a mark in `need`
    has no checkpoint yet."""
    run = genlab.load(run_dir)
    elapsed = run.checkpoint.state["state"]["elapsed"]
    finished = elapsed >= marks[-1] * 60 - 1 or run.step >= run.cfg.train.steps
    ckpts = [f"min-{m:g}" for m in marks[:-1]] + ["last"]
    ready = [(run_dir / "checkpoints" / f"{ck}.json").exists() for ck in ckpts[:-1]] + [finished]
    missing = [m for m, ok in zip(marks, ready) if m in need and not ok]
    if missing:
        raise SystemExit(f"{run_dir} has no checkpoint for {missing} minutes yet (trained {elapsed / 60:.1f}); "
                         "wait for its training, or run the train part")
    if not finished:
        return None, ckpts
    ips = mean_train_throughput(run_dir) or 64 * run.step / elapsed
    return {"steps": run.step, "minutes": marks[-1], "images_per_s": ips, "ms_per_step": 64_000 / ips,
            "precision": run.checkpoint.state["state"].get("amp") or "off",  # train.amp's choice
            "params": sum(p.numel() for p in run.model.parameters()),
            "run_dir": os.path.relpath(Path(run_dir).resolve(), RUNS.parent.parent)}, ckpts  # from the repo root


def main() -> None:
    import json

    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", nargs="+", type=float, default=[30.0, 60.0])
    ap.add_argument("--run-dir", type=Path, help="sample from this finished ddpm-mnist run (trained with these "
                                                 "--minutes marks by the train part) instead of training")
    ap.add_argument("--fid-minutes", nargs="+", action="extend", type=float,
                    help="the budgets to measure FID at (default: all)")
    ap.add_argument("--samplers", nargs="+", action="extend", choices=[k for k, *_ in SAMPLERS])
    ap.add_argument("--cond-minutes", type=float, default=30.0)
    ap.add_argument("--vae-minutes", type=float, default=5.0)
    ap.add_argument("--n", type=int, default=10_000, help="samples per FID / label-accuracy figure")
    ap.add_argument("--ddpm-n", type=int, default=10_000, help="samples for the DDPM-1000 FID")
    ap.add_argument("--ddpm-steps", type=int, default=1000)
    ap.add_argument("--ddpm-chunk", type=int, default=100, help="DDPM samples per saved chunk")
    ap.add_argument("--compile", action="store_true", help="torch.compile the UNet for the FID samplers "
                                                           "(Run.compile; rows say so)")
    ap.add_argument("--ddpm-last-only", action="store_true", help="DDPM only at the largest budget (saves hours)")
    ap.add_argument("--apply-n", type=int, default=1000)
    ap.add_argument("--inpaint-average", type=int, default=4, help="fills averaged in the second inpainting row")
    ap.add_argument("--skip", nargs="+", action="extend", choices=PARTS + MOVED, default=[])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training and sampling; runs on more "
                    "than one have results of their own, diffusion-mnist-Nthread.json/.md")
    ap.add_argument("--render-only", action="store_true", help="rewrite the .md from the .json and stop")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny budgets and counts to check the script end to end (results named -smoke)")
    a = ap.parse_args()
    if a.smoke:
        a.minutes, a.cond_minutes, a.vae_minutes = [0.2, 0.4], 0.2, 0.1
        a.n, a.ddpm_n = 200, 100
        a.ddpm_steps, a.ddpm_chunk, a.apply_n, a.inpaint_average = 20, 40, 20, 2
    a.minutes = sorted(a.minutes)
    a.fid_minutes = a.minutes if a.fid_minutes is None else a.fid_minutes
    a.samplers = a.samplers or [k for k, *_ in SAMPLERS]
    if a.ddpm_chunk < 1:
        ap.error(f"--ddpm-chunk must be >= 1, got {a.ddpm_chunk}")
    if a.inpaint_average < 2:
        ap.error("--inpaint-average must be >= 2 (the first inpainting row is one fill)")
    if not set(a.fid_minutes) <= set(a.minutes):
        ap.error(f"--fid-minutes {a.fid_minutes} must be among --minutes {a.minutes}")
    if a.threads < 1:
        ap.error(f"--threads must be >= 1, got {a.threads}")
    torch.set_num_threads(a.threads)
    a.name = name = "diffusion-mnist" + (f"-{a.threads}thread" if a.threads > 1 else "") + ("-smoke" if a.smoke else "")
    command = pinned_command()
    if a.render_only:
        if not (RESULTS / f"{name}.json").is_file():
            ap.error(f"--render-only needs {RESULTS / name}.json; run the benchmark first")
        with results_lock(name):
            out = cited_runs(json.loads((RESULTS / f"{name}.json").read_text()))
            write_results(name, out, markdown(out, name))
        return
    RESULTS.mkdir(exist_ok=True)
    machine = machine_info()
    new: dict = {}
    ext = get_extractor("lenet-mnist")
    run_dir, ckpts, trained_here = a.run_dir, None, "train" not in a.skip
    if run_dir is not None:
        if not (run_dir / "checkpoints").is_dir():
            ap.error(f"--run-dir {run_dir} holds no checkpoints/; train it first (the train part of this script)")
        if trained_here:
            ap.error("--run-dir replaces training: add --skip train")
    elif trained_here:
        run_dir = train_with_marks("ddpm-mnist", fresh_run_dir(name.replace("diffusion", "ddpm")), a.minutes,
                                   a.seed)[0].run_dir
    if run_dir is not None:  # the checkpoint of each mark, and the training figures once it is finished
        need = (a.fid_minutes if "fid" not in a.skip else []) + (a.minutes[-1:] if "apply" not in a.skip else [])
        train, ckpts = run_info(run_dir, a.minutes, need)
        if train is not None:
            new["train"] = {**train, "trained_here": trained_here}
    if "fid" not in a.skip and run_dir is not None:
        real = features(ext, genlab.load(run_dir).data().test_x)
        new["fid"] = sampler_rows(run_dir, ckpts, a.minutes, a, ext, real)
    if "cond" not in a.skip:
        train, rows = cond_rows(a, load_classifier("lenet-mnist"))
        new["cond"] = {"train": train, "rows": rows}
    if "apply" not in a.skip and run_dir is not None:
        new["apply"] = apply_rows(run_dir, a, ext)
    path = RESULTS / f"{name}.json"
    with results_lock(name):  # processes on other cores may finish at the same time
        old = json.loads(path.read_text()) if path.exists() else {}
        out = merge(old, new, command, machine)
        write_results(name, out, markdown(out, name))


if __name__ == "__main__":
    main()
