import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

import genlab
from genlab.engine import checkpoint as ckpt
from genlab.engine.optim import EMA, lr_at
from genlab.errors import CheckpointError, TrainingDiverged
from tests.conftest import ROOT, TINY_VAE, assert_same_tensors, kill_while_saving, run_cli, stop_at, weights_of


def test_ema_warmup_sets_the_window():
    """decay(t) = min(cap, (1 + t) / (warmup + t)): warmup 2 is the running mean of every weight
    seen (the copy at the start included), warmup 10 the default's heavier pull towards recent
    weights, and the cap takes over once it is the smaller."""
    model = torch.nn.Linear(1, 1, bias=False)
    values = [3.0, -1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
    for warmup, cap in ((2.0, 0.999), (10.0, 0.999), (2.0, 0.8)):
        with torch.no_grad():
            model.weight.fill_(values[0])
        ema, want = EMA(model, cap, warmup), values[0]
        for step, v in enumerate(values[1:]):
            with torch.no_grad():
                model.weight.fill_(v)
            ema.update(model, step)
            d = min(cap, (1 + step) / (warmup + step))
            want = d * want + (1 - d) * v
            if warmup == 2 and cap > 0.9:  # the running mean, by hand
                assert want == pytest.approx(sum(values[:step + 2]) / (step + 2))
            assert float(ema.module.weight) == pytest.approx(want, rel=1e-6)
    assert float(ema.module.weight) != pytest.approx(sum(values) / len(values))  # the cap changed it

def test_lr_schedule_warmup_then_cosine():
    lrs = [lr_at(s, 100, 1.0, warmup=10, min_ratio=0.1) for s in range(101)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[100] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # monotone decay after warmup
    assert lr_at(55, 100, 1.0, warmup=10) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway
    # a time budget that is 100% spent anneals fully even at step 20 of 100
    assert lr_at(20, 100, 1.0, time_fraction=1.0) == pytest.approx(0.1)
    assert lr_at(50, 100, 1.0, schedule="constant") == 1.0


def test_resumed_run_equals_uninterrupted(tmp_path, data_root):
    common = dict(overrides=TINY_VAE + ["train.steps=24", "train.ema_decay=0.9"], data_root=str(data_root))
    full = genlab.train("vae-mnist", tmp_path / "full", **common)
    assert full.finished and full.state.step == 24

    part = genlab.train("vae-mnist", tmp_path / "part", callbacks=[stop_at(10)], **common)
    assert not part.finished and part.state.step == 10
    resumed = genlab.train(resume=tmp_path / "part")
    assert resumed.finished and resumed.state.step == 24
    assert_same_tensors(weights_of(tmp_path / "full"), weights_of(tmp_path / "part"), atol=1e-6)


def test_steps_budget_does_not_change_the_lr_schedule(tmp_path, data_root):
    """N steps, then --resume --steps 2N, equals 2N steps: --steps is a budget."""
    common = dict(overrides=TINY_VAE + ["train.steps=40"], data_root=str(data_root))
    genlab.train("vae-mnist", tmp_path / "full", steps=16, **common)
    genlab.train("vae-mnist", tmp_path / "part", steps=8, **common)
    genlab.train(resume=tmp_path / "part", steps=16)
    assert_same_tensors(weights_of(tmp_path / "full"), weights_of(tmp_path / "part"), atol=1e-6)


def test_resume_after_sigkill_equals_uninterrupted(tmp_path, data_root):
    args = ["vae-mnist", "--set", *TINY_VAE, "model.hidden=512", "train.batch_size=128",
            "train.ckpt_every=20", "train.steps=200", "--data-root", str(data_root)]
    r = run_cli("train", *args, "--out", str(tmp_path / "full"))
    assert r.returncode == 0, r.stderr
    proc = subprocess.Popen([sys.executable, "-m", "genlab", "train", *args, "--out", str(tmp_path / "killed")],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 120
    while not list(ck.glob("step-*.json")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps = ckpt.list_steps(ck)
    assert steps and steps[-1] < "step-00000200", "the run should have been killed mid-way"
    r = run_cli("train", "--resume", str(tmp_path / "killed"))
    assert r.returncode == 0, r.stderr
    assert "resuming from step-" in r.stderr
    assert_same_tensors(weights_of(tmp_path / "full"), weights_of(tmp_path / "killed"), atol=1e-6)


def test_kill_during_checkpoint_save_keeps_previous(tmp_path):
    folder = tmp_path / "ck"
    ckpt.save_checkpoint(folder, "step-00000001", {"w": torch.ones(3)}, {"state": {"step": 1}})
    # A child process starts saving step 2 and is SIGKILLed while the data file is half written.
    kill_while_saving(folder, "step-00000002", '{"w": torch.zeros(1000000)}', 2, stall_at=1, tmp_glob=".*.tmp",
                      settle=0.2)
    assert list(folder.glob(".*.tmp")), "the kill should have interrupted a save"
    c = ckpt.latest_valid(folder)
    assert c.name == "step-00000001" and torch.equal(c.tensors["w"], torch.ones(3))
    # a truncated data file behind a complete JSON marker is detected and skipped too
    ckpt.save_checkpoint(folder, "step-00000003", {"w": torch.full((3,), 3.0)}, {"state": {"step": 3}})
    st = ckpt.tensor_file(folder, "step-00000003")
    st.write_bytes(st.read_bytes()[:-5])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        ckpt.read_checkpoint(folder, "step-00000003")
    assert ckpt.latest_valid(folder).name == "step-00000001"
    ckpt.prune(folder, keep=5)
    assert not list(folder.glob(".*.tmp"))


def test_keep_last_prunes_old_checkpoints(tmp_path, data_root):
    genlab.train("vae-mnist", tmp_path / "r", overrides=TINY_VAE + ["train.steps=12", "train.ckpt_every=3",
                                                                   "train.keep_last=2"], data_root=str(data_root))
    assert ckpt.list_steps(tmp_path / "r" / "checkpoints") == ["step-00000009", "step-00000012"]


def test_nan_loss_stops_with_step_and_term_and_keeps_checkpoint(tmp_path, data_root, monkeypatch):
    from genlab.models.vae import VAE

    real_loss = VAE.loss
    calls = {"n": 0}

    def flaky_loss(self, batch, opt="model"):
        out = real_loss(self, batch, opt)
        calls["n"] += 1
        if calls["n"] > 7:
            out["kl"] = out["kl"] * float("nan")
            out["loss"] = out["recon"] + out["kl"]
        return out

    monkeypatch.setattr(VAE, "loss", flaky_loss)
    with pytest.raises(TrainingDiverged, match=r"loss term 'kl' became nan at step 8; the last good "
                                               r"checkpoint is step-00000005"):
        genlab.train("vae-mnist", tmp_path / "r", overrides=TINY_VAE + ["train.steps=20", "train.ckpt_every=5"],
                     data_root=str(data_root))
    c = ckpt.latest_valid(tmp_path / "r" / "checkpoints")
    assert c.name == "step-00000005"
    assert all(torch.isfinite(t).all() for t in c.tensors.values())


def test_nan_guard_from_the_cli(tmp_path, data_root):
    r = run_cli("train", "vae-mnist", "--set", *TINY_VAE, "train.lr=1e30", "train.grad_clip=null",
                "train.steps=50", "--out", str(tmp_path / "r"), "--data-root", str(data_root))
    assert r.returncode == 3
    assert r.stderr.strip().splitlines()[-1].startswith("genlab: error: loss term '")
    assert "Traceback" not in r.stderr


def test_sampling_is_reproducible_from_a_seed(tmp_path, data_root):
    res = genlab.train("cvae-mnist", tmp_path / "r", overrides=TINY_VAE + ["train.steps=5"],
                       data_root=str(data_root))
    run = genlab.load(res.run_dir)
    a, la = run.sample(20, seed=7)
    b, lb = run.sample(20, seed=7)
    c, _ = run.sample(20, seed=8)
    assert a.shape == (20, 1, 28, 28) and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.bincount(la).tolist() == [2] * 10 and torch.equal(la, lb)
    x3, l3 = run.sample(6, seed=0, label=3)
    assert l3.tolist() == [3] * 6


def test_two_process_torchrun_matches_one_process(tmp_path, data_root):
    """2 processes x batch 16 == 1 process x 2 accumulated micro-batches of 16 (global batch 32)."""
    common = ["vae-mnist", "--data-root", str(data_root), "--set", *TINY_VAE, "train.steps=6",
              "train.batch_size=32"]
    r1 = run_cli("train", *common, "--set", "train.accum=2", "--out", str(tmp_path / "one"))
    assert r1.returncode == 0, r1.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r2 = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                         "--master_port=29533", "-m", "genlab", "train", *common, "--out", str(tmp_path / "two")],
                        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert r2.returncode == 0, r2.stderr[-3000:]
    manifest = (tmp_path / "two" / "manifest.json").read_text()
    assert '"world_size": 2' in manifest
    assert_same_tensors(weights_of(tmp_path / "one"), weights_of(tmp_path / "two"), atol=1e-5)
    # rank 0 alone logged: one record per logged step
    steps = [ln for ln in (tmp_path / "two" / "logs" / "train.jsonl").read_text().splitlines() if '"train"' in ln]
    assert len(steps) == 1


def test_two_node_torchrun_matches_one_process(tmp_path, data_root):
    """Two "nodes" on loopback (torchrun --nnodes=2, c10d rendezvous, one process each) compute
    what one process with 2 accumulated micro-batches does: the README's two-machine recipe."""
    common = ["vae-mnist", "--data-root", str(data_root), "--set", *TINY_VAE, "train.steps=4",
              "train.batch_size=32"]
    r1 = run_cli("train", *common, "--set", "train.accum=2", "--out", str(tmp_path / "one"))
    assert r1.returncode == 0, r1.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                               f"--node_rank={rank}", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}",
                               "--rdzv_id=genlab-test", "-m", "genlab", "train", *common,
                               "--out", str(tmp_path / "two")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
             for rank in (0, 1)]
    try:
        errs = [p.communicate(timeout=300)[1] for p in nodes]
    finally:
        for p in nodes:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in nodes] == [0, 0], errs[0][-2000:] + errs[1][-2000:]
    assert '"world_size": 2' in (tmp_path / "two" / "manifest.json").read_text()
    assert_same_tensors(weights_of(tmp_path / "one"), weights_of(tmp_path / "two"), atol=1e-5)


