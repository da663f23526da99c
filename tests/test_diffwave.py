"""DiffWave: the waveform diffusion model on the shared Gaussian process (guidance, samplers,
the noise/decode split), its network (non-causal, receptive field, patch fold), training, and
that the refactor into GaussianDiffusion left the image model's checkpoints and config alone."""

import dataclasses
import hashlib

import numpy as np
import pytest
import torch

from genlab.errors import ConfigError
from genlab.models.diffusion import schedules as sch
from genlab.models.diffusion.ddpm import Diffusion, DiffusionConfig, GaussianDiffusion, guided
from genlab.models.diffusion.diffwave import DiffWaveConfig, WaveDiffusion, fold, unfold
from genlab.seed import make_generator

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (see conftest)

T_AUDIO = 64


def _model(conditional=False, patch=1, layers=4, cycle=4, randomize=True, **kw) -> WaveDiffusion:
    torch.manual_seed(0)
    cfg = DiffWaveConfig(residual_channels=8, layers=layers, dilation_cycle=cycle, patch=patch, timesteps=50,
                         sampling_steps=4, conditional=conditional, num_classes=3 if conditional else None,
                         audio_length=T_AUDIO, **kw)
    m = WaveDiffusion(cfg).eval()
    if randomize:  # the zero-initialised output layer would make every comparison trivial
        for p in m.net.parameters():
            torch.nn.init.normal_(p, std=0.3)
    return m


def _waves(B=2, T=T_AUDIO, seed=0) -> dict[str, torch.Tensor]:
    """A batch as the audio data makes it: tones of random pitch and length, zero-padded to T."""
    g = make_generator(seed)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None] < lengths[:, None]  # (B, T)
    freq = 0.05 + 0.3 * torch.rand(B, 1, generator=g)
    x = 0.8 * torch.sin(2 * torch.pi * freq * torch.arange(T)[None]) * mask  # (B, T)
    return {"x": x[:, None].float(), "mask": mask, "y": torch.arange(B) % 3}


# --------------------------------------------------------------------------- process


def test_is_an_audio_diffusion_model_on_the_shared_process():
    m = _model(randomize=False)
    assert isinstance(m, GaussianDiffusion) and not isinstance(m, Diffusion) and m.family == "audio"
    assert m.initial_noise(3, make_generator(0)).shape == (3, 1, T_AUDIO)
    out = m.loss(_waves())
    assert set(out) == {"loss", "mse"} and out["loss"].ndim == 0 and torch.isfinite(out["loss"])


def test_guidance_zero_is_unconditional_and_one_is_conditional():
    m = _model(conditional=True)
    x = torch.randn(3, 1, T_AUDIO, generator=make_generator(0))
    t = torch.tensor([5, 20, 45])
    y = torch.tensor([0, 2, 1])
    eps = lambda out: sch.to_x0_eps(out, x, m.alpha_bar[t], "v")[1]  # noqa: E731
    eps_c, eps_u = eps(m.net(x, t, y)), eps(m.net(x, t, None))
    assert not torch.allclose(eps_c, eps_u, atol=1e-3)
    assert torch.allclose(guided(m, x, t, y, 0.0), eps_u, atol=1e-6)
    assert torch.allclose(guided(m, x, t, y, 1.0), eps_c, atol=1e-6)
    # the model combines raw outputs in one batch; two separate passes combine eps: the same
    for w in (0.0, 1.0, 2.5, -0.5):
        assert torch.allclose(eps(m.raw(x, t, y, w)), eps_u + w * (eps_c - eps_u), atol=1e-5)
    # whole samples: w = 0 is sampling without labels, w = 1 plain conditional sampling
    labels = torch.tensor([0, 1, 2])
    s0 = m.sample(3, generator=make_generator(2), labels=labels, guidance=0.0)
    su = m.sample(3, generator=make_generator(2), labels=None)
    s1 = m.sample(3, generator=make_generator(2), labels=labels, guidance=1.0)
    assert torch.equal(s0, su) and not torch.equal(s1, su)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp"])
