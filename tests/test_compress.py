"""genlab.compress: quantised and pruned runs are new run directories every command loads."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.ao.nn.quantized.dynamic import LSTM as DynLSTM
from torch.ao.nn.quantized.dynamic import Linear as DynLinear
from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

import genlab
from genlab.compress import compress, prune, quantize
from genlab.engine import checkpoint as ckpt
from genlab.errors import ConfigError
from tests.conftest import TINY_VAE, shakespeare_corpus
from tests.test_diffusion import TINY_DIFFUSION, small_mnist
from tests.test_text import TINY_TEXT

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_root):
    """Tiny float runs trained 2 steps: an MLP VAE, a GPT and a conv diffusion model."""
    root = tmp_path_factory.mktemp("compress")
    corpus = shakespeare_corpus(root)
    return {
        "vae": genlab.train("vae-mnist", root / "vae", steps=2, data_root=str(data_root), overrides=TINY_VAE).run_dir,
        "gpt": genlab.train("gpt-shakespeare-cpu", root / "gpt", steps=2,
                            overrides=TINY_TEXT + [f"data.path={corpus}"]).run_dir,
        "lstm": genlab.train("lstm-shakespeare", root / "lstm", steps=2, overrides=[
            o for o in TINY_TEXT if not o.startswith(("model.n_head", "model.n_embd"))] + [
            "model.n_embd=16", "model.hidden=16", f"data.path={corpus}"]).run_dir,
        "ddpm": genlab.train("ddpm-mnist", root / "ddpm", steps=2, data_root=str(data_root),
                             overrides=TINY_DIFFUSION + small_mnist(root, data_root)).run_dir,
    }


def ckpt_bytes(run_dir) -> int:
    folder = run_dir / "checkpoints"
    return ckpt.tensor_file(folder, ckpt.list_steps(folder)[-1]).stat().st_size


def payload_bytes(run_dir) -> int:
    """Bytes of the sampling weights in the run's newest checkpoint (EMA when kept, else the model's;
    a training run's file also holds optimizer moments, which a compressed run does not)."""
    t = ckpt.latest_valid(run_dir / "checkpoints").tensors
    prefix = "ema." if any(k.startswith("ema.") for k in t) else "model."
    return sum(v.numel() * v.element_size() for k, v in t.items() if k.startswith(prefix))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# --------------------------------------------------------------------------- quantize


def test_int8_dynamic_linear_within_2_percent():
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(64, 32)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(32, 64, generator=g) * 0.1)
    q = quantize_dynamic(nn.Sequential(lin), {"0": per_channel_dynamic_qconfig}, dtype=torch.qint8)
    x = torch.randn(128, 64, generator=g)
    assert isinstance(q[0], DynLinear)
    assert rel_err(q(x), lin(x)) < 0.02  # int8 weights and activations: about 0.5% here


def test_weight_only_int8_round_trip_within_half_a_step():
    w = torch.randn(8, 4, 3, 3) * torch.logspace(-3, 0, 8).view(-1, 1, 1, 1)
    q, scale = quantize.quantize_weight(w)
    assert q.dtype == torch.int8 and scale.shape == (8,)
    err = (quantize.dequantize_weight(q, scale) - w).abs().flatten(1).amax(1)
    assert (err <= scale / 2 * (1 + 1e-5)).all()


