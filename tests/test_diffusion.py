"""Diffusion: schedules, the forward process, prediction targets, samplers, guidance, the UNet,
training on MNIST and `genlab sample`'s diffusion flags."""

import math

import numpy as np
import pytest
import torch

import genlab
from genlab.engine.device import cxx_compiler
from genlab.models.diffusion import schedules as sch
from genlab.models.diffusion.ddpm import Diffusion, DiffusionConfig, dpmpp_2m_step, guided
from genlab.models.diffusion.unet import UNet, UNetConfig, float_norm
from genlab.sampling import noise_decoder
from genlab.seed import make_generator
from tests.conftest import run_cli

# A tiny diffusion model: a few steps of it train in seconds.
TINY_DIFFUSION = ["train.test_batches=2", "train.amp=off", "model.base_channels=8", "model.channel_mults=[1,2]", "model.num_res_blocks=1",
                  "model.attention_resolutions=[4]", "model.heads=2", "model.groups=4", "model.timesteps=50",
                  "model.sampling_steps=3", "train.batch_size=32", "train.log_every=1", "train.eval_every=1000",
                  "train.eval_batches=1", "train.sample_every=1000", "train.warmup_steps=0"]


def small_mnist(folder, data_root, n=320, size=16) -> list[str]:
    """Write n MNIST test images resized to size x size (with labels) to an .npz; returns the
    --set items that train on it (a small test split keeps the end-of-training report quick)."""
    from genlab.config import DataConfig
    from genlab.data.datasets import load_image_data
    from genlab.images import resize_uint8

    d = load_image_data(DataConfig(dataset="mnist"), data_root)
    path = folder / f"mnist{size}.npz"
    np.savez(path, images=resize_uint8(d.test_x[:n], (size, size)).numpy(), labels=d.test_y[:n].numpy())
    return ["data.dataset=array", f"data.path={path}", "data.val_size=0.1", "data.test_size=0.1"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (see conftest)


def _model(conditional=False, prediction="v", T=16, size=8, channels=1, randomize=True, **kw) -> Diffusion:
    torch.manual_seed(0)
    cfg = DiffusionConfig(timesteps=T, prediction=prediction, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                          attention_resolutions=(4,), heads=2, groups=4, patch=1, conditional=conditional,
                          channels=channels, image_size=size, num_classes=3 if conditional else None,
                          sampling_steps=4, **kw)
    m = Diffusion(cfg).eval()
    if randomize:  # the UNet's zero-initialised outputs would make every comparison trivial
        for p in m.net.parameters():
            torch.nn.init.normal_(p, std=0.2)
    return m


# --------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_alpha_bar_is_monotone_in_0_1(name):
    ab = sch.alphas_cumprod(sch.SCHEDULES[name](1000))
    assert ab.dtype == torch.float64 and ab.shape == (1000,)
    assert bool((ab[1:] < ab[:-1]).all()) and bool((ab > 0).all()) and bool((ab < 1).all())


def test_schedule_known_values():
    lin = sch.alphas_cumprod(sch.linear_beta_schedule(1000))
    assert lin[0].item() == pytest.approx(1 - 1e-4, abs=1e-12)  # t=0: 1 - beta_1
    assert lin[-1].item() == pytest.approx(4.04e-5, rel=0.01)  # t=T: DDPM's ~4e-5 (almost pure noise)
    cos = sch.alphas_cumprod(sch.cosine_beta_schedule(1000))
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert cos[0].item() == pytest.approx(f(1) / f(0), rel=1e-12)
    assert cos[499].item() == pytest.approx(f(500) / f(0), rel=1e-9)  # ~0.5 half-way
    assert cos[-1].item() < 1e-7  # the last beta is clipped at 0.999, so alpha_bar ends just above 0
    # any T ends near pure noise too (linear betas rescaled by 1000 / T)
    assert sch.alphas_cumprod(sch.linear_beta_schedule(100))[-1].item() < 1e-4


def test_timesteps_spacing():
    assert sch.timesteps(1000, 4) == [999, 749, 499, 249]
    assert sch.timesteps(10, 10) == list(range(9, -1, -1))
    assert sch.timesteps(1000, 2, start=99) == [99, 49]
    with pytest.raises(ValueError, match="sampling steps"):
        sch.timesteps(10, 11)


def test_closed_form_noising_matches_the_iterative_chain():
    betas = sch.cosine_beta_schedule(50)
    ab = sch.alphas_cumprod(betas)
    # exactly: the chain's coefficient of x0 and its noise variance
    coef, var = 1.0, 0.0
    for b, a in zip(betas.tolist(), ab.tolist()):
        coef, var = coef * math.sqrt(1 - b), (1 - b) * var + b
        assert coef == pytest.approx(math.sqrt(a), rel=1e-10) and var == pytest.approx(1 - a, rel=1e-10)
    # and in distribution, through q_step and q_sample themselves
    g = make_generator(0)
    x0 = torch.full((20_000, 1), 0.7, dtype=torch.float64)
    x = x0.clone()
    for t in range(30):
        x = sch.q_step(x, t, betas, torch.randn(x.shape, generator=g, dtype=torch.float64))
    direct = sch.q_sample(x0, torch.full((20_000,), 29), ab, torch.randn(x0.shape, generator=g, dtype=torch.float64))
    for a in (x, direct):
        assert a.mean().item() == pytest.approx(0.7 * math.sqrt(ab[29].item()), abs=0.02)
        assert a.var().item() == pytest.approx(1 - ab[29].item(), rel=0.03)


@pytest.mark.parametrize("target", ["eps", "x0", "v"])
def test_prediction_targets_convert_exactly(target):
    g = make_generator(1)
    x0, eps = (torch.randn(6, 1, 4, 4, generator=g, dtype=torch.float64) for _ in range(2))
    ab = sch.alphas_cumprod(sch.cosine_beta_schedule(100))
    t = torch.tensor([0, 10, 50, 90, 98, 99])
    x_t = sch.q_sample(x0, t, ab, eps)
    pred = sch.from_x0_eps(x0, eps, ab[t], target)
    x0_back, eps_back = sch.to_x0_eps(pred, x_t, ab[t], target)
    assert torch.allclose(x0_back, x0, atol=1e-9, rtol=0) and torch.allclose(eps_back, eps, atol=1e-9, rtol=0)
    for other in ("eps", "x0", "v"):  # target -> (x0, eps) -> other target
        assert torch.allclose(sch.from_x0_eps(x0_back, eps_back, ab[t], other), sch.from_x0_eps(x0, eps, ab[t], other),
                              atol=1e-9, rtol=0)


def test_step_for_noise_matches_the_noise_level():
    ab = sch.alphas_cumprod(sch.cosine_beta_schedule(1000))
    t = sch.step_for_noise(ab, 1.0)
    assert math.sqrt((1 - ab[t]) / ab[t]) == pytest.approx(1.0, rel=0.01) and 450 < t < 550


# --------------------------------------------------------------------------- UNet


@pytest.mark.parametrize("cfg", [
    UNetConfig(in_channels=1, out_channels=1, image_size=8, base_channels=8, channel_mults=(1, 2),
               num_res_blocks=1, attention_resolutions=(4,), heads=2, groups=4),
    UNetConfig(in_channels=3, out_channels=3, image_size=12, base_channels=8, channel_mults=(1, 2, 2),
               num_res_blocks=2, attention_resolutions=(3, 6), heads=4, groups=4, num_classes=5),
    UNetConfig(in_channels=1, out_channels=1, image_size=28, base_channels=8, channel_mults=(1, 2, 2),
               num_res_blocks=1, attention_resolutions=(7,), heads=2, groups=4, patch=2),
    UNetConfig(in_channels=1, out_channels=2, image_size=14, base_channels=8, channel_mults=(1, 1, 2),
               num_res_blocks=1, attention_resolutions=(), heads=1, groups=2),  # 14 -> 7 -> 4 -> 7 -> 14
])
def test_unet_output_shape(cfg):
    net = UNet(cfg)
    x = torch.randn(2, cfg.in_channels, cfg.image_size, cfg.image_size)
    y = torch.tensor([0, 4]) if cfg.num_classes else None
    out = net(x, torch.tensor([0, 999]), y)
    assert out.shape == (2, cfg.out_channels, cfg.image_size, cfg.image_size)
    if cfg.num_classes:  # labels change the output, None is the "no label" token
        for p in net.parameters():
            torch.nn.init.normal_(p, std=0.2)
        assert not torch.allclose(net(x, torch.tensor([3, 3]), y), net(x, torch.tensor([3, 3]), None))


def test_unet_under_bf16_autocast_follows_the_fp32_path():
    """bf16 autocast (convolutions in bf16; GroupNorm and the CPU attention product in fp32)
    gives the fp32 output and gradients to bf16's precision."""
    cfg = UNetConfig(in_channels=1, out_channels=1, image_size=28, base_channels=16, channel_mults=(1, 2, 2),
                     num_res_blocks=1, attention_resolutions=(7,), heads=2, groups=4, patch=2)
    torch.manual_seed(0)
    net = UNet(cfg)
    for p in net.parameters():  # off the zero init, so every block acts
        torch.nn.init.normal_(p, std=0.05)
    x, t = torch.randn(4, 1, 28, 28), torch.tensor([0, 250, 500, 999])

    def run(amp):
        net.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = net(x, t)
        out.float().square().mean().backward()
        return out, torch.cat([p.grad.flatten() for p in net.parameters()])

    (ref, g_ref), (out, g) = run(False), run(True)
    assert ref.dtype == torch.float32 and out.dtype == torch.bfloat16  # the convolutions did run in bf16
    assert (out.float() - ref).norm() / ref.norm() < 2e-2
    assert torch.nn.functional.cosine_similarity(g, g_ref, dim=0) > 0.999


def test_float_norm_normalises_in_fp32_and_keeps_the_input_dtype():
    gn = torch.nn.GroupNorm(2, 8)
    x = (torch.randn(3, 8, 5, 5) * 40 + 300).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = float_norm(gn, x)
    ref = gn(x.float())
    assert y.dtype == torch.bfloat16 and y.equal(ref.bfloat16())  # one rounding, at the end
    assert float_norm(gn, x.float()).equal(ref)


# --------------------------------------------------------------------------- model


def test_loss_falls_on_a_fixed_batch():
    m = _model(randomize=False).train()
    x = torch.rand(8, 1, 8, 8) * 2 - 1
    opt = torch.optim.Adam(m.parameters(), 3e-3)
    losses = []
    for i in range(30):
        torch.manual_seed(i % 3)  # three fixed draws of (t, noise)
        out = m.loss({"x": x})
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert set(out) == {"loss", "mse"} and np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp"])
def test_samplers_give_images_in_range(sampler):
    m = _model()
    x = m.sample(3, generator=make_generator(0), sampler=sampler, steps=4)
    assert x.shape == (3, 1, 8, 8) and bool(torch.isfinite(x).all()) and x.abs().max() <= 1


class _Oracle(torch.nn.Module):
    """The exact network for data x0 ~ N(0, c^2 I): E[x0 | x_t] = a c^2 x_t / (a^2 c^2 + s^2), as `target`."""

    def __init__(self, ab, c, target):
        super().__init__()
        self.ab, self.c, self.target = ab, c, target

    def forward(self, x, t, y=None):
        ab = self.ab[t].to(x.dtype).view(-1, 1, 1, 1)
        x0 = ab.sqrt() * self.c ** 2 * x / (ab * self.c ** 2 + (1 - ab))
        return sch.from_x0_eps(x0, (x - ab.sqrt() * x0) / (1 - ab).sqrt(), self.ab[t], self.target)


@pytest.mark.parametrize("target", ["eps", "x0", "v"])
@pytest.mark.parametrize("sampler, steps, eta, tol", [("ddpm", 250, None, 0.015), ("ddim", 50, 0.0, 0.025),
                                                      ("dpmpp", 10, 0.0, 0.04), ("dpmpp", 20, 0.0, 0.01),
                                                      ("dpmpp", 20, 1.0, 0.02)])
def test_samplers_with_the_exact_network_reproduce_the_data_distribution(target, sampler, steps, eta, tol):
    """With the Bayes-optimal network for Gaussian data of std 0.5 every sampler must give samples
    of std 0.5 (a little less with few steps: the last step returns the posterior mean)."""
    m = _model(T=1000, prediction=target, clip_denoised=None, randomize=False)
    m.net = _Oracle(m.alpha_bar, 0.5, target)
    x = m.sample(500, generator=make_generator(0), sampler=sampler, steps=steps, eta=eta)
    assert x.std().item() == pytest.approx(0.5, abs=tol) and abs(x.mean().item()) < 0.01


def test_ddim_eta0_is_deterministic_from_a_seed():
    m = _model()
    a = m.sample(3, generator=make_generator(7), sampler="ddim", eta=0.0)
    b = m.sample(3, generator=make_generator(7), sampler="ddim", eta=0.0)
    c = m.sample(3, generator=make_generator(8), sampler="ddim", eta=0.0)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # eta = 0 draws nothing after the start noise: the same x_T gives the same image whatever the generator
    x_T = torch.randn(3, 1, 8, 8, generator=make_generator(7))
    d = m.sample_from(x_T, m.T - 1, steps=4, sampler="ddim", eta=0.0, generator=make_generator(123))
    assert torch.equal(a, d)
    # while eta = 1 (ancestral) uses fresh noise at every step
    e = m.sample_from(x_T, m.T - 1, steps=4, sampler="ddim", eta=1.0, generator=make_generator(123))
    assert not torch.equal(a, e)
    # so does DPM-Solver++ at eta > 0 (its SDE form), reproducibly from a seed
    f, f2 = (m.sample_from(x_T, m.T - 1, steps=4, sampler="dpmpp", eta=1.0, generator=make_generator(s))
             for s in (123, 123))
    ode = m.sample_from(x_T, m.T - 1, steps=4, sampler="dpmpp", eta=0.0, generator=make_generator(123))
    assert torch.equal(f, f2) and not torch.equal(f, ode)


@pytest.mark.parametrize("sampler,eta", [("dpmpp", 0.0), ("dpmpp", 1.0), ("ddim", 0.0), ("ddim", 0.5), ("ddpm", None)])
def test_noise_decoder_shares_one_decode_and_gives_each_request_its_own_samples(sampler, eta):
    """serve batches requests with their own seeds into one decode (sampling.noise_decoder): the
    stochastic samplers too, whose steps' noise is drawn up front with x_T in `sample`'s order.
    Each request must get exactly what `sample` gives it alone."""
    m = _model(conditional=True)
    opts = {"sampler": sampler, "steps": 4, "guidance": 1.5, **({} if eta is None else {"eta": eta})}
    dec = noise_decoder(m, opts)
    y1, y2 = torch.tensor([0, 1]), torch.tensor([2, 2, 0])
    alone = [m.sample(n, generator=make_generator(s), labels=y, **opts) for n, s, y in [(2, 5, y1), (3, 6, y2)]]
    z = torch.cat([dec.noise(2, make_generator(5)), dec.noise(3, make_generator(6))])
    draws = 1 if eta == 0 else 4  # x_T, then (ddpm, eta > 0) one per step but the last
    assert z.shape == (5, draws, 1, 8, 8)
    shared = dec.decode(z, torch.cat([y1, y2]))
    assert torch.allclose(shared, torch.cat(alone), atol=1e-5)
    assert not torch.allclose(alone[0], alone[1][:2], atol=1e-3)  # the seeds differ


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_dpmpp_step_keeps_the_marginals_of_a_point_mass(eta):
    """Data at one point x*: with the exact x0 = x*, x_t ~ N(a_t x*, s_t^2) must step to
    N(a_s x*, s_s^2) (a = sqrt(ab), s = sqrt(1 - ab)) at any eta: the ODE and SDE forms of
    DPM-Solver++(2M) by hand."""
    ab_t, ab_s, star = 0.3, 0.7, 0.4
    g = make_generator(0)
    x_t = math.sqrt(ab_t) * star + math.sqrt(1 - ab_t) * torch.randn(400_000, generator=g, dtype=torch.float64)
    x0 = torch.full_like(x_t, star)
    z = torch.randn(x_t.shape, generator=g, dtype=torch.float64)
    x_s = dpmpp_2m_step(x_t, x0, x0, 0.3, ab_t, ab_s, eta, z)  # second order: x0_prev = x0 changes nothing
    assert x_s.mean().item() == pytest.approx(math.sqrt(ab_s) * star, abs=3e-3)
    assert x_s.std().item() == pytest.approx(math.sqrt(1 - ab_s), abs=3e-3)
    if eta == 0:  # deterministic: an affine map of x_t with slope sigma_s / sigma_t
        assert torch.allclose(x_s - math.sqrt(ab_s) * star,
                              (x_t - math.sqrt(ab_t) * star) * math.sqrt((1 - ab_s) / (1 - ab_t)))


def test_ddpm_with_all_steps_is_the_ancestral_posterior():
    """One DDPM step from t to t-1 has the posterior variance beta_t (1 - ab_{t-1}) / (1 - ab_t)."""
    from genlab.models.diffusion.ddpm import ddim_step

    ab = sch.alphas_cumprod(sch.cosine_beta_schedule(100))
    t = 40
    x0, eps = torch.zeros(1), torch.zeros(1)
    out = torch.stack([ddim_step(x0, eps, float(ab[t]), float(ab[t - 1]), 1.0, torch.randn(1, generator=make_generator(i)))
                       for i in range(5000)])
    beta = 1 - ab[t] / ab[t - 1]
    assert out.var().item() == pytest.approx(float(beta * (1 - ab[t - 1]) / (1 - ab[t])), rel=0.06)


def test_guidance_zero_is_unconditional_and_one_is_conditional():
    m = _model(conditional=True, prediction="v")
    x = torch.randn(4, 1, 8, 8, generator=make_generator(0))
    t = torch.tensor([3, 7, 11, 15])
    y = torch.tensor([0, 1, 2, 1])
    eps = lambda out: sch.to_x0_eps(out, x, m.alpha_bar[t], "v")[1]  # noqa: E731
    eps_c, eps_u = eps(m.net(x, t, y)), eps(m.net(x, t, None))
    assert not torch.allclose(eps_c, eps_u)
    assert torch.allclose(guided(m, x, t, y, 0.0), eps_u, atol=1e-6)
    assert torch.allclose(guided(m, x, t, y, 1.0), eps_c, atol=1e-6)
    # the model combines raw outputs in one batch: the same as combining eps
    for w in (0.0, 1.0, 3.0):
        assert torch.allclose(eps(m.raw(x, t, y, w)), guided(m, x, t, y, w), atol=1e-5)
    # and whole samples: w = 0 equals sampling without labels, w = 1 equals plain conditional sampling
    s0 = m.sample(3, generator=make_generator(2), labels=torch.tensor([0, 1, 2]), guidance=0.0)
    su = m.sample(3, generator=make_generator(2), labels=None)
    s1 = m.sample(3, generator=make_generator(2), labels=torch.tensor([0, 1, 2]), guidance=1.0)
    assert torch.equal(s0, su) and not torch.equal(s1, su)


def test_inversion_then_ddim_reconstructs():
    m = _model(T=50, prediction="eps", clip_denoised=None)
    for p in m.net.parameters():  # a smooth network: DDIM inversion is exact in the small-step limit
        p.data.mul_(0.1)
    x0 = torch.randn(2, 1, 8, 8, generator=make_generator(3)).clamp(-1, 1)
    z = m.invert(x0, 50)
    back = m.sample_from(z, m.T - 1, steps=50, sampler="ddim", eta=0.0)
    assert (back - x0).abs().max() < 0.05


# --------------------------------------------------------------------------- engine and CLI


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory, data_root):
    folder = tmp_path_factory.mktemp("diffusion")
    res = genlab.train("ddpm-cond-mnist", folder / "run", steps=3, data_root=str(data_root),
                       overrides=TINY_DIFFUSION + small_mnist(folder, data_root))
    return res.run_dir


