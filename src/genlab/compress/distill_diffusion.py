"""Progressive distillation of a diffusion sampler (Salimans & Ho 2022): a student that samples
in a few deterministic DDIM steps, trained from an image diffusion run.

A stage divides the steps by r (`substeps`; the paper's r = 2 halves them). The teacher samples
by DDIM (eta = 0) in rK steps on the grid t_0 > t_1 > ... > t_{rK-1} of
`GaussianDiffusion.sampling_timesteps` ("trailing" spacing: the K-step grid is every r-th point of
the rK-step one), t_{rK} = -1 being clean data. The student's single DDIM step t_{ri} -> t_{ri+r}
must land where the teacher's r steps t_{ri} -> t_{ri+1} -> ... -> t_{ri+r} land. For z_t (a
training image noised to t = t_{ri}) the teacher's steps give z_s; the x0 whose DDIM step from
z_t reaches z_s exactly is

    x0~ = (z_s - (sigma_s / sigma_t) z_t) / (alpha_s - (sigma_s / sigma_t) alpha_t)

(alpha = sqrt(ab), sigma = sqrt(1 - ab); s clean: x0~ = z_s), and the student minimises

    loss = (1 + snr_t) |x0_student(z_t) - x0~|^2      (mean over elements and the batch)

the paper's "SNR+1" weighting: exactly the MSE on v of a v-predicting network, finite at the
pure-noise end where an eps-predicting one cannot give x0 (eps teachers are refused).
A stage's student starts as a copy of its teacher and becomes the next stage's teacher:
K r^S -> K r^(S-1) -> ... -> K steps over S stages.

The defaults (one stage, r = 4: 16 -> 4 steps) are what reached the best FID on
demo:ddpm-mnist in about 20 minutes of one CPU thread: the paper's halvings (32 -> 16 -> 8 -> 4
or 16 -> 8 -> 4) split that budget over stages whose errors add up, and a 2-step teacher at 8
steps is a worse target (DDIM FID 65) than the 4-step one at 16 (60); see distill_diffusion_run.

Conditional runs: the teacher's classifier-free guidance at `guidance` w (default the run's) is
distilled into the student's plain conditional pass, eps_u + w (eps_c - eps_u) as one network
output; labels are dropped to "no label" at the run's label_dropout as in training, where the
target is the teacher's unconditional step, so the student keeps both and samples at guidance 1.

Mechanism (one engine, a plain diffusion run at the end), as distill.py does for GPT students:
- `Student` is a `Diffusion` that overrides only `loss`; the frozen teacher is held in distill's
  `_Frozen` box, outside its state_dict, parameters, optimiser and EMA copies.
- Each stage trains with `genlab.engine.run.train` and its `build` hook in a temporary folder;
  the stage's sampling weights (EMA when on) are loaded back with `Run` as the next teacher.
- The new run's config is the teacher's with sampler ddim, sampling_steps K, eta 0 (guidance 1
  for conditional runs), so `genlab sample NEW` and `evaluate` use the few-step sampler; its
  checkpoint is the last stage's, logs/train.jsonl the last stage's log, logs/distill-stage-N.jsonl
  each stage's, and compression.json names the teacher and records every stage.
- The student reports no validation loss (the distillation loss depends on its teacher): its
  quality is the FID of `genlab evaluate`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

from genlab.compress.distill import _Frozen, _read_jsonl
from genlab.compress.newrun import Compressed
from genlab.config import RunConfig, validate_run
from genlab.engine import checkpoint as ckpt
from genlab.engine.device import select_device
from genlab.errors import ConfigError
from genlab.models.diffusion import schedules as sch
from genlab.models.diffusion.ddpm import Diffusion, DiffusionConfig, GaussianDiffusion
from genlab.options import check_number

log = logging.getLogger("genlab")

# Defaults: the best FID on demo:ddpm-mnist within about 20 minutes of one CPU thread
# (distill_diffusion_run's docstring has the figures).
SAMPLING_STEPS = 4
STAGES = 1
SUBSTEPS = 4
STEPS_PER_STAGE = 2800
LR = 2e-4
BATCH_SIZE = 16


# --------------------------------------------------------------------------- the maths


def ab_at(alpha_bar: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """alpha_bar at steps t (B,) long, with t = -1 meaning clean data (1.0). (B,) float64."""
    ab = alpha_bar[t.clamp(min=0)]
    return torch.where(t >= 0, ab, torch.ones_like(ab))


def ddim_to(x0: torch.Tensor, eps: torch.Tensor, ab_s: torch.Tensor) -> torch.Tensor:
    """The deterministic DDIM step's landing point z_s = alpha_s x0 + sigma_s eps, from an
    (x0, eps) pair (B, ...) estimated at the current step; ab_s (B,) (1.0: clean, z_s = x0)."""
    return sch._bcast(ab_s.sqrt(), x0) * x0 + sch._bcast((1 - ab_s).sqrt(), x0) * eps


def ddim_x0_target(z_t: torch.Tensor, z_s: torch.Tensor, ab_t: torch.Tensor, ab_s: torch.Tensor) -> torch.Tensor:
    """The x0 (B, ...) whose DDIM step (eta = 0) from z_t at ab_t lands exactly on z_s at ab_s:
    (z_s - (sigma_s / sigma_t) z_t) / (alpha_s - (sigma_s / sigma_t) alpha_t). z_t, z_s: (B, ...);
    ab_t < 1 and ab_s > ab_t: (B,)."""
    r = sch._bcast(((1 - ab_s) / (1 - ab_t)).sqrt(), z_t)  # sigma_s / sigma_t
    return (z_s - r * z_t) / (sch._bcast(ab_s.sqrt(), z_t) - r * sch._bcast(ab_t.sqrt(), z_t))


def predict_x0_eps(model: GaussianDiffusion, z: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None,
                   guidance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`GaussianDiffusion.predict` for a step per example: (x0, eps) (B, ...) from z (B, ...) at
    steps t (B,) long, x0 clipped as the model's samplers clip it and eps recomputed to match."""
    ab = model.alpha_bar[t]  # (B,)
    x0, eps = sch.to_x0_eps(model.raw(z, t, labels, guidance).float(), z, ab, model.cfg.prediction)
    c = model.cfg.clip_denoised
    if c is not None:
        x0 = x0.clamp(-c, c)
        eps = (z - sch._bcast(ab.sqrt(), z) * x0) / sch._bcast((1 - ab).sqrt(), z)
    return x0, eps


