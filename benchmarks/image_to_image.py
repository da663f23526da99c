"""Image-to-image (issue 24) on CPU: translation (pix2pix, CycleGAN), SDEdit and style transfer.

    # all four parts (about 1.5 hours); or one process per core, each with some of the parts
    .venv/bin/python benchmarks/image_to_image.py
    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/image_to_image.py --parts pix2pix,sdedit
    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/image_to_image.py --parts cyclegan,style
    # tiny budgets end to end; results, galleries and runs under /tmp/genlab-image-to-image-smoke
    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/image_to_image.py --smoke --parts sdedit,style

Parts (`--parts`, comma-separated; each is a pair of functions in PARTS, so more can be added):

pix2pix: `pix2pix-mnist-edges` trained for --minutes (30), measured at half the budget from the
checkpoint kept then, and at the end: PSNR, SSIM, MSE of the translated test edge maps against
their digits (the first --n, 10,000), FID (lenet-mnist) against the real test digits, the share
whose class lenet-mnist reads as the real digit's, and the same figures for the edge maps
themselves (no model) and the FID floor of real training digits.

cyclegan: `cyclegan-mnist-fashion` trained for --minutes: per direction, the share of translations
the target domain's LeNet accepts (its top class >= 0.9 and more confident than the source
domain's LeNet; next to the same share for real target images and untranslated sources), FID in
the target domain's LeNet space, and the cycle reconstruction error |F(G(a)) - a|.

sdedit: `genlab apply demo:ddpm-mnist edit` on guides made from the first --edit-n (500) MNIST
test images by three corruptions (a blocky sketch: 4x4 block means binarised at 30% and enlarged
again, i.e. a drawing on a 7x7 grid; a heavy Gaussian blur, sigma 2.5; block noise: three random
7x7 blocks of uniform noise per image), edited --batch images per call at strengths 0.2 .. 1.0
with the demo's default sampler (DPM-Solver++, 20 steps scaled by the strength). Realism: FID in
the lenet-mnist feature space against the 10,000 test images (biased upwards at small N: compare
rows of the same N); faithfulness: the mean per-image RMS distance to the guide on the [0, 1]
pixel scale (and to the clean image the guide was made from). Strength 0 is the guide itself.

style: two 256x256 content photos (centre crops of scikit-learn's sample photos china.jpg and
flower.jpg) in the style of a procedural brush-stroke image (drawn from the seed, shown in the
gallery). The optimiser (`genlab apply style`, L-BFGS, --iters iterations from the content)
against the feed-forward network of the `style-transfer` preset trained --ff-minutes (capped at
--ff-steps) on 128x128 crops of the same two photos (so they are not held out) with this style.
Both are scored with the same yardstick: unweighted content and style losses of
genlab.metrics.style (the random-feature network, FeatureSpec defaults) with the style image
scaled to the content's size, and the total content + 100 x style that both minimise (with TV x 1);
seconds per 256x256 image (the feed-forward network: the mean of --reps forward passes after one
warm-up).

Each part writes its gallery PNGs (held-out test images: input, output, target / round trips;
guides and edits; photos and stylisations) into the results folder. Results are merged into
benchmarks/results/image-to-image.{json,md} part by part, so parts can run in separate processes
(one per core); the Markdown is re-rendered from the JSON, naming the command and machine (CPU
model, threads, matmul peak) behind each part.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import sys
import time
from pathlib import Path

from _common import RESULTS, RUNS, machine_lines, mean_train_throughput, pinned_command, train_with_marks

import numpy as np
import torch
import torch.nn.functional as F

import genlab
from genlab.apply.io import labelled_rows
from genlab.bench import machine_info
from genlab.engine.checkpoint import atomic_write_bytes, atomic_write_json, atomic_write_text
from genlab.evaluation import evaluate
from genlab.images import png_bytes
from genlab.seed import make_generator

NAME = "image-to-image"
STRENGTHS = (0.2, 0.4, 0.6, 0.8, 1.0)  # SDEdit strengths, besides 0 (the guide itself)
CORRUPTIONS = ("blocky sketch (7x7)", "heavy blur (sigma 2.5)", "block noise (3 blocks of 7x7)")


def log(msg: str) -> None:
    print(f"[{NAME} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- shared helpers


def fresh_dir(run_dir: Path) -> Path:
    """run_dir, with any earlier run of the same name removed first: each part trains afresh."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    return run_dir


