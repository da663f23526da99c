"""`genlab audit`: how much an image run gives away about its training images.

Two questions, each answered empirically (an audit measures attacks that exist; a DP epsilon
bounds every attack, and is copied into the report when the run has one):

Membership inference: can an attacker tell the run's training images (members) from images it
never trained on (non-members)? Members are M random images of the run's train split, non-members
M images of its validation split (held out of training; the test split when the validation split
is too small, as the report says). Attacks, each a score that is higher for "member":
  loss        -(per-example loss), averaged over R seeded draws of the loss's randomness
              (VAE: z and the binarisation; diffusion: t and the noise; GAN: -D(x), LOGAN's
              white-box score read from the discriminator as trained)
  calibrated  loss_reference(x) - loss_target(x) with a reference run of the same family trained
              on the test split (data.train_on=test), which saw neither members nor non-members:
              it removes how hard each image is for any model (Watson et al. 2022, "On the
              importance of difficulty calibration in membership inference attacks"; the offline
              variant of Carlini et al. 2022's LiRA)
  distance    -(L2 distance from x to the nearest of S generated samples, of x's class for
              conditional runs): the black-box attack of GAN-Leaks (Chen et al. 2020)
each summarised by its AUC and the TPR at 1% and 0.1% FPR (genlab.metrics.privacy).

Memorisation: are generated samples copies of training images? For S samples, the nearest and
second-nearest training image in pixel space and in LeNet feature space, the ratio of the two
distances, and the share of near copies (ratio < 1/3, metrics.privacy.NEAR_COPY_RATIO), beside
the same figures for held-out real images (what "close" looks like for images that are not
copies); a PNG grid shows the closest pairs.

Output: RUN_DIR/audit.json, RUN_DIR/audit.html and its figures in RUN_DIR/audit_files/.
"""

from __future__ import annotations

import copy
import html
import logging
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genlab import demos
from genlab.engine.checkpoint import atomic_write_bytes, atomic_write_json, atomic_write_text
from genlab.engine.privacy import privacy_summary
from genlab.errors import ConfigError, DataError
from genlab.images import make_grid, png_bytes, resize_uint8
from genlab.metrics.privacy import (
    NEAR_COPY_RATIO,
    auc_standard_error,
    distance_ratio,
    nearest_neighbours,
    roc_auc,
    tpr_at_fpr,
)
from genlab.options import check_number
from genlab.seed import check_seed, derive_seed, make_generator

log = logging.getLogger("genlab")

FPRS = (0.01, 0.001)  # the low false-positive rates reported for every attack
NEAR_COPY_SOURCE = ("Yoon et al. 2023, 'Diffusion probabilistic models generalize when they fail to memorize'; "
                    "also Gu et al. 2023, 'On memorization in diffusion models'")
PAIRS = 16  # closest sample / training-image pairs shown
IDX_DATASETS = ("mnist", "fashion-mnist")  # datasets with an official test split (others carve one out)


@dataclass
class AuditOptions:
    members: int = 1000  # M members and M non-members
    samples: int = 1000  # generated samples for the distance attack and memorisation
    draws: int = 8  # R seeded draws averaged per example loss
    seed: int = 0
    reference: object | None = None  # a loaded Run trained with data.train_on=test, for the calibrated attack
    data_root: str | None = None
    batch_size: int = 500  # images per forward pass when scoring


@dataclass
class _Images:
    """Images drawn from one split: uint8 (M, C, H, W) at the model's size, labels (M,) or None."""

    split: str
    x: torch.Tensor
    y: torch.Tensor | None
    index: torch.Tensor  # positions in the split


# --------------------------------------------------------------------------- checks


def check_audit_numbers(members: int | None, samples: int | None, draws: int | None, seed: int | None) -> None:
    """The command's numbers, refused with the usual one-line ConfigError before any work."""
    check_number("--members", members, lo=2, integer=True)
    check_number("--samples", samples, lo=2, integer=True)
    check_number("--draws", draws, lo=1, hi=10_000, integer=True)
    if seed is not None:
        check_seed(seed)


def _how_to_make_reference(run) -> str:
    what = run.cfg.preset or "CONFIG.yaml"
    return (f"train one with `genlab train {what} --set data.train_on=test` (plus the audited run's other "
            "--set options)")


