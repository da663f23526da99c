"""model.backbone: diffusers' UNet2DModel and denoising-diffusion-pytorch's Unet as genlab diffusion
networks (genlab.models.diffusion.backbones)."""

import pytest
import torch

import genlab
from genlab.config import resolve
from genlab.engine.run import build_model
from genlab.errors import ConfigError
from genlab.models.diffusion.backbones import DiffusersUNet
from tests.test_diffusion import small_mnist

pytestmark = pytest.mark.usefixtures("one_thread")  # small networks

SMALL = ["model.base_channels=8", "model.groups=4", "model.heads=2", "model.num_res_blocks=1", "model.channels=1",
         "model.image_size=28"]


def _model(backbone: str, preset: str = "ddpm-mnist"):
    torch.manual_seed(0)
    return build_model(resolve(preset, overrides=SMALL + [f"model.backbone={backbone}"]))


@pytest.mark.parametrize("backbone", ["diffusers", "ddpm-pytorch"])
def test_backbone_maps_images_to_images_and_learns(backbone):
    pytest.importorskip("diffusers" if backbone == "diffusers" else "denoising_diffusion_pytorch")
    m = _model(backbone)
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    out = m.net(x, torch.tensor([0, 10, 500, 999]), None)
    assert out.shape == x.shape and torch.isfinite(out).all()
    # the prediction depends on the time step (the timestep embedding is wired in)
    assert not torch.allclose(out[:1], m.net(x[:1], torch.tensor([999]), None), atol=1e-4)
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    batch = {"x": torch.rand(8, 1, 28, 28, generator=g) * 2 - 1}
    losses = []
    for i in range(12):
        torch.manual_seed(i % 2)  # two fixed (t, noise) draws: the loss on them must fall
        loss = m.loss(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-2] < 0.85 * losses[0] and losses[-1] < 0.85 * losses[1], losses  # each draw's loss fell


def test_diffusers_backbone_pads_crops_and_conditions():
    pytest.importorskip("diffusers")
    net = DiffusersUNet(1, 28, 8, (1, 2, 2), 1, 4, num_classes=10, heads=2)
    assert net.size == 28  # the last of three levels does not downsample: 28 -> 14 -> 7 as is
    seen = []
    net.net.time_proj.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].clone()))
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([5, 17, 999])
    a, b = net(x, t, torch.tensor([1, 2, 10])), net(x, t, None)
    assert torch.equal(seen[0], t)  # the integer steps reach the time embedding unscaled
    assert a.shape == (3, 1, 28, 28)
    assert torch.allclose(a[2], b[2], atol=1e-5)  # no label = the null class 10
    assert not torch.allclose(a[0], b[0], atol=1e-4)  # a label changes the prediction
    # a size its levels cannot halve is padded at the right and bottom, and the output cropped back there
    odd = DiffusersUNet(1, 30, 8, (1, 2, 2), 1, 4, num_classes=None, heads=2)
    assert odd.size == 32
    x = torch.randn(1, 1, 30, 30)
    out = odd(x, torch.tensor([3]))
    full = odd.net(torch.nn.functional.pad(x, (0, 2, 0, 2)), torch.tensor([3])).sample  # (1, 1, 32, 32)
    assert out.shape == (1, 1, 30, 30) and torch.equal(out, full[..., :30, :30])


def test_ddpm_pytorch_run_trains_and_samples(tmp_path, data_root):
    pytest.importorskip("denoising_diffusion_pytorch")
    over = SMALL[:3] + small_mnist(tmp_path, data_root, n=160, size=28) + [
        "model.backbone=ddpm-pytorch", "train.batch_size=8", "train.amp=off", "train.eval_every=1000",
        "train.sample_every=1000", "train.ckpt_every=1000", "train.log_every=2", "model.sampling_steps=4"]
    res = genlab.train("ddpm-mnist", tmp_path / "r", overrides=over, steps=4)
    assert res.finished
    imgs, _ = genlab.load(tmp_path / "r").sample(2, seed=0)
    assert imgs.shape == (2, 1, 28, 28) and torch.isfinite(imgs).all()


def test_backbone_errors():
    with pytest.raises(ConfigError, match="model.backbone must be one of"):
        resolve("ddpm-mnist", overrides=["model.backbone=resnet"])
    pytest.importorskip("denoising_diffusion_pytorch")
    with pytest.raises(ConfigError, match="no class conditioning"):
        build_model(resolve("ddpm-cond-mnist", overrides=SMALL + ["model.backbone=ddpm-pytorch", "model.num_classes=10"]))


def test_a_diffusers_run_trains_and_samples(tmp_path, data_root):
    pytest.importorskip("diffusers")
    over = SMALL[:4] + small_mnist(tmp_path, data_root, n=160, size=28) + ["model.backbone=diffusers", "train.batch_size=8", "train.amp=off", "train.eval_every=1000",
                        "train.sample_every=1000", "train.ckpt_every=1000", "train.log_every=2", "model.sampling_steps=4"]
    res = genlab.train("ddpm-mnist", tmp_path / "r", overrides=over, steps=4)
    assert res.finished
    imgs, _ = genlab.load(tmp_path / "r").sample(2, seed=0)
    again, _ = genlab.load(tmp_path / "r").sample(2, seed=0)
    assert imgs.shape == (2, 1, 28, 28) and torch.equal(imgs, again)
