"""Hostile input across every command: each bad input ends in a non-zero exit, one line on
stderr naming the problem (no traceback), and every run folder byte for byte as it was.
Plus the concurrency, fallback and interruption cases that need more than one call."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import genlab
from genlab.cli import main
from genlab.engine.checkpoint import tensor_file
from genlab.engine.lock import RunLock
from tests.conftest import ROOT, TINY_VAE, run_cli
from tests.tiny_runs import train_tiny_runs

pytestmark = pytest.mark.usefixtures("one_thread")


def folder_hash(folder: Path) -> str:
    """sha256 over every file's relative path and bytes."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_root):
    """One tiny finished run per family, and a few input files."""
    base = tmp_path_factory.mktemp("hostile")
    r = {"base": base, **train_tiny_runs(base, data_root)}
    rng = np.random.default_rng(0)
    np.savez(base / "x16.npz", images=rng.integers(0, 256, (2, 1, 16, 16), dtype=np.uint8))
    np.savez(base / "x28.npz", images=rng.integers(0, 256, (2, 1, 28, 28), dtype=np.uint8))
    np.savez(base / "badlabels.npz", images=rng.integers(0, 256, (2, 1, 28, 28), dtype=np.uint8), labels=[3, 42])
    np.savez(base / "flatlabels.npz", images=rng.integers(0, 256, (2, 1, 28, 28), dtype=np.uint8),
             labels=[[1.5], [2.0]])
    (base / "notzip.npz").write_bytes(b"this is not an npz")
    (base / "afile").write_text("x")
    (base / "dir.png").mkdir()
    (base / "empty-root").mkdir()
    (base / "bad-pipeline.yaml").write_text("target: test_neg_elbo <= 105\ncandidates:\n  - config: vae-mnist\n"
                                           "  - config: vae-mnsit\nbudget: {steps: 100}\n")
    (base / "binary.yaml").write_bytes(bytes(range(256)))
    (base / "damaged").mkdir()
    (base / "damaged" / "config.yaml").write_bytes(bytes(range(256)))
    return r