def check_reference(run, ref) -> None:
    """Refuse a reference run that would not calibrate the audited run's losses: it must be the
    same model family on the same data and image shape, trained on the test split, so that it saw
    neither the members (train split) nor the non-members (validation split)."""
    how = _how_to_make_reference(run)
    name = str(ref.run_dir)
    if Path(ref.run_dir).resolve() == Path(run.run_dir).resolve():
        raise ConfigError(f"--reference {name} is the audited run itself; a reference must not have seen the "
                          f"members: {how}")
    if getattr(run.cfg.data, "train_on", "train") == "test":
        raise ConfigError(f"the audited run {run.run_dir} was itself trained on the test split (data.train_on=test), "
                          "which is what a reference trains on; audit it without --reference")
    if ref.family != "image" or ref.cfg.model_name != run.cfg.model_name:
        raise ConfigError(f"--reference {name} is a {ref.cfg.model_name} run but the audited run is a "
                          f"{run.cfg.model_name} run; a reference must be the same model family: {how}")
    if bool(getattr(ref.model, "conditional", False)) != bool(getattr(run.model, "conditional", False)):
        kind = "conditional" if run.model.conditional else "unconditional"
        raise ConfigError(f"--reference {name} differs from the {kind} audited run in model.conditional; {how}")
    same_data = (ref.meta.get("dataset", ref.cfg.data.dataset) == run.meta.get("dataset", run.cfg.data.dataset)
                 and ref.cfg.data.path == run.cfg.data.path)
    if not same_data:
        raise ConfigError(f"--reference {name} was trained on {ref.meta.get('source', ref.cfg.data.dataset)}, the "
                          f"audited run on {run.meta.get('source', run.cfg.data.dataset)}; a reference must use the "
                          f"same dataset: {how}")
    (c_ref, s_ref), (c_run, s_run) = ((r.meta["channels"], r.meta["image_size"]) for r in (ref, run))
    if (c_ref, s_ref) != (c_run, s_run):
        raise ConfigError(f"--reference {name} takes {c_ref}x{s_ref}x{s_ref} images, the audited run "
                          f"{c_run}x{s_run}x{s_run}; {how}")
    if getattr(ref.cfg.data, "train_on", "train") != "test":
        raise ConfigError(f"--reference {name} was trained on the training split (data.train_on=train), so it saw "
                          f"the members it must not know; {how}")
    if run.meta.get("dataset", run.cfg.data.dataset) not in IDX_DATASETS and \
            ref.cfg.data.test_size != run.cfg.data.test_size:
        raise ConfigError(f"--reference {name} carves its test split with data.test_size={ref.cfg.data.test_size}, "
                          f"the audited run with {run.cfg.data.test_size}, so the reference's training images "
                          f"would overlap the audited run's; retrain it with --set data.train_on=test "
                          f"data.test_size={run.cfg.data.test_size}")


# --------------------------------------------------------------------------- membership


def membership_sets(data, m: int, seed: int, *, allow_test: bool = True) -> tuple[_Images, _Images, list[str]]:
    """M random training images and M held-out ones (validation split, else the test split
    when the validation split has fewer images than there are members and `allow_test`), plus
    notes on any shortfall. The choice is fixed by `seed`."""
    notes = []
    n_train = len(data.train_x)
    if n_train == 0:
        raise DataError("the run's training split is empty; there are no members to audit")
    want = min(m, n_train)
    if want < m:
        notes.append(f"--members {m}: the training split has {n_train} images, so {want} members are used")
    n_val, n_test = len(data.val_x), len(data.test_x)
    if n_val >= want or not allow_test or n_test <= n_val:  # the validation split, however small
        if n_val == 0 and not allow_test:
            raise ConfigError("the calibrated attack needs non-members from the validation split (the reference "
                              "trained on the test split), and the run's validation split is empty; audit without "
                              "--reference, or retrain with data.val_size > 0")
        if n_val == 0:
            raise DataError("the run's data holds no images it did not train on (empty validation and test splits); "
                            "retrain with data.val_size > 0")
        split, hx, hy = "val", data.val_x, data.val_y
    else:  # the larger test split
        split, hx, hy = "test", data.test_x, data.test_y
        notes.append(f"non-members come from the test split: the validation split has {n_val} images, "
                     f"fewer than the {want} members")
    k = min(want, len(hx))
    if k < want:
        notes.append(f"the {split} split has {len(hx)} images, so members and non-members are {k} each")

    def pick(x, y, name, tag):
        idx = torch.randperm(len(x), generator=make_generator(derive_seed(seed, "audit", tag)))[:k].sort().values
        return _Images(name, x[idx], None if y is None else y[idx], idx)

    return pick(data.train_x, data.train_y, "train", "members"), pick(hx, hy, split, "nonmembers"), notes


