"""The audio family through the command line (genlab.cli.main) on tiny real runs: `genlab sample`
to DIR/, FILE.wav and FILE.npz, options it refuses, the presets made unconditional, and
`genlab evaluate` on a WaveNet run (its exact NLL against one computed by hand) and a diffwave run."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from genlab.cli import main
from genlab.config import resolve
from genlab.engine.run import build_model, load
from genlab.images import write_images
from genlab.sampling import draw_audio
from tests.tiny_runs import AUDIO_RATE, AUDIO_T, train_tiny_audio, train_tiny_wavenet

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (see conftest)

GAP = AUDIO_RATE // 4  # 0.25 s of silence between the clips of FILE.wav
PCM16 = 2 / 32768  # 16-bit WAVs: written x 32767, read / 32768, rounded (at most 1.5 / 32768 off)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("audio_cli")


@pytest.fixture(scope="module")
def diffwave_run(base):
    """A class-conditional diffwave run (2 steps) on two classes of tones (high = 0, low = 1)."""
    return train_tiny_audio(base)


@pytest.fixture(scope="module")
def wavenet_run(base):
    """A class-conditional WaveNet run (2 steps, 16 classes) on the same tones."""
    return train_tiny_wavenet(base)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("genlab: error: ") and "\n" not in err, err
    return err


# --------------------------------------------------------------------------- genlab sample


def test_sample_to_a_folder_one_wav_per_clip_named_like_images(diffwave_run, tmp_path):
    out = tmp_path / "clips"
    assert main(["sample", str(diffwave_run), "--n", "12", "--seed", "1", "--out", f"{out}/"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"{i:02d}_label{i % 2}.wav" for i in range(12)] + ["spectrograms.png"])
    # the same names as `genlab sample IMAGE_RUN --out DIR/` gives images, .wav for .png
    write_images(f"{tmp_path / 'images'}/", torch.zeros(12, 1, 4, 4, dtype=torch.uint8), torch.arange(12) % 2)
    assert sorted(p.stem for p in (tmp_path / "images").iterdir()) == sorted(n[:-4] for n in names if n.endswith(".wav"))
    for name in names[:-1]:
        wav, sr = sf.read(str(out / name), dtype="float32")
        assert sr == AUDIO_RATE and wav.shape == (AUDIO_T,) and np.abs(wav).max() > 0
    grid = Image.open(out / "spectrograms.png")
    assert grid.mode == "RGB" and grid.size[1] > 64  # 12 spectrograms in a grid of rows
    # the folder holds the clips `genlab sample` draws for that seed (16-bit WAVs)
    clips, labels = load(diffwave_run).sample(12, seed=1)
    assert labels.tolist() == [i % 2 for i in range(12)]
    for i, name in enumerate(names[:-1]):
        assert np.allclose(sf.read(str(out / name), dtype="float32")[0], clips[i].numpy(), atol=PCM16)


def test_sample_to_wav_and_npz(diffwave_run, tmp_path):
    n = 4
    assert main(["sample", str(diffwave_run), "--n", str(n), "--out", str(tmp_path / "s.wav")]) == 0
    assert main(["sample", str(diffwave_run), "--n", str(n), "--out", str(tmp_path / "s.npz")]) == 0
    # FILE.npz: audio float32 (N, T), the sample rate, balanced labels
    with np.load(tmp_path / "s.npz") as z:
        assert set(z.files) == {"audio", "sample_rate", "labels"}
        audio, rate, labels = z["audio"], int(z["sample_rate"]), z["labels"]
    assert audio.shape == (n, AUDIO_T) and audio.dtype == np.float32 and np.abs(audio).max() <= 1
    assert rate == AUDIO_RATE and labels.dtype == np.int64
    assert np.bincount(labels, minlength=2).tolist() == [n // 2, n // 2]
    # FILE.wav: the same N clips in a row, 0.25 s of silence between them
    wav, sr = sf.read(str(tmp_path / "s.wav"), dtype="float32")
    assert sr == AUDIO_RATE and wav.shape == (n * AUDIO_T + (n - 1) * GAP,)
    for i in range(n):
        start = i * (AUDIO_T + GAP)
        assert np.allclose(wav[start:start + AUDIO_T], audio[i], atol=PCM16)
        if i < n - 1:
            assert (wav[start + AUDIO_T:start + AUDIO_T + GAP] == 0).all()
    assert Image.open(tmp_path / "s.png").mode == "RGB"  # the spectrogram grid beside FILE.wav and FILE.npz


def test_sample_interpolate_is_refused_for_audio(diffwave_run, tmp_path, capsys):
    out = tmp_path / "x.wav"
    assert main(["sample", str(diffwave_run), "--interpolate", "--out", str(out)]) != 0
    assert "--interpolate" in one_line_error(capsys)
    assert not out.exists() and not out.with_suffix(".png").exists()


def test_sample_wavenet_with_guidance(wavenet_run, tmp_path, capsys):
    """wavenet-fsdd trains with label dropout: `genlab sample --guidance W` mixes the conditional and
    unconditional logits (default: the preset's w); w = 0 draws the same clips whatever --label asks."""
    run = load(wavenet_run)
    assert run.model.guided and run.cfg.model.guidance == 2.0
    paths = {}
    for w, label in [("0", "0"), ("0", "1"), ("1", "1"), (None, "1")]:
        out = tmp_path / f"w{w}-l{label}.npz"
        assert main(["sample", str(wavenet_run), "--n", "2", "--label", label, "--seed", "3", "--out", str(out),
                     *(["--guidance", w] if w else [])]) == 0
        with np.load(out) as z:
            paths[w, label] = z["audio"]
    assert np.array_equal(paths["0", "0"], paths["0", "1"])
    assert np.array_equal(paths[None, "1"], run.sample(2, seed=3, label=1, guidance=2.0)[0].numpy())
    assert np.array_equal(paths["1", "1"], run.sample(2, seed=3, label=1, guidance=1.0)[0].numpy())
    capsys.readouterr()
    assert main(["sample", str(wavenet_run), "--n", "2", "--sampling-steps", "4",
                 "--out", str(tmp_path / "x.wav")]) != 0
    assert "--sampling-steps: diffusion options" in one_line_error(capsys)


# --------------------------------------------------------------------------- presets


@pytest.mark.parametrize("preset", ["diffwave-fsdd", "wavenet-fsdd"])
def test_presets_made_unconditional_sample_without_labels(preset):
    cfg = resolve(preset, ["model.conditional=false"])
    assert cfg.model.conditional is False and cfg.model.num_classes is None  # nothing from data yet
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, audio_length=AUDIO_T))
    torch.manual_seed(0)
    model = build_model(cfg)
    assert model.conditional is False and model.num_classes is None
    x = model.eval().sample(2, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 1, AUDIO_T) and torch.isfinite(x).all()
    clips, labels = draw_audio(model, 3, seed=0)  # what `genlab sample` uses: no labels asked for
    assert labels is None and clips.shape == (3, AUDIO_T)


