"""Property-conditioned molecule runs (data.condition): bin tokens in the corpus, quantile bin
edges, conditioned sampling from "\\n<bin>", the success rate, and the errors."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from genlab.errors import ConfigError
from tests.conftest import DATA, main_fails_in_one_line

pytest.importorskip("rdkit")
pytestmark = pytest.mark.usefixtures("one_thread")

from genlab.data import molecule_condition as C  # noqa: E402
from genlab.data import molecules as D  # noqa: E402
from genlab.metrics import molecules as M  # noqa: E402

ZINC = DATA / "molecules" / "zinc250k_jtnn_test_5k.csv" if DATA else None
TINY = ["train.test_batches=2", "model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=32", "model.dropout=0.0",
        "train.batch_size=4", "train.log_every=1", "train.eval_every=1000", "train.eval_batches=1",
        "train.sample_every=1000", "train.ckpt_every=1000", "train.warmup_steps=1", "train.amp=off"]


def zinc(n: int) -> list[str]:
    with open(ZINC) as f:
        return [M.canonical(row[0]) for row in list(csv.reader(f))[1:n + 1]]


def smi_file(tmp_path, n: int):
    path = tmp_path / f"z{n}.smi"
    path.write_text("\n".join(zinc(n)) + "\n")
    return path


def data_cfg(path, **kw):
    from genlab.config import DataConfig

    return DataConfig(dataset="smiles", tokenizer="smiles", path=str(path), val_size=10, **kw)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A conditioned (qed, 5 bins) and an unconditioned tiny SMILES GPT, 2 steps on 200 ZINC molecules."""
    import genlab

    base = tmp_path_factory.mktemp("condruns")
    path = smi_file(base, 200)
    common = [f"data.path={path}", "data.val_size=10", *TINY]
    return {"cond": genlab.train("smiles-gpt-moses", base / "cond", steps=2,
                                 overrides=common + ["data.condition=qed", "data.condition_bins=5"]).run_dir,
            "plain": genlab.train("smiles-gpt-moses", base / "plain", steps=2, overrides=common).run_dir}


# --------------------------------------------------------------------------- corpus


def test_bin_tokens_prefix_every_molecule_and_round_trip(tmp_path, monkeypatch):
    path = smi_file(tmp_path, 60)
    plain = D.load_molecule_data(data_cfg(path), None, block_size=16)
    data = D.load_molecule_data(data_cfg(path, condition="qed", condition_bins=4), None, block_size=16)
    cond = C.Condition.from_meta(data.molecules["condition"])
    assert cond.tokens == ["<qed:0>", "<qed:1>", "<qed:2>", "<qed:3>"]
    # the bin tokens come after the SMILES tokens, which keep the ids of the unconditioned run
    assert data.tokenizer.tokens == plain.tokenizer.tokens + cond.tokens
    assert data.tokenizer.condition_ids == {plain.tokenizer.vocab_size + k for k in range(4)}
    assert not plain.tokenizer.condition_ids and not (set(plain.train_x.tolist()) & data.tokenizer.condition_ids)
    # every training molecule follows "\n" + the token of its own QED's bin, and decodes back
    lines = data.tokenizer.decode(data.train_x.tolist()).split("\n")[1:]
    qed = M.properties(data.train_smiles, names=("qed",))["qed"]
    assert lines == [cond.tokens[k] + s for k, s in zip(C.bin_of(qed, cond.edges), data.train_smiles)]
    assert data.tokenizer.split(lines[0])[0] in cond.tokens and data.tokenizer.split(lines[0])[1:] == \
        data.tokenizer.split(data.train_smiles[0])
    from genlab.data.text import tokenizer_from_json

    again = tokenizer_from_json(data.tokenizer.to_json())
    assert again.tokens == data.tokenizer.tokens and again.condition_ids == data.tokenizer.condition_ids
    # the property was computed once: a second load reads it from the cache beside the canonical SMILES
    monkeypatch.setattr(M, "properties", lambda *a, **k: pytest.fail("recomputed a cached property"))
    D.load_molecule_data(data_cfg(path, condition="qed", condition_bins=4), None, block_size=16)


