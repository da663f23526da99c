import json
import math

import numpy as np
import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

import genlab
from genlab.config import resolve
from genlab.engine.run import build_model
from genlab.engine.logs import read_log
from genlab.metrics.likelihood import bits_per_dim, iw_log_likelihood, iw_nll
from genlab.models.vae import VAE, VAEConfig
from genlab.seed import make_generator
from tests.conftest import TINY_VAE


def _tiny(**kw) -> VAE:
    torch.manual_seed(0)
    return VAE(VAEConfig(channels=1, image_size=8, latent_dim=3, hidden=16, num_classes=4, **kw))


def test_elbo_terms_match_torch_distributions():
    m = _tiny(likelihood="gaussian")
    with torch.no_grad():
        m.log_sigma.fill_(-0.7)
    x = torch.randn(5, 1, 8, 8)
    torch.manual_seed(1)
    out = m.loss({"x": x})
    mu, logvar = m.encode(x)
    q = Normal(mu, (0.5 * logvar).exp())
    kl = kl_divergence(q, Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(1).mean()
    assert out["kl"].item() == pytest.approx(kl.item(), rel=1e-5)
    torch.manual_seed(1)
    z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
    recon = -Normal(m.decode(z), math.exp(-0.7)).log_prob(x).flatten(1).sum(1).mean()
    assert out["recon"].item() == pytest.approx(recon.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx((recon + kl).item(), rel=1e-5)


def test_bernoulli_likelihood_and_beta():
    m = _tiny(arch="conv", beta=4.0)
    x = torch.bernoulli(torch.full((3, 1, 8, 8), 0.3))
    logits = torch.randn(3, 1, 8, 8)
    assert m.log_px_z(logits, x).sum().item() == pytest.approx(
        Bernoulli(logits=logits).log_prob(x).sum().item(), rel=1e-5)
    out = m.loss({"x": x})
    assert out["loss"].item() == pytest.approx(out["recon"].item() + 4 * out["kl"].item(), rel=1e-5)
    assert out["neg_elbo"].item() == pytest.approx(out["recon"].item() + out["kl"].item(), rel=1e-5)


def test_iw_bound_arithmetic_and_tightness():
    # logsumexp - log k on hand-made weights
    log_w = torch.log(torch.tensor([[1.0, 2.0], [3.0, 6.0]]))  # (k=2, B=2)
    assert iw_log_likelihood(log_w).tolist() == pytest.approx([math.log(2.0), math.log(4.0)])
    assert bits_per_dim(784 * math.log(2), 784) == pytest.approx(1.0)
    m = _tiny()
    x = torch.bernoulli(torch.full((6, 1, 8, 8), 0.4))
    nll_1 = iw_nll(m, x, k=1, seed=0, k_chunk=1).mean().item()
    nll_k = iw_nll(m, x, k=2000, seed=0, k_chunk=500).mean().item()
    torch.manual_seed(0)
    elbo = torch.stack([m.loss({"x": x})["neg_elbo"] for _ in range(200)]).mean().item()
    assert nll_1 == pytest.approx(elbo, rel=0.02)  # k = 1 is the ELBO
    assert nll_k < elbo  # more samples give a tighter bound
    # reproducible from the seed
    assert torch.equal(iw_nll(m, x, k=10, seed=3), iw_nll(m, x, k=10, seed=3))


def test_conditional_vae_needs_and_uses_labels():
    m = _tiny(conditional=True, arch="conv")
    x = torch.rand(4, 1, 8, 8)
    with pytest.raises(genlab.GenlabError, match="conditional"):
        m.loss({"x": x})
    y = torch.tensor([0, 1, 2, 3])
    assert torch.isfinite(m.loss({"x": x, "y": y})["loss"])
    g1, g2 = make_generator(0), make_generator(0)
    a = m.sample(4, generator=g1, labels=torch.zeros(4, dtype=torch.long))
    b = m.sample(4, generator=g2, labels=torch.ones(4, dtype=torch.long))
    assert a.shape == (4, 1, 8, 8) and not torch.allclose(a, b)  # same noise, label changes the image


def test_conv_vae_rejects_bad_image_size():
    with pytest.raises(genlab.GenlabError, match="divisible by 4"):
        VAE(VAEConfig(arch="conv", channels=1, image_size=10))


@pytest.mark.parametrize("preset", ["vae-mnist", "beta-vae-mnist", "cvae-mnist"])
def test_each_vae_preset_learns_on_real_mnist(tmp_path, data_root, preset):
    res = genlab.train(preset, tmp_path / "r", overrides=["train.batch_size=64", "train.log_every=10",
                                                          "train.warmup_steps=5", "train.amp=off",
                                                          "train.test_batches=3"],
                       steps=60, data_root=str(data_root))
    losses = [r["loss"] for r in read_log(res.run_dir) if r["kind"] == "train"]
    assert len(losses) == 6
    assert losses[-1] < 0.8 * losses[0], losses  # the ELBO improves over a few dozen steps
    assert (res.run_dir / "samples" / "final.png").is_file()
    rep = json.loads((res.run_dir / "report.json").read_text())["metrics"]
    assert rep["test_neg_elbo"]["n"] == 3 * 64  # the test report's first train.test_batches batches


def test_interpolation_grid_endpoints_are_decoded_prior_draws(tmp_path, data_root):
    from genlab.sampling import interpolation_grid

    res = genlab.train("vae-mnist", tmp_path / "r", overrides=TINY_VAE + ["train.steps=3"], data_root=str(data_root))
    run = genlab.load(res.run_dir)
    imgs, labels = interpolation_grid(run, rows=3, steps=5, seed=4)
    assert imgs.shape == (15, 1, 28, 28) and labels is None
    g = make_generator(4)
    z0 = torch.randn(3, 8, generator=g)
    z1 = torch.randn(3, 8, generator=g)
    ends = run.pipeline.to_uint8(run.model.decode_latent(torch.cat([z0, z1])))
    assert torch.equal(imgs[0::5], ends[:3]) and torch.equal(imgs[4::5], ends[3:])


def test_build_model_from_preset_counts_params():
    cfg = resolve("vae-mnist", ["model.channels=1", "model.image_size=28", "model.num_classes=10"])
    m = build_model(cfg)
    # encoder 784*512+512 + 512*512+512 + 512*64+64, decoder 32*512+512 + 512*512+512 + 512*784+784
    expected = (784 * 512 + 512) + (512 * 512 + 512) + (512 * 64 + 64) + (32 * 512 + 512) + (512 * 512 + 512) + (512 * 784 + 784)
    assert sum(p.numel() for p in m.parameters()) == expected


def test_gaussian_iw_bound_scores_8bit_pixels_not_a_density():
    m = _tiny(likelihood="gaussian")
    x = torch.full((2, 1, 8, 8), -1.0)  # black images under normalize=minus_one_one
    with pytest.raises(genlab.GenlabError, match="Gaussian VAE's likelihood bound needs pixel_range"):
        iw_nll(m, x, k=2)
    with torch.no_grad():
        m.log_sigma.fill_(-6.0)  # a density far above 1 at each pixel the mean hits
        m.decoder.net[-1].weight.zero_()
        m.decoder.net[-1].bias.fill_(-1.0)
    nll = iw_nll(m, x, k=4, pixel_range=(-1.0, 1.0))
    assert (nll > 0).all()  # a probability of pixels: nats >= 0 (before the KL's small share)


def test_gaussian_vae_reports_bits_per_dim_of_8bit_images(tmp_path):
    """`genlab evaluate` on a Gaussian VAE: -log P of 8-bit pixels, the Gaussian integrated over
    each pixel's bin (2/255 wide under normalize=minus_one_one, pixel 0's bin reaching to -inf).
    With the decoder pinned to mean -1 at the smallest scale and q(z|x) = p(z), every weight is
    p(x|z) = P(black)^64 exactly; the old density bound gave about -7.3 bits/dim here."""
    from scipy.stats import norm

    from genlab.evaluation.images import ImageEvalOptions, evaluate_images

    np.savez(tmp_path / "black.npz", images=np.zeros((80, 1, 8, 8), np.uint8))
    data = ["data.dataset=array", f"data.path={tmp_path / 'black.npz'}", "data.val_size=0.1", "data.test_size=0.25",
            "data.normalize=minus_one_one", "data.binarize=false", "model.likelihood=gaussian"]
    res = genlab.train("vae-mnist", tmp_path / "r", overrides=TINY_VAE + data, steps=1)
    run = genlab.load(res.run_dir)
    with torch.no_grad():
        run.model.log_sigma.fill_(-6.0)
        run.model.decoder.net[-1].weight.zero_()
        run.model.decoder.net[-1].bias.fill_(-1.0)
        run.model.encoder.head.weight.zero_()  # mu = 0, log var = 0: q(z|x) is the prior
        run.model.encoder.head.bias.zero_()
        m, _ = evaluate_images(run, ImageEvalOptions(n=20, metrics=["nll_nats", "bits_per_dim"], iw_k=3))
    per_pixel = -norm.logcdf((1 / 255) / math.exp(-6.0))  # P(pixel 0) = Phi((-1 + 1/255 - mean) / sigma)
    assert m["nll_nats"]["value"] == pytest.approx(64 * per_pixel, rel=1e-4)
    assert m["bits_per_dim"]["value"] == pytest.approx(per_pixel / math.log(2), rel=1e-4)
    assert 0 < m["bits_per_dim"]["value"] < 0.1
