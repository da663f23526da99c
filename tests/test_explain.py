"""genlab explain: integrated gradients' completeness, deletion curves against hand values,
traversals that move one latent input, causal attention maps equal to the GPT's own attention,
the MIG score and the shapes it is measured on, and the command end to end (figures, report
section, refusals in one line)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import numpy as np
import pytest
import torch
from torch import nn

import genlab
from genlab.cli import main
from genlab.errors import ConfigError
from genlab.explain import attribution as A
from genlab.explain import explain
from genlab.explain.attention import attention_maps, attention_output, next_token_probabilities
from genlab.explain.disentanglement import discretize, entropy, mig, mutual_information
from genlab.explain.latents import kl_per_dimension, traverse
from genlab.explain.shapes import FACTORS, factor_sizes, make_shapes, render, write_shapes
from genlab.models.autoregressive.gpt import GPT, GPTConfig
from genlab.models.vae import VAE, VAEConfig
from tests.conftest import DATA, TINY_VAE, main_fails_in_one_line, shakespeare_corpus
from tests.test_graphs import TINY_RNN
from tests.test_text import TINY_TEXT

pytestmark = pytest.mark.usefixtures("one_thread")
HAS_CAPTUM = importlib.util.find_spec("captum") is not None
needs_captum = pytest.mark.skipif(not HAS_CAPTUM, reason="needs the explain extra (captum)")


# --------------------------------------------------------------------------- attribution


def _judge(forward, x: torch.Tensor, target: torch.Tensor, probability: bool = True, baseline: float = 0.0,
           extra: tuple = ()) -> A.Judge:
    B = len(x)
    return A.Judge(name="toy", output="toy", forward=forward, inputs=x, target=target,
                   baseline=torch.full((1, *x.shape[1:]), baseline), extra=extra,
                   pictures=torch.zeros(B, 3, *x.shape[2:], dtype=torch.uint8),
                   row_labels=[str(i) for i in range(B)], probability=probability)


@needs_captum
def test_integrated_gradients_satisfy_completeness():
    """The attributions of each input sum to output(x) - output(baseline) (Sundararajan et al.'s
    completeness), for a smooth two-layer network's log-softmax."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.Tanh(), nn.Linear(16, 3))
    forward = lambda x: torch.log_softmax(net(x), dim=1)  # noqa: E731
    x = torch.rand(4, 1, 6, 6) * 2
    target = torch.tensor([0, 1, 2, 1])
    # a baseline of -1 (black in a LeNet's input), not Captum's default of zeros: a call that
    # dropped the judge's baseline would break completeness
    judge = _judge(forward, x, target, baseline=-1.0)
    a = A.attribute(judge, "integrated_gradients")
    with torch.no_grad():
        gap = forward(x).gather(1, target[:, None])[:, 0] - forward(-torch.ones_like(x)).gather(1, target[:, None])[:, 0]
    assert a.shape == x.shape
    assert torch.allclose(a.flatten(1).sum(1), gap, atol=1e-4, rtol=1e-3), (a.flatten(1).sum(1), gap)
    assert gap.abs().min() > 0.01  # not trivially zero
    for m in ("occlusion", "gradient_shap"):
        first, again = A.attribute(judge, m, seed=3), A.attribute(judge, m, seed=3)
        assert first.shape == x.shape and torch.equal(first, again)  # seeded: the same maps twice


@needs_captum
def test_a_conditional_judge_gets_its_labels_and_its_baseline():
    """f(x, y) = scale[y] * sum(x): integrated gradients of each input equal scale[y] * (x - b) per
    pixel exactly (f is linear in x), occlusion too (windows that do not overlap)."""
    scale = torch.tensor([1.0, -2.0, 3.0])
    forward = lambda x, y: (scale[y] * x.flatten(1).sum(1))[:, None]  # noqa: E731
    x = torch.rand(3, 1, 4, 4)
    y = torch.tensor([0, 1, 2])
    judge = _judge(forward, x, torch.zeros(3, dtype=torch.long), probability=False, baseline=0.5, extra=(y,))
    want = scale[y].view(3, 1, 1, 1) * (x - 0.5)
    assert torch.allclose(A.attribute(judge, "integrated_gradients"), want, atol=1e-5)