@torch.no_grad()
def teacher_steps(teacher: GaussianDiffusion, z_t: torch.Tensor, path: torch.Tensor, labels: torch.Tensor | None,
                  guidance: float) -> torch.Tensor:
    """The teacher's DDIM steps (eta = 0) along `path` (r + 1, B) long, from z_t (B, ...) at
    path[0] through path[1], ... to path[r] (-1: clean data, where the result is the teacher's
    last x0 estimate). (B, ...)."""
    z = z_t
    for j in range(path.shape[0] - 1):
        x0, eps = predict_x0_eps(teacher, z, path[j], labels, guidance)
        z = ddim_to(x0, eps, ab_at(teacher.alpha_bar, path[j + 1]))
    return z


def stage_grid(model: GaussianDiffusion, k: int, substeps: int = 2) -> torch.Tensor:
    """(r + 1, k) long, r = substeps: column i is the teacher's path for the student's step i,
    t_{ri} > t_{ri+1} > ... > t_{ri+r} on the rk-step grid (t_{rk} = -1, clean data); its first
    and last rows are the student's own k-step grid and where each step lands."""
    r = substeps
    fine = model.sampling_timesteps(r * k) + [-1]
    if fine[::r][:k] != model.sampling_timesteps(k):
        raise ConfigError(f"{type(model).__name__}'s {k}-step grid is not every {r}th step of its {r * k}-step "
                          "grid; progressive distillation needs nested grids")
    return torch.tensor([fine[j::r][:k] for j in range(r + 1)], dtype=torch.long)  # (r + 1, k)


# --------------------------------------------------------------------------- the student


class Student(Diffusion):
    """A Diffusion (its config's sampling_steps K) trained so that each of its K DDIM steps
    matches `substeps` DDIM steps of a frozen `teacher` (the module notes); its state_dict is a
    plain Diffusion's. `guidance` is the teacher's guidance weight distilled into the student."""

    validation_loss = False  # the distillation loss depends on the teacher: quality is the FID

    def __init__(self, cfg: DiffusionConfig, teacher: GaussianDiffusion, substeps: int = 2, guidance: float = 1.0):
        super().__init__(cfg)
        self._teacher = _Frozen(teacher.eval().requires_grad_(False))
        self.guidance = guidance
        self.register_buffer("grid", stage_grid(self, cfg.sampling_steps, substeps), persistent=False)  # (r+1, K)

    @property
    def teacher(self) -> GaussianDiffusion:
        return self._teacher.module

    def loss(self, batch: dict[str, torch.Tensor], opt: str = "model") -> dict[str, torch.Tensor]:
        x0 = batch["x"]
        B = x0.shape[0]
        i = torch.randint(0, self.grid.shape[1], (B,), device=x0.device)
        path = self.grid[:, i]  # (r + 1, B): the teacher's steps for each example
        t, s = path[0], path[-1]  # (B,) each: the student's step and where it lands
        z_t = sch.q_sample(x0, t, self.alpha_bar, torch.randn_like(x0))
        labels = None
        if self.conditional:
            drop = torch.rand(B, device=x0.device) < self.cfg.label_dropout
            labels = torch.where(drop, self._null(B, x0.device), batch["y"])
        ab_t = self.alpha_bar[t]
        z_s = teacher_steps(self.teacher.eval(), z_t, path, labels, self.guidance)
        target = ddim_x0_target(z_t, z_s, ab_t, ab_at(self.alpha_bar, s))
        x0_hat, _ = sch.to_x0_eps(self.net(z_t, t, labels).float(), z_t, ab_t, self.cfg.prediction)
        per = (x0_hat - target).pow(2).flatten(1).mean(1)  # (B,)
        return {"loss": ((1 + sch.snr(ab_t)).float() * per).mean(), "x0_mse": per.mean()}