def _scoring_model(run):
    """The network whose per-example loss is read. A GAN run loads its EMA weights for sampling,
    EMA discriminator included; a membership attack reads the discriminator as trained (the one
    that saw the data at every step), so that one is put into a copy of the model."""
    model = run.model
    tensors = run.checkpoint.tensors
    prefix = "model.discriminator."
    if hasattr(model, "discriminator") and any(k.startswith("ema.") for k in tensors):
        raw = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if raw:
            model = copy.deepcopy(model)
            model.discriminator.load_state_dict(raw)
    return model


def _per_example_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B,) loss of each example: `example_loss(batch)["loss"]`, or -log p(x) for exact-likelihood
    models (PixelCNN)."""
    if hasattr(model, "example_loss"):
        return model.example_loss(batch)["loss"]
    if hasattr(model, "log_prob"):
        return -model.log_prob(batch["x"], batch.get("y"))
    raise ConfigError(f"{type(model).__name__} models have no per-example loss; only the distance attack applies")


def has_example_loss(model) -> bool:
    return hasattr(model, "example_loss") or hasattr(model, "log_prob")


@torch.no_grad()
def example_losses(run, images: torch.Tensor, labels: torch.Tensor | None, *, draws: int, seed: int,
                   batch_size: int = 500) -> torch.Tensor:
    """Per-example loss of uint8 images (N, C, H, W) under `run`, averaged over `draws` draws.

    Each (draw, batch) seeds torch's global generator from (seed, draw, batch start), so a loss is
    a function of the seed and the image's position, whichever run scores it: a target and its
    reference see the same binarisation, and with the same architecture the same latent or noise
    draws (common random numbers, which keep that noise out of their difference). The caller's
    random stream is restored afterwards.

    Returns:
        float64 (N,) on the CPU.
    """
    model = _scoring_model(run)
    conditional = bool(getattr(model, "conditional", False))
    if conditional and labels is None:
        raise DataError("a conditional model's losses need labels, and the run's data has none")
    dev = run.device
    total = torch.zeros(len(images), dtype=torch.float64)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        for r in range(draws):
            for i in range(0, len(images), batch_size):
                torch.manual_seed(derive_seed(seed, "audit-loss", r, i))
                y = labels[i:i + batch_size] if conditional else None
                batch = run.pipeline(images[i:i + batch_size], y, train=False, device=dev)
                loss = _per_example_loss(model, batch)
                total[i:i + batch_size] += loss.detach().double().reshape(-1).cpu()
    return total / draws


def attack_entry(member_scores: torch.Tensor, nonmember_scores: torch.Tensor, seconds: float, **extra) -> dict:
    """An attack's figures: AUC (with its standard error), TPR at the FPRS, counts, time."""
    auc = roc_auc(member_scores, nonmember_scores)
    m, n = len(member_scores), len(nonmember_scores)
    out = {"auc": round(auc, 6), "auc_se": round(auc_standard_error(auc, m, n), 6)}
    for f in FPRS:
        out[f"tpr_at_fpr_{f:g}"] = round(tpr_at_fpr(member_scores, nonmember_scores, f), 6)
    return {**out, "members": m, "nonmembers": n, **extra, "seconds": round(seconds, 3)}


