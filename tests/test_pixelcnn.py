"""PixelCNN: causality of both stacks and mask types, the exact likelihood, seeded sampling,
completion keeping the known pixels."""

import math

import pytest
import torch

import genlab
from genlab.models.autoregressive.pixelcnn import GatedLayer, PixelCNN, PixelCNNConfig
from genlab.seed import make_generator


def _model(likelihood="bernoulli", layers=3, channels=1, conditional=False, size=6):
    torch.manual_seed(0)
    cfg = PixelCNNConfig(likelihood=likelihood, hidden=8, layers=layers, kernel=3, out_hidden=16,
                         conditional=conditional, channels=channels, image_size=size,
                         num_classes=3 if conditional else None)
    m = PixelCNN(cfg).double().eval()
    for p in m.parameters():  # random, non-zero weights everywhere (biases too)
        torch.nn.init.normal_(p, std=0.3)
    return m


@pytest.mark.parametrize("likelihood, layers, channels", [("bernoulli", 1, 1), ("bernoulli", 3, 1),
                                                          ("categorical", 2, 3)])
def test_changing_pixel_i_never_changes_outputs_up_to_i(likelihood, layers, channels):
    """layers=1: only the mask-A layer; more: mask A then mask-B layers."""
    m = _model(likelihood, layers, channels)
    H = W = 6
    x = torch.rand(1, channels, H, W, dtype=torch.float64)
    base = m.logits(x)
    for p in range(H * W):
        i, j = divmod(p, W)
        x2 = x.clone()
        x2[0, :, i, j] = 1 - x2[0, :, i, j] + 0.37
        diff = (m.logits(x2) - base).abs().amax(dim=(0, 1, 2))  # (H, W)
        assert diff.flatten()[:p + 1].max() == 0, f"pixel {p} leaks into positions <= {p}"
        # and the neighbours to the right and below do see it (the stacks leave no blind spot)
        if j + 1 < W:
            assert diff[i, j + 1] > 0
        if i + 1 < H:
            assert diff[i + 1, j] > 0 and diff[i + 1, max(0, j - 1)] > 0 and diff[i + 1, min(W - 1, j + 1)] > 0


def test_stacks_separately():
    """Vertical output at row i uses rows <= i only; the horizontal output at (i, j) uses the
    horizontal input at columns <= j of row i and the vertical input of rows < i."""
    torch.manual_seed(1)
    layer = GatedLayer(4, 4, 3, first=False, cond_dim=0).double()
    v, h = torch.randn(1, 4, 5, 5, dtype=torch.float64), torch.randn(1, 4, 5, 5, dtype=torch.float64)
    v0, h0 = layer(v, h, None)
    v2 = v.clone()
    v2[0, :, 2, 3] += 1.0  # a vertical input in row 2
    v1, h1 = layer(v2, h, None)
    assert (v1 - v0)[..., :2, :].abs().max() == 0 and (v1 - v0)[..., 2, :].abs().max() > 0
    assert (h1 - h0)[..., :3, :].abs().max() == 0 and (h1 - h0)[..., 3, :].abs().max() > 0
    h2 = h.clone()
    h2[0, :, 2, 3] += 1.0  # a horizontal input at (2, 3)
    _, h3 = layer(v, h2, None)
    d = (h3 - h0)[0].abs().amax(0)
    assert d[2, :3].max() == 0 and d[:2].max() == 0 and d[3:].max() == 0 and d[2, 3] > 0


@pytest.mark.parametrize("likelihood, per_dim", [("bernoulli", math.log(2)), ("categorical", math.log(256))])
def test_all_zero_model_likelihood(likelihood, per_dim):
    m = _model(likelihood, channels=3 if likelihood == "categorical" else 1)
    for p in m.parameters():
        torch.nn.init.zeros_(p)
    x = torch.randint(0, 2, (4, m.cfg.channels, 6, 6)).double()
    dims = m.cfg.channels * 36
    assert torch.allclose(-m.log_prob(x), torch.full((4,), dims * per_dim, dtype=torch.float64))
    out = m.loss({"x": x})
    assert out["bits_per_dim"].item() == pytest.approx(per_dim / math.log(2))


def test_seed_reproduces_a_sample_and_labels_condition():
    m = _model(conditional=True).float()
    a = m.sample(3, generator=make_generator(5), labels=torch.tensor([0, 1, 2]))
    b = m.sample(3, generator=make_generator(5), labels=torch.tensor([0, 1, 2]))
    c = m.sample(3, generator=make_generator(6), labels=torch.tensor([0, 1, 2]))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.unique().tolist()) <= {0.0, 1.0} and a.shape == (3, 1, 6, 6)


