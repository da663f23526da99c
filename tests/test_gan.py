import pytest
import torch
from torch import nn

import genlab
from genlab.engine.checkpoint import latest_valid
from genlab.engine.logs import read_log
from genlab.models.gan import GAN, Discriminator, GANConfig, d_loss_terms, g_loss_term, gradient_penalty

SMALL = ["train.test_batches=2", "model.g_channels=16", "model.d_channels=16", "model.mlp_widths=32,64,128", "train.amp=off",
         "train.log_every=5", "train.sample_every=1000", "train.ckpt_every=1000"]


class _Linear(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x, y=None):
        return (x.flatten(1) * self.w).sum(1) + 3.0


class _Square(nn.Module):
    def forward(self, x, y=None):
        return x.flatten(1).pow(2).sum(1)


def test_gradient_penalty_matches_hand_computation():
    # linear critic: the gradient is w everywhere, so GP = (|w| - 1)^2
    w = torch.tensor([3.0, 4.0, 0.0, 0.0])
    real, fake = torch.randn(5, 1, 2, 2), torch.randn(5, 1, 2, 2)
    eps = torch.rand(5, 1, 1, 1)
    assert gradient_penalty(_Linear(w), real, fake, eps).item() == pytest.approx((5.0 - 1.0) ** 2)
    # quadratic critic: grad = 2 x_hat, GP = mean((2 |x_hat| - 1)^2)
    real = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 2.0]]]])
    fake = torch.zeros_like(real)
    eps = torch.tensor([0.5, 0.25]).view(2, 1, 1, 1)
    # x_hat = [0.5, 0], [0, 0.5]  -> |grad| = 1, 1 -> GP = 0; shift one to check a non-zero case
    assert gradient_penalty(_Square(), real, fake, eps).item() == pytest.approx(0.0, abs=1e-7)
    eps = torch.tensor([1.0, 1.0]).view(2, 1, 1, 1)  # x_hat = real: |grad| = 2, 4 -> ((1)^2 + (3)^2) / 2
    assert gradient_penalty(_Square(), real, fake, eps).item() == pytest.approx(5.0)


def test_loss_functions_on_fixed_scores():
    r, f = torch.tensor([2.0, 0.5]), torch.tensor([-1.0, 0.5])
    sp = nn.functional.softplus
    assert d_loss_terms("bce", r, f).item() == pytest.approx((sp(-r).mean() + sp(f).mean()).item())
    assert d_loss_terms("hinge", r, f).item() == pytest.approx((0 + 0.5) / 2 + (0 + 1.5) / 2)
    assert d_loss_terms("wgan-gp", r, f).item() == pytest.approx(f.mean().item() - r.mean().item())
    assert g_loss_term("hinge", f).item() == pytest.approx(0.25)


@pytest.mark.parametrize("loss", ["bce", "wgan-gp"])
def test_channels_last_layout_computes_what_the_contiguous_one_does(loss):
    """The DCGAN keeps its conv weights channels_last for speed: its losses and every gradient equal
    those of the same model in the default layout (private training's), for both optimisers."""
    cfg = GANConfig(arch="dcgan", loss=loss, channels=1, image_size=8, num_classes=3, conditional=True,
                    spectral_norm=loss != "wgan-gp", g_channels=8, d_channels=8, latent_dim=6)
    torch.manual_seed(0)
    fast = GAN(cfg)
    plain = GAN(cfg)
    plain.load_state_dict(fast.state_dict())
    for net in (plain.generator, plain.discriminator):
        net.use_memory_format(torch.contiguous_format)
    conv = fast.generator.net[4].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert plain.generator.net[4].weight.is_contiguous()
    batch = {"x": torch.randn(5, 1, 8, 8), "y": torch.tensor([0, 1, 2, 0, 1])}
    for opt in ("discriminator", "generator"):
        grads = []
        for model in (fast, plain):
            torch.manual_seed(1)
            out = model.loss(batch, opt)
            model.zero_grad()
            out["loss"].backward()
            grads.append((out["loss"].detach(), {k: p.grad.clone() for k, p in model.named_parameters()
                                                 if p.grad is not None}))
        (l1, g1), (l2, g2) = grads
        assert torch.allclose(l1, l2, atol=1e-5) and g1.keys() == g2.keys() and g1
        for k in g1:
            assert torch.allclose(g1[k], g2[k], atol=1e-5, rtol=1e-4), (opt, k)


@pytest.mark.parametrize("arch", ["mlp", "dcgan"])
def test_spectral_norm_bounds_the_largest_singular_value(arch):
    torch.manual_seed(0)
    d = Discriminator(GANConfig(arch=arch, channels=1, image_size=8, num_classes=3, conditional=True,
                                spectral_norm=True, d_channels=8, mlp_widths=(16, 32)))
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    for _ in range(30):  # power iterations run on each training-mode forward
        d(x, y)
    d.eval()
    layers = [m for m in d.modules() if hasattr(m, "parametrizations")]
    assert len(layers) >= 4
    for m in layers:
        sigma = torch.linalg.matrix_norm(m.weight.detach().reshape(m.weight.shape[0], -1), ord=2).item()
        assert sigma == pytest.approx(1.0, abs=1e-2), type(m).__name__