# (argv with {cvae} {ddpm} {gpt} {graph} {base} placeholders, a fragment the error line must hold)
CASES = [
    # train
    ("train vae-mnst", "unknown preset 'vae-mnst'"),
    ("train vae-mnist --set train.lrr=1", "did you mean: lr"),
    ("train vae-mnist --set train.batch_size=abc --out {base}/new", "train.batch_size expects an integer"),
    ("train vae-mnist --set train.log_every=0 --out {base}/new", "log_every"),
    ("train vae-mnist --set data.channels=2 --out {base}/new", "data.channels"),
    ("train vae-mnist --steps -5 --out {base}/new", "--steps must be >= 1"),
    ("train vae-mnist --steps 0 --out {base}/new", "--steps must be >= 1"),
    ("train vae-mnist --minutes 0 --out {base}/new", "--minutes must be > 0"),
    ("train vae-mnist --minutes -1 --out {base}/new", "--minutes must be > 0"),
    ("train vae-mnist --minutes nan --out {base}/new", "--minutes must be a finite number"),
    ("train vae-mnist --threads -2 --out {base}/new", "--threads must be >= 1"),
    ("train vae-mnist --steps x", "invalid int value"),
    ("train vae-mnist --device tpu", "invalid choice"),
    ("train vae-mnist --out {base}/afile", "is an existing file"),
    ("train vae-mnist --out {base}/afile/run", "is a file, not a folder"),
    ("train cvae-mnist --out {cvae}", "already holds a run"),
    ("train vae-mnist --set data.dataset=fashion-mnist --data-root {base}/empty-root --out {base}/new/a/run",
     "fashion-mnist train files not found"),
    ("train", "give a preset"),
    ("train vae-mnist --data-root {base}/nothing --out {base}/new", "--data-root"),
    ("train vae-mnist --seed 99999999999999999999999 --out {base}/new", "--seed must be in"),
    ("train {base}/missing.yaml", "not found"),
    ("train --resume {cvae} --steps -5", "--steps must be >= 1"),
    ("train --resume {cvae} --minutes 0", "--minutes must be > 0"),
    ("train --resume {cvae} --set train.lr=1", "--set cannot change a run being resumed"),
    ("train --resume {base}/nothing", "not found"),
    # sample
    ("sample {base}/nothing", "not found"),
    ("sample {base}/afile", "not found"),
    ("sample {cvae} --n 0", "--n must be >= 1"),
    ("sample {cvae} --n -3", "--n must be >= 1"),
    ("sample {cvae} --n 100000000000 --out {base}/big.npz", "GiB of memory"),
    ("sample {cvae} --interpolate --frames 0", "--frames must be >= 2"),
    ("sample {cvae} --label 12", "--label must be in 0..9"),
    ("sample {cvae} --seed 99999999999999999999999", "--seed must be in"),
    ("sample {cvae} --n 70000", "a PNG grid holds at most 65,536 images"),
    ("sample {cvae} --out {base}/x.jpg", "--out must be"),
    ("sample {cvae} --out {base}/afile/", "a file of that name exists"),
    ("sample {cvae} --out {base}/afile/x.png", "is a file, not a folder"),
    ("sample {cvae} --checkpoint ../../etc/passwd", "--checkpoint must be last, best, step-"),
    ("sample {cvae} --checkpoint step-00000099", "has no checkpoint 'step-00000099'"),
    ("sample {cvae} --sampling-steps 5", "diffusion options"),
    ("sample {cvae} --prompt hi", "--prompt is for text runs"),
    ("sample {ddpm} --guidance 3", "--guidance needs a class-conditional"),
    ("sample {ddpm} --sampling-steps 0", "--sampling-steps must be in 1..50"),
    ("sample {ddpm} --sampling-steps 100000", "--sampling-steps must be in 1..50"),
    ("sample {ddpm} --eta -1", "--eta must be >= 0"),
    ("sample {ddpm} --sampler foo", "invalid choice"),
    ("sample {gpt} --out {base}/t.png", "--out must be FILE.txt"),
    ("sample {gpt} --temperature -1", "--temperature must be >= 0"),
    ("sample {gpt} --top-p 0", "--top-p must be in (0, 1]"),
    ("sample {gpt} --max-tokens -1", "--max-tokens must be >= 0"),
    ("sample {gpt} --prompt Ωmega", "vocabulary"),
    ("sample {graph} --out {base}/g.png", "--out must be FILE.npz or DIR/"),
    ("sample {graph} --label 1", "image options"),
    # apply
    ("apply {ddpm} inpaint --input {base}/missing.npz --out {base}/y.npz", "not found"),
    ("apply {ddpm} inpaint --input {base}/notzip.npz --out {base}/y.npz", "cannot read"),
    ("apply {ddpm} inpaint --input {base}/x28.npz --out {base}/y.npz", "must be 16x16 images"),
    ("apply {ddpm} inpaint --input {base}/x16.npz --out {base}/y.jpg", "--out must be"),
    ("apply {ddpm} inpaint --input {base}/x16.npz --out {base}/dir.png", "is a folder"),
    ("apply {ddpm} inpaint --input {base}/x16.npz --out {base}/y.npz --mask bogus", "--mask must be"),
    ("apply {ddpm} inpaint --input {base}/x16.npz --out {base}/y.npz --sampling-steps 0", "--sampling-steps must be"),
    ("apply {ddpm} inpaint --input {base}/x16.npz --out {base}/y.npz --guidance 2", "--guidance needs a class-"),
    ("apply {ddpm} inpaint --input {base}/x16.npz --out {base}/y.npz --zeta nan", "--zeta must be a finite"),
    ("apply {ddpm} inpaint --input {base}/x16.npz --out {base}/y.npz --average 0", "--average must be >= 1"),
    ("apply {ddpm} denoise --input {base}/x16.npz --out {base}/y.npz", "--sigma must be > 0"),
    ("apply {ddpm} denoise --input {base}/x16.npz --out {base}/y.npz --sigma -1", "--sigma must be > 0"),
    ("apply {ddpm} interpolate --seeds 1 2 --frames 1 --out {base}/y.png", "--frames must be >= 2"),
    ("apply {ddpm} upscale --input {base}/x16.npz --out {base}/y.npz", "must be 8x8 images"),
    ("apply {cvae} inpaint --input {base}/x28.npz --out {base}/y.npz --iters 0", "--iters must be >= 1"),
    ("apply {cvae} inpaint --input {base}/badlabels.npz --out {base}/y.npz", "must be classes in 0..9"),
    ("apply {cvae} inpaint --input {base}/flatlabels.npz --out {base}/y.npz", "'labels' must be integers"),
    ("apply {cvae} denoise --input {base}/x28.npz --out {base}/y.npz --sigma 0.1", "denoise works with"),
    ("apply {gpt} inpaint --input {base}/x16.npz --out {base}/y.npz", "inpaint works with"),
    # evaluate, info, compare, pipeline
    ("evaluate {cvae} --n 1", "--n must be >= 2"),
    ("evaluate {cvae} --iw-k 0", "--iw-k must be >= 1"),
    ("evaluate {cvae} --out {base}/r.txt", "--out must be FILE.json"),
    ("evaluate {cvae} --metrics bogus", "bogus"),
    ("evaluate {cvae} --extractor bogus", "bogus"),
    ("evaluate {cvae} --data-root {base}/empty-root", "mnist train files not found"),
    ("info {base}/nothing", "not found"),
    ("compare {base}/nothing", "not a genlab run directory"),
    ("pipeline {base}/missing.yaml", "not found"),
    ("pipeline {base}/bad-pipeline.yaml", "candidate 2 (vae-mnsit)"),
    ("pipeline {base}/bad-pipeline.yaml --dry-run", "candidate 2 (vae-mnsit)"),
    ("train {base}/binary.yaml", "not a UTF-8 text file"),
    ("sample {base}/damaged", "the run directory is damaged"),
    ("info {base}/damaged", "the run directory is damaged"),
]


