"""The one training loop for every model family.

One training *step* runs the model's schedule, e.g. [("model", 1)] for a VAE or
[("critic", 5), ("generator", 1)] for a WGAN. Each entry is an optimiser update made of
`accum` micro-batches per process. All randomness of a micro-batch (augmentation,
binarisation, the model's noise, dropout) comes from torch's global generator seeded with
(seed, step, entry, repeat, shard), where shard = rank * accum + micro-batch. Hence:
  - a resumed run replays exactly what an uninterrupted run does (no RNG state to restore);
  - 2 processes x 1 micro-batch compute exactly what 1 process x 2 micro-batches does.

Batches come from the data's *feeder* (`data.feeder(pipeline, batch_size, seed)`), so the loop
is the same for images, text and graphs. A feeder has:
  - `unit`, `per_example`: what throughput counts (images; tokens, block_size per window; ...);
  - `train_batch(b, shard, micro, device)`: micro-batch `shard` of global batch number `b`,
    drawing any randomness from torch's global generator, which the engine has just seeded;
  - `eval_size(split)`, `num_eval_batches(split, bs)`, `eval_batch(split, i, bs, device)`;
  - `write_samples(model, folder, stem, seed)`: the periodic "grid" (PNG, text, drawing).

Private training (privacy.*, image runs): the optimisers that read data draw Poisson batches
(`feeder.batch_at`) and step through Opacus's DPOptimizer; see genlab.engine.privacy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from genlab.config import RunConfig
from genlab.data.datasets import BatchOrder, ImageData  # noqa: F401  (BatchOrder: re-exported)
from genlab.data.transforms import BatchPipeline
from genlab.engine import checkpoint as ckpt
from genlab.engine.device import autocast_dtype, faster_precision
from genlab.engine.distributed import DistInfo, all_reduce_sum, average_gradients, broadcast_module
from genlab.engine.logs import RunLog, is_total_loss
from genlab.engine.optim import EMA, build_optimizer, lr_at, muon_matrices
from genlab.engine.privacy import PrivateRelease, PrivateTraining, privacy_summary
from genlab.errors import ConfigError, TrainingDiverged
from genlab.finetune import checkpoint_keys
from genlab.models.base import GenerativeModel
from genlab.seed import derive_seed

log = logging.getLogger("genlab")


@dataclass
class TrainState:
    """Everything besides tensors that a checkpoint must carry to continue exactly."""

    step: int = 0
    batches: int = 0  # global batches drawn so far (a WGAN step draws n_critic + 1)
    elapsed: float = 0.0  # training seconds, summed over all sessions of the run
    best_val: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0
    last_eval_step: int | None = None  # step of the latest validation (none twice at one step)
    stop_reason: str | None = None  # steps | minutes | early_stop, once finished
    amp: str | None = None  # the precision the run trains in (bf16 | off), chosen at its start (Trainer.choose_precision)


def trainable_groups(model: GenerativeModel) -> dict[str, list[nn.Parameter]]:
    """The model's optimiser groups without the parameters that do not train (train.freeze,
    a LoRA base); a ConfigError when that leaves an optimiser nothing to train."""
    groups = {}
    for name, params in model.optimizers().items():
        groups[name] = [p for p in params if p.requires_grad]
        if not groups[name]:
            raise ConfigError(f"optimiser {name!r} has nothing left to train (train.freeze or LoRA fixed all its "
                              "parameters); freeze less")
    return groups


class Trainer:
    """Trains `model` on `data` as `cfg.train` says, writing checkpoints/logs/samples to `run_dir`."""

    def __init__(self, model: GenerativeModel, data: ImageData, pipeline: BatchPipeline, cfg: RunConfig,
                 run_dir: Path, *, device: torch.device, dist: DistInfo = DistInfo(),
                 callbacks: list[Callable[["Trainer"], None]] | None = None):
        self.cfg, self.t = cfg, cfg.train
        self.model = model.to(device)
        self.data, self.pipeline, self.device, self.dist = data, pipeline, device, dist
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.callbacks = callbacks or []
        self.groups = trainable_groups(model)
        self.saved_keys = checkpoint_keys(model)  # None: the whole model; a LoRA run: adapters and buffers
        self.opts = {name: build_optimizer(params, self.t, muon_matrices(model))
                     for name, params in self.groups.items()}
        if dist.world > 1:
            # Muon's Newton-Schulz precision is measured per machine: bf16 only if every rank chose it
            for g in (g for opt in self.opts.values() for g in opt.param_groups if g.get("muon")):
                g["ns_bf16"] = all_reduce_sum(torch.tensor([float(g["ns_bf16"])]), dist).item() == dist.world
        self.plan = model.schedule()
        # A model without optimisers (genlab.models.gaussian) is fitted by `fit_statistics` over
        # the training split; that pass is the run's one step.
        self.one_pass = not self.plan
        if self.one_pass and self.t.steps != 1:
            raise ConfigError(f"a {cfg.model_name} model is fitted in one pass over the data: set train.steps=1 "
                              f"(got {self.t.steps})")
        self.ema = (EMA(model, self.t.ema_decay, self.t.ema_warmup)
                    if self.t.ema_decay > 0 and not self.one_pass else None)
        self.feeder = data.feeder(pipeline, self.t.batch_size, self.t.seed)
        # DP-SGD (privacy.*): per-example clipping and noise on the optimisers that read data,
        # stepped through Opacus's DPOptimizer; `self.opts` stay the plain ones checkpoints store.
        self.private = None
        if cfg.privacy.enabled:
            if not hasattr(self.feeder, "batch_at"):
                raise ConfigError(f"private training is for image runs so far; {type(model).__name__} reads "
                                  f"{self.feeder.unit}: drop the privacy.* settings")
            self.private = (PrivateRelease(cfg, len(data.train_x), model.releases, dist.world) if self.one_pass else
                            PrivateTraining(model, self.opts, self.plan, cfg, len(data.train_x), dist.world))
        self.steppers = {**self.opts, **(getattr(self.private, "optimizers", {}))}
        # the training loss, compiled (forward and backward) under train.compile; evaluation stays eager
        self.loss_fn = torch.compile(model.loss) if self.t.compile else model.loss
        self.amp_dtype = None if self.private else autocast_dtype(self.t.amp, device)
        self.unit, self.per_example = self.feeder.unit, self.feeder.per_example
        self.micro = self.t.batch_size // (self.t.accum * dist.world)
        if self.micro * self.t.accum * dist.world != self.t.batch_size:
            raise ConfigError(f"train.batch_size={self.t.batch_size} is not divisible by "
                              f"accum x processes = {self.t.accum * dist.world}")
        self.state = TrainState()
        self.penalty: Callable[[str], torch.Tensor] | None = None  # added to each loss (FedProx's proximal term)
        # more for every checkpoint: () -> (tensors, state entries); a federation's server state
        self.extra_state: Callable[[], tuple[dict[str, torch.Tensor], dict]] | None = None
        self._stop_requested: str | None = None
        self.log = RunLog(self.run_dir, enabled=dist.is_main)

    # ------------------------------------------------------------------ state
    @property
    def sampling_model(self) -> nn.Module:
        """EMA weights when EMA is on: they are the ones used for sampling and validation."""
        return self.ema.module if self.ema else self.model

    def tensors(self) -> dict[str, torch.Tensor]:
        keep = self.saved_keys
        out = {f"model.{k}": v for k, v in self.model.state_dict().items() if keep is None or k in keep}
        if self.ema:
            out.update({f"ema.{k}": v for k, v in self.ema.module.state_dict().items() if keep is None or k in keep})
        return out

    def save(self, name: str | None = None) -> None:
        """Checkpoint (rank 0 only): weights, EMA, optimisers, and the JSON state."""
        if not self.dist.is_main:
            return
        tensors, opt_meta = self.tensors(), {}
        for oname, opt in self.opts.items():
            t, meta = ckpt.optimizer_to_flat(opt, f"optim.{oname}")
            tensors.update(t)
            opt_meta[oname] = meta
        state = {"state": asdict(self.state), "optimizers": opt_meta, "config": self.cfg.to_dict(),
                 "rng": {"scheme": "derived from (train.seed, step, entry, repeat, shard)",
                         "seed": self.t.seed}}
        if self.private:
            state["privacy"] = self.private.state()
        if self.extra_state is not None:
            more_tensors, more_state = self.extra_state()
            tensors.update(more_tensors)
            state.update(more_state)
        ckpt.save_checkpoint(self.ckpt_dir, name or f"step-{self.state.step:08d}", tensors, state)
        if name is None:
            ckpt.prune(self.ckpt_dir, self.t.keep_last)

    def restore(self, c: ckpt.Checkpoint) -> None:
        for prefix, module in [("model.", self.model)] + ([("ema.", self.ema.module)] if self.ema else []):
            sd = {k[len(prefix):]: v for k, v in c.tensors.items() if k.startswith(prefix)}
            try:
                if self.saved_keys is None:
                    module.load_state_dict(sd)
                else:  # a LoRA run: the base came from its source run, the checkpoint holds the rest
                    _, unexpected = module.load_state_dict(sd, strict=False)
                    absent = sorted(self.saved_keys - set(sd))
                    if unexpected or absent:
                        raise RuntimeError(f"{'unexpected' if unexpected else 'missing'} tensor "
                                           f"{(unexpected or absent)[0]}")
            except RuntimeError as e:
                raise ckpt.CheckpointError(f"checkpoint {c.name} does not fit this model: "
                                           f"{str(e).splitlines()[0]}") from None
        for oname, opt in self.opts.items():
            ckpt.optimizer_from_flat(opt, f"optim.{oname}", c.tensors, c.state["optimizers"][oname])
        if self.private:
            self.private.restore(c.state.get("privacy"), c.name)
        self.state = TrainState(**c.state["state"])

    # ------------------------------------------------------------------ precision
    def choose_precision(self) -> None:
        """train.amp=auto on a CPU whose bf16 matmuls are fast: bf16 autocast only if this model's
        own training step is faster in it (genlab.engine.device.faster_precision), decided once
        at the start of the run and kept in its checkpoints, so a resumed run continues in the
        precision it began in. bf16 / off (and auto elsewhere) are taken as they are."""
        if self.t.amp != "auto" or self.amp_dtype is None or self.device.type != "cpu" or self.one_pass:
            self.state.amp = "off" if self.amp_dtype is None else "bf16"
        elif self.state.amp is None:
            self.state.amp = self._probe_precision()
        self.amp_dtype = torch.bfloat16 if self.state.amp == "bf16" else None

    def _probe_precision(self) -> str:
        """Time one forward and backward of the first optimiser's loss on a training batch in fp32
        and in bf16; the weights, buffers (e.g. batch-norm statistics), gradients and the random
        state are as before afterwards. Every process probes; bf16 only if all of them chose it."""
        oname = self.plan[0][0]
        saved = {k: v.clone() for k, v in self.model.state_dict().items()}
        rng = torch.get_rng_state()
        torch.manual_seed(derive_seed(self.t.seed, "precision"))
        batch = self.feeder.train_batch(0, 0, self.micro, self.device)
        shape = {k: list(v.shape) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        cfg = self.cfg.to_dict()
        key = hashlib.sha256(json.dumps([type(self.model).__name__, cfg["model"], cfg["data"], oname, shape],
                                        sort_keys=True, default=str).encode()).hexdigest()[:24]

        def step(dtype: torch.dtype | None) -> None:
            with torch.autocast(self.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                out = self.model.loss(batch, oname)
            out["loss"].backward()

        self.model.train()
        try:
            found = faster_precision(step, key)
        finally:
            self.model.load_state_dict(saved)
            for p in self.model.parameters():
                p.grad = None
            torch.set_rng_state(rng)
        votes = all_reduce_sum(torch.tensor([float(found["choice"] == "bf16")]), self.dist)
        choice = "bf16" if votes.item() == self.dist.world else "off"
        log.info("precision: %s (this model's training step measured fp32 %.1f ms, bf16 %.1f ms; "
                 "train.amp=bf16 or off to choose)", "bf16 autocast" if choice == "bf16" else "fp32",
                 found["fp32_s"] * 1e3, found["bf16_s"] * 1e3)
        return choice

    def request_stop(self, reason: str = "signal") -> None:
        """Finish the current step, checkpoint and return (used by signal handlers and tests)."""
        self._stop_requested = reason

    # ------------------------------------------------------------------ the loop
    def fit(self) -> TrainState:
        latest = ckpt.latest_valid(self.ckpt_dir)
        if latest is not None:
            self.restore(latest)
            log.info("resuming from %s (step %d, %.1f min trained)", latest.name, self.state.step,
                     self.state.elapsed / 60)
            self.log.truncate_after(self.state.step)
        broadcast_module(self.model, self.dist)
        self.choose_precision()
        if self.ema and latest is None:
            self.ema.module.load_state_dict(self.model.state_dict())
        self.state.stop_reason = None
        budget_s = self.t.minutes * 60 if self.t.minutes else None
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in previous:
            try:
                signal.signal(s, lambda *_: self.request_stop("signal"))
            except ValueError:  # not the main thread: leave signals alone
                pass
        self.log.open_progress(self.t.steps, self.state.step)
        t0, elapsed0 = time.perf_counter(), self.state.elapsed
        window_t, window_steps = time.perf_counter(), 0
        try:
            while True:
                self.state.elapsed, stop = self._sync_control(elapsed0 + time.perf_counter() - t0)
                if stop:
                    break
                reason = self._budget_reason(budget_s)
                if reason:
                    self.state.stop_reason = reason
                    break
                frac = self.state.elapsed / budget_s if budget_s else 0.0
                lr = lr_at(self.state.step, self.t.schedule_steps or self.t.steps, self.t.lr, warmup=self.t.warmup_steps,
                           schedule=self.t.schedule, min_ratio=self.t.min_lr_ratio, time_fraction=frac)
                terms = self._train_step(lr)
                self.state.step += 1
                window_steps += 1
                s = self.state.step
                for cb in self.callbacks:
                    cb(self)
                self.log.progress(terms)
                if s % self.t.log_every == 0:
                    dt = time.perf_counter() - window_t
                    rate = window_steps / dt
                    if self.private:
                        terms["epsilon"] = self.private.epsilon()
                    self.log.record("train", s, {**terms, "lr": lr, "steps_per_s": rate,
                                                 f"{self.unit}_per_s": rate * self.t.batch_size *
                                                 self.per_example * sum(r for _, r in self.plan),
                                                 "elapsed_s": elapsed0 + time.perf_counter() - t0})
                    window_t, window_steps = time.perf_counter(), 0
                if s % self.t.eval_every == 0 and self._evaluate_and_track():
                    self.state.stop_reason = "early_stop"
                    break
                if s % self.t.sample_every == 0:
                    self.write_grid(f"step-{s:08d}.png")
                if s % self.t.ckpt_every == 0:
                    self.state.elapsed = elapsed0 + time.perf_counter() - t0
                    self.save()
            self.state.elapsed = elapsed0 + time.perf_counter() - t0
            self.finish(self.state.stop_reason)
        finally:
            self.log.close()
            if self.private:
                self.private.close()
            for s, h in previous.items():
                try:
                    signal.signal(s, h)
                except ValueError:
                    pass
        return self.state

    def finish(self, reason: str | None) -> None:
        """The end of training (`reason`: steps, minutes, early_stop, signal; None: interrupted):
        a last validation, the final grid and the test report, then the checkpoint that marks
        the run finished."""
        if reason:
            if self.state.last_eval_step != self.state.step:
                self._evaluate_and_track()
            # Saved as unfinished first, so nothing is lost if the slow ending below fails
            # or is killed: `train --resume` then redoes only the grid and the report.
            self.state.stop_reason = None
            self.save()
            self.state.stop_reason = reason
            self.write_grid("final.png")
            if self.dist.is_main and self.model.validation_loss:
                self.write_test_report()
        # Last: a checkpoint with a stop_reason marks the run finished, so a kill before
        # this line leaves a run that `train --resume` completes (grid and report included).
        self.save()

    def train_steps(self, first_step: int, n: int, penalty: Callable[[str], torch.Tensor] | None = None
                    ) -> dict[str, float]:
        """n optimiser steps from global step `first_step`, with fresh optimiser state and no
        checkpoint, evaluation or log: one federated client's local round (genlab.federated).
        The learning rate, the batches and every random draw are those of the same steps of a
        plain run (they are functions of the step). `penalty(optimiser name)` is added to each
        loss. Returns the mean of each loss term over the n steps."""
        if self.private:
            raise ConfigError("privacy.* (per-example DP-SGD) is not supported in federated clients; use the "
                              "federation's client_dp")
        self.opts = {name: build_optimizer(params, self.t, muon_matrices(self.model))
                     for name, params in self.groups.items()}
        self.steppers = dict(self.opts)
        self.choose_precision()
        self.state.step = first_step
        self.state.batches = first_step * sum(r for _, r in self.plan)
        self.penalty, totals = penalty, {}
        try:
            for _ in range(n):
                lr = lr_at(self.state.step, self.t.schedule_steps or self.t.steps, self.t.lr,
                           warmup=self.t.warmup_steps, schedule=self.t.schedule, min_ratio=self.t.min_lr_ratio)
                for k, v in self._train_step(lr).items():
                    totals[k] = totals.get(k, 0.0) + v / n
                self.state.step += 1
        finally:
            self.penalty = None
        return totals

    def _sync_control(self, elapsed: float) -> tuple[float, bool]:
        """Agree across processes on the elapsed time and on stopping, so that every rank
        leaves the loop at the same step (a rank stopping alone would hang the others)."""
        stop = self._stop_requested is not None
        if self.dist.world > 1:
            v = torch.tensor([elapsed, float(stop)], dtype=torch.float64)
            torch.distributed.all_reduce(v, op=torch.distributed.ReduceOp.MAX)
            elapsed, stop = v[0].item(), bool(v[1].item())
        return elapsed, stop

    def _budget_reason(self, budget_s: float | None) -> str | None:
        if self.state.step >= self.t.steps:
            return "steps"
        if budget_s is not None and self.state.elapsed >= budget_s:
            return "minutes"
        return None

    def _train_step(self, lr: float) -> dict[str, float]:
        """One schedule of optimiser updates; returns the mean of each loss term."""
        if self.one_pass:
            return self._fit_statistics()
        self.model.train()
        sums: dict[str, torch.Tensor] = {}
        s, A, rank = self.state.step, self.t.accum, self.dist.rank
        for e, (oname, repeats) in enumerate(self.plan):
            opt, params = self.steppers[oname], self.groups[oname]
            for g in opt.param_groups:
                g["lr"] = lr * self.model.lr_scale(oname)
            private = self.private is not None and self.private.is_private(oname)
            for r in range(repeats):
                if private:
                    self.private.zero_grad(oname)
                else:
                    opt.zero_grad(set_to_none=True)
                b = self.state.batches
                self.state.batches += 1
                for m in range(A):
                    shard = rank * A + m
                    torch.manual_seed(derive_seed(self.t.seed, s, e, r, shard))
                    if self.private is None:
                        batch = self.feeder.train_batch(b, shard, self.micro, self.device)
                    elif private:  # a Poisson batch (the guarantee's sampling)
                        batch = self.feeder.batch_at(self.private.poisson_indices(b), self.device)
                    else:  # an optimiser that never reads data: draws from the model's prior
                        batch = self.model.public_batch(self.micro, self.device)
                    if private and len(batch["x"]) == 0:
                        self.private.empty_batch(oname)
                        continue
                    hooks_off = self.private.hooks_off() if self.private and not private else contextlib.nullcontext()
                    with hooks_off:
                        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.bfloat16,
                                            enabled=self.amp_dtype is not None):
                            out = self.loss_fn(batch, oname)
                        loss = out["loss"] if self.penalty is None else out["loss"] + self.penalty(oname)
                        (loss / A).backward()
                    for k, v in out.items():
                        key = f"loss_{oname}" if k == "loss" and len(self.plan) > 1 else k
                        sums[key] = sums.get(key, 0) + v.detach().float() / (A * repeats)
                average_gradients(params, self.dist)
                self._check_finite(sums, s)
                if private:  # clipping per example, noise and averaging: Opacus's DPOptimizer
                    self.private.seed_noise(oname, s, e, r)
                elif self.t.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, self.t.grad_clip)
                opt.step()
                if private:
                    self.private.count_update()
        if self.ema:
            self.ema.update(self.model, s)
        return dict(zip(sums, self._mean_over_ranks(sums).tolist()))

    def _fit_statistics(self) -> dict[str, float]:
        """The one step of a model without optimisers: two passes over the training split as
        evaluation prepares it (no augmentation); private runs release the statistics with noise."""
        bs = 1000

        def batches():  # both passes see the same images (a binarisation, if any, is seeded per batch)
            for i in range(self.feeder.num_eval_batches("train", bs)):
                torch.manual_seed(derive_seed(self.t.seed, "fit", i))
                b = self.feeder.eval_batch("train", i, bs, self.device)
                yield b["x"], b.get("y")

        if self.private:
            self.model.fit_statistics(batches, clip=self.cfg.privacy.max_grad_norm, sigma=self.private.sigma,
                                      noise=self.private.noise())
        else:
            self.model.fit_statistics(batches)
        return {}

    def _mean_over_ranks(self, sums: dict[str, torch.Tensor]) -> torch.Tensor:
        if not sums:  # every batch of the step was an empty Poisson batch
            return torch.zeros(0)
        v = torch.stack([t.reshape(()) for t in sums.values()]).cpu()
        return all_reduce_sum(v, self.dist) / self.dist.world

    def _check_finite(self, sums: dict[str, torch.Tensor], step: int) -> None:
        vals = self._mean_over_ranks(sums)
        if bool(torch.isfinite(vals).all()):
            return
        # name the component that broke, not the total it feeds into
        bad = sorted((k for k, v in zip(sums, vals.tolist()) if not math.isfinite(v)), key=is_total_loss)
        good = ckpt.list_steps(self.ckpt_dir)
        keep = f"the last good checkpoint is {good[-1]}" if good else "no checkpoint was written"
        self.log.close()
        raise TrainingDiverged(f"loss term '{bad[0]}' became {vals[list(sums).index(bad[0])].item()} "
                               f"at step {step + 1}; {keep}; lower train.lr or set train.grad_clip")

    # ------------------------------------------------------------------ eval and samples
    @torch.no_grad()
    def evaluate(self, split: str = "val", max_batches: int | None = None) -> dict[str, float]:
        """Mean loss terms over a split, with fixed randomness, using the sampling weights."""
        if self.feeder.eval_size(split) == 0:
            return {}
        model = self.sampling_model
        was_training = model.training
        model.eval()
        bs = self.t.batch_size
        n_batches = self.feeder.num_eval_batches(split, bs)
        if max_batches:
            n_batches = min(n_batches, max_batches)
        sums: dict[str, float] = {}
        count = 0
        rng_state = torch.get_rng_state()
        for i in range(n_batches):
            torch.manual_seed(derive_seed(self.t.seed, split, i))
            batch = self.feeder.eval_batch(split, i, bs, self.device)
            out = model.loss(batch, self.plan[-1][0] if self.plan else "model")
            n = len(batch["x"] if "x" in batch else next(iter(batch.values())))  # examples in the batch
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(v) * n
            count += n
        torch.set_rng_state(rng_state)
        model.train(was_training)
        return {k: v / count for k, v in sums.items()}

    def _evaluate_and_track(self) -> bool:
        """Validate, keep the best checkpoint; True when early stopping says stop."""
        if not self.model.validation_loss:
            return False
        res = self.evaluate("val", self.t.eval_batches)
        if not res:
            return False
        val = res["loss"]
        self.log.record("val", self.state.step, res)
        st = self.state
        st.last_eval_step = st.step
        if st.best_val is None or val < st.best_val:
            st.best_val, st.best_step, st.evals_since_best = val, st.step, 0
            self.save("best")
        else:
            st.evals_since_best += 1
        p = self.t.early_stop_patience
        return p is not None and st.evals_since_best >= p

    def write_test_report(self) -> None:
        """Loss terms on the whole test split (its first train.test_batches batches when set), in
        the evaluation report layout (text data has no test split: its val split, as many random
        windows as it has tokens / block_size); report.json and report.html. The main process calls it."""
        t0 = time.perf_counter()
        split = "test" if self.feeder.eval_size("test") else "val"
        res = self.evaluate(split, self.t.test_batches)
        n = self.feeder.eval_size(split)
        if self.t.test_batches:
            n = min(n, self.t.test_batches * self.t.batch_size)
        secs = time.perf_counter() - t0
        metrics = {f"{split}_{k}": {"value": v, "extractor": None, "n": n, "seed": self.t.seed, "seconds": secs}
                   for k, v in res.items()}
        report = {"run": str(self.run_dir), "step": self.state.step, "stop_reason": self.state.stop_reason,
                  "metrics": metrics}
        dp = self.private.state() if self.private else (self.extra_state()[1] if self.extra_state else {}).get("privacy")
        if dp:
            report["privacy"] = privacy_summary({"privacy": dp})
        ckpt.atomic_write_json(self.run_dir / "report.json", report)
        # report.html from the report just written, so the page never shows an older step
        # (the figures come from the run folder)
        from genlab.evaluation.html import write_run_report_html

        write_run_report_html(self.run_dir, report)

    @torch.no_grad()
    def write_grid(self, name: str) -> None:
        """The feeder's sample picture from fixed noise (an image grid, a text continuation, a
        drawing of graphs), so pictures over time show the same samples improving."""
        if not self.dist.is_main:
            return
        self.feeder.write_samples(self.sampling_model, self.run_dir / "samples", Path(name).stem,
                                  derive_seed(self.t.seed, "grid"))
