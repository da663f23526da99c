"""Demo models shipped inside the package: small trained runs that work offline a second after
install, wherever a run directory is accepted, as `demo:NAME`:

    genlab sample demo:cvae-mnist --out s.png
    genlab.load("demo:gpt-shakespeare-cpu").generate("ROMEO:", 200)

Each demo is a run directory (config, data.json, one weights-only checkpoint, the reports of
its training and evaluation) written by `scripts/make_demos.py`, which also records how each
was trained and measured in `README.md` here. Demo folders are read-only: commands that write
into a run (evaluate without --out, audit without --out, train --resume) refuse them.

This module imports nothing heavy: the CLI resolves `demo:` names before torch is loaded.
"""

from __future__ import annotations

import os
from pathlib import Path

from genlab.errors import ConfigError

PREFIX = "demo:"
HERE = Path(__file__).resolve().parent


def names() -> list[str]:
    """The shipped demos, by name."""
    return sorted(p.name for p in HERE.iterdir() if (p / "config.yaml").is_file())


def resolve(run_dir: str | os.PathLike) -> Path:
    """`demo:NAME` -> the demo's folder; any other path unchanged."""
    s = os.fspath(run_dir)
    if not s.startswith(PREFIX):
        return Path(s)
    name = s[len(PREFIX):]
    if name not in names():
        raise ConfigError(f"no demo named {name!r}; shipped demos: {', '.join(names()) or 'none'} "
                          f"(use {PREFIX}NAME)")
    return HERE / name


def is_demo(run_dir: str | os.PathLike) -> bool:
    """True for a shipped demo's folder (given as `demo:NAME` or as its path)."""
    try:
        return resolve(run_dir).resolve().parent == HERE
    except ConfigError:
        return False


def refuse_write(run_dir: str | os.PathLike, what: str) -> None:
    """A one-line error when `what` would write into a demo's folder."""
    if is_demo(run_dir):
        raise ConfigError(f"{os.fspath(run_dir)} is a shipped demo and read-only: {what}")
