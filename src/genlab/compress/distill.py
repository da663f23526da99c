"""Knowledge distillation: a smaller student GPT trained on a teacher GPT's soft targets.

The student's loss (Hinton et al. 2015; DistilBERT) mixes the teacher's softened distribution
with the true next tokens:

    loss = alpha * T^2 * KL(softmax(z_teacher / T) || softmax(z_student / T))
           + (1 - alpha) * cross_entropy(z_student, y)

T^2 keeps the soft-target gradients on the scale of the hard-target ones as T grows. The KL is
averaged over token positions (the sum over the vocabulary at each position, then the mean).

Mechanism (one engine, a plain GPT run at the end):
- `Student` is a `GPT` that overrides only `loss`; the frozen teacher (eval mode, no grad, same
  device) is held in a `_Frozen` box, not as a submodule, so it is in none of the student's
  `state_dict()`, `parameters()`, `.train()` switches, optimiser groups or EMA copies. The
  engine's checkpoints therefore hold exactly a GPT's tensors.
- The student trains in a temporary folder with the one engine, `genlab.engine.run.train`,
  whose `build` hook makes the Student from the student's GPT config (so the run's config says
  "gpt" and no training-only model name is registered); the teacher run's train.* settings
  apply, with `steps` as the budget, and the teacher's tokenizer.json is put in the folder first
  so both share the vocabulary. A killed distillation starts again (the folder is temporary).
- The new run (newrun.write_run) has the student's GPT config (model name "gpt"), the student's
  final weights, EMA and optimiser state and TrainState, the teacher's data.json and
  tokenizer.json, the student's logs/train.jsonl and samples/final.txt, and compression.json
  naming the teacher run and the options. Every command loads it as any GPT run; `genlab train
  --resume` continues it with the plain cross-entropy.
- Validation (best checkpoint, early stopping) uses the student's cross-entropy alone, the
  number a GPT run reports, so the student's val loss compares directly with the teacher's.
- When the student is as wide as the teacher it starts from the teacher's embeddings, final
  norm and evenly spaced blocks (DistilBERT: one layer in two); otherwise from a fresh init.

Diffusion runs: progressive distillation of the sampler into a few-step DDIM student
(distill_diffusion.py); `distill_run` dispatches on the teacher's model family.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from genlab.compress.newrun import Compressed
from genlab.config import RunConfig, validate_run
from genlab.engine import checkpoint as ckpt
from genlab.engine.device import select_device
from genlab.errors import ConfigError
from genlab.models.autoregressive.gpt import GPT, GPTConfig
from genlab.options import check_number

log = logging.getLogger("genlab")


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                     temperature: float = 2.0, alpha: float = 0.5) -> dict[str, torch.Tensor]:
    """The distillation loss and its two terms.

    Args:
        student_logits, teacher_logits: (..., V) logits over the same vocabulary.
        targets: (...) the true next tokens.
        temperature: T, dividing both logits before the softmax.
        alpha: the weight of the soft-target term; 1 - alpha weighs the cross-entropy.
    Returns:
        {"loss": alpha * kd + (1 - alpha) * ce, "kd": T^2 * mean KL(teacher || student) per
        position, "ce": mean cross-entropy on `targets`}.
    """
    V = student_logits.shape[-1]
    s = student_logits.reshape(-1, V).float()  # (N, V)
    t = teacher_logits.reshape(-1, V).float()  # (N, V)
    T = float(temperature)
    log_ps = F.log_softmax(s / T, dim=-1)  # (N, V)
    log_pt = F.log_softmax(t / T, dim=-1)  # (N, V)
    # batchmean: sum over the vocabulary, mean over the N positions
    kd = F.kl_div(log_ps, log_pt, log_target=True, reduction="batchmean") * (T * T)
    ce = F.cross_entropy(s, targets.reshape(-1))
    return {"loss": alpha * kd + (1 - alpha) * ce, "kd": kd, "ce": ce}


class _Frozen:
    """Holds the teacher outside the student's module tree; deep copies (the engine's EMA)
    share it instead of copying it."""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def __deepcopy__(self, memo: dict) -> _Frozen:
        return self


class Student(GPT):
    """A GPT whose training loss is `soft_target_loss` against a frozen teacher GPT; its
    state_dict is a plain GPT's. In eval mode `loss` is the cross-entropy (with "kd" logged)."""

    def __init__(self, cfg: GPTConfig, teacher: GPT, temperature: float, alpha: float):
        super().__init__(cfg)
        self._teacher = _Frozen(teacher.eval().requires_grad_(False))
        self.temperature, self.alpha = temperature, alpha

    @property
    def teacher(self) -> GPT:
        return self._teacher.module

    def loss(self, batch: dict[str, torch.Tensor], opt: str = "model") -> dict[str, torch.Tensor]:
        logits = self(batch["x"])  # (B, T, V)
        with torch.no_grad():
            teacher_logits = self.teacher.eval()(batch["x"])  # (B, T, V)
        terms = soft_target_loss(logits, teacher_logits, batch["y"], self.temperature, self.alpha)
        if not self.training:  # validation: the quality measure a GPT run reports
            return {"loss": terms["ce"], "kd": terms["kd"]}
        return terms


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def init_from_teacher(student: GPT, teacher: GPT) -> list[int] | None:
    """Copy the teacher's embeddings, final norm and evenly spaced blocks into a student of the
    same width (DistilBERT's initialisation). Returns the teacher blocks used, or None (widths
    differ: the student keeps its fresh init)."""
    if student.cfg.n_embd != teacher.cfg.n_embd or student.cfg.bias != teacher.cfg.bias:
        return None
    Lt, Ls = teacher.cfg.n_layer, student.cfg.n_layer
    picked = [i * Lt // Ls for i in range(Ls)] if Ls <= Lt else None
    if picked is None:
        return None
    with torch.no_grad():
        student.wte.load_state_dict(teacher.wte.state_dict())
        if student.wpe is not None and teacher.wpe is not None:
            student.wpe.load_state_dict(teacher.wpe.state_dict())
        student.ln_f.load_state_dict(teacher.ln_f.state_dict())
        for s_block, i in zip(student.blocks, picked):
            s_block.load_state_dict(teacher.blocks[i].state_dict())
    return picked


def student_config(teacher_cfg: RunConfig, n_layer: int, n_embd: int, n_head: int, steps: int) -> RunConfig:
    """The teacher run's config with the student's size and `steps` as the training budget (a
    new LR schedule over those steps, no time budget, no trackers). A teacher's explicit head
    size (a shrunk teacher's) carries over only with its width and heads, its MLP width only with
    its width; otherwise the student takes the defaults for its own shape."""
    t = teacher_cfg.model
    model = dataclasses.replace(t, n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                                head_size=t.head_size if (n_embd, n_head) == (t.n_embd, t.n_head) else None,
                                mlp_hidden=t.mlp_hidden if n_embd == t.n_embd else None)
    train = dataclasses.replace(teacher_cfg.train, steps=steps, schedule_steps=steps, minutes=None, trackers=())
    return dataclasses.replace(teacher_cfg, model=model, train=train, preset=None)


def distill_run(source, n_layer: int | None = None, n_embd: int | None = None, n_head: int | None = None,
                steps: int | None = None, temperature: float | None = None, alpha: float | None = None,
                data_root: str | os.PathLike | None = None, sampling_steps: int | None = None,
                stages: int | None = None, substeps: int | None = None, lr: float | None = None,
                batch_size: int | None = None, guidance: float | None = None) -> Compressed:
    """Train a smaller student GPT on the teacher run's data and soft targets; for a diffusion
    teacher, a few-step student sampler (distill_diffusion.distill_diffusion_run, which takes
    steps, sampling_steps, stages, substeps, lr, batch_size, guidance and data_root).

    Args:
        source: the teacher run (genlab.engine.run.Run), a gpt (or diffusion) run.
        n_layer: the student's layers (default: half the teacher's, at least 1).
        n_embd: the student's width (default: the teacher's).
        n_head: the student's attention heads (default: the teacher's).
        steps: the student's training steps (default: the teacher's train.steps).
        temperature: T of the soft targets, > 0 (default 2).
        alpha: the weight of the soft-target loss in [0, 1] (1 - alpha: cross-entropy; default 0.5).
        data_root: where the teacher's data is (default: as the teacher run recorded).
    Returns:
        the student's tensors, GPT config, TrainState and record.
    """
    name = source.cfg.model_name
    gpt_only = {"--n-layer": n_layer, "--n-embd": n_embd, "--n-head": n_head, "--temperature": temperature,
                "--alpha": alpha}
    diffusion_only = {"--sampling-steps": sampling_steps, "--stages": stages, "--substeps": substeps, "--lr": lr,
                      "--batch-size": batch_size, "--guidance": guidance}
    if name == "diffusion":
        from genlab.compress.distill_diffusion import distill_diffusion_run

        given = [flag for flag, v in gpt_only.items() if v is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} are for gpt students; a diffusion student takes --steps, "
                              "--sampling-steps, --stages, --substeps, --lr, --batch-size, --guidance")
        return distill_diffusion_run(source, steps=steps, sampling_steps=sampling_steps, stages=stages,
                                     substeps=substeps, lr=lr, batch_size=batch_size, guidance=guidance,
                                     data_root=data_root)
    if name != "gpt":
        raise ConfigError(f"--method distill needs a gpt teacher run; {source.run_dir} is a {name} run "
                          "(diffusion runs distil into a few-step sampler)")
    given = [flag for flag, v in diffusion_only.items() if v is not None]
    if given:
        raise ConfigError(f"{', '.join(given)} are for diffusion students; drop them for a gpt teacher")
    temperature = 2.0 if temperature is None else temperature
    alpha = 0.5 if alpha is None else alpha
    if (source.checkpoint.state.get("compression") or {}).get("method") == "quantize":
        raise ConfigError(f"{source.run_dir} is quantised; distill from its float source run")
    tc: GPTConfig = source.cfg.model
    n_layer = max(1, tc.n_layer // 2) if n_layer is None else n_layer
    n_embd = tc.n_embd if n_embd is None else n_embd
    n_head = tc.n_head if n_head is None else n_head
    steps = source.cfg.train.steps if steps is None else steps
    for flag, v in (("--n-layer", n_layer), ("--n-embd", n_embd), ("--n-head", n_head), ("--steps", steps)):
        check_number(flag, v, lo=1, integer=True)
    check_number("--temperature", temperature, lo=0, lo_open=True)
    check_number("--alpha", alpha, lo=0, hi=1)
    if n_embd % n_head:
        raise ConfigError(f"--n-embd {n_embd} must be divisible by --n-head {n_head}")
    cfg = student_config(source.cfg, int(n_layer), int(n_embd), int(n_head), int(steps))
    validate_run(cfg)
    teacher = source.model
    student = Student(cfg.model, teacher, float(temperature), float(alpha))  # GPT's own checks (rope) first
    if n_params(student) >= n_params(teacher):
        raise ConfigError(f"the student ({n_params(student):,} parameters) must be smaller than the teacher "
                          f"({n_params(teacher):,}); lower --n-layer or --n-embd")

    options = {"n_layer": int(n_layer), "n_embd": int(n_embd), "n_head": int(n_head), "steps": int(steps),
               "temperature": float(temperature), "alpha": float(alpha)}
    with tempfile.TemporaryDirectory(prefix="genlab-distill-") as work:
        from genlab.engine.run import recorded_data_root

        work = Path(work) / "run"
        work.mkdir()
        # the teacher's tokenizer (the engine reuses a run folder's), so both share the vocabulary
        shutil.copy2(source.run_dir / "tokenizer.json", work / "tokenizer.json")
        student, picked = _train_student(cfg, teacher, work, options, data_root or recorded_data_root(source.run_dir))
        c = ckpt.latest_valid(Path(work) / "checkpoints")
        extra = {f: (Path(work) / f).read_text(encoding="utf-8")
                 for f in ("logs/train.jsonl", "samples/final.txt") if (Path(work) / f).is_file()}
    losses = [r["loss"] for r in _read_jsonl(extra.get("logs/train.jsonl", "")) if r.get("kind") == "train"]
    record = {"method": "distill", "options": options,
              "teacher": {"run": str(Path(source.run_dir).resolve()), "checkpoint": source.checkpoint.name,
                          "params": n_params(teacher), "n_layer": tc.n_layer, "n_embd": tc.n_embd,
                          "n_head": tc.n_head},
              "student": {"params": n_params(student), "init": "random" if picked is None
                          else f"teacher blocks {picked}, embeddings and final norm"},
              "train_loss": losses, "best_val_ce": c.state["state"]["best_val"]}
    return Compressed(dict(c.tensors), record, optimizers=c.state.get("optimizers"), config=cfg,
                      state=c.state["state"], extra_files=extra)


def _train_student(cfg: RunConfig, teacher: GPT, work: Path, options: dict, data_root) -> tuple[GPT, list | None]:
    """Train a Student with the one engine (`genlab.engine.run.train` with its `build` hook) in
    the folder `work`. Returns (the trained student, the teacher blocks it started from)."""
    from genlab.engine.run import train

    made: list[Student] = []

    def build(c: RunConfig) -> Student:  # called after seeding: the initial weights follow the seed
        student = Student(c.model, teacher, options["temperature"], options["alpha"])
        student.picked = init_from_teacher(student, teacher)
        made.append(student)
        return student

    log.info("distilling %s params into a student for %d steps (T=%g, alpha=%g)", f"{n_params(teacher):,}",
             cfg.train.steps, options["temperature"], options["alpha"])
    teacher.to(select_device(cfg.train.device))
    train(cfg, work, data_root=data_root, build=build)
    return made[0], made[0].picked


def _read_jsonl(text: str) -> list[dict]:
    import json

    return [json.loads(line) for line in text.splitlines() if line.strip()]
