"""Molecules: the SMILES/SELFIES tokenizers, reading and validating SMILES files, the MOSES
metric functions against hand values, and one tiny SMILES GPT through train, sample, evaluate."""

from __future__ import annotations

import csv
import gzip
import json
import math
import re

import numpy as np
import pytest
import torch

from genlab.errors import ConfigError, DataError
from tests.conftest import DATA, main_fails_in_one_line, run_cli

pytest.importorskip("rdkit")
pytestmark = pytest.mark.usefixtures("one_thread")

from genlab.data import molecules as D  # noqa: E402
from genlab.metrics import molecules as M  # noqa: E402

MOSES = DATA / "molecules" / "moses" if DATA else None
ZINC = DATA / "molecules" / "zinc250k_jtnn_test_5k.csv" if DATA else None
TINY_SMILES = ["train.test_batches=2", "model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=32", "model.dropout=0.0",
               "train.batch_size=4", "train.log_every=1", "train.eval_every=1000", "train.eval_batches=1",
               "train.sample_every=1000", "train.ckpt_every=1000", "train.warmup_steps=1", "train.amp=off"]


def moses_test_smiles() -> list[str]:
    with gzip.open(MOSES / "test.csv.gz", "rt") as f:
        return [row[0] for row in list(csv.reader(f))[1:]]


def zinc(n: int) -> list[str]:
    with open(ZINC) as f:
        return [row[0] for row in list(csv.reader(f))[1:n + 1]]


# --------------------------------------------------------------------------- tokenizers


def test_smiles_tokenizer_round_trips_every_moses_test_molecule():
    smiles = moses_test_smiles()
    assert len(smiles) == 176_074
    tok = D.MoleculeTokenizer.train("smiles", "\n".join(smiles))
    ids = D.encode_molecules(tok, smiles)
    # the corpus decodes to exactly "\n" + the molecules joined by "\n", so each one round-trips
    assert tok.decode(ids.tolist()).split("\n")[1:] == smiles
    # atom-level: two-letter atoms and bracket atoms are one token each
    assert {"Cl", "Br", "[nH]"} <= set(tok.tokens) and not {"l", "r", "["} & set(tok.tokens)
    assert tok.split("C[C@@H](Cl)c1%10") == ["C", "[C@@H]", "(", "Cl", ")", "c", "1", "%10"]


def test_tokenizer_names_uncovered_characters_and_unknown_tokens():
    tok = D.MoleculeTokenizer.train("smiles", "CCO\nc1ccccc1")
    with pytest.raises(DataError, match=r"'\?' at position 2"):
        tok.split("CC?O")
    with pytest.raises(DataError, match=r"outside this run's .*'Cl'"):
        tok.encode("CCl")
    from genlab.data.text import tokenizer_from_json

    again = tokenizer_from_json(tok.to_json())
    assert again.tokens == tok.tokens and again.kind == "smiles"


def test_kekule_corpus_has_no_aromatic_atoms_and_reads_back_as_the_same_molecules():
    """data.kekulize: the SMILES a run trains on and encodes are written with explicit single and
    double bonds: no aromatic (lowercase) atom is left, RDKit reads each back as the molecule it
    was, and the run's tokenizer.json keeps the flag (old files, without it, read as aromatic)."""
    from genlab.data.text import tokenizer_from_json

    canon = [M.canonical(s) for s in ["c1ccccc1O", "Cc1ccncc1", "O=C(Nc1ccc2[nH]ccc2c1)C1CC1", "CCOC(=O)Cl"]]
    tok = D.MoleculeTokenizer.train("smiles", "\n".join(D._corpus(canon, "smiles", kekulize=True)), kekulize=True)
    kek = tok.corpus(canon)
    assert kek[3] == canon[3] and kek[0] != canon[0]  # nothing aromatic in the ester: unchanged
    for k, c in zip(kek, canon):
        assert not [t for t in tok.split(k) if t.strip("[]")[:1].islower()], k
        assert M.canonical(k) == c
    assert "c" in D.MoleculeTokenizer("smiles", []).corpus(canon)[0]  # without the flag: as given
    back = tokenizer_from_json(tok.to_json())
    assert back.kekulize and back.tokens == tok.tokens and back.corpus(canon) == kek
    assert not tokenizer_from_json(D.MoleculeTokenizer("smiles", ["C", "\n"]).to_json()).kekulize


