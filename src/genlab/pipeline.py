"""`genlab pipeline CONFIG.yaml`: train -> evaluate -> (pass: keep and sample | fail: retrain),
the seeds' flowchart as one resumable command.

A pipeline file names candidate models, the quality target and what to do after a failed
round:

    target: label_accuracy >= 0.93          # METRIC OP VALUE, OP one of <= >= < >
    candidates:                             # tried in order ("next_candidate")
      - config: cvae-mnist                  # preset or YAML path (relative to this file)
        set: [train.batch_size=64]          # --set overrides
    data: {}                                # merged into every candidate's data section
    budget: {steps: 100}                    # a candidate's first round (steps and/or minutes)
    retrain:
      actions: [continue, lower_lr, next_candidate]   # after failed round 1, 2, 3...; the last repeats
      more: {steps: 1500}                   # added to the budget by continue / lower_lr
      lr_factor: 0.3                        # lower_lr multiplies train.lr by this
    evaluate: {n: 2000, seed: 0}
    max_rounds: 4
    max_minutes: 10                         # wall time of the whole pipeline

Loading the file resolves every candidate's config (preset or YAML, data, --set) and checks
that its model reports the target metric, so a typo fails before round 1, also in --dry-run.
Every round appends one line to OUT/pipeline.jsonl (what it trained, the metric, the decision).
`--resume` replays that file to find the next round, so finished rounds are never redone and
an interrupted round continues from its run's last checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import operator
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from genlab.config import build_section, close_matches, deep_update, load_tree, parse_set, resolve, yaml_load
from genlab.engine.checkpoint import atomic_write_json, atomic_write_text, list_steps
from genlab.errors import ConfigError
from genlab.evaluation import graphs, images, text
from genlab.registry import get_model

log = logging.getLogger("genlab")

ACTIONS = ("continue", "lower_lr", "next_candidate")
_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}
KNOWN_METRICS = images.IMAGE_METRICS + text.METRICS + graphs.LINK_METRICS + graphs.GEN_METRICS


# --------------------------------------------------------------------------- the file


@dataclass(frozen=True)
class Target:
    metric: str
    op: str
    value: float

    def passes(self, v: float) -> bool:
        return _OPS[self.op](v, self.value)

    def shortfall(self, v: float) -> float:
        """How far v is from passing (0 when it passes)."""
        return 0.0 if self.passes(v) else abs(v - self.value)

    def better(self, a: float, b: float) -> bool:
        return a < b if self.op in ("<=", "<") else a > b

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:g}"


def parse_target(text: str) -> Target:
    """'fid <= 20' -> Target('fid', '<=', 20.0), with errors that show the expected form."""
    m = re.fullmatch(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|<|>)\s*([-+]?[0-9.]+(?:[eE][-+]?[0-9]+)?)\s*", str(text))
    if not m:
        raise ConfigError(f"cannot parse target {text!r}; write METRIC OP VALUE with OP one of <=, >=, <, >, "
                          "e.g. 'fid <= 20' or 'label_accuracy >= 0.95'")
    name, op, value = m.group(1).lower(), m.group(2), float(m.group(3))
    if name not in KNOWN_METRICS and not name.startswith("test_"):
        raise ConfigError(f"unknown metric {name!r} in target{close_matches(name, KNOWN_METRICS)}; "
                          f"known: {', '.join(KNOWN_METRICS)} or a test_* loss of the training report")
    if not math.isfinite(value):
        raise ConfigError(f"the target value of {text!r} must be a finite number")
    return Target(name, op, value)


@dataclass
class Budget:
    steps: int | None = None
    minutes: float | None = None

    def validate(self) -> None:
        if self.steps is None and self.minutes is None:
            raise ConfigError("a budget needs steps and/or minutes, e.g. budget: {steps: 500}")
        if (self.steps is not None and self.steps < 1) or (self.minutes is not None and self.minutes <= 0):
            raise ConfigError("budget steps must be >= 1 and minutes > 0")


@dataclass
class Retrain:
    actions: list[str] = field(default_factory=lambda: ["continue"])
    more: Budget = field(default_factory=lambda: Budget(steps=1000))
    lr_factor: float = 0.3

    def validate(self) -> None:
        bad = [a for a in self.actions if a not in ACTIONS]
        if bad or not self.actions:
            raise ConfigError(f"unknown retrain action {bad[0] if bad else '(none)'!r}"
                              f"{close_matches(bad[0], ACTIONS) if bad else ''}; choose from {', '.join(ACTIONS)}")
        if not 0 < self.lr_factor < 1:
            raise ConfigError(f"retrain.lr_factor must be in (0, 1), got {self.lr_factor}")

    def action_after(self, failed_round: int) -> str:
        return self.actions[min(failed_round, len(self.actions)) - 1]


@dataclass
class Candidate:
    config: str
    set: list[str] = field(default_factory=list)
    name: str | None = None

    @property
    def label(self) -> str:
        return self.name or Path(self.config).stem


@dataclass
class PipelineConfig:
    target: Target
    candidates: list[Candidate]
    budget: Budget
    retrain: Retrain = field(default_factory=Retrain)
    data: dict = field(default_factory=dict)
    eval_n: int | None = None
    eval_seed: int = 0
    max_rounds: int = 4
    max_minutes: float | None = None


def _section(cls, value, where: str):
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping, got {value!r}")
    return build_section(cls, value, where)


def load_pipeline(path: str | Path) -> PipelineConfig:
    """Read and check a pipeline file; candidate YAML paths become relative to it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"pipeline file {path} not found")
    try:
        tree = yaml_load(path.read_text()) or {}
    except Exception as e:  # noqa: BLE001  (yaml raises several types)
        raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    allowed = ["target", "candidates", "budget", "retrain", "data", "evaluate", "max_rounds", "max_minutes"]
    for k in tree:
        if k not in allowed:
            raise ConfigError(f"unknown pipeline key {k!r}{close_matches(k, allowed)}")
    if "target" not in tree:
        raise ConfigError(f"{path} has no target, e.g. target: fid <= 20")
    cands = tree.get("candidates")
    if not isinstance(cands, list) or not cands:
        raise ConfigError(f"{path} needs a non-empty list of candidates, e.g. candidates: [{{config: dcgan-mnist}}]")
    candidates = []
    for i, c in enumerate(cands):
        c = {"config": c} if isinstance(c, str) else c
        cand = _section(Candidate, c, f"candidates[{i}]")
        if cand.config.endswith((".yaml", ".yml")) and not Path(cand.config).is_absolute():
            cand.config = str(path.parent / cand.config)
        candidates.append(cand)
    retrain_tree = dict(tree.get("retrain") or {})
    more = _section(Budget, retrain_tree.pop("more", {"steps": 1000}), "retrain.more")
    retrain = _section(Retrain, retrain_tree, "retrain")
    retrain.more = more
    budget = _section(Budget, tree.get("budget"), "budget")
    if (budget.steps is None) != (more.steps is None) or (budget.minutes is None) != (more.minutes is None):
        raise ConfigError("retrain.more must name the same budget keys as budget (steps and/or minutes), "
                          f"got budget {asdict(budget)} and more {asdict(more)}")
    ev = tree.get("evaluate") or {}
    unknown = set(ev) - {"n", "seed"}
    if unknown:
        raise ConfigError(f"unknown key evaluate.{sorted(unknown)[0]}; evaluate takes n and seed")
    cfg = PipelineConfig(
        target=parse_target(tree["target"]), candidates=candidates,
        budget=budget, retrain=retrain, data=dict(tree.get("data") or {}),
        eval_n=ev.get("n"), eval_seed=int(ev.get("seed", 0)), max_rounds=int(tree.get("max_rounds", 4)),
        max_minutes=tree.get("max_minutes"))
    if cfg.max_rounds < 1:
        raise ConfigError("max_rounds must be >= 1")
    for i, cand in enumerate(cfg.candidates):
        check_candidate(cfg, i)
    return cfg


