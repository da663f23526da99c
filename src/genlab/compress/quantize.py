"""Quantisation of a trained run's weights: int8 (dynamic or weight-only) and bf16/fp16.

Schemes (`--dtype int8`, `--scheme auto|dynamic|weight-only`; auto picks dynamic for models
without convolutions, weight-only for the others):

- dynamic: `torch.ao.quantization.quantize_dynamic` on the nn.Linear, nn.LSTM and nn.GRU layers
  (GPT, LSTM, MLP VAE/GAN, GraphRNN), with per-output-channel symmetric int8 weights;
  activations are quantised on the fly, so the matrix products run in int8 (CPU kernels only:
  fbgemm/x86). The checkpoint stores each weight as an int8 tensor plus its float64 scales;
  at load the layers are rebuilt with quantize_dynamic and given exactly the stored int8 values
  (re-quantising the dequantised float weights would not reproduce the scales).
- weight-only: every Conv/Linear weight is stored as per-output-channel symmetric int8
  (scale = max|w| / 127) and dequantised into float weights at load. This shrinks the file
  about 4x but NOT the compute or the memory of the loaded model: the network runs in float32
  as before, with weights rounded to within scale/2.
- `--dtype bf16|fp16`: the parameters are stored in that dtype (half the file) and cast back to
  float32 at load; the computation stays float32 (bf16 compute would need autocast in every
  sampler). Buffers (noise schedules, ...) stay float32.

Layers whose weight is tied to another parameter (an LSTM head tied to its embedding) or
parametrised (spectral norm) are kept in float.

Speed: in eager torch a small model at batch 1 pays per operator call, not per multiply, and
dynamic int8 adds calls (quantising each activation), so an int8 GPT generates no faster than
the float one there (benchmarks/results/compression.md). The fast int8 path is ONNX:
`genlab export` of an int8 run keeps the int8 Linear weights in the graph (export.Int8Linear) and
`genlab sample RUN --backend onnxruntime` runs them as int8 matmuls.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

from genlab.compress.newrun import Compressed, tensor_bytes
from genlab.errors import ConfigError

DTYPES = ("int8", "bf16", "fp16")
SCHEMES = ("auto", "dynamic", "weight-only")
DYNAMIC_TYPES = (nn.Linear, nn.LSTM, nn.GRU)
WEIGHT_ONLY_TYPES = (nn.Linear, nn.modules.conv._ConvNd)
CAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _tied(model: nn.Module) -> set[str]:
    """Names of parameters that share their tensor with another parameter name."""
    seen: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        seen.setdefault(id(p), []).append(name)
    return {n for names in seen.values() if len(names) > 1 for n in names}


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


def dynamic_targets(model: nn.Module) -> list[str]:
    """Names of the Linear/LSTM/GRU modules dynamic int8 quantises (weights not tied)."""
    tied = _tied(model)
    return [name for name, m in model.named_modules() if isinstance(m, DYNAMIC_TYPES) and name
            and not parametrize.is_parametrized(m)  # spectral norm: kept float
            and not any(f"{name}.{p}" in tied for p, _ in m.named_parameters(recurse=False))]


def weight_only_targets(model: nn.Module) -> list[str]:
    """State-dict keys of the Conv/Linear weights weight-only int8 stores (plain, not tied)."""
    tied = _tied(model)
    keys = model.state_dict().keys()  # a parametrised weight (spectral norm) has other keys: kept float
    return [f"{name}.weight" for name, m in model.named_modules()
            if isinstance(m, WEIGHT_ONLY_TYPES) and f"{name}.weight" not in tied and f"{name}.weight" in keys]


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel (dim 0) symmetric int8: (q int8 like w, scale float32 (C,)), w ~ q * scale."""
    amax = w.detach().float().flatten(1).abs().amax(1)  # (C,)
    scale = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
    q = torch.round(w.detach().float() / _per_row(scale, w)).clamp(-127, 127).to(torch.int8)
    return q, scale


