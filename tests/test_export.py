"""ONNX export (genlab.compress.export) and the onnxruntime backend (compress.onnx_backend):
outputs match PyTorch at two batch sizes, sampling gives PyTorch's images and tokens, errors;
int8 runs export int8 weights (smaller, within a stated tolerance, the same greedy tokens)."""

from __future__ import annotations

import copy
import json
import sys

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import genlab  # noqa: E402
from genlab.cli import main  # noqa: E402
from genlab.compress.export import EXPORTERS, cache_names, export_onnx, onnx_bytes, use_int8_linears  # noqa: E402
from genlab.compress.onnx_backend import OnnxGPTStep  # noqa: E402
from genlab.compress.quantize import quantize_weight  # noqa: E402
from genlab.compress.onnx_backend import OnnxSession, load_onnx_backend  # noqa: E402
from genlab.errors import ConfigError  # noqa: E402
from genlab.models.autoregressive.gpt import GPT, GPTConfig  # noqa: E402
from genlab.models.autoregressive.generation import SamplingConfig, generate  # noqa: E402
from tests.conftest import TINY_VAE, main_fails_in_one_line, shakespeare_corpus  # noqa: E402
from tests.test_diffusion import TINY_DIFFUSION, small_mnist  # noqa: E402
from tests.test_gan import SMALL as SMALL_GAN  # noqa: E402
from tests.test_text import TINY_TEXT  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_root):
    """Tiny runs, 2 steps each: a conditional diffusion (16x16), a conditional conv VAE, an
    unconditional DCGAN and a char GPT (block 16)."""
    base = tmp_path_factory.mktemp("export")
    root = str(data_root)
    corpus = shakespeare_corpus(base)
    r = {
        "diffusion": genlab.train("ddpm-cond-mnist", base / "ddpm", steps=2, data_root=root,
                                  overrides=TINY_DIFFUSION + small_mnist(base, data_root)),
        "vae": genlab.train("cvae-mnist", base / "cvae", overrides=TINY_VAE, steps=2, data_root=root),
        "gan": genlab.train("dcgan-mnist", base / "gan", overrides=SMALL_GAN + ["train.batch_size=16"], steps=2,
                            data_root=root),
        "gpt": genlab.train("gpt-shakespeare-cpu", base / "gpt", overrides=TINY_TEXT + [f"data.path={corpus}"],
                            steps=2),
    }
    return {k: v.run_dir for k, v in r.items()}


@pytest.fixture(scope="module")
def exported(runs):
    return {k: export_onnx(d) for k, d in runs.items()}


