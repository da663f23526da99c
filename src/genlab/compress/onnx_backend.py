"""Sampling a run with its network evaluated by onnxruntime (see export.py for the graphs).

`load_onnx_backend(run)` swaps the members sampling calls for ONNX-evaluated ones, leaving the
rest of the run (noise draws from torch generators, the diffusion samplers, token choice and the
context window) in Python, so a seed gives the same samples as with PyTorch up to float error:
  - diffusion: `run.model.net`, the UNet;
  - vae, gan: `run.model.decode_latent`, prior draws -> images;
  - gpt: `run.model.forward_step` and `init_state`, the generation protocol of
    models/autoregressive/generation.py, with the KV cache kept as onnxruntime arrays, and
    `run.model.loss` (the step graph over whole windows), so that val loss scores the exported
    model (`genlab.evaluation`'s text metrics on the run).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genlab.errors import ConfigError

log = logging.getLogger("genlab")

BACKENDS = ("torch", "onnxruntime")


class OnnxSession:
    """An onnxruntime session over an exported model.onnx and its model.json description.

    Args:
        path: the .onnx file written by `export_onnx`.
        threads: intra-op threads; default torch's current count (so --threads applies to both).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        from genlab.extras import require

        ort = require("onnxruntime", "export", "the onnxruntime backend")
        path = Path(path)
        desc_path = path.with_suffix(".json")
        if not path.is_file():
            raise ConfigError(f"no ONNX model at {path}: export the run first (genlab export RUN --format onnx)")
        try:
            self.desc = json.loads(desc_path.read_text())
        except (OSError, ValueError):
            raise ConfigError(f"{desc_path} (the description written beside {path.name}) is missing or corrupt; "
                              "export the run again") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime's errors share no base class but Exception
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConfigError(f"onnxruntime {ort.__version__} cannot load {path} (opset {self.desc.get('opset')}): "
                              f"{first[:200]}; upgrade it (pip install -U onnxruntime) or export the run again") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.path = path

    def run_numpy(self, *arrays: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, dict(zip(self.input_names, arrays)))

    def __call__(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """Inputs in the graph's order (CPU or not) -> outputs as CPU tensors."""
        return [torch.from_numpy(o) for o in self.run_numpy(*(t.detach().cpu().numpy() for t in tensors))]


class OnnxDiffusionNet(nn.Module):
    """Stands in for a diffusion model's `net(x, t, labels)`."""

    def __init__(self, session: OnnxSession, device: torch.device):
        super().__init__()
        self.session = session
        self.null_label = session.desc["sampler"]["null_label"]
        # sampling code reads the device from next(model.parameters()); the UNet's weights
        # are gone, so an empty parameter keeps that answer
        self.anchor = nn.Parameter(torch.zeros(0, device=device), requires_grad=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        args = [x.float(), t.long()]
        if self.null_label is not None:  # a conditional graph always takes labels
            args.append(labels.long() if labels is not None else torch.full_like(args[1], self.null_label))
        return self.session(*args)[0].to(x.device)  # (B, C, H, W)


class OnnxDecoder:
    """Stands in for a VAE's or GAN's `decode_latent(z, labels)`: (B, latent) -> images (B, C, H, W)."""

    def __init__(self, session: OnnxSession):
        self.session = session
        self.conditional = len(session.input_names) > 1

    def __call__(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.conditional and labels is None:
            raise ConfigError("this model is conditional: pass labels")
        args = [z.float()] + ([labels.long()] if self.conditional else [])
        return self.session(*args)[0].to(z.device)


class OnnxCache:
    """The GPT step graph's KV cache: 2 x n_layer arrays (B, nh, P, hs), replaced after each step."""

    def __init__(self, arrays: list[np.ndarray]):
        self.arrays = arrays

    @property
    def length(self) -> int:
        return self.arrays[0].shape[2]


class OnnxGPTStep:
    """The generation protocol's `init_state` and `forward_step` on the exported step graph."""

    def __init__(self, session: OnnxSession):
        self.session = session
        s = session.desc["sampler"]
        self.n_layer, self.n_head, self.head_size = s["n_layer"], s["n_head"], s["head_size"]

    def init_state(self, batch: int) -> OnnxCache:
        empty = np.zeros((batch, self.n_head, 0, self.head_size), dtype=np.float32)  # (B, nh, 0, hs)
        return OnnxCache([empty] * (2 * self.n_layer))

    def forward_step(self, idx: torch.Tensor, state: OnnxCache | None) -> tuple[torch.Tensor, OnnxCache | None]:
        """Logits (B, T, V) for idx (B, T) after the cached tokens; the state grows by T."""
        cache = state if state is not None else self.init_state(idx.shape[0])
        logits, *present = self.session.run_numpy(idx.detach().cpu().numpy().astype(np.int64), *cache.arrays)
        cache.arrays = present
        return torch.from_numpy(logits).to(idx.device), state

    def loss(self, batch: dict[str, torch.Tensor], opt: str = "model") -> dict[str, torch.Tensor]:
        """`GPT.loss` on the graph: mean next-token cross-entropy of x (B, T) against y (B, T),
        with the logits of one step over the whole window (an empty cache)."""
        logits, _ = self.forward_step(batch["x"], None)  # (B, T, V)
        return {"loss": F.cross_entropy(logits.flatten(0, 1).float(), batch["y"].flatten())}


def _install_net(run, session: OnnxSession) -> None:
    run.model.net = OnnxDiffusionNet(session, run.device)


def _install_decoder(run, session: OnnxSession) -> None:
    run.model.decode_latent = OnnxDecoder(session)  # an instance attribute shadows the method


def _install_step(run, session: OnnxSession) -> None:
    step = OnnxGPTStep(session)
    run.model.init_state, run.model.forward_step, run.model.loss = step.init_state, step.forward_step, step.loss


# model name -> how its run's sampling is pointed at the ONNX graph
INSTALL = {"diffusion": _install_net, "vae": _install_decoder, "gan": _install_decoder, "gpt": _install_step}


def load_onnx_backend(run, path: str | os.PathLike | None = None):
    """Make `run` sample through onnxruntime: `run.sample` (diffusion, vae, gan) and
    `run.generate` (gpt) then evaluate the exported network instead of PyTorch's.

    Args:
        run: a loaded `genlab.engine.run.Run`.
        path: the exported .onnx file; default RUN_DIR/export/model.onnx.

    Returns:
        the same run, changed in place (`run.backend == "onnxruntime"`).
    """
    name = run.cfg.model_name
    if name not in INSTALL:
        raise ConfigError(f"--backend onnxruntime supports {', '.join(INSTALL)} runs; "
                          f"{run.run_dir} is a {name} run")
    path = Path(path) if path is not None else run.run_dir / "export" / "model.onnx"
    if not path.is_file():
        raise ConfigError(f"no ONNX model at {path}: run `genlab export {run.run_dir} --format onnx` first")
    session = OnnxSession(path)
    if session.desc.get("model") != name:
        raise ConfigError(f"{path} holds a {session.desc.get('model')} model, but {run.run_dir} is a {name} run")
    if session.desc.get("step") != run.step:
        log.warning("%s was exported at step %s; the run's checkpoint is at step %d (export it again)",
                    path, session.desc.get("step"), run.step)
    INSTALL[name](run, session)
    run.backend = "onnxruntime"
    return run
