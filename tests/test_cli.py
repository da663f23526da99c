import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TINY_VAE, run_cli


def _one_error_line(r, *fragments):
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("genlab: error: "), r.stderr
    assert "Traceback" not in r.stderr
    for f in fragments:
        assert f in lines[-1], lines[-1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root):
    run = tmp_path_factory.mktemp("cli") / "cvae"
    r = run_cli("train", "cvae-mnist", "--steps", "4", "--out", str(run), "--data-root", str(data_root),
                "--set", *TINY_VAE)
    assert r.returncode == 0, r.stderr
    return run


def test_presets_lists_the_vaes():
    r = run_cli("presets")
    assert r.returncode == 0
    names = [ln.split()[0] for ln in r.stdout.splitlines()]
    assert {"vae-mnist", "beta-vae-mnist", "cvae-mnist"} <= set(names)


def test_run_directory_contents(trained):
    for name in ("config.yaml", "manifest.json", "data.json", "report.json", "logs/train.jsonl",
                 "samples/final.png", "checkpoints/best.json"):
        assert (trained / name).exists(), name
    m = json.loads((trained / "manifest.json").read_text())
    for key in ("genlab_version", "git_commit", "torch_version", "cpu_model", "command_line"):
        assert key in m
    assert "cvae-mnist" in m["command_line"]
    assert list((trained / "logs" / "tb").glob("events.out.tfevents.*"))


def test_sample_outputs(trained, tmp_path):
    r = run_cli("sample", str(trained), "--n", "20", "--seed", "1", "--out", str(tmp_path / "s.npz"))
    assert r.returncode == 0, r.stderr
    z = np.load(tmp_path / "s.npz")
    assert z["images"].shape == (20, 1, 28, 28) and z["images"].dtype == np.uint8
    assert np.bincount(z["labels"]).tolist() == [2] * 10
    r = run_cli("sample", str(trained), "--n", "5", "--label", "7", "--out", str(tmp_path / "d") + "/")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [f"{i}_label7.png" for i in range(5)]
    r = run_cli("sample", str(trained), "--n", "16")
    assert r.returncode == 0 and (trained / "samples" / "sample-seed0.png").is_file()
    r = run_cli("sample", str(trained), "--interpolate", "--n", "3", "--frames", "10", "--out", str(tmp_path / "i.png"))
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "i.png").size == (10 * 30 + 2, 3 * 30 + 2)


def test_info_prints_progress(trained):
    r = run_cli("info", str(trained), "--json")
    info = json.loads(r.stdout)
    assert info["progress"]["step"] == 4 and info["config"]["preset"] == "cvae-mnist"


def test_resume_of_finished_run_exits_zero(trained):
    r = run_cli("train", "--resume", str(trained))
    assert r.returncode == 0 and "already finished" in r.stderr


def test_bad_inputs_give_one_line_errors(trained, tmp_path, data_root):
    _one_error_line(run_cli("train", "vae-mnst"), "unknown preset 'vae-mnst'", "vae-mnist")
    _one_error_line(run_cli("train", "vae-mnist", "--set", "train.lrr=1"), "train.lrr", "did you mean: lr")
    _one_error_line(run_cli("train", "vae-mnist", "--set", "data.dataset=fashion-mnist", "--data-root",
                            str(tmp_path / "nodata"), "--out", str(tmp_path / "x")), "--data-root")
    _one_error_line(run_cli("train", "cvae-mnist", "--out", str(trained), "--data-root", str(data_root)),
                    "already holds a run")
    _one_error_line(run_cli("sample", str(tmp_path / "nope")), "not found")
    _one_error_line(run_cli("sample", str(trained), "--out", str(tmp_path / "x.jpg")), "FILE.png or FILE.npz or DIR/")
    _one_error_line(run_cli("sample", str(trained), "--label", "12"), "--label must be in 0..9")
    _one_error_line(run_cli("train", "--resume", str(trained), "vae-mnist"), "--resume takes its config")


def test_corrupt_and_truncated_checkpoints(trained, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(trained, bad)
    from genlab.engine.checkpoint import list_steps, tensor_file

    name = list_steps(bad / "checkpoints")[-1]
    st = tensor_file(bad / "checkpoints", name)
    st.write_bytes(st.read_bytes()[: len(st.read_bytes()) // 2])
    _one_error_line(run_cli("sample", str(bad)), "corrupt or truncated")
    js = bad / "checkpoints" / f"{name}.json"
    js.write_text("{not json")
    _one_error_line(run_cli("sample", str(bad)), "not valid JSON")
    (bad / "config.yaml").unlink()
    _one_error_line(run_cli("sample", str(bad)), "config.yaml not found")


def test_rgb_image_folder_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("red", "blue"):
        (tmp_path / "data" / "imgs" / cls).mkdir(parents=True)
        for i in range(12):
            a = rng.integers(0, 60, (48, 40, 3), dtype=np.uint8)
            a[..., 0 if cls == "red" else 2] += 180
            Image.fromarray(a).save(tmp_path / "data" / "imgs" / cls / f"{i}.png")
    run = tmp_path / "run"
    r = run_cli("train", "cvae-mnist", "--data-root", str(tmp_path / "data"), "--out", str(run), "--steps", "3",
                "--set", "data.dataset=folder", "data.path=imgs", "data.image_size=32", "data.binarize=false",
                "data.val_size=0.2", "data.test_size=0.2", "data.hflip=true", "data.crop_padding=2",
                "train.batch_size=8", "train.amp=off")
    assert r.returncode == 0, r.stderr
    r = run_cli("sample", str(run), "--n", "6", "--out", str(tmp_path / "s.npz"))
    assert r.returncode == 0, r.stderr
    z = np.load(tmp_path / "s.npz")
    assert z["images"].shape == (6, 3, 32, 32) and z["labels"].tolist() == [0, 1, 0, 1, 0, 1]
