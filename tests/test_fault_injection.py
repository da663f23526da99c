"""kill -9 during training, then resume: a fast run of benchmarks/fault_injection.py (issue 19).

The benchmark itself kills at least 20 times; here three kills (two of them at the moment a
step checkpoint is being written) are enough to check the same invariants: every committed
checkpoint stays readable, `genlab info` opens the run, and the resumed run ends bit-equal to
an uninterrupted one.
"""

from __future__ import annotations

import random
import sys

import pytest
import torch

from genlab.engine import checkpoint as ckpt
from genlab.errors import CheckpointError
from tests.conftest import ROOT, assert_same_tensors, kill_while_saving, weights_of

sys.path.insert(0, str(ROOT / "benchmarks"))
import fault_injection as fi  # noqa: E402


def test_kills_then_resume_equal_to_uninterrupted_and_checkpoints_readable(tmp_path, data_root):
    # 1,200 steps: a step-write kill may wait for 41 checkpoint writes (82 steps) and a timed one
    # for about a start-up time, so the run must not finish before the third kill however fast
    # its steps are beside the start-up (240 steps did on a loaded machine)
    args = fi.training_args(1200)
    startup = fi.run_reference(tmp_path / "ref", args, str(data_root))
    kills = fi.inject_faults(tmp_path / "run", args, str(data_root), ["step-write", "timed", "step-write"],
                             random.Random(0), startup, spread=0.5, steps=1200)
    assert len(kills) == 3 and not any(k.note.startswith("exited") for k in kills), [k.note for k in kills]
    assert any(k.during_write for k in kills), "no kill landed inside a checkpoint write"
    assert all(k.ok for k in kills), [(k.unreadable, k.info_error) for k in kills]
    assert sum(k.verified for k in kills) >= 3
    r = fi.resume_to_end(tmp_path / "run")
    assert r.returncode == 0, r.stderr
    verified, unreadable, info_error = fi.verify_run(tmp_path / "run")
    assert verified >= 2 and not unreadable and info_error is None
    cmp = fi.compare_runs(tmp_path / "ref", tmp_path / "run")
    assert cmp["problems"] == [] and cmp["log_records"] > 40
    assert_same_tensors(weights_of(tmp_path / "ref"), weights_of(tmp_path / "run"), atol=1e-6)


def test_kill_while_best_is_rewritten_leaves_a_readable_best(tmp_path):
    folder = tmp_path / "ck"
    ckpt.save_checkpoint(folder, "best", {"w": torch.ones(3)}, {"state": {"step": 1}})
    # A child rewrites `best` and is SIGKILLed while writing its JSON marker (the 2nd fsync).
    kill_while_saving(folder, "best", '{"w": torch.zeros(3)}', 2, stall_at=2, tmp_glob=".best.json.*.tmp")
    try:
        c = ckpt.read_checkpoint(folder, "best")
    except CheckpointError as e:
        pytest.fail(f"best left unreadable: {e}")
    assert c.state["state"]["step"] in (1, 2)


def test_kill_at_the_final_checkpoint_then_resume_completes_the_run(tmp_path, data_root):
    run = tmp_path / "run"
    kills = fi.inject_faults(run, fi.training_args(40), str(data_root), ["final"], random.Random(0), startup=5.0,
                             spread=0.0, steps=40)
    assert kills[0].ok and not kills[0].note.startswith("exited"), kills[0].note
    assert fi.resume_to_end(run).returncode == 0
    assert (run / "report.json").is_file() and (run / "samples" / "final.png").is_file()
    assert ckpt.latest_valid(run / "checkpoints").state["state"]["stop_reason"] == "steps"
