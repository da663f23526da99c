"""One tiny finished run per served model family, shared by the hostile-input and server tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import genlab
from tests.conftest import TINY_VAE, shakespeare_corpus
from tests.test_diffusion import TINY_DIFFUSION, small_mnist
from tests.test_graphs import TINY_RNN
from tests.test_text import TINY_TEXT


def train_tiny_runs(base: Path, data_root: Path) -> dict[str, Path]:
    """cvae (28x28 conditional VAE), ddpm (16x16 diffusion; base/mnist16.npz holds its data),
    gpt (char GPT on 5,000 characters of Shakespeare), graph (GraphRNN on grids): 2 steps each."""
    r = {"cvae": genlab.train("cvae-mnist", base / "cvae", overrides=TINY_VAE, steps=2, data_root=str(data_root)),
         "ddpm": genlab.train("ddpm-mnist", base / "ddpm", overrides=TINY_DIFFUSION + small_mnist(base, data_root),
                              steps=2, data_root=str(data_root))}
    corpus = shakespeare_corpus(base)
    r["gpt"] = genlab.train("gpt-shakespeare-cpu", base / "gpt", overrides=TINY_TEXT + [f"data.path={corpus}"],
                            steps=2)
    r["graph"] = genlab.train("graphgen-grid", base / "graph", overrides=TINY_RNN, steps=2)
    out = {k: v.run_dir for k, v in r.items()}
    out["audio"] = train_tiny_audio(base)
    return out


AUDIO_RATE, AUDIO_T = 8000, 256
# data/train overrides shared by the tiny audio runs (diffwave, WaveNet)
TINY_AUDIO = ["train.amp=off", "train.test_batches=2", f"data.audio_length={AUDIO_T}", "data.val_size=2", "data.test_size=2", "train.batch_size=4",
              "train.eval_batches=1", "train.sample_every=1000"]
TINY_DIFFWAVE = ["model.residual_channels=8", "model.layers=2", "model.dilation_cycle=2", "model.timesteps=50",
                 "model.sampling_steps=4"] + TINY_AUDIO
TINY_WAVENET = ["model.residual_channels=4", "model.skip_channels=4", "model.layers=2", "model.stacks=1",
                "model.quantization=16"] + TINY_AUDIO


def tone_folder(folder: Path, per_class: int = 6) -> Path:
    """Two classes of 256-sample tones at 8 kHz (low/ and high/, 16-bit WAVs), a labelled audio folder."""
    import soundfile as sf

    t = np.arange(AUDIO_T) / AUDIO_RATE
    for c, base_hz in (("low", 300), ("high", 1200)):
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            sf.write(folder / c / f"{i}.wav", 0.5 * np.sin(2 * np.pi * (base_hz + 40 * i) * t), AUDIO_RATE,
                     subtype="PCM_16")
    return folder


def _tones(base: Path) -> Path:
    """`tone_folder(base / "tones")`, written once and reused by every tiny audio run under base."""
    folder = base / "tones"
    return folder if folder.is_dir() and any(folder.rglob("*.wav")) else tone_folder(folder)


def train_tiny_audio(base: Path) -> Path:
    """A class-conditional diffwave run (2 steps) on `tone_folder`."""
    wavs = _tones(base)
    return genlab.train("diffwave-fsdd", base / "audio", steps=2,
                        overrides=TINY_DIFFWAVE + ["data.dataset=audio", f"data.path={wavs}"]).run_dir


def train_tiny_wavenet(base: Path) -> Path:
    """A class-conditional WaveNet run (2 steps, 16-way mu-law) on `tone_folder` (base/tones,
    shared with `train_tiny_audio`)."""
    wavs = _tones(base)
    return genlab.train("wavenet-fsdd", base / "wavenet", steps=2,
                        overrides=TINY_WAVENET + ["data.dataset=audio", f"data.path={wavs}"]).run_dir
