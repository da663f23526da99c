"""The command line follows the ecosystem's habits (issue 30): --version, a quick --help that does
not import torch, --set before the preset, -v anywhere, one meaning of --steps, help text on every
option, --device auto, presets --show, examples/, shell completion, info/compare options, the
Python API (dicts with `preset:`, genlab.evaluate/apply) and an honest end-of-training line."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import genlab
from genlab.cli import _parser, _train_config, _written, main
from genlab.config import parse_set, resolve
from tests.conftest import ROOT, TINY_VAE, main_fails_in_one_line

pytestmark = pytest.mark.usefixtures("one_thread")


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return dict(next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices)


@pytest.fixture(scope="module")
def cvae(tmp_path_factory, data_root) -> Path:
    """A 2-step conditional VAE trained through the Python API from a dict naming its preset."""
    tree = {"preset": "cvae-mnist", **parse_set(TINY_VAE)}
    res = genlab.train(tree, tmp_path_factory.mktemp("habits") / "cvae", steps=2, data_root=str(data_root))
    return res.run_dir


# --------------------------------------------------------------------------- version, help, imports


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"genlab {genlab.__version__}" == "genlab 0.1.0"


def test_help_and_argument_errors_do_not_import_torch():
    code = """
import sys
from genlab.cli import main
for args in (["--help"], ["train", "--help"], ["sample", "--help"], ["apply", "--help"], ["sample"],
             ["train", "--steps", "x"]):
    try:
        main(args)
    except SystemExit:
        pass
import genlab
genlab.__version__
print("TORCH", "torch" in sys.modules)
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "TORCH False"


