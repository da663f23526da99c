"""The train-evaluate-retrain pipeline: policy decisions on scripted metric sequences, resume
after a kill, config errors, and one real round trip on MNIST."""

import json
from pathlib import Path

import pytest

from genlab.errors import ConfigError
from genlab.pipeline import Pipeline, load_pipeline, parse_target, read_history
from tests.conftest import TINY_VAE, run_cli


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "p.yaml"
    p.write_text(text)
    return p


BASE = """
target: {target}
candidates: [{{config: vae-mnist}}, {{config: cvae-mnist, name: second}}]
budget: {{steps: 10}}
retrain: {{actions: {actions}, more: {{steps: 5}}, lr_factor: 0.5}}
max_rounds: {rounds}
"""


class Scripted:
    """Fake train/evaluate: the metric of round k is values[k-1]; records every call."""

    def __init__(self, values, fail_at_round=None):
        self.values, self.fail_at_round = list(values), fail_at_round
        self.trained, self.rounds = [], []

    def train(self, cfg, r, data_root):
        self.trained.append((r.round, r.candidate, r.action, r.steps, r.lr))
        return True, r.steps, 0.1 * r.round

    def evaluate(self, cfg, r):
        if r.round == self.fail_at_round:
            raise KeyboardInterrupt  # the process is killed while evaluating this round
        self.rounds.append(r.round)
        return {cfg.target.metric: self.values[r.round - 1]}


def _pipeline(tmp_path, fake, target="fid <= 10", actions="[continue]", rounds=4):
    cfg = load_pipeline(_write(tmp_path, BASE.format(target=target, actions=actions, rounds=rounds)))
    p = Pipeline(cfg, tmp_path / "out", train_round=fake.train, evaluate_round=fake.evaluate)
    p._keep = lambda r: None  # nothing to copy from fake runs
    return p


def test_passes_at_round_k_continuing_one_run(tmp_path):
    fake = Scripted([30, 20, 8, 5])
    out = _pipeline(tmp_path, fake).run()
    assert out.passed and [r.round for r in out.rounds] == [1, 2, 3]
    # one run continued: budgets grow by `more` from where the run stood
    assert [t[3] for t in fake.trained] == [10, 15, 20]
    assert {r.run_dir for r in out.rounds} == {out.rounds[0].run_dir}
    assert [r.decision for r in out.rounds] == ["continue", "continue", "pass"]
    assert "fid = 8 meets fid <= 10 in round 3" in out.summary
    lines = (tmp_path / "out" / "pipeline.jsonl").read_text().splitlines()
    assert [json.loads(ln)["value"] for ln in lines] == [30, 20, 8]


def test_gives_up_after_max_rounds_naming_the_closest(tmp_path):
    fake = Scripted([0.5, 0.8, 0.7], fail_at_round=None)
    out = _pipeline(tmp_path, fake, target="label_accuracy >= 0.9", rounds=3).run()
    assert not out.passed and len(out.rounds) == 3
    assert out.best.round == 2
    assert "limit of 3 rounds" in out.summary and "missed by 0.1" in out.summary
    assert "closest was round 2" in out.summary


def test_lower_lr_then_switch_candidate(tmp_path, monkeypatch):
    import genlab.pipeline as pl

    monkeypatch.setattr(pl, "_config_lr", lambda run_dir: 1e-3)  # the fake run has no config.yaml
    fake = Scripted([50, 40, 30])
    res = _pipeline(tmp_path, fake, actions="[lower_lr, next_candidate]", rounds=5).run()
    assert [(t[1], t[2]) for t in fake.trained] == [(0, "start"), (0, "lower_lr"), (1, "next_candidate")]
    assert fake.trained[0][4] is None and fake.trained[1][4] == pytest.approx(5e-4)  # lr x 0.5
    assert res.rounds[2].candidate_name == "second" and res.rounds[2].steps == 10  # a fresh first round
    assert res.rounds[2].run_dir != res.rounds[0].run_dir
    assert not res.passed and "no candidate left" in res.summary  # next_candidate repeats, none left


