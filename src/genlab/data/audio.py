"""Audio datasets, held in memory as float32 waveforms (N, 1, T) in [-1, 1] with a mask (N, T).

Sources: the Free Spoken Digit Dataset (`ROOT/fsdd/recordings/{digit}_{speaker}_{index}.wav`,
8 kHz, labels = digits, the official test split = indices 0-4) and a folder of audio files
(class sub-folders give labels, as for image folders). Every clip is made `data.audio_length`
samples long: longer recordings are centre-cropped, shorter ones zero-padded on both sides, and
the mask says which samples are real. Levels are kept as recorded (no peak normalisation).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from genlab.audio import (
    concat_with_gaps,
    fit_length,
    read_wav,
    spectrogram_grid_png,
    wav_bytes,
)
from genlab.config import DataConfig
from genlab.data.datasets import BatchOrder, list_class_folder, resolve_data_root
from genlab.errors import ConfigError, DataError
from genlab.seed import derive_seed

log = logging.getLogger("genlab")

AUDIO_DATASETS = ("fsdd", "audio")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".aiff", ".aif")
FSDD_RATE = 8000
FSDD_NAME = re.compile(r"^(\d)_([^_]+)_(\d+)\.wav$")  # {digit}_{speaker}_{index}.wav
FSDD_TEST_INDICES = range(5)  # the official test split: recordings 0-4 of each digit and speaker
SPLITS = ("train", "val", "test")


@dataclass
class AudioData:
    """A dataset's three splits in memory: waveforms `*_x` float32 (N, 1, T) in [-1, 1], labels
    `*_y` int64 (N,) or None, masks `*_mask` bool (N, T) (True on recorded samples, False on
    padding), and per split the clips' speakers (None when unknown) and file names."""

    train_x: torch.Tensor
    train_y: torch.Tensor | None
    train_mask: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor | None
    val_mask: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor | None
    test_mask: torch.Tensor
    sample_rate: int
    source: str
    dataset: str
    class_names: list[str] | None = None
    speakers: dict[str, list[str] | None] = field(default_factory=dict)
    files: dict[str, list[str]] = field(default_factory=dict)  # relative to the dataset folder
    family = "audio"

    @property
    def audio_length(self) -> int:
        return self.train_x.shape[-1]

    @property
    def num_classes(self) -> int | None:
        return None if self.train_y is None else len(self.class_names)

    def meta(self) -> dict:
        """What a run directory keeps (data.json)."""
        return {"family": "audio", "dataset": self.dataset, "source": self.source,
                "sample_rate": self.sample_rate, "audio_length": self.audio_length,
                "num_classes": self.num_classes, "class_names": self.class_names,
                "sizes": {s: len(getattr(self, f"{s}_x")) for s in SPLITS}}

    def feeder(self, pipeline, batch_size: int, seed: int) -> AudioFeeder:
        """What the training engine draws batches from (see genlab.engine.trainer); waveforms
        need no preparation, so `pipeline` (None for audio runs) is not used."""
        return AudioFeeder(self, batch_size, seed)


