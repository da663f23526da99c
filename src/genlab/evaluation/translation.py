"""`genlab evaluate` for translation runs (pix2pix, CycleGAN): the test split's images of the
source domain translated and compared with real images of the target domain.

Metrics, per direction the model translates (names take a suffix _ab / _ba when it has two):
  mse, psnr, ssim    paired data: each translation against its own target (AtoB)
  class_agreement    paired data with a shipped classifier for the target domain: the share of
                     translations given the class the classifier gives their real target
  fid                translations against the real test images of the target domain, in the
                     target domain's feature space (lenet-mnist / lenet-fashion, or --extractor)
  acceptance         the share of translations the target domain's shipped LeNet *accepts*: its top
                     class has probability >= ACCEPT and, when the source domain has a LeNet too, it
                     is more confident than the source domain's. A classifier of ten digits or ten
                     garments says nothing by itself about the domain (it is confident on many images
                     of the other domain), so the pair acts as the domain decision; the entry holds
                     the same share for the real target images (`real`, the ceiling) and for the
                     untranslated source images (`untranslated`, the floor)
  cycle_l1_aba/_bab  two directions: mean |F(G(a)) - a| (and |G(F(b)) - b|) on the [0, 1] pixel scale
"""

from __future__ import annotations

import functools
import logging
import time

import torch

from genlab.errors import ConfigError, DataError
from genlab.metrics import reconstruction as rec
from genlab.metrics import sample_quality as sq
from genlab.metrics.features import DEFAULT_EXTRACTOR, default_extractor, get_extractor

log = logging.getLogger("genlab")

ACCEPT = 0.9  # top-class probability at which a domain's LeNet accepts an image
PAIRED_METRICS = ("mse", "psnr", "ssim", "class_agreement")
BATCH = 500


@torch.no_grad()
def translate_images(run, images: torch.Tensor, direction: str) -> torch.Tensor:
    """uint8 (N, C, S, S) of the source domain -> uint8 (N, C, S, S) translations."""
    from genlab.apply.io import to_model_space

    out = [run.pipeline.to_uint8(run.model.translate(to_model_space(run, images[i:i + BATCH]), direction))
           for i in range(0, len(images), BATCH)]
    return torch.cat(out)


def accepted(target_logits: torch.Tensor, source_logits: torch.Tensor | None) -> torch.Tensor:
    """Which images (N,) the target domain's classifier accepts, from both domains' logits
    (N, K): top-class probability >= ACCEPT and above the source classifier's, if there is one."""
    p = target_logits.softmax(1).max(1).values
    ok = p >= ACCEPT
    if source_logits is not None:
        ok &= p > source_logits.softmax(1).max(1).values
    return ok


def _put(out: dict, name: str, value: float, extractor: str | None, since: float, *, n: int, seed: int,
         shared_seconds: float, direction: str, **extra) -> None:
    """out[name] = a report entry, its seconds counted from `since` plus the translation's."""
    from genlab.evaluation.images import _entry

    out[name] = _entry(value, extractor, n, seed, time.perf_counter() - since + shared_seconds, direction=direction,
                       **extra)


def _cycle_name(suffix: str) -> str:
    """"_ab" -> "cycle_l1_aba": the round trip that starts and ends in the suffix's first domain."""
    return f"cycle_l1_{suffix[1:]}{suffix[1]}"


