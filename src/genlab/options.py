"""Checks of user-given options, shared by the CLI, the Python API and the pipeline, so that
`sample`, `apply`, `evaluate` and `train` refuse the same bad value with the same one-line
ConfigError, before anything is computed or written.

    check_number("--n", n, lo=1, integer=True)
    out = check_output(out, (".png", ".npz"), folder=True)
    check_memory(n * 784, "--n 10000000 images")
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from genlab.errors import ConfigError


def check_number(flag: str, value: float | int | None, *, lo: float | None = None, hi: float | None = None,
                 integer: bool = False, lo_open: bool = False) -> None:
    """Refuse a value outside [lo, hi] (or (lo, hi] with lo_open), a non-finite one, or a
    fractional one where an integer is needed. None (the option not given) passes."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{flag} expects a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{flag} must be a finite number, got {value}")
    if integer and value != int(value):
        raise ConfigError(f"{flag} expects an integer, got {value}")
    below = lo is not None and (value <= lo if lo_open else value < lo)
    if below or (hi is not None and value > hi):
        if lo is not None and hi is not None:
            bound = f"in ({lo}, {hi}]" if lo_open else f"in {lo}..{hi}"
        elif lo is not None:
            bound = f"> {lo}" if lo_open else f">= {lo}"
        else:
            bound = f"<= {hi}"
        raise ConfigError(f"{flag} must be {bound}, got {value}")


def check_output(out: str | os.PathLike, suffixes: tuple[str, ...], *, folder: bool = False,
                 flag: str = "--out") -> Path:
    """Check an output path before any work is done: a known suffix (or, with `folder`, a path
    ending in / or naming an existing folder), no existing file where a folder is meant and no
    folder where a file is meant, and a parent that is (or can become) a folder."""
    s = str(out)
    p = Path(s)
    as_folder = folder and (s.endswith(("/", os.sep)) or p.is_dir())
    kinds = " or ".join([f"FILE{x}" for x in suffixes] + (["DIR/"] if folder else []))
    if as_folder:
        if p.exists() and not p.is_dir():
            raise ConfigError(f"{flag} {s}: a file of that name exists where a folder is meant; "
                              "remove it or choose another name")
    else:
        if p.is_dir():
            raise ConfigError(f"{flag} {s} is a folder; give {kinds}")
        if p.suffix.lower() not in suffixes:
            raise ConfigError(f"{flag} must be {kinds}, got {s!r}")
    _check_parents(p, flag)
    return p


def check_run_dir_path(run_dir: str | os.PathLike) -> Path:
    """A new or existing run directory path: not an existing file, no file among its parents."""
    p = Path(run_dir)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"--out {p} is an existing file; a run directory is a folder: choose another --out")
    _check_parents(p, "--out")
    return p


def _check_parents(p: Path, flag: str) -> None:
    """The nearest existing ancestor of `p` must be a folder (else mkdir would fail later)."""
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{flag} {p}: {parent} is a file, not a folder; choose another path")
            return


def available_memory() -> int | None:
    """Bytes of memory available now without swapping (Linux's MemAvailable, which counts
    reclaimable cache; else free pages), or None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(nbytes: int, what: str, fix: str) -> None:
    """Refuse up front work whose results would not fit in the memory available now."""
    free = available_memory()
    if free is not None and nbytes > free:
        raise ConfigError(f"{what} needs about {nbytes / 2**30:.1f} GiB of memory, "
                          f"{free / 2**30:.1f} GiB is available; {fix}")