def write_gallery(path: Path, rows: list[tuple[str, torch.Tensor]]) -> None:
    """Labelled rows of uint8 (k, C, H, W) images as one PNG, as wide as the longest row."""
    atomic_write_bytes(path, png_bytes(labelled_rows(rows, max(len(x) for _, x in rows))))


def train_and_measure(preset: str, a) -> dict:
    """Train `preset` for a.minutes (the time budget alone: --steps is lifted) into a.runs, keeping
    a checkpoint at half of it; evaluate both checkpoints on a.n test images per direction and
    write a gallery PNG of each into a.results. Returns the part's record."""
    marks = [a.minutes / 2, a.minutes]
    run_dir = fresh_dir(a.runs / preset)
    t0 = time.time()
    res, ckpts, steps = train_with_marks(preset, run_dir, marks, a.seed, steps=10**9, overrides=a.overrides)
    log(f"{preset}: {res.state.step} steps in {time.time() - t0:.0f} s")
    rows = []
    for m, ck, step in zip(marks, ckpts, steps):
        rep = evaluate(run_dir, n=a.n, checkpoint=ck, out=run_dir / f"report-{ck}.json", seed=a.seed, html=False)
        picture = f"{a.name}-{preset}-{m:g}min.png"
        atomic_write_bytes(a.results / picture, gallery(genlab.load(run_dir, checkpoint=ck), k=10))
        rows.append({"minutes": m, "checkpoint": ck, "step": step, "gallery": picture, "metrics": rep["metrics"]})
        log(f"{preset} at {m:g} min (step {step}): " + ", ".join(f"{k} {v['value']:.4g}" for k, v in rep["metrics"].items()))
    run = genlab.load(run_dir)
    return {"preset": preset, "run_dir": str(run_dir), "minutes": a.minutes, "n": a.n, "seed": a.seed,
            "batch_size": run.cfg.train.batch_size, "images_per_s": mean_train_throughput(run_dir),
            "params": sum(p.numel() for p in run.model.parameters()), "rows": rows}


@torch.no_grad()
def gallery(run, k: int = 10) -> bytes:
    """The model's labelled rows for the first k test examples of each domain, as PNG bytes."""
    data = run.data()
    batch = data.feeder(run.pipeline, 1, 0).eval_batch("test", 0, k, run.device)
    rows = [(label, run.pipeline.to_uint8(x)) for label, x in run.model.gallery(batch["a"], batch["b"])]
    return png_bytes(labelled_rows(rows, k))


def rate(record: dict) -> str:
    ips = record["images_per_s"]
    return ("training images/s not logged" if ips is None else
            f"{ips:,.0f} training images/s (a step draws a batch for each of its two optimisers)")


def value(row: dict, name: str, digits: int = 3) -> str:
    m = row["metrics"].get(name)
    return "-" if m is None else f"{m['value']:.{digits}f}"


# --------------------------------------------------------------------------- pix2pix


def run_pix2pix(a) -> dict:
    rec = train_and_measure("pix2pix-mnist-edges", a)
    rec["baselines"] = pix2pix_baselines(a)
    return rec


