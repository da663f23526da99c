"""Incremental data: continue a run on a dataset that grew, replaying a share of what it saw.

    genlab train PRESET --init-from OLD_RUN --set data.path=FOLDER train.replay=0.2

Every image run on a folder or array writes `train-hashes.npy` (an 8-byte BLAKE2 digest per
training image), so a later run can tell the images its source trained on from the new ones,
whatever order or split the grown folder now gives. With `train.replay = r`, the new run's
training split becomes every new image plus a fixed random choice of the seen ones, as many as
make them a share r of the whole (all of them when there are fewer), so each batch holds about
r old images; validation and test are the grown data's own splits (a random split of the grown
folder, so they may hold images the old run trained on: compare runs on a fixed test folder). The learning-rate schedule is
the new run's own (warm-up and decay over its steps), started from the old run's weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path

import numpy as np
import torch

from genlab.errors import ConfigError

log = logging.getLogger("genlab")

HASH_FILE = "train-hashes.npy"
GROWABLE = ("folder", "array")  # datasets a user can add files to (mnist and friends are fixed)


def image_hashes(x: torch.Tensor) -> np.ndarray:
    """uint64 digests of each image's bytes (uint8 (N, C, H, W))."""
    rows = x.reshape(len(x), -1).contiguous().numpy()
    return np.array([int.from_bytes(hashlib.blake2b(r.tobytes(), digest_size=8).digest(), "little") for r in rows],
                    dtype=np.uint64)


def write_hashes(run_dir: Path, data, also: str | None = None) -> None:
    """train-hashes.npy (atomic) for a run on growable image data: its training images and,
    for a run that continues run `also`, the images that run saw."""
    import io

    from genlab.engine.checkpoint import atomic_write_bytes

    h = image_hashes(data.train_x)
    if also:
        h = np.union1d(h, seen_hashes(also))
    buf = io.BytesIO()
    np.save(buf, h)
    atomic_write_bytes(Path(run_dir) / HASH_FILE, buf.getvalue())


def seen_hashes(source: str) -> np.ndarray:
    """The digests of the images run `source` trained on: its train-hashes.npy, else (a fixed
    dataset such as MNIST) its recorded data's training split."""
    from genlab import demos
    from genlab.engine.run import load

    f = demos.resolve(source) / HASH_FILE
    if f.is_file():
        return np.load(f, allow_pickle=False)
    return image_hashes(load(source).data().train_x)


CHOICE_FILE = "replay-indices.npy"


def with_replay(data, cfg, run_dir: Path | None = None, write: bool = True):
    """`data` whose training split is the images run cfg.train.init_from did not see, plus a
    replay share cfg.train.replay of those it did (see the module docstring). The choice is kept
    in run_dir/replay-indices.npy, so a resumed run trains on the same images without its source."""
    if not hasattr(data, "train_x") or data.train_x.dtype != torch.uint8:
        raise ConfigError("train.replay is for image data so far; drop it")
    kept = Path(run_dir) / CHOICE_FILE if run_dir is not None else None
    if kept is not None and kept.is_file():
        idx = torch.from_numpy(np.load(kept, allow_pickle=False))
        if len(idx) and int(idx.max()) >= len(data.train_x):
            raise ConfigError(f"{kept} names images this data no longer has (the folder shrank); restore the folder")
    else:
        idx = _choose(data, cfg)
        if kept is not None and write:
            import io

            from genlab.engine.checkpoint import atomic_write_bytes

            buf = io.BytesIO()
            np.save(buf, idx.numpy())
            atomic_write_bytes(kept, buf.getvalue())
    y = data.train_y[idx] if data.train_y is not None else None
    return dataclasses.replace(data, train_x=data.train_x[idx], train_y=y,
                               source=f"{data.source}; {len(idx)} images with replay")


def _choose(data, cfg) -> torch.Tensor:
    """Indices (sorted) of the new images and the replayed share of the seen ones."""
    r, source = cfg.train.replay, cfg.train.init_from
    seen = np.isin(image_hashes(data.train_x), seen_hashes(source))
    new_idx, old_idx = np.flatnonzero(~seen), np.flatnonzero(seen)
    if not len(old_idx):
        raise ConfigError(f"train.replay: none of this data's training images was seen by {source}; replay is for "
                          "data that grew (new files beside the old ones): drop train.replay to fine-tune on it")
    if not len(new_idx):
        raise ConfigError(f"train.replay: every training image was already seen by {source}; nothing new to learn "
                          "(continue that run with `genlab train --resume` instead)")
    want = int(round(r / (1 - r) * len(new_idx)))
    g = torch.Generator().manual_seed(cfg.train.seed)
    keep = old_idx[torch.randperm(len(old_idx), generator=g)[:want].numpy()] if want < len(old_idx) else old_idx
    if want > len(old_idx):
        log.warning("train.replay=%g asks %d old images but %d were seen; replaying all of them", r, want, len(old_idx))
    idx = torch.from_numpy(np.sort(np.concatenate([new_idx, keep])))
    log.info("replay: %d new training images and %d of the %d that %s saw (%.0f%%)", len(new_idx), len(keep),
             len(old_idx), source, 100 * len(keep) / len(idx))
    return idx
