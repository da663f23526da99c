"""The federation's server: Flower's strategies and workflows around genlab's run directory.

`server_main(grid, context, run_dir)` is the body of the ServerApp. It uses Flower's own
pieces: the strategy (FedAvg, FedProx or FedAdam from flwr.server.strategy), Flower's
client-side-clipping DP wrapper for client-level DP, and the SecAgg+ workflow for secure
aggregation (DefaultWorkflow(fit_workflow=SecAggPlusWorkflow)). genlab adds one thin
wrapper, `Rounds`, that

- numbers rounds globally, so a resumed federation continues at round r + 1 with the same
  learning-rate schedule, batches and FedAdam bias correction as an uninterrupted one;
- keeps the model unchanged in a round with fewer than `min_clients` replies (a crashed or
  timed-out client is simply absent: Flower's `round_timeout` bounds the wait);
- after every round, validates the global model, logs the round (replies, failures, bytes,
  seconds, epsilon) and writes a checkpoint of the run directory (the global weights, plus the
  strategy's state: FedAdam's moments), through the engine's `Trainer` on the full data.

The run directory is a normal genlab run: `genlab info/sample/evaluate` read it as any other.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from genlab.errors import ConfigError
from genlab.federated.client import federated_keys, get_arrays, set_arrays
from genlab.federated.config import FederationConfig

log = logging.getLogger("genlab")


# --------------------------------------------------------------------------- client-level DP


def client_dp_sigma(fed: FederationConfig) -> float:
    """The noise multiplier: given, or the smallest that spends client_dp.epsilon in `rounds`
    rounds at sampling rate m / K (Opacus's search, the same as for DP-SGD)."""
    dp = fed.client_dp
    if dp.noise_multiplier is not None:
        return dp.noise_multiplier
    from opacus.accountants.utils import get_noise_multiplier

    return float(get_noise_multiplier(target_epsilon=dp.epsilon, target_delta=dp.delta, sample_rate=1.0,
                                      steps=fed.rounds, accountant=dp.accountant))


def client_dp_state(fed: FederationConfig, rounds_done: int) -> dict:
    """The checkpoint's privacy entry (the layout of DP-SGD runs', so `genlab info` and the
    reports show it): epsilon after `rounds_done` rounds, client-level."""
    from genlab.engine.privacy import epsilon_of

    dp, q, sigma = fed.client_dp, 1.0, client_dp_sigma(fed)  # every client, every round (fraction 1)
    history = [[sigma, q, rounds_done]] if rounds_done else []
    return {"epsilon": epsilon_of(dp.accountant, history, dp.delta) if history else 0.0, "delta": dp.delta,
            "noise_multiplier": sigma, "clip": dp.clip, "sample_rate": q, "accountant": dp.accountant,
            "target_epsilon": dp.epsilon, "level": "client", "history": history}


# --------------------------------------------------------------------------- server state


class Server:
    """The global model in the run directory: a Trainer on the full data (validation, grids,
    checkpoints, the final report), resumed from the newest checkpoint when there is one."""

    def __init__(self, run_dir: Path, fed: FederationConfig):
        from genlab.engine import checkpoint as ckpt
        from genlab.engine.run import build_model, build_pipeline
        from genlab.engine.trainer import Trainer
        from genlab.federated.client import load_run_data
        from genlab.seed import seed_everything

        self.run_dir, self.fed = run_dir, fed
        cfg, data = load_run_data(run_dir)
        seed_everything(cfg.train.seed)
        self.trainer = Trainer(build_model(cfg), data, build_pipeline(cfg, data.meta()), cfg, run_dir,
                               device=torch.device("cpu"))
        self.trainer.extra_state = self.checkpoint_state
        self.keys = federated_keys(self.trainer.model)
        self.round, self.strategy_state, self.seconds = 0, {}, 0.0
        latest = ckpt.latest_valid(run_dir / "checkpoints")
        if latest is not None:
            fstate = latest.state.get("federation")
            if fstate is None:
                raise ConfigError(f"{run_dir} holds a run that is not federated; choose another --out")
            sd = {k[len("model."):]: v for k, v in latest.tensors.items() if k.startswith("model.")}
            self.trainer.model.load_state_dict(sd)
            self.trainer.state.step, self.round = latest.state["state"]["step"], fstate["round"]
            self.trainer.state.best_val = latest.state["state"].get("best_val")
            self.seconds = fstate.get("seconds", 0.0)
            self.strategy_state = {k: [latest.tensors[f"server.{k}.{i}"].numpy() for i in range(n)]
                                   for k, n in fstate.get("strategy_state", {}).items()}
            self.trainer.log.truncate_after(self.trainer.state.step)
            log.info("resuming the federation from round %d of %d (%s)", self.round, fed.rounds, latest.name)
        self.strategy = None  # set by server_main: its state goes into the checkpoints
        self.traffic0 = self.traffic()

    def weights(self) -> list[np.ndarray]:
        return get_arrays(self.trainer.model, self.keys)

    def set_weights(self, arrays: list[np.ndarray]) -> None:
        set_arrays(self.trainer.model, self.keys, arrays)

    def checkpoint_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors, counts = {}, {}
        for name in ("m_t", "v_t"):  # FedAdam's moments (None before its first round)
            arrays = getattr(self.strategy, name, None) if self.strategy is not None else None
            arrays = arrays if arrays is not None else self.strategy_state.get(name)
            if arrays:
                counts[name] = len(arrays)
                tensors.update({f"server.{name}.{i}": torch.from_numpy(np.ascontiguousarray(a))
                                for i, a in enumerate(arrays)})
        state = {"federation": {"round": self.round, "rounds": self.fed.rounds, "seconds": self.seconds,
                                "strategy_state": counts}}
        if self.fed.client_dp.enabled:
            state["privacy"] = client_dp_state(self.fed, self.round)
        return tensors, state

    def traffic(self) -> dict[str, int]:
        """Bytes the clients received and sent so far (genlab.federated.traffic's files)."""
        from genlab.federated.traffic import read_totals

        return read_totals(self.run_dir)

    def end_round(self, rnd: int, arrays: list[np.ndarray], replies: list[dict], failures: int, sampled: int,
                  seconds: float) -> None:
        """Round `rnd` is aggregated: validate, log and checkpoint the new global model."""
        self.set_weights(arrays)
        self.round, self.seconds = rnd, self.seconds + seconds
        t = self.trainer
        t.state.step = rnd * self.fed.local_steps
        t.state.elapsed = self.seconds
        now = self.traffic()
        values = {"round": rnd, "clients_sampled": sampled, "clients_ok": len(replies), "clients_failed": failures,
                  "clients_late": max(sampled - len(replies) - failures, 0), "round_seconds": seconds,
                  "bytes_to_clients": now["down"] - self.traffic0["down"],
                  "bytes_from_clients": now["up"] - self.traffic0["up"]}
        self.traffic0 = now
        losses = [r["loss"] for r in replies if "loss" in r]
        if losses:
            values["client_loss"] = float(np.mean(losses))
        if self.fed.client_dp.enabled:
            values["epsilon"] = client_dp_state(self.fed, rnd)["epsilon"]
        t.log.record("round", t.state.step, values)
        t._evaluate_and_track()
        t.save()

    def finish(self) -> None:
        """The engine's ending (final grid, test report, the finishing checkpoint), then the
        federation's rounds added to report.json and report.html."""
        from genlab.engine.checkpoint import atomic_write_json
        from genlab.evaluation.html import write_run_report_html

        self.trainer.finish("steps")
        self.trainer.log.close()
        path = self.run_dir / "report.json"
        report = json.loads(path.read_text()) if path.is_file() else {"run": str(self.run_dir), "metrics": {}}
        log_path = self.run_dir / "logs" / "train.jsonl"
        records = [json.loads(x) for x in log_path.read_text().splitlines() if x.strip()] if log_path.is_file() else []
        f = self.fed
        report["federation"] = {
            "clients": f.clients, "rounds": f.rounds, "local_steps": f.local_steps, "strategy": f.strategy,
            "partition": f.partition, "secure_aggregation": f.secure_aggregation,
            "client_dp": f.client_dp.enabled, "per_round": [
                {k: r[k] for k in ("round", "clients_ok", "clients_failed", "round_seconds", "bytes_to_clients",
                                   "bytes_from_clients", "client_loss", "epsilon") if k in r}
                for r in records if r.get("kind") == "round"]}
        atomic_write_json(path, report)
        write_run_report_html(self.run_dir, report)


# --------------------------------------------------------------------------- the strategy wrapper


def base_strategy(fed: FederationConfig, initial: list[np.ndarray], state: dict):
    """Flower's strategy for `fed.strategy`, starting from `initial` (and FedAdam's moments)."""
    from flwr.common import ndarrays_to_parameters
    from flwr.server.strategy import FedAdam, FedAvg, FedProx

    common = dict(fraction_fit=fed.fraction, fraction_evaluate=0.0, min_fit_clients=fed.min_clients,
                  min_evaluate_clients=0, min_available_clients=fed.min_clients,
                  initial_parameters=ndarrays_to_parameters(initial), accept_failures=True)
    if fed.strategy == "fedavg":
        return FedAvg(**common)
    if fed.strategy == "fedprox":
        return FedProx(**common, proximal_mu=fed.proximal_mu)
    s = FedAdam(**common, eta=fed.server_lr, beta_1=fed.server_beta1, beta_2=fed.server_beta2, tau=fed.server_tau)
    if state.get("m_t"):
        s.m_t, s.v_t = state["m_t"], state["v_t"]
    return s


def make_rounds(server: Server, inner, fed: FederationConfig, dp=None):
    """`Rounds`: see the module docstring. Built in a function so flwr is imported lazily."""
    from flwr.server.strategy import Strategy

    class Rounds(Strategy):
        def __init__(self):
            super().__init__()
            self.offset, self.t0 = server.round, time.perf_counter()
            self.replies: list[dict] = []
            self.failures, self.sampled, self.waited = 0, 0, False

        def initialize_parameters(self, client_manager):
            return inner.initialize_parameters(client_manager)

        def configure_fit(self, server_round, parameters, client_manager):
            self.t0 = time.perf_counter()
            self.replies, self.failures = [], 0
            if not self.waited:  # the first round waits for every client to connect (real processes start slowly)
                self.waited = client_manager.wait_for(fed.clients, timeout=int(fed.round_timeout)) or True
            rnd = server_round + self.offset
            pairs = inner.configure_fit(rnd, parameters, client_manager)
            self.sampled = len(pairs)
            for _, ins in pairs:
                ins.config["round"] = rnd
                ins.config["proximal_mu"] = fed.proximal_mu
            return pairs

        def aggregate_fit(self, server_round, results, failures):
            self.replies = [dict(res.metrics) for _, res in results]
            self.failures = len({id(f[0]) if isinstance(f, tuple) else id(f) for f in failures})
            if not results and failures and self.failures >= self.sampled:
                raise ConfigError(f"round {server_round + self.offset}: every client failed ({failure_reason(failures)}); "
                                  f"see the clients' errors above")
            if len(results) < fed.min_clients:
                log.warning("round %d: %d replies (%d failed or late), fewer than min_clients=%d: the global model "
                            "stays as it was", server_round + self.offset, len(results), len(failures),
                            fed.min_clients)
                return None, {}
            if dp is not None:  # noise for the k replies that came (the mean's sensitivity is clip / k); Flower's
                dp.num_sampled_clients = len(results)  # wrapper would drop the whole round for one failure
                failures = []
            return inner.aggregate_fit(server_round + self.offset, results, failures)

        def configure_evaluate(self, server_round, parameters, client_manager):
            return []

        def aggregate_evaluate(self, server_round, results, failures):
            return None, {}

        def evaluate(self, server_round, parameters):
            """Called by Flower after each round with the new global parameters (and once
            before the first: skipped)."""
            if server_round == 0:
                return None
            from flwr.common import parameters_to_ndarrays

            server.end_round(server_round + self.offset, parameters_to_ndarrays(parameters), self.replies,
                             self.failures, self.sampled, time.perf_counter() - self.t0)
            return None

    return Rounds()


def build_strategy(server: Server, fed: FederationConfig):
    inner = base_strategy(fed, server.weights(), server.strategy_state)
    server.strategy = inner
    dp = None
    if fed.client_dp.enabled:
        from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping

        inner = dp = DifferentialPrivacyClientSideFixedClipping(inner, noise_multiplier=client_dp_sigma(fed),
                                                                clipping_norm=fed.client_dp.clip,
                                                                num_sampled_clients=fed.sampled)
    return make_rounds(server, inner, fed, dp)


def failure_reason(failures) -> str:
    """The first failure's message, one line."""
    f = failures[0]
    res = f[1] if isinstance(f, tuple) else f
    reason = getattr(getattr(res, "status", None), "message", None) or str(res)
    return (reason.strip().splitlines() or ["unknown"])[-1][:300]


class TimedGrid:
    """The grid with a default timeout: Flower's DefaultWorkflow waits for every reply of a
    round (it does not pass ServerConfig.round_timeout on), so a stalled client would stall
    the federation; through this wrapper a round ends after `round_timeout` seconds with the
    replies it has."""

    def __init__(self, grid, timeout: float):
        self._grid, self._timeout = grid, timeout

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *, timeout: float | None = None):
        return self._grid.send_and_receive(messages, timeout=self._timeout if timeout is None else timeout)