@torch.no_grad()
def min_distances(queries: torch.Tensor, query_labels: torch.Tensor | None, samples: torch.Tensor,
                  sample_labels: torch.Tensor | None) -> torch.Tensor:
    """L2 distance (pixels scaled to [0, 1]) from each uint8 query to its nearest uint8 sample,
    among the samples of its own class when both have labels (a class without samples falls back
    to all samples). Returns float64 (Q,)."""
    out = torch.empty(len(queries), dtype=torch.float64)
    if query_labels is None or sample_labels is None:
        return nearest_neighbours(queries, samples, 1)[0][:, 0] / 255.0
    for c in query_labels.unique().tolist():
        rows = query_labels == c
        pool = samples[sample_labels == c]
        if len(pool) == 0:
            pool = samples
        out[rows] = nearest_neighbours(queries[rows], pool, 1)[0][:, 0] / 255.0
    return out


# --------------------------------------------------------------------------- memorisation


def _summary(v: torch.Tensor) -> dict:
    v = v.double()
    return {"min": round(v.min().item(), 6), "median": round(v.median().item(), 6), "mean": round(v.mean().item(), 6)}


def _space_figures(d: torch.Tensor, heldout_d: torch.Tensor | None, *, exact: bool = False) -> dict:
    """Figures of one space from (Q, k) ascending neighbour distances (k = 2, or 1 when the
    training split holds a single image), with the held-out real images' beside them. `exact`:
    also count distances of exactly 0 (pixel space; features of one image may differ in the last
    bits with the batch they were computed in)."""
    out = {"nearest_distance": _summary(d[:, 0])}
    if d.shape[1] >= 2:
        ratio = distance_ratio(d)
        out["ratio"] = _summary(ratio)
        out["near_copies"] = round((ratio < NEAR_COPY_RATIO).double().mean().item(), 6)
    if exact:
        out["exact_copies"] = int((d[:, 0] == 0).sum())
    if heldout_d is not None and len(heldout_d):
        h = {"n": len(heldout_d), "nearest_distance": _summary(heldout_d[:, 0])}
        if heldout_d.shape[1] >= 2:
            h_ratio = distance_ratio(heldout_d)
            h["ratio"] = _summary(h_ratio)
            h["near_copies"] = round((h_ratio < NEAR_COPY_RATIO).double().mean().item(), 6)
        out["heldout"] = h
    return out


@torch.no_grad()
def memorisation(samples: torch.Tensor, train: torch.Tensor, heldout: torch.Tensor | None = None, *,
                 sample_labels: torch.Tensor | None = None, extractor=None,
                 train_features: torch.Tensor | None = None, pairs: int = PAIRS) -> tuple[dict, bytes]:
    """How close generated samples come to training images.

    Args:
        samples: uint8 (N, C, H, W) generated images.
        train: uint8 (T, C, H, W) the training images, same size (T >= 1).
        heldout: uint8 (H, C, H, W) real images never trained on, scored the same way as a baseline.
        sample_labels: (N,) labels of the samples, copied into the closest-pairs list.
        extractor: a genlab.metrics.features Extractor for the feature-space figures, or None.
        train_features: the extractor's features of `train`, when already computed (cached).
        pairs: how many closest pairs to list and draw.
    Returns:
        (figures, PNG grid of the closest pairs). figures["spaces"] maps "pixel" (L2 on pixels
        scaled to [0, 1]) and the extractor's name to _space_figures; figures["closest_pairs"]
        lists the samples with the lowest pixel-space ratio (lowest distance when T = 1).
    """
    k = min(2, len(train))
    d_pix, i_pix = nearest_neighbours(samples, train, k)
    d_pix = d_pix / 255.0
    h_pix = nearest_neighbours(heldout, train, k)[0] / 255.0 if heldout is not None and len(heldout) else None
    spaces = {"pixel": _space_figures(d_pix, h_pix, exact=True)}
    if extractor is not None:
        f_train = train_features if train_features is not None else extractor(train)[0]
        d_f = nearest_neighbours(extractor(samples)[0], f_train, k)[0]
        h_f = nearest_neighbours(extractor(heldout)[0], f_train, k)[0] if h_pix is not None else None
        spaces[extractor.name] = _space_figures(d_f, h_f)

    # Closest pairs: lowest ratio first (a sample far nearer one training image than any other),
    # then lowest distance; with a single training image only the distance exists.
    ratio = distance_ratio(d_pix) if k >= 2 else torch.zeros(len(samples), dtype=torch.float64)
    order = np.lexsort((d_pix[:, 0].numpy(), ratio.numpy()))[:pairs].tolist()  # by ratio, then distance
    closest = [{"sample": j, "label": None if sample_labels is None else int(sample_labels[j]),
                "train_index": int(i_pix[j, 0]), "distance": round(d_pix[j, 0].item(), 6),
                "ratio": round(ratio[j].item(), 6) if k >= 2 else None} for j in order]
    sel = torch.tensor(order, dtype=torch.long)
    return {"spaces": spaces, "closest_pairs": closest}, pairs_png(samples[sel], train[i_pix[sel, 0]])


