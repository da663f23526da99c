"""`genlab audit` and TSTR: the attack summaries against scikit-learn, nearest neighbours against
brute force, membership inference on a model that memorised 16 images and on one that memorised
nothing, memorisation of a planted copy, the CLI's report and refusals, TSTR, train_on=test."""

import importlib.util
import io
import json
import types
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score, roc_curve

import genlab
from genlab.cli import main
from genlab.config import DataConfig
from genlab.data.datasets import load_idx_split, load_image_data
from genlab.engine.run import load
from genlab.errors import ConfigError, ShapeError
from genlab.evaluation.privacy import AuditOptions, audit, memorisation
from genlab.metrics.classifier import predict, train_lenet
from genlab.metrics.features import get_extractor
from genlab.metrics.privacy import (
    NEAR_COPY_RATIO,
    auc_standard_error,
    distance_ratio,
    nearest_neighbours,
    roc_auc,
    tpr_at_fpr,
)
from tests.conftest import ROOT, TINY_VAE, main_fails_in_one_line

pytestmark = pytest.mark.usefixtures("one_thread")

ATTACK_KEYS = {"auc", "auc_se", "tpr_at_fpr_0.01", "tpr_at_fpr_0.001", "members", "nonmembers", "seed", "seconds"}
# A small MLP VAE that memorises its 16 training images: 500 steps at a high learning rate, no EMA.
MEMORISE = TINY_VAE + ["data.train_size=16", "train.batch_size=16", "train.lr=3e-3", "train.ema_decay=0"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_root):
    """memorised: vae-mnist on 16 training images; reference: the same model trained on the test
    split (data.train_on=test) for a few steps; cvae: a conditional VAE, 20 steps on 5,000 images."""
    base = tmp_path_factory.mktemp("audit")
    torch.set_num_threads(1)
    root = str(data_root)
    memorised = genlab.train("vae-mnist", base / "memorised", overrides=MEMORISE, steps=500, data_root=root)
    reference = genlab.train("vae-mnist", base / "reference", steps=20, data_root=root,
                             overrides=TINY_VAE + ["data.train_on=test", "train.ema_decay=0"])
    # (5,000 training images: the memorisation figures compare samples with every one of them)
    cvae = genlab.train("cvae-mnist", base / "cvae", overrides=TINY_VAE + ["data.train_size=5000"], steps=20,
                        data_root=root)
    return types.SimpleNamespace(memorised=memorised.run_dir, reference=reference.run_dir, cvae=cvae.run_dir)


# --------------------------------------------------------------------------- the pure functions


def test_roc_auc_matches_sklearn_and_hand_computed_cases():
    # hand-computed: every member above every non-member; one tie; (1,2) vs (2,3): one tie out of 4 pairs
    assert roc_auc([3.0], [1.0, 2.0]) == 1.0
    assert roc_auc([1.0], [1.0]) == 0.5
    assert roc_auc([1.0, 2.0], [2.0, 3.0]) == 0.5 / 4
    assert roc_auc(torch.tensor([0.0, 0.0]), np.array([1.0])) == 0.0
    rng = np.random.default_rng(0)
    for _ in range(50):
        m_n = rng.integers(1, 80, size=2)
        members = rng.integers(0, 6, m_n[0]) + rng.normal(0, 1, m_n[0]) * rng.integers(0, 2)  # with and without ties
        nonmembers = rng.integers(0, 6, m_n[1]).astype(float)
        truth = roc_auc_score(np.r_[np.ones(len(members)), np.zeros(len(nonmembers))], np.r_[members, nonmembers])
        assert roc_auc(members, nonmembers) == pytest.approx(truth, abs=1e-12)
    with pytest.raises(ShapeError, match="non-empty"):
        roc_auc([], [1.0])
    with pytest.raises(ShapeError, match="NaN"):
        roc_auc([float("nan")], [1.0])