def evaluate_translation(run, opts) -> tuple[dict[str, dict], dict]:
    """The metrics above for `run` with ImageEvalOptions `opts` (n: test images per direction;
    metrics: a subset; extractor: instead of the target domain's LeNet). Returns (metrics, {})."""
    from genlab.evaluation.images import reference_features

    try:
        data = run.data(opts.data_root)
    except DataError as e:
        raise DataError(f"cannot load the run's data for evaluation: {e}") from None
    if not getattr(data, "paired", None) and run.cfg.model_name == "pix2pix":
        raise ConfigError("pix2pix needs paired data to be measured against its targets; "
                          f"data.dataset={run.cfg.data.dataset} is unpaired")
    model, dataset = run.model, run.cfg.data.dataset
    shape = (data.channels, data.image_size, data.image_size)
    two = len(model.directions) == 2
    domain = dict(zip("ab", data.domains))
    plan = []  # (direction, suffix, source images, target images, source domain, target domain)
    for d in model.directions:
        src, tgt = ("a", "b") if d == "AtoB" else ("b", "a")
        plan.append((d, f"_{src}{tgt}" if two else "", getattr(data, f"test_{src}"), getattr(data, f"test_{tgt}"),
                     domain[src], domain[tgt]))
    names = {}  # metric -> why it applies, to check --metrics against
    for d, sfx, src, tgt, sd, td in plan:
        if data.paired and d == "AtoB":
            names.update({f"{m}{sfx}": d for m in PAIRED_METRICS if m != "class_agreement" or td in DEFAULT_EXTRACTOR})
        if opts.extractor or DEFAULT_EXTRACTOR.get(td) or default_extractor(dataset, shape):
            names[f"fid{sfx}"] = d
        if td in DEFAULT_EXTRACTOR:
            names[f"acceptance{sfx}"] = d
        if two:
            names[_cycle_name(sfx)] = d
    wanted = list(opts.metrics) if opts.metrics else list(names)
    missing = [m for m in wanted if m not in names]
    if missing:
        raise ConfigError(f"{', '.join(missing)} do(es) not apply to this {run.cfg.model_name} run on {dataset}; "
                          f"it has: {', '.join(names)}")
    out: dict[str, dict] = {}
    for d, sfx, src, tgt, sd, td in plan:
        if not any(names[m] == d for m in wanted):
            continue
        if len(src) == 0 or len(tgt) == 0:
            raise DataError("the run's data has no test images of both domains; set data.test_size")
        n = min(opts.n, len(src))
        t0 = time.perf_counter()
        fake = translate_images(run, src[:n], d)
        t_tr = time.perf_counter() - t0
        real = tgt[:opts.n]

        put = functools.partial(_put, out, n=n, seed=opts.seed, shared_seconds=t_tr, direction=d)

        for m, fn in (("mse", rec.mse), ("psnr", rec.psnr), ("ssim", rec.ssim)):
            if f"{m}{sfx}" in wanted:
                t = time.perf_counter()
                put(f"{m}{sfx}", fn(fake, tgt[:n]), None, t)  # rec.* work 1,000 images at a time
        ext_name = opts.extractor or DEFAULT_EXTRACTOR.get(td) or default_extractor(dataset, shape)
        if f"fid{sfx}" in wanted:
            t = time.perf_counter()
            ext = get_extractor(ext_name, run.device, weights=opts.inception_weights, download=opts.download)
            r_feats, _ = reference_features(ext, real, f"{data.source}-test-{td}")
            a, b = sq.FeatureSet(), sq.FeatureSet()
            a.update(r_feats)
            b.update(ext(fake)[0])
            put(f"fid{sfx}", sq.fid(a, b), ext_name, t, n_real=len(real))
        if f"acceptance{sfx}" in wanted or f"class_agreement{sfx}" in wanted:
            t = time.perf_counter()
            judge = get_extractor(DEFAULT_EXTRACTOR[td], run.device)
            source_judge = get_extractor(DEFAULT_EXTRACTOR[sd], run.device) if sd in DEFAULT_EXTRACTOR else None
            logits = {k: judge(x)[1] for k, x in (("fake", fake), ("real", real), ("source", src[:n]))}
            if f"class_agreement{sfx}" in wanted:
                agree = logits["fake"].argmax(1) == judge(tgt[:n])[1].argmax(1)
                put(f"class_agreement{sfx}", agree.double().mean().item(), judge.name, t)
            if f"acceptance{sfx}" in wanted:
                s = {k: source_judge(x)[1] if source_judge else None for k, x in
                     (("fake", fake), ("real", real), ("source", src[:n]))}
                share = {k: accepted(logits[k], s[k]).double().mean().item() for k in logits}
                put(f"acceptance{sfx}", share["fake"], judge.name, t, real=share["real"],
                    untranslated=share["source"], threshold=ACCEPT,
                    rule=f"{judge.name} top class >= {ACCEPT}" +
                         (f" and more confident than {source_judge.name}" if source_judge else ""))
        cyc = _cycle_name(sfx) if two else None
        if cyc in wanted:
            t = time.perf_counter()
            back = translate_images(run, fake, "BtoA" if d == "AtoB" else "AtoB")
            err = (back.double() - src[:n].double()).abs().mean().item() / 255.0
            put(cyc, err, None, t)
        log.info("evaluated %s on %d test images (%.1f s)", d, n, time.perf_counter() - t0)
    return out, {}