def pairs_png(left: torch.Tensor, right: torch.Tensor, per_row: int = 4) -> bytes:
    """A PNG grid of image pairs: each uint8 (C, H, W) of `left` beside the one of `right`,
    parted by a grey line, with wider gaps between pairs so they read as pairs."""
    P, C, H, W = left.shape
    line = torch.full((P, C, H, 1), 128, dtype=torch.uint8)
    tiles = torch.cat([left, line, right], dim=3)  # (P, C, H, 2W + 1)
    return png_bytes(make_grid(tiles, nrow=min(per_row, P), pad=6))


# --------------------------------------------------------------------------- the audit


def audit(run, options: AuditOptions) -> dict:
    """Membership-inference and memorisation figures of a loaded image run.

    Returns:
        the report: everything audit.json holds, plus "figures" (caption -> PNG bytes) that
        `write_audit` puts beside the HTML page instead of into the JSON.
    """
    from genlab.engine.device import device_name
    from genlab.metrics.features import default_extractor, get_extractor

    t_start = time.perf_counter()
    o = options
    check_audit_numbers(o.members, o.samples, o.draws, o.seed)
    if run.family != "image":
        raise ConfigError(f"genlab audit is for image runs; {run.run_dir} is a {run.cfg.model_name} {run.family} run")
    ref = o.reference
    if ref is not None:
        check_reference(run, ref)
    try:
        data = run.data(o.data_root)
    except DataError as e:
        raise DataError(f"cannot load the run's data for the audit: {e}") from None
    native = tuple(run.meta["native_size"])
    # With a reference (trained on the test split) only validation images are non-members of both runs.
    members, nonmembers, notes = membership_sets(data, o.members, o.seed, allow_test=ref is None)
    log.info("audit %s: %d members (train split) and %d non-members (%s split)", run.run_dir, len(members.x),
             len(nonmembers.x), nonmembers.split)

    attacks: dict[str, dict] = {}
    common = {"draws": o.draws, "seed": o.seed}
    if has_example_loss(run.model):
        t0 = time.perf_counter()
        kw = {"draws": o.draws, "seed": o.seed, "batch_size": o.batch_size}
        loss_m = example_losses(run, members.x, members.y, **kw)
        loss_n = example_losses(run, nonmembers.x, nonmembers.y, **kw)
        attacks["loss"] = attack_entry(-loss_m, -loss_n, time.perf_counter() - t0, **common,
                                       score="-(per-example loss, mean over draws)")
        _log_attack("loss", attacks["loss"])
        if ref is not None:
            t0 = time.perf_counter()
            ref_m = example_losses(ref, members.x, members.y, **kw)
            ref_n = example_losses(ref, nonmembers.x, nonmembers.y, **kw)
            attacks["calibrated"] = attack_entry(
                ref_m - loss_m, ref_n - loss_n, time.perf_counter() - t0 + attacks["loss"]["seconds"], **common,
                reference=str(ref.run_dir), score="loss under the reference - loss under the audited run")
            _log_attack("calibrated", attacks["calibrated"])
    else:
        notes.append(f"{run.cfg.model_name} models have no per-example loss: only the distance attack is run")

    t0 = time.perf_counter()
    samples, sample_labels = run.sample(o.samples, seed=o.seed)
    t_sample = time.perf_counter() - t0
    log.info("drew %d samples in %.1f s", len(samples), t_sample)
    members_native, nonmembers_native = resize_uint8(members.x, native), resize_uint8(nonmembers.x, native)
    t0 = time.perf_counter()
    dist_m = min_distances(members_native, members.y, samples, sample_labels)
    dist_n = min_distances(nonmembers_native, nonmembers.y, samples, sample_labels)
    attacks["distance"] = attack_entry(-dist_m, -dist_n, time.perf_counter() - t0 + t_sample, samples=len(samples),
                                       seed=o.seed, score="-(L2 distance to the nearest generated sample"
                                                          + (" of the same class)" if sample_labels is not None
                                                             else ")"))
    _log_attack("distance", attacks["distance"])

    t0 = time.perf_counter()
    train_native = resize_uint8(data.train_x, native)
    log.info("memorisation: %d samples and %d held-out images against %d training images", len(samples),
             len(nonmembers_native), len(train_native))
    ext_name = default_extractor(run.meta.get("dataset", run.cfg.data.dataset), (run.meta["channels"], *native))
    extractor, train_feats = None, None
    if ext_name and ext_name.startswith("lenet"):
        from genlab.evaluation.images import reference_features

        extractor = get_extractor(ext_name, run.device)
        train_feats = reference_features(extractor, train_native, f"{data.source}-train")[0]
    mem, pairs_png = memorisation(samples, train_native, nonmembers_native, sample_labels=sample_labels,
                                  extractor=extractor, train_features=train_feats)
    mem = {"samples": len(samples), "seed": o.seed, "train_images": len(train_native),
           "heldout_split": nonmembers.split, "near_copy_ratio": round(NEAR_COPY_RATIO, 6),
           "near_copy_rule": "a sample is a near copy when d(nearest training image) / d(second nearest) < 1/3",
           "near_copy_source": NEAR_COPY_SOURCE, **mem,
           "seconds": round(time.perf_counter() - t0 + t_sample, 3)}
    for space, f in mem["spaces"].items():
        if "near_copies" in f:
            exact = f" ({f['exact_copies']} exact)" if "exact_copies" in f else ""
            log.info("memorisation (%s): %.2f%% of samples are near copies%s; held-out real images: %.2f%%", space,
                     100 * f["near_copies"], exact, 100 * f.get("heldout", {}).get("near_copies", 0))

    dp = privacy_summary(run.checkpoint.state)  # the audited checkpoint's DP accounting, or None
    caption = (f"the {len(mem['closest_pairs'])} samples with the lowest nearest / second-nearest distance ratio "
               "(pixel space), each beside its nearest training image")
    return {
        "run": str(run.run_dir), "step": run.step, "model": run.cfg.preset or run.cfg.model_name,
        "checkpoint": run.checkpoint.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": device_name(run.device), "seconds": round(time.perf_counter() - t_start, 3),
        "epsilon": dp.get("epsilon") if dp else None, "delta": dp.get("delta") if dp else None, "privacy": dp,
        "seed": o.seed,
        "membership": {"members": {"split": "train", "n": len(members.x)},
                       "nonmembers": {"split": nonmembers.split, "n": len(nonmembers.x)},
                       "reference": str(ref.run_dir) if ref is not None else None, "attacks": attacks},
        "memorisation": mem,
        "notes": notes,
        "figures": {caption: pairs_png},
    }


