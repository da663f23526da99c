"""train.amp=auto: the per-model precision probe (genlab.engine.device.faster_precision and
Trainer.choose_precision)."""

from __future__ import annotations

import platform
import time

import pytest
import torch

import genlab
from genlab.engine import device as D
from genlab.engine import trainer as T
from tests.conftest import assert_same_tensors, stop_at, weights_of
from tests.test_gan import SMALL as SMALL_GAN


def sleeper(fp32_s: float, bf16_s: float, calls: list):
    def step(dtype):
        calls.append(dtype)
        time.sleep(bf16_s if dtype is torch.bfloat16 else fp32_s)
    return step


def test_bf16_only_when_the_models_own_step_is_clearly_faster():
    calls: list = []
    fast = D.faster_precision(sleeper(0.03, 0.01, calls), "fast-in-bf16")
    assert fast["choice"] == "bf16" and fast["bf16_s"] < fast["fp32_s"]
    assert calls.count(None) == calls.count(torch.bfloat16) == 4  # a warm-up and 3 timings each
    assert D.faster_precision(sleeper(0.01, 0.03, []), "slow-in-bf16")["choice"] == "off"
    assert D.faster_precision(sleeper(0.02, 0.02, []), "even")["choice"] == "off"  # not 10% faster: fp32
    # cached: the same key on the same machine is not timed again, and keeps its answer
    again: list = []
    assert D.faster_precision(sleeper(0.01, 0.03, again), "fast-in-bf16")["choice"] == "bf16" and again == []


@pytest.fixture
def probe(monkeypatch):
    """A CPU where bf16 matmuls are fast, and a precision probe that answers `probe.choice` after
    running the model's step both ways (as the real one does)."""
    class Probe:
        choice = "off"
        steps = 0

        def __call__(self, step, key, reps=3):
            for dtype in (None, torch.bfloat16, None, torch.bfloat16):
                step(dtype)
                self.steps += 1
            return {"choice": self.choice, "fp32_s": 0.002, "bf16_s": 0.001}

    p = Probe()
    monkeypatch.setattr(D, "cpu_bf16_is_fast", lambda: True)
    monkeypatch.setattr(T, "faster_precision", p)
    return p


def test_the_probe_leaves_the_run_as_it_was(tmp_path, data_root, probe):
    """dcgan-mnist (batch norm: the probe's forward passes move its running statistics; dropout-free
    but seeded draws of z): a run that probed and chose fp32 equals a run told train.amp=off."""
    common = dict(overrides=SMALL_GAN + ["train.batch_size=16", "train.steps=6", "train.seed=3"],
                  data_root=str(data_root))
    probed = genlab.train("dcgan-mnist", tmp_path / "probed", **{**common, "overrides": common["overrides"] +
                                                                  ["train.amp=auto"]})
    assert probe.steps == 4 and probed.state.amp == "off"
    plain = genlab.train("dcgan-mnist", tmp_path / "plain", **common)  # SMALL_GAN says train.amp=off
    assert plain.state.amp == "off" and probe.steps == 4  # asked for fp32: no probe
    assert_same_tensors(weights_of(tmp_path / "probed"), weights_of(tmp_path / "plain"), atol=0)


def test_the_choice_is_kept_by_checkpoints_and_resume(tmp_path, data_root, probe):
    from genlab.engine.checkpoint import latest_valid

    probe.choice = "bf16"

    over = SMALL_GAN + ["train.batch_size=16", "train.steps=6", "train.amp=auto", "train.ckpt_every=3"]
    part = genlab.train("dcgan-mnist", tmp_path / "r", overrides=over, data_root=str(data_root),
                        callbacks=[stop_at(3)])
    assert part.state.amp == "bf16" and probe.steps == 4
    assert latest_valid(tmp_path / "r" / "checkpoints").state["state"]["amp"] == "bf16"
    probe.choice = "off"  # a new probe would now say fp32: the resumed run keeps bf16 and does not probe
    resumed = genlab.train(resume=tmp_path / "r")
    assert resumed.finished and resumed.state.amp == "bf16" and probe.steps == 4
    from genlab.evaluation.summary import summary_text

    assert "of training in bf16 autocast" in summary_text(tmp_path / "r")


def test_cpu_model_names_the_generation_behind_a_generic_model_name(tmp_path):
    """A VM's "AMD EPYC" covers Zen 3 (no bf16 instructions) and Zen 4 (avx512_bf16): the family and
    model numbers keep the two apart in reports and in the precision probe's cache key."""
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
                    "model name\t: AMD EPYC\nflags\t\t: fpu avx512_bf16\n\nprocessor\t: 1\ncpu family\t: 25\n")
    assert D.cpu_model(str(info)) == "AMD EPYC (family 25, model 17)"
    other = tmp_path / "cpuinfo-arm"  # no x86 numbers: the name alone
    other.write_text("processor\t: 0\nmodel name\t: Apple M2\n")
    assert D.cpu_model(str(other)) == "Apple M2"
    assert D.cpu_model(str(tmp_path / "missing")) == (platform.processor() or platform.machine())
