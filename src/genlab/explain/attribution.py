"""Attributions: which input pixels a judge's output rests on, by three Captum methods, with
deletion curves that test how faithful each map is.

Judges (whichever apply to the run, each explained on the same drawn samples):
  the shipped domain classifier   lenet-mnist / lenet-fashion (genlab.metrics.classifier) on
                                  28x28 grey images: log p(class), the class asked for
                                  (conditional models) or the one it predicts
  the GAN discriminator           D(x) (the real-vs-fake logit), as trained (not its EMA copy)
  label evidence                  conditional VAEs and GANs: log p(y | x) when the model's
                                  per-label scores are read as a classifier's logits (VAE: the
                                  ELBO at the posterior mean, log p(x | mu, y) - KL; GAN: D(x, y))
  the audio judge                 digits-fsdd (genlab.metrics.audio) on audio runs' clips,
                                  attributed over their log-mel spectrogram
Methods: integrated gradients (64 Gauss-Legendre steps from the baseline), occlusion (a window
of a seventh of the image side, half-window strides, filled with the baseline) and GradientSHAP
(expected gradients, 32 draws, with references drawn from the baseline and the explained inputs
themselves: the data, as Erion et al. 2021 use it). The baseline is the
input that shows nothing: a black image, or silence.

Faithfulness (Samek et al. 2017's "deletion"): the inputs' pixels are set to the baseline in
the order of a map, most attributed first, and the judge's output recorded at 21 fractions from
0 to 1; the area under that curve (mean over inputs) is lower for a more faithful map, and is
compared with the same curve for random orders.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from genlab.errors import ConfigError, ShapeError
from genlab.explain.common import ExplainOptions, Part, figure_png, heatmap_rgb, pyplot, rgb, slug
from genlab.seed import derive_seed, make_generator

METHODS = ("integrated_gradients", "occlusion", "gradient_shap")
METHOD_NAMES = {"integrated_gradients": "integrated gradients", "occlusion": "occlusion",
                "gradient_shap": "GradientSHAP"}
IG_STEPS = 64
SHAP_SAMPLES = 32
DELETION_STEPS = 20
RANDOM_ORDERS = 3  # random deletion orders averaged as the reference curve
INTERNAL_BATCH = 256  # inputs per forward pass inside Captum


def captum_attr():
    """captum.attr, or a one-line ConfigError naming the explain extra."""
    from genlab.extras import require

    return require("captum.attr", "explain", "attributions (genlab explain --what attribution)")


@dataclass
class Judge:
    """A network to explain and the inputs to explain it on. Inputs live in the judge's own
    input space (C, H, W): pixels in [-1, 1] for a LeNet, the run's data space for its own
    networks, log-mel power for the audio judge."""

    name: str  # "lenet-mnist", "discriminator", "label evidence", "digits-fsdd"
    output: str  # what forward's target column means, for captions
    forward: Callable[..., torch.Tensor]  # (inputs (B, C, H, W), *extra) -> (B, K)
    inputs: torch.Tensor  # (B, C, H, W)
    target: torch.Tensor  # (B,) int64: the column of forward explained for each input
    baseline: torch.Tensor  # (1, C, H, W): the input that shows nothing
    pictures: torch.Tensor  # uint8 (B, 3, H, W): what each input looks like
    row_labels: list[str]
    extra: tuple = ()  # further forward arguments, one row per input (labels)
    probability: bool = True  # forward is a log-probability: deletion curves show exp(forward)
    flip: bool = False  # pictures are drawn upside down (spectrograms: low frequencies at the bottom)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) the explained output for inputs x (B, C, H, W): a probability or a score."""
        s = self.forward(x, *self.extra).gather(1, self.target[:, None].to(x.device))[:, 0]
        return s.exp() if self.probability else s


# --------------------------------------------------------------------------- methods