def test_public_api_is_lazy_and_complete():
    code = """
import sys, genlab
assert "torch" not in sys.modules
import genlab.apply.io as io_module  # the subpackage's modules import as before
from genlab.apply import apply
from genlab.evaluation import evaluate
import inspect
assert inspect.ismodule(io_module) and callable(io_module.read_images)
assert genlab.apply is sys.modules["genlab.apply"] and callable(genlab.apply)  # the package, callable as apply()
assert genlab.evaluate is evaluate and callable(genlab.train) and inspect.isfunction(apply)
assert set(genlab.__all__) >= {"train", "load", "Run", "resolve", "RunConfig", "GenlabError", "evaluate", "apply"}
assert all(hasattr(genlab, n) for n in genlab.__all__)
print("OK")
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120, cwd=ROOT)
    assert p.returncode == 0 and p.stdout.strip() == "OK", p.stderr


def test_help_answers_quickly():
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "genlab", "--help"], capture_output=True, text=True, check=False,
                       timeout=60, cwd=ROOT)
    seconds = time.perf_counter() - t0
    assert p.returncode == 0 and "train" in p.stdout and "completion" in p.stdout
    assert seconds < 1.5, f"genlab --help took {seconds:.2f} s"


# --------------------------------------------------------------------------- parsing


def test_every_option_of_every_command_has_help_text():
    p = _parser()
    hidden = []
    for name, sp in {"genlab": p, **_subparsers(p)}.items():
        for a in sp._actions:
            if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            where = f"{name} {'/'.join(a.option_strings) or a.dest}"
            assert a.help, f"{where} has no help text"
            if a.help == argparse.SUPPRESS:
                hidden.append(where)
    assert sorted(hidden) == ["apply --steps", "sample --steps"]  # only the refused old names are hidden


def test_device_defaults_to_auto_everywhere():
    from genlab.engine.device import select_device

    p = _parser()
    with_device = {n: sp for n, sp in _subparsers(p).items()
                   if any("--device" in a.option_strings for a in sp._actions)}
    assert set(with_device) >= {"train", "sample", "evaluate", "apply", "audit"}
    for name, sp in with_device.items():
        a = next(a for a in sp._actions if "--device" in a.option_strings)
        assert "auto" in a.choices
        # train leaves it to the config, whose default is auto
        assert a.default == ("auto" if name != "train" else None), name
    assert resolve("vae-mnist").train.device == "auto"
    assert select_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        assert select_device("auto").type == "cpu"


@pytest.mark.parametrize("args,config,overrides", [
    (["train", "--set", "train.lr=1e-3", "vae-mnist"], "vae-mnist", ["train.lr=1e-3"]),
    (["train", "--set", "train.lr=1e-3", "model.beta=2", "x.yaml"], "x.yaml", ["train.lr=1e-3", "model.beta=2"]),
    (["train", "vae-mnist", "--set", "train.lr=1e-3"], "vae-mnist", ["train.lr=1e-3"]),
    (["train", "--set", "a.b=1", "--set", "c.d=2", "vae-mnist"], "vae-mnist", ["a.b=1", "c.d=2"]),
    (["train", "--set", "a.b=1", "vae-mnist", "--set", "c.d=2"], "vae-mnist", ["a.b=1", "c.d=2"]),
    (["train", "--resume", "r", "--steps", "5"], None, []),
])
def test_set_leaves_the_config_positional_alone(args, config, overrides):
    a = _parser().parse_args(args)
    _train_config(a)
    assert (a.config, a.overrides) == (config, overrides)


@pytest.mark.parametrize("args,fragments", [
    (["train", "vae-mnist", "--set", "train.lr=1", "cvae-mnist"], ["two configs given", "vae-mnist", "cvae-mnist"]),
    (["train", "--set", "train.lr", "1e-3"], ["--set expects section.key=value", "train.lr"]),
    (["train", "--set", "train.lr=1", "vae-mnst"], ["--set expects", "vae-mnst", "did you mean: vae-mnist"]),
])
def test_set_mistakes_are_one_line_errors_that_write_nothing(args, fragments, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main_fails_in_one_line(capsys, args, *fragments)
    assert list(tmp_path.iterdir()) == []


def test_verbose_before_or_after_the_command():
    p = _parser()
    for name, sp in _subparsers(p).items():
        assert any("-v" in a.option_strings for a in sp._actions), f"{name} has no -v"
    assert p.parse_args(["-v", "info", "r"]).verbose is True
    assert p.parse_args(["info", "r", "-v"]).verbose is True
    assert p.parse_args(["info", "-v", "r"]).verbose is True
    assert p.parse_args(["info", "r"]).verbose is False
    assert p.parse_args(["train", "--verbose", "vae-mnist"]).verbose is True


@pytest.mark.parametrize("args", [["sample", "RUN", "--interpolate", "--steps", "5"],
                                  ["apply", "RUN", "interpolate", "--seeds", "1", "2", "--steps", "5", "--out",
                                   "x.png"]])
def test_steps_is_training_only(args, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main_fails_in_one_line(capsys, args, "use --frames")
    assert list(tmp_path.iterdir()) == []


def test_frames_is_refused_where_it_means_nothing(capsys, tmp_path):
    main_fails_in_one_line(capsys, ["sample", "RUN", "--frames", "4"], "--frames", "--interpolate")
    main_fails_in_one_line(capsys, ["apply", "RUN", "inpaint", "--frames", "4", "--out", str(tmp_path / "x.npz")],
                           "--frames is an option of interpolate")
    main_fails_in_one_line(capsys, ["sample", "RUN", "--interpolate", "--frames", "1"], "--frames must be >= 2")


# --------------------------------------------------------------------------- with a run


def test_dict_config_starts_from_its_preset(cvae):
    cfg = genlab.load(cvae).cfg
    assert cfg.preset == "cvae-mnist"
    assert cfg.model.conditional is True and cfg.model.arch == "conv"  # from the preset
    assert cfg.model.hidden == 64 and cfg.train.batch_size == 32  # from the dict
    assert resolve({"preset": "vae-mnist", "train": {"lr": 3e-4}}) == resolve("vae-mnist", ["train.lr=3e-4"])


def test_dict_with_an_unknown_preset_is_a_config_error():
    with pytest.raises(genlab.GenlabError, match="unknown preset 'vae-mnst'.*vae-mnist"):
        resolve({"preset": "vae-mnst"})


@pytest.mark.parametrize("rows,frames", [(3, 4), (None, 3), (2, None)])
def test_sample_interpolate_writes_n_rows_of_frames(cvae, tmp_path, capsys, rows, frames):
    out = tmp_path / "i.npz"
    args = ["sample", str(cvae), "--interpolate", "--out", str(out)]
    args += ["--n", str(rows)] if rows else []
    args += ["--frames", str(frames)] if frames else []
    assert main(args) == 0, capsys.readouterr().err
    n = (rows or 8) * (frames or 10)
    z = np.load(out)
    assert z["images"].shape == (n, 1, 28, 28) and len(z["labels"]) == n
    assert f"wrote {n} images" in capsys.readouterr().err


def test_sample_n_without_interpolate_is_images(cvae, tmp_path, capsys):
    assert main(["sample", str(cvae), "--n", "7", "--out", str(tmp_path / "s.npz"), "--device", "auto"]) == 0
    assert np.load(tmp_path / "s.npz")["images"].shape[0] == 7


def test_apply_interpolate_takes_frames(cvae, tmp_path, capsys):
    out = tmp_path / "f.npz"
    assert main(["apply", str(cvae), "interpolate", "--seeds", "1", "2", "--frames", "5", "--label", "3",
                 "--out", str(out)]) == 0, capsys.readouterr().err
    assert np.load(out)["images"].shape[0] == 5
    # the Python API reaches the same function
    out2 = genlab.apply(cvae, "interpolate", input=None, out=tmp_path / "g.npz", seeds=[1, 2], steps=5, label=3)
    assert np.array_equal(np.load(out2)["images"], np.load(out)["images"])


def test_info_summary_and_json(cvae, capsys):
    assert main(["info", str(cvae)]) == 0
    text = capsys.readouterr().out
    assert not text.lstrip().startswith("{") and len(text.splitlines()) < 40
    assert "cvae-mnist" in text
    assert main(["info", str(cvae), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["progress"]["step"] == 2 and record["config"]["preset"] == "cvae-mnist"
    assert {"run", "config", "manifest", "progress"} <= set(record)


def test_compare_passes_metrics(cvae, capsys):
    assert _parser().parse_args(["compare", "a", "b", "--metrics", "fid", "kid"]).metrics == ["fid", "kid"]
    assert main(["compare", str(cvae), str(cvae), "--metrics", "test_kl"]) == 0, capsys.readouterr().err
    header = capsys.readouterr().out.splitlines()[0]
    assert "test_kl" in header and "test_recon" not in header


def test_train_with_set_first_and_verbose_after(tmp_path, data_root, capsys):
    out = tmp_path / "r"
    args = ["train", "-v", "--set", *TINY_VAE, "train.lr=5e-4", "vae-mnist", "--steps", "2", "--out", str(out),
            "--data-root", str(data_root), "--device", "cpu"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "DEBUG" in err or "INFO: " in err  # the verbose log format
    cfg = genlab.load(out).cfg
    assert cfg.preset == "vae-mnist" and cfg.train.lr == 5e-4 and cfg.model.hidden == 64
    done = [ln for ln in err.splitlines() if "done: step 2" in ln]
    assert done and f"samples in {out / 'samples' / 'final.png'}" in done[0]


def test_graph_runs_name_what_they_wrote(tmp_path, capsys):
    """The old last line said "samples in RUN/samples" for every run: a link-prediction run has
    no such folder; a graph generator's drawing is named."""
    from tests.test_graphs import TINY_GAE, TINY_RNN

    edges = tmp_path / "edges.csv"  # a ring of 40 nodes with chords: enough edges to split
    edges.write_text("".join(f"{i},{(i + d) % 40}\n" for i in range(40) for d in (1, 7)))
    link = tmp_path / "link"
    assert main(["train", "vgae-cora", "--out", str(link), "--set", *TINY_GAE, f"data.path={edges}"]) == 0
    done = [ln for ln in capsys.readouterr().err.splitlines() if "done: step" in ln]
    assert done and "samples in" not in done[0] and "draws no samples" in done[0], done
    assert str(link / "checkpoints") in done[0] and not (link / "samples").exists()
    out = tmp_path / "g"
    assert main(["train", "graphgen-grid", "--steps", "2", "--out", str(out), "--set", *TINY_RNN]) == 0
    done = [ln for ln in capsys.readouterr().err.splitlines() if "done: step 2" in ln]
    assert done and str(out / "samples" / "final.png") in done[0], done
    assert (out / "samples" / "final.png").is_file()


