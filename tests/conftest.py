"""Shared fixtures: the real data root (../shared/data), tiny configs, CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genlab.data.datasets import resolve_data_root

ROOT = Path(__file__).resolve().parents[1]
DATA = resolve_data_root()

# The cores are shared among pytest-xdist workers (`-n 2`): each worker and the CLI processes it
# starts get their share of threads, so that no core runs two busy threads that wait on each other.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
THREADS = max(1, min(2, CORES // WORKERS))
if WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(THREADS)

# A small MLP VAE on real MNIST: fast enough for tens of steps per test.
TINY_VAE = ["train.test_batches=2", "model.hidden=64", "model.latent_dim=8", "train.batch_size=32", "train.amp=off",
            "train.log_every=5", "train.eval_every=1000", "train.sample_every=1000", "train.ckpt_every=1000",
            "train.eval_batches=2", "train.warmup_steps=3"]


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """genlab's cache in the session's tmp folder, never the user's: session-scoped, so that
    module-scoped fixtures (set up before any function-scoped one) see it too."""
    mp = pytest.MonkeyPatch()
    mp.setenv("GENLAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(THREADS)


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread (no fork/join per op) and do not suffer when other
    work holds the second core. Modules opt in with pytestmark = usefixtures("one_thread")."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def data_root() -> Path:
    if DATA is None or not (DATA / "MNIST" / "raw").is_dir():
        pytest.fail("../shared/data with MNIST is required beside the project (or set GENLAB_DATA)")
    return DATA


def shakespeare_corpus(folder: Path, chars: int = 5_000) -> Path:
    """The first `chars` characters of tiny Shakespeare as folder/corpus.txt, for tiny text runs."""
    corpus = Path(folder) / "corpus.txt"
    corpus.write_text((DATA / "shakespeare" / "input.txt").read_text(encoding="utf-8")[:chars], encoding="utf-8")
    return corpus


def run_cli(*args: str, env: dict | None = None, timeout: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python -m genlab ARGS` and capture its output."""
    e = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "genlab", *args], capture_output=True, text=True,
                          timeout=timeout, env=e, cwd=cwd or ROOT)


def main_fails_in_one_line(capsys, args: list[str], *fragments: str) -> None:
    """`genlab ARGS` (in process) exits non-zero with a last stderr line `genlab: error: ...`
    holding every fragment."""
    from genlab.cli import main

    assert main(args) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("genlab: error: "), err
    for f in fragments:
        assert f in err[-1], err[-1]


def weights_of(run_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors (model, EMA, optimiser) of a run's newest checkpoint."""
    from genlab.engine.checkpoint import latest_valid

    c = latest_valid(Path(run_dir) / "checkpoints")
    assert c is not None, f"no checkpoint in {run_dir}"
    return c.tensors


def stop_at(step: int):
    """A training callback that asks the trainer to stop (as SIGTERM would) once it reaches `step`."""
    def callback(tr) -> None:
        if tr.state.step == step:
            tr.request_stop()
    return callback


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        diff = (a[k].double() - b[k].double()).abs().max().item() if a[k].numel() else 0.0
        assert diff <= atol, f"{k} differs by {diff}"


def kill_while_saving(folder: Path, name: str, tensors: str, step: int, *, stall_at: int, tmp_glob: str,
                      settle: float = 0.0) -> None:
    """A child process saves checkpoint `name` of `folder` (tensors: a Python expression such as
    '{"w": torch.zeros(3)}') with its fsync call number `stall_at` hanging, and is SIGKILLed once
    a temp file matching `tmp_glob` appears (after `settle` more seconds): a kill inside the write."""
    import signal
    import time

    code = f"""
import os, time, torch
from pathlib import Path
from genlab.engine import checkpoint as ckpt
fsync, calls = os.fsync, []
def stalling_fsync(fd):
    calls.append(fd)
    if len(calls) == {stall_at}:
        time.sleep(60)
    fsync(fd)
os.fsync = stalling_fsync
ckpt.save_checkpoint(Path({str(folder)!r}), {name!r}, {tensors}, {{"state": {{"step": {step}}}}})
"""
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 60
    while not list(folder.glob(tmp_glob)) and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(settle)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
