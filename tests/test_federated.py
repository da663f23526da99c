"""Federated training (genlab.federated): partitioners, the client's local round against the
engine, and whole federations in Flower's simulation and as real processes. Federations use
a tiny conditional VAE on 900 MNIST images, 3 clients, 2 local steps per round and a constant
learning rate (so a round's result does not depend on how many rounds follow it)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from genlab.errors import ConfigError
from genlab.federated import partition as P
from genlab.federated.config import FederationConfig
from tests.conftest import ROOT, assert_same_tensors, weights_of

TINY = ["train.test_batches=2", "model.hidden=32", "model.latent_dim=4", "train.batch_size=16", "train.amp=off", "train.schedule=constant",
        "train.warmup_steps=0", "train.eval_batches=2", "train.keep_last=10", "data.train_size=900",
        "data.val_size=200"]


def fed_file(folder: Path, name: str = "fed", **settings) -> Path:
    tree = {"run": "cvae-mnist", "set": TINY, "clients": 3, "rounds": 2, "local_steps": 2, "min_clients": 2,
            "partition": "iid", "seed": 0, **settings}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def model_tensors(run_dir: Path, checkpoint: str | None = None) -> dict[str, torch.Tensor]:
    from genlab.engine.checkpoint import read_checkpoint

    t = read_checkpoint(run_dir / "checkpoints", checkpoint).tensors if checkpoint else weights_of(run_dir)
    return {k: v for k, v in t.items() if k.startswith("model.")}


def rounds_logged(run_dir: Path) -> list[dict]:
    lines = (run_dir / "logs" / "train.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "round"]


@pytest.fixture(autouse=True)
def _flower_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    monkeypatch.setenv("GENLAB_DATA", str(os.environ.get("GENLAB_DATA") or ROOT.parent / "shared" / "data"))


# --------------------------------------------------------------------------- partitions


def labels_like_mnist(n: int = 3000, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 10, n)


def assert_partition(shards: list[np.ndarray], n: int) -> None:
    every = np.concatenate(shards)
    assert len(every) == n and np.array_equal(np.sort(every), np.arange(n)), "an example was lost or duplicated"


def test_iid_partition_is_a_partition_of_near_equal_shards():
    shards = P.iid(1001, 4, seed=0)
    assert_partition(shards, 1001)
    assert sorted(len(s) for s in shards) == [250, 250, 250, 251]
    assert [s.tolist() for s in P.iid(1001, 4, seed=0)] == [s.tolist() for s in shards]  # a pure function


def test_dirichlet_partition_gives_the_requested_skew():
    y = labels_like_mnist()

    def dominant_share(alpha: float) -> float:  # mean share of each client's most common class
        shards = P.dirichlet(y, 5, alpha, seed=0)
        assert_partition(shards, len(y))
        return float(np.mean([np.bincount(y[s], minlength=10).max() / len(s) for s in shards]))

    skewed, mild, flat = dominant_share(0.1), dominant_share(1.0), dominant_share(1000.0)
    assert skewed > 0.5 > mild > flat  # alpha 0.1: one class dominates each client
    assert flat < 0.15  # alpha -> infinity: every client holds ~10% of each class


def test_classes_partition_and_speaker_partition():
    y = labels_like_mnist()
    shards = P.by_classes(y, 5, 2, seed=0)
    assert_partition(shards, len(y))
    assert [sorted(set(y[s].tolist())) for s in shards] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    speakers = ["ann", "bob", "cat", "dan", "eve"] * 20
    shards = P.by_speaker(speakers, 2, seed=0)
    assert_partition(shards, len(speakers))
    owned = [{speakers[i] for i in s} for s in shards]
    assert not owned[0] & owned[1] and len(owned[0] | owned[1]) == 5
    with pytest.raises(ConfigError, match="speaker names"):
        P.by_speaker(None, 2, seed=0)
    with pytest.raises(ConfigError, match="cannot cover"):
        P.by_classes(y, 2, 2, seed=0)


def test_federation_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="strategy must be one of"):
        FederationConfig.from_file(fed_file(tmp_path, strategy="fedsgd"))
    with pytest.raises(ConfigError, match="unknown key .*rounds"):
        FederationConfig.from_file(fed_file(tmp_path, roundz=3))
    with pytest.raises(ConfigError, match="proximal_mu is FedProx's"):
        FederationConfig.from_file(fed_file(tmp_path, proximal_mu=0.1))
    with pytest.raises(ConfigError, match="at least 3 clients per round"):
        FederationConfig.from_file(fed_file(tmp_path, clients=2, secure_aggregation=True))
    with pytest.raises(ConfigError, match="client_dp: set noise_multiplier or epsilon"):
        FederationConfig.from_file(fed_file(tmp_path, client_dp={"clip": 1.0}))
    with pytest.raises(ConfigError, match="not found"):
        FederationConfig.from_file(tmp_path / "missing.yaml")
    dp = {"clip": 1.0, "noise_multiplier": 1.0}
    with pytest.raises(ConfigError, match="client_dp with fedadam"):
        FederationConfig.from_file(fed_file(tmp_path, strategy="fedadam", client_dp=dp))
    with pytest.raises(ConfigError, match="set fraction: 1"):
        FederationConfig.from_file(fed_file(tmp_path, clients=4, fraction=0.5, client_dp=dp))


def test_text_runs_split_their_token_stream_and_graph_runs_are_refused(tmp_path, data_root):
    """A GPT federation: each client holds a contiguous stretch of the corpus and trains on it."""
    from genlab.federated import client as C
    from genlab.federated.launch import prepare
    from tests.conftest import shakespeare_corpus
    from tests.test_text import TINY_TEXT

    corpus = shakespeare_corpus(tmp_path)
    fed = FederationConfig.from_file(fed_file(tmp_path, run="gpt-shakespeare-cpu",
                                              set=TINY_TEXT + [f"data.path={corpus}"]))
    prepare(fed, tmp_path / "text", str(data_root), argv=None)
    assert (tmp_path / "text" / "tokenizer.json").is_file()
    clients = [C.LocalClient(tmp_path / "text", fed, k) for k in range(3)]
    pieces = [c.shard for c in clients]
    assert all(np.array_equal(p, np.arange(p[0], p[-1] + 1)) for p in pieces)  # contiguous
    assert_partition(pieces, sum(len(p) for p in pieces))
    start = clients[0].get_weights()
    new, weight, metrics = clients[1].fit(start, rnd=1, mu=0.0)
    assert weight == len(pieces[1]) and metrics["loss"] > 0
    assert any(not np.array_equal(a, b) for a, b in zip(new, start))
    with pytest.raises(ConfigError, match="partition iid"):
        C.shards_of(dataclasses.replace(fed, partition="dirichlet"), C.load_run_data(tmp_path / "text")[1])
    graph = FederationConfig.from_file(fed_file(tmp_path, run="graphgen-grid", set=[]))
    with pytest.raises(ConfigError, match="graphrnn is a graph model"):
        prepare(graph, tmp_path / "graph", str(data_root), argv=None)
    assert not (tmp_path / "graph").exists()


def test_integer_buffers_stay_local():
    from genlab.federated.client import federated_keys

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    assert federated_keys(net) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"]


def test_a_round_in_which_every_client_fails_stops_the_federation(tmp_path, data_root):
    from genlab.federated.launch import prepare
    from genlab.federated.server import Server, build_strategy

    fed = FederationConfig.from_file(fed_file(tmp_path))
    prepare(fed, tmp_path / "run", str(data_root), argv=None)
    rounds = build_strategy(Server(tmp_path / "run", fed), fed)
    rounds.sampled = 3
    boom = [RuntimeError("client 0: out of memory") for _ in range(3)]
    with pytest.raises(ConfigError, match="round 1: every client failed .*out of memory"):
        rounds.aggregate_fit(1, [], boom)
    assert rounds.aggregate_fit(1, [], boom[:1]) == (None, {})  # the others were late: the model stays


# --------------------------------------------------------------------------- the client's local round


def test_fedavg_of_clients_with_identical_data_equals_centralised_training(tmp_path, monkeypatch, data_root):
    """K clients holding the same data take the same step from the same weights: their FedAvg
    (Flower's aggregate) equals one step of the same config trained centrally by the engine."""
    import genlab
    from flwr.server.strategy.aggregate import aggregate

    from genlab.federated import client as C
    from genlab.federated.launch import prepare, run_config_of

    fed = FederationConfig.from_file(fed_file(tmp_path, rounds=1, local_steps=1))
    run = tmp_path / "fed"
    prepare(fed, run, str(data_root), argv=None)
    monkeypatch.setattr(C, "shards_of", lambda fed, data: [np.arange(len(data.train_x))] * fed.clients)
    C._CLIENTS.clear()
    clients = [C.LocalClient(run, fed, k) for k in range(fed.clients)]
    start = clients[0].get_weights()
    results = [c.fit(start, rnd=1, mu=0.0) for c in clients]
    averaged = aggregate([(w, n) for w, n, _ in results])
    central = genlab.train(run_config_of(fed), tmp_path / "central", data_root=str(data_root))
    assert central.state.step == 1
    c = model_tensors(tmp_path / "central")
    moved = 0.0
    for key, a in zip(clients[0].keys, averaged):
        assert np.allclose(a, c[f"model.{key}"].numpy(), atol=1e-6), key
        moved = max(moved, float(np.abs(a - start[clients[0].keys.index(key)]).max()))
    assert moved > 1e-4  # the step really changed the weights


def test_fedprox_penalty_pulls_towards_the_global_weights(tmp_path, data_root):
    from genlab.federated import client as C
    from genlab.federated.launch import prepare

    fed = FederationConfig.from_file(fed_file(tmp_path, strategy="fedprox", proximal_mu=0.5))
    run = tmp_path / "fed"
    prepare(fed, run, str(data_root), argv=None)
    client = C.LocalClient(run, fed, 0)
    penalty = client.proximal(0.5)
    params = list(client.trainer.model.parameters())
    assert float(penalty("model").detach()) == 0.0  # at the anchor
    with torch.no_grad():
        params[0].add_(0.1)
    value = penalty("model")
    assert float(value) == pytest.approx(0.5 * 0.5 * 0.01 * params[0].numel(), rel=1e-5)
    value.backward()
    assert torch.allclose(params[0].grad, torch.full_like(params[0], 0.5 * 0.1), atol=1e-6)  # mu (w - w0)


# --------------------------------------------------------------------------- whole federations


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_root):
    """A plain FedAvg federation of 3 rounds, the yardstick of the simulations below."""
    from genlab.federated import federate

    folder = tmp_path_factory.mktemp("fedref")
    os.environ.setdefault("FLWR_HOME", str(folder / "flwr-home"))
    run = federate(fed_file(folder, rounds=3), folder / "run", data_root=str(data_root))
    return folder, run


