"""ONNX export of a trained run's network, with a dynamic batch dimension.

What is exported per model (the sampling loop, noise draws and token choice stay in Python;
`onnx_backend.py` runs them around the exported graph):

  - diffusion: the denoising UNet, (x (B, C, H, W) float32, t (B,) int64 [, labels (B,) int64,
    index num_classes = "no label"]) -> out (B, C, H, W), the `model.prediction` target;
  - vae: the decoder's mean in data space, (z (B, latent_dim) [, labels (B,) int64]) -> image;
  - gan: the generator, (z (B, latent_dim) [, labels (B,) int64]) -> image;
  - gpt: one step with the KV cache as inputs and outputs, (idx (B, T) int64, past_key_i,
    past_value_i (B, nh, P, hs) per layer) -> (logits (B, T, V), present_key_i,
    present_value_i (B, nh, P + T, hs)); batch, T and P are dynamic (P = 0 for the prompt).
    Attention and rotary positions are ONNX's fused Attention and RotaryEmbedding ops (opset 23):
    about 17 nodes per layer instead of about 60. At batch 1 a small GPT's step costs per node
    rather than per multiply, so this made gpt-shakespeare-cpu's step about 1.5x and its
    generation about 1.3x faster in onnxruntime than the decomposed graph.

`export_onnx` writes RUN_DIR/export/model.onnx and model.json beside it (inputs, outputs and
what a sampler needs: family, model name, the model config, the data normalisation).

An int8 run (`genlab compress --method quantize --dtype int8`) exports its int8 Linear weights as
int8: each such layer becomes DequantizeLinear(the stored int8 weight, its per-output-channel
scales) -> MatMul, standard ONNX (see Int8Linear), which onnxruntime fuses into its int8 matmul
kernel when it loads the model. Layers the run kept in float (a tied head, convolutions under
weight-only int8) export as float; gpt-shakespeare-cpu's int8 file is 3.4x smaller than its
float one.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from genlab.engine import checkpoint as ckpt
from genlab.errors import ConfigError

FORMAT_VERSION = 1
OPSET = 18  # the image models' graphs
GPT_OPSET = 23  # the first with Attention (a KV cache in and out) and RotaryEmbedding


@dataclass
class Exportable:
    """A module ready for `torch.onnx.export` and the description written beside it."""
    module: nn.Module
    args: tuple  # example inputs (batch 2), in input_names order
    input_names: list[str]
    output_names: list[str]
    dynamic: dict[str, dict[int, str]]  # input/output name -> {axis: symbolic name}
    sampler: dict  # what the sampler needs besides the model config
    opset: int = OPSET


# --------------------------------------------------------------------------- int8 weights


class Int8Linear(nn.Module):
    """A Linear layer whose weight W (out, in) is stored int8: W = q * scale per output row.

    In the ONNX graph: y = x @ DequantizeLinear(qT, scale, axis=1) (+ bias), with qT (in, out)
    int8 an initializer, so the file keeps one byte per weight. Recent onnxruntime releases (2026
    on; 1.32 measured here) fuse the pair into MatMulNBits with 8-bit weights, which by default
    also rounds the activations to int8 per block and multiplies in int8 (as dynamic int8 does);
    a runtime that does not fuse them computes the same product from the dequantised weights,
    more slowly. Outside export it computes x @ (q * scale)^T in torch (float32).

    Args:
        q: int8 (out, in), the stored weight.
        scale: (out,) the per-output-row scales.
        bias: (out,) or None, kept float.
    """

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.register_buffer("qT", q.t().contiguous())  # (in, out) int8: MatMul's right operand
        self.register_buffer("scale", scale.float().contiguous())  # (out,)
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(), requires_grad=False)

    def weight_t(self) -> torch.Tensor:
        """W^T (in, out) float32."""
        if torch.onnx.is_in_onnx_export():
            return torch.onnx.ops.symbolic("DequantizeLinear", (self.qT, self.scale), {"axis": 1},
                                           dtype=torch.float32, shape=self.qT.shape)
        return self.qT.float() * self.scale  # (in, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.weight_t()  # (..., out)
        return y if self.bias is None else y + self.bias


def use_int8_linears(model: nn.Module, int8: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> list[str]:
    """Replace, in place, every nn.Linear whose weight is in `int8` by an Int8Linear.

    Args:
        model: a float model.
        int8: state-dict key -> (q int8 (out, in), scale (out,)), as quantize.int8_weights gives.
    Returns:
        the names of the replaced layers, sorted (other int8 weights, convolutions, stay float).
    """
    names = []
    for key, (q, scale) in int8.items():
        name, param = key.rpartition(".")[::2]
        mod = model.get_submodule(name)
        if param == "weight" and type(mod) is nn.Linear:
            model.set_submodule(name, Int8Linear(q, scale, mod.bias))
            names.append(name)
    return sorted(names)


def network(run) -> tuple[nn.Module, list[str]]:
    """The run's model as it is exported: float32, except that an int8 run's int8 Linear
    weights become Int8Linear layers.

    Returns:
        (the model in eval mode, the names of the Int8Linear layers; empty for a float run).
    """
    record = run.checkpoint.state.get("compression") or {}
    if record.get("method") != "quantize" or record.get("dtype") != "int8":
        return run.model.float().eval(), []
    from genlab.compress.quantize import float_model

    model, int8 = float_model(run)  # the loaded run may hold torch's quantised modules: not traceable
    return model, use_int8_linears(model, int8)


# --------------------------------------------------------------------------- per model


class _DiffusionNet(nn.Module):
    """net(x, t, labels) with labels always a tensor (the "no label" index for none)."""

    def __init__(self, net: nn.Module, conditional: bool):
        super().__init__()
        self.net, self.conditional = net, conditional

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x, t, labels if self.conditional else None)  # (B, C, H, W)


def _diffusion(model) -> Exportable:
    c = model.cfg
    B = 2
    x = torch.randn(B, *model.data_shape())
    t = torch.tensor([0, c.timesteps - 1], dtype=torch.long)
    args, names = (x, t), ["x", "t"]
    if model.conditional:
        args, names = (x, t, torch.tensor([0, c.num_classes], dtype=torch.long)), ["x", "t", "labels"]
    dynamic = {n: {0: "batch"} for n in names + ["out"]}
    sampler = {"data_shape": list(model.data_shape()), "prediction": c.prediction,
               "null_label": c.num_classes if model.conditional else None}
    return Exportable(_DiffusionNet(model.net, model.conditional), args, names, ["out"], dynamic, sampler)


class _LatentDecoder(nn.Module):
    """(z, labels) -> images in data space, as `LatentVariableModel.sample` decodes prior draws."""

    def __init__(self, decode: Callable, conditional: bool):
        super().__init__()
        self.decode, self.conditional = decode, conditional

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(z, labels if self.conditional else None)  # (B, C, H, W)


def _latent(model, decode: Callable) -> Exportable:
    B = 2
    z = torch.randn(B, *model.latent_shape())
    args, names = (z,), ["z"]
    if model.conditional:
        args, names = (z, torch.tensor([0, model.num_classes - 1], dtype=torch.long)), ["z", "labels"]
    dynamic = {n: {0: "batch"} for n in names + ["image"]}
    sampler = {"latent_shape": list(model.latent_shape()),
               "image_shape": [model.cfg.channels, model.cfg.image_size, model.cfg.image_size]}
    module = _LatentDecoder(decode, model.conditional)
    module.model = model  # registered, so that the exporter sees the weights as parameters
    return Exportable(module, args, names, ["image"], dynamic, sampler)


def _vae(model) -> Exportable:
    return _latent(model, lambda z, y: model.mean(model.decode(z, y)))


def _gan(model) -> Exportable:
    return _latent(model, lambda z, y: model.generator(z, y))


class GPTStep(nn.Module):
    """A GPT's forward pass with the KV cache as tensors: the new tokens idx (B, T) follow the P
    cached ones (past keys/values (B, nh, P, hs) per layer, keys rotated when position=rope).
    Computes what `GPT.forward(idx, cache)` does, but returns the grown cache instead of writing
    into preallocated buffers, so that the graph has no state and P is just a dimension.

    Attention (with the cache) and the rotary positions go through `torch.onnx.ops.attention` and
    `rotary_embedding`: one ONNX node each in the graph, and the same computation in eager torch
    (the tests compare both with the GPT itself)."""

    def __init__(self, gpt):
        super().__init__()
        self.gpt = gpt
        cfg = gpt.cfg
        self.head_size = getattr(cfg, "head_dim", cfg.n_embd // cfg.n_head)  # narrower after head pruning
        if gpt.wpe is None:  # rope: the cos/sin table of every position the context allows
            from genlab.models.autoregressive.gpt import rope_tables

            cos, sin = rope_tables(torch.arange(cfg.block_size), self.head_size)  # 2 x (block, hs/2)
            self.register_buffer("cos", cos, persistent=False)
            self.register_buffer("sin", sin, persistent=False)

    def forward(self, idx: torch.Tensor, past: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        g, nh, hs = self.gpt, self.gpt.cfg.n_head, self.head_size
        ops = torch.onnx.ops
        B, T = idx.shape
        A = nh * hs  # the attention's inner width
        P = past[0].shape[2]
        pos = torch.arange(T, device=idx.device) + P  # (T,)
        x = g.wte(idx)  # (B, T, C)
        if g.wpe is not None:
            x = x + g.wpe(pos)
        positions = pos.expand(B, T)  # (B, T) rows of the rope tables
        # new token i (position P+i) sees keys 0..P+i; with P = 0 this is the causal mask
        mask = torch.arange(P + T, device=idx.device)[None, :] <= pos[:, None]  # (T, P+T)
        present = []
        for i, blk in enumerate(g.blocks):
            a = blk.attn
            q, k, v = a.c_attn(blk.ln_1(x)).split(A, dim=2)  # 3 x (B, T, A), heads side by side
            if g.wpe is None:  # keys are cached already rotated
                q = ops.rotary_embedding(q, self.cos, self.sin, positions, num_heads=nh)  # (B, T, A)
                k = ops.rotary_embedding(k, self.cos, self.sin, positions, num_heads=nh)  # (B, T, A)
            y, k_all, v_all, _ = ops.attention(q, k, v, mask, past[2 * i], past[2 * i + 1],
                                               q_num_heads=nh, kv_num_heads=nh)  # (B, T, A), 2 x (B, nh, P+T, hs)
            present += [k_all, v_all]
            x = x + a.c_proj(y)  # (B, T, C)
            x = x + blk.mlp(blk.ln_2(x))
        return (F.linear(g.ln_f(x), g.wte.weight), *present)  # logits (B, T, V), 2 x n_layer caches


def cache_names(n_layer: int, prefix: str) -> list[str]:
    """past_key_0, past_value_0, past_key_1, ... (prefix "past" or "present")."""
    return [f"{prefix}_{kv}_{i}" for i in range(n_layer) for kv in ("key", "value")]


def _gpt(model) -> Exportable:
    c = model.cfg
    step = GPTStep(model)
    B, T, P, hs = 2, 3, 2, step.head_size
    idx = torch.randint(0, c.vocab_size, (B, T))
    past = [torch.randn(B, c.n_head, P, hs) for _ in range(2 * c.n_layer)]
    ins, outs = ["idx"] + cache_names(c.n_layer, "past"), ["logits"] + cache_names(c.n_layer, "present")
    dynamic = {"idx": {0: "batch", 1: "tokens"}, "logits": {0: "batch", 1: "tokens"}}
    dynamic |= {n: {0: "batch", 2: "past"} for n in ins[1:]}
    dynamic |= {n: {0: "batch", 2: "total"} for n in outs[1:]}
    sampler = {"n_layer": c.n_layer, "n_head": c.n_head, "head_size": hs, "vocab_size": c.vocab_size,
               "context_limit": c.block_size}
    return Exportable(step, (idx, past), ins, outs, dynamic, sampler, opset=GPT_OPSET)


# model name -> how to wrap its network for export
EXPORTERS: dict[str, Callable[[nn.Module], Exportable]] = {
    "diffusion": _diffusion, "vae": _vae, "gan": _gan, "gpt": _gpt,
}


# --------------------------------------------------------------------------- export


def onnx_bytes(e: Exportable) -> bytes:
    """The serialised ONNX model of `e` (torch.onnx's torch.export-based exporter, fp32)."""
    from genlab.extras import require

    require("onnxscript", "export", "ONNX export")
    dims: dict[str, torch.export.Dim] = {}

    def spec(name: str):
        axes = e.dynamic.get(name, {})
        return {ax: dims.setdefault(sym, torch.export.Dim(sym)) for ax, sym in axes.items()}

    # dynamic_shapes follows the structure of args (a list of caches is one argument)
    shapes, k = [], 0
    for a in e.args:
        if isinstance(a, (list, tuple)):
            shapes.append([spec(n) for n in e.input_names[k:k + len(a)]])
            k += len(a)
        else:
            shapes.append(spec(e.input_names[k]))
            k += 1
    with torch.no_grad(), warnings.catch_warnings():
        # torch.onnx notes that axes sharing one Dim keep one name: that is the intent here
        warnings.filterwarnings("ignore", message="# The axis name")
        prog = torch.onnx.export(e.module.eval(), e.args, None, input_names=e.input_names,
                                 output_names=e.output_names, dynamic_shapes=tuple(shapes),
                                 opset_version=e.opset, dynamo=True, verbose=False)
    return prog.model_proto.SerializeToString()


def export_onnx(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, *,
                checkpoint: str = "last") -> Path:
    """Export a run's network to ONNX (fp32, dynamic batch; GPT: a KV-cache step function; an
    int8 run's int8 Linear weights stay int8, see the module docstring).

    Args:
        run_dir: a run directory (or demo:NAME).
        out: the .onnx file to write; default RUN_DIR/export/model.onnx. The description goes
            beside it, with the suffix .json.
        checkpoint: last, best or step-NNNNNNNN, as `genlab.load` takes it.

    Returns:
        The path of the ONNX file. Both files are written atomically (temp file, then rename):
        a failed export leaves no partial file.
    """
    from genlab import demos
    from genlab.engine.run import load

    if out is None:
        demos.refuse_write(run_dir, "give --out FILE.onnx for the export")
    run = load(run_dir, checkpoint)
    name = run.cfg.model_name
    if name not in EXPORTERS:
        raise ConfigError(f"ONNX export supports {', '.join(EXPORTERS)} runs; {run.run_dir} is a {name} run")
    path = Path(out) if out is not None else run.run_dir / "export" / "model.onnx"
    if path.suffix != ".onnx":
        raise ConfigError(f"--out must name a .onnx file, got {path}")
    model, int8_layers = network(run)
    e = EXPORTERS[name](model)
    data = onnx_bytes(e)
    ckpt.atomic_write_bytes(path, data)
    ckpt.atomic_write_json(path.with_suffix(".json"), describe(run, e, path, int8_layers))
    return path


def _shape(t: torch.Tensor, axes: dict[int, str]) -> list:
    return [axes.get(i, n) for i, n in enumerate(t.shape)]


def describe(run, e: Exportable, path: Path, int8_layers: Sequence[str] = ()) -> dict:
    """model.json: the graph's inputs/outputs (shapes with symbolic dynamic axes, dtypes), what
    sampling around it needs, and the layers whose weights the graph keeps in int8."""
    flat_args = [a for arg in e.args for a in (arg if isinstance(arg, (list, tuple)) else [arg])]
    with torch.no_grad():
        res = e.module(*e.args)
    flat_out = list(res) if isinstance(res, (list, tuple)) else [res]
    def io(names: list[str], tensors: list[torch.Tensor]) -> list[dict]:
        return [{"name": n, "dtype": str(t.dtype).removeprefix("torch."), "shape": _shape(t, e.dynamic.get(n, {}))}
                for n, t in zip(names, tensors)]

    io_ = {"inputs": io(e.input_names, flat_args), "outputs": io(e.output_names, flat_out)}
    meta = run.meta or {}
    return {
        "format_version": FORMAT_VERSION,
        "file": path.name,
        "opset": e.opset,
        "family": run.family,
        "model": run.cfg.model_name,
        "run": str(run.run_dir),
        "checkpoint": run.checkpoint.name,
        "step": run.step,
        **io_,
        "sampler": e.sampler,
        "int8_layers": list(int8_layers),
        "model_config": dataclasses.asdict(run.cfg.model),
        "data": {"normalize": run.cfg.data.normalize,
                 **{k: meta[k] for k in ("mean", "std", "native_size") if k in meta}},
    }
