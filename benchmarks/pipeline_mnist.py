"""The shipped pipeline example, end to end: a failing first round, then a passing one.

    .venv/bin/python benchmarks/pipeline_mnist.py

Runs `genlab pipeline examples/pipeline-mnist.yaml` in a new process, times it, and writes its
pipeline.jsonl and summary to benchmarks/results/pipeline-mnist.{md,json}.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from _common import HERE, fresh_run_dir, machine_lines, write_results

from genlab.bench import machine_info


def main() -> None:
    machine = machine_info()
    out = fresh_run_dir("pipeline-mnist")
    config = HERE.parent / "examples" / "pipeline-mnist.yaml"
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "genlab", "pipeline", str(config), "--out", str(out)],
                       capture_output=True, text=True)
    wall = time.time() - t0
    rounds = [json.loads(ln) for ln in (out / "pipeline.jsonl").read_text().splitlines() if ln.strip()]
    summary = (out / "summary.txt").read_text().strip()
    target = next(ln.split(":", 1)[1].strip() for ln in config.read_text().splitlines() if ln.startswith("target:"))
    data = {"machine": machine, "exit_code": r.returncode, "wall_seconds": wall, "target": target, "rounds": rounds,
            "summary": summary}
    md = ["# The pipeline example on MNIST\n",
          "Command: `.venv/bin/python benchmarks/pipeline_mnist.py`, which runs "
          "`genlab pipeline examples/pipeline-mnist.yaml` and times the whole command.\n",
          machine_lines(machine),
          f"Quality target: `{target}`. Exit code {r.returncode}; wall time **{wall / 60:.1f} minutes** "
          "(target: under 10).\n",
          f"| round | action | candidate | trained to step | lr | {target.split()[0]} | passed | decision | seconds |",
          "|---|---|---|---|---|---|---|---|---|"]
    for x in rounds:
        md.append(f"| {x['round']} | {x['action']} | {x['candidate_name']} | {x['step']:,} | "
                  f"{x['lr'] if x['lr'] is not None else 'config'} | {x['value']:.4f} | {x['passed']} | "
                  f"{x['decision']} | {x['seconds']:.0f} |")
    md += ["\nSummary printed by the command:\n", f"> {summary}\n", "pipeline.jsonl:\n", "```",
           *[json.dumps(x) for x in rounds], "```"]
    write_results("pipeline-mnist", data, "\n".join(md) + "\n")
    if r.returncode not in (0, 1):
        raise SystemExit(r.stderr)


if __name__ == "__main__":
    main()