def test_bin_edges_are_quantiles_of_the_training_property_by_hand():
    v = np.sort(M.properties(zinc(50), names=("qed",))["qed"])
    edges = C.bin_edges(v[::-1].copy(), 10)  # order does not matter
    # NumPy's linear quantile at k/10 of 50 values sits at position 4.9k between sorted values
    assert edges[0] == v[0] and edges[10] == v[49]
    assert edges[1] == pytest.approx(v[4] + 0.9 * (v[5] - v[4]))
    assert edges[5] == pytest.approx((v[24] + v[25]) / 2)
    assert edges[9] == pytest.approx(v[44] + 0.1 * (v[45] - v[44]))
    cond = C.fit_condition("qed", 10, v)
    assert cond.train_counts == [5] * 10 and cond.base_rate(9) == 0.1
    # the outer bins are open; the maximum falls in the top bin, a value between edges in the bin below it
    assert list(C.bin_of([-1.0, v[0], v[4], v[5], v[49], 2.0], edges)) == [0, 0, 0, 1, 9, 9]
    assert cond.bounds(0) == (-math.inf, edges[1]) and cond.bounds(9) == (edges[9], math.inf)


def test_run_bins_use_the_training_molecules_only(runs):
    meta = json.loads((runs["cond"] / "data.json").read_text())["molecules"]
    assert meta["train"] == 190 and meta["condition"]["bins"] == 5 and sum(meta["condition"]["train_counts"]) == 190
    import genlab

    data = genlab.load(runs["cond"]).data()
    qed = M.properties(data.train_smiles, names=("qed",))["qed"]
    assert meta["condition"]["edges"] == pytest.approx(list(np.quantile(qed, np.linspace(0, 1, 6))))


# --------------------------------------------------------------------------- sampling


def test_conditioned_rows_start_from_the_requested_token(runs, monkeypatch):
    import genlab

    run = genlab.load(runs["cond"])
    tok = run.tokenizer
    prompts = []
    step = run.model.forward_step

    def spy(idx, state):
        prompts.append(idx.clone())
        return step(idx, state)

    monkeypatch.setattr(run.model, "forward_step", spy)
    mols = D.sample_molecules(run.model, tok, 6, seed=0, max_tokens=12, batch_size=4, condition="<qed:3>")
    first = [p for p in prompts if p.shape[1] == 2]  # one first pass per batch: (4, 2) and (2, 2)
    assert [p.shape[0] for p in first] == [4, 2]
    for p in first:
        assert (p[:, 0] == tok.stoi["\n"]).all() and (p[:, 1] == tok.stoi["<qed:3>"]).all()
    assert len(mols) == 6 and not any(m.startswith("<qed:3>") for m in mols)  # the prompt is not the molecule
    # unconditioned sampling of a conditioned run: the model's own first bin token is not part of the molecule
    prompts.clear()
    free = D.sample_molecules(run.model, tok, 4, seed=0, max_tokens=12)
    assert prompts[0].shape == (4, 1)
    assert not any(m.startswith("<") for m in free)


def test_sample_cli_condition_value_and_bin(runs, capsys):
    from genlab.cli import main

    cond = C.run_condition(json.loads((runs["cond"] / "data.json").read_text()))
    assert cond.resolve("bin:2") == 2 and cond.resolve(cond.edges[-1]) == 4
    assert cond.resolve((cond.edges[1] + cond.edges[2]) / 2) == 1
    assert main(["sample", str(runs["cond"]), "--n", "3", "--condition", "bin:4"]) == 0
    assert len(capsys.readouterr().out.split("\n")) == 4  # --n molecules, one a line
    main_fails_in_one_line(capsys, ["sample", str(runs["cond"]), "--n", "3", "--condition", "1.5"],
                           "--condition 1.5 is outside the qed range", "bin:K (K in 0..4)")
    main_fails_in_one_line(capsys, ["sample", str(runs["cond"]), "--condition", "bin:5"], "bins 0..4 of qed")


