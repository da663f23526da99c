"""Audio datasets (to be filled in): FSDD and folders of WAV files."""

from __future__ import annotations

AUDIO_DATASETS = ("fsdd", "audio")


def load_audio_data(cfg, root, *, seed: int = 0):
    raise NotImplementedError