def pix2pix_baselines(a) -> dict:
    """The edge maps themselves against their digits (what translation starts from), and the FID
    of real training digits against the real test digits (the floor at this N)."""
    from genlab.config import DataConfig
    from genlab.data.paired import load_paired_data
    from genlab.metrics import reconstruction as rec
    from genlab.metrics.features import get_extractor
    from genlab.metrics.sample_quality import FeatureSet, fid

    data = load_paired_data(DataConfig(dataset="mnist-edges"))
    n = min(a.n, len(data.test_a))
    edges, digits = data.test_a[:n], data.test_b[:n]
    ext = get_extractor("lenet-mnist")

    def feats(x):
        fs = FeatureSet()
        fs.update(ext(x)[0])
        return fs

    real = feats(digits)
    pick = torch.randperm(len(data.train_b), generator=torch.Generator().manual_seed(a.seed))[:n]
    return {"n": n, "edges": {"psnr": rec.psnr(edges, digits), "ssim": rec.ssim(edges, digits),
                              "mse": rec.mse(edges, digits), "fid": fid(real, feats(edges))},
            "real_train_fid": fid(real, feats(data.train_b[pick]))}


def md_pix2pix(r: dict) -> str:
    b = r["baselines"]
    lines = [f"## pix2pix: Sobel edge maps to MNIST digits (`{r['preset']}`)\n",
             f"{r['params']:,} parameters, batch {r['batch_size']}, {rate(r)}; "
             f"figures on the first {r['n']:,} test pairs (seed {r['seed']}). One {r['minutes']:g}-minute run, "
             "measured at half its budget from the checkpoint kept then (its learning rate not yet annealed) "
             "and at the end.\n",
             "| budget | steps | PSNR dB ↑ | SSIM ↑ | MSE ↓ | FID (lenet-mnist) ↓ | class kept ↑ |",
             "|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['minutes']:g} min | {row['step']:,} | {value(row, 'psnr', 2)} | {value(row, 'ssim')} | "
                     f"{value(row, 'mse', 4)} | {value(row, 'fid', 2)} | {value(row, 'class_agreement')} |")
    e = b["edges"]
    lines += [f"| edge maps as they are | - | {e['psnr']:.2f} | {e['ssim']:.3f} | {e['mse']:.4f} | {e['fid']:.2f} | - |",
              f"| real training digits (FID floor, N={b['n']:,}) | - | - | - | - | {b['real_train_fid']:.2f} | - |", "",
              "*class kept*: the share of translations lenet-mnist gives the class it gives the real digit.\n"]
    for row in r["rows"]:
        lines.append(f"After {row['minutes']:g} minutes (test edge maps, translations, real digits):\n\n"
                     f"![pix2pix {row['minutes']:g} min]({row['gallery']})\n")
    return "\n".join(lines)


# --------------------------------------------------------------------------- CycleGAN


def run_cyclegan(a) -> dict:
    return train_and_measure("cyclegan-mnist-fashion", a)


def md_cyclegan(r: dict) -> str:
    lines = [f"## CycleGAN: MNIST <-> Fashion-MNIST (`{r['preset']}`)\n",
             f"{r['params']:,} parameters, batch {r['batch_size']} per domain, {rate(r)}; figures on the first "
             f"{r['n']:,} test images of each domain (seed {r['seed']}).\n",
             "| budget | steps | direction | accepted ↑ (real / untranslated) | FID ↓ | cycle L1 ↓ |",
             "|---|---|---|---|---|---|"]
    for row in r["rows"]:
        for d, cyc, judge in (("ab", "cycle_l1_aba", "digits to garments"), ("ba", "cycle_l1_bab", "garments to digits")):
            acc = row["metrics"].get(f"acceptance_{d}")
            ref = f" ({acc['real']:.3f} / {acc['untranslated']:.3f})" if acc else ""
            fid = row["metrics"].get(f"fid_{d}")
            ext = f" ({fid['extractor']})" if fid else ""
            lines.append(f"| {row['minutes']:g} min | {row['step']:,} | {judge} | {value(row, 'acceptance_' + d)}{ref} | "
                         f"{value(row, 'fid_' + d, 2)}{ext} | {value(row, cyc, 4)} |")
    lines += ["",
              "*accepted*: the target domain's shipped LeNet gives its top class probability >= 0.9 and is more "
              "confident than the source domain's LeNet. Either classifier alone knows ten classes, not the domain "
              "(lenet-fashion is that sure of 40% of MNIST digits), so the pair makes the domain decision; the share "
              "for real target images is its ceiling, for the untranslated sources its floor. There is no right "
              "answer to which garment a digit should become: the figures say whether the translations look like "
              "the target domain and whether the cycle keeps enough to come back. *cycle L1*: mean |F(G(a)) - a| on "
              "the [0, 1] pixel scale.\n"]
    for row in r["rows"]:
        lines.append(f"After {row['minutes']:g} minutes (test digits and garments, translations, round trips):\n\n"
                     f"![CycleGAN {row['minutes']:g} min]({row['gallery']})\n")
    return "\n".join(lines)