def test_sigterm_checkpoints_and_exits_130(tmp_path, data_root):
    run = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-m", "genlab", "train", "vae-mnist", "--data-root", str(data_root),
                             "--out", str(run), "--set", *TINY_VAE, "train.steps=1000000"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = run / "logs" / "train.jsonl"
    deadline = time.time() + 120
    while not log.exists() and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted at step" in err and f"--resume {run}" in err
    c = ckpt.latest_valid(run / "checkpoints")
    assert c is not None and 5 <= c.state["state"]["step"] < 1000000


def test_early_stopping_keeps_best(tmp_path, data_root, monkeypatch):
    from genlab.engine.trainer import Trainer

    vals = iter([5.0, 4.0, 4.5, 4.2, 4.1, 3.0])
    monkeypatch.setattr(Trainer, "evaluate", lambda self, split="val", max_batches=None: {"loss": next(vals)})
    res = genlab.train("vae-mnist", tmp_path / "r", overrides=TINY_VAE + ["train.steps=100", "train.eval_every=2",
                                                                         "train.early_stop_patience=3"],
                       data_root=str(data_root))
    # evals at steps 2, 4 (best), 6, 8, 10: three without improvement -> stop at step 10
    assert res.state.stop_reason == "early_stop" and res.state.step == 10
    assert res.state.best_step == 4 and res.state.best_val == 4.0
    best = ckpt.read_checkpoint(tmp_path / "r" / "checkpoints", "best")
    assert best.state["state"]["step"] == 4