@pytest.mark.parametrize("kind", ["gpt", "lstm"])
def test_int8_text_run_is_smaller_loads_exact_and_generates(runs, tmp_path, kind):
    out = compress(runs[kind], "quantize", tmp_path / "q8", dtype="int8")
    rec = json.loads((out / "compression.json").read_text())
    assert rec["method"] == "quantize" and rec["scheme"] == "dynamic" and rec["modules"]
    assert rec["source"]["run"] == str(runs[kind].resolve()) and len(rec["source"]["sha256"]) == 64
    assert {"config.yaml", "data.json", "manifest.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert payload_bytes(out) < payload_bytes(runs[kind])  # tiny layers: scales and float embeddings weigh

    run, ref = genlab.load(out), genlab.load(runs[kind])
    stored = ckpt.latest_valid(out / "checkpoints").tensors
    for name in rec["modules"]:
        m = run.model.get_submodule(name)
        assert isinstance(m, (DynLinear, DynLSTM))
        # exactly the stored int8 values and scales, not re-quantised ones
        for p, w in quantize._packed_weights(m).items():
            assert torch.equal(w.int_repr(), stored[f"model.{name}.{p}"])
            assert torch.equal(w.q_per_channel_scales(), stored[f"model.{name}.{p}:scale"])
    if kind == "gpt":
        idx = torch.randint(0, ref.model.cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            assert rel_err(run.model(idx)[0], ref.model(idx)[0]) < 0.05
    assert len("".join(run.generate("To be", 20, seed=0))) > 0


@pytest.mark.parametrize("dtype,torch_dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_half_precision_run_loads_and_samples(runs, tmp_path, dtype, torch_dtype):
    out = compress(runs["vae"], "quantize", tmp_path / dtype, dtype=dtype)
    stored = ckpt.latest_valid(out / "checkpoints").tensors
    assert {t.dtype for t in stored.values()} == {torch_dtype}
    assert payload_bytes(out) * 2 == payload_bytes(runs["vae"])
    run = genlab.load(out)
    assert all(p.dtype == torch.float32 for p in run.model.parameters())
    images, _ = run.sample(4, seed=0)
    assert images.shape[0] == 4 and images.dtype == torch.uint8


def test_int8_mlp_vae_samples_close_to_float(runs, tmp_path):
    out = compress(runs["vae"], "quantize", tmp_path / "q8", dtype="int8")
    run, ref = genlab.load(out), genlab.load(runs["vae"])
    assert any(isinstance(m, DynLinear) for m in run.model.modules())
    a, _ = run.sample(8, seed=0)
    b, _ = ref.sample(8, seed=0)
    assert a.shape == b.shape and (a.float() - b.float()).abs().mean() < 8  # of 255


def test_weight_only_int8_diffusion_round_trips_and_samples(runs, tmp_path):
    out = compress(runs["ddpm"], "quantize", tmp_path / "q8", dtype="int8")
    rec = json.loads((out / "compression.json").read_text())
    assert rec["scheme"] == "weight-only" and any("conv" in k for k in rec["modules"])
    assert payload_bytes(out) < payload_bytes(runs["ddpm"])
    run, ref = genlab.load(out), genlab.load(runs["ddpm"])
    stored = ckpt.latest_valid(out / "checkpoints").tensors
    got, want = run.model.state_dict(), ref.model.state_dict()
    for k in rec["modules"]:
        scale = stored[f"model.{k}:scale"]
        err = (got[k] - want[k]).abs().flatten(1).amax(1)
        assert (err <= scale / 2 * (1 + 1e-5)).all(), k
    images, _ = run.sample(2, seed=0, sampler="ddim", steps=2)
    assert images.shape == (2, 1, 16, 16)


# --------------------------------------------------------------------------- prune


@pytest.mark.parametrize("structured,scope", [(False, "layer"), (False, "global"), ("true", "layer")])
def test_prune_reaches_sparsity_on_the_loaded_model(runs, tmp_path, structured, scope):
    src = "ddpm" if structured == "true" else "vae"
    out = compress(runs[src], "prune", tmp_path / "p", amount=0.5, structured=structured, scope=scope)
    run = genlab.load(out)
    keys = json.loads((out / "compression.json").read_text())["targets"]
    s = prune.sparsity(run.model, keys)
    assert 0.45 <= s <= 0.55, s
    if structured == "true":  # whole output channels are zero
        sd = run.model.state_dict()
        rows = [sd[k].flatten(1).abs().sum(1) for k in keys if sd[k].shape[0] > 2]
        assert all((r == 0).sum() >= len(r) // 2 - 1 for r in rows)


def test_pruned_sparsity_survives_finetune_save_load_and_resume(runs, tmp_path, data_root):
    out = compress(runs["vae"], "prune", tmp_path / "p", amount=0.6, finetune_steps=3, data_root=data_root)
    rec = json.loads((out / "compression.json").read_text())
    assert rec["finetuned_steps"] == 3
    run = genlab.load(out)
    assert run.step == 5 and prune.sparsity(run.model, rec["targets"]) >= 0.59
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    res = prune.finetune(out, 2, data_root=data_root)  # a second round continues from the checkpoint
    assert res.state.step == 7
    again = genlab.load(out)
    assert prune.sparsity(again.model, rec["targets"]) >= 0.59
    assert any(not torch.equal(before[k], v) for k, v in again.model.state_dict().items())  # it did train
    # the zeros are the same weights as before fine-tuning
    for k in rec["targets"]:
        assert torch.equal(before[k] == 0, again.model.state_dict()[k] == 0)


# --------------------------------------------------------------------------- every command loads it


def test_compressed_runs_load_in_evaluate_info_and_compare(runs, tmp_path):
    from genlab.evaluation import evaluate
    from genlab.evaluation.compare import collect
    from genlab.evaluation.summary import summary_text

    q = compress(runs["vae"], "quantize", tmp_path / "q8", dtype="int8")
    p = compress(runs["vae"], "prune", tmp_path / "p", amount=0.5)
    for out in (q, p):
        evaluate(out, n=16)
        assert (out / "report.json").is_file()
        assert str(out) in summary_text(out)
    header, rows = collect([runs["vae"], q, p])
    assert len(rows) == 3
    pq = compress(p, "quantize", tmp_path / "pq", dtype="int8")  # prune, then quantise
    assert json.loads((pq / "compression.json").read_text())["source"]["run"] == str(p.resolve())
    assert genlab.load(pq).sample(2, seed=0)[0].shape[0] == 2


# --------------------------------------------------------------------------- errors


def test_errors_are_one_line_config_errors(runs, tmp_path):
    cases = [
        (dict(method="shrink"), "--method must be one of"),
        (dict(method="quantize", dtype="int4"), "--dtype must be one of"),
        (dict(method="quantize", scheme="static"), "--scheme must be one of"),
        (dict(method="quantize", dtype="int8", bits=4), "does not take bits"),
        (dict(method="prune", amount=1.5), "--amount"),
        (dict(method="prune", structured="maybe"), "--structured must be true or false"),
        (dict(method="prune", structured=True, scope="global"), "structured pruning is per layer"),
    ]
    for kw, msg in cases:
        with pytest.raises(ConfigError, match=msg) as e:
            compress(runs["vae"], out=tmp_path / "x", **kw)
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="convolutions.*--scheme weight-only"):
        compress(runs["ddpm"], "quantize", tmp_path / "x", dtype="int8", scheme="dynamic")
    assert not (tmp_path / "x").exists()
    (tmp_path / "taken").mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        compress(runs["vae"], "quantize", tmp_path / "taken")
    q = compress(runs["vae"], "quantize", tmp_path / "q")
    with pytest.raises(ConfigError, match="already quantised"):
        compress(q, "quantize", tmp_path / "qq")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q", "taken"]  # no temp folders left


def test_prune_handles_channels_last_conv_weights(runs, tmp_path):
    """The UNet keeps conv weights channels-last; torch's pruning needs flat views of them."""
    run = genlab.load(runs["ddpm"])
    assert any(p.dim() == 4 and not p.is_contiguous() for p in run.model.parameters())
    out = compress(runs["ddpm"], "prune", tmp_path / "p", amount=0.5)
    pruned = [m.weight for m in genlab.load(out).model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert sum(int((w == 0).sum()) for w in pruned) / sum(w.numel() for w in pruned) == pytest.approx(0.5, abs=0.02)