def candidate_tree(cfg: PipelineConfig, cand: Candidate) -> dict:
    """A candidate's config tree before its --set overrides: preset or YAML + the pipeline's data."""
    tree = load_tree(cand.config)
    return deep_update(tree, {"data": cfg.data}) if cfg.data else tree


def reportable_metrics(model_cls: type, run_cfg) -> list[str]:
    """The metrics `genlab evaluate` gives a run of RunConfig `run_cfg`, known before training."""
    from genlab.data.molecules import is_molecule_config

    family = model_cls.family
    if is_molecule_config(run_cfg.data):  # SMILES/SELFIES runs, molecule graphs: the MOSES metrics
        from genlab.evaluation.molecules import METRICS

        return list(METRICS)
    if family == "text":
        return list(text.METRICS)
    if family == "graph":
        return list(graphs.LINK_METRICS if model_cls.task == "link" else graphs.GEN_METRICS)
    return images.planned_metrics(model_cls, run_cfg)


def check_candidate(cfg: PipelineConfig, i: int) -> None:
    """Resolve candidate i's config and check that its model reports the target metric, so a
    typo fails before round 1 instead of after earlier candidates have trained."""
    cand, metric = cfg.candidates[i], cfg.target.metric
    where = f"candidate {i + 1} ({cand.label})"
    try:
        run_cfg = resolve(candidate_tree(cfg, cand), cand.set)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    model_cls = get_model(run_cfg.model_name)[1]
    known = reportable_metrics(model_cls, run_cfg)
    if metric.startswith("test_"):  # the training report's test losses (text runs score their val split)
        if model_cls.family == "text" or not model_cls.validation_loss:
            raise ConfigError(f"{where}: {run_cfg.model_name} runs write no test_* losses; "
                              f"change the target to one of {', '.join(known)}")
    elif metric not in known:
        raise ConfigError(f"{where}: this {run_cfg.model_name} config (data.dataset={run_cfg.data.dataset}) does "
                          f"not report {metric}; change the target to one of {', '.join(known)} or the candidate")