def test_simulation_writes_a_normal_run_directory(reference):
    from genlab.engine.run import load

    _, run = reference
    rounds = rounds_logged(run)
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert all(r["clients_ok"] == 3 and r["clients_failed"] == 0 for r in rounds)
    n_params = sum(v.numel() for v in model_tensors(run).values())
    # each client gets the weights and sends them back: at least 4 bytes per float32 each way
    assert all(r["bytes_to_clients"] >= 3 * 4 * n_params and r["bytes_from_clients"] >= 3 * 4 * n_params
               for r in rounds)
    part = json.loads((run / "partition.json").read_text())
    assert sum(c["examples"] for c in part["clients"]) == 900 - 0  # data.train_size, all shards together
    r = load(run)
    assert r.step == 6 and (run / "samples" / "final.png").is_file() and (run / "report.json").is_file()
    from genlab.evaluation.summary import summary_text

    assert "federated: round 3 of 3, 3 clients (iid), 2 local steps a round, fedavg" in summary_text(run)
    report = json.loads((run / "report.json").read_text())
    assert [x["round"] for x in report["federation"]["per_round"]] == [1, 2, 3]
    assert "Federated: 3 clients (iid), 3 rounds x 2 local steps, fedavg" in (run / "report.html").read_text()
    x, _ = r.sample(4, seed=0, label=3)
    assert x.shape[0] == 4