def test_judges_take_the_asked_class_only_on_their_own_dataset(monkeypatch):
    """A conditional run's class k is MNIST's digit k only when it trained on MNIST: on another
    dataset the LeNet explains the class it predicts."""
    from types import SimpleNamespace

    seen = []
    monkeypatch.setattr(A, "classifier_judge", lambda name, s, labels, device: seen.append(labels) or name)
    monkeypatch.setattr(A, "_classifier_name", lambda run: "lenet-mnist")
    labels = torch.tensor([3, 4])
    for dataset, want in (("mnist", labels), ("folder", None)):
        run = SimpleNamespace(family="image", meta={"dataset": dataset}, cfg=SimpleNamespace(model_name="vae", data=SimpleNamespace(dataset=dataset)),
                              model=SimpleNamespace(conditional=False), device="cpu")
        assert A.judges(run, torch.zeros(2, 1, 28, 28, dtype=torch.uint8), labels) == ["lenet-mnist"]
        assert seen.pop() is want


def test_deletion_curve_of_a_linear_judge_matches_hand_values():
    """f(x) = w . x on a 2x2 image of ones with w = (4, 3, 2, 1): deleting the most attributed
    pixel first gives 10, 6, 3, 1, 0; any other order lies on or above it."""
    w = torch.tensor([4.0, 3.0, 2.0, 1.0])
    forward = lambda x: (x.flatten(1) * w).sum(1, keepdim=True)  # noqa: E731
    x = torch.ones(1, 1, 2, 2)
    judge = _judge(forward, x, torch.zeros(1, dtype=torch.long), probability=False)
    attr = (w * x.flatten(1)).view(1, 1, 2, 2)  # what integrated gradients gives a linear f
    order = A.attribution_order(attr)
    assert order.tolist() == [[0, 1, 2, 3]]
    curve = A.deletion_curve(judge, order, steps=4)
    assert curve.tolist() == [[10.0, 6.0, 3.0, 1.0, 0.0]]
    assert A.deletion_auc(curve).item() == pytest.approx((10 + 6 + 3 + 1 + 0) / 4 - (10 + 0) / 8)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        other = A.deletion_curve(judge, A.random_order(1, 4, g), steps=4)
        assert (other >= curve).all() and other[0, 0] == 10 and other[0, -1] == 0


@needs_captum
def test_the_audio_judge_is_explained_over_the_log_mel_spectrogram():
    g = torch.Generator().manual_seed(0)
    t = torch.arange(2048) / 8000
    clips = torch.stack([0.3 * torch.sin(2 * math.pi * 440 * t), 0.1 * torch.randn(2048, generator=g)])
    judge = A.audio_judge(clips, 8000, torch.tensor([3, 7]))
    B, C, H, W = judge.inputs.shape
    assert (B, C, H) == (2, 1, 64) and tuple(judge.pictures.shape) == (2, 3, H, W) and judge.flip
    assert torch.equal(judge.target, torch.tensor([3, 7]))
    maps, record = A.explain_judge(judge)
    assert all(m.shape == (2, 1, H, W) for m in maps.values())
    curve = record["deletion"]["curves"]["random"]
    with torch.no_grad():  # everything deleted: the judge hears silence
        silent = judge.score(judge.baseline.expand_as(judge.inputs)).mean().item()
    assert curve[-1] == pytest.approx(silent, abs=1e-5)
    assert A.attribution_png(judge, maps)[:4] == b"\x89PNG"


# --------------------------------------------------------------------------- latents


def _tiny_vae(conditional: bool = False) -> VAE:
    torch.manual_seed(0)
    cfg = VAEConfig(arch="mlp", latent_dim=4, hidden=8, channels=1, image_size=8, conditional=conditional,
                    num_classes=3 if conditional else None)
    return VAE(cfg).eval()