def _inputs(model_name: str, run, B: int, g: torch.Generator) -> list[torch.Tensor]:
    """Random inputs of batch B in the graph's input order."""
    m = run.model
    if model_name == "diffusion":
        x = torch.randn(B, *m.data_shape(), generator=g)
        t = torch.randint(0, m.T, (B,), generator=g)
        return [x, t, torch.randint(0, m.num_classes + 1, (B,), generator=g)]  # + the "no label" index
    if model_name == "gpt":
        c = m.cfg
        P, T = 5, 3
        idx = torch.randint(0, c.vocab_size, (B, T), generator=g)
        return [idx] + [torch.randn(B, c.n_head, P, c.n_embd // c.n_head, generator=g) for _ in range(2 * c.n_layer)]
    z = torch.randn(B, *m.latent_shape(), generator=g)
    return [z] + ([torch.randint(0, m.num_classes, (B,), generator=g)] if m.conditional else [])


@pytest.mark.parametrize("name", ["diffusion", "vae", "gan", "gpt"])
def test_onnx_matches_torch_at_two_batch_sizes(runs, exported, name):
    run = genlab.load(runs[name])
    module = EXPORTERS[name](run.model).module.eval()
    sess = OnnxSession(exported[name])
    g = torch.Generator().manual_seed(0)
    for B in (1, 5):
        ins = _inputs(name, run, B, g)
        with torch.no_grad():
            ref = module(ins[0], ins[1:]) if name == "gpt" else module(*ins)
        ref = list(ref) if isinstance(ref, tuple) else [ref]
        out = sess(*ins)
        assert len(out) == len(ref)
        for o, r in zip(out, ref):
            assert o.shape == r.shape and o.shape[0] == B
            assert torch.allclose(o, r.float(), atol=1e-4, rtol=0), (name, B, float((o - r).abs().max()))


def test_description_beside_the_model(runs, exported):
    desc = json.loads(exported["vae"].with_suffix(".json").read_text())
    assert desc["family"] == "image" and desc["model"] == "vae" and desc["file"] == "model.onnx"
    assert [i["name"] for i in desc["inputs"]] == ["z", "labels"]
    assert desc["inputs"][0]["shape"] == ["batch", 8] and desc["outputs"][0]["name"] == "image"
    assert desc["model_config"]["latent_dim"] == 8 and desc["model_config"]["num_classes"] == 10
    d = json.loads(exported["diffusion"].with_suffix(".json").read_text())
    assert d["model_config"]["timesteps"] == 50 and d["model_config"]["schedule"] == "cosine"
    assert d["sampler"]["null_label"] == 10 and d["sampler"]["prediction"] == d["model_config"]["prediction"]
    gp = json.loads(exported["gpt"].with_suffix(".json").read_text())
    assert gp["inputs"][1] == {"name": "past_key_0", "dtype": "float32", "shape": ["batch", 2, "past", 8]}
    assert gp["outputs"][1]["shape"] == ["batch", 2, "total", 8]


@pytest.mark.parametrize("name", ["diffusion", "vae", "gan"])
def test_sample_through_onnxruntime_gives_torch_images(runs, exported, name):
    want, labels = genlab.load(runs[name]).sample(6, seed=3)
    run = load_onnx_backend(genlab.load(runs[name]))
    assert run.backend == "onnxruntime"
    got, labels2 = run.sample(6, seed=3)
    assert got.dtype == torch.uint8 and got.shape == want.shape
    assert (got.int() - want.int()).abs().max() <= 1
    assert (labels is None and labels2 is None) or torch.equal(labels, labels2)
    if name == "diffusion":  # the other samplers, one with noise drawn between steps
        for opts in ({"sampler": "ddpm", "steps": 3}, {"sampler": "ddim", "steps": 2, "guidance": 2.0}):
            a, _ = genlab.load(runs[name]).sample(3, seed=1, **opts)
            b, _ = run.sample(3, seed=1, **opts)
            assert (a.int() - b.int()).abs().max() <= 1, opts


def test_gpt_greedy_generation_matches_torch(runs, exported):
    """40 tokens past a block of 16: the prompt pass (empty cache), single-token steps, and the
    window jumps that refill the cache."""
    kw = dict(temperature=0.0, seed=0)
    want = "".join(genlab.load(runs["gpt"]).generate("ROMEO:", 40, **kw))
    run = load_onnx_backend(genlab.load(runs["gpt"]))
    assert "".join(run.generate("ROMEO:", 40, **kw)) == want
    assert "".join(run.generate("ROMEO:", 40, use_cache=False, **kw)) == want  # uncached: full windows
    with pytest.raises(ConfigError, match="--compile is for the torch backend"):
        run.compile()  # torch.compile would generate through the torch model, not the ONNX graph


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_gpt_step_graph_is_the_gpt(position):
    """The step graph, fed its own cache, gives the logits of one full forward pass."""
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=13, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0,
                        position=position)).eval()
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_bytes(EXPORTERS["gpt"](gpt)), providers=["CPUExecutionProvider"])
    idx = torch.randint(0, 13, (3, 9))
    with torch.no_grad():
        full = gpt(idx)  # (B, 9, V)
    names = ["idx"] + cache_names(2, "past")
    past = [torch.zeros(3, 2, 0, 8).numpy()] * 4
    got = []
    for a, b in ((0, 6), (6, 7), (7, 9)):  # prompt, one token, two tokens
        logits, *past = sess.run(None, dict(zip(names, [idx[:, a:b].numpy(), *past])))
        got.append(torch.from_numpy(logits))
        assert past[0].shape == (3, 2, b, 8)
    assert torch.allclose(torch.cat(got, 1), full, atol=1e-4, rtol=0)


def test_unsupported_family_is_one_line(tmp_path):
    from tests.test_graphs import TINY_RNN

    run_dir = genlab.train("graphgen-grid", tmp_path / "graph", overrides=TINY_RNN, steps=2).run_dir
    with pytest.raises(ConfigError, match=r"^ONNX export supports diffusion, vae, gan, gpt runs; .* graphrnn run$"):
        export_onnx(run_dir)
    with pytest.raises(ConfigError, match="onnxruntime supports diffusion, vae, gan, gpt"):
        load_onnx_backend(genlab.load(run_dir))


def test_export_is_atomic(runs, exported, tmp_path, monkeypatch):
    """A failing exporter leaves the previous files as they were and no temp files."""
    out = tmp_path / "m" / "model.onnx"
    out.parent.mkdir()
    out.write_bytes(b"old")

    def boom(*a, **k):
        raise RuntimeError("exporter failed")

    monkeypatch.setattr(torch.onnx, "export", boom)
    with pytest.raises(RuntimeError, match="exporter failed"):
        export_onnx(runs["gan"], out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx"] and out.read_bytes() == b"old"
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="must name a .onnx file"):
        export_onnx(runs["gan"], tmp_path / "model.bin")