def test_kekulize_in_the_data_layer(tmp_path, monkeypatch):
    """A data.kekulize run's corpus and vocabulary hold no aromatic atom; its molecules for the
    metrics stay canonical (aromatic) SMILES. The Kekule corpus is cached: a second load reads it."""
    from genlab.config import DataConfig

    path = tmp_path / "m.smi"
    path.write_text("\n".join(["c1ccccc1O", "Cc1ccncc1", "c1ccc2[nH]ccc2c1", "CCO", "CC(=O)Nc1ccccc1", "OCc1ccco1"]))
    cfg = DataConfig(dataset="smiles", tokenizer="smiles", path=str(path), kekulize=True, val_size=2)
    data = D.load_molecule_data(cfg, tmp_path, block_size=16)
    assert data.tokenizer.kekulize and not [t for t in data.tokenizer.tokens if t.strip("[]")[:1].islower()]
    assert any("c" in s for s in data.train_smiles)  # canonical, aromatic: what generated molecules are scored against
    monkeypatch.setattr(D, "_corpus", lambda *a, **k: pytest.fail("wrote the Kekule corpus again"))
    again = D.load_molecule_data(cfg, tmp_path, block_size=16)
    assert torch.equal(again.train_x, data.train_x) and torch.equal(again.val_x, data.val_x)


def test_selfies_tokenizer_round_trips_molecules():
    smiles = [M.canonical(s) for s in zinc(200)]
    corpus = D._corpus(smiles, "selfies")
    tok = D.MoleculeTokenizer.train("selfies", "\n".join(corpus))
    assert all(t == "\n" or (t.startswith("[") and t.endswith("]")) for t in tok.tokens)
    back = tok.decode(D.encode_molecules(tok, corpus).tolist()).split("\n")[1:]
    assert back == corpus
    assert [M.canonical(tok.to_smiles(s)) for s in back] == smiles


# --------------------------------------------------------------------------- reading files


def write_csv(path, rows, header="SMILES"):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_bad_smiles_file_is_one_line_error_naming_the_line(tmp_path):
    bad = write_csv(tmp_path / "bad.csv", ["CCO", "C1CC(", "c1ccccc1"])
    with pytest.raises(DataError, match=r"1 of 3 lines are not valid SMILES, first at line 3: 'C1CC\('") as e:
        D.load_molecules(bad)
    assert "\n" not in str(e.value)


def test_bad_smiles_file_through_the_cli(tmp_path, capsys):
    bad = write_csv(tmp_path / "bad.csv", ["CCO", "hello", "c1ccccc1"])
    main_fails_in_one_line(capsys, ["train", "smiles-gpt-moses", "--out", str(tmp_path / "run"), "--steps", "1",
                                    "--set", f"data.path={bad}"], "line 3: 'hello'", "bad.csv")


def test_a_few_invalid_lines_are_counted_and_named_not_dropped_silently(tmp_path, caplog):
    rows = zinc(40)
    rows.insert(10, "C1CC")  # file line 12 (header = line 1)
    mols = D.load_molecules(write_csv(tmp_path / "m.csv", rows, header="smiles"))  # the column case-folded
    assert mols.read == 41 and len(mols.smiles) == 40 and mols.invalid == [(12, "C1CC")]
    assert "1 of 41 lines are not valid SMILES" in caplog.text and "line 12" in caplog.text
    assert mols.smiles[0] == M.canonical(rows[0])
    again = D.load_molecules(tmp_path / "m.csv")
    assert again.cached and again.smiles == mols.smiles and again.invalid == mols.invalid