def test_trains_on_mnist_and_samples(cond_run):
    from genlab.engine.logs import read_log

    assert [r["step"] for r in read_log(cond_run) if r["kind"] == "train"] == [1, 2, 3]
    assert (cond_run / "samples" / "final.png").is_file()
    run = genlab.load(cond_run)
    assert sum(p.numel() for p in run.model.parameters()) < 100_000
    images, labels = run.sample(4, seed=0, sampler="ddim", steps=2)
    assert images.shape == (4, 1, 16, 16) and images.dtype == torch.uint8 and labels.tolist() == [0, 1, 2, 3]


def test_cli_sample_flags(cond_run, tmp_path):
    r = run_cli("sample", str(cond_run), "--n", "4", "--sampler", "ddim", "--sampling-steps", "2", "--eta", "0.5",
                "--guidance", "1.5", "--out", str(tmp_path / "s.npz"))
    assert r.returncode == 0, r.stderr
    z = np.load(tmp_path / "s.npz")
    assert z["images"].shape == (4, 1, 16, 16) and z["images"].dtype == np.uint8 and z["labels"].tolist() == [0, 1, 2, 3]
    r = run_cli("sample", str(cond_run), "--n", "2", "--sampling-steps", "0", "--out", str(tmp_path / "s.png"))
    assert r.returncode != 0 and r.stderr.strip().count("\n") == 0 and "--sampling-steps must be in 1..50" in r.stderr


