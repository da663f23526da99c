"""`genlab federate FED.yaml --out RUN`: prepare the run directory, then run the federation in
Flower's simulation (one process, Ray actors as clients) or as real processes talking over
loopback (a `flower-superlink`, K `flower-supernode`s and `flwr run` of the Flower app that
genlab writes to RUN/flower-app/). Both run the same ServerApp and ClientApp code
(genlab.federated.server, genlab.federated.client).

The run directory is prepared once: config.yaml (the run config every client trains, with
train.steps = rounds x local_steps so the learning-rate schedule spans the federation),
data.json, manifest.json, federation.yaml (the settings, frozen) and partition.json (each
client's examples per class). Running the same command again on the same --out resumes
from the newest checkpoint (one is written after every round); different settings are
refused.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from genlab.errors import ConfigError
from genlab.federated.config import FederationConfig

log = logging.getLogger("genlab")

MODES = ("simulation", "processes")


def run_config_of(fed: FederationConfig):
    """The RunConfig the clients train: the named run, its schedule spanning all rounds; EMA off
    (a client's EMA would restart every round; the server's average plays its part)."""
    from genlab.config import resolve, validate_run

    cfg = resolve(fed.run, list(fed.set))
    if cfg.privacy.enabled:
        raise ConfigError("privacy.* (per-example DP-SGD) is not used in federations; set the federation's "
                          "client_dp (clip, noise_multiplier or epsilon) instead")
    if cfg.train.init_from or cfg.train.lora_rank or cfg.train.replay:
        raise ConfigError("federations start from the run config's fresh model: drop train.init_from, "
                          "train.lora_rank and train.replay")
    steps = fed.rounds * fed.local_steps
    if cfg.train.ema_decay:
        log.info("federation: train.ema_decay=%g turned off (each round restarts the clients from the global "
                 "model)", cfg.train.ema_decay)
    t = dataclasses.replace(cfg.train, steps=steps, schedule_steps=steps, minutes=None, ema_decay=0.0,
                            eval_every=max(steps, 1), sample_every=max(steps, 1), ckpt_every=max(steps, 1))
    cfg = dataclasses.replace(cfg, train=t)
    validate_run(cfg)
    return cfg


def prepare(fed: FederationConfig, run_dir: Path, data_root: str | None, argv: list[str] | None) -> None:
    """Write the run directory's files, or check that an existing federation has the same settings."""
    from genlab.config import save_config
    from genlab.data.datasets import resolve_data_root
    from genlab.engine import checkpoint as ckpt
    from genlab.engine.distributed import DistInfo
    from genlab.engine.run import load_data, manifest, resolve_data_fields
    from genlab.federated.client import check_family, shards_of

    frozen = run_dir / "federation.yaml"
    if ckpt.list_steps(run_dir / "checkpoints"):
        if not frozen.is_file():
            raise ConfigError(f"{run_dir} already holds a run that is not federated; choose another --out")
        if FederationConfig.from_file(frozen).to_dict() != fed.to_dict():
            raise ConfigError(f"the federation settings differ from those of {run_dir} (its federation.yaml); "
                              "resume with the same file, or choose another --out")
        return
    cfg = run_config_of(fed)
    check_family(cfg)
    root = resolve_data_root(data_root)
    data = load_data(cfg, root, fallback=False)
    cfg = resolve_data_fields(cfg, data)
    shards = shards_of(fed, data)  # checks the partition before anything is written
    labels = None if getattr(data, "train_y", None) is None else data.train_y.numpy()
    part = {"partition": fed.partition, "clients": [
        {"client": i, "examples": int(len(s)),
         **({"per_class": np.bincount(labels[s], minlength=int(labels.max()) + 1).tolist()} if labels is not None
            else {})} for i, s in enumerate(shards)]}
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    ckpt.atomic_write_json(run_dir / "data.json", data.meta())
    ckpt.atomic_write_json(run_dir / "partition.json", part)
    if getattr(data, "tokenizer", None) is not None:  # text runs: every client and command reads this one
        ckpt.atomic_write_text(run_dir / "tokenizer.json", data.tokenizer.to_json())
    ckpt.atomic_write_json(run_dir / "manifest.json",
                           {**manifest(torch.device("cpu"), DistInfo(), data, root, argv), "federation": True})
    ckpt.atomic_write_text(frozen, yaml.safe_dump(fed.to_dict(), sort_keys=False))
    log.info("federation %s: %d clients (%s), %d rounds x %d local steps of %s, strategy %s%s%s", run_dir,
             fed.clients, ", ".join(str(c["examples"]) for c in part["clients"]), fed.rounds, fed.local_steps,
             cfg.preset or cfg.model_name, fed.strategy, ", SecAgg+" if fed.secure_aggregation else "",
             ", client-level DP" if fed.client_dp.enabled else "")


# --------------------------------------------------------------------------- simulation


