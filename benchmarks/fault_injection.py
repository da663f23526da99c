"""Fault injection: kill -9 a training run over and over, resume it each time, and check that it
ends equal to an uninterrupted run and that no checkpoint is ever left unreadable.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fault_injection.py [--kills 24] [--seed 0]

A tiny MLP VAE on MNIST (checkpoint every 2 steps, keep_last 2, validation and a `best`
checkpoint every 25 steps) is trained once uninterrupted (the reference), then again in a
second folder by a chain of `genlab train` processes, each a fresh start (while the folder holds
no config yet) or `--resume`, each SIGKILLed. The kill moments (seeded):
  - timed:      a random delay after the process starts (start-up, plain steps or writes);
  - step-write: the moment a new `.step-*.tmp` file appears in checkpoints/ (a step
                checkpoint being written), after skipping a random number of them;
  - best-write: the moment `.best.json.*.tmp` appears (the `best` data file has just been
                replaced, its JSON marker not yet);
  - final:      the moment the last step's checkpoint is committed (before the test report).
After every kill, each committed checkpoint (every `*.json` in checkpoints/) is read back with
read_checkpoint, and `genlab info` must open the run. A kill counts as "during a checkpoint
write" when it left a temp file or an uncommitted data file behind. Finally the run is resumed
to the end and compared with the reference: all tensors of the last and best checkpoints
(model, EMA, optimiser), the checkpoint state, every loss record of logs/train.jsonl and the
test report. Writes benchmarks/results/fault-injection.md; exits 1 when anything differs or
cannot be read.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import RESULTS, fresh_run_dir

# The tiny VAE of tests/conftest.py (TINY_VAE), checkpointing every 2 steps.
OVERRIDES = ["model.hidden=64", "model.latent_dim=8", "train.batch_size=32", "train.amp=off",
             "train.log_every=5", "train.eval_every=25", "train.eval_batches=1", "train.sample_every=100000",
             "train.ckpt_every=2", "train.keep_last=2", "train.warmup_steps=3"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
POLL_S = 0.0005  # folder polling period while waiting for a checkpoint write


@dataclass
class Kill:
    """One SIGKILL and what the run folder looked like after it."""

    index: int
    mode: str  # timed | step-write | best-write | final (see the module docstring)
    resumed: bool  # the killed process was `--resume` (else a fresh start)
    delay: float = 0.0  # seconds from process start to the kill
    during_write: bool = False  # a checkpoint temp file or uncommitted data file was left behind
    left_behind: list[str] = field(default_factory=list)  # those files
    step_before: int | None = None  # newest committed step checkpoint before / after
    step_after: int | None = None
    verified: int = 0  # committed checkpoints read back and verified after the kill
    unreadable: list[str] = field(default_factory=list)
    info_error: str | None = None
    note: str = ""

    @property
    def ok(self) -> bool:
        return not self.unreadable and self.info_error is None


def training_args(steps: int, overrides: list[str] = OVERRIDES) -> list[str]:
    """The `genlab train` arguments shared by the reference and the killed run."""
    return ["vae-mnist", "--steps", str(steps), "--threads", "1", "--set", *overrides]


def _popen(args: list[str]) -> subprocess.Popen:
    """`genlab train ARGS` in a new process; its stderr goes to a temp file (`proc.errors()`)."""
    err = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([sys.executable, "-m", "genlab", "train", *args], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=err)
    proc.errors = lambda: (err.seek(0), err.read()[-3000:])[1]
    return proc


def _newest_step(ck: Path) -> int | None:
    names = sorted(p.stem for p in ck.glob("step-*.json")) if ck.is_dir() else []
    return int(names[-1][5:]) if names else None


def _write_leftovers(ck: Path) -> set[tuple[str, int]]:
    """Temp files and data files without a JSON marker in `ck`, with their mtimes: what a kill
    inside save_checkpoint leaves behind."""
    if not ck.is_dir():
        return set()
    from genlab.engine.checkpoint import named_tensor_files

    named = named_tensor_files(ck)
    out = set()
    for p in ck.iterdir():
        if p.name.endswith(".tmp") or (p.suffix == ".safetensors" and p.name not in named):
            try:
                out.add((p.name, p.stat().st_mtime_ns))
            except FileNotFoundError:
                pass
    return out


def _short(name: str) -> str:
    """`.step-00000180.0123abcd.safetensors.k2j3h4.tmp` -> `step-00000180.0123abcd.safetensors (temp)`."""
    if name.endswith(".tmp"):
        return ".".join(name.lstrip(".").split(".")[:-2]) + " (temp)"
    return name + " (no marker)"


def verify_run(run_dir: Path) -> tuple[int, list[str], str | None]:
    """Read back every committed checkpoint of a run and open it with `genlab info`.

    Returns:
        (checkpoints verified, "name: error" of each unreadable one, info error or None). A
        folder without config.yaml (killed before writing it) holds no run yet: info is skipped.
    """
    from genlab.cli import main as cli_main
    from genlab.engine.checkpoint import read_checkpoint
    from genlab.errors import CheckpointError

    ck = run_dir / "checkpoints"
    verified, bad = 0, []
    for js in sorted(ck.glob("*.json")) if ck.is_dir() else []:
        try:
            read_checkpoint(ck, js.stem)
            verified += 1
        except CheckpointError as e:
            bad.append(f"{js.stem}: {e}")
    if not (run_dir / "config.yaml").exists():
        return verified, bad, None
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            rc = cli_main(["info", str(run_dir)])  # the human summary
        if rc != 0:
            return verified, bad, f"genlab info exit {rc}: {err.getvalue().strip()}"
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli_main(["info", str(run_dir), "--json"])
        info = json.loads(out.getvalue())
        if rc != 0 or "config" not in info:
            return verified, bad, f"genlab info exit {rc}: {err.getvalue().strip()}"
    except Exception as e:  # noqa: BLE001 - any failure to open the run is the finding
        return verified, bad, f"genlab info failed: {type(e).__name__}: {e} {err.getvalue().strip()}"
    return verified, bad, None


def run_reference(run_dir: Path, args: list[str], data_root: str | None) -> float:
    """Train the uninterrupted reference; returns the start-up time (process start to the first
    committed checkpoint), which scales the random kill delays."""
    ck = run_dir / "checkpoints"
    t0 = time.perf_counter()
    proc = _popen([*args, "--out", str(run_dir), *(["--data-root", data_root] if data_root else [])])
    startup = None
    while proc.poll() is None:
        if startup is None and _newest_step(ck) is not None:
            startup = time.perf_counter() - t0
        time.sleep(0.02)
    if proc.returncode != 0:
        raise SystemExit(f"reference run failed (exit {proc.returncode}):\n{proc.errors()}")
    return startup if startup is not None else time.perf_counter() - t0


def plan_kills(n: int, rng: random.Random, best_kills: int = 2, write_share: float = 1 / 3) -> list[str]:
    """`n` kill modes: `best_kills` best-write, about `write_share` step-write, timed for the
    rest, in random order, and the last one at the final checkpoint."""
    n_write = round((n - 1 - best_kills) * write_share)
    modes = ["best-write"] * best_kills + ["step-write"] * n_write + ["timed"] * (n - 1 - best_kills - n_write)
    rng.shuffle(modes)
    return modes + ["final"]


def _wait_and_kill(proc: subprocess.Popen, ck: Path, mode: str, rng: random.Random, startup: float,
                   spread: float, steps: int) -> tuple[float, str]:
    """Wait for the moment `mode` asks for, SIGKILL `proc`; returns (delay, note)."""
    t0, note = time.perf_counter(), ""
    if mode == "timed":
        deadline = t0 + rng.uniform(0.5 * startup, startup + spread)
        while time.perf_counter() < deadline and proc.poll() is None:
            time.sleep(0.005)
    else:
        skip = rng.randint(0, 40) if mode == "step-write" else 0
        final = f"step-{steps:08d}.json"
        timeout = t0 + 3 * startup + 30
        seen: set[str] = set(os.listdir(ck)) if ck.is_dir() else set()
        hits = 0
        while proc.poll() is None:
            names = os.listdir(ck) if ck.is_dir() else []
            if mode == "final":
                if final in names:
                    break
            else:
                prefix = ".step-" if mode == "step-write" else ".best.json."
                new = [n for n in names if n.startswith(prefix) and n.endswith(".tmp") and n not in seen]
                seen.update(new)
                hits += len(new)
                if hits > skip:
                    break
            if time.perf_counter() > timeout:
                note = "trigger timed out"
                break
            time.sleep(POLL_S)
        if mode == "step-write" and not note:
            note = f"after {skip} earlier temp files"
    if proc.poll() is not None:
        return time.perf_counter() - t0, f"exited by itself (exit {proc.returncode})"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return time.perf_counter() - t0, note


def inject_faults(run_dir: Path, args: list[str], data_root: str | None, modes: list[str],
                  rng: random.Random, startup: float, spread: float, steps: int,
                  echo: bool = False) -> list[Kill]:
    """Start, kill and restart a run once per mode; a process is a fresh start while the folder
    has no config.yaml, else `--resume`. Stops early if the run finishes by itself."""
    ck = run_dir / "checkpoints"
    kills: list[Kill] = []
    left = _write_leftovers(ck)
    for i, mode in enumerate(modes, 1):
        resumed = (run_dir / "config.yaml").exists()
        k = Kill(i, mode, resumed, step_before=_newest_step(ck))
        proc = _popen(["--resume", str(run_dir)] if resumed else
                      [*args, "--out", str(run_dir), *(["--data-root", data_root] if data_root else [])])
        k.delay, k.note = _wait_and_kill(proc, ck, mode, rng, startup, spread, steps)
        now = _write_leftovers(ck)
        k.left_behind = sorted(_short(name) for name, _ in now - left)
        k.during_write, left = bool(k.left_behind), now
        k.step_after = _newest_step(ck)
        k.verified, k.unreadable, k.info_error = verify_run(run_dir)
        kills.append(k)
        if echo:
            print(f"kill {i:2d} {mode:10s} {'resume' if resumed else 'fresh ':6s} after {k.delay:5.2f} s: "
                  f"step {k.step_before} -> {k.step_after}, {'during a write' if k.during_write else 'plain':14s} "
                  f"{k.left_behind} "
                  f"{k.verified} checkpoints ok{'' if k.ok else ' PROBLEM ' + str(k.unreadable + [k.info_error])} "
                  f"{k.note}", file=sys.stderr, flush=True)
        if k.note.startswith("exited"):
            if proc.returncode != 0:
                k.info_error = (k.info_error or "") + f" process failed: {proc.errors()}"
            break
    return kills


def resume_to_end(run_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "genlab", "train", "--resume", str(run_dir)], env=ENV,
                          capture_output=True, text=True, timeout=1800)


def _max_diff(a: dict, b: dict) -> float:
    return max(((a[k].double() - b[k].double()).abs().max().item() if a[k].numel() else 0.0) for k in a)


def _log_values(run_dir: Path) -> list[tuple[str, int, dict]]:
    from genlab.engine.logs import read_log

    return [(r["kind"], r["step"], {k: v for k, v in r.items() if k not in ("kind", "step", "time", "elapsed_s")
                                    and not k.endswith("_per_s")}) for r in read_log(run_dir)]


def compare_runs(ref: Path, run: Path, atol: float = 1e-6) -> dict:
    """Compare a resumed run with the reference.

    Returns:
        {"max_abs_diff": over all tensors of the last and best checkpoints, "tensors": count,
         "log_records": compared, "problems": list of what differs (empty = equal)}.
    """
    from genlab.engine.checkpoint import latest_valid, read_checkpoint
    from genlab.errors import CheckpointError

    problems, diffs, n = [], [0.0], 0
    pairs = [(latest_valid(ref / "checkpoints"), latest_valid(run / "checkpoints"))]
    if (ref / "checkpoints" / "best.json").exists():
        try:
            pairs.append((read_checkpoint(ref / "checkpoints", "best"), read_checkpoint(run / "checkpoints", "best")))
        except CheckpointError as e:
            problems.append(f"best checkpoint: {e}")
    for a, b in pairs:
        if a is None or b is None:
            problems.append("no valid checkpoint to compare")
            continue
        if a.name != b.name:
            problems.append(f"newest checkpoint {b.name}, reference {a.name}")
        if a.tensors.keys() != b.tensors.keys():
            problems.append(f"{a.name}: tensor names differ")
            continue
        d = _max_diff(a.tensors, b.tensors)
        diffs.append(d)
        n += len(a.tensors)
        if d > atol:
            problems.append(f"{a.name}: tensors differ by up to {d:.3g}")
        sa, sb = ({k: v for k, v in c.state["state"].items() if k != "elapsed"} for c in (a, b))
        if sa != sb:
            problems.append(f"{a.name}: state {sb} vs reference {sa}")
    la, lb = _log_values(ref), _log_values(run)
    if [(r[0], r[1], sorted(r[2])) for r in la] != [(r[0], r[1], sorted(r[2])) for r in lb]:
        problems.append(f"train.jsonl: {len(lb)} records vs {len(la)} in the reference, or other steps or terms")
    else:
        ld = max((abs(x[2][k] - y[2][k]) for x, y in zip(la, lb) for k in x[2]), default=0.0)
        diffs.append(ld)
        if ld > atol:
            problems.append(f"train.jsonl: loss records differ by up to {ld:.3g}")
    ra, rb = (json.loads((d / "report.json").read_text()) if (d / "report.json").exists() else None
              for d in (ref, run))
    if rb is None:
        problems.append("report.json missing (the test report was never written)")
    elif {k: v["value"] for k, v in ra["metrics"].items()} != {k: v["value"] for k, v in rb["metrics"].items()}:
        problems.append("report.json metrics differ")
    for name in ("samples/final.png",):
        if (ref / name).exists() and not (run / name).exists():
            problems.append(f"{name} missing")
    return {"max_abs_diff": max(diffs), "tensors": n, "log_records": len(la), "problems": problems}


def markdown(a: argparse.Namespace, kills: list[Kill], cmp: dict, final_rc: int, verify_end: tuple,
             leftovers: list[tuple[str, int]], startup: float, wall: float, ok: bool, run: Path) -> str:
    from genlab.engine.device import cpu_model

    during = sum(k.during_write for k in kills)
    modes = {m: sum(k.mode == m for k in kills) for m in ("timed", "step-write", "best-write", "final")}
    unread = [f"kill {k.index}: {u}" for k in kills for u in k.unreadable]
    info_err = [f"kill {k.index}: {k.info_error}" for k in kills if k.info_error]
    md = ["# Fault injection: kill -9 during training, then resume\n",
          f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
          f"- CPU: **{cpu_model()}**, one thread per process (`OMP_NUM_THREADS=1`, `--threads 1`)",
          f"- command: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fault_injection.py --kills {a.kills} "
          f"--seed {a.seed} --steps {a.steps}`",
          f"- run: `genlab train {' '.join(training_args(a.steps))}`, reference uninterrupted; the killed run "
          f"restarted (fresh while it had no config.yaml, else `--resume`) after each kill, then resumed to the end",
          f"- start-up (process start to first checkpoint) {startup:.1f} s; timed kills land "
          f"uniformly in [{0.5 * startup:.1f}, {startup + a.spread:.1f}] s after the start\n",
          f"**Result: {'PASS' if ok else 'FAIL'}.**\n",
          "| figure | value |", "|---|---|",
          f"| kills | {len(kills)} (timed {modes['timed']}, at a step-checkpoint temp file {modes['step-write']}, "
          f"at the best marker temp file {modes['best-write']}, at the final checkpoint {modes['final']}) |",
          f"| kills during a checkpoint write (temp or uncommitted file left behind) | {during} |",
          f"| kills during plain steps or start-up | {len(kills) - during} (no new checkpoint since the "
          f"previous kill: {sum(not k.during_write and k.step_after == k.step_before for k in kills)}) |",
          f"| committed checkpoints read back and verified after kills | {sum(k.verified for k in kills)} |",
          f"| unreadable committed checkpoints | {len(unread)} |",
          f"| `genlab info` failures | {len(info_err)} |",
          f"| final `--resume` exit code | {final_rc} |",
          f"| checkpoints after the final resume verified / unreadable | {verify_end[0]} / {len(verify_end[1])} |",
          f"| files left in checkpoints/ by kills and never removed (uncommitted data, temp) | "
          f"{len(leftovers)} ({sum(n for _, n in leftovers) / 1e6:.1f} MB) |",
          f"| tensors compared (last + best checkpoint: model, EMA, optimiser) | {cmp['tensors']} |",
          f"| max abs difference vs uninterrupted (tensors and {cmp['log_records']} train.jsonl records) | "
          f"{cmp['max_abs_diff']:.3g} |",
          f"| equal to the uninterrupted run | {'yes' if not cmp['problems'] else 'no'} |",
          f"| wall time | {wall / 60:.1f} min |\n"]
    if unread or info_err or cmp["problems"]:
        md += ["Problems:\n", *[f"- {p}".replace(f"{run}/", "") for p in unread + info_err + cmp["problems"]], ""]
    md += ["| # | moment | process | delay s | newest step before -> after | during a write: left behind | "
           "verified | ok | note |",
           "|---|---|---|---|---|---|---|---|---|"]
    for k in kills:
        md.append(f"| {k.index} | {k.mode} | {'resume' if k.resumed else 'fresh'} | {k.delay:.2f} | "
                  f"{k.step_before} -> {k.step_after} | {', '.join(k.left_behind) or 'no'} | {k.verified} | "
                  f"{'yes' if k.ok else 'NO'} | {k.note} |")
    return "\n".join(md) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=24, help="SIGKILLs in all (default 24; at least 20 to pass)")
    ap.add_argument("--min-kills", type=int, default=20)
    ap.add_argument("--best-kills", type=int, default=2, help="kills at the best checkpoint's marker write")
    ap.add_argument("--steps", type=int, default=2400, help="training steps of both runs")
    ap.add_argument("--spread", type=float, default=2.0, help="timed kills: seconds past the start-up")
    ap.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    ap.add_argument("--data-root", default=None)
    a = ap.parse_args()
    t0 = time.time()
    rng = random.Random(a.seed)
    args = training_args(a.steps)
    ref, run = fresh_run_dir("fault-injection-reference"), fresh_run_dir("fault-injection-killed")
    startup = run_reference(ref, args, a.data_root)
    print(f"reference: {a.steps} steps in {time.time() - t0:.0f} s, start-up {startup:.1f} s", file=sys.stderr)
    kills = inject_faults(run, args, a.data_root, plan_kills(a.kills, rng, a.best_kills), rng, startup, a.spread,
                          a.steps, echo=True)
    r = resume_to_end(run)
    verify_end = verify_run(run)
    leftovers = sorted((name, (run / "checkpoints" / name).stat().st_size)
                       for name, _ in _write_leftovers(run / "checkpoints"))
    cmp = compare_runs(ref, run)
    wall = time.time() - t0
    ok = (len(kills) >= a.min_kills and all(k.ok for k in kills) and r.returncode == 0 and not verify_end[1]
          and verify_end[2] is None and not cmp["problems"])
    md = markdown(a, kills, cmp, r.returncode, verify_end, leftovers, startup, wall, ok, run)
    from genlab.engine.checkpoint import atomic_write_text

    atomic_write_text(RESULTS / "fault-injection.md", md)
    print(md, file=sys.stderr)
    if r.returncode != 0:
        print(r.stderr[-3000:], file=sys.stderr)
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
