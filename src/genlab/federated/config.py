"""A federation's settings: one YAML file, read and checked before anything starts.

    run: cvae-mnist              # what every client trains: a preset or a run config (YAML)
    set: [train.batch_size=64]   # --set overrides of that run config
    clients: 4                   # K
    rounds: 10                   # R
    local_steps: 25              # E optimiser steps per client per round
    fraction: 1.0                # share of the clients sampled each round
    min_clients: 2               # a round needs this many replies (else the model stays)
    round_timeout: 600           # seconds; a client slower than this is left out of the round
    strategy: fedavg             # fedavg | fedprox | fedadam
    proximal_mu: 0.01            # fedprox
    server_lr: 0.01              # fedadam (eta); server_beta1/server_beta2/server_tau as in Reddi et al.
    partition: iid               # iid | dirichlet | classes | speaker
    alpha: 0.5                   # dirichlet
    classes_per_client: 2        # classes
    secure_aggregation: false    # Flower's SecAgg+: the server sees only the sum of the updates
    client_dp:                   # client-level DP (clipped updates, Gaussian noise on the mean)
      clip: 0.5                  #   L2 bound of one client's update
      noise_multiplier: 1.0      #   or epsilon: 10 (the multiplier that spends it in R rounds)
      delta: 1.0e-5
    seed: 0

Everything but `run` has a default. `FederationConfig.from_file` names the file and key in
every error."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from genlab.config import build_section, yaml_load
from genlab.errors import ConfigError

STRATEGIES = ("fedavg", "fedprox", "fedadam")
PARTITIONS = ("iid", "dirichlet", "classes", "speaker")


@dataclass
class ClientDPConfig:
    """Client-level differential privacy (DP-FedAvg, McMahan et al. 2018): each sampled client's
    update is clipped to L2 norm `clip` and the server adds N(0, (noise_multiplier * clip / k)^2)
    to the unweighted mean of the k updates that arrived; an RDP accountant counts the rounds. Every
    client is asked in every round (fraction 1, sampling rate 1: no amplification by subsampling
    is claimed), and FedAdam is refused (its moments would see the un-noised mean)."""

    clip: float | None = None
    noise_multiplier: float | None = None
    epsilon: float | None = None  # target after all rounds, instead of noise_multiplier
    delta: float = 1e-5
    accountant: str = "rdp"

    @property
    def enabled(self) -> bool:
        return self.clip is not None

    def validate(self) -> None:
        if not self.enabled:
            if self.noise_multiplier is not None or self.epsilon is not None:
                raise ConfigError("client_dp needs client_dp.clip (the L2 bound of a client's update) with "
                                  "noise_multiplier or epsilon")
            return
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ConfigError(f"client_dp.clip must be a number > 0, got {self.clip}")
        if (self.noise_multiplier is None) == (self.epsilon is None):
            raise ConfigError("client_dp: set noise_multiplier or epsilon (exactly one)")
        if self.noise_multiplier is not None and not (math.isfinite(self.noise_multiplier)
                                                      and self.noise_multiplier > 0):
            raise ConfigError(f"client_dp.noise_multiplier must be a number > 0, got {self.noise_multiplier}")
        if self.epsilon is not None and not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ConfigError(f"client_dp.epsilon must be a number > 0, got {self.epsilon}")
        if not 0 < self.delta < 1:
            raise ConfigError(f"client_dp.delta must be in (0, 1), got {self.delta}")
        if self.accountant not in ("rdp", "prv"):
            raise ConfigError(f"client_dp.accountant must be rdp or prv, got {self.accountant!r}")


@dataclass
class FederationConfig:
    run: str = ""
    set: tuple[str, ...] = ()
    clients: int = 4
    rounds: int = 10
    local_steps: int = 25
    fraction: float = 1.0
    min_clients: int = 2
    round_timeout: float = 600.0
    strategy: str = "fedavg"
    proximal_mu: float = 0.0
    server_lr: float = 0.01
    server_beta1: float = 0.9
    server_beta2: float = 0.99
    server_tau: float = 1e-3
    partition: str = "iid"
    alpha: float = 0.5
    classes_per_client: int = 2
    secure_aggregation: bool = False
    secagg_clip_range: float = 8.0  # SecAgg+ quantises weights in [-range, range]
    client_dp: ClientDPConfig = field(default_factory=ClientDPConfig)
    seed: int = 0
    # fault injection, to show and test robustness: these clients fail / stall in every round
    crash_clients: tuple[int, ...] = ()
    slow_clients: tuple[int, ...] = ()
    slow_seconds: float = 0.0

    @property
    def sampled(self) -> int:
        """Clients asked to train in each round (Flower's rule: at least min_clients)."""
        return max(int(self.clients * self.fraction), self.min_clients)

    def validate(self) -> None:
        checks = [
            (bool(self.run), "the federation file must name `run:` (a preset such as cvae-mnist, or a run config "
                             "YAML)"),
            (self.clients >= 2, f"clients must be >= 2, got {self.clients}"),
            (self.rounds >= 1, f"rounds must be >= 1, got {self.rounds}"),
            (self.local_steps >= 1, f"local_steps must be >= 1, got {self.local_steps}"),
            (0 < self.fraction <= 1, f"fraction must be in (0, 1], got {self.fraction}"),
            (1 <= self.min_clients <= self.clients,
             f"min_clients must be in 1..clients ({self.clients}), got {self.min_clients}"),
            (self.round_timeout > 0, f"round_timeout must be > 0 seconds, got {self.round_timeout}"),
            (self.strategy in STRATEGIES, f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}"),
            (self.proximal_mu >= 0, f"proximal_mu must be >= 0, got {self.proximal_mu}"),
            (self.proximal_mu == 0 or self.strategy == "fedprox",
             f"proximal_mu is FedProx's; set strategy: fedprox (or drop proximal_mu), got {self.strategy}"),
            (self.server_lr > 0 and self.server_tau > 0, "server_lr and server_tau must be > 0"),
            (self.partition in PARTITIONS, f"partition must be one of {', '.join(PARTITIONS)}, got "
                                           f"{self.partition!r}"),
            (self.alpha > 0, f"alpha (Dirichlet concentration) must be > 0, got {self.alpha}"),
            (self.classes_per_client >= 1, f"classes_per_client must be >= 1, got {self.classes_per_client}"),
            (self.secagg_clip_range > 0, f"secagg_clip_range must be > 0, got {self.secagg_clip_range}"),
            (not (self.client_dp.enabled and self.strategy == "fedadam"),
             "client_dp with fedadam: Flower's DP wrapper noises the result of FedAdam's step, not its input, so "
             "FedAdam's moments would see the un-noised mean; use fedavg or fedprox with client_dp"),
            (not self.client_dp.enabled or self.fraction == 1,
             f"client_dp is accounted with every client in every round (Flower samples a fixed number without "
             f"replacement, which the Poisson accountant does not cover): set fraction: 1, got {self.fraction}"),
            (not self.secure_aggregation or self.sampled >= 3,
             f"secure aggregation (SecAgg+) needs at least 3 clients per round, got {self.sampled}: raise "
             "clients/fraction/min_clients"),
            (all(0 <= c < self.clients for c in self.crash_clients + self.slow_clients),
             f"crash_clients/slow_clients must be client ids in 0..{self.clients - 1}"),
            (self.slow_seconds >= 0, "slow_seconds must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["set"], d["crash_clients"], d["slow_clients"] = list(self.set), list(self.crash_clients), \
            list(self.slow_clients)
        return d

    @classmethod
    def from_dict(cls, tree: dict, where: str = "federation") -> "FederationConfig":
        if not isinstance(tree, dict):
            raise ConfigError(f"{where} must hold a mapping (run:, clients:, rounds:, ...)")
        tree = dict(tree)
        dp = build_section(ClientDPConfig, tree.pop("client_dp", None) or {}, "client_dp")
        if isinstance(tree.get("set"), str):
            tree["set"] = [tree["set"]]
        cfg = build_section(cls, tree, where)
        cfg.client_dp = dp
        cfg.validate()
        return cfg

    @classmethod
    def from_file(cls, path: str | Path) -> "FederationConfig":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"federation file {path} not found; give a YAML file (see `genlab federate --help`)")
        try:
            tree = yaml_load(path.read_text(encoding="utf-8")) or {}
        except (UnicodeDecodeError, yaml.YAMLError) as e:
            raise ConfigError(f"{path} is not a valid YAML file: {str(e).splitlines()[0]}") from None
        return cls.from_dict(tree, str(path))
