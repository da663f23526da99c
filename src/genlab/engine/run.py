"""Run directories and the two halves of the Python API: `train(config)` and `load(run_dir)`.

A run directory holds:
    config.yaml        the resolved config (budgets are run totals)
    manifest.json      genlab/torch versions, git commit, hardware, command line, data source
    data.json          what sampling needs to undo preprocessing (sizes, mean/std, classes)
    checkpoints/       step-XXXXXXXX.{safetensors,json} (last K), best.{safetensors,json}
    logs/              train.jsonl, tb/ (TensorBoard)
    samples/           grids written during training, final.png
    report.json        test-split loss terms at the end of training
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

import genlab
from genlab import demos
from genlab.config import RunConfig, load_config, resolve, save_config, validate_run
from genlab.data.datasets import ImageData, load_image_data, resolve_data_root
from genlab.data.text import TextData, load_text_data, load_tokenizer
from genlab.data.transforms import BatchPipeline
from genlab.engine import checkpoint as ckpt
from genlab.engine.device import cpu_model, cxx_compiler, device_name, select_device
from genlab.engine.distributed import DistInfo, all_reduce_sum, barrier, init_distributed, shutdown
from genlab.engine.lock import RunLock
from genlab.engine.trackers import check_trackers
from genlab.engine.trainer import Trainer, TrainState
from genlab.errors import CheckpointError, ConfigError, RunInUseError
from genlab.finetune.replay import GROWABLE, write_hashes
from genlab.models.base import GenerativeModel
from genlab.options import check_number, check_run_dir_path
from genlab.registry import get_model, model_family
from genlab.sampling import draw_audio, draw_samples
from genlab.seed import seed_everything

log = logging.getLogger("genlab")

DATA_FIELDS = ("channels", "image_size", "num_classes", "vocab_size", "num_features", "max_nodes", "max_prev",
               "audio_length")


def resolve_data_fields(cfg: RunConfig, data: ImageData) -> RunConfig:
    """Fill the model config's data-dependent fields (channels, image_size, num_classes) that
    were left None, returning a new config; the user's explicit values are kept."""
    names = {f.name for f in dataclasses.fields(cfg.model)}
    fill = {k: getattr(data, k, None) for k in DATA_FIELDS if k in names and getattr(cfg.model, k) is None}
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **fill))


def build_model(cfg: RunConfig) -> GenerativeModel:
    _, model_cls = get_model(cfg.model_name)
    return model_cls(cfg.model)


def load_data(cfg: RunConfig, root: Path | None, run_dir: Path | None = None, *,
              fallback: bool = False) -> ImageData | TextData:
    """The dataset the config names, checked against the model family. Text runs reuse the
    tokenizer saved in `run_dir` when there is one (a resumed run). Only a new run may fall
    back to another dataset (MNIST missing: the 8x8 digits); a run that exists keeps its data."""
    from genlab.data.audio import AUDIO_DATASETS, load_audio_data
    from genlab.data.graphs import GRAPH_DATASETS, load_graph_data

    family = model_family(cfg.model_name)
    d = cfg.data.dataset
    kind = ("text" if d in ("text", "smiles") else "graph" if d in GRAPH_DATASETS else "audio" if d in AUDIO_DATASETS
            else "image")
    if kind != family:
        fix = {"text": "text (or smiles)", "graph": "cora, citeseer, edgelist, community, grid or ego",
               "image": "mnist (or folder/array)", "audio": "fsdd (or audio with data.path)"}[family]
        raise ConfigError(f"model {cfg.model_name} is a{'n' if family in ('image', 'audio') else ''} {family} model but "
                          f"data.dataset={cfg.data.dataset}; set data.dataset={fix}")
    if family == "graph":
        return load_graph_data(cfg.data, root, seed=cfg.train.seed)
    if family == "audio":
        return load_audio_data(cfg.data, root, seed=cfg.train.seed)
    if family == "text":
        tok = run_dir / "tokenizer.json" if run_dir is not None else None
        if (tok is None or not tok.is_file()) and cfg.train.init_from:  # fine-tuning keeps its source's vocabulary
            source_tok = demos.resolve(cfg.train.init_from) / "tokenizer.json"
            tok = source_tok if source_tok.is_file() else tok
        return load_text_data(cfg.data, root, block_size=cfg.model.block_size, tokenizer_path=tok)
    return load_image_data(cfg.data, root, fallback=fallback)