def test_samplers_give_reproducible_waveforms_in_range(sampler):
    m = _model(conditional=True)
    y = torch.tensor([0, 1, 2])
    a = m.sample(3, generator=make_generator(0), labels=y, sampler=sampler, steps=4, guidance=2.0)
    b = m.sample(3, generator=make_generator(0), labels=y, sampler=sampler, steps=4, guidance=2.0)
    c = m.sample(3, generator=make_generator(1), labels=y, sampler=sampler, steps=4, guidance=2.0)
    assert a.shape == (3, 1, T_AUDIO) and a.dtype == torch.float32
    assert bool(torch.isfinite(a).all()) and a.abs().max() <= 1
    assert torch.equal(a, b) and not torch.allclose(a, c, atol=1e-3)


@pytest.mark.parametrize("sampler,eta", [("dpmpp", 0.0), ("ddim", 0.0), ("dpmpp", 1.0)])
def test_noise_then_decode_is_sample(sampler, eta):
    """What sampling.NoiseDecoder relies on: `sample` is sampling_noise (x_T, and the stochastic
    steps' noise at eta > 0) then a deterministic sample_from, so requests can share one decode
    of their concatenated noise. (sampling.noise_decoder admits image `Diffusion` models only, for
    now: serve draws audio request by request.)"""
    m = _model(conditional=True)
    opts = dict(sampler=sampler, steps=4, guidance=1.5, eta=eta)
    y1, y2 = torch.tensor([0, 1]), torch.tensor([2, 2, 0])
    alone1 = m.sample(2, generator=make_generator(5), labels=y1, **opts)
    alone2 = m.sample(3, generator=make_generator(6), labels=y2, **opts)
    z = torch.cat([m.sampling_noise(2, make_generator(5), steps=4, eta=eta),
                   m.sampling_noise(3, make_generator(6), steps=4, eta=eta)])
    shared = m.sample_from(z[:, 0], m.T - 1, steps=4, sampler=sampler, eta=eta, guidance=1.5, noises=z[:, 1:],
                           labels=torch.cat([y1, y2]))
    assert torch.allclose(shared, torch.cat([alone1, alone2]), atol=1e-5)


def test_logsnr_spacing():
    ab = sch.alphas_cumprod(sch.cosine_beta_schedule(1000))
    lam = 0.5 * torch.log(ab / (1 - ab))
    for k, start, floor in [(20, None, -3.0), (10, 400, -3.0), (10, None, None), (3, 2, -3.0), (1, None, -3.0)]:
        ts = sch.logsnr_timesteps(ab, k, start, floor)
        assert len(ts) == k and ts[0] == (999 if start is None else start)
        assert all(a > b for a, b in zip(ts, ts[1:])) and (k == 1 or ts[-1] == 0)
    assert sch.logsnr_timesteps(ab, 1000, floor=-3.0) == list(range(999, -1, -1))
    # 20 targets even in lambda from -3 to lambda[0], the first moved to `start`: each step lands near its target
    ts = sch.logsnr_timesteps(ab, 20, floor=-3.0)
    targets = torch.linspace(-3.0, lam[0].item(), 20, dtype=torch.float64)
    gap = (targets[1] - targets[0]).item()
    assert ((lam[ts[1:]] - targets[1:]).abs() < 0.25 * gap).all()
    with pytest.raises(ValueError, match="sampling steps"):
        sch.logsnr_timesteps(ab, 11, start=9)
    m = _model()  # the audio model samples on this spacing, the image model keeps even spacing
    assert m.sampling_timesteps(4) == sch.logsnr_timesteps(m.alpha_bar, 4, floor=-3.0) != sch.timesteps(50, 4)


