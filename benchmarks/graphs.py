"""Graph benchmarks: link prediction with GAE/VGAE on Cora and CiteSeer over several seeds, and
the GraphRNN generators' MMD against an Erdos-Renyi baseline of matched density.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/graphs.py --parts link --seeds 10
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/graphs.py --parts gen

Link part: presets vgae-cora and gae-cora (CiteSeer via data.dataset=citeseer), seeds 0..N-1;
each seed draws its own 85/5/10% edge split and initial weights, as the VGAE paper averages
over random splits. Test AUC/AP from genlab.evaluation.graphs; mean +- sample std (ddof 1).
Gen part: graphgen-community and graphgen-grid trained to their preset budgets, then
`genlab evaluate RUN --n 256` (MMD of degree, clustering and spectrum against the test graphs,
the matched-density Erdos-Renyi baseline, sampling graphs/s). Writes
benchmarks/results/graphs.{md,json} (parts merged with earlier runs) and
benchmarks/results/graphgen-<family>.png.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from _common import RESULTS, fresh_run_dir, machine_lines, write_results

import genlab
from genlab.bench import machine_info
from genlab.evaluation import evaluate
from genlab.evaluation.graphs import link_metrics

PAPER = {("vgae", "cora"): (0.914, 0.926), ("gae", "cora"): (0.910, 0.920),
         ("vgae", "citeseer"): (0.908, 0.920), ("gae", "citeseer"): (0.895, 0.899)}


def load() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def bench_link(model: str, dataset: str, seeds: int, extra: list[str]) -> dict:
    rows = []
    load_before = load()
    for s in range(seeds):
        run_dir = fresh_run_dir(f"{model}-{dataset}-seed{s}")
        res = genlab.train(f"{model}-cora", run_dir, overrides=[f"data.dataset={dataset}", *extra], seed=s)
        run = genlab.load(run_dir)
        auc, ap, n = link_metrics(run.model, run.data(), "test")
        rows.append({"seed": s, "auc": auc, "ap": ap, "train_seconds": res.state.elapsed, "steps": res.state.step,
                     "test_pairs": n})
        print(f"{model} {dataset} seed {s}: auc {auc:.4f} ap {ap:.4f} {res.state.elapsed:.1f}s", flush=True)

    def ms(k):
        v = [r[k] for r in rows]
        return statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0

    return {"model": model, "dataset": dataset, "seeds": seeds, "overrides": extra, "runs": rows,
            "auc_mean": ms("auc")[0], "auc_std": ms("auc")[1], "ap_mean": ms("ap")[0], "ap_std": ms("ap")[1],
            "train_seconds_mean": ms("train_seconds")[0], "train_seconds_std": ms("train_seconds")[1],
            "paper_auc_ap": PAPER.get((model, dataset)), "load_before": load_before, "load_after": load()}


def bench_gen(family: str, n: int, seed: int) -> dict:
    preset = f"graphgen-{family}"
    run_dir = fresh_run_dir(preset)
    load_before = load()
    res = genlab.train(preset, run_dir, seed=seed)
    report = evaluate(run_dir, n=n, seed=seed)
    m = report["metrics"]
    png = f"graphgen-{family}.png"
    (RESULTS / png).write_bytes((run_dir / "samples" / "final.png").read_bytes())
    edges = genlab.load(run_dir).cfg.model.edges
    row = {"preset": preset, "model": {"rnn": "GraphRNN", "mlp": "GraphRNN-S"}[edges], "steps": res.state.step,
           "train_seconds": res.state.elapsed, "n": n, "seed": seed,
           "graphs_per_s": m["graphs_per_s"]["value"], "drawing": png, "load_before": load_before,
           "load_after": load()}
    for s in ("degree", "clustering", "spectral"):
        e = m[f"mmd_{s}"]
        row[f"mmd_{s}"], row[f"er_{s}"], row[f"kernel_{s}"] = e["value"], e["erdos_renyi"], e["extractor"]
        row["reference"] = e["reference"]
    row["beats_er_everywhere"] = all(row[f"mmd_{s}"] < row[f"er_{s}"] for s in ("degree", "clustering", "spectral"))
    return row


def markdown(data: dict) -> str:
    md = ["# Graph models\n",
          "Commands: `OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/graphs.py --parts link --seeds 10` and "
          "`... --parts gen` (OMP_WAIT_POLICY=PASSIVE: no thread spin-waiting, as other jobs shared the 2 cores). "
          "Load averages (1/5/15 min) are recorded before and after each row: other agents' jobs ran at the same "
          "time, so the times are upper bounds of what the machine does alone.\n"]
    if data.get("link"):
        m = data["link"]["machine"]
        md += ["## Link prediction (test split, 85/5/10% edges, one split and init per seed)\n",
               "Machine of this part:\n", machine_lines(m),
               "| model | dataset | seeds | test AUC | test AP | paper AUC / AP | train s / run | load before -> after |",
               "|---|---|---|---|---|---|---|---|"]
        for r in data["link"]["rows"]:
            p = r["paper_auc_ap"]
            md.append(f"| {r['model']}{' ' + ' '.join(r['overrides']) if r['overrides'] else ''} | {r['dataset']} | "
                      f"{r['seeds']} | {r['auc_mean']:.4f} +- {r['auc_std']:.4f} | {r['ap_mean']:.4f} +- "
                      f"{r['ap_std']:.4f} | {p[0]:.3f} / {p[1]:.3f} | {r['train_seconds_mean']:.1f} +- "
                      f"{r['train_seconds_std']:.1f} | {r['load_before']} -> {r['load_after']} |")
        md.append("\n(std: sample standard deviation over seeds. Paper: Kipf & Welling 2016, Table 1.)\n")
    if data.get("gen"):
        m = data["gen"]["machine"]
        md += ["## Graph generation: MMD^2 to the test graphs, lower is better\n",
               "Machine of this part:\n", machine_lines(m),
               "| preset | model | steps | train s | n | degree (ER) | clustering (ER) | spectral (ER) | beats ER on all | "
               "sampling graphs/s | load before -> after | drawing |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in data["gen"]["rows"]:
            md.append(f"| {r['preset']} | {r.get('model', 'GraphRNN-S')} | {r['steps']} | {r['train_seconds']:.0f} | {r['n']} | "
                      f"{r['mmd_degree']:.4f} ({r['er_degree']:.4f}) | {r['mmd_clustering']:.4f} "
                      f"({r['er_clustering']:.4f}) | {r['mmd_spectral']:.4f} ({r['er_spectral']:.4f}) | "
                      f"{'yes' if r['beats_er_everywhere'] else 'no'} | {r['graphs_per_s']:.0f} | "
                      f"{r['load_before']} -> {r['load_after']} | ![]({r['drawing']}) |")
        r0 = data["gen"]["rows"][0]
        md.append(f"\nKernels: degree {r0['kernel_degree']}, clustering {r0['kernel_clustering']}, spectral "
                  f"{r0['kernel_spectral']}; reference: the {r0['reference']}. ER: G(n, p) with n drawn from the "
                  "training graphs' sizes and p their edge density, as many graphs as generated.\n")
    return "\n".join(md) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", nargs="+", default=["link", "gen"], choices=["link", "gen"])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--models", nargs="+", default=["vgae", "gae"])
    ap.add_argument("--datasets", nargs="+", default=["cora", "citeseer"])
    ap.add_argument("--families", nargs="+", default=["community", "grid"])
    ap.add_argument("--set", dest="extra", nargs="*", default=[], help="extra overrides for the link runs")
    ap.add_argument("--n", type=int, default=256)
    a = ap.parse_args()
    path = RESULTS / "graphs.json"
    for part in a.parts:
        machine = machine_info()
        t0 = time.time()
        if part == "link":
            rows = [bench_link(m, d, a.seeds, a.extra) for d in a.datasets for m in a.models]
        else:
            rows = [bench_gen(f, a.n, 0) for f in a.families]
        data = json.loads(path.read_text()) if path.is_file() else {}  # re-read: another part may have finished
        old = data.get(part, {}).get("rows", [])
        key = (lambda r: (r["model"], r["dataset"], tuple(r["overrides"]))) if part == "link" else \
            (lambda r: r["preset"])
        merged = {key(r): r for r in old}
        merged.update({key(r): r for r in rows})
        data[part] = {"machine": machine, "env_OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
                      "wall_seconds": time.time() - t0, "rows": list(merged.values())}
        write_results("graphs", data, markdown(data))


if __name__ == "__main__":
    main()