def build_pipeline(cfg: RunConfig, meta: dict) -> BatchPipeline | None:
    if meta.get("family") in ("text", "graph", "audio"):
        return None  # token windows, whole graphs, waveforms already in [-1, 1]: nothing to prepare
    d = cfg.data
    return BatchPipeline(d.normalize, meta["mean"], meta["std"], hflip=d.hflip,
                         crop_padding=d.crop_padding, binarize=d.binarize)


def git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def manifest(device: torch.device, dist: DistInfo, data: ImageData, data_root: Path | None,
             argv: list[str] | None) -> dict:
    return {
        "genlab_version": genlab.__version__,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": str(device),
        "device_name": device_name(device),
        "cpu_model": cpu_model(),
        "threads": torch.get_num_threads(),
        "world_size": dist.world,
        "command_line": argv if argv is not None else sys.argv,
        "data_root": str(data_root) if data_root else None,
        "data_source": data.source,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def default_run_dir(cfg: RunConfig) -> Path:
    name = cfg.preset or cfg.model_name
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


@dataclass
class TrainResult:
    run_dir: Path
    state: TrainState
    finished: bool  # False when interrupted (signal/request_stop) before the budget ended


def _set_threads(threads: int | None, dist: DistInfo) -> None:
    if threads:
        torch.set_num_threads(threads)
    elif dist.world > 1:
        # torchrun on one machine: share the cores instead of oversubscribing them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", dist.world))))


def train(config: str | dict | RunConfig | None = None, out: str | os.PathLike | None = None, *,
          overrides: list[str] = (), resume: str | os.PathLike | None = None, steps: int | None = None,
          minutes: float | None = None, seed: int | None = None, device: str | None = None,
          threads: int | None = None, data_root: str | None = None, download: bool = False,
          argv: list[str] | None = None,
          callbacks: list[Callable[[Trainer], None]] | None = None,
          build: Callable[[RunConfig], GenerativeModel] | None = None) -> TrainResult:
    """Train a model (a preset name, YAML path, nested dict or RunConfig), or resume a run.

    The keyword budgets/options mirror the CLI flags and override the config. `build` makes
    the model from the final config instead of the registry's class (a distillation student:
    its own loss, the registry model's weights, so the run loads as that model); such a run trains
    on its source's data or fails, never on the 8x8 digits fallback. Everything is
    checked before the run directory is touched; the directory is then owned by this process
    (RunLock) until training ends, so a second process on the same folder is refused."""
    check_budgets(steps, minutes)
    check_number("--threads", threads, lo=1, integer=True)
    if resume is not None:
        check_resumable(resume)
        run_dir = Path(resume)
        cfg = with_recorded_dataset(load_config(run_dir / "config.yaml"), _read_json(run_dir / "data.json"))
        data_root = data_root or recorded_data_root(run_dir)
    else:
        if config is None:
            raise ConfigError("give a preset or config file, or --resume RUN_DIR")
        cfg = config if isinstance(config, RunConfig) else resolve(config, overrides)
    t = cfg.train
    if t.schedule_steps is None:  # fixed once, before the --steps budget applies
        t = dataclasses.replace(t, schedule_steps=t.steps)
    t = dataclasses.replace(
        t, steps=steps if steps is not None else t.steps,
        minutes=minutes if minutes is not None else t.minutes,
        seed=seed if seed is not None else t.seed, device=device or t.device,
        threads=threads if threads is not None else t.threads)
    cfg = dataclasses.replace(cfg, train=t, data=dataclasses.replace(cfg.data, download=cfg.data.download or download))
    validate_run(cfg)  # what is saved below must be a config that every later command accepts
    check_trackers(cfg.train.trackers)  # a tracker package that is missing: before the folder is touched
    if cfg.privacy.enabled:
        from genlab.extras import require

        require("opacus", "privacy", "private training")
    if resume is None:
        run_dir = check_run_dir_path(out) if out else default_run_dir(cfg)

    dev = select_device(t.device)
    dist = init_distributed(dev.type)
    if dev.type == "cuda" and dist.world > 1:
        dev = torch.device("cuda", dist.local_rank)
    lock = RunLock(run_dir)
    try:
        _own(lock, dist)
        if resume is None and ckpt.list_steps(run_dir / "checkpoints"):
            raise ConfigError(f"{run_dir} already holds a run; continue it with `genlab train --resume {run_dir}` "
                              "or choose another --out")
        return _train_in(cfg, run_dir, resume is not None, dev, dist, data_root, argv, callbacks,
                         build or build_model, fallback=resume is None and build is None)
    finally:
        lock.release()
        shutdown(dist)


def _own(lock: RunLock, dist: DistInfo) -> None:
    """Rank 0 takes the run directory's lock; every rank learns whether it did, so that a
    refusal stops all processes at once instead of leaving the others waiting at a barrier."""
    refusal = None
    if dist.is_main:
        try:
            lock.acquire()
        except RunInUseError as e:
            refusal = e
    if dist.world > 1 and all_reduce_sum(torch.tensor([float(refusal is not None)]), dist).item():
        refusal = refusal or RunInUseError(f"{lock.run_dir} is in use by another genlab process")
    if refusal is not None:
        raise refusal


def _train_in(cfg: RunConfig, run_dir: Path, resuming: bool, dev: torch.device, dist: DistInfo,
              data_root: str | None, argv: list[str] | None,
              callbacks: list[Callable[[Trainer], None]] | None,
              build: Callable[[RunConfig], GenerativeModel], fallback: bool) -> TrainResult:
    """train()'s second half, in a run directory this process owns. `fallback`: the data may be
    replaced by the digits when MNIST is missing (new runs of a registry model only)."""
    t = cfg.train
    _set_threads(t.threads, dist)
    root = resolve_data_root(data_root)
    data = load_data(cfg, root, run_dir, fallback=fallback)
    used = getattr(data, "dataset", cfg.data.dataset)
    if used != cfg.data.dataset:  # e.g. no MNIST anywhere: the config says what was really used
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dataset=used))
    # a run resumed before its first checkpoint starts over: it loads its source weights again
    restarting = resuming and ckpt.latest_valid(run_dir / "checkpoints") is not None
    if t.replay:  # grown data: the new images and a share of those the source run saw (chosen once, kept)
        from genlab.finetune.replay import with_replay

        data = with_replay(data, cfg, run_dir, write=dist.is_main)
    cfg = resolve_data_fields(cfg, data)
    seed_everything(t.seed)  # the initial weights are a function of the seed
    model = build(cfg)
    if t.init_from or t.lora_rank or t.freeze:  # another run's weights, adapters, frozen parts
        from genlab.finetune import prepare

        prepare(model, cfg, run_dir, resuming=restarting, write=dist.is_main)
    if dist.is_main:
        save_config(cfg, run_dir / "config.yaml")
        ckpt.atomic_write_json(run_dir / "data.json", data.meta())
        if isinstance(data, ImageData) and cfg.data.dataset in GROWABLE and not restarting:  # for a later replay
            write_hashes(run_dir, data, also=cfg.train.init_from if t.replay else None)
        if isinstance(data, TextData):
            ckpt.atomic_write_text(run_dir / "tokenizer.json", data.tokenizer.to_json())
        if not resuming or not (run_dir / "manifest.json").exists():
            ckpt.atomic_write_json(run_dir / "manifest.json", manifest(dev, dist, data, root, argv))
    barrier(dist)
    pipeline = build_pipeline(cfg, data.meta())
    log.info("run %s: %s on %s, %s params, data %s (%d train / %d val / %d test)", run_dir, cfg.model_name,
             device_name(dev), f"{sum(p.numel() for p in model.parameters()):,}", data.source,
             len(data.train_x), len(data.val_x), len(data.test_x))
    trainer = Trainer(model, data, pipeline, cfg, run_dir, device=dev, dist=dist, callbacks=callbacks)
    state = trainer.fit()
    return TrainResult(run_dir, state, state.stop_reason is not None)