# --------------------------------------------------------------------------- the run


def stage_config(teacher_cfg: RunConfig, k: int, steps: int, lr: float, batch_size: int, seed: int) -> RunConfig:
    """The teacher run's config for a student sampling with DDIM in k steps: `steps` as the
    budget (an LR schedule over them, short warmup), no time budget, no trackers; conditional
    runs sample at guidance 1 (the teacher's guidance is in the student's conditional pass)."""
    model = dataclasses.replace(teacher_cfg.model, sampler="ddim", sampling_steps=k, eta=0.0,
                                guidance=1.0 if teacher_cfg.model.conditional else teacher_cfg.model.guidance)
    t = teacher_cfg.train
    train = dataclasses.replace(t, steps=steps, schedule_steps=steps, minutes=None, trackers=(), lr=lr,
                                batch_size=batch_size, accum=1, warmup_steps=min(t.warmup_steps, steps // 10),
                                seed=seed)
    return dataclasses.replace(teacher_cfg, model=model, train=train, preset=None)


def distill_diffusion_run(source, steps: int | None = None, sampling_steps: int | None = None,
                          stages: int | None = None, substeps: int | None = None, lr: float | None = None,
                          batch_size: int | None = None, guidance: float | None = None,
                          data_root: str | os.PathLike | None = None) -> Compressed:
    """Progressively distil an image diffusion run into a student sampling in `sampling_steps`
    DDIM steps.

    Args:
        source: the teacher run (genlab.engine.run.Run), a diffusion run predicting v or x0.
        steps: training steps per stage (default STEPS_PER_STAGE).
        sampling_steps: the student's DDIM steps K (default SAMPLING_STEPS); the first teacher
            samples in K * substeps**stages DDIM steps.
        stages: how many times the steps are divided by `substeps` (default STAGES).
        substeps: r, the teacher DDIM steps one student step matches (default SUBSTEPS; 2 is
            the paper's halving: stages 3 is 32 -> 16 -> 8 -> 4 for K = 4).
        lr: the students' Adam learning rate (default LR), cosine-decayed over each stage.
        batch_size: training images per step (default BATCH_SIZE).
        guidance: conditional runs: the teacher's guidance weight distilled into the student
            (default the run's model.guidance).
        data_root: where the teacher's data is (default: as the teacher run recorded).
    Returns:
        the last student's tensors, config (sampler ddim, sampling_steps K), TrainState and record.

    Measured on demo:ddpm-mnist (one Xeon thread, core pinned; FID lenet-mnist over 1,000 samples,
    seed 0, as `genlab evaluate --n 1000 --metrics fid`): the teacher 58.1 with dpmpp in 20 steps,
    72.5 (dpmpp) and 79.8 (ddim) in 4. These defaults (16 -> 4, 2,800 steps of 16 images at
    lr 2e-4): 68.1 at 4 DDIM steps after 17-19 min; 1,600 steps: 70.5 in 10.6 min. The paper's
    halvings in the same time did worse: 16 -> 8 -> 4 at 1,100 steps per stage 73.7 (10.8 min),
    8 -> 4 at 800 steps 75.4 (3.6 min), against 73.1 for 16 -> 4 at 800 steps; lr 5e-4 and 1e-3
    were worse than 1e-4-2e-4, and batches of 8 or 32-64 no better for the time.
    """
    from genlab.engine.run import recorded_data_root

    cfg0: RunConfig = source.cfg
    teacher = source.model
    if not isinstance(teacher, Diffusion) or cfg0.model_name != "diffusion":
        raise ConfigError(f"progressive distillation takes image diffusion runs; {source.run_dir} is a "
                          f"{cfg0.model_name} run")
    if cfg0.model.prediction == "eps":
        raise ConfigError(f"{source.run_dir} predicts eps, which cannot give x0 at the pure-noise end of a "
                          "few-step sampler; distil a run trained with model.prediction=v (or x0)")
    if (source.checkpoint.state.get("compression") or {}).get("method") == "quantize":
        raise ConfigError(f"{source.run_dir} is quantised; distill from its float source run")
    if cfg0.privacy.enabled:
        raise ConfigError(f"{source.run_dir} was trained with differential privacy; distilling on its training "
                          "data would not keep the guarantee: distil a non-private run")
    steps = STEPS_PER_STAGE if steps is None else steps
    sampling_steps = SAMPLING_STEPS if sampling_steps is None else sampling_steps
    stages = STAGES if stages is None else stages
    substeps = SUBSTEPS if substeps is None else substeps
    lr = LR if lr is None else lr
    batch_size = BATCH_SIZE if batch_size is None else batch_size
    for flag, v in (("--steps", steps), ("--sampling-steps", sampling_steps), ("--stages", stages),
                    ("--batch-size", batch_size)):
        check_number(flag, v, lo=1, integer=True)
    check_number("--substeps", substeps, lo=2, integer=True)
    check_number("--lr", lr, lo=0, lo_open=True)
    check_number("--guidance", guidance)
    if guidance is not None and not cfg0.model.conditional:
        raise ConfigError(f"--guidance needs a class-conditional diffusion run; {source.run_dir} is "
                          "unconditional: drop --guidance")
    r = int(substeps)
    first = int(sampling_steps) * r ** int(stages)
    if first > cfg0.model.timesteps:
        raise ConfigError(f"--sampling-steps {sampling_steps} x {r}^{stages} stages = {first} teacher steps exceeds "
                          f"the run's {cfg0.model.timesteps} timesteps; lower --stages or --substeps")
    guidance = float(cfg0.model.guidance if guidance is None else guidance) if cfg0.model.conditional else 1.0
    options = {"steps": int(steps), "sampling_steps": int(sampling_steps), "stages": int(stages), "substeps": r,
               "lr": float(lr), "batch_size": int(batch_size), "guidance": guidance}
    cfgs = [stage_config(cfg0, first // r ** (k + 1), int(steps), float(lr), int(batch_size), cfg0.train.seed + k)
            for k in range(int(stages))]
    for c in cfgs:
        validate_run(c)
    data_root = data_root or recorded_data_root(source.run_dir)  # stages never fall back to other data (train)
    record_stages, extra = [], {}
    with tempfile.TemporaryDirectory(prefix="genlab-distill-") as work:
        for k, cfg in enumerate(cfgs):
            folder = Path(work) / f"stage-{k + 1}"
            t0 = time.perf_counter()
            teacher = _train_stage(cfg, teacher, folder, r, guidance if k == 0 else 1.0, data_root)
            logged = folder / "logs" / "train.jsonl"  # absent when the stage is shorter than train.log_every
            text = logged.read_text(encoding="utf-8") if logged.is_file() else ""
            extra[f"logs/distill-stage-{k + 1}.jsonl"] = text
            c = ckpt.latest_valid(folder / "checkpoints")
            record_stages.append({"teacher_steps": r * cfg.model.sampling_steps,
                                  "student_steps": cfg.model.sampling_steps,
                                  "train_loss": [r["loss"] for r in _read_jsonl(text) if r.get("kind") == "train"],
                                  "train_seconds": round(c.state["state"]["elapsed"], 1),
                                  "wall_seconds": round(time.perf_counter() - t0, 1)})
        extra["logs/train.jsonl"] = text
    record = {"method": "distill", "kind": "progressive (Salimans & Ho 2022)", "options": options,
              "teacher": {"run": str(Path(source.run_dir).resolve()), "checkpoint": source.checkpoint.name,
                          "sampler": "ddim", "sampling_steps": first, "guidance": guidance,
                          "default_sampler": cfg0.model.sampler, "default_sampling_steps": cfg0.model.sampling_steps},
              "student": {"sampler": "ddim", "sampling_steps": int(sampling_steps)},
              "stages": record_stages}
    return Compressed(dict(c.tensors), record, optimizers=c.state.get("optimizers"), config=cfgs[-1],
                      state=c.state["state"], extra_files=extra)


def _train_stage(cfg: RunConfig, teacher: GaussianDiffusion, folder: Path, substeps: int, guidance: float,
                 data_root) -> GaussianDiffusion:
    """One stage with the one engine in `folder`: a Student initialised from `teacher` trains
    for cfg.train.steps. Returns the student's sampling weights as a plain Diffusion."""
    from genlab.engine.run import Run, train

    def build(c: RunConfig) -> Student:
        student = Student(c.model, teacher, substeps, guidance)
        student.load_state_dict(teacher.state_dict())
        return student

    k = cfg.model.sampling_steps
    log.info("progressive distillation: %d -> %d DDIM steps, %d training steps", substeps * k, k, cfg.train.steps)
    teacher.to(select_device(cfg.train.device))
    train(cfg, folder, data_root=data_root, build=build)
    return Run(folder).model
