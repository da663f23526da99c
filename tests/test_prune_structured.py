"""Structured pruning that shrinks (`--structured shrink`, genlab.compress.shrink): heads, MLP units
and generator/decoder channels are removed, the layers rebuilt narrower, and the new run loads."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

import genlab
from genlab.cli import main
from genlab.compress import compress
from genlab.compress import shrink as S
from genlab.config import build_section
from genlab.errors import ConfigError
from genlab.models.autoregressive.gpt import GPT, GPTConfig
from genlab.models.gan import GAN, GANConfig
from genlab.models.vae import VAE, VAEConfig
from tests.conftest import shakespeare_corpus
from tests.test_gan import SMALL as SMALL_GAN
from tests.test_text import TINY_TEXT

pytestmark = pytest.mark.usefixtures("one_thread")


def shrink_model(model, groups, amount, run_inputs, narrower):
    """(narrow model, original with the removed units zeroed, groups, kept indices)."""
    keep = S.keep_units(S.importance(model, groups, run_inputs), amount)
    narrow = [dataclasses.replace(g, size=len(keep[g.name])) for g in groups]
    small = type(model)(narrower(model.cfg, narrow)).eval()
    small.load_state_dict(S.shrink_state(model.state_dict(), groups, keep))
    zeroed = copy.deepcopy(model)
    S.zero_units(zeroed, groups, {g.name: torch.tensor(sorted(set(range(g.size)) - set(keep[g.name].tolist())),
                                                       dtype=torch.long) for g in groups})
    return small, zeroed, keep


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("position,bias", [("rope", False), ("learned", True)])
def test_shrunk_gpt_equals_the_original_with_its_heads_and_units_zeroed(position, bias):
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=4, n_embd=16, dropout=0.0, bias=bias,
                        position=position)).eval()
    x = torch.randint(0, 11, (3, 16))
    small, zeroed, keep = shrink_model(gpt, S.gpt_groups(gpt), 0.5, lambda: gpt(x), S._gpt_narrower)
    c = small.cfg
    assert (c.n_head, c.head_size, c.mlp_hidden) == (2, 4, 32)  # half the heads (size kept), half of 64 units
    assert all(len(k) == 2 for n, k in keep.items() if n.endswith("heads"))
    assert n_params(small) < n_params(gpt)
    with torch.no_grad():
        assert (small(x) - zeroed(x)).abs().max() < 1e-5
        assert (gpt(x) - zeroed(x)).abs().max() > 1e-3  # the removed units did contribute
        state = small.init_state(3)  # the KV cache has the kept heads
        assert state.k[0].shape == (3, 2, 16, 4)
        steps = torch.cat([small(x[:, :9], state), small(x[:, 9:], state)], dim=1)
        assert (steps - small(x)).abs().max() < 1e-5


@pytest.mark.parametrize("cfg", [
    GANConfig(arch="dcgan", g_channels=8, latent_dim=4, conditional=True),
    GANConfig(arch="dcgan", g_channels=8, latent_dim=4, g_batchnorm=False),
    GANConfig(arch="mlp", mlp_widths=(8, 16), latent_dim=4),
    VAEConfig(arch="conv", hidden=16, base_channels=4, latent_dim=3),
    VAEConfig(arch="mlp", hidden=16, latent_dim=3, conditional=True),
], ids=["dcgan-bn-cond", "dcgan", "gan-mlp", "vae-conv", "vae-mlp-cond"])
def test_shrunk_generator_equals_the_original_with_its_channels_zeroed(cfg):
    torch.manual_seed(0)
    cfg = dataclasses.replace(cfg, channels=1, image_size=8, num_classes=3)
    model = (GAN if isinstance(cfg, GANConfig) else VAE)(cfg).eval()
    for m in model.modules():  # trained-looking norms: removing a channel must drop its shift too
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(), m.running_var.uniform_(0.5, 2), m.weight.data.normal_(), m.bias.data.normal_()
    net, prefix = (model.generator.net, "generator.net") if isinstance(model, GAN) else (model.decoder.net, "decoder.net")
    groups = S.chain_groups(net, prefix)
    z, y = torch.randn(5, cfg.latent_dim), torch.tensor([0, 1, 2, 0, 1])
    field = "g_widths" if isinstance(cfg, GANConfig) else "dec_widths"
    small, zeroed, _ = shrink_model(model, groups, 0.5, lambda: model.decode_latent(z, y),
                                    lambda c, gs: dataclasses.replace(c, **{field: tuple(g.size for g in gs)}))
    widths = (cfg.generator_widths() if isinstance(cfg, GANConfig) else cfg.decoder_widths())
    assert getattr(small.cfg, field) == tuple(w // 2 for w in widths)
    assert n_params(small) < n_params(model)
    assert (small.decode_latent(z, y) - zeroed.decode_latent(z, y)).abs().max() < 1e-5
    assert (model.decode_latent(z, y) - zeroed.decode_latent(z, y)).abs().max() > 1e-4


def test_the_units_removed_are_those_the_next_layer_reads_least():
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=4, n_embd=16, mlp_hidden=8)).eval()
    with torch.no_grad():
        gpt.blocks[0].attn.c_proj.weight[:, 4:8] = 0  # head 1 is never read
        gpt.blocks[0].attn.c_proj.weight[:, 12:16] *= 100  # head 3 is read loudest
        gpt.blocks[0].mlp.c_fc.weight[5] = 0  # unit 5 is always gelu(0) = 0
    groups = S.gpt_groups(gpt)
    scores = S.importance(gpt, groups, lambda: gpt(torch.randint(0, 11, (2, 8))))
    keep = S.keep_units(scores, 0.25)
    assert 1 not in keep["blocks.0.attn.heads"] and 3 in keep["blocks.0.attn.heads"]
    assert len(keep["blocks.0.attn.heads"]) == 3
    assert 5 not in keep["blocks.0.mlp.units"] and len(keep["blocks.0.mlp.units"]) == 6


def test_configs_without_the_width_fields_load_as_before():
    run = genlab.load("demo:gpt-shakespeare-cpu")  # its config.yaml predates head_size / mlp_hidden
    m = run.cfg.model
    assert (m.head_size, m.mlp_hidden, m.head_dim, m.mlp_dim) == (None, None, m.n_embd // m.n_head, 4 * m.n_embd)
    gan = build_section(GANConfig, {"arch": "dcgan", "g_channels": 8}, "model")
    assert gan.g_widths is None and gan.generator_widths() == (32, 16, 8)
    assert build_section(VAEConfig, {"arch": "conv", "hidden": 16}, "model").decoder_widths() == (16, 64, 32)
    with pytest.raises(ConfigError, match="model.g_widths must be 3 widths"):
        build_section(GANConfig, {"arch": "dcgan", "g_widths": [4, 4]}, "model")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_root):
    base = tmp_path_factory.mktemp("shrink")
    corpus = shakespeare_corpus(base)
    gpt = genlab.train("gpt-shakespeare-cpu", base / "gpt", overrides=TINY_TEXT + [f"data.path={corpus}"], steps=2)
    gan = genlab.train("dcgan-mnist", base / "gan", overrides=SMALL_GAN + ["train.batch_size=8", "train.ema_decay=0.9"],
                       steps=2, data_root=str(data_root))
    return {"base": base, "gpt": gpt.run_dir, "gan": gan.run_dir}


def test_shrunk_gpt_run_is_smaller_finetunes_and_generates(runs, capsys):
    out = runs["base"] / "gpt-shrunk"
    assert main(["compress", str(runs["gpt"]), "--method", "prune", "--structured", "shrink", "--amount", "0.5",
                 "--finetune-steps", "2", "--out", str(out)]) == 0
    rec = json.loads((out / "compression.json").read_text())
    assert rec["options"]["structured"] == "shrink" and rec["finetuned_steps"] == 2
    assert rec["widths"]["blocks.0.attn.heads"] == [2, 1] and rec["widths"]["blocks.0.mlp.units"] == [64, 32]
    assert len(rec["removed"]["blocks.0.mlp.units"]) == 32
    run, src = genlab.load(out), genlab.load(runs["gpt"])
    assert run.step == src.step + 2 and run.cfg.model.n_head == 1 and run.cfg.model.head_size == 8
    assert rec["params"]["after"] == n_params(run.model) < n_params(src.model) == rec["params"]["before"]
    capsys.readouterr()
    assert main(["sample", str(out), "--prompt", "RO", "--max-tokens", "12", "--seed", "0"]) == 0
    assert capsys.readouterr().out.startswith("RO")


def test_shrunk_gan_run_samples_and_keeps_its_ema(runs):
    out = compress(runs["gan"], "prune", runs["base"] / "gan-shrunk", amount=0.25, structured="shrink")
    run, src = genlab.load(out), genlab.load(runs["gan"])
    c = src.cfg.model.g_channels
    assert run.cfg.model.g_widths == (3 * c, 3 * c // 2, 3 * c // 4)  # a quarter of each layer's channels gone
    assert n_params(run.model.generator) < n_params(src.model.generator)
    assert n_params(run.model.discriminator) == n_params(src.model.discriminator)  # sampling never runs it
    tensors = genlab.engine.checkpoint.latest_valid(out / "checkpoints").tensors
    assert tensors["ema.generator.net.4.weight"].shape == (3 * c, 3 * c // 2, 4, 4)
    images, _ = run.sample(3, seed=0)
    assert images.shape == (3, 1, 28, 28) and images.dtype == torch.uint8


def test_a_demo_with_ema_weights_only_shrinks_and_its_model_weights_are_the_ema(tmp_path):
    out = compress("demo:dcgan-mnist", "prune", tmp_path / "shrunk", amount=0.5, structured="shrink")
    tensors = genlab.engine.checkpoint.latest_valid(out / "checkpoints").tensors
    ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
    model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    assert ema and model.keys() == ema.keys() and all(torch.equal(model[k], ema[k]) for k in ema)
    run = genlab.load(out)
    assert run.cfg.model.g_widths is not None and run.sample(2, seed=0)[0].shape == (2, 1, 28, 28)


def test_shrink_refusals_are_one_line(runs, tmp_path):
    with pytest.raises(ConfigError, match="--structured shrink supports gpt, gan, vae runs, not diffusion") as e:
        compress("demo:ddpm-mnist", "prune", tmp_path / "x", structured="shrink")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="--structured must be true or false \\(or shrink"):
        compress(runs["gpt"], "prune", tmp_path / "x", structured="narrow")
    with pytest.raises(ConfigError, match="structured pruning is per layer"):
        compress(runs["gpt"], "prune", tmp_path / "x", structured="shrink", scope="global")
    assert not (tmp_path / "x").exists()
