"""Progress (genlab.progress): lines on a non-terminal stderr at least every interval and once at
the end, nothing for quick work or when logging is quiet, inner loops moving the job within a
batch; real `genlab sample` and `genlab train` runs; and the labelled rows of `genlab apply`'s
PNG strips."""

import logging
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import genlab
from genlab.progress import Progress, advance, format_seconds, interval_seconds, subpart
from tests.conftest import ROOT, TINY_VAE
from tests.test_diffusion import TINY_DIFFUSION, small_mnist

pytestmark = pytest.mark.usefixtures("one_thread")


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def lines():
    """The messages logger "genlab" emits at INFO (the CLI's level) while the test runs."""
    got: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            got.append(record.getMessage())

    log = logging.getLogger("genlab")
    h, level = Keep(), log.level
    log.addHandler(h)
    log.setLevel(logging.INFO)
    yield got
    log.removeHandler(h)
    log.setLevel(level)


def test_a_line_every_interval_and_one_at_the_end(lines):
    clock = Clock()
    with Progress("sampling", 100, unit="images", interval=5, terminal=False, clock=clock) as p:
        for _ in range(100):
            clock.t += 1
            p.update(1)
    assert len(lines) == 20  # at 5, 10, ..., 95 s, and the final line
    counts = [int(re.match(r"sampling (\d+)/100 images", s).group(1)) for s in lines]
    assert counts == list(range(5, 100, 5)) + [100]
    assert lines[-1] == "sampling 100/100 images (100%), 1 images/s, done in 1 min 40 s"


def test_the_line_says_how_far_how_fast_and_how_long(lines):
    clock = Clock()
    p = Progress("sampling", 10_000, unit="images", interval=5, terminal=False, clock=clock)
    clock.t += 31
    p.set(2400)
    assert lines == ["sampling 2,400/10,000 images (24%), 77.4 images/s, 31 s elapsed, ~1 min 38 s left"]
    assert [format_seconds(s) for s in (0.4, 59, 61, 3725)] == ["0 s", "59 s", "1 min 01 s", "1 h 02 min"]


def test_quick_work_and_quiet_logging_write_nothing(lines):
    clock = Clock()
    with Progress("sampling", 10, interval=5, terminal=False, clock=clock) as p:
        clock.t += 4.9
        p.update(10)
    assert lines == []
    logging.getLogger("genlab").setLevel(logging.WARNING)  # e.g. the CLI's quiet mode
    with Progress("sampling", 10, interval=5, terminal=False, clock=clock) as p:
        clock.t += 60
        p.update(5)
    with Progress("sampling", 10, interval=0, terminal=False, clock=clock) as p:  # 0: progress off
        clock.t += 60
        p.update(5)
    assert lines == []


def test_the_progress_logger_is_silenced_on_its_own(lines):
    clock = Clock()
    logging.getLogger("genlab.progress").setLevel(logging.WARNING)  # as `genlab serve` does
    try:
        with Progress("sampling", 10, interval=5, terminal=False, clock=clock) as p:
            clock.t += 60
            p.update(5)
        logging.getLogger("genlab").info("other news")
    finally:
        logging.getLogger("genlab.progress").setLevel(logging.NOTSET)
    assert lines == ["other news"]
    with Progress("sampling", 10, interval=5, terminal=False, clock=clock) as p:  # back on
        clock.t += 60
        p.update(5)
    assert len(lines) == 3 and lines[1].startswith("sampling 5/10")


def test_the_interval_comes_from_the_environment(monkeypatch):
    for raw, want in (("", 5.0), ("0.2", 0.2), ("0", 0.0), ("-1", 0.0), ("soon", 5.0)):
        monkeypatch.setenv("GENLAB_PROGRESS_SECONDS", raw)
        assert interval_seconds() == want


def test_inner_loops_move_the_job_within_a_part(lines):
    clock = Clock()
    p = Progress("sampling", 1000, unit="images", interval=1, terminal=False, clock=clock)
    advance(1, 2)  # no job part running: nobody hears it
    assert p.n == 0
    with p.part(500, 500):
        clock.t += 2
        advance(1, 4)  # a sampler a quarter through its steps, for the batch of images 500..999
        assert p.n == 625
        with subpart(1, 1, 2):  # the second of two model calls in this part
            advance(1, 2)
            assert p.n == 875
    assert p.n == 1000
    assert lines == ["sampling 625/1,000 images (62%), 312 images/s, 2 s elapsed, ~1 s left"]