def test_n_critic_discriminator_steps_per_generator_step(tmp_path, data_root, monkeypatch):
    calls = []
    real = GAN.loss

    def recording(self, batch, opt="generator"):
        if self.training:
            calls.append(opt)
        return real(self, batch, opt)

    monkeypatch.setattr(GAN, "loss", recording)
    genlab.train("wgan-gp-mnist", tmp_path / "r", overrides=SMALL + ["train.batch_size=16"], steps=3,
                 data_root=str(data_root))
    assert calls == (["discriminator"] * 5 + ["generator"]) * 3
    c = latest_valid(tmp_path / "r" / "checkpoints")
    d_steps = {v.item() for k, v in c.tensors.items() if k.startswith("optim.discriminator.") and k.endswith(".step")}
    g_steps = {v.item() for k, v in c.tensors.items() if k.startswith("optim.generator.") and k.endswith(".step")}
    assert d_steps == {15.0} and g_steps == {3.0}  # Adam's own update counters
    assert c.state["state"]["batches"] == 18  # every update drew a fresh batch


@pytest.mark.parametrize("preset", ["gan-mlp-mnist", "dcgan-mnist", "wgan-gp-mnist", "cgan-mnist", "sngan-mnist"])
def test_gan_presets_losses_move_the_expected_way(tmp_path, data_root, preset):
    steps = 20 if preset == "wgan-gp-mnist" else 40
    res = genlab.train(preset, tmp_path / "r", overrides=SMALL + ["train.batch_size=32"], steps=steps,
                       data_root=str(data_root))
    recs = [r for r in read_log(res.run_dir) if r["kind"] == "train"]
    first, last = recs[0], recs[-1]
    if preset == "wgan-gp-mnist":
        # the critic learns to separate real from fake: the Wasserstein estimate grows
        assert last["wasserstein"] > first["wasserstein"] and last["wasserstein"] > 0.5
        assert last["gp"] >= 0
    else:
        start = {"bce": 2 * 0.6931, "hinge": 2.0}[genlab.resolve(preset).model.loss]
        assert first["d_loss"] < start + 0.2  # a fresh discriminator scores near 0
        if preset == "dcgan-mnist":
            # its learning rates (20x the others') keep D and G near the equilibrium from the start, so
            # the generator is what moves: from mid-grey noise (mean pixel ~0.48, no black background
            # after one step) to MNIST's statistics (mean ~0.13, most pixels background)
            x, _ = genlab.load(res.run_dir).sample(256, seed=0)
            x = x.float() / 255
            assert abs(float(x.mean()) - 0.13) < 0.05 and float((x < 0.1).float().mean()) > 0.6
            assert last["d_loss"] < start + 0.2
        else:
            assert last["d_loss"] < 0.9 * first["d_loss"]  # the discriminator improves
            assert last["d_acc_real"] > 0.5  # real images are scored as real
    assert not (res.run_dir / "report.json").exists()  # no loss-based report for GANs


def test_conditional_gan_samples_requested_labels(tmp_path, data_root):
    res = genlab.train("cgan-mnist", tmp_path / "r", overrides=SMALL, steps=3, data_root=str(data_root))
    run = genlab.load(res.run_dir)
    imgs, labels = run.sample(30, seed=1)
    assert imgs.shape == (30, 1, 28, 28) and torch.bincount(labels).tolist() == [3] * 10
    _, l7 = run.sample(4, seed=1, label=7)
    assert l7.tolist() == [7] * 4
    # sampling uses the EMA generator
    c = latest_valid(res.run_dir / "checkpoints")
    for k, v in run.model.state_dict().items():
        assert torch.equal(v, c.tensors[f"ema.{k}"])
    assert any(not torch.equal(c.tensors[f"ema.{k}"], c.tensors[f"model.{k}"])
               for k in run.model.state_dict() if k.startswith("generator.") and "weight" in k)


def test_gans_train_on_fashion_and_rgb_folders_by_changing_data(tmp_path, data_root):
    import numpy as np
    from PIL import Image

    res = genlab.train("cgan-mnist", tmp_path / "fashion", overrides=SMALL + ["data.dataset=fashion-mnist"],
                       steps=2, data_root=str(data_root))
    imgs, labels = genlab.load(res.run_dir).sample(10, seed=0)
    assert imgs.shape == (10, 1, 28, 28) and labels.tolist() == list(range(10))
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    for i in range(16):
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{i}.png")
    res = genlab.train("dcgan-mnist", tmp_path / "rgb", overrides=SMALL + [
        "data.dataset=folder", f"data.path={tmp_path / 'images'}", "data.image_size=32", "data.channels=3",
        "train.batch_size=8", "data.val_size=0.1", "data.test_size=0.1"], steps=2)
    imgs, labels = genlab.load(res.run_dir).sample(5, seed=0)
    assert imgs.shape == (5, 3, 32, 32) and labels is None