def server_main(grid, context, run_dir: str | Path) -> None:
    """The ServerApp's body: run the remaining rounds, then finish the run directory."""
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    torch.set_num_threads(1)
    run_dir = Path(run_dir)
    fed = FederationConfig.from_file(run_dir / "federation.yaml")
    server = Server(run_dir, fed)
    left = fed.rounds - server.round
    if left > 0:
        strategy = build_strategy(server, fed)
        ctx = LegacyContext(context=context, config=ServerConfig(num_rounds=left, round_timeout=fed.round_timeout),
                            strategy=strategy)
        fit = None
        if fed.secure_aggregation:
            # the weights the clients send: 1 under client DP, else their example counts (at most the largest shard)
            shards = json.loads((run_dir / "partition.json").read_text())["clients"]
            max_weight = 1.0 if fed.client_dp.enabled else float(max(c["examples"] for c in shards))
            fit = SecAggPlusWorkflow(num_shares=1.0, reconstruction_threshold=0.5, clipping_range=fed.secagg_clip_range,
                                     max_weight=max_weight, timeout=fed.round_timeout)
        DefaultWorkflow(fit_workflow=fit)(TimedGrid(grid, fed.round_timeout), ctx)
    if server.round < fed.rounds:
        raise ConfigError(f"the federation stopped at round {server.round} of {fed.rounds}; rerun the same "
                          "`genlab federate` command to resume")
    server.finish()