def test_the_molecule_cache_follows_the_file_content_not_its_path_or_time(tmp_path):
    rows = zinc(12)
    D.load_molecules(write_csv(tmp_path / "a.csv", rows, header="smiles"))
    (tmp_path / "copy").mkdir()
    copy = write_csv(tmp_path / "copy" / "b.csv", rows, header="smiles")  # a fresh checkout: new path and mtime
    assert D.load_molecules(copy).cached
    edited = write_csv(tmp_path / "c.csv", rows[:-1] + ["CCO"], header="smiles")
    again = D.load_molecules(edited)
    assert not again.cached and again.smiles[-1] == "CCO"


def test_wrong_column_and_smi_files(tmp_path):
    with pytest.raises(ConfigError, match="no column 'SMILES' .*set data.column"):
        D.load_molecules(write_csv(tmp_path / "x.csv", ["CCO"], header="name,mol"))
    smi = tmp_path / "x.smi"
    smi.write_text("CCO ethanol\n\nOCC second\nc1ccccc1\n")
    mols = D.load_molecules(smi)
    assert mols.smiles == ["CCO", "CCO", "c1ccccc1"] and mols.read == 3


def test_max_molecules_is_a_fixed_subset_in_file_order(tmp_path):
    rows = zinc(100)
    path = write_csv(tmp_path / "z.csv", rows, header="smiles")
    a = D.load_molecules(path, "smiles", max_molecules=30, use_cache=False)
    b = D.load_molecules(path, "smiles", max_molecules=30, use_cache=False)
    canon = [M.canonical(s) for s in rows]
    assert a.smiles == b.smiles and len(a.smiles) == 30
    idx = [canon.index(s) for s in a.smiles]
    assert idx == sorted(idx)


# --------------------------------------------------------------------------- metrics: hand values


def test_validity_uniqueness_novelty_by_hand():
    gen = ["CCO", "C1CC", "xyz", "c1ccccc1", "OCC", ""]
    assert M.validity(gen) == pytest.approx(3 / 6)
    valid = M.canonical_valid(gen)
    assert valid == ["CCO", "c1ccccc1", "CCO"]  # OCC is ethanol again
    assert M.unique_at(valid, 2) == 1.0 and M.unique_at(valid, 3) == pytest.approx(2 / 3)
    assert M.unique_at(valid, 10_000) == pytest.approx(2 / 3)  # fewer than k: all of them
    assert M.novelty(valid, [M.canonical("OCC")]) == 0.5  # of {ethanol, benzene} only benzene is new
    assert M.novelty(valid, []) == 1.0


def test_tanimoto_intdiv_snn_by_hand():
    a = np.array([[1, 1, 0, 0]], np.uint8)
    b = np.array([[1, 0, 1, 0]], np.uint8)
    assert M.tanimoto_matrix(a, b)[0, 0] == pytest.approx(1 / 3)  # |a&b| = 1, |a|b| = 3
    fps = np.concatenate([a, b])
    # ordered pairs (diagonal included): (1 + 1 + 1/3 + 1/3) / 4 = 2/3
    assert M.internal_diversity(fps) == pytest.approx(1 / 3)
    assert M.internal_diversity(fps, p=2) == pytest.approx(1 - math.sqrt((2 + 2 / 9) / 4))
    assert M.internal_diversity(np.concatenate([a, a])) == pytest.approx(0.0)
    ref = np.array([[1, 1, 0, 1], [0, 0, 1, 0]], np.uint8)
    # a: best 2/3 (first ref); b: best max(1/4, 1/2) = 1/2
    assert M.snn(fps, ref) == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_intdiv_agrees_with_rdkit_tanimoto():
    from rdkit import DataStructs
    from rdkit.Chem import rdFingerprintGenerator

    smiles = ["CCOc1ccccc1", "CCNc1ccccc1"]
    g = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=1024)
    t = DataStructs.TanimotoSimilarity(*(g.GetFingerprint(M.to_mol(s)) for s in smiles))
    assert 0 < t < 1
    assert M.internal_diversity(M.fingerprints(smiles)) == pytest.approx((1 - t) / 2)