class AudioFeeder:
    """Audio batches for the engine: epochs of seeded permutations of the training clips, as
    {"x": (b, 1, T) float32, "mask": (b, T) bool, "y": (b,) int64 when labelled}."""

    unit = "samples"

    def __init__(self, data: AudioData, batch_size: int, seed: int):
        self.data = data
        self.per_example = data.audio_length
        self.order = BatchOrder(len(data.train_x), batch_size, seed, what="clips")

    def _batch(self, split: str, idx, device) -> dict[str, torch.Tensor]:
        d = self.data
        out = {"x": getattr(d, f"{split}_x")[idx], "mask": getattr(d, f"{split}_mask")[idx]}
        y = getattr(d, f"{split}_y")
        if y is not None:
            out["y"] = y[idx]
        return {k: v.to(device, non_blocking=True) for k, v in out.items()}

    def train_batch(self, b: int, shard: int, micro: int, device) -> dict[str, torch.Tensor]:
        """Micro-batch `shard` (of size `micro`) of global batch number `b`."""
        return self._batch("train", self.order.indices(b)[shard * micro:(shard + 1) * micro], device)

    def eval_size(self, split: str) -> int:
        return len(getattr(self.data, f"{split}_x"))

    def num_eval_batches(self, split: str, batch_size: int) -> int:
        return -(-self.eval_size(split) // batch_size)

    def eval_batch(self, split: str, i: int, batch_size: int, device) -> dict[str, torch.Tensor]:
        return self._batch(split, slice(i * batch_size, (i + 1) * batch_size), device)

    @torch.no_grad()
    def write_samples(self, model, folder: Path, stem: str, seed: int) -> None:
        """folder/stem.png (a row of spectrograms) and folder/stem.wav (the same clips in order,
        0.25 s apart): one clip per class 0..K-1 (at most 10) for a conditional model, else 8."""
        from genlab.engine.checkpoint import atomic_write_bytes
        from genlab.sampling import draw_audio

        k = model.num_classes if getattr(model, "conditional", False) else None
        clips, _ = draw_audio(model, min(k, 10) if k else 8, seed=seed)  # labels 0, 1, ..., n-1
        sr = self.data.sample_rate
        atomic_write_bytes(Path(folder) / f"{stem}.png", spectrogram_grid_png(clips, sr, nrow=len(clips)))
        atomic_write_bytes(Path(folder) / f"{stem}.wav", wav_bytes(concat_with_gaps(clips, sr), sr))


# --------------------------------------------------------------------------- reading


def read_clips(files: list[Path], length: int, sample_rate: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Audio files -> (float32 (N, length) in [-1, 1], bool (N, length) masks, their common
    rate), each clip fitted by genlab.audio.fit_length. With `sample_rate` every file is
    resampled to it; without, files at two different rates are a DataError naming both."""
    x, mask = np.zeros((len(files), length), np.float32), np.zeros((len(files), length), bool)
    rate = first = None
    for i, f in enumerate(files):
        a, sr = read_wav(f, sample_rate)
        if rate is None:
            rate, first = sr, f
        elif sr != rate:
            raise DataError(f"{first} is {rate} Hz but {f} is {sr} Hz; set data.sample_rate "
                            f"(e.g. data.sample_rate={rate}) to resample every file to one rate")
        x[i], mask[i] = fit_length(np.clip(a, -1.0, 1.0), length)  # resampling can overshoot 1
    return x, mask, rate


def _count(size: float, n: int, key: str, what: str) -> int:
    """data.val_size / data.test_size (a fraction if < 1, else a count) of a pool of n clips; a
    ConfigError when that leaves no clips to train on."""
    k = round(size * n) if size < 1 else int(size)
    if size < 0 or k >= n:
        raise ConfigError(f"{key}={size:g} holds out {max(k, 0)} of the {n} {what}, leaving none to train on; "
                          f"use a fraction such as {key}=0.1 or a count below {n}")
    return k


def _hold_out(pool: np.ndarray, n_hold: int, labels: np.ndarray | None, seed: int) -> np.ndarray:
    """`n_hold` of the indices `pool` (sorted), drawn with `seed`; with labels, stratified: each
    class gives its share (classes take turns in a random order, so the total is exact)."""
    perm = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed)).numpy()]
    if labels is not None and n_hold > 0:
        lab = labels[perm]
        rank = np.zeros(len(perm))  # position of each permuted item within its class, as a fraction
        for c in np.unique(lab):
            at = np.flatnonzero(lab == c)
            rank[at] = (np.arange(len(at)) + 0.5) / len(at)
        perm = perm[np.argsort(rank, kind="stable")]
    return np.sort(perm[:n_hold])


@dataclass
class _Listing:
    """A dataset's files before reading: labels (or None), speakers (or None), the official test
    split's indices (or None: drawn by data.test_size) and the folder names are relative to."""

    files: list[Path]
    labels: np.ndarray | None
    class_names: list[str] | None
    speakers: list[str] | None
    test: np.ndarray | None
    folder: Path
    native_rate: int | None = None  # what data.sample_rate=None means (None: the files' own)


def list_fsdd(root: Path | None) -> _Listing:
    """FSDD's recordings, sorted by (digit, speaker, index); the test split is indices 0-4."""
    folder = root / "fsdd" / "recordings" if root is not None else None
    if folder is None or not folder.is_dir():
        raise DataError(f"FSDD recordings not found in {folder or 'any data root (none found)'}; pass "
                        "--data-root DIR (holding fsdd/recordings/) or set GENLAB_DATA")
    found = sorted((int(m[1]), m[2], int(m[3]), f) for f in folder.iterdir() if (m := FSDD_NAME.match(f.name)))
    if not found:
        raise DataError(f"no FSDD recordings ({{digit}}_{{speaker}}_{{index}}.wav) in {folder}; "
                        "pass the --data-root holding the complete fsdd/recordings/")
    return _Listing([f for *_, f in found], np.array([d for d, *_ in found], np.int64),
                    [str(d) for d in range(10)], [s for _, s, _, _ in found],
                    np.flatnonzero([i in FSDD_TEST_INDICES for _, _, i, _ in found]), folder, FSDD_RATE)


def list_audio_folder(path: Path) -> _Listing:
    """Audio files of a folder (sorted; hidden ones skipped, other extensions skipped with a
    warning): sub-folders are classes, sorted by name; a flat folder is unlabelled. A class
    sub-folder without audio files is a DataError naming it (it would still count as a class)."""
    if not path.is_dir():
        raise DataError(f"audio folder {path} not found; set data.path (relative to the data root) to a "
                        "folder of audio files, or of one sub-folder of them per class")
    files, subdirs = list_class_folder(path, AUDIO_EXTENSIONS, "an audio")
    names = [d.name for d in subdirs] or None
    if not files:
        raise DataError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) found in {path}; put recordings "
                        "there, or one sub-folder of them per class")
    if names:  # a class with no recordings would still count in num_classes (and be asked for when sampling)
        have = {i for _, i in files}
        empty = [d for i, d in enumerate(subdirs) if i not in have]
        if empty:
            more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
            raise DataError(f"class folder {empty[0]}{more} holds no audio files ({', '.join(AUDIO_EXTENSIONS)}); "
                            "put its recordings there or remove it")
    labels = np.array([i for _, i in files], np.int64) if names else None
    return _Listing([f for f, _ in files], labels, names, None, None, path)