def test_tpr_at_fpr_matches_sklearn_roc_curve_and_hand_computed_cases():
    members, nonmembers = [0.9, 0.8, 0.3], [0.85, 0.2, 0.1, 0.05]
    assert tpr_at_fpr(members, nonmembers, 0.0) == pytest.approx(1 / 3)  # only 0.9 beats every non-member
    assert tpr_at_fpr(members, nonmembers, 0.2) == pytest.approx(1 / 3)  # 1/4 FPR is not allowed yet
    assert tpr_at_fpr(members, nonmembers, 0.25) == 1.0  # one false positive (0.85) allowed: all members above 0.2
    assert tpr_at_fpr(members, nonmembers, 1.0) == 1.0
    assert tpr_at_fpr([1.0, 1.0], [1.0, 1.0], 0.5) == 0.0  # ties: a threshold at 1 flags both non-members
    rng = np.random.default_rng(1)
    for _ in range(50):
        m_n = rng.integers(1, 300, size=2)
        members = rng.normal(rng.uniform(0, 2), 1, m_n[0]).round(rng.integers(1, 3))  # rounded: ties
        nonmembers = rng.normal(0, 1, m_n[1]).round(1)
        fpr, tpr, _ = roc_curve(np.r_[np.ones(len(members)), np.zeros(len(nonmembers))], np.r_[members, nonmembers],
                                drop_intermediate=False)
        for f in (0.0, 0.001, 0.01, 0.1, 0.29, 0.5):
            assert tpr_at_fpr(members, nonmembers, f) == pytest.approx(tpr[fpr <= f].max(), abs=1e-12), f
    with pytest.raises(ValueError, match="fpr"):
        tpr_at_fpr([1.0], [0.0], 1.5)


def test_auc_of_two_samples_of_one_distribution_is_about_half():
    g = torch.Generator().manual_seed(0)
    same = roc_auc(torch.randn(2000, generator=g), torch.randn(2000, generator=g))
    assert abs(same - 0.5) < 0.1
    assert abs(same - 0.5) < 4 * auc_standard_error(0.5, 2000, 2000)
    # and a real difference shows: members shifted by 1 sd give Phi(1 / sqrt(2)) = 0.760
    shifted = roc_auc(torch.randn(2000, generator=g) + 1, torch.randn(2000, generator=g))
    assert shifted == pytest.approx(0.760, abs=0.03)


def test_nearest_neighbours_match_brute_force():
    g = torch.Generator().manual_seed(2)
    for queries, reference in ((torch.randint(0, 256, (70, 1, 6, 6), generator=g, dtype=torch.uint8),
                                torch.randint(0, 256, (300, 1, 6, 6), generator=g, dtype=torch.uint8)),
                               (torch.randn(50, 16, generator=g), torch.randn(130, 16, generator=g))):
        brute = torch.cdist(queries.flatten(1).double(), reference.flatten(1).double(),
                            compute_mode="donot_use_mm_for_euclid_dist")  # (Q, R) pairwise, no shortcuts
        want_d, want_i = brute.topk(3, dim=1, largest=False)
        # small chunks: the running top-k is merged across many reference blocks and query chunks
        d, i = nearest_neighbours(queries, reference, 3, query_chunk=16, reference_chunk=37)
        assert torch.equal(i, want_i)
        assert torch.allclose(d, want_d, rtol=0, atol=1e-9)
        d1, i1 = nearest_neighbours(queries, reference, 1)
        assert torch.equal(i1[:, 0], want_i[:, 0])
    with pytest.raises(ShapeError, match="cannot find 3"):
        nearest_neighbours(torch.zeros(2, 4), torch.zeros(2, 4), 3)
    with pytest.raises(ShapeError, match="values per row"):
        nearest_neighbours(torch.zeros(2, 4), torch.zeros(5, 3), 1)
    r = distance_ratio(torch.tensor([[0.0, 2.0], [1.0, 4.0], [0.0, 0.0]]))
    assert r.tolist() == [0.0, 0.25, 0.0]  # a copy of an image held twice (0 / 0) is a copy


