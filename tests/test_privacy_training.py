"""Differentially private training (DP-SGD through Opacus): per-example gradients, clipping,
noise, Poisson batches, the accountant, resume, presets and the errors users meet."""

from __future__ import annotations

import json
import math

import pytest
import torch

import genlab
from genlab.config import resolve
from genlab.data.datasets import load_image_data
from genlab.engine.privacy import epsilon_of
from genlab.engine.run import build_model, build_pipeline, resolve_data_fields
from genlab.engine.trainer import Trainer
from genlab.errors import ConfigError
from tests.conftest import run_cli, stop_at, weights_of

pytestmark = pytest.mark.usefixtures("one_thread")

# The 8x8 digits (1,438 training images, shipped with scikit-learn): small enough for exact checks.
TINY = ["train.test_batches=2", "data.dataset=digits", "model.hidden=32", "model.latent_dim=4", "train.batch_size=32", "train.log_every=2",
        "train.eval_every=1000", "train.sample_every=1000", "train.ckpt_every=1000", "train.eval_batches=1"]


def make_trainer(tmp_path, preset: str, sets: list[str]) -> Trainer:
    cfg = resolve(preset, sets)
    data = load_image_data(cfg.data)
    cfg = resolve_data_fields(cfg, data)
    torch.manual_seed(0)
    model = build_model(cfg)
    return Trainer(model, data, build_pipeline(cfg, data.meta()), cfg, tmp_path / "run", device=torch.device("cpu"))


def per_example_grads(model, batch, params) -> list[torch.Tensor]:
    """Gradients of each example's own loss, one backward per example (the definition)."""
    out = []
    for i in range(len(batch["x"])):
        one = {k: v[i:i + 1] for k, v in batch.items()}
        g = torch.autograd.grad(model.loss(one)["loss"], params)
        out.append(torch.cat([t.flatten() for t in g]))
    return out


def test_per_example_gradients_are_exact_and_clipped_to_the_bound(tmp_path, monkeypatch):
    C = 0.05
    tr = make_trainer(tmp_path, "cvae-mnist", TINY + ["model.arch=mlp", "privacy.noise_multiplier=1.0",
                                                      f"privacy.max_grad_norm={C}"])
    monkeypatch.setattr(torch, "randn_like", torch.zeros_like)  # z = mu: each example's loss is deterministic
    model, params = tr.model, [p for p in tr.model.parameters() if p.requires_grad]
    batch = tr.feeder.batch_at(torch.arange(7), tr.device)
    tr.private.zero_grad("model")
    model.loss(batch)["loss"].backward()
    opacus = torch.cat([p.grad_sample.flatten(1) for p in params], 1)  # (7, P)
    with tr.private.hooks_off():
        by_hand = torch.stack(per_example_grads(model, batch, params))
    torch.testing.assert_close(opacus, by_hand, rtol=1e-4, atol=1e-6)
    norms = by_hand.norm(dim=1)
    assert (norms > C).all()  # every example is clipped at this bound
    # Opacus's update before noise: sum of clipped per-example gradients / expected batch size
    opt = tr.private.optimizers["model"]
    opt.noise_multiplier = 0.0
    opt.pre_step()
    clipped = by_hand * (C / (norms + 1e-6)).clamp(max=1.0)[:, None]
    assert (clipped.norm(dim=1) <= C * (1 + 1e-5)).all()
    got = torch.cat([p.grad.flatten() for p in params])
    torch.testing.assert_close(got, clipped.sum(0) / 32, rtol=1e-4, atol=1e-7)


def test_noise_has_the_stated_standard_deviation(tmp_path):
    sigma, C, B = 2.0, 0.5, 32
    tr = make_trainer(tmp_path, "cvae-mnist", TINY + ["model.arch=mlp", f"privacy.noise_multiplier={sigma}",
                                                      f"privacy.max_grad_norm={C}"])
    params = [p for p in tr.model.parameters() if p.requires_grad]
    tr.private.zero_grad("model")
    tr.private.empty_batch("model")  # no example: the update is the noise alone
    tr.private.seed_noise("model", 0, 0, 0)
    tr.private.optimizers["model"].pre_step()
    noise = torch.cat([p.grad.flatten() for p in params]) * B
    assert noise.numel() > 50_000
    assert abs(noise.mean().item()) < 0.02 * sigma * C
    assert noise.std().item() == pytest.approx(sigma * C, rel=0.02)


