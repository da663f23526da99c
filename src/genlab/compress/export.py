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

`export_onnx` writes RUN_DIR/export/model.onnx and model.json beside it (inputs, outputs and
what a sampler needs: family, model name, the model config, the data normalisation).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from genlab.engine import checkpoint as ckpt
from genlab.errors import ConfigError

FORMAT_VERSION = 1
OPSET = 18


@dataclass
class Exportable:
    """A module ready for `torch.onnx.export` and the description written beside it."""
    module: nn.Module
    args: tuple  # example inputs (batch 2), in input_names order
    input_names: list[str]
    output_names: list[str]
    dynamic: dict[str, dict[int, str]]  # input/output name -> {axis: symbolic name}
    sampler: dict  # what the sampler needs besides the model config


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
    into preallocated buffers, so that the graph has no state and P is just a dimension."""

    def __init__(self, gpt):
        super().__init__()
        self.gpt = gpt

    def forward(self, idx: torch.Tensor, past: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        g, cfg = self.gpt, self.gpt.cfg
        B, T = idx.shape
        C, nh = cfg.n_embd, cfg.n_head
        hs = C // nh
        P = past[0].shape[2]
        pos = torch.arange(T, device=idx.device) + P  # (T,)
        x = g.wte(idx)  # (B, T, C)
        rope = None
        if g.wpe is not None:
            x = x + g.wpe(pos)
        else:
            from genlab.models.autoregressive.gpt import rope_tables
            rope = rope_tables(pos, hs)
        # new token i (position P+i) sees keys 0..P+i; with P = 0 this is the causal mask
        mask = torch.arange(P + T, device=idx.device)[None, :] <= pos[:, None]  # (T, P+T)
        present = []
        for i, blk in enumerate(g.blocks):
            a = blk.attn
            q, k, v = a.c_attn(blk.ln_1(x)).split(C, dim=2)  # 3 x (B, T, C)
            q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
            k = k.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
            v = v.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
            if rope is not None:
                from genlab.models.autoregressive.gpt import apply_rope
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
            k = torch.cat([past[2 * i], k], dim=2)  # (B, nh, P+T, hs)
            v = torch.cat([past[2 * i + 1], v], dim=2)  # (B, nh, P+T, hs)
            present += [k, v]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nh, T, hs)
            x = x + a.c_proj(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C)
            x = x + blk.mlp(blk.ln_2(x))
        return (F.linear(g.ln_f(x), g.wte.weight), *present)  # logits (B, T, V), 2 x n_layer caches


def cache_names(n_layer: int, prefix: str) -> list[str]:
    """past_key_0, past_value_0, past_key_1, ... (prefix "past" or "present")."""
    return [f"{prefix}_{kv}_{i}" for i in range(n_layer) for kv in ("key", "value")]


def _gpt(model) -> Exportable:
    c = model.cfg
    B, T, P, hs = 2, 3, 2, c.n_embd // c.n_head
    idx = torch.randint(0, c.vocab_size, (B, T))
    past = [torch.randn(B, c.n_head, P, hs) for _ in range(2 * c.n_layer)]
    ins, outs = ["idx"] + cache_names(c.n_layer, "past"), ["logits"] + cache_names(c.n_layer, "present")
    dynamic = {"idx": {0: "batch", 1: "tokens"}, "logits": {0: "batch", 1: "tokens"}}
    dynamic |= {n: {0: "batch", 2: "past"} for n in ins[1:]}
    dynamic |= {n: {0: "batch", 2: "total"} for n in outs[1:]}
    sampler = {"n_layer": c.n_layer, "n_head": c.n_head, "head_size": hs, "vocab_size": c.vocab_size,
               "context_limit": c.block_size}
    return Exportable(GPTStep(model), (idx, past), ins, outs, dynamic, sampler)


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
                                 opset_version=OPSET, dynamo=True, verbose=False)
    return prog.model_proto.SerializeToString()


def export_onnx(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, *,
                checkpoint: str = "last") -> Path:
    """Export a run's network to ONNX (fp32, dynamic batch; GPT: a KV-cache step function).

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
    model = run.model.float().eval()
    e = EXPORTERS[name](model)
    data = onnx_bytes(e)
    ckpt.atomic_write_bytes(path, data)
    ckpt.atomic_write_json(path.with_suffix(".json"), describe(run, e, path))
    return path


def _shape(t: torch.Tensor, axes: dict[int, str]) -> list:
    return [axes.get(i, n) for i, n in enumerate(t.shape)]


def describe(run, e: Exportable, path: Path) -> dict:
    """model.json: the graph's inputs/outputs (shapes with symbolic dynamic axes, dtypes) and
    what sampling around it needs."""
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
        "opset": OPSET,
        "family": run.family,
        "model": run.cfg.model_name,
        "run": str(run.run_dir),
        "checkpoint": run.checkpoint.name,
        "step": run.step,
        **io_,
        "sampler": e.sampler,
        "model_config": dataclasses.asdict(run.cfg.model),
        "data": {"normalize": run.cfg.data.normalize,
                 **{k: meta[k] for k in ("mean", "std", "native_size") if k in meta}},
    }