def dequantize_weight(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * _per_row(scale.float(), q)


def _per_row(scale: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return scale.view(-1, *([1] * (like.dim() - 1)))  # (C, 1, ..., 1)


def _quantize_dynamic(model: nn.Module, names: list[str]) -> None:
    """quantize_dynamic of the named modules, in place, per-output-channel symmetric int8."""
    with warnings.catch_warnings():  # torch.ao's deprecation notice (torchao's API replaces it)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        quantize_dynamic(model, {n: per_channel_dynamic_qconfig for n in names}, dtype=torch.qint8, inplace=True)


def _packed_weights(mod: nn.Module) -> dict[str, torch.Tensor]:
    """The quantised weight tensors of a dynamic-quantised module, by parameter name."""
    wb = mod._weight_bias()
    return {"weight": wb[0]} if isinstance(wb, tuple) else dict(wb["weight"])


def _qtensor(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """A per-channel (axis 0) symmetric qint8 tensor from stored int8 values and scales."""
    return torch._make_per_channel_quantized_tensor(q, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0)


def quantize_run(source, dtype: str = "int8", scheme: str = "auto") -> Compressed:
    """Quantise the weights `source` samples with (EMA when the run keeps one).

    Args:
        source: the loaded run (genlab.engine.run.Run, on the CPU).
        dtype: "int8", "bf16" or "fp16".
        scheme: for int8: "auto", "dynamic" or "weight-only" (see the module docstring).
    Returns:
        the new run's tensors ("model.*" only: a quantised run samples, it does not resume
        training) and the record.
    """
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if scheme not in SCHEMES:
        raise ConfigError(f"--scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    done = (source.checkpoint.state.get("compression") or {}).get("method")
    if done == "quantize":
        raise ConfigError(f"{source.run_dir} is already quantised; quantise its source run instead")
    model, name = source.model.cpu().eval(), source.cfg.model_name
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    record = {"method": "quantize", "options": {"dtype": dtype, "scheme": scheme}, "dtype": dtype,
              "weights_bytes_before": tensor_bytes(sd)}
    if dtype in CAST:
        if scheme != "auto":
            raise ConfigError(f"--scheme is for --dtype int8; drop --scheme {scheme} with --dtype {dtype}")
        params = {k for k, _ in model.named_parameters(remove_duplicate=False)}
        tensors = {k: v.to(CAST[dtype]) if k in params and v.is_floating_point() else v for k, v in sd.items()}
        record["scheme"] = "cast"
    else:
        if scheme == "auto":
            scheme = "weight-only" if has_conv(model) else "dynamic"
        tensors, record["modules"] = (_dynamic(model, sd, name) if scheme == "dynamic"
                                      else _weight_only(model, sd, name))
        record["scheme"] = scheme
    record["weights_bytes_after"] = tensor_bytes(tensors)
    return Compressed({f"model.{k}": v for k, v in tensors.items()}, record)


def _dynamic(model: nn.Module, sd: dict, name: str) -> tuple[dict, list[str]]:
    if has_conv(model):
        raise ConfigError(f"{name} has convolutions, which dynamic int8 does not cover (Linear/LSTM/GRU only); "
                          "use --scheme weight-only")
    names = dynamic_targets(model)
    if not names:
        raise ConfigError(f"{name} has no Linear/LSTM/GRU layers for dynamic int8; use --dtype bf16")
    _quantize_dynamic(model, names)
    tensors = dict(sd)
    for n in names:
        for p, q in _packed_weights(model.get_submodule(n)).items():
            if q.q_per_channel_axis() != 0 or q.q_per_channel_zero_points().any():  # symmetric, by rows
                raise ConfigError(f"unexpected quantisation of {n}.{p}: {q.qscheme()}")  # a torch change
            tensors[f"{n}.{p}"] = q.int_repr()
            tensors[f"{n}.{p}:scale"] = q.q_per_channel_scales().double()
    return tensors, names


def _weight_only(model: nn.Module, sd: dict, name: str) -> tuple[dict, list[str]]:
    keys = weight_only_targets(model)
    if not keys:
        raise ConfigError(f"{name} has no Conv/Linear weights for int8; use --dtype bf16")
    tensors = dict(sd)
    for k in keys:
        tensors[k], tensors[f"{k}:scale"] = quantize_weight(sd[k])
    return tensors, keys


def dequantize_state(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A stored int8 state dict back to float tensors (what load_state_dict accepts)."""
    out = {}
    for k, v in sd.items():
        if k.endswith(":scale"):
            continue
        out[k] = dequantize_weight(v, sd[f"{k}:scale"]) if f"{k}:scale" in sd else v
    return out


def int8_weights(sd: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The int8 tensors of a stored int8 state dict (dynamic or weight-only), by state-dict key:
    key -> (q int8 (out, ...), scale float32 (out,)), the weight being q * scale per output row."""
    return {k.removesuffix(":scale"): (sd[k.removesuffix(":scale")], sd[k].float()) for k in sd if k.endswith(":scale")}


def float_model(run) -> tuple[nn.Module, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """A quantised run's network rebuilt with plain float32 modules and its int8 weights.

    The loaded `run.model` of a dynamic int8 run holds torch's quantised Linear modules, which
    tracing (ONNX export) cannot see through; this copy holds the same numbers as float32
    weights (int8 ones dequantised: q * scale), beside the stored int8 tensors themselves.

    Args:
        run: a loaded run (genlab.engine.run.Run) whose checkpoint records a compression.
    Returns:
        (the float model in eval mode on the CPU, int8_weights of its stored state).
    """
    from genlab.engine.run import build_model

    tensors = run.checkpoint.tensors
    prefix = "ema." if any(k.startswith("ema.") for k in tensors) else "model."
    sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    model = build_model(run.cfg)
    model.load_state_dict(dequantize_state(sd))
    return model.float().eval(), int8_weights(sd)


def load_quantized(model: nn.Module, sd: dict[str, torch.Tensor], record: dict, device: torch.device) -> None:
    """Load a quantised checkpoint into the freshly built float `model`, in place: float
    weights (cast or dequantised), then for dynamic int8 the quantised layers with exactly
    the stored int8 values and scales."""
    model.load_state_dict(dequantize_state(sd))
    if record.get("scheme") != "dynamic":
        return
    if device.type != "cpu":
        raise ConfigError(f"dynamic int8 runs use torch's CPU int8 kernels; load with --device cpu, not {device}")
    names = record["modules"]
    _quantize_dynamic(model, names)
    for n in names:
        mod = model.get_submodule(n)
        exact = {p: _qtensor(sd[f"{n}.{p}"], sd[f"{n}.{p}:scale"]) for p in _packed_weights(mod)}
        wb = mod._weight_bias()
        if isinstance(wb, tuple):  # a dynamic Linear: (weight, bias)
            mod.set_weight_bias(exact["weight"], wb[1])
        else:  # a dynamic LSTM/GRU: every layer's weights and biases by name
            mod.set_weight_bias({**wb["bias"], **exact})
    if next(model.parameters(), None) is None:
        # Every layer was quantised (an MLP VAE): samplers find the device with
        # next(model.parameters()); give them an empty float parameter to ask.
        model.register_parameter("device_anchor", nn.Parameter(torch.empty(0), requires_grad=False))
