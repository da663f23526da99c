"""One process owns a run directory at a time.

`RunLock(run_dir)` takes an exclusive, non-blocking `flock` on the run directory itself (no
lock file: a refused command leaves the folder byte for byte as it was). The kernel drops the
lock when its holder exits for any reason, kill -9 included, so a killed run never leaves a
stale lock; a second `genlab train` on the same folder is refused before it writes anything.
"""

from __future__ import annotations

import os
from pathlib import Path

from genlab.errors import GenlabError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there are not protected against a second process
    fcntl = None


class RunInUseError(GenlabError):
    """Another process holds the run directory."""


class RunLock:
    """Exclusive ownership of a run directory, as a context manager. A folder that the lock
    created and that is still empty on release (the run failed before writing anything) is
    removed again, so a failed start leaves no empty run behind."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self._fd: int | None = None
        self._created = False

    def acquire(self) -> "RunLock":
        self._created = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.run_dir, os.O_RDONLY)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise RunInUseError(f"{self.run_dir} is in use by another genlab process; wait for it to "
                                    "finish or choose another --out") from None
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        if self._created and not any(self.run_dir.iterdir()):
            try:
                self.run_dir.rmdir()
            except OSError:
                pass
        os.close(self._fd)  # closing the descriptor releases the flock
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