# --------------------------------------------------------------------------- genlab evaluate


def test_evaluate_wavenet_run_nll_by_hand_and_fad(wavenet_run, capsys):
    assert main(["evaluate", str(wavenet_run), "--n", "4", "--metrics", "fad", "nll_bits_per_sample",
                 "generation_rtf", "--no-html"]) == 0
    m = json.loads((wavenet_run / "report.json").read_text())["metrics"]
    assert {"fad", "nll_bits_per_sample", "generation_rtf"} <= set(m)
    assert "label_accuracy" not in m and "audio_is" not in m  # tone folders: the judge's digits do not apply
    # the NLL by hand: model.nll summed over the data's test batches, one clip at a time
    run = load(wavenet_run)
    data = run.data()
    feeder = data.feeder(None, 1, 0)
    bits, count = 0.0, 0
    for i in range(feeder.num_eval_batches("test", 1)):
        b, c = run.model.nll(feeder.eval_batch("test", i, 1, "cpu"))
        bits, count = bits + float(b), count + int(c)
    assert len(data.test_x) == 2 and count == int(data.test_mask.sum()) == 2 * AUDIO_T
    e = m["nll_bits_per_sample"]
    assert e["value"] == pytest.approx(bits / count, rel=1e-5)
    assert e["samples"] == count and e["n"] == 2 and e["split"] == "test" and e["extractor"] is None
    assert 0 < e["value"] < 2 * np.log2(16)  # 16 classes: ~4 bits for a barely trained model
    f = m["fad"]
    assert f["extractor"] == "digits-fsdd" and f["n"] == 4 and f["n_real"] == 2 and np.isfinite(f["value"])
    assert f["value"] >= 0 and f["floor_n"] == 4 and np.isfinite(f["floor"])
    assert m["generation_rtf"]["value"] > 0
    assert "nll_bits_per_sample" in capsys.readouterr().out  # the printed table


def test_evaluate_diffwave_run_default_metrics_and_refusals(diffwave_run, capsys):
    assert main(["evaluate", str(diffwave_run), "--n", "4"]) == 0
    rep = json.loads((diffwave_run / "report.json").read_text())
    m = rep["metrics"]
    assert {"fad", "generation_rtf"} <= set(m) and "nll_bits_per_sample" not in m and "audio_is" not in m
    assert m["fad"]["extractor"] == "digits-fsdd" and m["fad"]["n"] == 4 and np.isfinite(m["fad"]["value"])
    page = (diffwave_run / "report.html").read_text()
    assert page.count("<audio controls") == 4
    capsys.readouterr()
    assert main(["evaluate", str(diffwave_run), "--n", "4", "--metrics", "nll_bits_per_sample"]) != 0
    assert "WaveNet" in one_line_error(capsys)
    assert main(["evaluate", str(diffwave_run), "--n", "4", "--metrics", "label_accuracy"]) != 0
    assert "fsdd" in one_line_error(capsys)