def attribute(judge: Judge, method: str, seed: int = 0) -> torch.Tensor:
    """The attribution map of `method` (see METHODS) for each of the judge's inputs.

    Returns:
        float32 (B, C, H, W) on the CPU. Integrated gradients: summed over the pixels it
        approximates judge output(x) - output(baseline) (completeness).
    """
    attr = captum_attr()
    x = judge.inputs.detach()
    C, H, W = x.shape[1:]
    extra = judge.extra or None
    base = judge.baseline.to(x.device)
    with torch.enable_grad():
        if method == "integrated_gradients":
            a = attr.IntegratedGradients(judge.forward).attribute(
                x, baselines=base, target=judge.target, additional_forward_args=extra, n_steps=IG_STEPS,
                internal_batch_size=INTERNAL_BATCH)
        elif method == "occlusion":
            w = max(2, min(H, W) // 7)
            a = attr.Occlusion(judge.forward).attribute(
                x, sliding_window_shapes=(C, w, w), strides=(C, max(1, w // 2), max(1, w // 2)), baselines=base,
                target=judge.target, additional_forward_args=extra, perturbations_per_eval=16)
        elif method == "gradient_shap":
            refs = torch.cat([base, x])  # (1 + B, C, H, W): nothing, and the data explained
            # Captum draws the references and the path points from numpy's and torch's global
            # streams: seed both, and give the caller's streams back afterwards
            state = np.random.get_state()
            try:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(derive_seed(seed, "explain-gradient-shap"))
                    np.random.seed(derive_seed(seed, "explain-gradient-shap") % 2**32)
                    a = attr.GradientShap(judge.forward).attribute(
                        x, baselines=refs, target=judge.target, additional_forward_args=extra,
                        n_samples=SHAP_SAMPLES, stdevs=0.0)
            finally:
                np.random.set_state(state)
        else:
            raise ConfigError(f"unknown attribution method {method!r}; choose one of {', '.join(METHODS)}")
    return a.detach().float().cpu()


# --------------------------------------------------------------------------- faithfulness


def attribution_order(a: torch.Tensor) -> torch.Tensor:
    """Pixel positions (B, H*W), most attributed first, from maps (B, C, H, W) summed over channels."""
    return a.sum(1).flatten(1).argsort(dim=1, descending=True, stable=True)


def random_order(B: int, HW: int, generator: torch.Generator) -> torch.Tensor:
    """B random orders of HW pixel positions -> (B, HW)."""
    return torch.stack([torch.randperm(HW, generator=generator) for _ in range(B)])


@torch.no_grad()
def deletion_curve(judge: Judge, order: torch.Tensor, steps: int = DELETION_STEPS) -> torch.Tensor:
    """The judge's output as pixels are set to the baseline in `order`.

    Args:
        judge: its inputs (B, C, H, W), target and baseline.
        order: (B, H*W) pixel positions per input, the first deleted first (all channels at once).
        steps: the curve has steps + 1 points, at the fractions k / steps of pixels deleted.
    Returns:
        (B, steps + 1): judge.score at each fraction; the last column is the baseline's output.
    """
    x = judge.inputs
    B, C, H, W = x.shape
    HW = H * W
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(HW).expand(B, HW))  # (B, HW): when each pixel goes
    base = judge.baseline.to(x.device)
    out = []
    for k in range(steps + 1):
        gone = (rank < round(k * HW / steps)).view(B, 1, H, W).to(x.device)
        out.append(judge.score(torch.where(gone, base, x)).float().cpu())
    return torch.stack(out, dim=1)


def deletion_auc(curve: torch.Tensor) -> torch.Tensor:
    """Area under deletion curves (B, S + 1) over the deleted fraction 0..1 (trapezoids) -> (B,)."""
    return (curve[:, :-1] + curve[:, 1:]).mean(1) / 2


def faithfulness(judge: Judge, maps: dict[str, torch.Tensor], seed: int = 0) -> dict:
    """Deletion curves of each map and of RANDOM_ORDERS random orders (averaged).

    Returns:
        {"fractions": [...], "curves": {method | "random": mean curve}, "auc": {method | "random":
        mean area}, "auc_per_input": {method | "random": [...]}}; lower area = more faithful.
    """
    B, _, H, W = judge.inputs.shape
    curves = {m: deletion_curve(judge, attribution_order(a)) for m, a in maps.items()}
    g = make_generator(derive_seed(seed, "explain-deletion"))
    curves["random"] = torch.stack([deletion_curve(judge, random_order(B, H * W, g))
                                    for _ in range(RANDOM_ORDERS)]).mean(0)
    return {"fractions": [round(k / DELETION_STEPS, 4) for k in range(DELETION_STEPS + 1)],
            "curves": {m: [round(v, 6) for v in c.mean(0).tolist()] for m, c in curves.items()},
            "auc": {m: round(deletion_auc(c).mean().item(), 6) for m, c in curves.items()},
            "auc_per_input": {m: [round(v, 6) for v in deletion_auc(c).tolist()] for m, c in curves.items()}}


# --------------------------------------------------------------------------- judges


def _uint8_space(run, images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> the run's data space at its model size, on its device."""
    from genlab.apply.io import to_model_space
    from genlab.images import resize_uint8

    size = int(run.meta.get("image_size") or images.shape[-1])
    return to_model_space(run, resize_uint8(images, (size, size)))


def classifier_judge(name: str, images: torch.Tensor, labels: torch.Tensor | None,
                     device: str | torch.device = "cpu") -> Judge:
    """A shipped LeNet (lenet-mnist, lenet-fashion) on uint8 (B, 1, 28, 28) images: log p(class)
    of `labels` (the classes asked for), else of the class it predicts."""
    from genlab.metrics.classifier import load_classifier

    net = load_classifier(name, device)
    to_input = lambda u: u.to(device).float() * (2 / 255.0) - 1.0  # noqa: E731  LeNet reads [-1, 1]
    forward = lambda x: F.log_softmax(net(x), dim=1)  # noqa: E731
    x = to_input(images)
    with torch.no_grad():
        logp = forward(x)
    target = (labels.long().to(device) if labels is not None else logp.argmax(1))
    p = logp.gather(1, target[:, None])[:, 0].exp()
    what = "asked for" if labels is not None else "predicted"
    return Judge(name=name, output=f"log p(class {what}) under {name}", forward=forward, inputs=x, target=target,
                 baseline=to_input(torch.zeros(1, *images.shape[1:], dtype=torch.uint8)),
                 pictures=rgb(images), row_labels=[f"#{i} class {int(t)} p {float(q):.2f}"
                                                   for i, (t, q) in enumerate(zip(target, p))])


def discriminator_judge(run, images: torch.Tensor, labels: torch.Tensor | None) -> Judge:
    """A GAN run's discriminator (as trained) on uint8 images: the real-vs-fake logit D(x[, y])."""
    from genlab.evaluation.privacy import _scoring_model  # the discriminator as trained, not its EMA

    D = _scoring_model(run).discriminator.eval()
    conditional = bool(getattr(run.model, "conditional", False))
    x = _uint8_space(run, images)
    extra = (labels.long().to(x.device),) if conditional else ()
    forward = (lambda x, y: D(x, y)[:, None]) if conditional else (lambda x: D(x)[:, None])
    with torch.no_grad():
        s = forward(x, *extra)[:, 0]
    shape = tuple(images.shape[1:])
    pictures = run.pipeline.to_uint8(x.cpu())
    return Judge(name="discriminator", output="D(x), the discriminator's real-vs-fake logit" +
                 (" for the sample's class" if conditional else ""), forward=forward, inputs=x,
                 target=torch.zeros(len(x), dtype=torch.long, device=x.device),
                 baseline=_uint8_space(run, torch.zeros(1, *shape, dtype=torch.uint8)),
                 pictures=rgb(pictures),
                 row_labels=[f"#{i} D {float(v):.2f}" for i, v in enumerate(s)], extra=extra, probability=False)


def label_scores(model, x: torch.Tensor) -> torch.Tensor:
    """A conditional VAE's or GAN's score of every label for images x (B, C, H, W) in its data
    space -> (B, K): VAE, the ELBO at the posterior mean, log p(x | mu, y) - KL(q(z | x, y) || p(z));
    GAN, D(x, y)."""
    B, K = len(x), model.num_classes
    cols = []
    for k in range(K):
        y = torch.full((B,), k, dtype=torch.long, device=x.device)
        if hasattr(model, "encode"):
            mu, logvar = model.encode(x, y)
            kl = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum(1)
            cols.append(model.log_px_z(model.decode(mu, y), x) - kl)
        else:
            cols.append(model.discriminator(x, y))
    return torch.stack(cols, dim=1)  # (B, K)


def label_evidence_judge(run, images: torch.Tensor, labels: torch.Tensor) -> Judge:
    """A conditional VAE or GAN read as a classifier: log p(y | x) = log_softmax over y of
    `label_scores`, for each sample's own label."""
    from genlab.evaluation.privacy import _scoring_model

    model = _scoring_model(run).eval()
    forward = lambda x: F.log_softmax(label_scores(model, x), dim=1)  # noqa: E731
    x = _uint8_space(run, images)
    target = labels.long().to(x.device)
    with torch.no_grad():
        logp = forward(x)
    p = logp.gather(1, target[:, None])[:, 0].exp()
    shape = tuple(images.shape[1:])
    how = "the ELBO at the posterior mean" if hasattr(model, "encode") else "D(x, y)"
    return Judge(name="label evidence", output=f"log p(label | x), the model's per-label scores ({how}) as logits",
                 forward=forward, inputs=x, target=target,
                 baseline=_uint8_space(run, torch.zeros(1, *shape, dtype=torch.uint8)),
                 pictures=rgb(run.pipeline.to_uint8(x.cpu())),
                 row_labels=[f"#{i} label {int(t)} p {float(q):.2f}" for i, (t, q) in enumerate(zip(target, p))])


def audio_judge(clips: torch.Tensor, sample_rate: int, labels: torch.Tensor | None) -> Judge:
    """The shipped spoken-digit judge on float (B, T) clips, attributed over their log-mel
    spectrogram (B, 1, 64, frames): log p(digit asked for, else predicted)."""
    from genlab.audio import resample, spectrogram_images
    from genlab.metrics.audio import JUDGE, JUDGE_SAMPLE_RATE, DigitJudge, load_judge

    if sample_rate != JUDGE_SAMPLE_RATE:
        clips = torch.from_numpy(resample(clips.float().numpy(), sample_rate, JUDGE_SAMPLE_RATE))
    net = load_judge()
    forward = lambda m: F.log_softmax(net.fc2(net.features_from_mel(m[:, 0])), dim=1)  # noqa: E731
    mel = lambda w: DigitJudge.mel(w.float())[:, None]  # noqa: E731  (N, T) -> (N, 1, 64, frames)
    x = mel(clips)
    with torch.no_grad():
        logp = forward(x)
    target = labels.long() if labels is not None else logp.argmax(1)
    p = logp.gather(1, target[:, None])[:, 0].exp()
    T = clips.shape[-1]
    what = "asked for" if labels is not None else "predicted"
    return Judge(name=JUDGE, output=f"log p(digit {what}) under {JUDGE}, over the log-mel spectrogram",
                 forward=forward, inputs=x, target=target, baseline=mel(torch.zeros(1, T)),
                 pictures=spectrogram_images(clips, JUDGE_SAMPLE_RATE),
                 row_labels=[f"#{i} digit {int(t)} p {float(q):.2f}" for i, (t, q) in enumerate(zip(target, p))],
                 flip=True)


def _classifier_name(run) -> str | None:
    """The shipped LeNet that judges the run's images, or None."""
    from genlab.metrics.features import default_extractor

    shape = (run.meta.get("channels"), *run.meta.get("native_size", (None, None)))
    name = default_extractor(run.meta.get("dataset", run.cfg.data.dataset), shape)
    return name if name and name.startswith("lenet") and shape == (1, 28, 28) else None


def reason(run) -> str | None:
    """None when the run has a judge to explain, else why not."""
    if run.family == "audio":
        return None
    if run.family == "image" and getattr(run.model, "draws_samples", True):
        if _classifier_name(run) or run.cfg.model_name == "gan" or (
                run.cfg.model_name == "vae" and getattr(run.model, "conditional", False)):
            return None
        return ("attributions need a judge: 28x28 grey images (the shipped LeNets), a GAN (its discriminator) "
                "or a conditional VAE (its label evidence)")
    return "attributions need an image or audio run that draws samples"


def judges(run, samples: torch.Tensor, labels: torch.Tensor | None) -> list[Judge]:
    """Every judge that applies to the run, on its samples: uint8 (B, C, H, W) images at the
    native size, or float (B, T) clips for audio runs."""
    dataset = run.meta.get("dataset", run.cfg.data.dataset)
    # the classes asked for are the judge's own only on the judge's own dataset (a folder's class 3
    # is not MNIST's 3); elsewhere a judge explains the class it predicts
    if run.family == "audio":
        return [audio_judge(samples, run.meta["sample_rate"], labels if dataset == "fsdd" else None)]
    out = []
    name = _classifier_name(run)
    if name:
        own = {"lenet-mnist": "mnist", "lenet-fashion": "fashion-mnist"}.get(name) == dataset
        out.append(classifier_judge(name, samples, labels if own else None, run.device))
    if run.cfg.model_name == "gan":
        out.append(discriminator_judge(run, samples, labels))
    if run.cfg.model_name in ("vae", "gan") and getattr(run.model, "conditional", False):
        out.append(label_evidence_judge(run, samples, labels))
    return out


# --------------------------------------------------------------------------- figures


def attribution_png(judge: Judge, maps: dict[str, torch.Tensor]) -> bytes:
    """One row per input: its picture, then each method's map (red: for the output, blue: against)."""
    from genlab.apply.io import labelled_rows
    from genlab.images import png_bytes

    heat = {m: heatmap_rgb(a.sum(1)) for m, a in maps.items()}  # (B, 3, H, W) each
    if judge.flip:
        heat = {m: h.flip(-2) for m, h in heat.items()}
    rows = [(label, torch.stack([judge.pictures[i].cpu()] + [heat[m][i] for m in maps]))
            for i, label in enumerate(judge.row_labels)]
    return png_bytes(labelled_rows(rows, ncol=1 + len(maps)))


def deletion_png(results: dict[str, dict]) -> bytes:
    """Mean deletion curves per judge: each method against random order."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.2), squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items()):
        f = r["deletion"]["fractions"]
        for m, curve in r["deletion"]["curves"].items():
            label = f"{METHOD_NAMES.get(m, m)} (AUC {r['deletion']['auc'][m]:.3g})"
            ax.plot(f, curve, "--" if m == "random" else "-", color="grey" if m == "random" else None, label=label)
        ax.set_title(name)
        ax.set_xlabel("fraction of pixels deleted")
        ax.set_ylabel("probability" if r["probability"] else "score")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return figure_png(fig)


def explain_judge(judge: Judge, seed: int = 0) -> tuple[dict[str, torch.Tensor], dict]:
    """Every method's maps for one judge and their deletion figures -> (maps, record)."""
    t0 = time.perf_counter()
    maps = {m: attribute(judge, m, seed) for m in METHODS}
    record = {"output": judge.output, "n": len(judge.inputs), "targets": judge.target.tolist(),
              "scores": [round(v, 6) for v in judge.score(judge.inputs).detach().cpu().tolist()],
              "probability": judge.probability, "deletion": faithfulness(judge, maps, seed)}
    record["seconds"] = round(time.perf_counter() - t0, 3)
    return maps, record


def explain_attribution(run, o: ExplainOptions) -> Part:
    """Maps of every judge on o.n samples drawn with o.seed (class o.label for conditional
    models), their figures and deletion curves."""
    captum_attr()  # before sampling: a missing extra is a one-line error at once
    samples, labels = given_images(run, o) if o.input else run.sample(o.n, seed=o.seed, label=o.label)
    part = Part()
    results = {}
    for judge in judges(run, samples, labels):
        maps, rec = explain_judge(judge, o.seed)
        results[judge.name] = rec
        what = ("given images" if o.input else f"samples (seed {o.seed})") if run.family == "image" else \
            f"clips (seed {o.seed})"
        part.figures.append((
            f"attribution-{slug(judge.name)}.png",
            f"attributions for {judge.output}, {len(judge.inputs)} {what}; columns: the input, "
            + ", ".join(METHOD_NAMES[m] for m in METHODS) + "; red: evidence for the output, blue: against",
            attribution_png(judge, maps)))
        auc = rec["deletion"]["auc"]
        part.summary.append(f"attribution ({judge.name}): deletion AUC (lower: more faithful) "
                            + ", ".join(f"{METHOD_NAMES[m]} {auc[m]:.3g}" for m in METHODS)
                            + f"; random order {auc['random']:.3g}")
    if results:
        part.figures.append(("attribution-deletion.png",
                             "deletion curves: the explained output as the most attributed pixels are set to the "
                             "baseline first, against random order (mean over the inputs; lower area = more faithful)",
                             deletion_png(results)))
    part.record = {"methods": list(METHODS), "ig_steps": IG_STEPS, "shap_samples": SHAP_SAMPLES,
                   "deletion_steps": DELETION_STEPS, "random_orders": RANDOM_ORDERS, "seed": o.seed,
                   "judges": results}
    return part


def given_images(run, o: ExplainOptions) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The user's images to explain (o.input: .npz with `images` uint8 N x C x H x W and optional
    `labels`, or a .png) at the run's native size, with their classes: the file's, else o.label."""
    from genlab.apply.io import check_size, read_images

    if run.family != "image":
        raise ConfigError(f"--input explains given images; {run.run_dir} is a {run.family} run: drop --input")
    batch = read_images(o.input, run.meta["channels"])
    check_size(batch.images, tuple(run.meta["native_size"]), "--input")
    labels = batch.labels
    if o.label is not None:
        labels = torch.full((len(batch.images),), int(o.label), dtype=torch.long)
    if labels is None and getattr(run.model, "conditional", False):
        raise ConfigError(f"--input: {run.run_dir} is class-conditional, so its judges need each image's class: "
                          "an .npz with 'labels', or --label K")
    k = run.model.num_classes if getattr(run.model, "conditional", False) else None
    if labels is not None and k and not bool(((labels >= 0) & (labels < k)).all()):
        raise ShapeError(f"--input: 'labels' must be classes in 0..{k - 1} for this run")
    if len(batch.images) > 256:
        raise ShapeError(f"--input: at most 256 images are explained at once, got {len(batch.images)}")
    return batch.images, labels


def mean_auc(results: dict[str, dict]) -> dict[str, float]:
    """Deletion AUC per method averaged over judges (for summaries and benchmarks)."""
    keys = next(iter(results.values()))["deletion"]["auc"].keys()
    return {m: float(np.mean([r["deletion"]["auc"][m] for r in results.values()])) for m in keys}