@pytest.mark.parametrize("likelihood, channels, kernel, layers, conditional", [
    ("bernoulli", 1, 3, 3, False), ("bernoulli", 1, 5, 3, True), ("bernoulli", 1, 7, 2, False),
    ("bernoulli", 1, 3, 1, False), ("categorical", 3, 3, 2, False)])
def test_sampling_path_gives_the_full_networks_logits(likelihood, channels, kernel, layers, conditional):
    """The sampler computes each pixel's logits from cached layer outputs (a new row of the
    vertical stack per row, a new column of the horizontal stack per pixel) while it writes the
    pixels; they must equal the full network's logits of the finished image at every pixel, on
    an image larger than the receptive field."""
    torch.manual_seed(0)
    size = 13
    cfg = PixelCNNConfig(likelihood=likelihood, hidden=8, layers=layers, kernel=kernel, out_hidden=16,
                         conditional=conditional, channels=channels, image_size=size,
                         num_classes=3 if conditional else None)
    m = PixelCNN(cfg).double().eval()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.rand(2, channels, size, size, dtype=torch.float64)
    y = torch.tensor([1, 2]) if conditional else None
    cond = m.embed(y) if conditional else None
    seen = {}

    def write(i, j, logits):  # the pixel becomes a function of its logits, as in sampling
        seen[i, j] = logits.clone()
        x[:, :, i, j] = (logits[..., 0] > 0).double() if likelihood == "bernoulli" else logits.argmax(-1) / 255

    m._raster(x, list(range(size)), cond, write)
    assert list(seen) == [(i, j) for i in range(size) for j in range(size)]  # every pixel, in raster order
    full = m.logits(x, y)  # (B, C, levels, H, W) of the finished image
    for (i, j), logits in seen.items():
        torch.testing.assert_close(logits, full[..., i, j], rtol=1e-10, atol=1e-10)
    seen.clear()
    m._raster(x, [4, 9], cond, lambda i, j, logits: seen.__setitem__((i, j), logits))
    assert list(seen) == [(i, j) for i in (4, 9) for j in range(size)]  # skipped rows still feed the cache
    for (i, j), logits in seen.items():
        torch.testing.assert_close(logits, full[..., i, j], rtol=1e-10, atol=1e-10)


def test_completion_keeps_the_top_half():
    m = _model().float()
    x = torch.bernoulli(torch.full((4, 1, 6, 6), 0.5), generator=make_generator(0))
    known = torch.zeros(1, 1, 6, 6, dtype=torch.bool)
    known[..., :3, :] = True
    out = m.complete(x, known, generator=make_generator(1))
    assert torch.equal(out[..., :3, :], x[..., :3, :])
    assert not torch.equal(out[..., 3:, :], x[..., 3:, :])  # the bottom half was redrawn


def test_trains_on_mnist_and_reports_exact_nll(tmp_path, data_root):
    res = genlab.train("pixelcnn-mnist", tmp_path / "run", steps=30, data_root=str(data_root),
                       overrides=["model.hidden=8", "model.layers=2", "model.out_hidden=16", "train.batch_size=16",
                                  "train.log_every=5", "train.eval_every=1000", "train.eval_batches=2",
                                  "train.sample_every=1000", "train.warmup_steps=2", "train.lr=5e-3"])
    from genlab.engine.logs import read_log

    nll = [r["nll"] for r in read_log(res.run_dir) if r["kind"] == "train"]
    assert nll[-1] < 0.8 * nll[0]  # from ~500 nats (about a coin per pixel) down
    run = genlab.load(res.run_dir)
    images, _ = run.sample(2, seed=0)
    assert images.shape == (2, 1, 28, 28) and images.dtype == torch.uint8


def test_evaluate_reports_the_exact_nll(tmp_path, data_root):
    from genlab.evaluation import evaluate

    res = genlab.train("pixelcnn-mnist", tmp_path / "run", steps=2, data_root=str(data_root),
                       overrides=["model.hidden=8", "model.layers=2", "model.out_hidden=16", "train.batch_size=8",
                                  "train.eval_every=1000", "train.eval_batches=1", "train.sample_every=1000"])
    rep = evaluate(res.run_dir, n=50, metrics=["nll_nats", "bits_per_dim"], html=False)["metrics"]
    run = genlab.load(res.run_dir)
    x = run.data().test_x[:50]
    torch.manual_seed(0)  # the evaluator binarises the test images with its seed
    batch = run.pipeline(x, None, train=False)
    expect = -run.model.log_prob(batch["x"]).mean().item()
    assert rep["nll_nats"]["value"] == pytest.approx(expect, rel=1e-6) and rep["nll_nats"]["bound"] == "exact"
    assert rep["bits_per_dim"]["value"] == pytest.approx(expect / (784 * math.log(2)), rel=1e-6)