# --------------------------------------------------------------------------- decisions


@dataclass
class Round:
    """One line of pipeline.jsonl."""

    round: int
    candidate: int
    candidate_name: str
    action: str  # start | continue | lower_lr | next_candidate
    run_dir: str
    steps: int | None  # run-total budgets this round trained to
    minutes: float | None
    lr: float | None  # the learning rate this round trained with (None: the config's)
    step: int | None = None  # where the run stood after the round
    train_minutes: float | None = None
    value: float | None = None
    metrics: dict = field(default_factory=dict)
    passed: bool = False
    decision: str = ""  # pass | continue | lower_lr | next_candidate | give_up
    seconds: float = 0.0


def decide(history: list[Round], cfg: PipelineConfig, elapsed_minutes: float) -> tuple[str, str]:
    """What follows the last round: ('pass' | 'give_up' | a retrain action, why). Pure."""
    last = history[-1]
    if last.passed:
        return "pass", "the target is met"
    if len(history) >= cfg.max_rounds:
        return "give_up", f"the limit of {cfg.max_rounds} rounds"
    if cfg.max_minutes is not None and elapsed_minutes >= cfg.max_minutes:
        return "give_up", f"the limit of {cfg.max_minutes:g} minutes"
    action = cfg.retrain.action_after(len(history))
    if action == "next_candidate" and last.candidate + 1 >= len(cfg.candidates):
        return "give_up", "no candidate left"
    return action, f"retrain action {len(history)}"


def next_round(history: list[Round], cfg: PipelineConfig, action: str, out: Path) -> Round:
    """The spec of the round that `action` starts (before training)."""
    if not history or action == "next_candidate":
        i = history[-1].candidate + 1 if history else 0
        cand = cfg.candidates[i]
        k = len(history) + 1
        return Round(k, i, cand.label, "start" if not history else action,
                     str(out / "runs" / f"{k:02d}-{cand.label}"), cfg.budget.steps, cfg.budget.minutes, None)
    last = history[-1]
    add = cfg.retrain.more  # same keys as the first budget (checked on load): totals grow by it
    steps = last.step + add.steps if add.steps is not None else None
    minutes = last.train_minutes + add.minutes if add.minutes is not None else None
    lr = last.lr
    if action == "lower_lr":
        lr = (lr if lr is not None else _config_lr(Path(last.run_dir))) * cfg.retrain.lr_factor
    return Round(len(history) + 1, last.candidate, last.candidate_name, action, last.run_dir, steps, minutes, lr)


def _config_lr(run_dir: Path) -> float:
    from genlab.config import load_config

    return load_config(run_dir / "config.yaml").train.lr


# --------------------------------------------------------------------------- running


@dataclass
class Outcome:
    passed: bool
    rounds: list[Round]
    summary: str
    best: Round | None


