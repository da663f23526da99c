"""Metrics of an audio run, judged by the `digits-fsdd` spoken-digit classifier
(genlab.metrics.audio) against the run's real test clips:

- `label_accuracy` (conditional FSDD runs): share of generated clips the judge hears as the
  digit asked for (balanced labels); `judge_test_accuracy` beside it is the judge's accuracy
  on the run's real test clips, the ceiling a perfect generator would reach.
- `audio_is` (FSDD runs): Inception-style score exp(E KL(p(y|x) || p(y))) of the judge's class
  probabilities, 1 .. 10, in splits of 100 clips (fewer for n < 1000); `real_test` beside it is
  the score of the real test clips (about 7.5: the judge, trained with label smoothing, is
  rarely more than ~96% sure), the value to compare with.
- `fad`: Frechet distance between judge features (128-d) of the generated clips and of the
  test split (FAD-style, in the judge's space: compare only with other digits-fsdd FADs).
  `floor` beside it is the same distance between as many real training clips (at most all)
  and the test clips: what a generator as good as the data would get (the judge has seen the
  training clips, so the floor is, if anything, a little optimistic).
- `nll_bits_per_sample` (models with an exact `nll`, e.g. WaveNet): bits per audio sample over
  the whole test split (recorded samples only, as the model's `nll` counts them).
- `generation_rtf`: real-time factor of the sampling, seconds of audio per second of wall time.
Everything is a function of `seed`; reference features are cached in genlab's cache.
"""

from __future__ import annotations

import logging
import time

import torch

from genlab.errors import ConfigError, DataError
from genlab.evaluation.images import _entry  # the report entry layout, shared with the image metrics
from genlab.metrics import audio as am
from genlab.seed import derive_seed, make_generator

log = logging.getLogger("genlab")

AUDIO_METRICS = ("label_accuracy", "audio_is", "fad", "nll_bits_per_sample", "generation_rtf")
SAMPLE_METRICS = ("label_accuracy", "audio_is", "fad", "generation_rtf")
JUDGED = ("label_accuracy", "audio_is", "fad")
HTML_CLIPS = 10  # clips the HTML report shows (players and spectrograms)


def applicable(model, dataset: str) -> list[str]:
    """The audio metrics that make sense for `model` trained on `dataset` (fsdd | audio): the
    judge knows FSDD's digits, so label accuracy and the IS-style score need FSDD; any audio
    gets a FAD in the judge's space."""
    fsdd = dataset == "fsdd"
    out = []
    if fsdd and getattr(model, "conditional", False):
        out.append("label_accuracy")
    if fsdd:
        out.append("audio_is")
    out.append("fad")
    if hasattr(model, "nll"):
        out.append("nll_bits_per_sample")
    out.append("generation_rtf")
    return out


def _select(run, metrics: list[str] | None) -> list[str]:
    wanted = applicable(run.model, run.cfg.data.dataset)
    if not metrics:
        return wanted
    unknown = [m for m in metrics if m not in AUDIO_METRICS]
    if unknown:
        raise ConfigError(f"unknown audio metric(s) {', '.join(unknown)}; choose from {', '.join(AUDIO_METRICS)}")
    missing = [m for m in metrics if m not in wanted]
    if missing:
        why = {"label_accuracy": "needs a conditional model trained on fsdd",
               "audio_is": "needs a model trained on fsdd (the judge knows only its ten digits)",
               "nll_bits_per_sample": "needs a model with an exact likelihood (WaveNet)"}
        raise ConfigError(f"cannot compute {', '.join(missing)} for this {run.cfg.model_name} run: "
                          + "; ".join(f"{m} {why[m]}" for m in missing))
    return list(dict.fromkeys(metrics))


def _flat(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, T) or (N, T) -> float32 (N, T) contiguous."""
    return x.reshape(len(x), -1).float().contiguous()


@torch.no_grad()
def test_nll_bits(model, data, device, batch_size: int = 32) -> tuple[float, int]:
    """(bits per sample, samples scored) of the model's exact `nll` over the whole test split."""
    feeder = data.feeder(None, 1, 0)  # eval batches only (a train batch size > the train split would raise)
    bits, count = 0.0, 0
    for i in range(feeder.num_eval_batches("test", batch_size)):
        b, c = model.nll(feeder.eval_batch("test", i, batch_size, device))
        bits += float(b)
        count += int(c)
    if count == 0:
        raise DataError("the test split has no recorded samples to score")
    return bits / count, count