def load_audio_data(cfg: DataConfig, root: str | os.PathLike | None, *, seed: int = 0) -> AudioData:
    """Read, fit to data.audio_length samples and split the dataset `cfg` describes (fsdd, or
    audio: the folder data.path). `root` as in resolve_data_root. Splits are decided before
    any file is read: FSDD's test split is the official one; a folder's is data.test_size of
    its files; validation is data.val_size of the rest (each a fraction if < 1, else a count),
    stratified by class when labelled and drawn with `seed`."""
    if cfg.dataset not in AUDIO_DATASETS:
        raise ConfigError(f"data.dataset={cfg.dataset} is not an audio dataset; use one of {', '.join(AUDIO_DATASETS)}")
    if cfg.audio_length < 1:
        raise ConfigError(f"data.audio_length must be >= 1 sample, got {cfg.audio_length}")
    if cfg.sample_rate is not None and cfg.sample_rate < 1:
        raise ConfigError(f"data.sample_rate must be a positive rate in Hz, got {cfg.sample_rate}")
    root_path = resolve_data_root(root)
    if cfg.dataset == "fsdd":
        ls = list_fsdd(root_path)
    else:
        if not cfg.path:
            raise DataError("data.dataset=audio needs data.path (a folder of audio files)")
        p = Path(cfg.path)
        if not p.is_absolute() and root_path is not None and ((root_path / p).exists() or not p.exists()):
            p = root_path / p
        ls = list_audio_folder(p)
    n, y = len(ls.files), ls.labels
    everything = np.arange(n)
    test = ls.test
    if test is None:
        k = _count(cfg.test_size, n, "data.test_size", f"files in {ls.folder}")
        test = _hold_out(everything, k, y, derive_seed(seed, "audio", "test"))
    pool = np.setdiff1d(everything, test)
    val = _hold_out(pool, _count(cfg.val_size, len(pool), "data.val_size", "training clips"), y,
                    derive_seed(seed, "audio", "val"))
    train = np.setdiff1d(pool, val)

    x, mask, rate = read_clips(ls.files, cfg.audio_length, cfg.sample_rate or ls.native_rate)
    x = torch.from_numpy(x)[:, None]  # (N, 1, T)
    mask, y = torch.from_numpy(mask), None if y is None else torch.from_numpy(y)
    fields, speakers, files = {}, {}, {}
    for s, idx in (("train", train), ("val", val), ("test", test)):
        i = torch.from_numpy(idx)
        fields |= {f"{s}_x": x[i], f"{s}_y": None if y is None else y[i], f"{s}_mask": mask[i]}
        speakers[s] = None if ls.speakers is None else [ls.speakers[j] for j in idx]
        files[s] = [str(ls.files[j].relative_to(ls.folder)) for j in idx]
    return AudioData(**fields, sample_rate=rate, source=f"{cfg.dataset} ({ls.folder})", dataset=cfg.dataset,
                     class_names=ls.class_names, speakers=speakers, files=files)