def check_resumable(run_dir: str | os.PathLike) -> None:
    """A ConfigError for runs that `train --resume` must not touch: shipped demos (read-only) and
    quantised runs (their int8 weights do not train), distilled few-step diffusion samplers (the
    ordinary diffusion loss would undo the distillation)."""
    demos.refuse_write(run_dir, "train a new run from its config instead (genlab presets --show NAME)")
    if (Path(run_dir) / "federation.yaml").is_file():
        raise ConfigError(f"{run_dir} is a federated run; continue it with `genlab federate FED.yaml --out {run_dir}` "
                          "(the same federation file)")
    record = _read_json(Path(run_dir) / "compression.json")
    if record and record.get("method") == "quantize":
        raise ConfigError(f"{run_dir} holds quantised weights, which do not train; continue its source run "
                          f"({record['source']['run']}) and quantise again")
    if record and record.get("method") == "merge":
        raise ConfigError(f"{run_dir} holds merged LoRA weights without optimiser state; fine-tune it further as a "
                          f"new run: genlab train PRESET --init-from {run_dir}")
    if record and record.get("method") == "distill" and "sampling_steps" in record.get("student", {}):
        raise ConfigError(f"{run_dir} is a distilled {record['student']['sampling_steps']}-step sampler, which "
                          "ordinary training would undo; distil again from its teacher "
                          f"({record['teacher']['run']}) with more --steps")


