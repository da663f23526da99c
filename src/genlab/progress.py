"""Progress of long work (training, sampling, evaluation, apply) on stderr: the one mechanism.

On a terminal, a tqdm bar. Anywhere else (a log file, CI, a pipe) a bar redraws into one long
line nobody sees, so progress is a plain line through the "genlab" logger instead,

    genlab: sampling 2,400/10,000 images (24%), 77.4 images/s, 31 s elapsed, ~98 s left

every `GENLAB_PROGRESS_SECONDS` (default 5; 0 turns progress off) and once at the end; work
that ends within one interval writes nothing. Both forms appear only when logger
"genlab.progress" is enabled for INFO: the CLI sets up "genlab" (its -q raises the level;
`genlab serve` silences "genlab.progress" alone); a library user calling
`genlab.load(...).sample(...)` sees progress once they configure logging.

Inner loops that do not know the whole job (a diffusion sampler's steps, WaveNet's time steps,
PixelCNN's rows, a text model's tokens) call `advance(done, total)` to say how much of the
current call is done; the caller that knows the job says which share of its count that call is
with `Progress.part(start, size)`. A context variable joins the two, so the model contract stays
`sample(n, *, generator)` and a loop run outside any job reports to nobody.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

log = logging.getLogger("genlab.progress")  # its lines go to the "genlab" handlers; silenced on its own

DEFAULT_SECONDS = 5.0
ENV = "GENLAB_PROGRESS_SECONDS"

# (the job, its count where the current call starts, the count the whole call is worth)
_part: ContextVar[tuple[Progress, float, float] | None] = ContextVar("genlab_progress_part", default=None)


def interval_seconds() -> float:
    """Seconds between progress lines: $GENLAB_PROGRESS_SECONDS, default 5; 0 (or less) is off."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return DEFAULT_SECONDS
    try:
        v = float(raw)
    except ValueError:
        log.warning("%s=%r is not a number of seconds; using %g", ENV, raw, DEFAULT_SECONDS)
        return DEFAULT_SECONDS
    return v if math.isfinite(v) and v > 0 else 0.0


def _stderr_is_terminal() -> bool:
    try:
        return bool(sys.stderr and sys.stderr.isatty())
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


def format_seconds(s: float) -> str:
    """31 s, 4 min 05 s, 2 h 07 min."""
    s = max(0, round(s))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class Progress:
    """Progress of one job of `total` units (None: unknown), shown as described in the module notes.

    Args:
        desc: what is being done, e.g. "sampling", "training".
        total: units of the whole job, or None.
        unit: what is counted, plural ("images", "steps"); "" for none.
        initial: units already done (a resumed training run).
        interval: seconds between lines; None: `interval_seconds()`. 0 shows nothing.
        terminal: draw a bar (True) or write lines (False); None: whether stderr is a terminal.
        leave: keep the bar on screen when the job ends.
        clock: seconds, monotonic (injectable for tests).
    """

    def __init__(self, desc: str, total: float | None, *, unit: str = "", initial: float = 0,
                 interval: float | None = None, terminal: bool | None = None, leave: bool = False,
                 clock: Callable[[], float] = time.monotonic):
        self.desc, self.total, self.unit = desc, total, unit
        self.n = self._n0 = initial
        self.interval = interval_seconds() if interval is None else max(0.0, interval)
        self.postfix: dict[str, str] = {}
        self._clock = clock
        self._t0 = self._last = clock()
        self._bar = None
        self._lines = False
        self.lines_written = 0
        if self.interval <= 0 or not log.isEnabledFor(logging.INFO):
            return
        if _stderr_is_terminal() if terminal is None else terminal:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=int(initial), desc=desc, unit=unit.rstrip("s") or "it",
                             file=sys.stderr, dynamic_ncols=True, mininterval=0.5, leave=leave)
        else:
            self._lines = True

    @property
    def shown(self) -> bool:
        """Whether this job's progress appears at all (a bar or lines)."""
        return self._bar is not None or self._lines

    def update(self, k: float = 1) -> None:
        """k more units done."""
        self.set(self.n + k)

    def set(self, n: float) -> None:
        """n units done in all (fractions allowed: part of a batch)."""
        self.n = n
        if self._bar is not None:
            if int(n) != self._bar.n:
                self._bar.update(int(n) - self._bar.n)
        elif self._lines and (not self.total or n < self.total):  # the end is close()'s line
            now = self._clock()
            if now - self._last >= self.interval:
                self._write(now)

    def set_postfix(self, values: dict[str, str]) -> None:
        """Values shown after the count (e.g. {"loss": "0.123"}); they replace the previous ones."""
        self.postfix = dict(values)
        if self._bar is not None:
            self._bar.set_postfix(self.postfix, refresh=False)

    def line(self, now: float | None = None, done: bool = False) -> str:
        """The progress line: what, how far, the postfix, rate, time spent and time left (`done`:
        the time it took)."""
        elapsed = (self._clock() if now is None else now) - self._t0
        unit = f" {self.unit}" if self.unit else ""
        parts = [f"{self.desc} {int(self.n):,}" + (f"/{int(self.total):,}{unit}" if self.total else unit)
                 + (f" ({100 * self.n / self.total:.0f}%)" if self.total else "")]
        parts += [f"{k} {v}" for k, v in self.postfix.items()]
        rate = (self.n - self._n0) / elapsed if elapsed > 0 else 0.0
        if rate > 0:
            parts.append(f"{rate:.3g} {self.unit or 'it'}/s")
        if done:
            parts.append(f"done in {format_seconds(elapsed)}")
            return ", ".join(parts)
        parts.append(f"{format_seconds(elapsed)} elapsed")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"~{format_seconds((self.total - self.n) / rate)} left")
        return ", ".join(parts)

    def _write(self, now: float, done: bool = False) -> None:
        log.info("%s", self.line(now, done))
        self._last = now
        self.lines_written += 1

    def close(self) -> None:
        """End the job: the bar is closed; a final line is written if the job took at least one
        interval."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._lines:
            self._lines = False
            now = self._clock()
            if now - self._t0 >= self.interval:
                self._write(now, done=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def part(self, start: float, size: float) -> Iterator[Progress]:
        """While inside, `advance(done, total)` from inner loops sets this job to
        start + size * done / total; on leaving, the job is at start + size."""
        token = _part.set((self, start, size))
        try:
            yield self
        finally:
            _part.reset(token)
        self.set(start + size)


def advance(done: float, total: float) -> None:
    """An inner loop has done `done` of its `total` iterations: moves the job whose `part` is
    running (nothing when none is)."""
    p = _part.get()
    if p is not None and total > 0:
        job, start, size = p
        job.set(start + size * min(done, total) / total)


@contextmanager
def subpart(start: float, size: float, of: float) -> Iterator[None]:
    """Inside a `part`, narrow it to the fraction [start, start + size) / `of` of the current
    call (e.g. one of several model calls an apply task makes per batch); a no-op outside."""
    p = _part.get()
    if p is None or of <= 0:
        yield
        return
    job, s0, sz = p
    with job.part(s0 + sz * start / of, sz * size / of):
        yield
