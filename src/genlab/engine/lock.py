"""One process owns a run directory at a time.

`RunLock(run_dir)` takes an exclusive, non-blocking `flock` on the run directory itself (no
lock file: a refused command leaves the folder byte for byte as it was). The kernel drops the
lock when its holder exits for any reason, kill -9 included, so a killed run never leaves a
stale lock; a second `genlab train` on the same folder is refused before it writes anything.
Where flock is not available (Windows, some network file systems) runs are not protected
against a second process, and genlab says so once.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

from genlab.errors import RunInUseError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

log = logging.getLogger("genlab")


class RunLock:
    """Exclusive ownership of a run directory, as a context manager. Folders that the lock
    created and that are still empty on release (the command failed before writing anything)
    are removed again, so a failed start leaves no empty run behind."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self._fd: int | None = None
        self._created: list[Path] = []  # folders mkdir made, deepest first

    def acquire(self) -> "RunLock":
        self._created = [p for p in (self.run_dir, *self.run_dir.parents) if not p.exists()]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            log.warning("no flock on this system: nothing stops a second process from using %s", self.run_dir)
            return self
        fd = os.open(self.run_dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                self._remove_created()
                raise RunInUseError(f"{self.run_dir} is in use by another genlab process; wait for it to "
                                    "finish or choose another --out") from None
            log.warning("cannot lock %s (%s): nothing stops a second process from using it", self.run_dir,
                        e.strerror)
            return self
        self._fd = fd
        return self

    def release(self) -> None:
        self._remove_created()
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def _remove_created(self) -> None:
        for p in self._created:  # deepest first; stops at the first that is not empty
            try:
                p.rmdir()
            except OSError:
                break
        self._created = []

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
