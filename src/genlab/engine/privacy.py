"""Differentially private training (DP-SGD, Abadi et al. 2016) for the one engine, through Opacus.

A run trains privately when `privacy.epsilon` (or `privacy.noise_multiplier`) is set. Then, for
every optimiser whose loss reads the training data (`model.private_modules()`: the whole model
for a VAE or a diffusion model, the discriminator of a GAN):
  - each update draws a Poisson batch: every training example joins with probability
    q = batch_size / n, independently (the sampling the accountant's bound assumes);
  - Opacus's GradSampleModule computes per-example gradients; Opacus's DPOptimizer clips each to
    `max_grad_norm` (C), sums them, adds N(0, (sigma C)^2) noise and divides by batch_size;
  - Opacus's accountant (RDP by default, or PRV) counts the update, so the epsilon spent so far
    is known at every step; it is logged, kept in every checkpoint and restored on resume.
Optimisers that never read data (a GAN's generator, which only sees the discriminator) train
as usual on draws from the model's prior (`model.public_batch`), so they are post-processing.

The noise comes from a generator seeded with a secret (not train.seed, which is in config.yaml)
and the update's position, so a resumed run equals an uninterrupted one. The secret is in the
run's checkpoint JSON: share samples or weights, not the checkpoint JSON, of a private run.
The guarantee covers the training split; the validation split is read for validation losses as
in any run (it is held out, never trained on).
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
import warnings

import torch
from torch import nn

from genlab.config import PrivacyConfig  # noqa: F401  (re-exported)
from genlab.errors import ConfigError
from genlab.seed import derive_seed

log = logging.getLogger("genlab")

# Expected, and not the user's to act on: torch notes that full backward hooks (Opacus's) also
# fire on a first layer whose input needs no gradient; the RDP accountant notes when the best
# Renyi order is its largest (the bound it returns is still valid, only not the tightest).
warnings.filterwarnings("ignore", message="Full backward hook is firing")
warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")



def _require_opacus() -> None:
    """Opacus is importable, or the one-line error naming the privacy extra."""
    from genlab.extras import require

    require("opacus", "privacy", "private training")

def check_delta(p, n_train: int) -> None:
    if p.delta >= 1 / n_train:
        raise ConfigError(f"privacy.delta={p.delta:g} is not below 1/n = {1 / n_train:.3g} for the {n_train} "
                          "training examples (a delta that large allows leaking whole examples); lower it")


def check_private_run(cfg, n_train: int, world: int) -> None:
    """What DP-SGD needs of the rest of the config and of the data, in one-line errors."""
    p, t = cfg.privacy, cfg.train
    check_delta(p, n_train)
    if t.batch_size > n_train:
        raise ConfigError(f"train.batch_size={t.batch_size} is larger than the {n_train} training examples; "
                          "lower it (the expected Poisson batch is batch_size)")
    if t.accum != 1 or world != 1:
        raise ConfigError("private training runs in one process without accumulation: set train.accum=1 and "
                          "train without torchrun")
    if t.amp == "bf16":
        raise ConfigError("private training computes per-example gradients in fp32: set train.amp=off (or auto)")


def noise_multiplier_for(cfg, n_train: int, updates: int) -> float:
    """sigma: the configured one, or the smallest that keeps `updates` Poisson updates at rate
    batch_size / n within (epsilon, delta) by the chosen accountant (Opacus's search)."""
    return _sigma_for(cfg.privacy, cfg.train.batch_size / n_train, updates,
                      f"batch {cfg.train.batch_size} of {n_train}")


def _sigma_for(p, q: float, updates: int, where: str) -> float:
    """privacy.noise_multiplier, or Opacus's search for the smallest sigma that keeps `updates`
    updates at sampling rate q within (privacy.epsilon, privacy.delta)."""
    if p.noise_multiplier is not None:
        return p.noise_multiplier
    _require_opacus()
    from opacus.accountants.utils import get_noise_multiplier

    try:
        return float(get_noise_multiplier(target_epsilon=p.epsilon, target_delta=p.delta, sample_rate=q,
                                          steps=updates, accountant=p.accountant))
    except ValueError as e:  # e.g. the target is out of reach of the search
        raise ConfigError(f"no noise multiplier reaches privacy.epsilon={p.epsilon} over {updates} updates at "
                          f"{where}: {e}") from None


def make_accountant(name: str):
    _require_opacus()
    from opacus.accountants import PRVAccountant, RDPAccountant

    return RDPAccountant() if name == "rdp" else PRVAccountant()


def epsilon_of(name: str, history: list, delta: float) -> float:
    """epsilon spent by `history` [(sigma, q, updates), ...] at `delta` (0 before any update)."""
    if not history:
        return 0.0
    acc = make_accountant(name)
    acc.history = [tuple(h) for h in history]
    return float(acc.get_epsilon(delta))


def check_modules(model: nn.Module, modules: dict[str, nn.Module]) -> None:
    """Refuse, in one line, a model with layers DP-SGD cannot train: Opacus's ModuleValidator
    (BatchNorm mixes examples; ...) and GradSampleModule's per-example gradient support."""
    _require_opacus()
    from opacus.grad_sample import GradSampleModule
    from opacus.validators import ModuleValidator

    for name, m in modules.items():
        errors = ModuleValidator.validate(m, strict=False)
        errors += GradSampleModule.validate(m, strict=False)
        if errors:
            first = str(errors[0]).strip().splitlines()[0]
            raise ConfigError(f"the {name} of this {type(model).__name__} cannot be trained privately: {first} "
                              f"({len(errors)} problem(s); use GroupNorm instead of BatchNorm, no spectral norm)")


def check_same_privacy(p, q: float, state: dict | None, checkpoint: str) -> None:
    """A ConfigError unless a resumed run's privacy settings (and sampling rate q) are its checkpoint's."""
    if state is None:
        raise ConfigError(f"checkpoint {checkpoint} was written without privacy; a run cannot become "
                          "private on resume (start a new run with privacy.* set)")
    mine = (p.delta, p.max_grad_norm, p.accountant)
    theirs = (state["delta"], state["max_grad_norm"], state["accountant"])
    if mine != theirs or not math.isclose(state["sample_rate"], q):
        raise ConfigError("the privacy settings differ from the run's (delta, max_grad_norm, accountant or "
                          "batch size); resume with the run's own config")


class _Accounted:
    """What both private mechanisms keep: the settings `p`, noise multiplier `sigma`, sampling rate
    `q`, the planned updates and the accountant's history [(sigma, q, updates), ...]."""

    p: object
    sigma: float
    q: float
    planned_updates: int
    history: list[list]

    def epsilon(self) -> float:
        return epsilon_of(self.p.accountant, self.history, self.p.delta)

    def state(self) -> dict:
        return {"epsilon": self.epsilon(), "delta": self.p.delta, "noise_multiplier": self.sigma,
                "max_grad_norm": self.p.max_grad_norm, "sample_rate": self.q, "accountant": self.p.accountant,
                "target_epsilon": self.p.epsilon, "planned_updates": self.planned_updates,
                "history": [list(h) for h in self.history]}


class PrivateTraining(_Accounted):
    """The DP-SGD half of a Trainer: per-example gradients, clipping and noise on the private
    optimisers, Poisson batches, the accountant, and their checkpoint state."""

    def __init__(self, model, opts: dict[str, torch.optim.Optimizer], plan: list[tuple[str, int]], cfg,
                 n_train: int, world: int):
        _require_opacus()
        from opacus.grad_sample import GradSampleModule
        from opacus.optimizers import DPOptimizer

        self.cfg, self.p = cfg, cfg.privacy
        check_private_run(cfg, n_train, world)
        self.modules = model.private_modules()
        unknown = set(self.modules) - {name for name, _ in plan}
        if unknown:
            raise ConfigError(f"private_modules() names optimiser(s) {sorted(unknown)} the model does not have")
        check_modules(model, self.modules)
        for m in self.modules.values():  # Opacus's per-example conv gradients need the default layout
            for sub in m.modules():
                if hasattr(sub, "use_memory_format"):
                    sub.use_memory_format(torch.contiguous_format)
        self.n_train = n_train
        self.q = cfg.train.batch_size / n_train
        self.updates_per_step = sum(r for name, r in plan if name in self.modules)
        self.planned_updates = cfg.train.steps * self.updates_per_step
        self.sigma = noise_multiplier_for(cfg, n_train, self.planned_updates)
        self.noise_seed = secrets.randbits(62)
        self.history: list[list] = []  # the accountant's [(sigma, q, updates)], merged
        with warnings.catch_warnings():  # Opacus warns about secure_mode; the docstring above says why
            warnings.simplefilter("ignore")
            self.wrapped = {name: GradSampleModule(m, loss_reduction="mean") for name, m in self.modules.items()}
            self.optimizers = {
                name: DPOptimizer(opts[name], noise_multiplier=self.sigma, max_grad_norm=self.p.max_grad_norm,
                                  expected_batch_size=cfg.train.batch_size, loss_reduction="mean")
                for name in self.modules}
        log.info("private training: sigma %.4f, clip %g, Poisson rate %.5f (expected batch %d of %d), %d updates "
                 "planned%s", self.sigma, self.p.max_grad_norm, self.q, cfg.train.batch_size, n_train,
                 self.planned_updates,
                 f" for epsilon {self.p.epsilon:g} at delta {self.p.delta:g}" if self.p.epsilon else "")

    def is_private(self, opt: str) -> bool:
        return opt in self.modules

    @contextlib.contextmanager
    def hooks_off(self):
        """For updates that do not read data (a GAN's generator backpropagates through the
        private discriminator): no per-example gradients are captured."""
        for w in self.wrapped.values():
            w.disable_hooks()
        try:
            yield
        finally:
            for w in self.wrapped.values():
                w.enable_hooks()

    def zero_grad(self, opt: str) -> None:
        """Clear gradients and per-example gradients of every parameter of the private module,
        also those frozen at this moment (a GAN freezes its discriminator in generator updates,
        and Opacus's zero_grad skips parameters that do not require gradients)."""
        for p in self.modules[opt].parameters():
            p.grad, p.grad_sample, p.summed_grad = None, None, None
        self.optimizers[opt].zero_grad(set_to_none=True)

    def poisson_indices(self, b: int) -> torch.Tensor:
        """The training examples of global batch `b`: each with probability q, independently."""
        g = torch.Generator().manual_seed(derive_seed(self.cfg.train.seed, "poisson", b))
        return torch.nonzero(torch.rand(self.n_train, generator=g) < self.q).squeeze(1)

    def seed_noise(self, opt: str, step: int, entry: int, repeat: int) -> None:
        """Seed the noise of the next update from the secret and its position in the run."""
        g = torch.Generator(device=next(self.modules[opt].parameters()).device)
        g.manual_seed(derive_seed(self.noise_seed, step, entry, repeat))
        self.optimizers[opt].generator = g

    def empty_batch(self, opt: str) -> None:
        """A Poisson batch with no example: the update is noise alone (per-example grads of none)."""
        for p in self.modules[opt].parameters():
            if p.requires_grad:
                p.grad_sample = torch.zeros(0, *p.shape, device=p.device, dtype=p.dtype)

    def count_update(self) -> None:
        if self.history and self.history[-1][:2] == [self.sigma, self.q]:
            self.history[-1][2] += 1
        else:
            self.history.append([self.sigma, self.q, 1])

    # ------------------------------------------------------------------ checkpoint state
    def state(self) -> dict:
        return super().state() | {"noise_seed": self.noise_seed}

    def restore(self, state: dict | None, checkpoint: str) -> None:
        """Continue the accountant and the noise of a checkpoint of the same private run."""
        check_same_privacy(self.p, self.q, state, checkpoint)
        if self.planned_updates > state["planned_updates"] and self.p.epsilon is not None:
            raise ConfigError(f"this run's noise was set for {state['planned_updates']} updates to spend "
                              f"epsilon {self.p.epsilon:g}; training longer would spend more (start a new run "
                              "with more train.steps)")
        self.sigma = state["noise_multiplier"]
        for opt in self.optimizers.values():
            opt.noise_multiplier = self.sigma
        self.history = [list(h) for h in state["history"]]
        self.noise_seed = int(state["noise_seed"])

    def close(self) -> None:
        """Remove Opacus's hooks, so the model is a plain module again."""
        for w in self.wrapped.values():
            w._close()


class PrivateRelease(_Accounted):
    """The privacy of a model fitted in one pass of statistics (genlab.models.gaussian): each of its
    `releases` statistics is released once by the Gaussian mechanism, noise sigma x its
    sensitivity, with every image's norm clipped to privacy.max_grad_norm; the accountant counts
    each release as an update of the sampled Gaussian mechanism at sampling rate 1 (every example
    in). The same state, epsilon() and restore() as PrivateTraining, for the Trainer's checkpoints.
    The noise comes from a secret seed that is not kept (the fit is one step: nothing resumes it)."""

    def __init__(self, cfg, n_train: int, releases: int, world: int):
        self.p = cfg.privacy
        check_delta(self.p, n_train)
        if world != 1:  # each process would draw its own noise
            raise ConfigError("a private one-pass fit runs in one process: train without torchrun")
        self.q, self.planned_updates = 1.0, releases
        self.sigma = _sigma_for(self.p, self.q, releases, "sampling rate 1 (one release of each statistic)")
        self.history: list[list] = []
        log.info("private fit: %d Gaussian-mechanism releases, sigma %.4f, each image clipped to norm %g%s",
                 releases, self.sigma, self.p.max_grad_norm,
                 f" for epsilon {self.p.epsilon:g} at delta {self.p.delta:g}" if self.p.epsilon else "")

    def noise(self) -> torch.Generator:
        """The generator of the releases' noise, seeded from a secret; counts the releases."""
        self.history = [[self.sigma, self.q, self.planned_updates]]
        return torch.Generator().manual_seed(secrets.randbits(62))

    def state(self) -> dict:
        return super().state() | {"mechanism": "Gaussian mechanism on sufficient statistics"}

    def restore(self, state: dict | None, checkpoint: str) -> None:
        check_same_privacy(self.p, self.q, state, checkpoint)
        self.sigma, self.history = state["noise_multiplier"], [list(h) for h in state["history"]]

    def close(self) -> None:
        pass


def privacy_summary(state: dict | None) -> dict | None:
    """What reports and `genlab info` show of a checkpoint's privacy state (None: not private)."""
    p = (state or {}).get("privacy")
    if not p:
        return None
    return {k: p[k] for k in ("epsilon", "delta", "noise_multiplier", "max_grad_norm", "sample_rate",
                              "accountant", "target_epsilon", "level", "clip", "mechanism") if k in p} | {
        "updates": sum(h[2] for h in p.get("history", []))}