def test_fragments_scaffolds_and_cosine_by_hand():
    assert M.cosine_counts({"a": 1, "b": 1}, {"a": 1}) == pytest.approx(1 / math.sqrt(2))
    assert M.cosine_counts({"a": 2}, {}) == 0.0
    scaf = M.scaffold_counts(["CCc1ccc(-c2ccccc2)cc1", "c1ccc(-c2ccccc2)cc1", "Cc1ccccc1", "CCO"])
    assert scaf == {"c1ccc(-c2ccccc2)cc1": 2}  # one-ring and acyclic molecules have no scaffold here
    frags = M.fragment_counts(["CCOC(=O)c1ccccc1"])
    assert sum(frags.values()) >= 2 and all("*" in f or "[" in f for f in frags)


def test_filters_follow_moses_rules():
    keep = ["CCO", "CC(=O)Nc1ccc(O)cc1"]
    assert M.filters(keep) == 1.0
    for bad in ("C[N+](C)(C)C",  # charged
                "C1CCCCCCC1",  # 8-ring
                "CCP",  # P not allowed
                "CC1OC1",  # epoxide (MCF5)
                "CC=O"):  # aldehyde (MCF7)
        assert M.filters([bad]) == 0.0, bad
    assert M.filters(keep + ["CC1OC1"]) == pytest.approx(2 / 3)


def test_wasserstein_and_properties():
    assert M.wasserstein_1d([0.0, 1.0], [0.0, 1.0]) == 0.0
    assert M.wasserstein_1d([0.0], [1.0]) == 1.0
    assert M.wasserstein_1d([0.0, 1.0], [1.0, 2.0]) == pytest.approx(1.0)
    assert M.wasserstein_1d([0.0, 0.0, 3.0], [0.0]) == pytest.approx(1.0)  # a third of the mass moves 3
    p = M.properties(["CCO", "c1ccccc1"])
    assert p["weight"] == pytest.approx([46.069, 78.114], abs=1e-2)
    assert ((p["qed"] > 0) & (p["qed"] < 1)).all() and ((p["sa"] >= 1) & (p["sa"] <= 10)).all()


def test_fcd_of_a_set_with_itself_is_about_zero():
    a = [M.canonical(s) for s in zinc(100)]
    sa = M.chemnet_stats(a)
    assert sa["mu"].shape == (512,) and sa["sigma"].shape == (512, 512)
    assert M.frechet_distance(sa, sa) < 1e-3
    other = M.chemnet_stats(["C" * k for k in range(1, 40)] + ["O" + "C" * k for k in range(1, 40)])
    assert M.frechet_distance(sa, other) > 10


# --------------------------------------------------------------------------- one tiny run