def read_history(out: Path) -> list[Round]:
    p = out / "pipeline.jsonl"
    if not p.is_file():
        return []
    rounds = []
    for line in p.read_text().splitlines():
        if line.strip():
            try:
                rounds.append(Round(**json.loads(line)))
            except (ValueError, TypeError):
                raise ConfigError(f"{p} is damaged (a line is not a round record); "
                                  "remove the line or start again with another --out") from None
    return rounds


def _append(out: Path, r: Round) -> None:
    p = out / "pipeline.jsonl"
    text = p.read_text() if p.is_file() else ""
    atomic_write_text(p, text + json.dumps(asdict(r)) + "\n")


def _train_round(cfg: PipelineConfig, r: Round, data_root: str | None) -> tuple[bool, int, float]:
    """Train (or continue) round r's run to its budget -> (finished, step, training minutes);
    finished is False when interrupted (Ctrl-C, SIGTERM)."""
    from genlab.engine.run import train

    run_dir = Path(r.run_dir)
    if list_steps(run_dir / "checkpoints"):  # a continued round, or this round after a kill
        if r.lr is not None:
            _set_lr(run_dir, r.lr)
        res = train(resume=run_dir, steps=r.steps, minutes=r.minutes, data_root=data_root)
    else:
        cand = cfg.candidates[r.candidate]
        tree = deep_update(candidate_tree(cfg, cand), parse_set(cand.set))
        res = train(tree, run_dir, steps=r.steps, minutes=r.minutes, data_root=data_root)
    return res.finished, res.state.step, res.state.elapsed / 60


def _set_lr(run_dir: Path, lr: float) -> None:
    """lower_lr: the run continues with train.lr = lr (recorded in pipeline.jsonl)."""
    from genlab.config import load_config, save_config
    from genlab.engine.lock import RunLock

    with RunLock(run_dir):  # the run's owner is whoever holds its folder, as for training
        c = load_config(run_dir / "config.yaml")
        if c.train.lr != lr:
            save_config(replace(c, train=replace(c.train, lr=lr)), run_dir / "config.yaml")


def _evaluate_round(cfg: PipelineConfig, r: Round) -> dict:
    from genlab.evaluation import evaluate

    m = cfg.target.metric
    if m.startswith("test_"):
        report = json.loads((Path(r.run_dir) / "report.json").read_text())
    else:
        report = evaluate(r.run_dir, n=cfg.eval_n, metrics=[m], seed=cfg.eval_seed)
    if m not in report["metrics"]:
        raise ConfigError(f"the run's report has no {m}; the target needs a metric `genlab evaluate` gives "
                          "for this model family")
    return {k: v["value"] for k, v in report["metrics"].items()}


