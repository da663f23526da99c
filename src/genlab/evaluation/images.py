"""Metrics of an image run: sample quality against the real test split (FID, KID,
precision/recall, IS, class coverage, label accuracy), reconstruction (MSE, PSNR, SSIM,
feature distance) for models that reconstruct, and likelihood bounds for models that have
one. Which metrics apply is decided by what the model can do, not by its name.

TSTR (train on synthetic, test on real) is computed only when asked for (--metrics tstr): it
trains two classifiers, on N labelled samples and on N real training images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save

from genlab.data.datasets import ImageData, cache_dir
from genlab.data.transforms import BatchPipeline, normalize
from genlab.engine.checkpoint import atomic_write_bytes
from genlab.errors import ConfigError, DataError
from genlab.evaluation.probe import PROBE_METRICS, has_image_encoder  # linear probes of an image encoder
from genlab.images import resize_uint8
from genlab.metrics import reconstruction as rec
from genlab.metrics import sample_quality as sq
from genlab.metrics.features import DEFAULT_EXTRACTOR, Extractor, default_extractor, get_extractor
from genlab.metrics.likelihood import bits_per_dim, iw_nll
from genlab.progress import Progress

log = logging.getLogger("genlab")

SAMPLE_METRICS = ("fid", "kid", "precision", "recall", "inception_score", "class_coverage", "label_accuracy")
RECON_METRICS = ("mse", "psnr", "ssim", "feature_distance")
LIKELIHOOD_METRICS = ("nll_nats", "bits_per_dim")
TSTR_METRICS = ("tstr",)
OWN_CLASSIFIER_METRICS = ("classifier_accuracy", "classifier_error")  # a model's own q(y|x) (semivae), test split
IMAGE_METRICS = (SAMPLE_METRICS + RECON_METRICS + LIKELIHOOD_METRICS + TSTR_METRICS + PROBE_METRICS
                 + OWN_CLASSIFIER_METRICS)
OPT_IN_METRICS = TSTR_METRICS  # applicable, but computed only when asked for (they train classifiers)
_CLASSIFIER_METRICS = ("inception_score", "class_coverage", "label_accuracy")  # need the extractor's logits


@dataclass
class ImageEvalOptions:
    n: int = 10_000
    seed: int = 0
    metrics: list[str] | None = None  # None: everything that applies
    extractor: str | None = None  # None: the dataset's offline default
    inception_weights: str | None = None
    download: bool = False
    iw_k: int = 100  # importance samples for likelihood bounds
    data_root: str | None = None
    probe_labels: int = 100  # labelled training images of the linear probe (class-balanced)


def likelihood_defined(model, cfg) -> bool:
    """Whether the model's likelihood is a probability of the run's test data. A Bernoulli VAE
    scored on grey (not binarised) pixels gives a cross-entropy with soft targets, not an NLL."""
    if not (hasattr(model, "log_prob") or hasattr(model, "iw_log_weights")):
        return False
    bernoulli_vae = hasattr(model, "iw_log_weights") and getattr(cfg.model, "likelihood", None) == "bernoulli"
    return not bernoulli_vae or cfg.data.binarize


def tstr_applies(conditional: bool, cfg) -> bool:
    """TSTR trains the shipped LeNets' recipe on labelled samples: it needs a conditional model of
    data that has a shipped LeNet (MNIST and its 8x8-digits fallback, Fashion-MNIST)."""
    return conditional and cfg is not None and cfg.data.dataset in DEFAULT_EXTRACTOR


def applicable(model, extractor: str | None, conditional: bool | None = None, cfg=None) -> list[str]:
    """The metrics that make sense for `model` with feature extractor `extractor`. `model` may
    also be a model class (before training), with `conditional` taken from its config; `cfg`
    (the run's RunConfig, default the model's run config) decides the likelihood metrics and TSTR."""
    conditional = model.conditional if conditional is None else conditional
    out: list[str] = []
    if extractor and getattr(model, "draws_samples", True):  # pretext models draw nothing to compare
        out += ["fid", "kid", "precision", "recall"]
        if extractor.startswith("lenet"):
            out += ["inception_score", "class_coverage"] + (["label_accuracy"] if conditional else [])
        elif extractor == "inception":
            out += ["inception_score"]
    if hasattr(model, "reconstruct"):
        out += ["mse", "psnr", "ssim"] + (["feature_distance"] if extractor else [])
    if cfg is not None and likelihood_defined(model, cfg):
        out += list(LIKELIHOOD_METRICS)
    if tstr_applies(conditional, cfg):
        out += list(TSTR_METRICS)
    if hasattr(model, "classify"):
        out += list(OWN_CLASSIFIER_METRICS)
    if has_image_encoder(model):
        out += list(PROBE_METRICS)
    return out


def planned_metrics(model_cls: type, cfg) -> list[str]:
    """The metrics `genlab evaluate` gives a run of RunConfig `cfg` (model class `model_cls`),
    known before training. The extractor is the dataset's default; folders and arrays, whose
    image shape is known only once loaded, are allowed every metric (evaluate checks again)."""
    extractor = DEFAULT_EXTRACTOR.get(cfg.data.dataset, "lenet-mnist")
    return applicable(model_cls, extractor, conditional=bool(getattr(cfg.model, "conditional", False)), cfg=cfg)


def pixel_range(pipeline: BatchPipeline, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Model-space values of pixels 0 and 255 under the run's normalisation, (1, C, 1, 1) each:
    the first and last of the 256 levels a discretised likelihood scores."""
    ends = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, channels, 1, 1)  # (2, C, 1, 1)
    low, high = normalize(ends, pipeline.mode, pipeline.mean, pipeline.std)  # (C, 1, 1) each
    return low[None], high[None]