def test_fedprox_with_mu_zero_equals_fedavg_and_secagg_sum_equals_plain(reference, tmp_path, data_root):
    """FedProx(mu=0) is FedAvg; SecAgg+ (Flower's, through the real protocol) aggregates the
    same weighted mean up to its quantisation (2 x 8 / 2^22 per weight and client)."""
    from genlab.federated import federate

    _, ref = reference
    first = model_tensors(ref, "step-00000002")
    prox = federate(fed_file(tmp_path, "prox", rounds=1, strategy="fedprox"), tmp_path / "prox",
                    data_root=str(data_root))
    assert_same_tensors(model_tensors(prox), first, atol=1e-6)
    sec = federate(fed_file(tmp_path, "sec", rounds=1, secure_aggregation=True), tmp_path / "sec",
                   data_root=str(data_root))
    diffs = [float((model_tensors(sec)[k] - first[k]).abs().max()) for k in first]
    assert max(diffs) < 3e-5 and max(diffs) > 0  # equal up to quantisation, and really quantised
    assert rounds_logged(sec)[0]["bytes_from_clients"] > rounds_logged(ref)[0]["bytes_from_clients"]


def test_a_killed_federation_resumes_at_its_last_round(reference, tmp_path, data_root):
    folder, ref = reference
    fed = fed_file(folder, rounds=3)  # the reference's own file
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "genlab", "federate", str(fed), "--out", str(out),
                             "--data-root", str(data_root)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while not list((out / "checkpoints").glob("step-00000004.json")) and time.time() < deadline:
        assert proc.poll() is None, "the federation ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the server and its simulated clients, mid-round 3
    proc.wait()
    from genlab.engine.checkpoint import latest_valid

    assert latest_valid(out / "checkpoints").state["federation"]["round"] == 2
    r = subprocess.run([sys.executable, "-m", "genlab", "federate", str(fed), "--out", str(out), "--data-root",
                        str(data_root)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming the federation from round 2 of 3" in r.stderr
    assert [x["round"] for x in rounds_logged(out)] == [1, 2, 3]
    assert_same_tensors(model_tensors(out), model_tensors(ref), atol=1e-5)
    changed = fed_file(tmp_path, "changed", rounds=4)
    r = subprocess.run([sys.executable, "-m", "genlab", "federate", str(changed), "--out", str(out)], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "settings differ" in r.stderr


def test_real_processes_over_loopback_equal_the_simulation(reference, tmp_path, data_root):
    """`--mode processes`: a SuperLink, 3 SuperNodes and `flwr run`, each its own process, give
    the simulation's weights (same code, same seeds)."""
    from genlab.federated import federate

    _, ref = reference
    run = federate(fed_file(tmp_path, rounds=1), tmp_path / "procs", mode="processes", data_root=str(data_root))
    assert (run / "flower-app" / "pyproject.toml").is_file()
    assert [r["round"] for r in rounds_logged(run)] == [1]
    assert_same_tensors(model_tensors(run), model_tensors(ref, "step-00000002"), atol=1e-5)
