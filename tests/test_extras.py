"""Lean installs (genlab.extras) and experiment trackers (genlab.engine.trackers).

The core install must run the main job with every extra's packages unimportable; a command that
needs an extra must stop with one line naming it. W&B and MLflow are not installed here: fake
modules that record their calls stand in for them, through real tiny training runs."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
import types
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import genlab
from genlab.engine.logs import RunLog
from genlab.errors import ConfigError
from genlab.extras import EXTRAS, require
from tests.conftest import ROOT, TINY_VAE, main_fails_in_one_line

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

# Moving a dependency in or out of the core install is a decision: change this set with it.
CORE = {"torch", "torchvision", "numpy", "safetensors", "pyyaml", "pillow", "scikit-learn", "tensorboard", "tqdm",
        "torchmetrics", "matplotlib", "networkx"}
FAMILY_EXTRAS = ("graph", "text", "audio", "privacy", "serve", "export", "explain", "molecules", "federated")
# the top-level modules of what moved out of core (scipy stays importable: scikit-learn needs it)
BLOCKED = sorted({m for e in FAMILY_EXTRAS + ("inception",) for m in EXTRAS[e]} - {"scipy"}
                 | {"python_multipart", "starlette", "pesq", "pystoi", "wandb", "mlflow"})


def _names(reqs: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in reqs}


def _block(monkeypatch, *modules: str) -> None:
    """Make `modules` unimportable in this process (None in sys.modules), as if not installed."""
    for name in list(sys.modules):
        if name.split(".")[0] in modules:
            monkeypatch.delitem(sys.modules, name)
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)


# --------------------------------------------------------------------------- pyproject


def test_core_dependencies_are_the_expected_set():
    assert _names(PYPROJECT["dependencies"]) == CORE


def test_torch_is_a_range_and_constraints_pin_the_tested_versions():
    reqs = {canonicalize_name(Requirement(r).name): Requirement(r) for r in PYPROJECT["dependencies"]}
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            r = Requirement(line)
            pins[canonicalize_name(r.name)] = str(r.specifier).removeprefix("==")
    assert set(pins) == {"torch", "torchvision"}
    for name, version in pins.items():
        spec = reqs[name].specifier
        assert not any(s.operator == "==" for s in spec), f"{name} is pinned in pyproject: {spec}"
        assert spec.contains(version), f"constraints.txt {name}=={version} is outside pyproject's {spec}"
        installed = importlib.metadata.version(name).split("+")[0]
        assert installed == version, f"the tests run {name} {installed}, constraints.txt says {version}"


def test_test_extra_installs_every_family_and_all_installs_everything():
    extras = PYPROJECT["optional-dependencies"]
    assert set(FAMILY_EXTRAS) | {"inception", "all", "test", "bench"} == set(extras)
    self_ref = [Requirement(r) for r in extras["test"] if canonicalize_name(Requirement(r).name) == "genlab"]
    assert len(self_ref) == 1 and set(self_ref[0].extras) == set(FAMILY_EXTRAS)
    assert set(Requirement(extras["all"][0]).extras) == set(EXTRAS)
    # no runtime dependency that only the tests use
    only_tests = _names(extras["test"]) - {"genlab"}
    assert not only_tests & (CORE | {n for e in EXTRAS for n in _names(extras[e])})


@pytest.mark.parametrize("extra", FAMILY_EXTRAS)
def test_every_extra_module_is_importable_and_declared(extra):
    """In the full test install each extra's modules import, and each comes from a distribution
    that extra (or the core) lists in pyproject.toml."""
    declared = _names(PYPROJECT["optional-dependencies"][extra]) | CORE
    owners = importlib.metadata.packages_distributions()
    for m in EXTRAS[extra]:
        importlib.import_module(m)
        assert {canonicalize_name(d) for d in owners.get(m, [])} & declared, f"{m} ({owners.get(m)}) not in [{extra}]"


# --------------------------------------------------------------------------- require


def test_require_returns_the_module_or_names_the_extra():
    assert require("json", "text", "x") is json
    msg = "graph runs needs the graph extra (genlab_missing_mod is missing): pip install 'genlab[graph]'"
    with pytest.raises(ConfigError, match=re.escape(msg)) as e:
        require("genlab_missing_mod.sub", "graph", "graph runs")
    assert "pip install -e '.[graph]'" in str(e.value) and "\n" not in str(e.value)  # a source checkout


def test_text_bpe_and_text_metrics_name_the_text_extra(monkeypatch):
    from genlab.data.text import BPETokenizer
    from genlab.metrics.text import bleu, rouge_l

    _block(monkeypatch, "tokenizers", "sacrebleu", "rouge_score")
    with pytest.raises(ConfigError, match=r"data.tokenizer=bpe needs the text extra \(tokenizers is missing\)"):
        BPETokenizer.train("abc abc", 300)
    with pytest.raises(ConfigError, match=r"bleu metric needs the text extra \(sacrebleu is missing\)"):
        bleu(["a b"], ["a b"])
    with pytest.raises(ConfigError, match=r"rouge_l metric needs the text extra .*genlab\[text\]"):
        rouge_l(["a b"], ["a b"])


@pytest.mark.parametrize("argv, blocked, fragment", [
    (["train", "vgae-cora"], "torch_geometric", "needs the graph extra (torch_geometric is missing)"),
    (["train", "wavenet-fsdd"], "soundfile", "reading audio files needs the audio extra (soundfile is missing)"),
    (["train", "dp-cvae-mnist"], "opacus", "private training needs the privacy extra (opacus is missing)"),
], ids=["vgae", "audio", "privacy"])
def test_family_commands_fail_in_one_line_naming_the_extra(capsys, monkeypatch, tmp_path, data_root, argv, blocked,
                                                           fragment):
    _block(monkeypatch, blocked)
    monkeypatch.setenv("GENLAB_DATA", str(data_root))
    main_fails_in_one_line(capsys, [*argv, "--steps", "1", "--out", str(tmp_path / "r")], fragment)
    assert not (tmp_path / "r").exists()  # refused before the run folder is touched


def test_serve_without_the_serve_extra(capsys, monkeypatch, tmp_path):
    _block(monkeypatch, "fastapi")
    monkeypatch.delitem(sys.modules, "genlab.serve", raising=False)
    monkeypatch.delitem(sys.modules, "genlab.serve.app", raising=False)
    main_fails_in_one_line(capsys, ["serve", str(tmp_path), "--port", "0"], "serve extra (fastapi is missing)",
                           "genlab[serve]")


# --------------------------------------------------------------------------- the core-only path

_CORE_ONLY = """
import sys
# None in sys.modules is how Python spells "not installed" to both probes (importlib.util.find_spec
# returns None, as torch's optional-import checks expect) and imports (ModuleNotFoundError); a
# meta-path finder cannot hide a module from the finders after it.
BLOCKED = {blocked!r}
sys.modules.update(dict.fromkeys(BLOCKED))
from genlab.cli import main