def test_written_names_only_what_exists(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    line = _written(tmp_path)  # a link-prediction run: no samples folder
    assert "samples in" not in line and "draws no samples" in line and str(tmp_path / "checkpoints") in line
    (tmp_path / "samples").mkdir()
    for name in ("final.png", "final.wav", "step-100.png"):
        (tmp_path / "samples" / name).write_bytes(b"x")
    line = _written(tmp_path)
    assert line == f"samples in {tmp_path / 'samples' / 'final.png'}, {tmp_path / 'samples' / 'final.wav'}"


# --------------------------------------------------------------------------- presets, examples


def test_presets_show_round_trips_through_a_yaml_file(tmp_path, capsys):
    from genlab.presets import PRESETS

    for name in PRESETS:
        assert main(["presets", "--show", name]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"# {name}: ")
        f = tmp_path / f"{name}.yaml"
        f.write_text(out, encoding="utf-8")
        assert resolve(str(f)) == resolve(name), name


def test_presets_show_unknown_name(capsys):
    main_fails_in_one_line(capsys, ["presets", "--show", "ddpm-mnst"], "unknown preset 'ddpm-mnst'", "ddpm-mnist")


def test_examples_resolve_and_cover_every_family():
    from genlab.pipeline import load_pipeline
    from genlab.registry import get_model

    files = sorted((ROOT / "examples").glob("*.yaml"))
    pipeline = ROOT / "examples" / "pipeline-mnist.yaml"
    federation = ROOT / "examples" / "federated-mnist.yaml"
    assert pipeline in files and federation in files
    load_pipeline(str(pipeline))
    from genlab.federated.config import FederationConfig

    assert resolve(FederationConfig.from_file(federation).run).model_name == "vae"
    models = {}
    for f in files:
        if f in (pipeline, federation):
            continue
        text = f.read_text(encoding="utf-8")
        assert text.startswith("#") and "\npreset: " in text, f"{f.name}: a commented file starting from a preset"
        cfg = resolve(str(f))
        models[cfg.model_name] = get_model(cfg.model_name)[1].family
    assert {"vae", "gan", "diffusion", "gpt"} <= set(models)
    assert {"graph", "audio", "text"} <= set(models.values())


# --------------------------------------------------------------------------- completion


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completion_completes_commands_options_and_presets(tmp_path, capsys):
    assert main(["completion", "bash"]) == 0
    script = tmp_path / "genlab.bash"
    script.write_text(capsys.readouterr().out)

    def complete(*words: str) -> list[str]:
        cmd = (f"source {script}; COMP_WORDS=(genlab {' '.join(words)}); COMP_CWORD={len(words)}; _genlab; "
               'printf "%s\\n" "${COMPREPLY[@]}"')
        p = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, check=False, timeout=30, cwd=tmp_path)
        assert p.returncode == 0, p.stderr
        return p.stdout.split()

    assert complete("tr") == ["train"]
    assert complete("train", "--se") == ["--set", "--seed"]
    assert complete("-v", "train", "--set", "a.b=1", "vae-m") == ["vae-mnist"]
    assert complete("sample", "r", "--device", "") == ["auto", "cpu", "cuda"]
    assert complete("apply", "r", "ups") == ["upscale"]
    assert complete("completion", "z") == ["zsh"]
    assert "--frames" in complete("sample", "r", "--fr") and "--steps" not in complete("sample", "r", "--st")


def test_zsh_completion_uses_the_same_generator(capsys):
    assert main(["completion", "zsh"]) == 0
    out = capsys.readouterr().out
    assert "bashcompinit" in out and "complete -o filenames -F _genlab genlab" in out


def test_cli_logging_writes_to_the_current_stderr(capsys):
    """The CLI's log handler follows sys.stderr: a library call after an in-process `main` (tests,
    notebooks) must not write to the stream that was stderr then and may be closed now."""
    import io
    import logging

    assert main(["presets"]) == 0  # installs the "genlab" handler while stderr is captured
    buf, old = io.StringIO(), sys.stderr
    sys.stderr = buf
    try:
        logging.getLogger("genlab").info("after main")
    finally:
        sys.stderr = old
    assert buf.getvalue() == "genlab: after main\n"
