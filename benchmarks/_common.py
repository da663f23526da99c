"""Shared bits of the benchmark scripts: result files and run folders."""

from __future__ import annotations

import fcntl
import os
import shlex
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RUNS = HERE / "runs"  # ignored by git; the figures worth keeping go to results/

sys.path.insert(0, str(HERE.parent / "src"))


def pinned_command() -> str:
    """This process's command line as a user re-types it from the project root, with the threads
    and cores it ran on: `OMP_NUM_THREADS=N taskset -c CPUS .venv/bin/python benchmarks/SCRIPT ARGS`
    (each prefix only when it was in force: OMP_NUM_THREADS set, the process pinned to fewer cores
    than the machine has)."""
    threads = os.environ.get("OMP_NUM_THREADS")
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    prefix = (f"OMP_NUM_THREADS={threads} " if threads else "") + (
        f"taskset -c {','.join(map(str, cores))} " if cores and len(cores) < (os.cpu_count() or 0) else "")
    return prefix + ".venv/bin/python " + shlex.join([f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def fresh_run_dir(name: str) -> Path:
    d = RUNS / name
    if d.exists():
        shutil.rmtree(d)
    return d


@contextmanager
def results_lock(name: str):
    """Hold results file `name` against the benchmark's processes on other cores while one reads,
    merges and writes it (an exclusive flock on runs/.NAME.lock)."""
    RUNS.mkdir(parents=True, exist_ok=True)
    with open(RUNS / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def write_results(name: str, data: dict, markdown: str, folder: Path = RESULTS) -> None:
    """name.json and name.md in `folder` (smoke runs write theirs under runs/, not results/)."""
    from genlab.engine.checkpoint import atomic_write_json, atomic_write_text

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / f"{name}.json", data)
    atomic_write_text(folder / f"{name}.md", markdown)
    print(f"wrote {folder / name}.md and .json", file=sys.stderr)


def evaluate_marks(key: str, run_dir: Path, train: dict, n: int, seed: int, extras: tuple[str, ...] = (),
                   marks: list[float] | None = None, **kw):
    """`genlab evaluate` of the checkpoint kept at each minute mark of `train` (train_with_marks'
    record, as the train part stores it; only those in `marks` when given): yields (row, metrics),
    the row holding the mark, step, n, evaluation seconds, every metric's value and each of
    `extras` recorded beside a metric."""
    from genlab.evaluation import evaluate

    for mark, ck, step in zip(train["marks"], train["checkpoints"], train["steps"]):
        if marks is not None and mark not in marks:
            continue
        report = evaluate(run_dir, n=n, seed=seed, checkpoint=ck, out=run_dir / report_name(key, ck), **kw)
        m = report["metrics"]
        row = {"preset": key, "minutes": mark, "checkpoint": ck, "step": step, "n": n,
               "eval_seconds": report["seconds"]}
        for k, v in m.items():
            if k.startswith(("test_", "val_")):
                continue
            row[k] = v["value"]
            for extra in extras:
                if extra in v:
                    row[f"{k}_{extra}"] = v[extra]
        yield row, m


def report_name(key: str, ck: str) -> str:
    """The report file of row `key`'s evaluation of checkpoint `ck`: report-CK.json, with the row's
    sampling setting in the name (report-CK-temperature-0.9.json), so evaluations of one checkpoint
    at several settings, possibly at the same time on two cores, keep their own reports."""
    setting = key[len(base_key(key)):].strip(" ()").lower()
    slug = "".join(c if c.isalnum() or c == "." else "-" for c in setting)
    slug = "-".join(filter(None, slug.split("-")))
    return f"report-{ck}-{slug}.json" if slug else f"report-{ck}.json"


def setting_key(key: str, setting: str | None) -> str:
    """The row key of `key`'s run evaluated at another sampling setting: `KEY (setting)`."""
    return f"{key} ({setting})" if setting else key


def base_key(key: str) -> str:
    """The key of the run behind a row: `KEY` of `KEY (setting)`."""
    return key.split(" (")[0]


def train_of(d: dict, key: str) -> dict | None:
    """The train part behind a row of results `d`: its own, or (a row at another setting) its run's."""
    e = d.get("presets", {})
    return (e.get(key, {}).get("train") or e.get(base_key(key), {}).get("train") or {}).get("value")


def next_run_id(old: dict) -> str:
    """The id a new run gets in results `old`: one past every run it lists and its `last_run`
    (run ids are never reused, even when the rows citing a run were replaced)."""
    return str(max([old.get("last_run", 0), *map(int, old.get("runs", {}))]) + 1)


def merge_parts(old: dict, new: dict[str, dict], command: str, machine: dict, *, top: dict | None = None) -> dict:
    """old results + one process's parts ({row key: {part: value}}) and top-level entries (`top`,
    e.g. {"reference": row}), all cited by a new run id. A key given a new "train" part is a new
    run: the rows of the run it replaces go (its rows at other settings, `setting_key`, too); runs
    no row cites any more go."""
    out = dict(old)
    runs = out.setdefault("runs", {})
    rid = next_run_id(old)
    runs[rid] = {"command": command, "machine": machine}
    for key, parts in new.items():
        presets = out.setdefault("presets", {})
        if "train" in parts:
            presets = out["presets"] = {k: v for k, v in presets.items() if base_key(k) != key}
            presets[key] = {}
        entry = presets.setdefault(key, {})
        for part, value in parts.items():
            entry[part] = {"run": rid, "value": value}
    for name, value in (top or {}).items():
        out[name] = {"run": rid, "value": value}
    cited = {p["run"] for e in out.get("presets", {}).values() for p in e.values()}
    cited |= {v["run"] for v in out.values() if isinstance(v, dict) and set(v) == {"run", "value"}}
    out["runs"] = {k: v for k, v in runs.items() if k in cited}
    return out


def previous_part(path: Path, key: str, part: str) -> dict:
    """A part's value (e.g. "train") recorded for `key` in a results file by an earlier process."""
    import json

    if not path.exists() or key not in json.loads(path.read_text()).get("presets", {}):
        raise SystemExit(f"no {part} results for {key} in {path}; run the {part} part first")
    return json.loads(path.read_text())["presets"][key][part]["value"]


def machine_lines(m: dict) -> str:
    bf16 = "yes (a run's train.amp decides its precision: auto probes the model's own step)" \
        if m["bf16_autocast"] else "no"
    return (f"- CPU: **{m['cpu_model']}**, {m['threads']} threads; torch {m['torch']}, genlab {m['genlab']} "
            f"(commit {m['git_commit']})\n"
            f"- matmul peak measured in this run: fp32 {m['matmul_fp32_gflops']} GFLOP/s, "
            f"bf16 {m['matmul_bf16_gflops']} GFLOP/s; bf16 matmul fast here: {bf16}\n"
            f"- date: {m['date']}\n")


def mean_train_throughput(run_dir: Path) -> float:
    """Mean training images/s (or tokens/s) of a run, as `genlab compare` reports it."""
    from genlab.engine.logs import mean_throughput

    return mean_throughput(run_dir)[0]


def train_with_marks(preset: str, run_dir: Path, marks: list[float], seed: int, **train_kw):
    """Train `preset` for max(marks) CPU minutes, keeping a checkpoint `min-M` when the training
    time passes each smaller mark. Returns (TrainResult, checkpoint name per mark, step per mark)."""
    import genlab

    marks = sorted(marks)
    kept: dict[float, int] = {}

    def keep_marks(trainer) -> None:
        for m in marks[:-1]:
            if m not in kept and trainer.state.elapsed >= m * 60:
                trainer.save(f"min-{m:g}")
                kept[m] = trainer.state.step

    res = genlab.train(preset, run_dir, minutes=marks[-1], seed=seed, callbacks=[keep_marks], **train_kw)
    return (res, [f"min-{m:g}" if m in kept else "last" for m in marks],
            [kept.get(m, res.state.step) for m in marks])
