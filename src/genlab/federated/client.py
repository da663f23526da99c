"""A federated client: genlab's engine training the run's model on one shard of the data.

Each Flower client (a simulated SuperNode, or a real `flower-supernode` process) is client
number `partition-id` of the federation. On its first round it reads the run directory the
server prepared (config.yaml, data.json), loads the data, keeps its own shard (the
partitioner is a pure function of the seed, genlab.federated.partition) and builds a
`Trainer` on it. Every round it then:

1. loads the global weights it was sent;
2. runs `local_steps` optimiser steps with `Trainer.train_steps` (fresh optimiser state, the
   run's learning-rate schedule at the federation's global step, batches drawn exactly as a
   plain run draws them), adding FedProx's proximal term mu/2 ||w - w_global||^2 when the
   server asks for it;
3. returns its weights and its number of training examples (the FedAvg weight; 1 under
   client-level DP, where the mean must be unweighted for the sensitivity to be clip / m).

Clients are cached per process and client id, so a simulation actor that serves several
clients keeps each one's data and model.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import torch

from genlab.errors import ConfigError
from genlab.federated.config import FederationConfig
from genlab.federated.partition import partition

log = logging.getLogger("genlab")

_CLIENTS: dict[tuple[str, int], "LocalClient"] = {}
_DATA: dict[str, object] = {}


def federated_keys(model) -> list[str]:
    """The tensors a federation exchanges: every floating-point parameter and buffer. Integer
    buffers (BatchNorm's num_batches_tracked) stay local: averaging, clipping or quantising a
    step counter means nothing, and under client DP it would swamp an update's norm."""
    return [k for k, v in model.state_dict().items() if v.is_floating_point()]


def get_arrays(model, keys: list[str]) -> list[np.ndarray]:
    sd = model.state_dict()
    return [sd[k].detach().cpu().numpy().copy() for k in keys]


def set_arrays(model, keys: list[str], arrays: list[np.ndarray]) -> None:
    if len(arrays) != len(keys):
        raise ConfigError(f"got {len(arrays)} arrays for a model that exchanges {len(keys)} tensors: the server and "
                          "the clients run different configs")
    sd = model.state_dict()
    model.load_state_dict({k: torch.from_numpy(np.asarray(a)).to(sd[k].dtype).reshape(sd[k].shape)
                           for k, a in zip(keys, arrays)}, strict=False)


def check_family(cfg) -> None:
    """Federations split a training set by example (image and audio runs) or a text run's token
    stream into contiguous pieces (GPT, LSTM, also on SMILES)."""
    from genlab.registry import model_family

    family = model_family(cfg.model_name)
    if family not in ("image", "audio", "text") or getattr(cfg.data, "batches", None):
        raise ConfigError(f"federated training splits image or audio training sets by example, or a text run's "
                          f"token stream; {cfg.model_name} is a {family} model that reads "
                          f"{getattr(cfg.data, 'batches', None) or 'graphs'}: choose an image, audio or text preset")


def subset_train(data, idx: np.ndarray):
    """`data` with only the training examples `idx` (every train_* tensor, and the speakers)."""
    t = torch.as_tensor(idx, dtype=torch.long)
    changes = {f.name: getattr(data, f.name)[t] for f in dataclasses.fields(data)
               if f.name.startswith("train_") and isinstance(getattr(data, f.name), torch.Tensor)}
    speakers = getattr(data, "speakers", None)
    if speakers and speakers.get("train"):
        changes["speakers"] = {**speakers, "train": [speakers["train"][i] for i in idx.tolist()]}
    return dataclasses.replace(data, **changes)


def load_run_data(run_dir: Path):
    """The run's full data, read once per process."""
    from genlab.engine.run import load_data, recorded_data_root, with_recorded_dataset, _read_json
    from genlab.config import load_config
    from genlab.data.datasets import resolve_data_root

    key = str(run_dir.resolve())
    if key not in _DATA:
        cfg = with_recorded_dataset(load_config(run_dir / "config.yaml"), _read_json(run_dir / "data.json"))
        check_family(cfg)
        data = load_data(cfg, resolve_data_root(recorded_data_root(run_dir)), run_dir)  # text: the run's tokenizer
        _DATA[key] = (cfg, data)
    return _DATA[key]


def shards_of(fed: FederationConfig, data) -> list[np.ndarray]:
    return partition(data, fed.clients, fed.partition, seed=fed.seed, alpha=fed.alpha,
                     classes_per_client=fed.classes_per_client)


class LocalClient:
    """Client `cid` of the federation whose run directory is `run_dir`."""

    def __init__(self, run_dir: Path, fed: FederationConfig, cid: int):
        from genlab.engine.run import build_model, build_pipeline
        from genlab.engine.trainer import Trainer
        from genlab.seed import seed_everything

        self.fed, self.cid = fed, cid
        cfg, data = load_run_data(run_dir)
        self.shard = shards_of(fed, data)[cid]
        if len(self.shard) == 0:
            raise ConfigError(f"client {cid} holds no training data under partition {fed.partition}")
        shard_data = subset_train(data, self.shard)
        seed_everything(cfg.train.seed)
        model = build_model(cfg)
        folder = run_dir / "clients" / f"client-{cid}"
        self.trainer = Trainer(model, shard_data, build_pipeline(cfg, data.meta()), cfg, folder,
                               device=torch.device("cpu"))
        self.keys = federated_keys(model)

    def get_weights(self) -> list[np.ndarray]:
        return get_arrays(self.trainer.model, self.keys)

    def set_weights(self, arrays: list[np.ndarray]) -> None:
        set_arrays(self.trainer.model, self.keys, arrays)

    def proximal(self, mu: float):
        """FedProx's term mu/2 ||w - w_global||^2 over the parameters an optimiser updates."""
        anchor = {id(p): p.detach().clone() for p in self.trainer.model.parameters()}
        groups = self.trainer.groups

        def penalty(opt: str) -> torch.Tensor:
            return 0.5 * mu * sum(((p - anchor[id(p)]) ** 2).sum() for p in groups[opt])
        return penalty

    def fit(self, arrays: list[np.ndarray], rnd: int, mu: float) -> tuple[list[np.ndarray], int, dict]:
        """One local round (`rnd` counts from 1): the new weights, the FedAvg weight, metrics."""
        if self.cid in self.fed.crash_clients:
            raise RuntimeError(f"client {self.cid}: crash injected by crash_clients")
        if self.cid in self.fed.slow_clients:
            time.sleep(self.fed.slow_seconds)
        t0 = time.perf_counter()
        self.set_weights(arrays)
        E = self.fed.local_steps
        terms = self.trainer.train_steps((rnd - 1) * E, E, self.proximal(mu) if mu > 0 else None)
        out = self.get_weights()
        if self.fed.secure_aggregation:
            worst = max(float(np.abs(a).max()) for a in out if a.size)
            if worst > self.fed.secagg_clip_range:
                raise ConfigError(f"client {self.cid}: a weight of magnitude {worst:.3g} exceeds secagg_clip_range="
                                  f"{self.fed.secagg_clip_range} (SecAgg+ would clip it): raise secagg_clip_range")
        weight = 1 if self.fed.client_dp.enabled else len(self.shard)
        metrics = {"client": self.cid, "seconds": time.perf_counter() - t0, **terms}
        return out, weight, metrics


def local_client(run_dir: str | Path, fed: FederationConfig, cid: int) -> LocalClient:
    key = (str(Path(run_dir).resolve()), cid)
    if key not in _CLIENTS:
        _CLIENTS[key] = LocalClient(Path(run_dir), fed, cid)
    return _CLIENTS[key]


def federation_mod(run_dir: str | Path | None = None, fed: FederationConfig | None = None):
    """The ClientApp's one mod: counts the bytes (outermost), then Flower's SecAgg+ mod when the
    federation aggregates securely, then Flower's fixed-clipping mod under client-level DP
    (innermost: an update is clipped before it is masked)."""
    from flwr.client.mod import fixedclipping_mod, secaggplus_mod

    from genlab.federated.traffic import traffic_mod

    count = traffic_mod(run_dir)

    def mod(msg, context, call_next):
        rd = run_dir or context.run_config["run-dir"]
        f = fed or federation_of(rd)
        chain = call_next
        for m in ([fixedclipping_mod] if f.client_dp.enabled else []) + ([secaggplus_mod] if f.secure_aggregation
                                                                           else []):
            chain = (lambda m, nxt: lambda msg_, ctx_: m(msg_, ctx_, nxt))(m, chain)
        return count(msg, context, chain)

    return mod


def federation_of(run_dir: str | Path) -> FederationConfig:
    return FederationConfig.from_file(Path(run_dir) / "federation.yaml")


def make_client_fn(run_dir: str | Path | None = None, fed: FederationConfig | None = None):
    """Flower's client_fn: the NumPyClient of the context's partition-id. Without arguments the
    run directory comes from the run config (`flwr run`, genlab.federated.app)."""
    from flwr.client import NumPyClient

    class GenlabClient(NumPyClient):
        def __init__(self, client: LocalClient):
            self.client = client

        def fit(self, parameters, config):
            return self.client.fit(parameters, int(config["round"]), float(config.get("proximal_mu", 0.0)))

        def evaluate(self, parameters, config):  # the server evaluates the global model itself
            return 0.0, 0, {}

    def client_fn(context):
        torch.set_num_threads(1)  # clients share the machine's cores in a simulation
        rd = run_dir or context.run_config["run-dir"]
        f = fed or federation_of(rd)
        return GenlabClient(local_client(rd, f, int(context.node_config["partition-id"]))).to_client()

    return client_fn