def test_missing_pieces_are_one_line_errors(runs, exported, tmp_path, monkeypatch):
    run = genlab.load(runs["vae"])
    with pytest.raises(ConfigError, match="no ONNX model at .*genlab export"):
        load_onnx_backend(run, tmp_path / "none.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"needs the export extra \(onnxruntime is missing\): pip install"):
        load_onnx_backend(run)


# --------------------------------------------------------------------------- int8 GPT graphs


def _rel(a, b) -> float:
    """Relative L2 error of a against the reference b."""
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return float((a - b).norm() / b.norm())


def test_int8_gpt_graph_is_smaller_matches_and_generates_the_float_tokens():
    """A GPT with every Linear weight int8 (per-output-row scales) exports as an int8 graph over
    2x smaller than the float one; at batch 1 and 4 its logits are within 3% (relative L2) of the
    same int8 weights in torch (onnxruntime also rounds activations to int8) and within 6% of
    the float GPT's; greedy generation gives the float GPT's tokens. The weights are drawn wider
    than GPT-2's init (std 0.3) so that next-token choices are clear-cut, not near ties."""
    import onnx
    import onnxruntime as ort

    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=13, block_size=16, n_layer=1, n_head=2, n_embd=64, dropout=0.0,
                        position="rope")).eval()
    with torch.no_grad():
        for p in gpt.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    q = copy.deepcopy(gpt)
    int8 = {f"{n}.weight": quantize_weight(m.weight) for n, m in q.named_modules() if isinstance(m, torch.nn.Linear)}
    assert len(use_int8_linears(q, int8)) == 4
    float_bytes, int8_bytes = onnx_bytes(EXPORTERS["gpt"](gpt)), onnx_bytes(EXPORTERS["gpt"](q))
    assert len(float_bytes) >= 2 * len(int8_bytes)
    stored = [i for i in onnx.load_from_string(int8_bytes).graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert sum(int(torch.tensor(i.dims).prod()) for i in stored) == sum(w.numel() for w, _ in int8.values())

    sess = ort.InferenceSession(int8_bytes, providers=["CPUExecutionProvider"])
    names = ["idx"] + cache_names(1, "past")
    g = torch.Generator().manual_seed(0)
    for B in (1, 4):
        idx = torch.randint(0, 13, (B, 3), generator=g)
        past = [torch.randn(B, 2, 5, 32, generator=g) for _ in range(2)]
        got = sess.run(None, dict(zip(names, [idx.numpy()] + [t.numpy() for t in past])))
        with torch.no_grad():
            want_int8 = EXPORTERS["gpt"](q).module(idx, past)
            want_float = EXPORTERS["gpt"](gpt).module(idx, past)
        assert got[0].shape == (B, 3, 13)
        assert _rel(got[0], want_int8[0]) < 0.03 and _rel(got[0], want_float[0]) < 0.06
        assert max(_rel(a, b) for a, b in zip(got[1:], want_int8[1:])) < 0.03  # the caches

    class Session:  # what OnnxGPTStep reads of an OnnxSession
        desc = {"sampler": {"n_layer": 1, "n_head": 2, "head_size": 32}}

        def run_numpy(self, *arrays):
            return sess.run(None, dict(zip(names, arrays)))

    step = OnnxGPTStep(Session())
    onnx_gpt = copy.deepcopy(gpt)
    onnx_gpt.init_state, onnx_gpt.forward_step = step.init_state, step.forward_step
    prompt = torch.tensor([[1], [5], [7]])
    want = generate(gpt, prompt, 12, SamplingConfig(temperature=0))
    assert len(want[0].unique()) > 2  # a sequence, not one token repeated
    assert torch.equal(generate(onnx_gpt, prompt, 12, SamplingConfig(temperature=0)), want)


def test_int8_run_exports_int8_and_samples_from_the_cli(runs, exported, tmp_path, capsys, monkeypatch):
    """compress --dtype int8, export, sample --backend onnxruntime: the graph keeps the int8
    Linear weights and generates the float run's greedy text (a 2-step run: a weak check of the
    tokens, the test above checks them on a decisive GPT)."""
    out = tmp_path / "gpt-int8"
    assert main(["compress", str(runs["gpt"]), "--method", "quantize", "--dtype", "int8", "--out", str(out)]) == 0
    assert main(["export", str(out)]) == 0
    path = out / "export" / "model.onnx"
    assert capsys.readouterr().out.strip().endswith(str(path))
    desc = json.loads(path.with_suffix(".json").read_text())
    assert desc["int8_layers"] == ["blocks.0.attn.c_attn", "blocks.0.attn.c_proj", "blocks.0.mlp.c_fc",
                                   "blocks.0.mlp.c_proj"]
    assert json.loads(exported["gpt"].with_suffix(".json").read_text())["int8_layers"] == []
    assert path.stat().st_size < exported["gpt"].stat().st_size
    want = "".join(genlab.load(runs["gpt"]).generate("RO", 20, temperature=0.0))
    assert main(["sample", str(out), "--backend", "onnxruntime", "--prompt", "RO", "--max-tokens", "20",
                 "--temperature", "0"]) == 0
    assert capsys.readouterr().out.strip() == ("RO" + want).strip()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    main_fails_in_one_line(capsys, ["sample", str(out), "--backend", "onnxruntime", "--prompt", "RO"],
                           "needs the export extra", "onnxruntime is missing")


def test_a_model_onnxruntime_cannot_load_is_one_line(exported, tmp_path):
    """A damaged file (or an opset newer than the installed onnxruntime) names the fix."""
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not an onnx model")
    bad.with_suffix(".json").write_text(exported["gpt"].with_suffix(".json").read_text())
    with pytest.raises(ConfigError, match=r"^onnxruntime \S+ cannot load .*model.onnx \(opset 23\): .*"
                                          r"upgrade it .* or export the run again$"):
        OnnxSession(bad)