def simulate(run_dir: Path, fed: FederationConfig, cores: int | None = None) -> None:
    """All clients as Ray actors of Flower's simulation engine, the server in this process."""
    from flwr.client import ClientApp
    from flwr.server import ServerApp
    from flwr.simulation import run_simulation

    from genlab.federated.client import federation_mod, make_client_fn
    from genlab.federated.server import server_main

    errors: list[BaseException] = []
    server_app = ServerApp()

    @server_app.main()
    def _main(grid, context):
        try:
            server_main(grid, context, run_dir)
        except BaseException as e:  # Flower logs and swallows the ServerApp's errors: keep it for the caller
            errors.append(e)
            raise

    client_app = ClientApp(client_fn=make_client_fn(run_dir, fed), mods=[federation_mod(run_dir, fed)])
    if cores is None:  # the cores this process may run on (taskset), one client actor each
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=fed.clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": cores, "include_dashboard": False,
                                                 "log_to_driver": False}})
    if errors:
        raise errors[0]


# --------------------------------------------------------------------------- real processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_flower_app(run_dir: Path, home: Path, port: int) -> Path:
    """RUN/flower-app/: a Flower app (pyproject.toml naming genlab's ServerApp and ClientApp,
    with this run directory in its run config), and FLWR_HOME's connection to the SuperLink."""
    from genlab.engine.checkpoint import atomic_write_text
    app = run_dir / "flower-app"
    app.mkdir(exist_ok=True)
    atomic_write_text(app / "pyproject.toml", f"""# genlab's federation as a Flower app: `flwr run {app} local` (FLWR_HOME={home})
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "genlab-federation"
version = "1.0.0"
description = "genlab federated training of {run_dir.name}"
license = "MIT"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "genlab"

[tool.flwr.app.components]
serverapp = "genlab.federated.app:serverapp"
clientapp = "genlab.federated.app:clientapp"

[tool.flwr.app.config]
run-dir = {json.dumps(str(run_dir.resolve()))}
""")
    home.mkdir(exist_ok=True)
    atomic_write_text(home / "config.toml", f"""[superlink]
default = "local"

[superlink.local]
address = "127.0.0.1:{port}"
insecure = true
""")
    return app


def _bin(name: str) -> str:
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else (shutil.which(name) or name)


def run_processes(run_dir: Path, fed: FederationConfig, timeout: float | None = None) -> None:
    """A SuperLink, K SuperNodes and `flwr run`, each its own process on loopback."""
    from genlab.engine import checkpoint as ckpt

    home = run_dir / "flower-home"
    port = free_port()
    app = write_flower_app(run_dir, home, port)
    # Flower's processes start more of Flower's commands (flower-superexec): this Python's first on PATH
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "FLWR_HOME": str(home.resolve()), "OMP_NUM_THREADS": "1", "PATH": path}
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> subprocess.Popen:
        f = open(logs / f"{name}.log", "a")
        p = subprocess.Popen([_bin(args[0]), *args[1:]], stdout=f, stderr=subprocess.STDOUT, env=env,
                             cwd=run_dir, start_new_session=True)
        procs.append(p)
        return p

    try:
        start("superlink", "flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(port))
        for k in range(fed.clients):
            start(f"supernode-{k}", "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{port}",
                  "--node-config", f"partition-id={k} num-partitions={fed.clients}", "--host", "127.0.0.1",
                  "--port", str(free_port()))
        deadline = time.time() + 60
        while not _listening(port):
            if time.time() > deadline or procs[0].poll() is not None:
                raise ConfigError(f"the Flower SuperLink did not start; see {logs / 'superlink.log'}")
            time.sleep(0.2)
        with open(logs / "flwr-run.log", "a") as f:
            r = subprocess.run([_bin("flwr"), "run", str(app), "local", "--stream"], stdout=f, stderr=subprocess.STDOUT,
                               env=env, cwd=run_dir, timeout=timeout)
        c = ckpt.latest_valid(run_dir / "checkpoints")
        done = (c.state.get("federation") or {}).get("round", 0) if c else 0
        if r.returncode != 0 or done < fed.rounds or c.state["state"].get("stop_reason") is None:
            raise ConfigError(f"the federation stopped at round {done} of {fed.rounds} (flwr run exit "
                              f"{r.returncode}); see {logs / 'flwr-run.log'}; rerun the same command to resume")
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


# --------------------------------------------------------------------------- entry point


def federate(config: str | os.PathLike, out: str | os.PathLike | None = None, *, mode: str = "simulation",
             data_root: str | None = None, argv: list[str] | None = None, cores: int | None = None) -> Path:
    """Run (or resume) the federation that the YAML file `config` describes; the run directory.
    `cores`: simulated clients that run at once (default: the cores this process may use)."""
    from genlab.engine.lock import RunLock
    from genlab.engine.run import default_run_dir
    from genlab.extras import require
    from genlab.options import check_run_dir_path

    if mode not in MODES:
        raise ConfigError(f"--mode must be simulation or processes, got {mode!r}")
    require("flwr", "federated", "federated training")
    fed = FederationConfig.from_file(config)
    if out is None:
        out = default_run_dir(dataclasses.replace(run_config_of(fed), preset=f"federated-{Path(config).stem}"))
    run_dir = check_run_dir_path(out)
    lock = RunLock(run_dir)
    lock.acquire()
    try:
        prepare(fed, run_dir, data_root, argv)
        if mode == "simulation":
            simulate(run_dir, fed, cores)
        else:
            run_processes(run_dir, fed)
    finally:
        lock.release()
    return run_dir
