"""Seeding. genlab derives every random stream from (seed, counters), so a run's randomness
at step s does not depend on what happened before s: that is what makes resume exact and lets
a 2-process run reproduce a 1-process run."""

from __future__ import annotations

import hashlib
import os
import random

import numpy as np
import torch


def derive_seed(*parts: int | str) -> int:
    """Mix any number of ints/strings into one 63-bit seed (stable across processes and runs)."""
    h = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def check_seed(seed: int) -> None:
    """A seed torch accepts: an integer of at most 64 bits (negative ones included)."""
    from genlab.options import check_number

    check_number("--seed", seed, lo=-(1 << 63), hi=(1 << 64) - 1, integer=True)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) global generators."""
    check_seed(seed)
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch.Generator seeded with `seed` on `device`."""
    check_seed(seed)
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g
