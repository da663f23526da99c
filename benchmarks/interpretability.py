"""Interpretability (issue 29): how disentangled beta-VAEs are on shapes with known factors, and
how faithful each attribution method is.

    # the full run: about 25 minutes on one core (3 beta values x 6 minutes of training)
    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/interpretability.py
    # end to end in about a minute; results and figures to /tmp/interpretability-smoke*
    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/interpretability.py --smoke

disentanglement: --shapes (20,000) dSprites-like shapes (genlab.explain.shapes: shape, scale,
rotation, x, y on 28x28 grey images, drawn from --seed) written as an .npz that `vae-mnist` trains
on (`--set data.dataset=array data.path=FILE.npz`, latent_dim --latent-dim (10), model.beta set,
the LR schedule laid out for --schedule-steps), each beta for --minutes of CPU time. Scored on
--eval-n (5,000) fresh shapes (seed + 1): the MIG (Chen et al. 2018; 20 equal-width bins of the
posterior means, genlab.explain.disentanglement.mig) and its gap per factor, the KL per latent
dimension (active: > 0.01 nats) and the run's own test-split loss terms. Figures: MIG and
reconstruction against beta, the mutual-information matrices, and each beta's latent traversals
(genlab explain's, dimensions ranked by KL).

faithfulness: the three attribution methods of `genlab explain` (integrated gradients, occlusion,
GradientSHAP) on three judges: lenet-mnist on --faith-n (200) MNIST test images for their true
class, the shipped DCGAN demo's discriminator on --faith-model-n (32) of its samples, and the shipped
conditional VAE demo's label evidence on as many of its samples (balanced classes). Deletion
curves (the judge's output as the most attributed pixels are set to black first, 21 points) are
summarised by their area (lower: more faithful), beside random order (mean of 3), with the share
of inputs where a method beats random, and the seconds each method takes.

Results: benchmarks/results/interpretability.{json,md} and interpretability-*.png (--smoke:
/tmp/interpretability-smoke.{json,md} and /tmp/interpretability-smoke-*.png), naming the command
and the machine (CPU model, threads, matmul peak).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import RESULTS, RUNS, machine_lines, pinned_command

import numpy as np
import torch

import genlab
from genlab.apply.io import to_model_space
from genlab.bench import machine_info
from genlab.engine.checkpoint import atomic_write_bytes, atomic_write_json, atomic_write_text
from genlab.evaluation import read_report
from genlab.explain import attribution as A
from genlab.explain.common import ExplainOptions, figure_png, pyplot
from genlab.explain.disentanglement import encode_means, mig
from genlab.explain.latents import explain_latents, kl_per_dimension
from genlab.explain.shapes import FACTORS, make_shapes, write_shapes

NAME = "interpretability"


def log(msg: str) -> None:
    print(f"[interpretability] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- disentanglement


def disentanglement(a: argparse.Namespace, work: Path, figs: dict[str, bytes]) -> dict:
    t0 = time.time()
    data = work / "shapes-train.npz"
    write_shapes(data, a.shapes, seed=a.seed)
    eval_x, eval_f = make_shapes(a.eval_n, seed=a.seed + 1)
    eval_x = torch.from_numpy(eval_x)
    log(f"{a.shapes} training shapes and {a.eval_n} evaluation shapes in {time.time() - t0:.1f} s")
    rows = []
    for beta in a.betas:
        run_dir = work / f"beta-{beta:g}"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        overrides = ["data.dataset=array", f"data.path={data}", f"model.beta={beta}",
                     f"model.latent_dim={a.latent_dim}", f"train.steps={a.schedule_steps}"]
        t1 = time.time()
        budget = {"steps": a.steps} if a.steps else {"minutes": a.minutes}
        res = genlab.train("vae-mnist", run_dir, overrides=overrides, seed=a.seed, **budget)
        train_s = time.time() - t1
        run = genlab.load(run_dir)
        with torch.no_grad():
            z = encode_means(run, eval_x)
            kl = kl_per_dimension(run.model, to_model_space(run, eval_x)).numpy()
        score = mig(z, eval_f)
        report = read_report(run_dir / "report.json").get("metrics", {})
        loss = {k: round(v["value"], 4) for k, v in report.items() if k.startswith(("test_", "val_"))}
        part = explain_latents(run, ExplainOptions(seed=a.seed))
        figs[f"traversals-beta{beta:g}"] = part.figures[0][2]
        rows.append({"beta": beta, "steps": res.state.step, "train_seconds": round(train_s, 1),
                     "mig": round(score["mig"], 4),
                     "mig_per_factor": dict(zip(FACTORS, [None if g is None else round(g, 4)
                                                          for g in score["per_factor"]])),
                     "best_dim": dict(zip(FACTORS, score["best_dim"])),
                     "mi": [[round(v, 4) for v in r] for r in score["mi"]], "entropy": score["entropy"],
                     "kl_per_dim": [round(float(v), 4) for v in kl], "active_dims": int((kl > 0.01).sum()),
                     "test_losses": loss, "run": str(run_dir)})
        log(f"beta {beta:g}: {res.state.step} steps in {train_s:.0f} s, MIG {score['mig']:.4f}, "
            f"{rows[-1]['active_dims']} active dims, {loss}")
    figs["mig"] = _mig_png(rows)
    figs["mi"] = _mi_png(rows)
    return {"shapes": a.shapes, "eval_n": a.eval_n, "latent_dim": a.latent_dim, "minutes": a.minutes,
            "steps": a.steps, "schedule_steps": a.schedule_steps, "bins": 20, "factors": list(FACTORS),
            "rows": rows, "seconds": round(time.time() - t0, 1)}


def _mig_png(rows: list[dict]) -> bytes:
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(9, 3.2))
    betas = [r["beta"] for r in rows]
    ax.plot(betas, [r["mig"] for r in rows], "o-", label="MIG")
    for f in FACTORS:
        ax.plot(betas, [r["mig_per_factor"][f] or 0 for r in rows], ".--", lw=0.8, label=f)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("beta")
    ax.set_ylabel("gap / H(factor)")
    ax.set_title("MIG (and each factor's gap)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    recon = [r["test_losses"].get("test_recon", np.nan) for r in rows]
    bx.plot(betas, recon, "o-", color="#aa4444")
    bx.set_xscale("log", base=2)
    bx.set_xlabel("beta")
    bx.set_ylabel("test reconstruction (nats)")
    bx.set_title("reconstruction")
    bx.grid(alpha=0.3)
    fig.tight_layout()
    return figure_png(fig)


def _mi_png(rows: list[dict]) -> bytes:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(rows), figsize=(3.6 * len(rows), 2.6), squeeze=False)
    for ax, r in zip(axes[0], rows):
        mi = np.array(r["mi"]) / np.array(r["entropy"])[:, None]
        ax.imshow(mi, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_yticks(range(len(FACTORS)), FACTORS, fontsize=7)
        ax.set_xlabel("latent dimension")
        ax.set_title(f"beta {r['beta']:g}: MIG {r['mig']:.3f}", fontsize=9)
    fig.tight_layout()
    return figure_png(fig)


# --------------------------------------------------------------------------- faithfulness


def _first(judge: A.Judge, maps: dict, k: int) -> tuple[A.Judge, dict]:
    """The first k inputs of a judge and their maps (for a figure)."""
    j = dataclasses.replace(judge, inputs=judge.inputs[:k], target=judge.target[:k], pictures=judge.pictures[:k],
                            row_labels=judge.row_labels[:k], extra=tuple(e[:k] for e in judge.extra))
    return j, {m: v[:k] for m, v in maps.items()}


def measure(judge: A.Judge, seed: int) -> tuple[dict, dict]:
    times, maps = {}, {}
    for m in A.METHODS:
        t = time.time()
        maps[m] = A.attribute(judge, m, seed)
        times[m] = round(time.time() - t, 2)
    faith = A.faithfulness(judge, maps, seed)
    per = faith.pop("auc_per_input")
    beats = {m: round(float(np.mean(np.array(per[m]) < np.array(per["random"]))), 4) for m in A.METHODS}
    return {"n": len(judge.inputs), "output": judge.output, "probability": judge.probability, "seconds": times,
            "beats_random": beats, "deletion": faith}, maps


def faithfulness(a: argparse.Namespace, figs: dict[str, bytes]) -> dict:
    from genlab.data.datasets import load_idx_split, resolve_data_root
    from genlab.seed import make_generator

    t0 = time.time()
    x, y = load_idx_split(resolve_data_root(), "mnist", "test")
    idx = torch.randperm(len(x), generator=make_generator(a.seed))[:a.faith_n]
    judges = {"lenet-mnist (MNIST test images, true class)": A.classifier_judge("lenet-mnist", x[idx], y[idx])}
    gan = genlab.load("demo:dcgan-mnist")
    s, _ = gan.sample(a.faith_model_n, seed=a.seed)
    judges["discriminator (demo:dcgan-mnist, its samples)"] = A.discriminator_judge(gan, s, None)
    cvae = genlab.load("demo:cvae-mnist")
    s, labels = cvae.sample(a.faith_model_n, seed=a.seed)
    judges["label evidence (demo:cvae-mnist, its samples)"] = A.label_evidence_judge(cvae, s, labels)
    results = {}
    for name, judge in judges.items():
        results[name], maps = measure(judge, a.seed)
        auc = results[name]["deletion"]["auc"]
        log(f"{name}: deletion AUC " + ", ".join(f"{m} {v:.4f}" for m, v in auc.items())
            + f"; seconds {results[name]['seconds']}")
        if name.startswith("lenet"):
            figs["heatmaps-lenet"] = A.attribution_png(*_first(judge, maps, 8))
    figs["deletion"] = A.deletion_png(results)
    return {"judges": results, "methods": list(A.METHODS), "ig_steps": A.IG_STEPS, "shap_samples": A.SHAP_SAMPLES,
            "deletion_steps": A.DELETION_STEPS, "random_orders": A.RANDOM_ORDERS, "seconds": round(time.time() - t0, 1)}


# --------------------------------------------------------------------------- report


def render(d: dict, prefix: str) -> str:
    out = ["# Interpretability (issue 29)", "",
           "Disentanglement of beta-VAEs on shapes with known factors, and the faithfulness of the attribution "
           "methods of `genlab explain`. See the docstring of `benchmarks/interpretability.py` for the method.", ""]
    dis = d.get("disentanglement")
    if dis:
        budget = f"{dis['steps']} steps" if dis["steps"] else f"{dis['minutes']:g} CPU minutes"
        out += ["## Disentanglement: MIG against beta", "",
                f"`vae-mnist` (MLP 784-512-512, latent {dis['latent_dim']}, Bernoulli) on {dis['shapes']:,} "
                f"dSprites-like 28x28 shapes (genlab.explain.shapes), {budget} per beta (LR schedule of "
                f"{dis['schedule_steps']:,} steps); MIG on {dis['eval_n']:,} fresh shapes, {dis['bins']} bins.", "",
                "| beta | steps | MIG | " + " | ".join(f"gap: {f}" for f in dis["factors"])
                + " | active dims | test recon | test KL |",
                "|---|---|---|" + "---|" * len(dis["factors"]) + "---|---|---|"]
        for r in dis["rows"]:
            gaps = " | ".join("-" if r["mig_per_factor"][f] is None else f"{r['mig_per_factor'][f]:.3f}"
                              for f in dis["factors"])
            t = r["test_losses"]
            out.append(f"| {r['beta']:g} | {r['steps']:,} | **{r['mig']:.3f}** | {gaps} | {r['active_dims']} | "
                       f"{t.get('test_recon', float('nan')):.2f} | {t.get('test_kl', float('nan')):.2f} |")
        out += ["", f"![MIG against beta]({prefix}-mig.png)", "", f"![mutual information]({prefix}-mi.png)", ""]
        for r in dis["rows"]:
            out += [f"Traversals at beta {r['beta']:g}: ![beta {r['beta']:g}]({prefix}-traversals-beta{r['beta']:g}.png)", ""]
    fa = d.get("faithfulness")
    if fa:
        names = {m: A.METHOD_NAMES[m] for m in fa["methods"]}
        out += ["## Faithfulness: deletion curves", "",
                "Area under the deletion curve (the judge's output as the most attributed pixels are set to black, "
                "0 to 100% in 20 steps; lower = more faithful), beside random order; in brackets the share of inputs "
                "on which the method beats random order; seconds for all inputs.", "",
                "| judge | n | " + " | ".join(names.values()) + " | random order | seconds (" + ", ".join(
                    names.values()) + ") |", "|---|---|" + "---|" * len(names) + "---|---|"]
        for name, r in fa["judges"].items():
            auc = r["deletion"]["auc"]
            cells = " | ".join(f"{auc[m]:.4f} ({100 * r['beats_random'][m]:.0f}%)" for m in fa["methods"])
            secs = ", ".join(f"{r['seconds'][m]:.1f}" for m in fa["methods"])
            out.append(f"| {name} | {r['n']} | {cells} | {auc['random']:.4f} | {secs} |")
        out += ["", f"![deletion curves]({prefix}-deletion.png)", "",
                f"lenet-mnist heat maps (input, integrated gradients, occlusion, GradientSHAP; red: for the class): "
                f"![heat maps]({prefix}-heatmaps-lenet.png)", ""]
    out += ["## Command and machine", "", f"`{d['command']}`", "", machine_lines(d["machine"]),
            f"- wall time: {d['wall_s'] / 60:.1f} min"]
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="disentanglement,faithfulness", help="comma-separated parts to run")
    p.add_argument("--betas", type=float, nargs="+", default=[1.0, 4.0, 16.0], help="beta values")
    p.add_argument("--minutes", type=float, default=6.0, help="CPU minutes of training per beta")
    p.add_argument("--steps", type=int, default=None, help="a step budget per beta instead of --minutes")
    p.add_argument("--schedule-steps", type=int, default=20_000, help="steps the LR schedule is laid out for")
    p.add_argument("--latent-dim", type=int, default=10)
    p.add_argument("--shapes", type=int, default=20_000, help="training shapes")
    p.add_argument("--eval-n", type=int, default=5_000, help="fresh shapes the MIG is measured on")
    p.add_argument("--faith-n", type=int, default=200, help="MNIST test images for the lenet-mnist judge")
    p.add_argument("--faith-model-n", type=int, default=32, help="demo samples for the discriminator and "
                                                                 "label-evidence judges")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny sizes end to end (about a minute); results to /tmp")
    a = p.parse_args()
    results_dir, name, work = RESULTS, NAME, RUNS / NAME
    if a.smoke:
        a.betas, a.steps, a.schedule_steps, a.shapes, a.eval_n = [1.0, 8.0], 40, 40, 1_500, 500
        a.faith_n, a.faith_model_n = 16, 4
        results_dir, name, work = Path("/tmp"), f"{NAME}-smoke", Path(tempfile.mkdtemp(prefix="interpretability-"))
    work.mkdir(parents=True, exist_ok=True)
    command = pinned_command()
    t0 = time.time()
    machine = machine_info()
    figs: dict[str, bytes] = {}
    data = {"command": command, "machine": machine, "args": vars(a), "work": str(work)}
    parts = a.parts.split(",")
    if "disentanglement" in parts:
        data["disentanglement"] = disentanglement(a, work, figs)
    if "faithfulness" in parts:
        data["faithfulness"] = faithfulness(a, figs)
    data["wall_s"] = round(time.time() - t0, 1)
    for key, png in figs.items():
        atomic_write_bytes(results_dir / f"{name}-{key}.png", png)
    atomic_write_json(results_dir / f"{name}.json", data)
    atomic_write_text(results_dir / f"{name}.md", render(data, name))
    print(f"wrote {results_dir / name}.md, .json and {len(figs)} figures ({data['wall_s'] / 60:.1f} min)",
          file=sys.stderr)


if __name__ == "__main__":
    main()