def test_a_traversal_changes_only_the_swept_dimension():
    """The decoder receives, for row r, the anchor with dimension dims[r] set to each value and
    every other dimension exactly the anchor's."""
    model = _tiny_vae()
    seen = []
    model.decoder.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    z0 = torch.tensor([0.5, -1.0, 2.0, 0.25])
    values = torch.linspace(-3, 3, 5)
    images = traverse(model, z0, [2, 0], values)
    assert images.shape == (2, 5, 1, 8, 8)
    z = seen[-1].view(2, 5, 4)
    for r, d in enumerate([2, 0]):
        assert torch.equal(z[r, :, d], values)
        others = [j for j in range(4) if j != d]
        assert torch.equal(z[r][:, others], z0[others].expand(5, 3))
    # and only that input: the row's images differ, from one sweep value to the next
    assert (images[0, 1:] - images[0, :-1]).abs().sum() > 0


def test_kl_per_dimension_sums_to_the_elbo_kl():
    model = _tiny_vae(conditional=True)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (16,), generator=g)
    kl = kl_per_dimension(model, x, y, batch_size=5)
    assert kl.shape == (4,) and (kl >= 0).all()
    with torch.no_grad():
        total = model.example_loss({"x": x, "y": y})["kl"].mean()
    assert kl.sum().item() == pytest.approx(total.item(), rel=1e-5)


# --------------------------------------------------------------------------- attention


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_attention_maps_are_causal_rows_sum_to_one_and_equal_the_models_attention(position):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.1,
                          position=position)).train()  # dropout must not leak into the maps
    idx = torch.randint(0, 11, (2, 12))
    maps = attention_maps(model, idx)
    assert maps.shape == (2, 2, 2, 12, 12) and model.training
    assert torch.equal(maps.triu(1), torch.zeros_like(maps))  # nothing from later tokens
    assert torch.allclose(maps.sum(-1), torch.ones(2, 2, 2, 12), atol=1e-6)
    assert torch.allclose(maps[..., 0, 0], torch.ones(2, 2, 2))  # the first token sees only itself
    # the weights, times the values, are what each block adds to its residual stream
    model.eval()
    x = model.wte(idx) + (model.wpe(torch.arange(12)) if position == "learned" else 0)
    rope = None
    if position == "rope":
        from genlab.models.autoregressive.gpt import rope_tables

        rope = rope_tables(torch.arange(12), model.cfg.head_dim)
    with torch.no_grad():
        for i, block in enumerate(model.blocks):
            h = block.ln_1(x)
            assert torch.allclose(attention_output(block.attn, h, maps[i], rope), block.attn(h, None, i, rope),
                                  atol=1e-6)
            x = block(x, None, i, rope)
        logits = model(idx[:1])
    p, top_i, top_p = next_token_probabilities(model, idx[:1], k=3)
    want = logits[0, :-1].softmax(-1).gather(1, idx[0, 1:, None])[:, 0]
    assert torch.allclose(p, want, atol=1e-6) and top_i.shape == (11, 3)
    assert (top_p[:, 0] >= p - 1e-6).all()


# --------------------------------------------------------------------------- disentanglement


