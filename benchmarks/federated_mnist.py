"""What federation costs: the conditional VAE (cvae-mnist) trained centrally and by 4 federated
clients (FedAvg; IID, Dirichlet label skew alpha 1.0 and 0.1; IID through SecAgg+; FedProx
at alpha 0.1), after the same number of sample passes (rounds x local steps x clients x batch
= central steps x batch), judged by FID (lenet-mnist), label accuracy of conditional samples
and TSTR accuracy (a LeNet trained on samples only, tested on the real test split, beside the
same recipe on as many real images); per federation the bytes sent per round (both ways,
measured on the wire by genlab.federated.traffic) and the wall time per round.

    # Flower's simulation runs the clients as Ray actors, one thread each, as many at a time as
    # the process has cores (taskset); the central run uses as many threads. On one core:
    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/federated_mnist.py
    .venv/bin/python benchmarks/federated_mnist.py --smoke     # end to end in a few minutes

Results: benchmarks/results/federated-mnist.json and .md (rows merged by job name).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from _common import RESULTS, RUNS, fresh_run_dir, machine_lines, pinned_command, write_results

import numpy as np
import yaml

import genlab
from genlab.bench import machine_info
from genlab.config import resolve

NAME = "federated-mnist"
PRESET = "cvae-mnist"
# job -> federation settings (None: central training)
JOBS = {
    "central": None,
    "fedavg-iid": {"strategy": "fedavg", "partition": "iid"},
    "fedavg-dirichlet-1.0": {"strategy": "fedavg", "partition": "dirichlet", "alpha": 1.0},
    "fedavg-dirichlet-0.1": {"strategy": "fedavg", "partition": "dirichlet", "alpha": 0.1},
    "fedavg-iid-secagg": {"strategy": "fedavg", "partition": "iid", "secure_aggregation": True},
    "fedprox-dirichlet-0.1": {"strategy": "fedprox", "partition": "dirichlet", "alpha": 0.1, "proximal_mu": 0.01},
}


def run_job(job: str, a: argparse.Namespace) -> dict:
    settings = JOBS[job]
    run_dir = fresh_run_dir(f"{NAME}/{job}")
    steps = a.rounds * a.local_steps * a.clients  # central steps at the same batch: the same sample passes
    t0 = time.time()
    if settings is None:
        # train.steps (not a --steps budget): the learning-rate schedule spans the run, as it spans
        # the federation's rounds x local steps for the clients
        res = genlab.train(PRESET, run_dir, overrides=["train.ema_decay=0", f"train.steps={steps}", *a.set], seed=0,
                           threads=a.threads)
        row = {"rounds": None, "steps": res.state.step, "train_wall_s": round(time.time() - t0, 1)}
    else:
        from genlab.federated import federate

        fed = {"run": PRESET, "set": list(a.set), "clients": a.clients, "rounds": a.rounds,
               "local_steps": a.local_steps, "min_clients": a.clients, "seed": 0, **settings}
        run_dir.mkdir(parents=True)
        path = run_dir.parent / f"{job}.yaml"
        path.write_text(yaml.safe_dump(fed, sort_keys=False))
        federate(path, run_dir)
        rounds = [json.loads(x) for x in (run_dir / "logs" / "train.jsonl").read_text().splitlines()]
        rounds = [r for r in rounds if r["kind"] == "round"]
        row = {"rounds": len(rounds), "steps": genlab.load(run_dir).step, "train_wall_s": round(time.time() - t0, 1),
               "first_round_s": round(rounds[0]["round_seconds"], 2),
               "round_s": round(float(np.mean([r["round_seconds"] for r in rounds[1:]] or [0])), 2),
               "mb_per_round": round(float(np.mean([r["bytes_to_clients"] + r["bytes_from_clients"]
                                                     for r in rounds])) / 1e6, 2),
               "clients_ok": min(r["clients_ok"] for r in rounds),
               "settings": settings}
        part = json.loads((run_dir / "partition.json").read_text())["clients"]
        row["shards"] = [c["examples"] for c in part]
        row["classes_per_shard"] = [sum(1 for v in c["per_class"] if v >= 0.05 * c["examples"]) for c in part]
    t1 = time.time()
    from genlab.evaluation import evaluate

    report = evaluate(run_dir, n=a.n, metrics=["fid", "label_accuracy", "tstr"], seed=0, html=True)
    m = report["metrics"]
    row.update(job=job, sample_passes=steps * genlab.load(run_dir).cfg.train.batch_size,
               fid=round(m["fid"]["value"], 2), label_accuracy=round(m["label_accuracy"]["value"], 4),
               tstr=round(m["tstr"]["value"], 4), tstr_real=round(m["tstr"]["real_baseline"], 4), n=a.n,
               eval_s=round(time.time() - t1, 1), run_dir=os.path.relpath(run_dir.resolve(), RUNS.parent.parent))
    return row


def fmt(v, spec="{:.3f}"):
    return "–" if v is None else spec.format(v)


def render(data: dict) -> str:
    m = data["machine"]
    rows = sorted(data["rows"].values(), key=lambda r: list(JOBS).index(r["job"]) if r["job"] in JOBS else 99)
    out = ["# Federated cvae-mnist: central vs federated at the same sample passes\n",
           f"Command: `{data['command']}`\n", machine_lines(m),
           f"- {data['clients']} clients, {data['rounds']} rounds x {data['local_steps']} local steps (batch "
           f"{data['batch_size']}); central: {data['central_steps']} steps at the same batch. Flower simulation "
           f"(Ray actors, one thread each, {data['cores']} at a time on {data['cores']} core(s)); the central run "
           f"uses {data['threads']} thread(s). "
           "EMA off everywhere (a client's EMA would restart every round); the learning-rate schedule (the "
           "preset's warm-up and cosine) spans each run: the central steps, the federation's rounds x local "
           "steps.\n",
           f"- FID (lenet-mnist), label accuracy and TSTR from n = {data['n']} conditional samples (seed 0); "
           "TSTR real: the same classifier recipe on as many real training images.\n",
           "| job | FID ↓ | label acc ↑ | TSTR ↑ | TSTR real | wall s (train) | s/round (after the 1st) | "
           "1st round s | MB/round (both ways) | shard sizes | classes ≥5% per shard |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['job']} | {r['fid']:.2f} | {r['label_accuracy']:.4f} | {r['tstr']:.4f} | "
                   f"{r['tstr_real']:.4f} | {r['train_wall_s']} | {fmt(r.get('round_s'), '{:.2f}')} | "
                   f"{fmt(r.get('first_round_s'), '{:.2f}')} | {fmt(r.get('mb_per_round'), '{:.2f}')} | "
                   f"{', '.join(map(str, r.get('shards', []))) or '–'} | "
                   f"{', '.join(map(str, r.get('classes_per_shard', []))) or '–'} |")
    out.append("\nThe first round includes starting the Ray actors, importing torch and loading MNIST in each. "
               "Bytes are serialised Flower messages (weights as float32 both ways; under SecAgg+ also the key "
               "exchange, the shares and the masked integer vectors).\n")
    return "\n".join(out)


def main() -> None:
    global NAME
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", nargs="+", default=list(JOBS), choices=list(JOBS))
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--local-steps", type=int, default=25)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="threads of the central run (default: the cores this process may use)")
    p.add_argument("--n", type=int, default=2000, help="samples for FID, label accuracy and TSTR")
    p.add_argument("--set", nargs="*", default=[], help="extra --set overrides of the run config (every job)")
    p.add_argument("--smoke", action="store_true", help="a few rounds and small n: checks the pipeline end to end")
    a = p.parse_args()
    folder = RESULTS
    if a.smoke:
        NAME, folder = "federated-mnist-smoke", RUNS
        a.rounds, a.local_steps, a.n, a.jobs = 2, 2, 200, ["central", "fedavg-dirichlet-0.1", "fedavg-iid-secagg"]
        a.set = [*a.set, "data.train_size=2000", "data.val_size=500"]
    command = pinned_command()
    os.environ.setdefault("FLWR_HOME", str(RUNS / "flwr-home"))
    machine = machine_info()
    path = folder / f"{NAME}.json"
    data = json.loads(path.read_text()) if path.exists() else {"rows": {}}
    for job in a.jobs:
        print(f"== {job}", file=sys.stderr, flush=True)
        row = run_job(job, a)
        data["rows"][job] = row
        data.update(command=command, machine=machine, cores=len(os.sched_getaffinity(0)), threads=a.threads,
                    clients=a.clients, rounds=a.rounds,
                    local_steps=a.local_steps, n=a.n, central_steps=a.rounds * a.local_steps * a.clients,
                    batch_size=resolve(PRESET, a.set).train.batch_size)
        write_results(NAME, data, render(data), folder=folder)


if __name__ == "__main__":
    main()