def test_inversion_then_ddim_reconstructs():
    m = _model(prediction="eps", clip_denoised=None)
    for p in m.net.parameters():  # a smooth network: DDIM inversion is exact in the small-step limit
        p.data.mul_(0.1)
    x0 = _waves()["x"]
    back = m.sample_from(m.invert(x0, 50), m.T - 1, steps=50, sampler="ddim", eta=0.0)
    assert (back - x0).abs().max() < 0.05


# --------------------------------------------------------------------------- network


@pytest.mark.parametrize("patch, cycle", [(1, 4), (4, 2)])
def test_network_is_non_causal_with_the_stated_receptive_field(patch, cycle):
    """The input samples one output sample depends on (non-zero gradient) reach into its future,
    and span exactly `receptive_field` samples."""
    m = _model(patch=patch, cycle=cycle)
    x = torch.randn(1, 1, T_AUDIO, generator=make_generator(0), requires_grad=True)
    i = T_AUDIO // 2
    m.net(x, torch.tensor([10]))[0, 0, i].backward()
    dep = torch.nonzero(x.grad[0, 0]).flatten()
    assert dep.min() < i < dep.max()  # past and future
    assert dep.max() - dep.min() + 1 == m.receptive_field
    assert m.receptive_field == {1: 31, 4: 52}[patch]  # (1 + 2 (1+2+4+8)) * 1; (1 + 2 (1+2+1+2)) * 4


def test_inference_chunks_give_the_batch_result():
    from genlab.models.diffusion.diffwave import EVAL_CHUNK

    m = _model(conditional=True)
    B = 2 * EVAL_CHUNK + 3
    x = torch.randn(B, 1, T_AUDIO, generator=make_generator(0))
    t, y = torch.randint(0, 50, (B,), generator=make_generator(1)), torch.arange(B) % 3
    whole = m.net(x, t, y).detach()  # with gradients: one pass
    with torch.no_grad():  # in chunks
        assert torch.allclose(m.net(x, t, y), whole, atol=1e-5)
        assert torch.allclose(m.net(x, t, None), m.net(x, t, torch.full((B,), 3)), atol=1e-6)


def test_default_receptive_field_covers_the_default_clip():
    m = WaveDiffusion(DiffWaveConfig(audio_length=5120))
    assert m.receptive_field == (1 + 2 * 2 * 1023) * 4 and m.receptive_field >= 2 * 5120 - 1