# --------------------------------------------------------------------------- SDEdit


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """uint8 (N, 1, H, W) -> blurred uint8, a separable Gaussian of std sigma (zero padding)."""
    r = int(3 * sigma)
    k = torch.exp(-torch.arange(-r, r + 1).float() ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    y = F.conv2d(x.float(), k.view(1, 1, 1, -1), padding=(0, r))  # (N, 1, H, W)
    y = F.conv2d(y, k.view(1, 1, -1, 1), padding=(r, 0))  # (N, 1, H, W)
    return y.round().clamp(0, 255).to(torch.uint8)


def corrupt(x: torch.Tensor, kind: str, seed: int) -> torch.Tensor:
    """The guides: uint8 (N, 1, 28, 28) MNIST images corrupted as `kind` (one of CORRUPTIONS)."""
    if kind.startswith("blocky"):
        coarse = (F.avg_pool2d(x.float(), 4) > 0.3 * 255).float() * 255  # (N, 1, 7, 7)
        return F.interpolate(coarse, scale_factor=4, mode="nearest").to(torch.uint8)  # (N, 1, 28, 28)
    if kind.startswith("heavy blur"):
        return gaussian_blur(x, 2.5)
    g = make_generator(seed)
    out = x.clone()
    for i in range(len(x)):
        for _ in range(3):
            y0, x0 = (int(v) for v in torch.randint(0, 22, (2,), generator=g))
            out[i, :, y0:y0 + 7, x0:x0 + 7] = torch.randint(0, 256, (1, 7, 7), generator=g, dtype=torch.uint8)
    return out


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over images of the RMS pixel distance on the [0, 1] scale."""
    return ((a.float() - b.float()) / 255).pow(2).flatten(1).mean(1).sqrt().mean().item()


def run_sdedit(a) -> dict:
    """SDEdit of a.edit_n corrupted MNIST test images per corruption and strength with
    demo:ddpm-mnist; writes the gallery into a.results and returns the part's record."""
    from genlab.apply.edit import run_edit
    from genlab.metrics.features import get_extractor
    from genlab.metrics.sample_quality import FeatureSet, fid

    run = genlab.load("demo:ddpm-mnist")
    data = run.data()
    ext = get_extractor("lenet-mnist")
    real = FeatureSet()
    real.update(ext(data.test_x)[0])
    x = data.test_x[:a.edit_n]
    rows, pictures = [], [("original", x[:10])]
    for kind in CORRUPTIONS:
        guide = corrupt(x, kind, a.seed)
        pictures.append((kind, guide[:10]))
        for s in (0.0, *STRENGTHS):
            t0 = time.perf_counter()
            out = torch.cat([run_edit(run, guide[i:i + a.batch], None, strength=s, seed=a.seed + i)
                             for i in range(0, len(guide), a.batch)])
            secs = time.perf_counter() - t0
            fs = FeatureSet()
            fs.update(ext(out)[0])
            rows.append({"corruption": kind, "strength": s, "n": len(out), "fid": fid(real, fs),
                         "l2_to_guide": rms(out, guide), "l2_to_original": rms(out, x),
                         "seconds_per_image": secs / len(out)})
            log(f"SDEdit {kind}, strength {s:g}: FID {rows[-1]['fid']:.2f}, L2 to guide "
                f"{rows[-1]['l2_to_guide']:.3f}, {secs / len(out) * 1000:.1f} ms/image")
            if s > 0:
                pictures.append((f"  S={s:g}", out[:10]))
    picture = f"{a.name}-sdedit.png"
    write_gallery(a.results / picture, pictures)
    return {"n": len(x), "batch": a.batch, "seed": a.seed, "gallery": picture,
            "sampler": f"{run.model.cfg.sampler}, {run.model.cfg.sampling_steps} steps x strength", "rows": rows}


def md_sdedit(r: dict) -> str:
    lines = ["## SDEdit with demo:ddpm-mnist: realism against faithfulness\n",
             f"{r['n']} MNIST test images per corruption (seed {r['seed']}); sampler {r['sampler']}. FID: "
             "lenet-mnist, against the 10,000 test images (biased upwards at this N; compare rows). L2: mean "
             "per-image RMS distance on the [0, 1] scale. Strength 0 is the guide itself.\n",
             "| corruption | strength | FID ↓ | L2 to guide | L2 to original ↓ | ms / image |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {row['corruption']} | {row['strength']:g} | {row['fid']:.2f} | {row['l2_to_guide']:.3f} | "
              f"{row['l2_to_original']:.3f} | {1000 * row['seconds_per_image']:.1f} |" for row in r["rows"]]
    lines += ["", "Gallery: the test images, then per corruption its guides and their edits at each strength.\n",
              f"![SDEdit gallery]({r['gallery']})\n"]
    return "\n".join(lines)


# --------------------------------------------------------------------------- style transfer


def stroke_style(size: int, seed: int) -> torch.Tensor:
    """A procedural 'painting': short thick strokes in blues and yellows along a swirling field,
    uint8 (1, 3, size, size)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    palette = np.array([[20, 40, 110], [40, 80, 170], [230, 200, 60], [250, 240, 150], [30, 120, 160],
                        [10, 20, 50], [200, 120, 40]])
    im = Image.new("RGB", (size, size), (30, 50, 120))
    draw = ImageDraw.Draw(im)
    for _ in range(int(2500 * (size / 256) ** 2)):
        px, py = rng.uniform(0, size, 2)
        angle = np.sin(px / 30.0) + 1.5 * np.cos(py / 25.0)
        length = rng.uniform(6, 16)
        colour = np.clip(palette[rng.integers(len(palette))] + rng.integers(-20, 20, 3), 0, 255)
        draw.line([(px, py), (px + length * np.cos(angle), py + length * np.sin(angle))],
                  fill=tuple(int(v) for v in colour), width=int(rng.integers(2, 5)))
    return torch.from_numpy(np.asarray(im).transpose(2, 0, 1).copy())[None]  # (1, 3, size, size)


def centre_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """The central size x size crop of (..., H, W) images."""
    H, W = img.shape[-2:]
    y0, x0 = (H - size) // 2, (W - size) // 2
    return img[..., y0:y0 + size, x0:x0 + size].contiguous()


def style_scores(out: torch.Tensor, content: torch.Tensor, style: torch.Tensor) -> dict:
    """Unweighted content and style losses (FeatureSpec defaults) of uint8 (1, 3, H, W) `out`,
    and the total content + STYLE_WEIGHT x style."""
    from genlab.apply.style import STYLE_WEIGHT
    from genlab.data.photos import scale_to
    from genlab.metrics.style import PerceptualLoss

    loss = PerceptualLoss()
    s = scale_to(style, min(content.shape[-2:])).float() / 255
    terms = loss(out.float() / 255, *loss.targets(content.float() / 255, s))
    c, st = terms["content"].item(), terms["style"].item()
    return {"content_loss": c, "style_loss": st, "total": c + STYLE_WEIGHT * st}


def run_style_transfer(a) -> dict:
    """The optimiser against the `style-transfer` preset trained a.ff_minutes, on two 256x256
    photos in a procedural stroke style; writes the gallery into a.results and returns the record."""
    from genlab.apply.style import STYLE_WEIGHT, run_style
    from genlab.data.photos import read_photo

    style = stroke_style(256, a.seed)
    style_path = a.runs / f"{NAME}-style-strokes.png"  # beside the run whose config names it
    atomic_write_bytes(style_path, png_bytes(style[0].permute(1, 2, 0).numpy()))
    contents = {n: centre_crop(read_photo(f"sample:{n}", "content"), 256) for n in ("china.jpg", "flower.jpg")}
    log(f"feed-forward: training style-transfer for {a.ff_minutes:g} min")
    res = genlab.train("style-transfer", fresh_dir(a.runs / "style-transfer"), minutes=a.ff_minutes,
                       steps=a.ff_steps, seed=a.seed, overrides=[f"data.style={style_path}"])
    ff = genlab.load(res.run_dir)
    rows, pictures = [], [("style", style)]
    for name, c in contents.items():
        t0 = time.perf_counter()
        opt = run_style(None, c, None, style=style, iters=a.iters)
        t_opt = time.perf_counter() - t0
        run_style(ff, c, None)  # warm-up
        t0 = time.perf_counter()
        for _ in range(a.reps):
            out_ff = run_style(ff, c, None)
        t_ff = (time.perf_counter() - t0) / a.reps
        for method, img, secs in (("content photo, unchanged", c, 0.0),
                                  (f"optimiser (L-BFGS, {a.iters} iterations)", opt, t_opt),
                                  (f"feed-forward ({a.ff_minutes:g} min training, {res.state.step} steps)", out_ff,
                                   t_ff)):
            rows.append({"content": name, "method": method, "seconds_per_image": secs,
                         **style_scores(img, c, style)})
            log(f"style {name}, {method}: {rows[-1]}")
        pictures.append((name, torch.cat([c, opt, out_ff])))
    picture = f"{a.name}-style.png"
    write_gallery(a.results / picture, pictures)
    train = {"steps": res.state.step, "minutes": a.ff_minutes, "run": str(res.run_dir),
             "params": sum(p.numel() for p in ff.model.parameters())}
    return {"iters": a.iters, "reps": a.reps, "seed": a.seed, "style_weight": STYLE_WEIGHT, "feed_forward": train,
            "gallery": picture, "rows": rows}


def md_style(r: dict) -> str:
    ff = r["feed_forward"]
    lines = ["## Style transfer, 256x256: optimiser against feed-forward network\n",
             "Content and style losses of genlab.metrics.style (random-feature network, unweighted); total = "
             f"content + {r['style_weight']:g} x style, what both methods minimise (besides a total-variation term "
             f"of weight 1). The feed-forward network ({ff['params']:,} parameters) trained {ff['minutes']:g} min "
             f"({ff['steps']} steps) on 128x128 crops of the same two photos, so they are not held out. Seconds "
             f"per image of the feed-forward network: the mean of {r['reps']} forward passes after a warm-up.\n",
             "| content | method | content loss ↓ | style loss ↓ | total ↓ | seconds / image |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {row['content']} | {row['method']} | {row['content_loss']:.4f} | {row['style_loss']:.5f} | "
              f"{row['total']:.3f} | {row['seconds_per_image']:.3f} |" for row in r["rows"]]
    lines += ["", "Gallery: the style image, then per photo: content, optimiser, feed-forward.\n",
              f"![style gallery]({r['gallery']})\n"]
    return "\n".join(lines)


# part -> (run(args) -> JSON record, render(record) -> Markdown section). A part trains into args.runs
# and writes its pictures into args.results (the folder of the .md that links them).
PARTS = {"pix2pix": (run_pix2pix, md_pix2pix), "cyclegan": (run_cyclegan, md_cyclegan),
         "sdedit": (run_sdedit, md_sdedit), "style": (run_style_transfer, md_style)}


# --------------------------------------------------------------------------- results


def markdown(results: dict) -> str:
    md = ["# Image-to-image: translation, SDEdit and style transfer\n",
          "Written by `benchmarks/image_to_image.py`; each part names the command and machine that measured it.\n"]
    for name, (_, render) in PARTS.items():
        part = results["parts"].get(name)
        if part is None:
            continue
        md += [render(part["result"]), f"Command: `{part['command']}`\n", machine_lines(part["machine"])]
    return "\n".join(md)


def merge(path: Path, name: str, entry: dict) -> None:
    """Put one part's entry into the results JSON at `path` and re-render the Markdown beside it.
    The file is read again under a lock on its folder, so processes running other parts at the
    same time keep each other's results."""
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        results = json.loads(path.read_text()) if path.is_file() else {"benchmark": NAME, "parts": {}}
        results["parts"][name] = entry
        atomic_write_json(path, results)
        atomic_write_text(path.with_suffix(".md"), markdown(results))
    finally:
        os.close(fd)  # releases the lock


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", nargs="+", default=[",".join(PARTS)],
                    help=f"comma-separated parts to run: {', '.join(PARTS)} (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true",
                    help="tiny budgets and sizes end to end; runs, galleries and results under /tmp")
    g = ap.add_argument_group("pix2pix and cyclegan")
    g.add_argument("--minutes", type=float, default=30.0, help="training budget of each part; also measured at half")
    g.add_argument("--n", type=int, default=10_000, help="test images per direction")
    g = ap.add_argument_group("sdedit")
    g.add_argument("--edit-n", type=int, default=500, help="MNIST test images per corruption")
    g.add_argument("--batch", type=int, default=250, help="images per SDEdit call")
    g = ap.add_argument_group("style")
    g.add_argument("--iters", type=int, default=200, help="L-BFGS iterations of the optimiser")
    g.add_argument("--ff-minutes", type=float, default=8.0, help="training minutes of the feed-forward network")
    g.add_argument("--ff-steps", type=int, help="training step cap of the feed-forward network (default the "
                                                "preset's 2,000, whose learning-rate schedule is kept)")
    g.add_argument("--reps", type=int, default=10, help="timed forward passes of the feed-forward network")
    a = ap.parse_args()
    parts = [p for item in a.parts for p in item.split(",") if p]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        ap.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    if a.smoke:
        a.minutes, a.n = min(a.minutes, 0.4), min(a.n, 500)
        a.edit_n, a.batch, a.iters, a.reps = min(a.edit_n, 32), min(a.batch, 32), min(a.iters, 5), min(a.reps, 2)
        a.ff_minutes, a.ff_steps = min(a.ff_minutes, 0.2), min(a.ff_steps or 10, 10)
    a.overrides = ["train.log_every=5"] if a.smoke else []  # a log record (throughput) within a few steps
    a.name = NAME + ("-smoke" if a.smoke else "")
    a.results = Path("/tmp") / f"genlab-{a.name}" if a.smoke else RESULTS
    a.runs = a.results / "runs" if a.smoke else RUNS
    a.results.mkdir(parents=True, exist_ok=True)
    a.runs.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    command = pinned_command()
    path = a.results / f"{a.name}.json"
    for p in parts:
        log(f"part {p}")
        record = PARTS[p][0](a)
        merge(path, p, {"command": command, "machine": machine, "result": record})  # a later failure keeps it
    log(f"wrote {path} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