@pytest.mark.skipif(cxx_compiler() is None, reason="torch.compile needs a C++ compiler")
def test_compiled_unet_samples_the_same_images(cond_run):
    eager = genlab.load(cond_run).sample(4, seed=3, sampler="ddim", steps=2)[0]
    compiled = genlab.load(cond_run).compile().sample(4, seed=3, sampler="ddim", steps=2)[0]
    assert (compiled.int() - eager.int()).abs().max() <= 1  # rounding to uint8 may differ by one level


def test_other_families_reject_diffusion_flags(tmp_path, data_root):
    from tests.conftest import TINY_VAE

    res = genlab.train("vae-mnist", tmp_path / "vae", steps=2, data_root=str(data_root), overrides=TINY_VAE)
    r = run_cli("sample", str(res.run_dir), "--sampler", "ddim", "--guidance", "2", "--out", str(tmp_path / "s.png"))
    assert r.returncode != 0 and r.stderr.strip().count("\n") == 0
    assert "--sampler, --guidance: diffusion options" in r.stderr and "vae run" in r.stderr
    r = run_cli("sample", str(res.run_dir), "--compile", "--out", str(tmp_path / "s.png"))
    assert r.returncode != 0 and r.stderr.strip().count("\n") == 0
    assert "--compile is for diffusion and GPT runs" in r.stderr and not (tmp_path / "s.png").exists()