@pytest.mark.parametrize("preset,sets", [
    ("ddpm-cond-mnist", ["model.base_channels=8", "model.channel_mults=[1,2]", "model.num_res_blocks=1",
                         "model.attention_resolutions=[7]", "model.heads=2", "model.noise_draws=2"]),
    ("cgan-mnist", ["model.spectral_norm=false", "model.g_channels=8", "model.d_channels=8"]),
])
def test_per_example_gradients_sum_to_the_batch_gradient(tmp_path, preset, sets):
    """Models that run the private network more than once per example (a diffusion model's noise
    draws, a discriminator on a real and a fake) get one per-example gradient each: the sum of
    both passes, which is what is clipped. Their mean must be the ordinary batch gradient."""
    tr = make_trainer(tmp_path, preset, [s for s in TINY if not s.startswith("model.")] + sets +
                      ["privacy.noise_multiplier=1.0"])
    opt = "discriminator" if preset.startswith("cgan") else "model"
    module = tr.private.modules[opt]
    params = [p for p in module.parameters()]
    batch = tr.feeder.batch_at(torch.arange(6), tr.device)
    tr.private.zero_grad(opt)
    torch.manual_seed(1)
    tr.model.loss(batch, opt)["loss"].backward()
    per_example = torch.cat([p.grad_sample.flatten(1) for p in params], 1)
    assert per_example.shape[0] == 6
    with tr.private.hooks_off():
        torch.manual_seed(1)
        g = torch.autograd.grad(tr.model.loss(batch, opt)["loss"], params)
    torch.testing.assert_close(per_example.mean(0), torch.cat([t.flatten() for t in g]), rtol=1e-4, atol=1e-6)


def test_epsilon_matches_opacus_published_values():
    # Opacus's own accountant tests: sigma 1.5, q 0.04, 2,250 updates, delta 1e-5
    assert epsilon_of("rdp", [[1.5, 0.04, 2250]], 1e-5) == pytest.approx(7.32911117143, abs=1e-6)
    assert epsilon_of("prv", [[1.5, 0.04, 2250]], 1e-5) == pytest.approx(6.777395712150674, abs=0.01)
    assert epsilon_of("rdp", [], 1e-5) == 0.0


def test_poisson_batches_vary_in_size_around_the_expected_one(tmp_path):
    tr = make_trainer(tmp_path, "cvae-mnist", TINY + ["model.arch=mlp", "privacy.noise_multiplier=1.0"])
    sizes = torch.tensor([len(tr.private.poisson_indices(b)) for b in range(400)], dtype=torch.float)
    assert sizes.mean().item() == pytest.approx(32, rel=0.05)
    assert sizes.std().item() == pytest.approx(math.sqrt(32 * (1 - 32 / 1438)), rel=0.15)  # binomial
    assert torch.equal(tr.private.poisson_indices(5), tr.private.poisson_indices(5))