def test_mutual_information_and_mig_hand_values():
    a = np.arange(400) % 4
    b = (np.arange(400) // 4) % 2  # independent of a in this sample
    assert entropy(a) == pytest.approx(math.log(4))
    assert mutual_information(a, a) == pytest.approx(math.log(4))
    assert mutual_information(a, b) == pytest.approx(0.0, abs=1e-12)
    assert discretize(np.array([[0.0], [1.0], [2.0], [3.0]]), bins=4)[:, 0].tolist() == [0, 1, 2, 3]
    f = np.stack([a, b], axis=1)
    constant = np.zeros((400, 1))
    one_each = mig(np.concatenate([f, constant], axis=1), f, bins=4)  # each factor in its own dimension
    assert one_each["mig"] == pytest.approx(1.0) and one_each["best_dim"] == [0, 1]
    twice = mig(np.concatenate([f, f], axis=1), f, bins=4)  # each factor in two dimensions: no gap
    assert twice["mig"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(Exception, match="D >= 2"):
        mig(f[:, :1], f)


def test_shapes_are_deterministic_move_with_their_factors_and_load_as_an_array_dataset(tmp_path):
    from genlab.data.datasets import load_array

    images, factors = make_shapes(40, seed=3)
    again, same = make_shapes(40, seed=3)
    assert images.shape == (40, 1, 28, 28) and images.dtype == np.uint8 and factors.shape == (40, len(FACTORS))
    assert np.array_equal(images, again) and np.array_equal(factors, same)
    assert not np.array_equal(images, make_shapes(40, seed=4)[0])
    # sweep one factor from a fixed setting: x moves the centre of mass right, scale adds ink
    base = np.array([2, 3, 1, 4, 4])
    for col, check in ((3, "x"), (1, "ink")):
        f = np.repeat(base[None], factor_sizes()[col], axis=0)
        f[:, col] = np.arange(factor_sizes()[col])
        im = render(f).astype(float)[:, 0]
        if check == "x":
            cx = (im * np.arange(28)[None, None, :]).sum((1, 2)) / im.sum((1, 2))
            assert (np.diff(cx) > 0).all()
        else:
            assert (np.diff(im.sum((1, 2))) > 0).all()
    path = write_shapes(tmp_path / "shapes.npz", 20, seed=1)
    x, y = load_array(path)
    assert tuple(x.shape) == (20, 1, 28, 28) and y is None
    assert np.array_equal(np.load(path)["factors"], make_shapes(20, seed=1)[1])


# --------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """cvae: 2 steps on 2,000 MNIST images; gpt: a one-layer char GPT, 2 steps; graph: a GraphRNN."""
    if DATA is None:
        pytest.fail("../shared/data with MNIST is required beside the project (or set GENLAB_DATA)")
    base = tmp_path_factory.mktemp("explain")
    torch.set_num_threads(1)
    cvae = genlab.train("cvae-mnist", base / "cvae", overrides=TINY_VAE + ["data.train_size=2000"], steps=2,
                        data_root=str(DATA))
    corpus = shakespeare_corpus(base)
    gpt = genlab.train("gpt-shakespeare-cpu", base / "gpt", overrides=TINY_TEXT + [f"data.path={corpus}"], steps=2)
    graph = genlab.train("graphgen-grid", base / "graph", overrides=TINY_RNN, steps=2)
    return {"cvae": cvae.run_dir, "gpt": gpt.run_dir, "graph": graph.run_dir, "base": base}


@needs_captum
def test_explain_a_conditional_vae_writes_figures_and_the_report_section(runs, capsys):
    from genlab.evaluation.html import write_run_report_html

    run = runs["cvae"]
    assert main(["explain", str(run), "--n", "2", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    record = json.loads((run / "explain" / "explain.json").read_text())
    assert record["views"] == ["latents", "attribution", "neighbours"]
    assert out.splitlines() == record["summary"] and "KL" in out and "label evidence" in out
    for f in record["figures"]:
        assert (run / "explain" / f["file"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    judges = record["attribution"]["judges"]
    assert set(judges) == {"lenet-mnist", "label evidence"} and judges["lenet-mnist"]["targets"] == [0, 1]
    assert len(record["latents"]["kl_per_dim"]) == 8 and sorted(record["latents"]["ranking"]) == list(range(8))
    assert len(record["neighbours"]["spaces"]["pixel"]["train_index"]) == 2
    page = (run / "report.html").read_text()
    assert page.count("<section id='explain'>") == 1 and page.count("<figure>") >= len(record["figures"])
    report = json.loads((run / "report.json").read_text())
    write_run_report_html(run, report)  # training (or evaluate) rewrites the page: the section stays
    assert (run / "report.html").read_text().count("<section id='explain'>") == 1
    assert "Interpretability" in (run / "explain" / "explain.html").read_text()


def test_explain_a_gpt_draws_attention_along_its_continuation(runs, tmp_path, capsys):
    assert main(["explain", str(runs["gpt"]), "--prompt", "ROMEO:", "--max-tokens", "6", "--out",
                 str(tmp_path / "x")]) == 0
    record = json.loads((tmp_path / "x" / "explain.json").read_text())
    a = record["attention"]
    assert record["views"] == ["attention"] and a["prompt"] == "ROMEO:" and a["tokens"] == 12
    assert (a["layers"], a["heads"]) == (1, 2) and len(a["next_token"]) == 11
    assert "".join(t["token"] for t in a["next_token"]) == "OMEO:" + a["generated"]
    assert not (runs["gpt"] / "explain").exists()  # --out elsewhere leaves the run alone


def test_explain_a_shipped_gan_ranks_latents_and_explains_its_discriminator(tmp_path, capsys):
    what = ["latents", "attribution"] if HAS_CAPTUM else ["latents"]
    assert main(["explain", "demo:dcgan-mnist", "--what", *what, "--n", "2", "--out", str(tmp_path / "g")]) == 0
    record = json.loads((tmp_path / "g" / "explain.json").read_text())
    assert len(record["latents"]["effect_per_dim"]) == 64 and record["latents"]["kind"] == "GAN"
    if HAS_CAPTUM:
        assert set(record["attribution"]["judges"]) == {"lenet-mnist", "discriminator"}


@needs_captum
def test_explain_given_images_with_their_labels(runs, tmp_path, capsys):
    """--input: the judges read exactly the file's images, and a conditional run its labels."""
    from genlab.config import DataConfig
    from genlab.data.datasets import load_image_data

    d = load_image_data(DataConfig(dataset="mnist"), DATA)
    np.savez(tmp_path / "x.npz", images=d.test_x[:3].numpy(), labels=d.test_y[:3].numpy())
    record = explain(runs["cvae"], what=["attribution"], out=tmp_path / "out", input=tmp_path / "x.npz")
    lenet = record["attribution"]["judges"]["lenet-mnist"]
    assert len(lenet["deletion"]["auc_per_input"]["integrated_gradients"]) == 3
    assert "3 given images" in record["figures"][0]["caption"]
    np.savez(tmp_path / "nolabels.npz", images=d.test_x[:3].numpy())
    main_fails_in_one_line(capsys, ["explain", str(runs["cvae"]), "--what", "attribution", "--input",
                                    str(tmp_path / "nolabels.npz"), "--out", str(tmp_path / "o2")],
                           "is class-conditional", "--label K")
    main_fails_in_one_line(capsys, ["explain", str(runs["cvae"]), "--what", "latents", "--input",
                                    str(tmp_path / "x.npz"), "--out", str(tmp_path / "o3")],
                           "only attribution explains given images")
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_explain_refuses_in_one_line(runs, capsys, tmp_path, monkeypatch):
    main_fails_in_one_line(capsys, ["explain", str(runs["graph"])], "cannot explain", "graphrnn graph run")
    main_fails_in_one_line(capsys, ["explain", str(runs["cvae"]), "--what", "attention"], "--what attention",
                           "need a GPT run", "latents, attribution, neighbours")
    main_fails_in_one_line(capsys, ["explain", str(runs["gpt"]), "--what", "latents"], "need a VAE or GAN run")
    main_fails_in_one_line(capsys, ["explain", "demo:cvae-mnist"], "read-only", "--out")
    main_fails_in_one_line(capsys, ["explain", str(runs["cvae"]), "--n", "0"], "--n must be in 1..256")
    # without Captum: the default leaves attribution out with a note; asking for it names the extra
    for name in ("captum", "captum.attr"):
        monkeypatch.setitem(sys.modules, name, None)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "captum" else real(n, *a))
    main_fails_in_one_line(capsys, ["explain", str(runs["cvae"]), "--what", "attribution", "--out", str(tmp_path)],
                           "needs the explain extra", "genlab[explain]")
    assert list(tmp_path.iterdir()) == []
    from genlab.explain import plan

    run = genlab.load(runs["cvae"])
    views, notes = plan(run, None)
    assert views == ["latents", "neighbours"] and "genlab[explain]" in notes[0]
    with pytest.raises(ConfigError, match="not a view"):
        plan(run, ["saliency"])
