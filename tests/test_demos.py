"""Demo models shipped in the package (src/genlab/demos, made by scripts/make_demos.py): usable
offline as `demo:NAME`, small, weights only, read-only, and as good as their README says."""

from __future__ import annotations

import glob
import json
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

import genlab
from genlab import demos
from genlab.engine import checkpoint as ckpt
from tests.conftest import ROOT, main_fails_in_one_line, run_cli

SHIPPED = ("cvae-mnist", "ddpm-mnist", "gpt-shakespeare-cpu")
OFFLINE = {"GENLAB_DATA": "/nonexistent", "GENLAB_CACHE": "/nonexistent-cache"}  # no dataset anywhere


def test_the_three_demos_ship_small_and_weights_only():
    assert set(SHIPPED) <= set(demos.names())
    for name in SHIPPED:
        folder = demos.resolve(f"demo:{name}")
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        assert size < 8e6, f"{name} is {size / 1e6:.1f} MB"
        c = ckpt.latest_valid(folder / "checkpoints")  # verifies the sha256
        assert c is not None
        prefixes = {k.split(".")[0] for k in c.tensors}
        assert len(prefixes) == 1 and prefixes <= {"model", "ema"}, prefixes  # no optimizer state, one weight set
        assert json.loads((folder / "manifest.json").read_text())["data_root"] is None


def test_sample_a_demo_offline_in_seconds(tmp_path):
    out = tmp_path / "s.npz"
    t0 = time.perf_counter()
    r = run_cli("sample", "demo:cvae-mnist", "--n", "100", "--out", str(out), env=OFFLINE, cwd=tmp_path)
    seconds = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    assert seconds < 30, seconds  # about 2 s here (interpreter and torch start-up included)
    z = np.load(out)
    assert z["images"].shape == (100, 1, 28, 28) and z["images"].dtype == np.uint8
    assert np.array_equal(z["labels"], np.arange(100) % 10)
    assert run_cli("sample", "demo:cvae-mnist", "--n", "100", "--out", str(tmp_path / "t.npz"),
                   env=OFFLINE, cwd=tmp_path).returncode == 0
    assert np.array_equal(np.load(tmp_path / "t.npz")["images"], z["images"])  # same seed, same images


@torch.no_grad()
def test_demo_cvae_draws_the_digits_asked_for():
    from genlab.metrics.classifier import label_accuracy, load_classifier

    images, labels = genlab.load("demo:cvae-mnist").sample(200, seed=1)
    assert label_accuracy(load_classifier("lenet-mnist"), images, labels) > 0.85


@torch.no_grad()
def test_demo_ddpm_samples_look_like_mnist():
    from genlab.metrics.classifier import _to_model_space, load_classifier

    images, labels = genlab.load("demo:ddpm-mnist").sample(32, seed=0, steps=10)
    assert images.shape == (32, 1, 28, 28) and labels is None
    probs = load_classifier("lenet-mnist")(_to_model_space(images, torch.device("cpu"))).softmax(1)
    # confident digits (noise would be classified with low confidence) of several classes
    assert probs.max(1).values.mean() > 0.8 and len(set(probs.argmax(1).tolist())) >= 5


def test_demo_gpt_writes_shakespeare_like_text():
    run = genlab.load("demo:gpt-shakespeare-cpu")
    text = "".join(run.generate("ROMEO:", 300, seed=0))
    assert text == "".join(run.generate("ROMEO:", 300, seed=0))
    words = text.split()
    common = {"the", "and", "to", "of", "I", "my", "you", "a", "that", "is", "in", "not", "me", "with"}
    assert sum(w.strip(",.;:!?").lower() in {c.lower() for c in common} for w in words) / len(words) > 0.1
    assert json.loads((run.run_dir / "report.json").read_text())["metrics"]["val_loss"]["value"] < 2.0


def test_demos_are_read_only_and_unknown_names_are_named(capsys, tmp_path):
    folder = demos.resolve("demo:cvae-mnist")
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    main_fails_in_one_line(capsys, ["sample", "demo:nope", "--out", str(tmp_path / "s.png")],
                           "no demo named 'nope'", "cvae-mnist")
    main_fails_in_one_line(capsys, ["evaluate", "demo:cvae-mnist"], "read-only", "--out")
    main_fails_in_one_line(capsys, ["train", "--resume", "demo:cvae-mnist"], "read-only")
    main_fails_in_one_line(capsys, ["audit", "demo:cvae-mnist"], "read-only", "--out")
    main_fails_in_one_line(capsys, ["sample", "demo:cvae-mnist"], "read-only", "--out")
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before  # nothing written


@pytest.mark.parametrize("given", ["demo:gpt-shakespeare-cpu", str(demos.HERE / "gpt-shakespeare-cpu")])
def test_is_demo_by_name_or_path(given):
    assert demos.is_demo(given) and not demos.is_demo("runs/x") and not demos.is_demo("demo:nope")


def test_every_reading_command_takes_a_demo(capsys, tmp_path):
    from genlab.cli import main

    assert main(["sample", "demo:gpt-shakespeare-cpu", "--prompt", "KING:", "--max-tokens", "40"]) == 0
    assert capsys.readouterr().out.startswith("KING:")
    assert main(["info", "demo:gpt-shakespeare-cpu"]) == 0
    assert "gpt-shakespeare-cpu" in capsys.readouterr().out
    assert main(["info", "demo:cvae-mnist"]) == 0
    out = capsys.readouterr().out
    assert "1.69M parameters" in out and "fid (lenet-mnist)" in out  # EMA weights counted; evaluated figures shown
    assert main(["apply", "demo:cvae-mnist", "interpolate", "--seeds", "1", "2", "--label", "4",
                 "--out", str(tmp_path / "strip.npz")]) == 0
    assert np.load(tmp_path / "strip.npz")["images"].shape == (8, 1, 28, 28)
    assert main(["evaluate", "demo:cvae-mnist", "--n", "200", "--metrics", "label_accuracy",
                 "--out", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["metrics"]["label_accuracy"]["value"] > 0.8
    assert main(["compare", "demo:gpt-shakespeare-cpu", "demo:cvae-mnist", "--out", str(tmp_path / "c.html")]) == 0
    assert "cvae-mnist" in capsys.readouterr().out
    assert "data:image/png;base64," in (tmp_path / "c.html").read_text()  # cvae-mnist's samples, inlined


def test_the_package_data_patterns_ship_every_demo_file():
    """A wheel (not an editable install) carries the files pyproject's package-data globs match."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["genlab"]
    package = ROOT / "src" / "genlab"
    shipped = {Path(p) for pattern in patterns for p in glob.glob(str(package / pattern))}
    files = {p for p in demos.HERE.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")}
    assert files and files <= shipped, sorted(map(str, files - shipped))
