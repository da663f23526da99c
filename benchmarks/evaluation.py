"""What genlab's sample-quality numbers mean, and how fast they are.

    .venv/bin/python benchmarks/evaluation.py                    # floors, ranking, timing, HTML
    .venv/bin/python benchmarks/evaluation.py --parts retrain    # retrain both LeNets from scratch
    (each part replaces its own section of the results; the others are kept)

1. Floors: FID/KID/precision/recall between 10,000 real training images and the 10,000 test
   images (the noise floor of a perfect model), and against distorted copies (Gaussian noise,
   blur, a 3-pixel shift), for lenet-mnist on MNIST and lenet-fashion on Fashion-MNIST.
2. Ranking: `genlab evaluate --n 10000` (FID + KID + precision/recall, sampling included) on a
   barely trained and a 5-minute dcgan-mnist run, with the end-to-end wall time of the command.
3. The HTML report rendered by headless Chromium (when installed) to a PNG.
4. retrain: scripts/train_classifier.py run again into a temporary folder; its test accuracy
   beside the shipped weights' (the script is deterministic on a given machine and thread count).

Writes benchmarks/results/evaluation.{md,json} and evaluation-report.png.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import HERE, RESULTS, RUNS, fresh_run_dir, machine_lines, write_results

import torch
import torch.nn.functional as F

import genlab
from genlab.bench import machine_info
from genlab.data.datasets import load_idx_split, resolve_data_root
from genlab.metrics import sample_quality as sq
from genlab.metrics.features import get_extractor

N = 10_000


def distortions(train: torch.Tensor) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    k = (torch.outer(k, k) / 256).view(1, 1, 5, 5)
    noisy = (train.float() + 50 * torch.randn(train.shape, generator=g)).round().clamp(0, 255).to(torch.uint8)
    return {
        "train split (floor)": train,
        "train + Gaussian noise (sigma 50/255)": noisy,
        "train, 5x5 binomial blur": F.conv2d(train.float(), k, padding=2).round().clamp(0, 255).to(torch.uint8),
        "train, shifted 3 px": torch.roll(train, shifts=(3, 3), dims=(2, 3)),
        "uniform noise images": torch.randint(0, 256, train.shape, generator=g, dtype=torch.uint8),
    }


def floors(root: Path) -> list[dict]:
    rows = []
    for dataset, ext_name in (("mnist", "lenet-mnist"), ("fashion-mnist", "lenet-fashion")):
        train, _ = load_idx_split(root, dataset, "train")
        test, _ = load_idx_split(root, dataset, "test")
        ext = get_extractor(ext_name)
        real = ext(test[:N])[0]
        a = sq.FeatureSet()
        a.update(real)
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:N]
        for name, imgs in distortions(train[perm]).items():
            f = ext(imgs)[0]
            b = sq.FeatureSet()
            b.update(f)
            p, r = sq._compute_precision_recall(real, f)
            rows.append({"dataset": dataset, "extractor": ext_name, "compared": name, "n": N,
                         "fid": sq.fid(a, b), "kid": sq._compute_kid(real, f)[0], "precision": p, "recall": r})
            print(rows[-1], file=sys.stderr)
    return rows


def timed_evaluate(run_dir: Path) -> dict:
    """`genlab evaluate RUN --n 10000` as a user runs it: a new process, wall time measured."""
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "genlab", "evaluate", str(run_dir), "--n", str(N),
                        "--metrics", "fid", "kid", "precision", "recall"], capture_output=True, text=True)
    wall = time.time() - t0
    if r.returncode:
        raise SystemExit(r.stderr)
    rep = json.loads((run_dir / "report.json").read_text())
    return {"run": run_dir.name, "step": rep["step"], "wall_seconds": wall, "report_seconds": rep["seconds"],
            "sample_seconds": rep["metrics"]["fid"]["sample_seconds"],
            **{k: rep["metrics"][k]["value"] for k in ("fid", "kid", "precision", "recall")}}


def ranking(seed: int, retrain_runs: bool) -> list[dict]:
    """Both runs are trained unless finished ones are in benchmarks/runs/ and --reuse-runs is given."""
    rows = []
    for name, kw in (("dcgan-mnist-300steps", {"steps": 300}), ("dcgan-mnist-5min", {"minutes": 5.0})):
        run = RUNS / name
        if retrain_runs or not (run / "samples" / "final.png").is_file():
            run = fresh_run_dir(name)
            genlab.train("dcgan-mnist", run, seed=seed, **kw)
        rows.append(timed_evaluate(run))
        print(rows[-1], file=sys.stderr)
    return rows


def render_html(run_dir: Path) -> str | None:
    chrome = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not chrome:
        return None
    out = RESULTS / "evaluation-report.png"
    subprocess.run([chrome, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={out}", "--window-size=1100,1400", (run_dir / "report.html").resolve().as_uri()],
                   capture_output=True, timeout=120, check=True)
    return out.name


def retrain() -> list[dict]:
    shipped = (HERE.parent / "src/genlab/weights/README.md").read_text()
    rows = []
    for dataset, name, extra in (("mnist", "lenet-mnist", []), ("fashion-mnist", "lenet-fashion", ["--shift", "0"])):
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copy(HERE.parent / "src/genlab/weights/README.md", tmp)
            r = subprocess.run([sys.executable, str(HERE.parent / "scripts/train_classifier.py"), "--dataset", dataset,
                                "--out-dir", tmp, *extra], capture_output=True, text=True)
            if r.returncode:
                raise SystemExit(r.stderr)
            again = re.search(rf"`{name}` \| ([0-9.]+)", (Path(tmp) / "README.md").read_text()).group(1)
        before = re.search(rf"`{name}` \| ([0-9.]+)", shipped).group(1)
        rows.append({"extractor": name, "shipped_accuracy": float(before), "retrained_accuracy": float(again)})
        print(rows[-1], file=sys.stderr)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", nargs="+", default=["floors", "ranking"], choices=["floors", "ranking", "retrain"],
                    help="what to (re)measure; the other parts are kept from the previous results file")
    ap.add_argument("--reuse-runs", action="store_true", help="ranking: evaluate finished runs in benchmarks/runs/")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    old = RESULTS / "evaluation.json"
    data = json.loads(old.read_text()) if old.is_file() else {}
    machine = machine_info()
    data.setdefault("machines", {})
    root = resolve_data_root()
    if "floors" in a.parts:
        data["floors"] = floors(root)
        data["machines"]["floors"] = {**machine, "load_average": open("/proc/loadavg").read().split()[0]}
        write(data)
    if "ranking" in a.parts:
        data["ranking"] = ranking(a.seed, not a.reuse_runs)
        data["machines"]["ranking"] = {**machine, "load_average": open("/proc/loadavg").read().split()[0]}
        data["html_png"] = render_html(RUNS / "dcgan-mnist-5min")
        write(data)
    if "retrain" in a.parts:
        data["retrain"] = retrain()
        data["machines"]["retrain"] = {**machine, "load_average": open("/proc/loadavg").read().split()[0]}
        write(data)


def write(data: dict) -> None:
    """Results so far, written after every part (a part that fails later keeps the earlier ones)."""
    md = ["# Evaluation: floors, ranking, speed\n",
          "Command: `.venv/bin/python benchmarks/evaluation.py [--parts floors ranking retrain]`. Every FID/KID "
          "here is in a LeNet feature space, named beside it; it is not comparable with Inception FIDs from papers.\n"]
    if data.get("floors"):
        md += ["## Floors: real test images against real or distorted images (N = 10,000 each)\n",
               _machine(data, "floors"),
               "| dataset | extractor | compared with the test split | FID | KID | precision | recall |",
               "|---|---|---|---|---|---|---|"]
        md += [f"| {r['dataset']} | {r['extractor']} | {r['compared']} | {r['fid']:.3f} | {r['kid']:.5f} | "
               f"{r['precision']:.3f} | {r['recall']:.3f} |" for r in data["floors"]]
        md.append("\nk-NN precision is fooled by samples that collapse into a dense region of real outliers "
                  "(uniform noise on Fashion-MNIST scores 0.94): read it beside recall and FID.")
    if data.get("ranking"):
        md += ["\n## `genlab evaluate RUN --n 10000` on dcgan-mnist runs\n",
               "Wall time is the whole command in a new process (start-up, sampling 10,000 images, features, "
               "FID + KID (100 subsets of 1,000) + precision/recall); the target is under 60 s.\n",
               _machine(data, "ranking"),
               "| run | step | FID (lenet-mnist) | KID | precision | recall | sampling s | command wall s |",
               "|---|---|---|---|---|---|---|---|"]
        md += [f"| {r['run']} | {r['step']:,} | {r['fid']:.2f} | {r['kid']:.4f} | {r['precision']:.3f} | "
               f"{r['recall']:.3f} | {r['sample_seconds']:.1f} | {r['wall_seconds']:.1f} |" for r in data["ranking"]]
        md.append("\nRead the step column: a CPU-minute budget buys very different numbers of steps on different "
                  "machines (and under other load). Two runs a few hundred steps apart early in GAN training are "
                  "not ordered reliably by FID; the part checks the command's speed, the GAN benchmark "
                  "(gan-mnist.md) the quality of trained runs.")
    if data.get("retrain"):
        md += ["\n## LeNet extractors retrained by scripts/train_classifier.py\n", _machine(data, "retrain"),
               "| extractor | shipped test accuracy | retrained test accuracy |", "|---|---|---|"]
        md += [f"| {r['extractor']} | {r['shipped_accuracy']:.4f} | {r['retrained_accuracy']:.4f} |"
               for r in data["retrain"]]
    if data.get("html_png"):
        md += ["\n## The HTML report of the 5-minute run, rendered by headless Chromium\n",
               f"![report]({data['html_png']})"]
    write_results("evaluation", data, "\n".join(md) + "\n")


def _machine(data: dict, part: str) -> str:
    m = data["machines"][part]
    return machine_lines(m) + f"- 1-minute load average when the part ended: {m.get('load_average', '?')}\n"


if __name__ == "__main__":
    main()
