"""Linear-probe evaluation of a run's image encoder (`genlab evaluate RUN --metrics probe`).

The encoder is frozen; its features of `probe_labels` labelled training images (default 100,
class-balanced, fixed by the seed) fit a multinomial logistic regression
(genlab.metrics.probe), scored by its accuracy on the whole test split.

  probe         the run's encoder (a pretext run's, a VAE's)
  probe_random  the same architecture at a random initialisation (torch seeded with the seed):
                the "without pretraining" baseline; compare the two at the same labels and seed

Which features: a model's `probe_features(x)` when it has one (pretext models: the encoder's
mu); a VAE: the encoder's mu, or, for a conditional VAE, whose encoder reads the label, the
label-blind convolutional/flattened trunk `encoder.features(x)` (its mu would hand the probe the
answer). The entry names the layer ("mu" or "trunk").

From Python (benchmarks): `probe_run(RUN_DIR, labels=100, seed=0, random_init=False)` returns
the same report entry.
"""

from __future__ import annotations

import logging
import time

import torch

from genlab.errors import ConfigError, DataError
from genlab.metrics.probe import L2, balanced_subset, fit_linear_probe
from genlab.progress import Progress

log = logging.getLogger("genlab")

PROBE_METRICS = ("probe", "probe_random")
DEFAULT_LABELS = 100
BATCH = 500


def has_image_encoder(model) -> bool:
    """Whether a model (instance or class) has an image encoder a probe can read: a pretext
    model (`probe_features`) or a VAE (`encoder`)."""
    from genlab.models.vae import VAE

    cls = model if isinstance(model, type) else type(model)
    return hasattr(cls, "probe_features") or issubclass(cls, VAE)


def probe_layer(model) -> str:
    """The layer `encoder_features` reads: "mu", or "trunk" for a label-reading (conditional) encoder."""
    if hasattr(model, "probe_features") or not getattr(model, "conditional", False):
        return "mu"
    return "trunk"


@torch.no_grad()
def encoder_features(model, x: torch.Tensor) -> torch.Tensor:
    """Frozen features (B, D) of model-space images x (B, C, S, S); see the module docstring."""
    if not has_image_encoder(model):
        raise ConfigError(f"a linear probe reads an image encoder, and {type(model).__name__} has none "
                          "(pretext and VAE runs have one)")
    if hasattr(model, "probe_features"):
        return model.probe_features(x)
    if probe_layer(model) == "trunk":
        return model.encoder.features(x).flatten(1)
    return model.encoder(x, None)[0]


@torch.no_grad()
def features_of(model, pipeline, images: torch.Tensor, device, seed: int, what: str) -> torch.Tensor:
    """encoder_features of uint8 images (N, C, H, W) prepared by the run's evaluation pipeline,
    BATCH at a time, as float64 (N, D) on the CPU; the pipeline's randomness (binarisation) is
    fixed by `seed`."""
    torch.manual_seed(seed)
    out = []
    with Progress(f"encoding {what}", len(images), unit="images") as bar:
        for i in range(0, len(images), BATCH):
            x = pipeline(images[i:i + BATCH], None, train=False, device=device)["x"]
            out.append(encoder_features(model, x).double().cpu())
            bar.set(min(len(images), i + BATCH))
    return torch.cat(out)


def random_twin(run, seed: int):
    """A freshly initialised model of the run's config (torch seeded with `seed`), in eval mode
    on the run's device: the same encoder architecture without its training."""
    from genlab.engine.run import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(run.cfg)
    return model.to(run.device).eval()


def linear_probe(model, pipeline, data, device, *, labels: int = DEFAULT_LABELS, seed: int = 0) -> dict:
    """Fit the probe on `labels` class-balanced training images of `data` (ImageData) and score
    it on the whole test split. Returns {"accuracy", "train_accuracy", "n", "n_test", "features",
    "layer", "l2"}."""
    if data.train_y is None or data.test_y is None or len(data.test_x) == 0:
        raise DataError("a linear probe needs labelled training and test images, and the run's data has none; "
                        "use labelled data (MNIST, class sub-folders)")
    if labels < 1:
        raise ConfigError(f"the linear probe's labels must be >= 1, got {labels}")
    pick = balanced_subset(data.train_y, labels, seed)
    k = int(max(data.train_y.max(), data.test_y.max())) + 1
    train_f = features_of(model, pipeline, data.train_x[pick], device, seed, "labelled training images")
    test_f = features_of(model, pipeline, data.test_x, device, seed, "test images")
    probe = fit_linear_probe(train_f, data.train_y[pick], k)
    return {"accuracy": probe.accuracy(test_f, data.test_y),
            "train_accuracy": probe.accuracy(train_f, data.train_y[pick]),
            "n": len(pick), "n_test": len(data.test_x), "features": int(train_f.shape[1]),
            "layer": probe_layer(model), "l2": L2}


def probe_metrics(run, data, wanted: list[str], *, labels: int = DEFAULT_LABELS, seed: int = 0) -> dict[str, dict]:
    """The report entries of the PROBE_METRICS in `wanted` for `run` (its data `data`)."""
    from genlab.evaluation.images import _entry

    out = {}
    for name in PROBE_METRICS:
        if name not in wanted:
            continue
        t0 = time.perf_counter()
        model = random_twin(run, seed) if name == "probe_random" else run.model
        r = linear_probe(model, run.pipeline, data, run.device, labels=labels, seed=seed)
        secs = time.perf_counter() - t0
        log.info("%s: %.4f test accuracy from %d labels (%s, %d features; %.1f s)", name, r["accuracy"], r["n"],
                 r["layer"], r["features"], secs)
        out[name] = _entry(r.pop("accuracy"), None, r.pop("n"), seed, secs,
                           encoder="random init" if name == "probe_random" else "trained", classifier="logistic",
                           **r)
    return out


def probe_run(run_dir, *, labels: int = DEFAULT_LABELS, seed: int = 0, random_init: bool = False,
              data_root: str | None = None, checkpoint: str = "last", device: str = "cpu") -> dict:
    """The `probe` (or, random_init, `probe_random`) report entry of a run, without writing a report."""
    from genlab.engine.run import load

    run = load(run_dir, checkpoint, device)
    try:
        data = run.data(data_root)
    except DataError as e:
        raise DataError(f"cannot load the run's data for the probe: {e}") from None
    name = "probe_random" if random_init else "probe"
    return probe_metrics(run, data, [name], labels=labels, seed=seed)[name]