def check_budgets(steps: int | None, minutes: float | None) -> None:
    """--steps and --minutes, checked before anything is read or written."""
    check_number("--steps", steps, lo=1, integer=True)
    check_number("--minutes", minutes, lo=0, lo_open=True)


def run_status(run_dir: Path) -> tuple[RunConfig, dict | None]:
    """(config, newest valid checkpoint state or None) of a run directory."""
    cfg = load_config(Path(run_dir) / "config.yaml")
    c = ckpt.latest_valid(Path(run_dir) / "checkpoints")
    return cfg, (c.state if c else None)


def is_finished(cfg: RunConfig, state: dict | None) -> bool:
    """The run ended within its budgets and wrote its final grid and report (the checkpoint
    saved after them carries the stop reason; a run killed just before is not finished)."""
    if state is None or state["state"].get("stop_reason") is None:
        return False
    s = state["state"]
    return s["step"] >= cfg.train.steps or (cfg.train.minutes is not None and s["elapsed"] >= cfg.train.minutes * 60)


def with_recorded_dataset(cfg: RunConfig, meta: dict | None) -> RunConfig:
    """Runs made before configs recorded the digits fallback say `mnist` although data.json's
    source says they trained on the 8x8 digits: keep them on the data they trained on."""
    if (cfg.data.dataset == "mnist" and meta and "dataset" not in meta
            and str(meta.get("source", "")).startswith("scikit-learn 8x8 digits")):
        return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dataset="digits"))
    return cfg


def recorded_data_root(run_dir: Path) -> str | None:
    """The data root a run was trained from, when it is a folder on this machine (else None:
    the default search, $GENLAB_DATA then ../shared/data, applies)."""
    root = (_read_json(Path(run_dir) / "manifest.json") or {}).get("data_root")
    return root if isinstance(root, str) and Path(root).is_dir() else None


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- loading