# --------------------------------------------------------------------------- success rate


def test_success_rate_by_hand():
    # 5 samples, one invalid: 0.9 and 0.95 are in [0.85, inf); 0.85 is in (lower edge inclusive)
    assert M.condition_success([0.9, None, 0.5, 0.95, 0.8], 0.85, math.inf) == pytest.approx(2 / 5)
    assert M.condition_success([0.85, 0.86, None, None], 0.85, 0.86) == 0.25  # upper edge exclusive
    with pytest.raises(ValueError):
        M.condition_success([], 0, 1)


def test_bin_scores_by_hand(monkeypatch):
    from genlab.evaluation.molecule_condition import bin_scores

    # weights: C 16.04, CCCC 58.12, CCCCCCCC 114.23 Da; bins [-inf, 50), [50, inf); 1 of 4 training molecules on top
    cond = C.Condition("weight", [10.0, 50.0, 120.0], [3, 1])
    asked = []

    def fake(model, tok, n, **kw):
        asked.append(kw["condition"])
        return ["C", "CCCC", "C1CC", "CCCCCCCC"]

    monkeypatch.setattr(D, "sample_molecules", fake)

    class Stub:
        model = type("M", (), {"eval": lambda self: self})()

    data = type("Data", (), {"tokenizer": None, "max_tokens": lambda self: 10})()
    s = bin_scores(Stub(), data, cond, 1, 4, 0)
    assert asked == ["<weight:1>"]
    assert s["success"] == 0.5 and s["validity"] == 0.75 and s["in_bin_of_valid"] == pytest.approx(2 / 3)
    assert s["base_rate"] == 0.25 and s["range"] == [50.0, None]


def test_evaluate_reports_the_success_rate_beside_the_base_rate(runs):
    from genlab.evaluation import evaluate

    report = evaluate(runs["cond"], n=8, metrics=["condition_success"], html=False,
                      out=runs["cond"] / "cond-report.json")
    m = report["metrics"]["condition_success"]
    assert m["bin"] == 4 and m["token"] == "<qed:4>" and m["n"] == 8
    assert m["base_rate"] == pytest.approx(json.loads((runs["cond"] / "data.json").read_text())
                                           ["molecules"]["condition"]["train_counts"][4] / 190)
    assert m["value"] == pytest.approx(m["validity"] * m["in_bin_of_valid"])


# --------------------------------------------------------------------------- errors


def test_unknown_property_and_unconditionable_runs_are_refused():
    from genlab.config import resolve

    with pytest.raises(ConfigError, match="data.condition must be qed, logp, sa or weight .*got 'tpsa'"):
        resolve("smiles-gpt-moses", ["data.condition=tpsa"])
    with pytest.raises(ConfigError, match="conditions a SMILES/SELFIES GPT or LSTM.*data.tokenizer=char"):
        resolve("gpt-shakespeare-cpu", ["data.condition=qed"])
    with pytest.raises(ConfigError, match="data.condition_bins must be >= 2"):
        resolve("smiles-lstm-moses", ["data.condition=qed", "data.condition_bins=1"])
    assert resolve("smiles-lstm-moses", ["data.condition=logp"]).data.condition == "logp"


def test_condition_on_an_unconditioned_run_is_one_line_error(runs, capsys):
    main_fails_in_one_line(capsys, ["sample", str(runs["plain"]), "--n", "2", "--condition", "0.9"],
                           "trained without data.condition", "--set data.condition=qed")
    main_fails_in_one_line(capsys, ["evaluate", str(runs["plain"]), "--n", "4", "--metrics", "condition_success",
                                    "--no-html"], "condition_success", "trained without data.condition")
    import genlab

    run = genlab.load(runs["plain"])
    with pytest.raises(ConfigError, match="trained with the <qed:1> token"):
        D.sample_molecules(run.model, run.tokenizer, 2, condition="<qed:1>")
