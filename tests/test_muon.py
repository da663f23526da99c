"""train.optimizer=muon: the Newton-Schulz orthogonalisation, the update against torch.optim.Muon and
AdamW, and Muon runs on the engine (learning, exact resume)."""

import json

import pytest
import torch
from torch import nn

import genlab
from genlab.config import TrainConfig
from genlab.engine import optim as optim_mod
from genlab.engine.logs import read_log
from genlab.engine.optim import Muon, build_optimizer, muon_matrices, newton_schulz
from genlab.errors import ConfigError
from tests.conftest import assert_same_tensors, stop_at, weights_of
from tests.test_text import TINY_TEXT, corpus  # noqa: F401  (the fixture)


@pytest.mark.parametrize("shape", [(3, 48, 16), (3, 16, 48), (2, 32, 32)])
def test_newton_schulz_orthogonalises_each_matrix(shape):
    g = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    x = newton_schulz(g)
    assert x.shape == g.shape
    s = torch.linalg.svdvals(x)  # (n, min(A, B))
    # five quintic iterations pull every singular value towards 1 (to about 0.4-1.2), whatever g's were
    assert s.min() > 0.3 and s.max() < 1.3, s
    assert (s.max(1).values / s.min(1).values < 4).all()
    # the same singular vectors: x is close to U V^T of g
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    assert torch.nn.functional.cosine_similarity((u @ vh).flatten(1), x.flatten(1)).min() > 0.9
    # a stack is each matrix on its own
    torch.testing.assert_close(x[1], newton_schulz(g[1:2])[0], atol=1e-5, rtol=1e-5)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 16), nn.LayerNorm(16),
                         nn.Linear(16, 10))


def _steps(net, opts, n=3):
    g = torch.Generator().manual_seed(1)
    for _ in range(n):
        x, y = torch.randint(0, 10, (32,), generator=g), torch.randint(0, 10, (32,), generator=g)
        loss = nn.functional.cross_entropy(net(x), y)
        for o in opts:
            o.zero_grad()
        loss.backward()
        for o in opts:
            o.step()


def test_muon_matches_torch_muon_and_adamw(monkeypatch):
    """genlab's Muon = torch.optim.Muon on the Linear weights (same bfloat16 Newton-Schulz) and
    fused AdamW on the embedding, biases and gains."""
    monkeypatch.setattr(optim_mod, "cpu_bf16_is_fast", lambda: True)  # torch's Muon works in bfloat16
    cfg = TrainConfig(optimizer="muon", lr=3e-3, muon_lr=0.05, betas=(0.9, 0.99), weight_decay=0.1)
    ours = _net()
    mats = muon_matrices(ours)
    assert len(mats) == 3 and id(ours[0].weight) not in mats  # the Linear weights, not the embedding
    opt = build_optimizer(list(ours.parameters()), cfg, mats)
    assert isinstance(opt, Muon)
    _steps(ours, [opt])

    ref = _net()
    ref_mats = [p for p in ref.parameters() if id(p) in muon_matrices(ref)]
    rest = [p for p in ref.parameters() if id(p) not in muon_matrices(ref)]
    ref_opts = [torch.optim.Muon(ref_mats, lr=0.05, weight_decay=0.0, momentum=0.95, nesterov=True,
                                 adjust_lr_fn="original"),
                torch.optim.AdamW([{"params": [p for p in rest if p.dim() >= 2]},
                                   {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}],
                                  lr=3e-3, betas=(0.9, 0.99), weight_decay=0.1, fused=True)]
    _steps(ref, ref_opts)
    for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
        # the same operations in the same order and precision (bfloat16 in Newton-Schulz): equal
        assert (a - b).abs().max() <= 1e-6, name
    moved = [(a - b).abs().max() for a, b in zip(ours.parameters(), _net().parameters())]
    assert min(moved) > 1e-3  # every parameter was updated


def test_muon_matrices_are_every_trainable_matrix_but_embeddings():
    from genlab.finetune.lora import LoRALinear

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.up = nn.Embedding(10, 8), nn.ConvTranspose2d(8, 4, 2)
            self.sn = nn.utils.parametrizations.spectral_norm(nn.Linear(8, 8))
            self.lora = LoRALinear(nn.Linear(8, 8), rank=2, alpha=2.0)
            self.norm = nn.LayerNorm(8)
            self.head = nn.Linear(8, 10)
            self.head.weight = self.emb.weight  # tied: stays with AdamW as the embedding

    m = Tied()
    names = {n for n, p in m.named_parameters() if id(p) in muon_matrices(m)}
    assert names == {"up.weight", "sn.parametrizations.weight.original", "lora.lora_A", "lora.lora_B"}, names
    m.muon_exclude = ("up",)
    assert "up.weight" not in {n for n, p in m.named_parameters() if id(p) in muon_matrices(m)}


def test_muon_needs_a_matrix_and_a_positive_lr():
    with pytest.raises(ConfigError, match="no weight matrix"):
        build_optimizer([nn.Parameter(torch.ones(3))], TrainConfig(optimizer="muon"), set())
    with pytest.raises(ConfigError, match="muon_lr"):
        genlab.train("gpt-shakespeare-muon", "/nonexistent/x", overrides=["train.muon_lr=0"])


def test_muon_run_learns_and_resumes_exactly(tmp_path, corpus):  # noqa: F811  (the fixture)
    common = dict(overrides=TINY_TEXT + [f"data.path={corpus}", "train.steps=30", "train.optimizer=muon",
                                         "train.ckpt_every=1000"])
    full = genlab.train("gpt-shakespeare-muon", tmp_path / "full", **common)
    assert full.finished and full.state.step == 30
    losses = [r["loss"] for r in read_log(tmp_path / "full") if r["kind"] == "train"]
    assert losses[-1] < losses[0] - 0.3, losses
    state = json.loads(max((tmp_path / "full" / "checkpoints").glob("step-*.json")).read_text())
    assert "muon" in json.dumps(state)  # the run's optimiser was Muon, with its precision recorded

    part = genlab.train("gpt-shakespeare-muon", tmp_path / "part", callbacks=[stop_at(7)], **common)
    assert not part.finished and part.state.step == 7
    resumed = genlab.train(resume=tmp_path / "part")
    assert resumed.finished and resumed.state.step == 30
    assert_same_tensors(weights_of(tmp_path / "full"), weights_of(tmp_path / "part"), atol=1e-6)


def test_gpt_trains_after_an_inference_mode_forward():
    """The rotary tables a first forward caches must be ordinary tensors even when that forward
    ran under inference_mode (as serving does): a later training step saves them for backward."""
    from genlab.models.autoregressive.gpt import GPT, GPTConfig

    m = GPT(GPTConfig(vocab_size=11, n_layer=1, n_head=2, n_embd=8, block_size=8, dropout=0.0, position="rope"))
    x = torch.randint(0, 11, (2, 8))
    with torch.inference_mode():
        m(x)
        m.eval()(x[:, :1], m.init_state(2))  # a one-token decode step caches its own rotary layout
    m.train()
    m.loss({"x": x, "y": x})["loss"].backward()
    assert m.blocks[0].attn.c_attn.weight.grad is not None
    m.eval()(x[:, :1], m.init_state(2)).sum().backward()  # the decode step with autograd on, tables reused
    assert m.blocks[0].attn.c_attn.weight.grad.abs().sum() > 0