class Run:
    """A trained run, loaded for use: `genlab.load(run_dir).sample(16, seed=0)`."""

    def __init__(self, run_dir: str | os.PathLike, checkpoint: str = "last", device: str = "cpu"):
        self.run_dir = demos.resolve(run_dir)  # a path, or demo:NAME (a run shipped in the package)
        if not self.run_dir.is_dir():
            raise CheckpointError(f"run directory {self.run_dir} not found")
        self.meta = _read_json(self.run_dir / "data.json")
        if self.meta is None:
            raise CheckpointError(f"{self.run_dir}/data.json is missing or corrupt; the run directory is damaged")
        self.cfg = with_recorded_dataset(load_config(self.run_dir / "config.yaml"), self.meta)
        folder = self.run_dir / "checkpoints"
        if checkpoint == "last":  # the newest that verifies, as `train --resume` picks it
            names = ckpt.list_steps(folder)
            if not names:
                raise CheckpointError(f"{self.run_dir} has no checkpoint yet; train it first")
            c = ckpt.latest_valid(folder)
            if c is None:  # raises, naming what is wrong with the newest
                c = ckpt.read_checkpoint(folder, names[-1])
            if c.name != names[-1]:
                log.warning("using %s (step %d), the newest checkpoint that verifies", c.name,
                            c.state["state"]["step"])
        elif checkpoint == "best" or re.fullmatch(r"step-\d{8}|min-\d+(\.\d+)?", checkpoint):  # min-M: benchmarks' marks
            if not (folder / f"{checkpoint}.json").is_file():
                have = ", ".join(ckpt.list_steps(folder)) or "none"
                raise CheckpointError(f"{self.run_dir} has no checkpoint {checkpoint!r} (it has: {have}); "
                                      "use --checkpoint last")
            c = ckpt.read_checkpoint(folder, checkpoint)
        else:
            raise ConfigError(f"--checkpoint must be last, best, step-NNNNNNNN or min-M, got {checkpoint!r}")
        self.checkpoint = c
        self.device = select_device(device)
        self.model = build_model(self.cfg)
        prefix = "ema." if any(k.startswith("ema.") for k in c.tensors) else "model."
        sd = {k[len(prefix):]: v for k, v in c.tensors.items() if k.startswith(prefix)}
        try:
            if c.state.get("compression"):  # written by `genlab compress`: int8/bf16 weights, quantised layers
                from genlab.compress import load_compressed
                load_compressed(self.model, sd, c.state["compression"], self.device)
            elif self.cfg.train.lora_rank:  # adapters only: the pinned base run's weights, adapters merged in
                from genlab.finetune import load_adapted
                load_adapted(self.model, self.cfg, self.run_dir, sd)
            else:
                self.model.load_state_dict(sd)
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint {c.name} does not fit the run's config: "
                                  f"{str(e).splitlines()[0]}") from None
        self.model.to(self.device).eval()
        self.pipeline = build_pipeline(self.cfg, self.meta)
        self.family = getattr(self.model, "family", "image")
        self.tokenizer = load_tokenizer(self.run_dir / "tokenizer.json") if self.family == "text" else None

    @property
    def step(self) -> int:
        return self.checkpoint.state["state"]["step"]

    def sample(self, n: int, *, seed: int = 0, label: int | None = None,
               **options) -> tuple[torch.Tensor, torch.Tensor | None]:
        """n samples as (uint8 (n, C, H, W) at the data's native size, labels or None); audio runs:
        (float32 (n, T) waveforms in [-1, 1] at `meta["sample_rate"]`, labels or None).
        `options` go to the model's `sample` (diffusion: sampler, steps, guidance, eta)."""
        if self.family == "text":
            raise ConfigError(f"{self.run_dir} is a text run: sample it with a prompt (Run.generate, "
                              "genlab sample RUN --prompt TEXT)")
        if self.family == "audio":
            return draw_audio(self.model, n, seed=seed, label=label, options=options)
        return draw_samples(self.model, self.pipeline, n, seed=seed, label=label,
                            native_size=tuple(self.meta["native_size"]), options=options)

    def compile(self) -> Run:
        """torch.compile, in place, the network sampling evaluates at every step: a diffusion
        run's UNet, a GPT's one-token step and chunks of 8 of them (`GPT.compile_decode`). The
        first batch of each size then waits for the compiler (seconds to a minute; on CPU a C++
        compiler is needed); later steps run faster: 1.23 against 1.42-1.52 ms per 28x28 image for ddpm-mnist on one
        Xeon thread; benchmarks/results/gpt-shakespeare.md for the GPT.

        Returns:
            this Run, for `genlab.load(run_dir).compile().sample(...)`.
        """
        name = self.cfg.model_name
        if getattr(self, "backend", "torch") == "onnxruntime":
            raise ConfigError("--compile is for the torch backend; onnxruntime runs its own graph "
                              "(drop --compile or --backend onnxruntime)")
        if name not in ("diffusion", "gpt"):
            raise ConfigError(f"--compile is for diffusion and GPT runs; {self.run_dir} is a {name} run "
                              "(drop --compile)")
        if self.device.type == "cpu" and cxx_compiler() is None:
            raise ConfigError("--compile needs a C++ compiler on CPU (none found: install g++ or set CXX), "
                              "or drop --compile")
        if name == "gpt":
            self.model.compile_decode()
        else:
            self.model.net.compile(dynamic=False)  # one kernel set per batch size: no slower dynamic-shape code
        return self

    def data(self, data_root: str | os.PathLike | None = None) -> ImageData | TextData:
        """The run's dataset, from `data_root` or the root the run was trained from."""
        root = data_root or recorded_data_root(self.run_dir)
        return load_data(self.cfg, resolve_data_root(root), self.run_dir)

    def generate(self, prompt: str, max_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, repetition_penalty: float = 1.0, stop: str | None = None,
                 seed: int = 0, use_cache: bool = True) -> Iterator[str]:
        """Stream the continuation of `prompt` (text runs), piece by piece."""
        from genlab.models.autoregressive.generation import SamplingConfig, stream_text

        if self.family != "text":
            raise ConfigError(f"--prompt is for text runs; {self.run_dir} is a {self.cfg.model_name} "
                              f"{self.family} model (drop --prompt)")
        if max_tokens < 0:
            raise ConfigError(f"--max-tokens must be >= 0, got {max_tokens}")
        return stream_text(self.model, self.tokenizer, prompt, max_tokens,
                           SamplingConfig(temperature, top_k, top_p, repetition_penalty),
                           seed=seed, stop=stop, use_cache=use_cache)


def load(run_dir: str | os.PathLike, checkpoint: str = "last", device: str = "cpu") -> Run:
    """Load a run directory's newest (or `best`) checkpoint for sampling; `demo:NAME` loads a
    demo model shipped with genlab (see genlab.demos)."""
    return Run(run_dir, checkpoint, device)