class Pipeline:
    def __init__(self, cfg: PipelineConfig, out: str | Path, *, data_root: str | None = None,
                 train_round: Callable[[PipelineConfig, Round, str | None], tuple[bool, int, float]] = _train_round,
                 evaluate_round: Callable[[PipelineConfig, Round], dict] = _evaluate_round,
                 clock: Callable[[], float] = time.monotonic):
        self.cfg, self.out, self.data_root = cfg, Path(out), data_root
        self.train_round, self.evaluate_round, self.clock = train_round, evaluate_round, clock

    def plan(self) -> str:
        c = self.cfg
        lines = [f"target: {c.target}", "candidates (in order):"]
        lines += [f"  {i + 1}. {cand.label}: {cand.config}" + (f" --set {' '.join(cand.set)}" if cand.set else "")
                  for i, cand in enumerate(c.candidates)]
        if c.data:
            lines.append(f"data overrides for every candidate: {c.data}")
        lines.append(f"round 1 of a candidate: {_budget_str(c.budget.steps, c.budget.minutes)}; each round is "
                     f"evaluated with `genlab evaluate --n {c.eval_n or 'default'} --seed {c.eval_seed}`")
        acts = [c.retrain.action_after(k) for k in range(1, c.max_rounds)]
        lines.append("after a failed round k: " + ", ".join(f"{k + 1}: {a}" for k, a in enumerate(acts))
                     if acts else "no retraining (max_rounds 1)")
        lines.append(f"continue/lower_lr add {_budget_str(c.retrain.more.steps, c.retrain.more.minutes)}; "
                     f"lower_lr multiplies train.lr by {c.retrain.lr_factor:g}")
        lines.append(f"at most {c.max_rounds} rounds" + (f" and {c.max_minutes:g} minutes" if c.max_minutes else ""))
        lines.append(f"output: {self.out}/pipeline.jsonl, runs/, best/ on success")
        return "\n".join(lines)

    def run(self, resume: bool = False) -> Outcome | None:
        """Run rounds until the target passes or the policy gives up. None when interrupted."""
        history = read_history(self.out)
        if history and not resume:
            raise ConfigError(f"{self.out} already holds a pipeline; continue it with --resume or choose another --out")
        meta = self.out / "pipeline-state.json"
        start_wall = json.loads(meta.read_text())["minutes_before"] if resume and meta.is_file() else 0.0
        t0 = self.clock()
        elapsed = lambda: start_wall + (self.clock() - t0) / 60  # noqa: E731
        if history:
            log.info("resuming the pipeline after round %d (%s)", len(history), history[-1].decision)
        while True:
            action, why = decide(history, self.cfg, elapsed()) if history else ("start", "")
            if action in ("pass", "give_up"):
                return self._finish(history, action == "pass", why)
            r = next_round(history, self.cfg, action, self.out)
            log.info("round %d: %s %s to %s", r.round, r.action, r.candidate_name, _budget_str(r.steps, r.minutes))
            t = self.clock()
            finished, r.step, r.train_minutes = self.train_round(self.cfg, r, self.data_root)
            if not finished:
                return None
            r.metrics = self.evaluate_round(self.cfg, r)
            r.value = r.metrics[self.cfg.target.metric]
            r.passed = self.cfg.target.passes(r.value)
            r.seconds = round(self.clock() - t, 3)
            r.decision = decide(history + [r], self.cfg, elapsed())[0]
            history.append(r)
            _append(self.out, r)
            atomic_write_json(meta, {"minutes_before": elapsed()})
            log.info("round %d: %s = %.4g (%s %s) -> %s", r.round, self.cfg.target.metric, r.value,
                     "passes" if r.passed else "misses", self.cfg.target, r.decision)

    def _finish(self, history: list[Round], passed: bool, why: str) -> Outcome:
        t = self.cfg.target
        best = history[0]
        for r in history[1:]:
            if t.better(r.value, best.value):
                best = r
        if passed:
            chosen = history[-1]
            self._keep(chosen)
            text = (f"Passed: {t.metric} = {chosen.value:.4g} meets {t} in round {chosen.round} of "
                    f"{len(history)} ({chosen.candidate_name}, step {chosen.step:,}"
                    f"{f', lr {chosen.lr:g}' if chosen.lr else ''}). The run is copied to {self.out / 'best'}, with "
                    f"100 samples in {self.out / 'best' / 'samples' / 'pipeline-final.png'}. Rounds: "
                    + "; ".join(f"{r.round}: {r.action} {r.candidate_name} -> {r.value:.4g}" for r in history) + ".")
        else:
            text = (f"Gave up after {len(history)} round(s) ({why}): {t} was missed by "
                    f"{t.shortfall(best.value):.4g}; the closest was round {best.round} ({best.candidate_name}, "
                    f"{t.metric} = {best.value:.4g}, run {best.run_dir}). Rounds: "
                    + "; ".join(f"{r.round}: {r.action} {r.candidate_name} -> {r.value:.4g}" for r in history) + ".")
        atomic_write_text(self.out / "summary.txt", text + "\n")
        return Outcome(passed, history, text, best)

    def _keep(self, r: Round) -> None:
        """Copy the passing run to best/ (via a temporary folder) and write its final samples."""
        best, tmp = self.out / "best", self.out / ".best.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(r.run_dir, tmp)
        shutil.rmtree(best, ignore_errors=True)
        tmp.rename(best)
        try:
            from genlab.engine.run import load
            from genlab.images import write_images

            images, labels = load(best).sample(100, seed=self.cfg.eval_seed)
            write_images(best / "samples" / "pipeline-final.png", images, labels, nrow=10)
            write_images(best / "samples" / "pipeline-final.npz", images, labels)
        except Exception as e:  # noqa: BLE001  (a family without image samples keeps best/ as is)
            log.info("no final sample grid for this run: %s", e)


def _budget_str(steps: int | None, minutes: float | None) -> str:
    parts = ([f"{steps:,} steps"] if steps else []) + ([f"{minutes:g} min"] if minutes else [])
    return " / ".join(parts) or "its config's budget"