def test_memorisation_finds_a_planted_training_image(data_root):
    x, y = load_idx_split(data_root, "mnist", "test")
    train, samples, heldout = x[:300], x[300:400].clone(), x[400:450]
    samples[5] = train[3]  # the generator "copied" training image 3
    fig, png = memorisation(samples, train, heldout, extractor=get_extractor("lenet-mnist"), sample_labels=y[300:400])
    pixel = fig["spaces"]["pixel"]
    assert pixel["exact_copies"] == 1 and pixel["nearest_distance"]["min"] == 0.0
    assert pixel["ratio"]["min"] == 0.0 and pixel["near_copies"] >= 1 / 100
    assert fig["closest_pairs"][0] == {"sample": 5, "label": int(y[305]), "train_index": 3, "distance": 0.0,
                                       "ratio": 0.0}
    assert fig["spaces"]["lenet-mnist"]["ratio"]["min"] < 0.01  # same image, (nearly) the same features
    assert "near_copies" in pixel["heldout"] and pixel["heldout"]["n"] == 50
    # real test digits are not copies of other test digits: few fall under the 1/3 ratio
    assert pixel["heldout"]["near_copies"] < 0.1 and NEAR_COPY_RATIO == pytest.approx(1 / 3)
    img = Image.open(io.BytesIO(png))
    img.load()
    assert img.size[0] > 4 * 2 * 28  # four pairs of 28-pixel images per row