def test_a_private_run_spends_its_target_epsilon_and_says_so(tmp_path, monkeypatch):
    out = tmp_path / "dp"
    genlab.train("cvae-mnist", out, overrides=TINY + ["model.arch=mlp", "privacy.epsilon=8"], steps=12)
    state = json.loads(sorted((out / "checkpoints").glob("step-*.json"))[-1].read_text())["privacy"]
    assert state["history"][0][2] == 12 and state["sample_rate"] == pytest.approx(32 / 1438)
    assert 7.9 <= state["epsilon"] <= 8.0  # the noise search's tolerance is 0.01
    assert state["epsilon"] == pytest.approx(epsilon_of("rdp", state["history"], 1e-5))
    logged = [json.loads(line) for line in (out / "logs" / "train.jsonl").read_text().splitlines()]
    eps = [r["epsilon"] for r in logged if r.get("kind") == "train"]
    assert len(eps) == 6 and eps == sorted(eps) and eps[-1] == pytest.approx(state["epsilon"])
    assert json.loads((out / "report.json").read_text())["privacy"]["epsilon"] == pytest.approx(state["epsilon"])
    r = run_cli("info", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == f"epsilon: {state['epsilon']:.3g} (delta 1e-05)"


def test_resume_keeps_the_accountant_and_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    import secrets

    monkeypatch.setattr(secrets, "randbits", lambda k: 12345)  # the same noise secret for both runs
    sets = TINY + ["model.arch=mlp", "privacy.epsilon=5", "train.ckpt_every=3"]
    full = tmp_path / "full"
    genlab.train("cvae-mnist", full, overrides=sets, steps=6)
    part = tmp_path / "part"

    genlab.train("cvae-mnist", part, overrides=sets, steps=6, callbacks=[stop_at(3)])
    assert json.loads((part / "checkpoints" / "step-00000003.json").read_text())["privacy"]["history"][0][2] == 3
    genlab.train(resume=part)
    a, b = weights_of(full), weights_of(part)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = (json.loads((d / "checkpoints" / "step-00000006.json").read_text())["privacy"] for d in (full, part))
    assert sa["history"] == sb["history"] == [[sa["noise_multiplier"], sa["sample_rate"], 6]]


def test_resume_refuses_changed_privacy_settings(tmp_path):
    out = tmp_path / "dp"
    genlab.train("cvae-mnist", out, overrides=TINY + ["model.arch=mlp", "privacy.epsilon=5"], steps=2)
    cfg = (out / "config.yaml").read_text()
    (out / "config.yaml").write_text(cfg.replace("max_grad_norm: 1.0", "max_grad_norm: 2.0"))
    with pytest.raises(ConfigError, match="privacy settings differ"):
        genlab.train(resume=out, steps=4)
    (out / "config.yaml").write_text(cfg)
    with pytest.raises(ConfigError, match="would spend more"):
        genlab.train(resume=out, steps=4)
    plain = tmp_path / "plain"
    genlab.train("cvae-mnist", plain, overrides=TINY + ["model.arch=mlp"], steps=2)
    cfg = (plain / "config.yaml").read_text()
    (plain / "config.yaml").write_text(cfg.replace("noise_multiplier: null", "noise_multiplier: 1.0"))
    with pytest.raises(ConfigError, match="cannot become private"):
        genlab.train(resume=plain, steps=4)


def test_a_private_gan_generator_never_reads_the_data(tmp_path, monkeypatch):
    from genlab.data.datasets import ImageFeeder

    reads = []
    real = ImageFeeder.batch_at
    monkeypatch.setattr(ImageFeeder, "batch_at", lambda self, idx, device: reads.append(len(idx)) or
                        real(self, idx, device))
    sets = [s for s in TINY if not s.startswith("model.")] + [
        "model.spectral_norm=false", "model.g_channels=8", "model.d_channels=8", "model.n_critic=2",
        "privacy.noise_multiplier=1.0"]
    res = genlab.train("cgan-mnist", tmp_path / "gan", overrides=sets, steps=3)
    assert res.state.batches == 9  # 2 discriminator + 1 generator updates per step
    assert len(reads) == 6  # only the discriminator's Poisson batches touched the training images


@pytest.mark.parametrize("sets,match", [
    (["privacy.epsilon=0"], "privacy.epsilon must be a finite number > 0"),
    (["privacy.epsilon=-1"], "privacy.epsilon must be a finite number > 0"),
    (["privacy.epsilon=3", "privacy.delta=1.5"], r"privacy.delta must be in \(0, 1\)"),
    (["privacy.epsilon=3", "privacy.delta=0.001"], "is not below 1/n"),
    (["privacy.epsilon=3", "privacy.noise_multiplier=1"], "not both"),
    (["privacy.epsilon=3", "privacy.max_grad_norm=0"], "max_grad_norm must be"),
    (["privacy.epsilon=3", "privacy.accountant=gdp"], "rdp or prv"),
    (["privacy.epsilon=3", "train.accum=2"], "accum=1"),
    (["privacy.epsilon=3", "train.amp=bf16"], "amp=off"),
    (["privacy.epsilon=3", "train.compile=true"], "train.compile=false"),
])
def test_bad_privacy_settings_are_refused_in_one_line(tmp_path, sets, match):
    with pytest.raises(ConfigError, match=match) as e:
        genlab.train("cvae-mnist", tmp_path / "r", overrides=TINY + ["model.arch=mlp"] + sets, steps=1)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "r" / "checkpoints").exists() or not any((tmp_path / "r" / "checkpoints").iterdir())


def test_layers_dp_sgd_cannot_train_are_refused(tmp_path):
    base = [s for s in TINY if not s.startswith("model.")] + ["privacy.epsilon=3"]
    with pytest.raises(ConfigError, match="cannot be trained privately"):  # spectral norm's parametrisation
        genlab.train("cgan-mnist", tmp_path / "sn", overrides=base + ["model.spectral_norm=true"], steps=1)
    with pytest.raises(ConfigError, match="gradient penalty"):
        genlab.train("wgan-gp-mnist", tmp_path / "gp", overrides=base, steps=1)


@pytest.mark.parametrize("preset", ["dp-cvae-mnist", "dp-cgan-mnist", "dp-diffusion-mnist"])
def test_dp_presets_pass_opacus_validator(preset):
    from opacus.validators import ModuleValidator

    cfg = resolve(preset, ["data.dataset=digits"])
    assert cfg.privacy.enabled and cfg.privacy.delta == 1e-5
    cfg = resolve_data_fields(cfg, load_image_data(cfg.data))
    model = build_model(cfg)
    for m in model.private_modules().values():
        assert ModuleValidator.validate(m, strict=False) == []
