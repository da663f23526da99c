"""The train-evaluate-retrain pipeline: policy decisions on scripted metric sequences, resume
after a kill, config errors, and one real round trip on MNIST."""

import json
from pathlib import Path

import pytest

from genlab.cli import main
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
    out = _pipeline(tmp_path, fake, target="class_coverage >= 0.9", rounds=3).run()
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


@pytest.mark.parametrize("target, second, match", [
    ("fid <= 9", "{config: vae-mnsit}", "candidate 2 \\(vae-mnsit\\): unknown preset 'vae-mnsit' "
                                        "\\(did you mean: vae-mnist"),
    ("fid <= 9", "{config: vae-mnist, name: wide, set: [model.hiden=64]}",
     "candidate 2 \\(wide\\): unknown key model.hiden \\(did you mean: hidden"),
    ("fid <= 9", "{config: vae-mnist, set: [train.lr=fast]}", "candidate 2 \\(vae-mnist\\): train.lr expects a number"),
    ("nll_nats <= 90", "{config: dcgan-mnist}", "candidate 2 \\(dcgan-mnist\\): this gan config .* does not report "
                                                "nll_nats; change the target to one of fid"),
    ("label_accuracy >= 0.9", "{config: vae-mnist}", "candidate 2 \\(vae-mnist\\): .* does not report label_accuracy"),
    ("auc >= 0.9", "{config: vgae-cora}", "candidate 1 \\(cvae-mnist\\): .* does not report auc"),
    ("perplexity <= 5", "{config: gpt-shakespeare-cpu}", "candidate 1 \\(cvae-mnist\\): .* does not report perplexity"),
], ids=["misspelled-preset", "bad-set-key", "bad-set-value", "gan-nll", "unconditional-label-accuracy",
        "image-auc", "image-perplexity"])
def test_every_candidate_is_checked_before_round_1(tmp_path, capsys, target, second, match):
    """A bad later candidate fails the whole pipeline (and its dry run) before anything trains
    or is written, with one line naming the candidate."""
    p = _write(tmp_path, f"target: {target}\ncandidates: [{{config: cvae-mnist}}, {second}]\nbudget: {{steps: 1}}\n")
    with pytest.raises(ConfigError, match=match):
        load_pipeline(p)
    out = tmp_path / "out"
    for extra in (["--dry-run"], []):
        assert main(["pipeline", str(p), "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("genlab: error: candidate "), err
    assert not out.exists()


def test_candidate_check_uses_the_pipeline_data_and_accepts_what_fits(tmp_path):
    def load(target, candidate, extra=""):
        return load_pipeline(_write(tmp_path, f"target: {target}\ncandidates: [{candidate}]\nbudget: {{steps: 1}}\n"
                                              + extra))

    # the pipeline's data section reaches every candidate's config before the check
    with pytest.raises(ConfigError, match="candidate 1 \\(vae-mnist\\): data.normalize must be"):
        load("fid <= 9", "vae-mnist", "data: {normalize: sideways}\n")
    for target in ("label_accuracy >= 0.9", "bits_per_dim <= 0.2", "test_loss <= 90"):
        load(target, "cvae-mnist")
    load("auc >= 0.9", "vgae-cora")
    load("perplexity <= 5", "gpt-shakespeare-cpu")
    with pytest.raises(ConfigError, match="gpt runs write no test_\\* losses; change the target to one of val_loss"):
        load("test_loss <= 5", "gpt-shakespeare-cpu")


def test_real_pipeline_round_trip(tmp_path, data_root):
    """Real rounds on MNIST: a 2-step VAE misses the test-loss target (about 543 nats), the
    continue action trains the same run on to step 20 (about 462 nats), which passes."""
    p = _write(tmp_path, f"""
target: test_loss <= 500
candidates: [{{config: vae-mnist, set: [{', '.join(TINY_VAE)}]}}]
budget: {{steps: 2}}
retrain: {{actions: [continue], more: {{steps: 18}}}}
max_rounds: 3
""")
    r = run_cli("pipeline", str(p), "--out", str(tmp_path / "out"), "--dry-run")
    assert r.returncode == 0 and "target: test_loss <= 500" in r.stdout
    r = run_cli("pipeline", str(p), "--out", str(tmp_path / "out"), "--data-root", str(data_root))
    assert r.returncode == 0, r.stderr
    assert "Passed: test_loss" in r.stdout and "in round 2 of 2" in r.stdout
    hist = read_history(tmp_path / "out")
    assert [(h.action, h.step, h.passed, h.decision) for h in hist] == [
        ("start", 2, False, "continue"), ("continue", 20, True, "pass")]
    assert hist[0].run_dir == hist[1].run_dir and hist[1].value < hist[0].value
    run = Path(hist[1].run_dir)
    assert json.loads((run / "report.json").read_text())["step"] == 20  # the test losses are the continued run's
    best = tmp_path / "out" / "best"
    assert (best / "samples" / "pipeline-final.png").is_file() and (best / "config.yaml").is_file()