def _real_test_images(run, data_root: str | None) -> tuple[ImageData, torch.Tensor]:
    """The run's data and its test split as uint8 at the native size samples come back at."""
    try:
        data = run.data(data_root)  # the run's own dataset: never a fallback to another one
    except DataError as e:
        raise DataError(f"cannot load the run's data for evaluation: {e}") from None
    test = data.test_x
    if len(test) == 0:
        raise DataError("the run's data has no test split to compare samples with; set data.test_size")
    return data, resize_uint8(test, tuple(run.meta["native_size"]))


def features(extractor: Extractor, images: torch.Tensor, what: str = "images") -> tuple[torch.Tensor, torch.Tensor]:
    """extractor(images) -> (features (N, D), logits (N, K)), called a few batches at a time so
    that its progress ("extracting features k/N images") can be shown; the same values."""
    step = 8 * getattr(extractor, "batch_size", 256)
    if len(images) <= step:
        return extractor(images)
    out = []
    with Progress(f"extracting features of {what}", len(images), unit="images") as bar:
        for i in range(0, len(images), step):
            out.append(extractor(images[i:i + step]))
            bar.set(i + len(out[-1][0]))
    return torch.cat([f for f, _ in out]), torch.cat([lg for _, lg in out])


def reference_features(extractor: Extractor, images: torch.Tensor, key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and logits of real images, cached per (dataset, split, extractor, N) in genlab's
    cache; the file name carries a hash of the pixels, so changed data is never served stale."""
    digest = hashlib.blake2b(images.contiguous().numpy().tobytes(), digest_size=8).hexdigest()
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
    path = cache_dir() / "reference" / f"{safe}-{extractor.name}-n{len(images)}-{digest}.safetensors"
    if path.is_file():
        try:
            t = load_file(str(path))
            return t["features"], t["logits"]
        except Exception:  # noqa: BLE001  a damaged cache file is recomputed
            log.warning("ignoring a damaged reference cache %s", path)
    feats, logits = features(extractor, images, "real images")
    atomic_write_bytes(path, save({"features": feats.contiguous(), "logits": logits.contiguous()}))
    return feats, logits


def _entry(value: float, extractor: str | None, n: int, seed: int, seconds: float, **extra) -> dict:
    return {"value": float(value), "extractor": extractor, "n": int(n), "seed": int(seed),
            "seconds": round(seconds, 3), **extra}


def evaluate_images(run, opts: ImageEvalOptions) -> tuple[dict[str, dict], dict]:
    """Compute the requested image metrics. Returns (metrics, artefacts) where artefacts
    holds the samples drawn (for the HTML report)."""
    dataset = run.cfg.data.dataset
    shape = (run.meta["channels"], *run.meta["native_size"])
    ext_name = opts.extractor or default_extractor(dataset, shape)
    wanted = applicable(run.model, ext_name, cfg=run.cfg)
    if opts.metrics:
        unknown = [m for m in opts.metrics if m not in IMAGE_METRICS]
        if unknown:
            raise ConfigError(f"unknown image metric(s) {', '.join(unknown)}; known: {', '.join(IMAGE_METRICS)}")
        missing = [m for m in opts.metrics if m not in wanted]
        if missing:
            if set(missing) <= set(LIKELIHOOD_METRICS) and hasattr(run.model, "iw_log_weights"):
                why = ("a Bernoulli VAE trained on grey pixels has no likelihood of them "
                       "(train with data.binarize=true, or model.likelihood=gaussian)")
            elif set(missing) <= set(TSTR_METRICS) and not run.model.conditional:
                why = ("TSTR trains a classifier on labelled samples and this model is unconditional; "
                       "train a conditional one (e.g. cvae-mnist, or --set model.conditional=true)")
            elif set(missing) <= set(TSTR_METRICS):
                why = (f"TSTR trains a LeNet on 28x28 digits or clothes, and data.dataset={dataset} has no shipped "
                       f"LeNet (only {', '.join(DEFAULT_EXTRACTOR)} do)")
            elif set(missing) <= set(PROBE_METRICS):
                why = f"a linear probe reads an image encoder, and {run.cfg.model_name} models have none"
            elif not getattr(run.model, "draws_samples", True):
                why = (f"a {run.cfg.model_name} run draws no samples; it has: {', '.join(wanted)}")
            elif set(missing) <= set(OWN_CLASSIFIER_METRICS):
                why = ("they score the model's own classifier q(y|x), and only semi-supervised models "
                       "(semivae) have one")
            elif not ext_name:
                why = "no offline feature extractor fits this data; pass --extractor inception"
            else:
                why = f"{run.cfg.model_name} models with extractor {ext_name} do not support them"
            raise ConfigError(f"cannot compute {', '.join(missing)}: {why}")
        wanted = list(opts.metrics)
    else:
        # probes are opt-in beside samples; a model that draws none (pretext) is measured by them
        opt_in = OPT_IN_METRICS + (PROBE_METRICS if getattr(run.model, "draws_samples", True) else ())
        wanted = [m for m in wanted if m not in opt_in]
    if not opts.metrics and not ext_name:
        log.warning("no offline feature extractor for %s %s images; FID/KID skipped (use --extractor inception)",
                    dataset, "x".join(map(str, shape)))
    data, real = _real_test_images(run, opts.data_root)
    out: dict[str, dict] = {}
    artefacts: dict = {}
    needs_samples = any(m in SAMPLE_METRICS for m in wanted)
    extractor = get_extractor(ext_name, run.device, weights=opts.inception_weights,
                              download=opts.download) if ext_name and (
        needs_samples or "feature_distance" in wanted) else None

    if needs_samples:
        t0 = time.perf_counter()
        fake, labels = run.sample(opts.n, seed=opts.seed)
        t_sample = time.perf_counter() - t0
        artefacts.update(samples=fake, labels=labels, sample_seconds=t_sample)
        n_real = min(opts.n, len(real))
        t0 = time.perf_counter()
        r_feats, _ = reference_features(extractor, real[:n_real], f"{data.source}-test")
        f_feats, f_logits = features(extractor, fake, "samples")
        t_feat = time.perf_counter() - t0 + t_sample  # every metric below shares the sampling cost
        n = len(fake)

        def timed(fn):
            t = time.perf_counter()
            v = fn()
            return v, time.perf_counter() - t + t_feat

        extra = {"n_real": n_real, "sample_seconds": round(t_sample, 3)}
        if "fid" in wanted:
            def _fid():
                a, b = sq.FeatureSet(), sq.FeatureSet()
                a.update(r_feats)
                b.update(f_feats)
                return sq.fid(a, b)
            v, s = timed(_fid)
            out["fid"] = _entry(v, ext_name, n, opts.seed, s, **extra)
        if "kid" in wanted:
            (v, std), s = timed(lambda: sq._compute_kid(r_feats, f_feats, seed=opts.seed))
            out["kid"] = _entry(v, ext_name, n, opts.seed, s, std=std, **extra)
        if "precision" in wanted or "recall" in wanted:
            (p, r), s = timed(lambda: sq._compute_precision_recall(r_feats, f_feats))
            for name, v in (("precision", p), ("recall", r)):
                if name in wanted:
                    out[name] = _entry(v, ext_name, n, opts.seed, s, k=3, **extra)
        if "inception_score" in wanted:
            (v, std), s = timed(lambda: sq._compute_inception_score(f_logits))
            out["inception_score"] = _entry(v, ext_name, n, opts.seed, s, std=std, splits=10)
        if "class_coverage" in wanted or "label_accuracy" in wanted:
            pred = f_logits.argmax(1)
            k = f_logits.shape[1]
            shares = (torch.bincount(pred, minlength=k).double() / n).tolist()
            # a class is covered when it gets at least half of a uniform share
            cov = sum(sh >= 0.5 / k for sh in shares) / k
            if "class_coverage" in wanted:
                out["class_coverage"] = _entry(cov, ext_name, n, opts.seed, t_feat,
                                               per_class=[round(x, 5) for x in shares])
            if "label_accuracy" in wanted:
                acc = (pred == labels).double().mean().item()
                per = [(pred[labels == c] == c).double().mean().item() for c in range(k) if (labels == c).any()]
                out["label_accuracy"] = _entry(acc, ext_name, n, opts.seed, t_feat,
                                               per_class=[round(x, 5) for x in per])

    if "tstr" in wanted:
        out["tstr"] = tstr(run, data, real, opts, artefacts)

    if any(m in OWN_CLASSIFIER_METRICS for m in wanted):
        acc, per_class, n, s = classifier_test_accuracy(run, data, opts.seed)
        for name, v in (("classifier_accuracy", acc), ("classifier_error", 1 - acc)):
            if name in wanted:
                out[name] = _entry(v, None, n, opts.seed, s, per_class_accuracy=per_class)

    if any(m in PROBE_METRICS for m in wanted):
        from genlab.evaluation.probe import probe_metrics

        out.update(probe_metrics(run, data, wanted, labels=opts.probe_labels, seed=opts.seed))

    if any(m in RECON_METRICS for m in wanted):
        t0 = time.perf_counter()
        n = min(opts.n, len(real))
        recon = reconstruct_test(run, data, n, opts.seed)
        truth = real[:n]
        t_rec = time.perf_counter() - t0
        artefacts.update(reconstructions=recon[:50], originals=truth[:50])
        fns = {"mse": rec.mse, "psnr": rec.psnr, "ssim": rec.ssim,
               "feature_distance": lambda a, b: rec.feature_distance(extractor, a, b)}
        for name in RECON_METRICS:
            if name in wanted:
                t = time.perf_counter()
                v = fns[name](recon, truth)
                out[name] = _entry(v, ext_name if name == "feature_distance" else None, n, opts.seed,
                                   time.perf_counter() - t + t_rec)

    if any(m in LIKELIHOOD_METRICS for m in wanted):
        t0 = time.perf_counter()
        n = min(opts.n, len(data.test_x))
        torch.manual_seed(opts.seed)  # the binarisation of test images, if any, is fixed by the seed
        batch = run.pipeline(data.test_x[:n], data.test_y[:n] if data.test_y is not None else None,
                             train=False, device=run.device)
        if hasattr(run.model, "log_prob"):  # exact likelihood (autoregressive models)
            y = batch.get("y")
            nll = -torch.cat([run.model.log_prob(batch["x"][i:i + 500], None if y is None else y[i:i + 500])
                              for i in range(0, n, 500)]).mean().item()
            how = {"bound": "exact"}
        else:  # latent-variable models: an importance-weighted upper bound on the NLL of 8-bit pixels
            ends = tuple(t.to(run.device) for t in pixel_range(run.pipeline, batch["x"].shape[1]))
            nll = iw_nll(run.model, batch["x"], batch.get("y"), k=opts.iw_k, seed=opts.seed,
                         pixel_range=ends).mean().item()
            how = {"k": opts.iw_k, "bound": "importance-weighted upper"}
        s = time.perf_counter() - t0
        dims = int(torch.tensor(batch["x"].shape[1:]).prod())
        if "nll_nats" in wanted:
            out["nll_nats"] = _entry(nll, None, n, opts.seed, s, **how)
        if "bits_per_dim" in wanted:
            out["bits_per_dim"] = _entry(bits_per_dim(nll, dims), None, n, opts.seed, s, **how)
    return out, artefacts


def tstr(run, data: ImageData, real_test: torch.Tensor, opts: ImageEvalOptions, artefacts: dict) -> dict:
    """Train on synthetic, test on real: a LeNet trained on opts.n labelled samples (balanced
    classes; the ones drawn for the sample metrics when there are) and scored on the real test
    split, beside the same recipe trained on opts.n real training images (`real_baseline`).
    A conditional model whose samples carry their class well gets close to the baseline."""
    from genlab.metrics.classifier import RECIPE_SHIFT, TSTR_MIN_N, train_test_accuracy

    if opts.n < TSTR_MIN_N:
        raise ConfigError(f"tstr needs --n >= {TSTR_MIN_N} labelled samples to train a classifier on, got {opts.n}")
    if data.test_y is None:
        raise DataError("tstr needs the test split's labels, and the run's data has none")
    t0 = time.perf_counter()
    if artefacts.get("samples") is not None and len(artefacts["samples"]) == opts.n:
        fake, labels = artefacts["samples"], artefacts["labels"]
        t_sample = artefacts["sample_seconds"]
    else:
        fake, labels = run.sample(opts.n, seed=opts.seed)
        t_sample = time.perf_counter() - t0
    ext = DEFAULT_EXTRACTOR[run.cfg.data.dataset]
    shift = RECIPE_SHIFT[ext]
    test_y = data.test_y
    t_fit = time.perf_counter()
    acc, recipe = train_test_accuracy(fake, labels, real_test, test_y, seed=opts.seed, shift=shift, device=run.device)
    seconds = time.perf_counter() - t_fit + t_sample
    # The baseline: the same recipe on as many real training images (a fixed random choice).
    t_real = time.perf_counter()
    n_real = min(opts.n, len(data.train_x))
    pick = torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(opts.seed))[:n_real]
    real_train = resize_uint8(data.train_x[pick], tuple(run.meta["native_size"]))
    base, _ = train_test_accuracy(real_train, data.train_y[pick], real_test, test_y, seed=opts.seed, shift=shift,
                                  device=run.device)
    log.info("tstr: %.4f test accuracy trained on %d samples, %.4f on %d real images (%.1f s)", acc, len(fake), base,
             n_real, time.perf_counter() - t0)
    return _entry(acc, None, len(fake), opts.seed, seconds, real_baseline=base, n_real=n_real, n_test=len(real_test),
                  classifier="lenet", shift=shift, real_baseline_seconds=round(time.perf_counter() - t_real, 3),
                  **recipe)


@torch.no_grad()
def classifier_test_accuracy(run, data: ImageData, seed: int, batch_size: int = 1000
                             ) -> tuple[float, list[float], int, float]:
    """The accuracy of the model's own classifier (`classify(x) -> logits`, a semivae's q(y|x))
    on the whole test split, prepared as in training (binarisation drawn from `seed`).
    Returns (accuracy, per-class accuracies, n, seconds)."""
    if data.test_y is None:
        raise DataError("classifier accuracy needs the test split's labels, and the run's data has none")
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    pred = []
    for i in range(0, len(data.test_x), batch_size):
        batch = run.pipeline(data.test_x[i:i + batch_size], None, train=False, device=run.device)
        pred.append(run.model.classify(batch["x"]).argmax(1).cpu())
    pred, y = torch.cat(pred), data.test_y
    per = [round((pred[y == c] == c).double().mean().item(), 5) for c in range(int(y.max()) + 1) if (y == c).any()]
    return (pred == y).double().mean().item(), per, len(y), time.perf_counter() - t0


@torch.no_grad()
def reconstruct_test(run, data: ImageData, n: int, seed: int, batch_size: int = 500) -> torch.Tensor:
    """Reconstructions (posterior mean decoded) of the first n test images, uint8 at native size."""
    torch.manual_seed(seed)
    chunks = []
    with Progress("reconstructing", n, unit="images") as bar:
        for i in range(0, n, batch_size):
            y = data.test_y[i:min(n, i + batch_size)] if data.test_y is not None else None
            batch = run.pipeline(data.test_x[i:min(n, i + batch_size)], y, train=False, device=run.device)
            x = run.model.reconstruct(batch["x"], batch.get("y"))
            chunks.append(resize_uint8(run.pipeline.to_uint8(x), tuple(run.meta["native_size"])))
            bar.set(min(n, i + batch_size))
    return torch.cat(chunks)


def with_data_root(opts: ImageEvalOptions, run) -> ImageEvalOptions:
    """Default the data root to the one the run was trained with (manifest), if any."""
    from genlab.engine.run import recorded_data_root

    root = None if opts.data_root else recorded_data_root(run.run_dir)
    return dataclasses.replace(opts, data_root=root) if root else opts