def test_smiles_gpt_trains_samples_and_evaluates(tmp_path, data_root):
    run = tmp_path / "run"
    r = run_cli("train", "smiles-gpt-moses", "--out", str(run), "--steps", "2", "--set", "data.max_molecules=2000",
                "--set", "data.reference_size=100", *[x for s in TINY_SMILES for x in ("--set", s)])
    assert r.returncode == 0, r.stderr
    data = json.loads((run / "data.json").read_text())
    assert data["molecules"]["train"] == 1900 and data["molecules"]["val"] == 100
    assert json.loads((run / "tokenizer.json").read_text())["genlab_tokenizer"] == "smiles"
    r = run_cli("sample", str(run), "--n", "8", "--out", str(tmp_path / "m.smi"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    assert len(lines) == 9 and lines[-1] == ""  # exactly --n molecules, one a line
    assert all(re.fullmatch(r"[A-Za-z0-9\[\]()=#+\-@/\\%.]*", x) for x in lines)
    assert (tmp_path / "m.smi").read_text() == r.stdout
    # --smiles-syntax: every finished molecule is complete SMILES (RDKit parses it unsanitised)
    from rdkit import Chem

    r = run_cli("sample", str(run), "--n", "30", "--smiles-syntax", "--seed", "2")
    assert r.returncode == 0, r.stderr
    held = [x for x in r.stdout.split("\n")[:-1] if x]
    assert held and all(Chem.MolFromSmiles(x, sanitize=False) is not None for x in held)
    r = run_cli("evaluate", str(run), "--n", "50")
    assert r.returncode == 0, r.stderr
    metrics = json.loads((run / "report.json").read_text())["metrics"]
    from genlab.evaluation.molecules import METRICS

    assert "validity" in metrics and 0 <= metrics["validity"]["value"] <= 1 and metrics["validity"]["n"] == 50
    assert set(metrics) - {"val_loss"} <= set(METRICS)  # val_loss: written by training
    assert metrics["validity"]["sampling"] == "temperature 1"
    # --temperature: the molecules are sampled at T, which is recorded with the metric
    r = run_cli("evaluate", str(run), "--n", "30", "--metrics", "validity", "--temperature", "0.5",
                "--out", str(tmp_path / "t05.json"), "--no-html")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "t05.json").read_text())["metrics"]["validity"]["sampling"] == "temperature 0.5"
    r = run_cli("evaluate", str(run), "--n", "30", "--metrics", "validity", "--smiles-syntax",
                "--out", str(tmp_path / "syn.json"), "--no-html")
    assert r.returncode == 0, r.stderr
    got = json.loads((tmp_path / "syn.json").read_text())["metrics"]["validity"]["sampling"]
    assert got == "temperature 1, SMILES syntax"
    r = run_cli("evaluate", str(run), "--n", "30", "--temperature", "0")
    assert r.returncode != 0 and "--temperature must be > 0" in r.stderr and r.stderr.count("\n") == 1


def test_reference_statistics_are_cached_by_their_molecules(monkeypatch):
    from genlab.evaluation.molecules import Reference, score_molecules

    ref = [M.canonical(s) for s in zinc(30)]
    first = Reference("zinc", ref).fingerprints()
    monkeypatch.setattr(M, "fingerprints", lambda s: pytest.fail("recomputed a cached reference"))
    assert (Reference("zinc", ref).fingerprints() == first).all()  # read back from the cache
    assert Reference("zinc", ref[:29]).folder != Reference("zinc", ref).folder  # other molecules, other key
    monkeypatch.undo()
    scores = score_molecules(ref[:10] + ["C1CC"], ref[:5], {"": Reference("zinc", ref)},
                             ["validity", "novelty", "snn", "frag"])
    assert scores["validity"][0] == pytest.approx(10 / 11) and scores["novelty"][0] == 0.5
    assert scores["snn"][0] == pytest.approx(1.0)  # every generated molecule is in the reference
    assert 0 < scores["frag"][0] <= 1


def test_catalog_describes_every_molecule_metric():
    from genlab.evaluation.molecules import METRICS
    from genlab.metrics import catalog

    assert all(catalog.known(m) for m in METRICS)
    assert catalog.arrow("fcd") == "↓" and catalog.arrow("validity") == "↑" and catalog.arrow("wd_sa") == "↓"
    assert set(catalog.key_metrics("molecules")) <= set(METRICS)


def test_missing_rdkit_names_the_molecules_extra(monkeypatch, tmp_path):
    from tests.test_extras import _block

    path = write_csv(tmp_path / "m.csv", ["CCO"])
    _block(monkeypatch, "rdkit")
    with pytest.raises(ConfigError, match=r"molecule data .*needs the molecules extra \(rdkit is missing\)"):
        D.load_molecules(path)


def test_smiles_dataset_needs_a_molecule_tokenizer():
    from genlab.config import resolve
    from genlab.errors import ConfigError

    assert resolve("smiles-lstm-moses").data.dataset == "smiles"
    with pytest.raises(ConfigError, match="set data.tokenizer=smiles or selfies"):
        resolve("smiles-gpt-moses", ["data.tokenizer=char"])
    with pytest.raises(ConfigError, match="data.kekulize .* needs data.tokenizer=smiles"):
        resolve("smiles-gpt-moses", ["data.tokenizer=selfies", "data.kekulize=true"])