def _log_attack(name: str, e: dict) -> None:
    log.info("%s attack: AUC %.4f, TPR %.4f at 1%% FPR, %.4f at 0.1%% FPR (%.1f s)", name, e["auc"],
             e["tpr_at_fpr_0.01"], e["tpr_at_fpr_0.001"], e["seconds"])


# --------------------------------------------------------------------------- files


def write_audit(report: dict, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """audit.json, and audit.html with its figures in audit_files/, into `out_dir`; each file
    written atomically, the JSON last. Returns (json path, html path)."""
    out_dir = Path(out_dir)
    figures = report.get("figures", {})
    html_path = write_audit_html(report, out_dir / "audit.html", figures)
    json_path = out_dir / "audit.json"
    atomic_write_json(json_path, {k: v for k, v in report.items() if k != "figures"})
    return json_path, html_path


def write_audit_html(report: dict, out: Path, figures: dict[str, bytes]) -> Path:
    """The audit as a page: the DP guarantee, one table per question, the closest pairs."""
    from genlab.evaluation.html import fmt, page, table

    out = Path(out)
    assets = out.parent / (out.stem + "_files")
    mi, mem = report["membership"], report["memorisation"]
    header = (f"<p class='small'>run <code>{html.escape(report['run'])}</code>, step {fmt(report['step'])} "
              f"({fmt(report['checkpoint'])}), model {fmt(report['model'])}, audited {fmt(report['created'])} on "
              f"{fmt(report['machine'])} in {fmt(report['seconds'])} s, seed {fmt(report['seed'])}</p>")
    parts = [header]
    if report.get("epsilon") is not None:
        parts.append(f"<p><b>Trained with differential privacy: epsilon {fmt(report['epsilon'])}, delta "
                     f"{fmt(report['delta'])}.</b> No attack, including those below, can do better than this "
                     "guarantee allows.</p>")
    else:
        parts.append("<p>Trained without differential privacy: the figures below are what these attacks achieve, "
                     "not a bound on what others could.</p>")

    parts.append("<h2>Membership inference</h2>")
    rows = [[name, e["auc"], e["auc_se"], e["tpr_at_fpr_0.01"], e["tpr_at_fpr_0.001"], e["members"],
             e["nonmembers"], e.get("draws", ""), e["seconds"]] for name, e in mi["attacks"].items()]
    parts.append(table(["attack", "AUC", "AUC std. error", "TPR at 1% FPR", "TPR at 0.1% FPR", "members",
                        "non-members", "draws", "seconds"], rows))
    n_non = mi["nonmembers"]["n"]
    parts.append(
        f"<p class='small'>Members: {mi['members']['n']} random training images; non-members: {n_non} images of "
        f"the {html.escape(mi['nonmembers']['split'])} split, never trained on. Scores: "
        + "; ".join(f"<i>{html.escape(n)}</i> = {html.escape(e['score'])}" for n, e in mi["attacks"].items())
        + (f" (reference run <code>{html.escape(mi['reference'])}</code>)" if mi.get("reference") else "")
        + f". An AUC of 0.5 means the attack cannot tell members from non-members; a TPR above the FPR at a low "
          f"FPR means it can single out some members confidently (Carlini et al. 2022). With {n_non} non-members "
          f"the smallest FPR measured is {fmt(1 / n_non)}: below it the TPR is the share of members scoring above "
          "every non-member.</p>")

    parts.append("<h2>Memorisation</h2>")
    rows = []
    for space, f in mem["spaces"].items():
        h = f.get("heldout", {})
        rows.append([space, f["nearest_distance"]["median"], f["nearest_distance"]["min"],
                     f.get("ratio", {}).get("median", ""), f.get("near_copies", ""), h.get("near_copies", ""),
                     h.get("nearest_distance", {}).get("median", ""), f.get("exact_copies", "")])
    parts.append(table(["space", "median nearest distance", "min nearest distance", "median ratio",
                        "near copies", "held-out near copies", "held-out median nearest distance",
                        "exact copies"], rows))
    parts.append(
        f"<p class='small'>{mem['samples']} samples against the {mem['train_images']} training images; the ratio is "
        f"the distance to the nearest training image over the distance to the second nearest, and "
        f"{html.escape(mem['near_copy_rule'])} ({html.escape(mem['near_copy_source'])}). Pixel distances are L2 on "
        f"pixels scaled to [0, 1]. The held-out columns score {html.escape(mem['heldout_split'])}-split images, "
        "which are not copies of anything, the same way: samples should look like them, not closer.</p>")
    pair_rows = [[i + 1, p["sample"], "" if p["label"] is None else p["label"], p["train_index"], p["distance"],
                  "" if p["ratio"] is None else p["ratio"]] for i, p in enumerate(mem["closest_pairs"])]
    figs = []
    for i, (caption, png) in enumerate(figures.items()):
        name = f"{i}-closest-pairs.png"
        atomic_write_bytes(assets / name, png)
        width = int.from_bytes(png[16:20], "big")  # the IHDR chunk's width field
        size = f" width='{width * 3}'" if width < 400 else ""  # 28x28 images: show them larger
        figs.append(f"<figure><img src='{assets.name}/{name}'{size} alt='{html.escape(caption)}'>"
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts += figs
    parts.append(table(["rank", "sample", "label", "training image (index in the train split)", "pixel distance",
                        "ratio"], pair_rows))
    if report.get("notes"):
        parts.append("<h2>Notes</h2>" + "".join(f"<p class='small'>{html.escape(n)}</p>" for n in report["notes"]))
    atomic_write_text(out, page(f"genlab privacy audit: {Path(report['run']).name}", "".join(parts)))
    return out


def _check_out_dir(out: Path) -> None:
    """The output folder may exist or not, but must not be (or sit under) a file."""
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                raise ConfigError(f"--out {out}: {p} is a file; give a folder for audit.json and audit.html")
            return


def run_audit(run_dir: str | os.PathLike, *, reference: str | os.PathLike | None = None,
              out: str | os.PathLike | None = None, members: int = 1000, samples: int = 1000, draws: int = 8,
              seed: int = 0, checkpoint: str = "last", device: str = "cpu", data_root: str | None = None) -> dict:
    """Audit a run directory and write audit.json + audit.html into `out` (default: the run).

    Everything is checked before work starts; writing into the run directory owns it meanwhile
    (RunLock), as `genlab evaluate` does, so a training process cannot interleave with it.
    Returns the report (audit.json's content and the figures)."""
    from genlab.engine.lock import RunLock
    from genlab.engine.run import load

    check_audit_numbers(members, samples, draws, seed)
    if out is None:
        demos.refuse_write(run_dir, "give --out DIR for the audit")
    out_dir = Path(out) if out is not None else demos.resolve(run_dir)
    _check_out_dir(out_dir)
    run = load(run_dir, checkpoint, device)
    if run.family != "image":
        raise ConfigError(f"genlab audit is for image runs; {run_dir} is a {run.cfg.model_name} {run.family} run")
    ref = None
    if reference is not None:
        ref = load(reference, "last", device)
        check_reference(run, ref)
    options = AuditOptions(members=members, samples=samples, draws=draws, seed=seed, reference=ref,
                           data_root=data_root)
    owned = out_dir.resolve() == Path(run_dir).resolve()
    with RunLock(run_dir) if owned else nullcontext():
        report = audit(run, options)
        json_path, html_path = write_audit(report, out_dir)
        if owned:  # the headline figures join the run's report, beside its other metrics
            merge_into_report(report, Path(run_dir) / "report.json")
    log.info("wrote %s and %s", json_path, html_path)
    return report


def headline_figures(report: dict) -> dict[str, float]:
    """The audit's figures by name, as `genlab audit` prints them and report.json keeps them:
    mia_<attack>_auc, mia_<attack>_tpr_at_fpr_<f>, near_copies_<space>."""
    out = {}
    for name, e in report["membership"]["attacks"].items():
        out[f"mia_{name}_auc"] = e["auc"]
        for f in FPRS:
            out[f"mia_{name}_tpr_at_fpr_{f:g}"] = e[f"tpr_at_fpr_{f:g}"]
    for space, f in report["memorisation"]["spaces"].items():
        if "near_copies" in f:
            out[f"near_copies_{space}"] = f["near_copies"]
    return out


def merge_into_report(report: dict, path: Path) -> None:
    """Add the audit's headline figures to the run's report.json (metrics already there kept),
    in the report layout: {"value", "extractor", "n", "seed", "seconds", "source": "audit"}."""
    from genlab.evaluation import read_report

    old = read_report(path)
    metrics = dict(old.get("metrics", {}))
    n = report["membership"]["members"]["n"]
    for name, v in headline_figures(report).items():
        metrics[name] = {"value": v, "extractor": None if name.startswith("mia_") else name.split("_", 2)[-1],
                         "n": report["memorisation"]["samples"] if name.startswith("near_copies") else n,
                         "seed": report["seed"], "seconds": report["seconds"], "source": "audit.json"}
    merged = {**old, "run": old.get("run", report["run"]), "step": old.get("step", report["step"]),
              "metrics": metrics}
    if report.get("privacy"):
        merged["privacy"] = report["privacy"]
    atomic_write_json(path, merged)


def summary_lines(report: dict) -> list[str]:
    """The figures `genlab audit` prints to stdout, one per line."""
    lines = []
    if report.get("epsilon") is not None:
        lines.append(f"{'epsilon':<32} {report['epsilon']:.4g} (delta {report['delta']:g})")
    return lines + [f"{name:<32} {v:.4f}" for name, v in headline_figures(report).items()]