def test_no_candidate_left_gives_up(tmp_path):
    fake = Scripted([50, 40, 30])
    out = _pipeline(tmp_path, fake, actions="[next_candidate]", rounds=9).run()
    assert not out.passed and len(out.rounds) == 2 and "no candidate left" in out.summary


def test_resume_after_a_kill_reuses_finished_rounds(tmp_path):
    fake = Scripted([30, 20, 8], fail_at_round=2)
    p = _pipeline(tmp_path, fake)
    with pytest.raises(KeyboardInterrupt):
        p.run()
    assert [r.round for r in read_history(tmp_path / "out")] == [1]
    with pytest.raises(ConfigError, match="already holds a pipeline; continue it with --resume"):
        _pipeline(tmp_path, Scripted([1])).run()
    fake2 = Scripted([30, 20, 8])
    out = _pipeline(tmp_path, fake2).run(resume=True)
    assert out.passed and [r.round for r in out.rounds] == [1, 2, 3]
    assert [t[0] for t in fake2.trained] == [2, 3]  # round 1 was not trained again
    assert [t[3] for t in fake2.trained] == [15, 20]


@pytest.mark.parametrize("text, match", [
    ("fid =< 20", "cannot parse target 'fid =< 20'; write METRIC OP VALUE"),
    ("fdi <= 20", "unknown metric 'fdi' in target \\(did you mean: fid\\?\\)"),
    ("fid <= twenty", "cannot parse target"),
])
def test_target_parsing_errors(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_target(text)


def test_target_parsing():
    t = parse_target("  label_accuracy>=0.95 ")
    assert (t.metric, t.op, t.value) == ("label_accuracy", ">=", 0.95)
    assert t.passes(0.95) and not t.passes(0.94) and t.shortfall(0.9) == pytest.approx(0.05)
    assert parse_target("fid < 1e1").passes(9.9) and parse_target("val_loss <= 1.6").better(1.5, 1.6)


@pytest.mark.parametrize("body, match", [
    ("target: fid <= 1\ncandidates: []\nbudget: {steps: 1}\n", "non-empty list of candidates"),
    ("target: fid <= 1\ncandidates: [dcgan-mnist]\n", "a budget needs steps and/or minutes"),
    ("target: fid <= 1\ncandidates: [dcgan-mnist]\nbudget: {steps: 1}\nretrain: {actions: [contine]}\n",
     "unknown retrain action 'contine' \\(did you mean: continue\\?\\)"),
    ("target: fid <= 1\ncandidates: [dcgan-mnist]\nbudget: {steps: 1}\nretrain: {more: {minutes: 2}}\n",
     "retrain.more must name the same budget keys"),
    ("target: fid <= 1\ncandidates: [dcgan-mnist]\nbudget: {steps: 1}\nmax_round: 3\n",
     "unknown pipeline key 'max_round' \\(did you mean: max_rounds"),
])
def test_config_errors(tmp_path, body, match):
    with pytest.raises(ConfigError, match=match):
        load_pipeline(_write(tmp_path, body))


def test_real_pipeline_round_trip(tmp_path, data_root):
    """Two real rounds on MNIST: a 5-step VAE fails the NLL-free target, continuing passes."""
    p = _write(tmp_path, f"""
target: test_loss <= 1e9
candidates: [{{config: vae-mnist, set: [{', '.join(TINY_VAE)}]}}]
budget: {{steps: 4}}
retrain: {{more: {{steps: 4}}}}
max_rounds: 2
""")
    r = run_cli("pipeline", str(p), "--out", str(tmp_path / "out"), "--dry-run")
    assert r.returncode == 0 and "target: test_loss <= 1e+09" in r.stdout
    r = run_cli("pipeline", str(p), "--out", str(tmp_path / "out"), "--data-root", str(data_root))
    assert r.returncode == 0, r.stderr
    assert "Passed: test_loss" in r.stdout
    best = tmp_path / "out" / "best"
    assert (best / "samples" / "pipeline-final.png").is_file() and (best / "config.yaml").is_file()
    hist = read_history(tmp_path / "out")
    assert len(hist) == 1 and hist[0].step == 4 and hist[0].passed
