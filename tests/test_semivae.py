"""Semi-supervised M2 (genlab.models.semivae): the loss against a hand computation, label masks,
the class-balanced labelled subset and its batches, config errors, and a short run on MNIST."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Normal, kl_divergence

import genlab
from genlab.config import resolve
from genlab.data.datasets import ImageData, SemiSupervisedFeeder, balanced_label_subset
from genlab.data.transforms import BatchPipeline
from genlab.engine.logs import read_log
from genlab.errors import ConfigError
from genlab.models.semivae import SemiVAE, SemiVAEConfig, m2_unlabelled
from tests.conftest import TINY_VAE

pytestmark = pytest.mark.usefixtures("one_thread")

K = 3


def _tiny(**kw) -> SemiVAE:
    torch.manual_seed(0)
    cfg = dict(channels=1, image_size=8, num_classes=K, latent_dim=2, hidden=8, classifier_width=2, **kw)
    return SemiVAE(SemiVAEConfig(**cfg))


def _batch():
    torch.manual_seed(5)
    x = torch.bernoulli(torch.full((4, 1, 8, 8), 0.4))
    return x, torch.tensor([2, -1, 0, -1])  # two labelled, two unlabelled


def test_unlabelled_term_is_expected_elbo_minus_entropy_by_hand():
    L = torch.tensor([[10.0, 12.0, 15.0], [7.0, 7.0, 1.0]])  # L(x, y) = -ELBO(x, y), (B, K)
    logits = torch.tensor([[0.0, math.log(2.0), math.log(5.0)], [1.0, 1.0, 1.0]])
    q0 = [1 / 8, 2 / 8, 5 / 8]  # softmax of row 0
    u0 = sum(q * l for q, l in zip(q0, [10, 12, 15])) + sum(q * math.log(q) for q in q0)
    u1 = (7 + 7 + 1) / 3 + math.log(1 / 3)  # uniform q: mean L minus log K
    assert m2_unlabelled(L, logits).tolist() == pytest.approx([u0, u1], rel=1e-6)
    # minimised over q by the posterior q(y) ~ exp(-L(x, y)), where it equals -log sum_y exp(-L)
    best = m2_unlabelled(L, -L)
    assert best.tolist() == pytest.approx((-torch.logsumexp(-L, 1)).tolist(), rel=1e-6)
    assert (m2_unlabelled(L, logits) >= best).all()


def test_loss_terms_match_a_hand_computation():
    m = _tiny(alpha=0.7).eval()  # eval: no shifted copies, so the only noise is z's
    x, y = _batch()
    torch.manual_seed(1)
    out = m.loss({"x": x, "y": y})
    torch.manual_seed(1)  # the same draws, in the loss's order: labelled rows, then unlabelled x each class
    eps_l, eps_u = torch.randn(2, 2), torch.randn(2 * K, 2)

    def neg_elbo(xi, c, eps):  # -ELBO(x, y=c) at z = mu + sigma eps, from torch.distributions
        yc = torch.tensor([c])
        mu, logvar = m.encode(xi[None], yc)
        q = Normal(mu, (0.5 * logvar).exp())
        z = mu + eps * q.scale
        rec = -Bernoulli(logits=m.decode(z, yc)).log_prob(xi[None]).sum()
        kl = kl_divergence(q, Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum()
        return (rec + kl + math.log(K)).item()  # - log p(y) = log K

    with torch.no_grad():
        logits = m.classify(x)
        lab = [(0, 2, eps_l[0]), (2, 0, eps_l[1])]
        nel = [neg_elbo(x[i], c, e) for i, c, e in lab]
        ce = [-F.log_softmax(logits[i], 0)[c].item() for i, c, _ in lab]
        u = []
        for j, i in enumerate((1, 3)):
            Ls = [neg_elbo(x[i], c, eps_u[j * K + c]) for c in range(K)]
            q = F.softmax(logits[i], 0).tolist()
            u.append(sum(qc * (lc + math.log(qc)) for qc, lc in zip(q, Ls)))
    assert out["neg_elbo_labelled"].item() == pytest.approx(sum(nel) / 2, rel=1e-5)
    assert out["classification"].item() == pytest.approx(sum(ce) / 2, rel=1e-5)
    assert out["neg_elbo_unlabelled"].item() == pytest.approx(sum(u) / 2, rel=1e-5)
    assert out["loss"].item() == pytest.approx((sum(nel) + 0.7 * sum(ce) + sum(u)) / 4, rel=1e-5)
    acc = sum(logits[i].argmax().item() == c for i, c, _ in lab) / 2
    assert out["accuracy"].item() == acc


def test_classification_term_never_reads_unlabelled_images():
    """The alpha x cross-entropy part of the loss (loss at alpha=1 minus at alpha=0, same noise)
    has a zero gradient for unlabelled images and a non-zero one for labelled images."""
    m = _tiny(alpha=1.0).eval()
    x, y = _batch()
    x = x.requires_grad_()

    def loss(alpha):
        m.cfg.alpha = alpha
        torch.manual_seed(3)
        return m.loss({"x": x, "y": y})["loss"]

    (g,) = torch.autograd.grad(loss(1.0) - loss(0.0), x)
    assert g[y < 0].abs().max().item() == 0.0
    assert g[y >= 0].flatten(1).abs().sum(1).min().item() > 0
    # and the logged terms: the classification is the cross-entropy of the labelled rows only
    out = m.loss({"x": x, "y": y})
    lab = y >= 0
    assert out["classification"].item() == pytest.approx(F.cross_entropy(m.classify(x[lab]), y[lab]).item(), rel=1e-6)
    # an unlabelled image's content moves no classification: replace it, the term stays
    x2 = x.detach().clone()
    x2[1] = 1 - x2[1]
    assert m.loss({"x": x2, "y": y})["classification"].item() == pytest.approx(out["classification"].item())


def test_all_unlabelled_or_all_labelled_batches_and_samples():
    m = _tiny()
    x, _ = _batch()
    none = m.loss({"x": x, "y": torch.full((4,), -1)})
    assert set(none) == {"loss", "neg_elbo_unlabelled"}
    every = m.loss({"x": x, "y": torch.tensor([0, 1, 2, 0])})
    assert set(every) == {"loss", "neg_elbo_labelled", "classification", "accuracy"}
    s = m.sample(6, generator=torch.Generator().manual_seed(0), labels=torch.tensor([0, 1, 2, 0, 1, 2]))
    assert s.shape == (6, 1, 8, 8) and 0 <= s.min() and s.max() <= 1
    with pytest.raises(ConfigError, match="pass labels"):
        m.sample(2, generator=torch.Generator().manual_seed(0))
    assert m.reconstruct(x).shape == x.shape  # the classifier's guess as the class


def test_balanced_label_subset_is_class_balanced_and_fixed_by_the_seed():
    y = torch.arange(300) % 10
    idx = balanced_label_subset(y, 20, 10, seed=0)
    assert len(idx) == 20 and len(set(idx.tolist())) == 20 and torch.equal(idx, idx.sort().values)
    assert torch.bincount(y[idx], minlength=10).tolist() == [2] * 10
    assert torch.equal(idx, balanced_label_subset(y, 20, 10, seed=0))
    assert not torch.equal(idx, balanced_label_subset(y, 20, 10, seed=1))
    with pytest.raises(ConfigError, match="training split has 300"):
        balanced_label_subset(y, 310, 10, seed=0)
    with pytest.raises(ConfigError, match="multiple of the 10 classes"):
        balanced_label_subset(y, 25, 10, seed=0)
    y_few = torch.cat([torch.zeros(50), torch.ones(2)]).long()
    with pytest.raises(ConfigError, match="class 1, which has only 2"):
        balanced_label_subset(y_few, 6, 2, seed=0)


def _data(n=200, num_labels=20, labelled_batch=4, y=True):
    torch.manual_seed(0)
    x = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8)
    labels = torch.arange(n) % 10 if y else None
    return ImageData(x, labels, x[:4], None, x[:4], None, (8, 8), "test", "array", None, [0.5], [0.5],
                     num_labels, labelled_batch)


def test_semi_supervised_feeder_masks_labels_and_adds_labelled_images():
    data = _data()
    f = data.feeder(BatchPipeline("zero_one", [0.5], [0.5]), batch_size=16, seed=7)
    assert isinstance(f, SemiSupervisedFeeder)
    known = f.train_y >= 0
    assert known.sum().item() == 20 and (f.train_y[~known] == -1).all()
    assert torch.equal(f.train_y[known], data.train_y[known])  # kept labels are the true ones
    assert torch.bincount(f.train_y[known], minlength=10).tolist() == [2] * 10
    assert data.train_y.min() == 0  # the data itself keeps every label (val/test, evaluation)
    torch.manual_seed(11)
    b = f.train_batch(3, shard=1, micro=8, device="cpu")  # 2 micro-batches: 4 / 2 labelled draws each
    assert len(b["x"]) == 8 + 2 and (b["y"][8:] >= 0).all()
    torch.manual_seed(11)
    again = f.train_batch(3, shard=1, micro=8, device="cpu")
    assert torch.equal(b["x"], again["x"]) and torch.equal(b["y"], again["y"])  # a pure function of the seeding
    with pytest.raises(ConfigError, match="labelled_batch=4 must be divisible by the 16"):
        f.train_batch(0, shard=0, micro=1, device="cpu")
    plain = _data(num_labels=None).feeder(BatchPipeline("zero_one", [0.5], [0.5]), batch_size=16, seed=7)
    assert not isinstance(plain, SemiSupervisedFeeder)
    with pytest.raises(ConfigError, match="this data has none"):
        _data(y=False).feeder(BatchPipeline("zero_one", [0.5], [0.5]), batch_size=16, seed=7)


def test_config_errors():
    with pytest.raises(ConfigError, match="only semivae can learn from; a vae run"):
        resolve("cvae-mnist", ["data.num_labels=100"])
    with pytest.raises(ConfigError, match="data.num_labels must be >= 1"):
        resolve("semi-vae-mnist", ["data.num_labels=0"])
    with pytest.raises(ConfigError, match="data.labelled_batch must be >= 1"):
        resolve("semi-vae-mnist", ["data.labelled_batch=0"])
    with pytest.raises(ConfigError, match="model.classifier must be conv or mlp"):
        resolve("semi-vae-mnist", ["model.classifier=resnet"])
    cfg = resolve("semi-vae-mnist", ["data.num_labels=600"])
    assert (cfg.data.num_labels, cfg.model_name) == (600, "semivae")
    assert resolve("semi-vae-mnist", ["data.num_labels=null"]).data.num_labels is None  # fully supervised M2


TINY_SEMI = ["model.hidden=64", "model.latent_dim=8", "model.classifier=mlp", "model.classifier_width=8",
             "model.alpha=20", "data.train_size=2000", "data.num_labels=100", "data.labelled_batch=16",
             "train.batch_size=32", "train.minutes=null", "train.log_every=10", "train.eval_every=1000",
             "train.sample_every=1000", "train.ckpt_every=1000", "train.eval_batches=2", "train.warmup_steps=0",
             "train.lr=3e-3", "train.ema_decay=0"]


def test_short_run_learns_to_classify_and_evaluate_reports_it(tmp_path, data_root):
    r = genlab.train("semi-vae-mnist", tmp_path / "run", overrides=TINY_SEMI, steps=60, data_root=str(data_root))
    acc = [row["accuracy"] for row in read_log(r.run_dir) if row["kind"] == "train"]
    assert len(acc) == 6 and sum(acc[-2:]) / 2 > sum(acc[:1]) + 0.2, acc  # the labelled accuracy rises
    report = json.loads((r.run_dir / "report.json").read_text())["metrics"]
    assert 0.3 < report["test_accuracy"]["value"] <= 1  # chance is 0.1
    out = genlab.evaluate(r.run_dir, metrics=["classifier_accuracy", "classifier_error"],
                          out=tmp_path / "eval.json", html=False)["metrics"]
    a, e = out["classifier_accuracy"], out["classifier_error"]
    assert a["n"] == 10_000 and a["value"] + e["value"] == pytest.approx(1.0)
    assert a["value"] == pytest.approx(report["test_accuracy"]["value"], abs=0.03)  # other binarisation draws
    assert len(a["per_class_accuracy"]) == 10
    # a model without a classifier of its own is refused with the reason
    c = genlab.train("cvae-mnist", tmp_path / "cvae", overrides=TINY_VAE, steps=1, data_root=str(data_root))
    with pytest.raises(ConfigError, match="only semi-supervised models"):
        genlab.evaluate(c.run_dir, metrics=["classifier_accuracy"], out=tmp_path / "x.json", html=False)