def evaluate_audio(run, *, n: int | None = 1000, seed: int = 0, metrics: list[str] | None = None,
                   data_root: str | None = None, floor: bool = True,
                   sample_options: dict | None = None) -> tuple[dict[str, dict], dict]:
    """The audio metrics of a loaded audio run (genlab.engine.run.load) as report entries
    {name: {"value", "extractor", "n", "seed", "seconds", ...}}.

    Args:
        run: a Run whose model family is "audio".
        n: clips to generate (default 1000; a conditional model gets each class n/10 times).
        seed: fixes the samples and the training clips of the FAD floor.
        metrics: a subset of AUDIO_METRICS (default: all that apply).
        data_root: where the run's dataset is (default: the root it was trained from).
        floor: also compute the train-vs-test FAD floor (cached judge features; cheap).
        sample_options: passed to the model's `sample` (e.g. diffusion steps).
    Returns:
        (metrics, artefacts): artefacts hold "samples" float32 (n, T), "labels" (n,) or None,
        "sample_rate", "class_names" and "notes" (lines for the HTML report) when sampled.
    """
    from genlab.evaluation.images import reference_features

    n = n or 1000
    if n < 2:
        raise ConfigError(f"--n must be >= 2 for audio metrics, got {n}")
    wanted = _select(run, metrics)
    try:
        data = run.data(data_root)  # the run's own dataset: never a fallback to another one
    except DataError as e:
        raise DataError(f"cannot load the run's data for evaluation: {e}") from None
    sr = int(data.sample_rate)
    out: dict[str, dict] = {}
    artefacts: dict = {}

    if any(m in SAMPLE_METRICS for m in wanted):
        if len(data.test_x) < 2:
            raise DataError("the run's data has fewer than 2 test clips to compare samples with")
        t0 = time.perf_counter()
        fake, labels = run.sample(n, seed=seed, **(sample_options or {}))  # (n, T) float32
        t_sample = time.perf_counter() - t0
        fake = _flat(fake)
        artefacts.update(samples=fake, labels=labels, sample_rate=sr, class_names=data.class_names, notes=[])
        if "generation_rtf" in wanted:
            out["generation_rtf"] = _entry(am.real_time_factor(n, fake.shape[1], sr, t_sample), None, n, seed,
                                           t_sample, audio_seconds=round(n * fake.shape[1] / sr, 3),
                                           sample_seconds=round(t_sample, 3), device=str(run.device))

    if any(m in JUDGED for m in wanted):
        t0 = time.perf_counter()
        judge = am.get_judge(sr, run.device)
        key = f"{data.source}-{sr}hz-{judge.sha256[:12]}"  # new judge weights: new cache entries
        test = _flat(data.test_x)
        r_feats, r_logits = reference_features(judge, test, f"{key}-test")
        f_feats, f_logits = judge(fake)
        t_judge = time.perf_counter() - t0 + t_sample  # every judged metric shares the sampling cost
        extra = {"n_real": len(test), "sample_seconds": round(t_sample, 3)}

        if "label_accuracy" in wanted:
            t = time.perf_counter()
            acc, per = am.label_accuracy(f_logits, labels)
            judge_acc = am.label_accuracy(r_logits, data.test_y)[0] if data.test_y is not None else None
            out["label_accuracy"] = _entry(acc, am.JUDGE, n, seed, time.perf_counter() - t + t_judge,
                                           judge_test_accuracy=judge_acc, per_class=[round(x, 5) for x in per])
            if judge_acc is not None:
                artefacts["notes"].append(f"label accuracy {acc:.4g}; the judge's own accuracy on the "
                                          f"{len(test)} real test clips: {judge_acc:.4g}")
        if "audio_is" in wanted:
            t = time.perf_counter()
            splits = am.is_splits(n)
            mean, std = am.audio_is(f_logits, splits)
            # the real clips' score at the same split size; shuffled, since the test split is sorted by class
            order = torch.randperm(len(test), generator=make_generator(derive_seed(seed, "is-real")))
            real_is = am.audio_is(r_logits[order], am.is_splits(len(test)))[0]
            out["audio_is"] = _entry(mean, am.JUDGE, n, seed, time.perf_counter() - t + t_judge, std=std,
                                     splits=splits, real_test=real_is)
        if "fad" in wanted:
            t = time.perf_counter()
            value = am.frechet_distance(r_feats, f_feats)
            fields = dict(extra)
            if floor:
                train = _flat(data.train_x)
                t_feats, _ = reference_features(judge, train, f"{key}-train")
                k = min(n, len(train))  # as many real clips as generated: FDs shrink with n, compare like with like
                pick = torch.randperm(len(train), generator=make_generator(derive_seed(seed, "fad-floor")))[:k]
                fields.update(floor=am.frechet_distance(r_feats, t_feats[pick]), floor_n=k)
                artefacts["notes"].append(f"FAD (digits-fsdd) {value:.4g}; floor (train vs test, "
                                          f"{k} vs {len(test)} real clips): {fields['floor']:.4g}")
            out["fad"] = _entry(value, am.JUDGE, n, seed, time.perf_counter() - t + t_judge, **fields)

    if "nll_bits_per_sample" in wanted:
        t0 = time.perf_counter()
        bits, count = test_nll_bits(run.model, data, run.device)
        out["nll_bits_per_sample"] = _entry(bits, None, len(data.test_x), seed, time.perf_counter() - t0,
                                            bound="exact", split="test", samples=count)
    return {k: out[k] for k in wanted}, artefacts


def html_clips(artefacts: dict, k: int = HTML_CLIPS) -> list[tuple[str, bytes, bytes]]:
    """The first k generated clips as (caption, WAV bytes, spectrogram PNG bytes) for the report."""
    from genlab.audio import spectrogram_images, wav_bytes
    from genlab.images import png_bytes

    x = artefacts.get("samples")
    if x is None or len(x) == 0:
        return []
    x, sr = x[:k], artefacts["sample_rate"]
    labels, names = artefacts.get("labels"), artefacts.get("class_names")
    pics = spectrogram_images(x, sr)  # uint8 (k, 3, mels, frames)
    out = []
    for i in range(len(x)):
        if labels is None:
            caption = f"sample {i}"
        else:
            c = int(labels[i])
            caption = f"label {names[c] if names and c < len(names) else c}"
        out.append((caption, wav_bytes(x[i], sr), png_bytes(pics[i].permute(1, 2, 0).numpy())))
    return out