def test_train_lenet_learns_and_is_reproducible(data_root):
    x, y = load_idx_split(data_root, "mnist", "test")
    torch.manual_seed(7)
    before = torch.rand(3)
    torch.manual_seed(7)
    a = train_lenet(x[:1000], y[:1000], epochs=2, batch_size=50, lr=2e-3, seed=3)
    assert torch.equal(torch.rand(3), before)  # the caller's random stream is left where it was
    b = train_lenet(x[:1000], y[:1000], epochs=2, batch_size=50, lr=2e-3, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert (predict(a, x[5000:6000]) == y[5000:6000]).double().mean() > 0.8  # held-out digits
    with pytest.raises(ShapeError, match="at least batch_size"):
        train_lenet(x[:10], y[:10], epochs=1, batch_size=50, lr=1e-3, seed=0)
    # the script that trains the shipped weights uses this very function
    spec = importlib.util.spec_from_file_location("train_classifier", ROOT / "scripts" / "train_classifier.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.train_lenet is train_lenet and not hasattr(script, "train")


def test_membership_sets_fall_back_to_the_test_split_and_say_so():
    from genlab.evaluation.privacy import membership_sets

    def data(n_train, n_val, n_test):
        """Splits of 2x2 images filled with 1 (train), 2 (val) and 3 (test)."""
        x = {name: torch.full((n, 1, 2, 2), v, dtype=torch.uint8)
             for name, n, v in (("train", n_train, 1), ("val", n_val, 2), ("test", n_test, 3))}
        return types.SimpleNamespace(train_x=x["train"], train_y=torch.arange(n_train), val_x=x["val"],
                                     val_y=torch.arange(n_val), test_x=x["test"], test_y=torch.arange(n_test))

    members, nonmembers, notes = membership_sets(data(50, 40, 10), 20, seed=0)
    assert (members.split, nonmembers.split, len(members.x), len(nonmembers.x)) == ("train", "val", 20, 20)
    assert (members.x == 1).all() and (nonmembers.x == 2).all() and notes == []
    assert torch.equal(members.index, membership_sets(data(50, 40, 10), 20, seed=0)[0].index)  # fixed by the seed
    _, nonmembers, notes = membership_sets(data(50, 5, 30), 20, seed=0)  # too few validation images
    assert nonmembers.split == "test" and (nonmembers.x == 3).all() and "test split" in notes[0]
    # with a reference, which trained on the test split, the small validation split it is
    _, nonmembers, notes = membership_sets(data(50, 5, 30), 20, seed=0, allow_test=False)
    assert nonmembers.split == "val" and len(nonmembers.x) == 5 and "5 each" in notes[0]
    with pytest.raises(ConfigError, match="calibrated attack needs non-members from the validation split"):
        membership_sets(data(50, 0, 30), 20, seed=0, allow_test=False)


# --------------------------------------------------------------------------- attacks on real runs


def test_loss_attack_finds_the_members_of_a_model_that_memorised_them(runs):
    rep = audit(load(runs.memorised), AuditOptions(members=16, samples=64, draws=4, seed=0))
    mi = rep["membership"]
    assert mi["members"] == {"split": "train", "n": 16} and mi["nonmembers"] == {"split": "val", "n": 16}
    assert rep["memorisation"]["train_images"] == 16
    loss = mi["attacks"]["loss"]
    assert ATTACK_KEYS <= set(loss) and loss["draws"] == 4
    assert loss["auc"] >= 0.9
    assert mi["attacks"]["distance"]["auc"] > 0.5  # samples sit nearer to the 16 training images
    # same seed, same figures (scores are a function of the seed, not of the global stream)
    torch.manual_seed(123)
    again = audit(load(runs.memorised), AuditOptions(members=16, samples=64, draws=4, seed=0))
    assert again["membership"]["attacks"]["loss"]["auc"] == loss["auc"]


def test_attacks_on_a_model_that_memorised_nothing_are_near_chance(runs):
    # 20 steps of 32 over 5,000 images: members and non-members are two samples of one distribution
    rep = audit(load(runs.cvae), AuditOptions(members=300, samples=200, draws=2, seed=1))
    for name in ("loss", "distance"):
        assert abs(rep["membership"]["attacks"][name]["auc"] - 0.5) < 0.1, name
    assert rep["memorisation"]["spaces"]["pixel"]["near_copies"] < 0.05


def test_audit_refuses_non_image_runs():
    text_run = types.SimpleNamespace(family="text", run_dir="runs/gpt", cfg=types.SimpleNamespace(model_name="gpt"))
    with pytest.raises(ConfigError, match="genlab audit is for image runs; runs/gpt is a gpt text run"):
        audit(text_run, AuditOptions())


class _Images(HTMLParser):
    """The src of every <img> of a page."""

    def __init__(self):
        super().__init__()
        self.srcs = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


def _html_images(page):
    p = _Images()
    p.feed(page.read_text())
    return p.srcs


def test_cli_audit_writes_json_and_html(runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["audit", str(runs.memorised), "--reference", str(runs.reference), "--members", "16",
                 "--samples", "50", "--draws", "2", "--seed", "5", "--out", str(out)]) == 0
    rep = json.loads((out / "audit.json").read_text())
    assert {"run", "step", "model", "created", "seconds", "epsilon", "delta", "membership", "memorisation"} <= set(rep)
    assert rep["epsilon"] is None and rep["delta"] is None  # trained without DP
    assert rep["step"] == 500 and rep["seed"] == 5 and "figures" not in rep
    attacks = rep["membership"]["attacks"]
    assert set(attacks) == {"loss", "calibrated", "distance"}
    for name, e in attacks.items():
        assert ATTACK_KEYS <= set(e), name
        assert 0 <= e["auc"] <= 1 and 0 <= e["tpr_at_fpr_0.001"] <= e["tpr_at_fpr_0.01"] <= 1
    assert attacks["calibrated"]["reference"] == str(runs.reference) and attacks["calibrated"]["auc"] >= 0.9
    assert attacks["distance"]["samples"] == 50
    mem = rep["memorisation"]
    assert set(mem["spaces"]) == {"pixel", "lenet-mnist"} and mem["samples"] == 50
    assert len(mem["closest_pairs"]) == 16 and mem["near_copy_ratio"] == pytest.approx(1 / 3, abs=1e-6)
    srcs = _html_images(out / "audit.html")
    assert len(srcs) == 1
    Image.open(out / srcs[0]).load()
    printed = capsys.readouterr().out
    assert "mia_calibrated_auc" in printed and "near_copies_pixel" in printed
    assert not (out / "report.json").exists()  # another folder: the run's report is not touched there


def test_audit_into_the_run_joins_its_report(runs, tmp_path):
    import shutil

    from genlab.evaluation.privacy import run_audit

    run = tmp_path / "copy"
    shutil.copytree(runs.memorised, run)
    before = json.loads((run / "report.json").read_text())["metrics"]
    rep = run_audit(run, members=16, samples=20, draws=1, seed=3)
    after = json.loads((run / "report.json").read_text())["metrics"]
    assert {k: after[k] for k in before} == before  # the test losses the trainer wrote are kept
    assert after["mia_loss_auc"]["value"] == rep["membership"]["attacks"]["loss"]["auc"]
    assert after["mia_distance_tpr_at_fpr_0.01"]["value"] == rep["membership"]["attacks"]["distance"]["tpr_at_fpr_0.01"]
    assert after["near_copies_pixel"]["value"] == rep["memorisation"]["spaces"]["pixel"]["near_copies"]
    assert after["mia_loss_auc"]["n"] == 16 and after["near_copies_pixel"]["n"] == 20


def test_cli_audit_refuses_bad_references_and_numbers(runs, tmp_path, capsys):
    def one_error_line(args, *fragments):
        main_fails_in_one_line(capsys, args, *fragments)

    out = tmp_path / "refused"
    run = str(runs.memorised)
    one_error_line(["audit", run, "--reference", run, "--out", str(out)], "is the audited run itself",
                   "--set data.train_on=test")
    one_error_line(["audit", run, "--reference", str(runs.cvae), "--out", str(out)], "model.conditional")
    one_error_line(["audit", run, "--members", "1"], "--members must be >= 2")
    one_error_line(["audit", run, "--draws", "0"], "--draws must be")
    one_error_line(["audit", str(tmp_path / "nowhere")], "not found")
    one_error_line(["audit", run, "--out", str(runs.memorised / "config.yaml")], "is a file")
    assert not out.exists()  # nothing half-written


def test_check_reference_wants_a_reference_that_never_saw_members_or_nonmembers(runs, tmp_path):
    from genlab.evaluation.privacy import check_reference

    memorised, reference = load(runs.memorised), load(runs.reference)
    check_reference(memorised, reference)  # same family, data and shape, trained on the test split: accepted
    # the same model trained on the training split (another folder): it saw the members
    on_train = types.SimpleNamespace(run_dir=tmp_path / "other", family="image", cfg=memorised.cfg,
                                     model=memorised.model, meta=memorised.meta)
    with pytest.raises(ConfigError, match=r"trained on the training split \(data.train_on=train\), so it saw the "
                                          r"members .* `genlab train vae-mnist --set data.train_on=test`"):
        check_reference(memorised, on_train)
    # a run trained on the test split has the reference's training images as its members
    with pytest.raises(ConfigError, match="itself trained on the test split"):
        check_reference(reference, memorised)
    with pytest.raises(ConfigError, match="same model family"):
        check_reference(memorised, types.SimpleNamespace(run_dir=tmp_path / "gan", family="image",
                                                         cfg=types.SimpleNamespace(model_name="gan")))


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")  # 3 private steps: a loose bound
def test_audit_of_a_private_run_reports_its_epsilon_first(tmp_path, data_root):
    from genlab.evaluation.privacy import run_audit

    run = genlab.train("dp-cvae-mnist", tmp_path / "dp", steps=3, data_root=str(data_root),
                       overrides=["model.hidden=32", "train.batch_size=32", "train.eval_every=1000",
                                  "train.sample_every=1000", "train.eval_batches=1", "data.train_size=2000"]).run_dir
    ckpt = json.loads(sorted((run / "checkpoints").glob("step-*.json"))[-1].read_text())
    rep = run_audit(run, members=50, samples=40, draws=1, out=tmp_path / "audit")
    written = json.loads((tmp_path / "audit" / "audit.json").read_text())
    keys = list(written)
    assert keys.index("epsilon") < keys.index("membership")  # the guarantee comes before the attacks
    assert written["epsilon"] == pytest.approx(ckpt["privacy"]["epsilon"]) and written["delta"] == 1e-5
    assert rep["privacy"]["noise_multiplier"] == pytest.approx(ckpt["privacy"]["noise_multiplier"])
    assert "Trained with differential privacy: epsilon" in (tmp_path / "audit" / "audit.html").read_text()


# --------------------------------------------------------------------------- TSTR and the data options


def test_tstr_on_a_tiny_conditional_run(runs, capsys):
    assert main(["evaluate", str(runs.cvae), "--metrics", "tstr", "--n", "100", "--no-html",
                 "--out", str(runs.cvae / "tstr.json")]) == 0
    m = json.loads((runs.cvae / "tstr.json").read_text())["metrics"]
    assert set(m) == {"tstr"}
    e = m["tstr"]
    assert {"value", "n", "seed", "seconds", "real_baseline", "epochs", "batch_size", "n_real", "n_test"} <= set(e)
    assert 0 <= e["value"] <= 1 and e["n"] == 100 and e["n_real"] == 100 and e["n_test"] == 10_000
    assert e["real_baseline"] > 0.3  # 100 real digits teach a LeNet far more than chance (0.1)
    # opt-in: an evaluation that names no metrics trains no classifiers
    assert main(["evaluate", str(runs.cvae), "--n", "100", "--iw-k", "2", "--no-html",
                 "--out", str(runs.cvae / "default.json")]) == 0
    default = json.loads((runs.cvae / "default.json").read_text())["metrics"]
    assert "label_accuracy" in default and "tstr" not in default
    capsys.readouterr()
    assert main(["evaluate", str(runs.memorised), "--metrics", "tstr", "--n", "100"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot compute tstr" in err[0] and "unconditional" in err[0] and "cvae-mnist" in err[0]


def test_tstr_is_planned_for_conditional_mnist_only():
    from genlab.config import resolve
    from genlab.evaluation.images import planned_metrics
    from genlab.registry import get_model

    def planned(preset, *sets):
        cfg = resolve(preset, list(sets))
        return planned_metrics(get_model(cfg.model_name)[1], cfg)

    assert "tstr" in planned("cvae-mnist")
    assert "tstr" not in planned("vae-mnist")
    assert "tstr" not in planned("cvae-mnist", "data.dataset=array", "data.path=x.npz")


def test_train_on_test_swaps_the_splits_and_train_size_keeps_a_fixed_subset(data_root):
    normal = load_image_data(DataConfig(dataset="mnist", val_size=1000), data_root)
    swapped = load_image_data(DataConfig(dataset="mnist", val_size=1000, train_on="test"), data_root)
    assert torch.equal(swapped.train_x, normal.test_x) and torch.equal(swapped.train_y, normal.test_y)
    assert torch.equal(swapped.test_x, normal.train_x) and torch.equal(swapped.val_x, normal.val_x)
    small = load_image_data(DataConfig(dataset="mnist", val_size=1000, train_size=16), data_root)
    again = load_image_data(DataConfig(dataset="mnist", val_size=1000, train_size=16), data_root)
    assert len(small.train_x) == 16 and torch.equal(small.train_x, again.train_x)
    rows = {bytes(r) for r in normal.train_x.flatten(1).numpy()}
    assert all(bytes(r) in rows for r in small.train_x.flatten(1).numpy())  # a subset of the training split