def _call(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse
        return e.code


@pytest.mark.parametrize("line, fragment", CASES,
                         ids=[c[0].split(" --")[0][:40] + f"-{i}" for i, c in enumerate(CASES)])
def test_bad_input_is_one_line_and_changes_nothing(runs, line, fragment, capsys):
    subs = {k: str(v) for k, v in runs.items()}
    argv = [a.format(**subs) for a in line.split(" ")]
    folders = [runs[k] for k in ("cvae", "ddpm", "gpt", "graph")]
    before = [folder_hash(f) for f in folders]
    listing = sorted(p.name for p in runs["base"].iterdir())
    rc = _call(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc not in (0, None), f"exit {rc}; stderr: {err}"
    assert len(lines) == 1 and lines[0].startswith("genlab: error: "), err
    assert "Traceback" not in err
    assert fragment in lines[0], lines[0]
    assert [folder_hash(f) for f in folders] == before, "a run folder changed"
    assert sorted(p.name for p in runs["base"].iterdir()) == listing, "something was written beside the runs"


def test_at_least_forty_cases():
    assert len(CASES) >= 40


def test_one_line_errors_from_the_real_entry_point(runs):
    """The same rule through `python -m genlab` (argparse's usage block included)."""
    for args in (["sample", str(runs["cvae"]), "--n", "0"], ["train", "vae-mnist", "--steps", "x"], ["nope"]):
        r = run_cli(*args)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("genlab: error: "), r.stderr


# --------------------------------------------------------------------------- one owner per run


def test_second_trainer_on_the_same_folder_is_refused(tmp_path, data_root, capsys):
    run = tmp_path / "run"
    with RunLock(run):  # another process would hold it the same way (flock is per open file)
        assert _call(["train", "vae-mnist", "--steps", "2", "--out", str(run), "--data-root", str(data_root),
                      "--set", *TINY_VAE]) == 2
        assert "in use by another genlab process" in capsys.readouterr().err
        assert list(run.iterdir()) == []
    assert not run.exists()  # the lock's own empty folder is gone again
    assert _call(["train", "vae-mnist", "--steps", "2", "--out", str(run), "--data-root", str(data_root),
                  "--set", *TINY_VAE]) == 0
    before = folder_hash(run)
    with RunLock(run):
        assert _call(["train", "--resume", str(run), "--steps", "4"]) == 2
        assert "in use by another genlab process" in capsys.readouterr().err
        assert _call(["evaluate", str(run), "--n", "20"]) == 2  # its report goes into the folder
        assert "in use by another genlab process" in capsys.readouterr().err
    assert folder_hash(run) == before


def test_a_killed_trainer_releases_its_folder(tmp_path, data_root):
    """flock dies with its holder: after kill -9 the run resumes at once."""
    run = tmp_path / "run"
    args = [sys.executable, "-m", "genlab", "train", "vae-mnist", "--steps", "100000", "--out", str(run),
            "--data-root", str(data_root), "--threads", "1", "--set", *TINY_VAE]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (run / "config.yaml").exists() and time.time() < deadline:
            time.sleep(0.2)
        r = run_cli("train", "vae-mnist", "--steps", "2", "--out", str(run), "--data-root", str(data_root))
        assert r.returncode == 2 and "in use by another genlab process" in r.stderr, r.stderr
        with pytest.raises(genlab.errors.GenlabError, match="in use"):
            RunLock(run).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    RunLock(run).acquire().release()


# --------------------------------------------------------------------------- checkpoints, text, data


def test_sample_falls_back_to_the_newest_good_checkpoint(tmp_path, data_root, capsys):
    run = tmp_path / "run"
    genlab.train("vae-mnist", run, overrides=TINY_VAE + ["train.ckpt_every=2", "train.keep_last=3"], steps=4,
                 data_root=str(data_root))
    st = tensor_file(run / "checkpoints", "step-00000004")
    st.write_bytes(st.read_bytes()[:100])
    assert _call(["sample", str(run), "--n", "4", "--out", str(tmp_path / "s.npz")]) == 0
    err = capsys.readouterr().err
    assert "using step-00000002 (step 2)" in err
    assert genlab.load(run).step == 2
    # resume agrees: it continues from the same step
    assert genlab.train(resume=run).state.step == 4


def test_interrupted_text_generation_keeps_what_was_generated(runs, tmp_path, monkeypatch, capsys):
    from genlab.engine import run as run_mod

    real = run_mod.Run.generate

    def generate_then_interrupt(self, *a, **k):
        for i, piece in enumerate(real(self, *a, **k)):
            if i == 5:
                raise KeyboardInterrupt
            yield piece

    monkeypatch.setattr(run_mod.Run, "generate", generate_then_interrupt)
    out = tmp_path / "t.txt"
    assert main(["sample", str(runs["gpt"]), "--prompt", "AB", "--max-tokens", "50", "--out", str(out)]) == 130
    stdout = capsys.readouterr().out
    assert out.read_text() == stdout and len(stdout) == 2 + 5 and stdout.startswith("AB")


def test_fallback_dataset_is_recorded_and_a_resume_does_not_switch_data(tmp_path, data_root, capsys):
    run = tmp_path / "run"
    (tmp_path / "no-data").mkdir()
    res = genlab.train("vae-mnist", run, overrides=TINY_VAE, steps=2, data_root=str(tmp_path / "no-data"))
    import json

    from genlab.config import load_config

    assert load_config(run / "config.yaml").data.dataset == "digits"
    assert "digits" in json.loads((run / "manifest.json").read_text())["data_source"]
    assert res.finished
    # a real MNIST run never falls back: resuming it without MNIST is refused
    mn = tmp_path / "mn"
    genlab.train("vae-mnist", mn, overrides=TINY_VAE, steps=2, data_root=str(data_root))
    before = folder_hash(mn)
    assert _call(["train", "--resume", str(mn), "--steps", "4", "--data-root", str(tmp_path / "no-data")]) == 2
    assert "mnist train files not found" in capsys.readouterr().err
    assert folder_hash(mn) == before


def test_likelihood_of_grey_pixels_is_not_reported_for_a_bernoulli_vae(tmp_path, data_root, capsys):
    run = genlab.train("vae-mnist", tmp_path / "grey", overrides=TINY_VAE + ["data.binarize=false"], steps=2,
                       data_root=str(data_root)).run_dir
    assert _call(["evaluate", str(run), "--n", "20", "--metrics", "bits_per_dim", "--no-html"]) == 2
    assert "has no likelihood of them" in capsys.readouterr().err
    from genlab.evaluation import evaluate

    report = evaluate(run, n=20, html=False)
    assert "mse" in report["metrics"] and "bits_per_dim" not in report["metrics"]


def test_runs_with_the_old_checkpoint_layout_still_load_and_prune(tmp_path):
    """Before content-addressed tensor files: NAME.safetensors beside a JSON without "file"."""
    import hashlib
    import json

    import torch
    from safetensors.torch import save as st_save

    from genlab.engine import checkpoint as ckpt

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for step in (1, 2):
        blob = st_save({"w": torch.full((3,), float(step))})
        (folder / f"step-{step:08d}.safetensors").write_bytes(blob)
        (folder / f"step-{step:08d}.json").write_text(json.dumps({"state": {"step": step},
                                                                  "sha256": hashlib.sha256(blob).hexdigest()}))
    assert torch.equal(ckpt.latest_valid(folder).tensors["w"], torch.full((3,), 2.0))
    ckpt.save_checkpoint(folder, "step-00000003", {"w": torch.full((3,), 3.0)}, {"state": {"step": 3}})
    ckpt.prune(folder, keep=2)
    assert sorted(p.name for p in folder.glob("*.safetensors")) == [
        "step-00000002.safetensors", ckpt.tensor_file(folder, "step-00000003").name]
    assert ckpt.read_checkpoint(folder, "step-00000002").state["state"]["step"] == 2