def test_a_terminal_gets_a_bar(capsys, lines):
    with Progress("training", 3, unit="steps", interval=5, terminal=True, leave=True) as p:
        p.set_postfix({"loss": "0.5"})
        p.update(3)
    err = capsys.readouterr().err
    assert "training" in err and "3/3" in err
    assert lines == []  # the bar, not log lines


def test_a_model_sample_call_moves_progress_step_by_step(lines):
    """Diffusion sampling ticks once per sampler step: a batch's count rises within the batch."""
    from tests.test_diffusion import _model

    model = _model().eval()
    p = Progress("sampling", 4, unit="images", interval=1e-9, terminal=False)
    with p.part(0, 4):
        model.sample(4, generator=torch.Generator().manual_seed(0), sampler="ddim", steps=8)
    p.close()
    seen = [float(re.match(r"sampling (\d+)/4", s).group(1)) for s in lines]
    assert len(seen) >= 4 and seen == sorted(seen) and seen[-1] == 4


# --------------------------------------------------------------------------- real runs


def _timed_stderr(args: list[str], interval: float) -> tuple[int, list[tuple[float, str]]]:
    """Run `python -m genlab ARGS` with stderr a pipe (not a terminal); its stderr lines with the
    time each arrived."""
    env = {**os.environ, "GENLAB_PROGRESS_SECONDS": str(interval)}
    proc = subprocess.Popen([sys.executable, "-m", "genlab", *args], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
    got = [(time.monotonic(), ln.rstrip("\n")) for ln in proc.stderr]
    return proc.wait(timeout=300), got


def _check_progress(got: list[tuple[float, str]], pattern: str, total: int, interval: float) -> list[str]:
    """The progress lines: counts rising to `total`, "left" estimates, a final "done in" line."""
    prog = [(t, s) for t, s in got if re.match(pattern, s)]
    counts = [int(re.match(pattern, s).group(1).replace(",", "")) for _, s in prog]
    assert len(prog) >= 4, [s for _, s in got]
    # rising (a count may repeat: a line shows whole units of a job that moves by fractions of a batch)
    assert counts == sorted(counts) and len(set(counts)) >= 3 and counts[-1] == total, counts
    assert "done in" in prog[-1][1] and all("left" in s for _, s in prog[:-1])
    # No bound on the gaps between lines: a line can only come at a tick, and on a loaded machine one
    # sampler or training step takes seconds; the interval itself is tested with a fake clock above.
    return [s for _, s in prog]


@pytest.fixture(scope="module")
def diffusion_run(tmp_path_factory, data_root):
    folder = tmp_path_factory.mktemp("progress")
    return genlab.train("ddpm-mnist", folder / "run", steps=2, data_root=str(data_root),
                        overrides=TINY_DIFFUSION + small_mnist(folder, data_root)).run_dir


def test_genlab_sample_writes_progress_to_a_non_terminal_stderr(diffusion_run, tmp_path):
    # 1,000 tiny images at 10 steps: a second even on a fast machine, so many lines at 0.02 s
    rc, got = _timed_stderr(["sample", str(diffusion_run), "--n", "1000", "--sampling-steps", "10",
                             "--out", str(tmp_path / "s.npz")], interval=0.02)
    assert rc == 0, got
    lines = _check_progress(got, r"genlab: sampling ([\d,]+)/1,000 images", 1000, 0.02)
    assert re.search(r"\d+(\.\d+)? images/s", lines[0])
    assert got[-1][1].startswith("genlab: wrote 1000 images")


def test_quiet_flag_keeps_stderr_free_of_progress(diffusion_run, tmp_path):
    rc, got = _timed_stderr(["sample", str(diffusion_run), "-q", "--n", "120", "--sampling-steps", "20",
                             "--out", str(tmp_path / "s.npz")], interval=0.02)
    assert rc == 0 and got == [], got  # the same job writes many lines without -q (test above)
    assert np.load(tmp_path / "s.npz")["images"].shape[0] == 120


def test_genlab_train_writes_progress_to_a_non_terminal_stderr(tmp_path, data_root):
    # 200 tiny steps: a second even on a fast machine, so many lines at 0.02 s
    rc, got = _timed_stderr(["train", "vae-mnist", "--steps", "200", "--out", str(tmp_path / "vae"),
                             "--data-root", str(data_root), "--set", *TINY_VAE], interval=0.02)
    assert rc == 0, got
    lines = _check_progress(got, r"genlab: training ([\d,]+)/200 steps", 200, 0.02)
    assert all(re.search(r"loss [\d.]+, [\d.]+ steps/s", s) for s in lines)


def test_genlab_apply_and_evaluate_write_progress_to_a_non_terminal_stderr(diffusion_run, tmp_path, data_root):
    small_mnist(tmp_path, data_root, n=16)
    np.savez(tmp_path / "x.npz", images=np.load(tmp_path / "mnist16.npz")["images"])
    rc, got = _timed_stderr(["apply", str(diffusion_run), "inpaint", "--input", str(tmp_path / "x.npz"),
                             "--out", str(tmp_path / "y.npz"), "--sampling-steps", "20", "--resample", "2"], interval=0.02)
    assert rc == 0, got
    _check_progress(got, r"genlab: inpainting ([\d,]+)/16 images", 16, 0.02)
    cvae = genlab.train("cvae-mnist", tmp_path / "cvae", overrides=TINY_VAE, steps=2, data_root=str(data_root))
    rc, got = _timed_stderr(["evaluate", str(cvae.run_dir), "--n", "4000", "--metrics", "label_accuracy",
                             "--out", str(tmp_path / "r.json")], interval=0.02)
    assert rc == 0, got
    _check_progress(got, r"genlab: sampling ([\d,]+)/4,000 images", 4000, 0.02)


# --------------------------------------------------------------------------- apply strips


def test_apply_png_strips_label_their_rows(diffusion_run, tmp_path, data_root):
    from PIL import Image

    from genlab.apply import apply
    from genlab.apply.io import label_margin
    from genlab.images import make_grid

    fast = {"sampling_steps": 2}
    png = np.asarray(Image.open(apply(diffusion_run, "interpolate", input=None, out=tmp_path / "s.png",
                                      seeds=[1, 2], steps=5, **fast)))
    m = label_margin(["seeds 1, 2"])
    assert png.shape == (16 + 4, m + 5 * 18 + 2)  # one row of 5 frames, wider by the label column
    assert png[:, :m].max() > 0  # the label's pixels
    z = np.load(apply(diffusion_run, "interpolate", input=None, out=tmp_path / "s.npz", seeds=[1, 2], steps=5, **fast))
    assert z.files == ["images"] and z["images"].shape == (5, 1, 16, 16)  # .npz: as before, no labels
    assert (png[:, m:] == make_grid(torch.from_numpy(z["images"]), nrow=5)[..., 0]).all()

    small_mnist(tmp_path, data_root, n=3)
    x = np.load(tmp_path / "mnist16.npz")["images"]
    np.savez(tmp_path / "x.npz", images=x)
    png = np.asarray(Image.open(apply(diffusion_run, "inpaint", input=tmp_path / "x.npz", out=tmp_path / "i.png",
                                      **fast)))
    out = np.load(apply(diffusion_run, "inpaint", input=tmp_path / "x.npz", out=tmp_path / "i.npz", **fast))
    assert out.files == ["images"] and out["images"].shape == (3, 1, 16, 16)
    m = label_margin(["input", "masked", "output"])
    assert png.shape == (3 * 18 + 2, m + 3 * 18 + 2)  # rows input / masked / output of the 3 images
    for r in range(3):  # each row's label
        assert png[2 + 18 * r:18 * (r + 1), :m].max() > 0
    assert (png[:, m:] == make_grid(torch.from_numpy(np.concatenate([x, x, out["images"]])), nrow=3)[..., 0]
            )[[*range(0, 20), *range(38, 56)]].all()  # the input and output rows (masked: grey holes)
