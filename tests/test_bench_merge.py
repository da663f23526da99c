"""benchmarks/_common.merge_parts: how a benchmark process merges its rows into a results file
(new run ids, rows at other settings, a replaced run's rows dropped, uncited runs pruned); the
results lock; the command line recorded beside the results."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import merge_parts, pinned_command, results_lock  # noqa: E402

M = {"cpu_model": "x"}


def test_merge_parts_cites_replaces_and_prunes():
    d = merge_parts({}, {"p": {"train": {"steps": 1}}}, "train p", M, top={"reference": {"n": 5}})
    assert d["presets"] == {"p": {"train": {"run": "1", "value": {"steps": 1}}}}
    assert d["reference"] == {"run": "1", "value": {"n": 5}} and list(d["runs"]) == ["1"]
    d = merge_parts(d, {"p": {"eval": [1]}, "p (temperature 0.9)": {"eval": [2]}}, "eval p", M)
    assert d["presets"]["p"]["eval"]["run"] == "2" and d["presets"]["p"]["train"]["run"] == "1"
    assert d["presets"]["p (temperature 0.9)"] == {"eval": {"run": "2", "value": [2]}}
    # a new training run of p: its old rows (and those at other settings) go; q's stay
    d = merge_parts(d, {"q": {"eval": [3]}}, "eval q", M)
    d = merge_parts(d, {"p": {"train": {"steps": 2}}}, "train p again", M)
    assert set(d["presets"]) == {"p", "q"} and d["presets"]["p"] == {"train": {"run": "4", "value": {"steps": 2}}}
    # runs nobody cites any more are dropped; the reference keeps run 1
    assert sorted(d["runs"], key=int) == ["1", "3", "4"]
    assert d["runs"]["4"] == {"command": "train p again", "machine": M}


def test_results_lock_excludes_another_holder(tmp_path, monkeypatch):
    import fcntl

    import _common

    monkeypatch.setattr(_common, "RUNS", tmp_path / "runs")
    with results_lock("bench"):
        with open(tmp_path / "runs" / ".bench.lock") as other:
            with pytest.raises(BlockingIOError):  # a second holder is refused while it is held
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(tmp_path / "runs" / ".bench.lock") as other:  # released on leaving the block
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_pinned_command_records_threads_and_cores_only_when_in_force(monkeypatch):
    import os

    monkeypatch.setattr(sys, "argv", ["/anywhere/benchmarks/gan_mnist.py", "--set", "a=b c"])
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2, 0}, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert pinned_command() == "OMP_NUM_THREADS=2 taskset -c 0,2 .venv/bin/python benchmarks/gan_mnist.py --set 'a=b c'"
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert pinned_command() == ".venv/bin/python benchmarks/gan_mnist.py --set 'a=b c'"


def test_pixelcnn_results_keep_every_run_but_the_one_a_rerun_replaces():
    from pixelcnn_mnist import merged

    def run(key, seed=0, cpu="x", threads=2):
        return {"key": key, "seed": seed, "machine": {"cpu_model": cpu, "threads": threads}}
    d = merged({}, run("p"))
    d = merged(d, run("p", threads=1))  # other threads, other seed, other recipe: kept beside it
    d = merged(d, run("p", seed=1))
    d = merged(d, run("p + lr"))
    assert list(d["runs"]) == ["1", "2", "3", "4"] and d["grids_run"] == "4"
    d = merged(d, run("p"))  # the same recipe, seed, CPU and threads as run 1: replaces it
    assert list(d["runs"]) == ["2", "3", "4", "5"] and d["runs"]["5"] == run("p") and d["grids_run"] == "5"