for argv in {commands!r}:
    rc = main(argv)
    print("RC", rc, argv[0], flush=True)
    if argv[0] != "train" or argv[1] == "cvae-mnist":
        assert rc == 0, argv
"""


def test_core_only_install_runs_the_main_job_and_names_the_graph_extra(tmp_path, data_root):
    """A core-only install, simulated in a fresh interpreter in which every extra's modules are
    unimportable: train (shortened), sample, evaluate, info and compare succeed; a graph preset
    stops in one line naming [graph], before its run folder is touched."""
    run = str(tmp_path / "cvae")
    small = ["model.arch=mlp", "model.hidden=32", "model.latent_dim=4", "train.batch_size=32", "train.amp=off",
             "train.eval_every=10", "train.eval_batches=2", "train.sample_every=1000", "train.ckpt_every=1000",
             "train.warmup_steps=2", "train.log_every=5", "train.ema_decay=0"]
    commands = [
        ["train", "cvae-mnist", "--steps", "20", "--out", run, "--device", "cpu", *[a for s in small for a in ("--set", s)]],
        ["sample", run, "--n", "8", "--out", str(tmp_path / "s.png")],
        ["evaluate", run, "--n", "200", "--metrics", "fid", "--no-html"],
        ["info", run],
        ["compare", run, run],
        ["train", "vgae-cora", "--steps", "1", "--out", str(tmp_path / "g")],
    ]
    script = tmp_path / "core_only.py"
    script.write_text(textwrap.dedent(_CORE_ONLY.format(blocked=set(BLOCKED), commands=commands)))
    env = {**os.environ, "GENLAB_DATA": str(data_root), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rcs = re.findall(r"^RC (\d+) (\w+)", p.stdout, re.M)
    assert [c for _, c in rcs] == ["train", "sample", "evaluate", "info", "compare", "train"], p.stdout
    assert int(rcs[-1][0]) != 0
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("genlab: error: ")]
    assert len(errors) == 1 and "genlab[graph]" in errors[0] and "torch_geometric is missing" in errors[0], \
        p.stderr[-3000:]
    assert not (tmp_path / "g").exists()
    assert (tmp_path / "s.png").is_file() and json.loads((Path(run) / "report.json").read_text())


# --------------------------------------------------------------------------- trackers


class FakeWandb(types.ModuleType):
    def __init__(self):
        super().__init__("wandb")
        self.calls: list[tuple[str, tuple, dict]] = []

    def init(self, *a, **k):
        self.calls.append(("init", a, k))

    def log(self, *a, **k):
        self.calls.append(("log", a, k))

    def finish(self, *a, **k):
        self.calls.append(("finish", a, k))


class FakeMlflow(types.ModuleType):
    def __init__(self):
        super().__init__("mlflow")
        self.calls: list[tuple[str, tuple, dict]] = []
        self.runs = 0

    def _rec(name):  # noqa: N805
        def f(self, *a, **k):
            self.calls.append((name, a, k))
        return f

    set_experiment = _rec("set_experiment")
    log_params = _rec("log_params")
    log_metrics = _rec("log_metrics")
    end_run = _rec("end_run")

    def start_run(self, *a, **k):
        self.calls.append(("start_run", a, k))
        self.runs += 1
        return types.SimpleNamespace(info=types.SimpleNamespace(run_id=k.get("run_id") or f"run{self.runs}"))


def _named(calls, name):
    return [(a, k) for n, a, k in calls if n == name]


def test_wandb_gets_config_and_every_record_and_resume_continues_the_run(monkeypatch, tmp_path, data_root):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    run_dir = tmp_path / "r"
    over = TINY_VAE + ["train.log_every=1", "train.trackers=[wandb]"]
    genlab.train("vae-mnist", run_dir, overrides=over, steps=3, data_root=str(data_root))
    (_, init), = _named(fake.calls, "init")
    assert init["project"] == "genlab" and init["name"] == "r" and init["resume"] == "allow"
    assert init["dir"] == str(run_dir / "logs")
    assert init["config"]["train"]["trackers"] == ["wandb"] and init["config"]["model"]["name"] == "vae"
    logs = _named(fake.calls, "log")
    train_steps = [k["step"] for a, k in logs if "train/loss" in a[0]]
    assert train_steps == [1, 2, 3] and any("val/loss" in a[0] for a, _ in logs)
    assert fake.calls[-1][0] == "finish" and len(_named(fake.calls, "finish")) == 1

    fake.calls.clear()
    genlab.train(resume=run_dir, steps=5, data_root=str(data_root))
    (_, again), = _named(fake.calls, "init")
    assert again["id"] == init["id"] and again["resume"] == "allow" and again["config"] is None
    assert [k["step"] for a, k in _named(fake.calls, "log") if "train/loss" in a[0]] == [4, 5]
    assert json.loads((run_dir / "logs" / "trackers.json").read_text()) == {"wandb": init["id"]}


def test_mlflow_gets_params_metrics_and_resume_reuses_the_run_id(monkeypatch, tmp_path, data_root):
    fake = FakeMlflow()
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    run_dir = tmp_path / "r"
    over = TINY_VAE + ["train.log_every=1", "train.trackers=[mlflow]"]
    genlab.train("vae-mnist", run_dir, overrides=over, steps=3, data_root=str(data_root))
    assert [n for n, _, _ in fake.calls[:3]] == ["set_experiment", "start_run", "log_params"]
    assert _named(fake.calls, "start_run")[0][1] == {"run_name": "r"}
    (params,), _ = _named(fake.calls, "log_params")[0]
    assert params["train.lr"] == pytest.approx(1e-3) and params["model.name"] == "vae"
    metrics = _named(fake.calls, "log_metrics")
    assert [k["step"] for a, k in metrics if "train/loss" in a[0]] == [1, 2, 3]
    assert fake.calls[-1][0] == "end_run"

    fake.calls.clear()
    genlab.train(resume=run_dir, steps=4, data_root=str(data_root))
    assert _named(fake.calls, "start_run") == [((), {"run_id": "run1"})] and not _named(fake.calls, "log_params")
    assert [k["step"] for a, k in _named(fake.calls, "log_metrics") if "train/loss" in a[0]] == [4]


def test_only_the_main_process_logs_to_trackers(monkeypatch, tmp_path):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    (tmp_path / "config.yaml").write_text("train:\n  trackers: [wandb]\n")
    log = RunLog(tmp_path, enabled=False)
    log.record("train", 1, {"loss": 1.0})
    log.close()
    assert fake.calls == []


def test_a_missing_tracker_package_is_one_line_before_training(monkeypatch, tmp_path, data_root):
    monkeypatch.setitem(sys.modules, "wandb", None)
    run_dir = tmp_path / "r"
    with pytest.raises(ConfigError, match=r"^train.trackers=wandb needs the wandb package .*: pip install wandb$"):
        genlab.train("vae-mnist", run_dir, overrides=TINY_VAE + ["train.trackers=[wandb]"], steps=3,
                     data_root=str(data_root))
    assert not run_dir.exists()  # refused before the run folder is touched


def test_unknown_tracker_is_a_config_error():
    with pytest.raises(ConfigError, match=r"train.trackers must list wandb and/or mlflow"):
        genlab.resolve("vae-mnist", ["train.trackers=[neptune]"])
    assert genlab.resolve("vae-mnist", ["train.trackers=mlflow"]).train.trackers == ("mlflow",)


def test_a_tracker_that_fails_to_start_is_one_line_before_any_step(monkeypatch, tmp_path, data_root):
    mlflow = FakeMlflow()
    wandb = FakeWandb()

    def refuse(*a, **k):
        raise RuntimeError("api key not configured\n(wandb login)")

    wandb.init = refuse
    monkeypatch.setitem(sys.modules, "mlflow", mlflow)
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    with pytest.raises(ConfigError, match=r"^train.trackers: wandb did not start \(RuntimeError: api key not "
                                          r"configured\); log in .*drop wandb from train.trackers$"):
        genlab.train("vae-mnist", tmp_path / "r", overrides=TINY_VAE + ["train.trackers=[mlflow, wandb]"], steps=3,
                     data_root=str(data_root))
    assert len(_named(mlflow.calls, "start_run")) == 1 and len(_named(mlflow.calls, "end_run")) == 1  # closed
    assert not (tmp_path / "r" / "logs" / "train.jsonl").exists()  # no step ran