def test_patch_fold_is_an_exact_inverse():
    x = torch.randn(2, 3, 24, generator=make_generator(0))
    for p in (1, 2, 4, 8):
        h = fold(x, p)
        assert h.shape == (2, 3 * p, 24 // p) and torch.equal(unfold(h, p), x)
        assert torch.equal(fold(unfold(h, p), p), h)
    # channel c p + j at position i is sample i p + j
    assert fold(torch.arange(8.0).view(1, 1, 8), 4)[0].tolist() == [[0, 4], [1, 5], [2, 6], [3, 7]]


@pytest.mark.parametrize("patch", [1, 4])
def test_loss_falls_on_a_fixed_batch(patch):
    m = _model(patch=patch, randomize=False).train()
    batch = _waves(B=2)
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    losses = []
    for i in range(60):  # ~0.3 s; the zero-initialised output layer has to move before the rest learns
        torch.manual_seed(i % 3)  # three fixed draws of (t, noise)
        out = m.loss(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"model.audio_length \(100\) must be divisible by model.patch \(8\)"):
        DiffWaveConfig(audio_length=100, patch=8).validate()
    with pytest.raises(ConfigError, match="model.dilation_cycle must be >= 1"):
        DiffWaveConfig(dilation_cycle=0).validate()
    with pytest.raises(ConfigError, match="model.audio_length"):
        WaveDiffusion(DiffWaveConfig())
    with pytest.raises(ConfigError, match="needs labelled data"):
        WaveDiffusion(DiffWaveConfig(audio_length=64, conditional=True))
    with pytest.raises(ConfigError, match="--guidance needs a class-conditional"):
        _model().sample(1, generator=make_generator(0), guidance=2.0)


# --------------------------------------------------------------------------- the image model kept


# Recorded from ddpm.py before the GaussianDiffusion refactor (commit a5b7781), plus noise_draws (added for
# private training; default 1, so configs saved before it load unchanged).
IMAGE_CONFIG_FIELDS = {
    "schedule": "cosine", "timesteps": 1000, "prediction": "v", "loss_weight": "min_snr", "snr_gamma": 5.0,
    "base_channels": 32, "channel_mults": (1, 2, 2), "num_res_blocks": 2, "attention_resolutions": (7,),
    "heads": 4, "dropout": 0.0, "groups": 8, "patch": 2, "backbone": "unet", "noise_draws": 1, "conditional": False,
    "label_dropout": 0.1,
    "sampler": "dpmpp", "sampling_steps": 20, "guidance": 1.0, "eta": 0.0, "clip_denoised": 1.0,
    "channels": None, "image_size": None, "num_classes": None}
TINY_IMAGE_KEYS = """
time_mlp.0.weight time_mlp.0.bias time_mlp.2.weight time_mlp.2.bias class_emb.weight conv_in.weight conv_in.bias
down.0.0.{RB} down.0.1.{AT} down.1.conv.weight down.1.conv.bias down.2.0.{RB} down.2.0.{SK}
mid.0.{RB} mid.1.{AT} mid.2.{RB} up.0.0.{RB} up.0.0.{SK} up.1.0.{RB} up.1.0.{SK} up.2.conv.weight up.2.conv.bias
up.3.0.{RB} up.3.0.{SK} up.3.1.{AT} up.4.0.{RB} up.4.0.{SK} up.4.1.{AT} out.0.weight out.0.bias out.2.weight out.2.bias
"""
# sha256 of repr([(key, shape), ...]) of Diffusion(DiffusionConfig(channels=1, image_size=28, conditional=True,
# num_classes=10)): the ddpm-cond-mnist preset's network, 245 tensors
PRESET_IMAGE_SHA = "470354b91204fbf3493d76b5b5eae381d11db174757f241938ce21677b6ed9a5"


def _expand(spec: str) -> list[str]:
    parts = {"RB": [f"{n}.{w}" for n in ("norm1", "conv1", "emb", "norm2", "conv2") for w in ("weight", "bias")],
             "AT": [f"{n}.{w}" for n in ("norm", "qkv", "proj") for w in ("weight", "bias")],
             "SK": ["skip.weight", "skip.bias"]}
    keys = []
    for word in spec.split():
        if word.endswith("}"):
            prefix, part = word[:-1].split("{")
            keys += ["net." + prefix + k for k in parts[part]]
        else:
            keys.append("net." + word)
    return keys


def test_image_diffusion_checkpoints_and_config_unchanged():
    fields = {f.name: f.default for f in dataclasses.fields(DiffusionConfig)}
    assert fields == IMAGE_CONFIG_FIELDS  # names and defaults (the order in a saved config.yaml moved)
    tiny = Diffusion(DiffusionConfig(timesteps=16, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                                     attention_resolutions=(4,), heads=2, groups=4, patch=2, conditional=True,
                                     channels=1, image_size=8, num_classes=3))
    assert list(tiny.state_dict()) == _expand(TINY_IMAGE_KEYS)
    preset = Diffusion(DiffusionConfig(channels=1, image_size=28, conditional=True, num_classes=10))
    shapes = [(k, tuple(v.shape)) for k, v in preset.state_dict().items()]
    assert hashlib.sha256(repr(shapes).encode()).hexdigest() == PRESET_IMAGE_SHA
    with pytest.raises(ConfigError, match="model.base_channels must be divisible by model.heads"):
        DiffusionConfig(base_channels=30).validate()
