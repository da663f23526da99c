"""Configuration: one dataclass per section (data, train, and the model's own config),
named presets, YAML files and `--set section.key=value` overrides, all type-checked.

A run's config is built in three layers, each a nested dict until the very end:

    preset (or the `preset:` a YAML file names)  <-  YAML file  <-  --set overrides

and only then turned into dataclasses, so every layer is checked by the same code.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from genlab.errors import ConfigError


# Two image domains, for the translation models (genlab.data.paired reads them): paired
# (pix2pix or CycleGAN) and unpaired (CycleGAN only).
PAIRED_DATASETS = ("mnist-edges", "fashion-edges", "paired-folder")
UNPAIRED_DATASETS = ("mnist-fashion", "unpaired-folder")
TRANSLATION_DATASETS = PAIRED_DATASETS + UNPAIRED_DATASETS
TRANSLATION_MODELS = ("pix2pix", "cyclegan")
SEMI_SUPERVISED_MODELS = ("semivae",)  # models that take unlabelled training images (label -1)
DATASETS = ("mnist", "fashion-mnist", "digits", "folder", "array", "text", "smiles",
            "cora", "citeseer", "edgelist", "community", "grid", "ego", "fsdd", "audio",
            "molecules",  # SMILES files as atom/bond graphs, for molgraphrnn (genlab.data.molecule_graphs)
            *TRANSLATION_DATASETS,
            "photos")  # random crops of colour photos, the content images of style transfer (genlab.data.photos)


@dataclass
class DataConfig:
    """Where the data comes from and how a batch is prepared."""

    dataset: str = "mnist"  # mnist | fashion-mnist | digits | folder | array | text | cora | citeseer | edgelist
    #                         | community | grid | ego (graphs) | fsdd | audio (a folder of WAVs)
    #                         | molecules (SMILES files as atom/bond graphs: data.path, column, max_molecules)
    path: str | None = None  # folder or .npz/.npy (text: a UTF-8 file or folder), relative to the data root
    image_size: int | None = None  # resize to this (square); None = native size
    channels: int | None = None  # 1 or 3 for image folders; None = from the data
    normalize: str = "minus_one_one"  # minus_one_one | zero_one | standardize
    binarize: bool = False  # dynamic binarisation: x ~ Bernoulli(pixel / 255), redrawn per batch
    hflip: bool = False  # random horizontal flips
    crop_padding: int = 0  # random crops after zero-padding this many pixels
    val_size: float = 5000  # images held out of train for validation (a fraction if < 1)
    train_size: int | None = None  # keep only this many training images (a fixed random choice); None = all
    # Semi-supervised runs (semivae): keep the labels of only this many training images (a class-balanced
    # choice fixed by train.seed); the others get label -1. Val/test keep theirs. None = every label.
    num_labels: int | None = None
    labelled_batch: int = 32  # with num_labels: images drawn from the labelled ones, added to each batch
    train_on: str = "train"  # train | test: "test" trains on the test split (a reference model for
    #                          `genlab audit --reference`); its test split is then the training split
    test_size: float = 0.1  # for folders/arrays without a test split: fraction or count
    download: bool = False  # MNIST/Fashion-MNIST: fetch with torchvision when missing
    tokenizer: str = "char"  # text: char | bpe (byte-level BPE trained on the corpus) | smiles | selfies
    #                          (molecules: data.path is a CSV/SMI of SMILES, one molecule a line; genlab.data.molecules)
    column: str = "SMILES"  # molecules: the CSV column holding SMILES
    kekulize: bool = False  # molecules, tokenizer smiles: train on Kekule SMILES (explicit single and double bonds,
    #                         no aromatic lowercase atoms), which a model cannot write as an unkekulizable ring
    max_molecules: int | None = None  # molecules: a fixed random choice of this many lines; None = all
    reference_size: int | None = None  # molecules: evaluate against this many reference molecules; None = all
    # text: how batches cut the corpus, set from the model (its `text_batches`), not a choice: null = windows of
    # the token stream (GPT, LSTM); molecules = one molecule a padded row (smilesvae; genlab.data.molecules)
    batches: str | None = None
    # molecules, SMILES GPT/LSTM: goal-directed generation. Each molecule is prefixed by the token of its
    # property's quantile bin (<qed:7>), so `genlab sample --condition` can ask for a bin
    # (genlab.data.molecule_condition). None = unconditioned.
    condition: str | None = None  # qed | logp | sa | weight
    condition_bins: int = 10  # quantile bins of the training molecules' property
    vocab_size: int = 1024  # text, bpe: vocabulary size (256 bytes + merges)
    features: str | None = None  # edgelist graphs: a CSV of node features (one row per node)
    num_graphs: int = 200  # synthetic small-graph families (community, grid, ego): how many to generate
    sample_rate: int | None = None  # audio: resample every file to this rate (Hz); None = the data's own
    audio_length: int = 5120  # audio: samples per clip; longer recordings are centre-cropped, shorter padded
    style: str | None = None  # style-transfer runs: the style image (a file, or sample:flower.jpg / sample:china.jpg)


@dataclass
class TrainConfig:
    """The training engine's settings. `steps` and `minutes` are budgets (run totals; training
    stops at whichever ends first). The LR schedule is laid out over `schedule_steps`, which a
    new run fixes to the preset's `steps`, so `--steps` changes when a run stops, not its LR."""

    steps: int = 10_000
    minutes: float | None = None
    schedule_steps: int | None = None
    batch_size: int = 128
    accum: int = 1  # gradient accumulation micro-batches per step
    optimizer: str = "adam"  # adam | adamw | muon (Muon for Linear/Conv weights, AdamW for the rest)
    lr: float = 1e-3
    muon_lr: float = 0.02  # the Muon matrices' learning rate (train.optimizer=muon), scheduled like lr
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    schedule: str = "cosine"  # cosine | constant
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    grad_clip: float | None = 1.0
    ema_decay: float = 0.0  # 0 disables EMA
    # the EMA's decay at step t is min(ema_decay, (1 + t) / (ema_warmup + t)): its window grows with
    # the run (about t / (ema_warmup - 1) steps) until ema_decay caps it
    ema_warmup: float = 10.0
    amp: str = "auto"  # auto (bf16 where it makes this model's step faster: Trainer.choose_precision) | bf16 | off
    # torch.compile the training loss (forward and backward, fused kernels); the first step pays the
    # compilation (tens of seconds on a CPU, which needs a C++ compiler), so it pays in longer runs
    compile: bool = False
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None
    log_every: int = 50
    eval_every: int = 1000
    eval_batches: int = 20
    test_batches: int | None = None  # the end-of-training test report's batches (None: the whole test split)
    early_stop_patience: int | None = None  # evaluations without improvement
    sample_every: int = 1000
    ckpt_every: int = 1000
    keep_last: int = 2
    trackers: tuple[str, ...] = ()  # experiment trackers beside TensorBoard: wandb, mlflow (genlab.engine.trackers)
    # fine-tuning (genlab.finetune): start from another run's weights, keep parts fixed, train adapters only
    init_from: str | None = None  # a run directory (or demo:NAME) whose matching tensors start this run
    freeze: tuple[str, ...] = ()  # parameter-name prefixes (e.g. encoder) that do not train
    lora_rank: int = 0  # > 0: LoRA adapters of this rank on the base's layers; only they train
    lora_alpha: float | None = None  # adapter scale alpha / rank; null = rank (scale 1)
    lora_layers: tuple[str, ...] = ("linear", "conv")  # layer types that get adapters
    replay: float = 0.0  # with init_from on data that grew: share of each epoch drawn from the images it saw


@dataclass
class PrivacyConfig:
    """Differentially private training (DP-SGD through Opacus, see genlab.engine.privacy).
    Off unless `epsilon` or `noise_multiplier` is set (not both); then `train.grad_clip` is
    replaced by the per-example clip `max_grad_norm`."""

    epsilon: float | None = None  # target epsilon after train.steps; sets the noise multiplier
    delta: float = 1e-5  # must be < 1 / (training examples)
    max_grad_norm: float = 1.0  # C: each example's gradient is clipped to this L2 norm
    noise_multiplier: float | None = None  # sigma, instead of a target epsilon
    accountant: str = "rdp"  # rdp | prv (Opacus's accountants)

    @property
    def enabled(self) -> bool:
        return self.epsilon is not None or self.noise_multiplier is not None

    def validate(self) -> None:
        if self.epsilon is not None and self.noise_multiplier is not None:
            raise ConfigError("set privacy.epsilon or privacy.noise_multiplier, not both")
        if self.epsilon is not None and not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ConfigError(f"privacy.epsilon must be a finite number > 0, got {self.epsilon}")
        if self.noise_multiplier is not None and not (math.isfinite(self.noise_multiplier)
                                                      and self.noise_multiplier > 0):
            raise ConfigError(f"privacy.noise_multiplier must be a finite number > 0, got {self.noise_multiplier}")
        if not 0 < self.delta < 1:
            raise ConfigError(f"privacy.delta must be in (0, 1), got {self.delta}")
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ConfigError(f"privacy.max_grad_norm must be a finite number > 0, got {self.max_grad_norm}")
        if self.accountant not in ("rdp", "prv"):
            raise ConfigError(f"privacy.accountant must be rdp or prv, got {self.accountant!r}")


@dataclass
class RunConfig:
    """A whole run: model section (its own dataclass, chosen by `model.name`), data, train."""

    model: Any
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    preset: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "model": {"name": self.model_name, **_asdict(self.model)},
            "data": _asdict(self.data),
            "train": _asdict(self.train),
            "privacy": _asdict(self.privacy),
        }

    @property
    def model_name(self) -> str:
        from genlab.registry import model_name_of

        return model_name_of(self.model)


def _asdict(obj: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


# --------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """YAML 1.2-style scalars: only true/false are booleans (so `amp: off` stays a string)
    and 3e-4 is a float."""


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float")]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.copy().items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
               r"|[0-9][0-9_]*[eE][-+]?[0-9]+|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def yaml_load(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506  (a SafeLoader subclass)


# --------------------------------------------------------------------------- building


def close_matches(word: str, choices: typing.Iterable[str]) -> str:
    """' (did you mean: a, b?)' or '' when nothing is close."""
    m = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.5)
    return f" (did you mean: {', '.join(m)}?)" if m else ""


def deep_update(base: dict, upd: dict) -> dict:
    """Recursively merge `upd` into a copy of `base`."""
    out = dict(base)
    for k, v in upd.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_update(out[k], v)
        else:
            out[k] = v
    return out


def parse_set(items: typing.Sequence[str]) -> dict:
    """Turn ['train.lr=3e-4', 'model.beta=4'] into a nested dict. Values are parsed as YAML
    scalars (so 3e-4, true, null, [1, 2] work); types are checked later against the dataclass."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"--set key must be section.key (e.g. train.lr), got {key!r}")
        try:
            value = yaml_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        out.setdefault(parts[0], {})[parts[1]] = value
    return out


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`, converting where lossless (int -> float,
    list -> tuple, numeric strings). Raises ConfigError naming `where`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
            value = [yaml_load(v) for v in value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} expects a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{where} expects {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where} expects true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{where} expects an integer, got {value!r}")
        try:
            f = float(value)
        except ValueError:
            raise ConfigError(f"{where} expects an integer, got {value!r}") from None
        if f != int(f):
            raise ConfigError(f"{where} expects an integer, got {value!r}")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where} expects a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} expects a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where} expects a string, got {value!r}")
        return str(value)
    return value


def build_section(cls: type, values: dict, section: str) -> Any:
    """Instantiate dataclass `cls` from `values`, rejecting unknown keys with close matches."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in values.items():
        if k not in names:
            raise ConfigError(f"unknown key {section}.{k}{close_matches(k, names)}")
        kwargs[k] = _coerce(v, hints[k], f"{section}.{k}")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def build_config(tree: dict) -> RunConfig:
    """Turn a merged nested dict {preset, model: {name, ...}, data, train} into a RunConfig."""
    from genlab.registry import get_model

    unknown = set(tree) - {"preset", "model", "data", "train", "privacy"}
    if unknown:
        k = sorted(unknown)[0]
        raise ConfigError(f"unknown section {k!r}{close_matches(k, ['model', 'data', 'train', 'privacy'])}")
    model_tree = dict(tree.get("model") or {})
    name = model_tree.pop("name", None)
    if not name:
        raise ConfigError("the config has no model.name; start from a preset (genlab presets)")
    model_cls, net_cls = get_model(name)
    cfg = RunConfig(
        model=build_section(model_cls, model_tree, "model"),
        data=build_section(DataConfig, {"batches": getattr(net_cls, "text_batches", None), **(tree.get("data") or {})},
                           "data"),
        train=build_section(TrainConfig, tree.get("train") or {}, "train"),
        privacy=build_section(PrivacyConfig, tree.get("privacy") or {}, "privacy"),
        preset=tree.get("preset"),
    )
    validate_run(cfg)
    return cfg


def validate_run(cfg: RunConfig) -> None:
    """Cross-field and range checks of a whole run config (ConfigError naming the key)."""
    from genlab.registry import get_model

    t, d = cfg.train, cfg.data
    reads = getattr(get_model(cfg.model_name)[1], "text_batches", None)  # what data.batches must be
    checks = [
        (t.steps >= 1, f"train.steps must be >= 1, got {t.steps}"),
        (t.schedule_steps is None or t.schedule_steps >= 1, "train.schedule_steps must be >= 1"),
        (t.minutes is None or (math.isfinite(t.minutes) and t.minutes > 0),
         f"train.minutes must be a finite number > 0 (or null for no time limit), got {t.minutes}"),
        (t.threads is None or t.threads >= 1, f"train.threads must be >= 1 (or null for all cores), got {t.threads}"),
        (t.batch_size >= 1, "train.batch_size must be >= 1"),
        (t.accum >= 1, "train.accum must be >= 1"),
        (t.batch_size % t.accum == 0, "train.batch_size must be divisible by train.accum"),
        (t.lr > 0, "train.lr must be > 0"),
        (0 <= t.ema_decay < 1, "train.ema_decay must be in [0, 1)"),
        (t.ema_warmup > 1, f"train.ema_warmup must be > 1, got {t.ema_warmup}"),
        (t.keep_last >= 1, "train.keep_last must be >= 1"),
        (t.optimizer in ("adam", "adamw", "muon"), f"train.optimizer must be adam, adamw or muon, got {t.optimizer!r}"),
        (t.muon_lr > 0, "train.muon_lr must be > 0"),
        (t.schedule in ("cosine", "constant"), f"train.schedule must be cosine or constant, got {t.schedule!r}"),
        (t.amp in ("auto", "bf16", "off"), f"train.amp must be auto, bf16 or off, got {t.amp!r}"),
        (not (t.compile and cfg.privacy.enabled), "train.compile cannot trace Opacus's per-example gradient hooks: "
         "train private runs with train.compile=false"),
        (t.device in ("auto", "cpu", "cuda") or t.device.startswith("cuda:"),
         f"train.device must be auto, cpu or cuda, got {t.device!r}"),
        (d.normalize in ("minus_one_one", "zero_one", "standardize"),
         f"data.normalize must be minus_one_one, zero_one or standardize, got {d.normalize!r}"),
        (d.dataset in DATASETS, f"unknown data.dataset {d.dataset!r}{close_matches(d.dataset, DATASETS)}"),
        (d.dataset != "smiles" or d.tokenizer in ("smiles", "selfies"),
         f"data.dataset=smiles reads molecules: set data.tokenizer=smiles or selfies, got {d.tokenizer!r}"),
        (d.tokenizer in ("char", "bpe", "smiles", "selfies"),
         f"data.tokenizer must be char, bpe, smiles or selfies, got {d.tokenizer!r}"),
        (not d.kekulize or d.tokenizer == "smiles",
         f"data.kekulize rewrites SMILES in Kekule form: it needs data.tokenizer=smiles, got {d.tokenizer!r}"),
        (d.max_molecules is None or d.max_molecules >= 2, "data.max_molecules must be >= 2, or null for all"),
        (d.reference_size is None or d.reference_size >= 2, "data.reference_size must be >= 2, or null for all"),
        (d.batches == reads, f"data.batches follows the model ({cfg.model_name} reads {reads or 'windows'}): "
         "drop data.batches"),
        (d.batches != "molecules" or d.dataset == "smiles" or d.tokenizer in ("smiles", "selfies"),
         f"{cfg.model_name} reads molecules: set data.dataset=smiles (a CSV/SMI of SMILES), got {d.dataset}"),
        (d.condition in (None, "qed", "logp", "sa", "weight"),
         f"data.condition must be qed, logp, sa or weight (or null: unconditioned), got {d.condition!r}"),
        (d.condition is None or (d.tokenizer in ("smiles", "selfies") and cfg.model_name in ("gpt", "lstm")),
         f"data.condition conditions a SMILES/SELFIES GPT or LSTM; this is a {cfg.model_name} run on "
         f"data.tokenizer={d.tokenizer}: drop data.condition"),
        (d.condition_bins >= 2, f"data.condition_bins must be >= 2, got {d.condition_bins}"),
        (d.crop_padding >= 0, "data.crop_padding must be >= 0"),
        (all(v >= 1 for v in (t.log_every, t.eval_every, t.sample_every, t.ckpt_every, t.eval_batches)),
         "train.log_every, eval_every, sample_every, ckpt_every and eval_batches must be >= 1"),
        (t.test_batches is None or t.test_batches >= 1, "train.test_batches must be >= 1 (or null: the whole split)"),
        (t.warmup_steps >= 0, "train.warmup_steps must be >= 0"),
        (t.grad_clip is None or (math.isfinite(t.grad_clip) and t.grad_clip >= 0),
         "train.grad_clip must be >= 0 (0 or null: no clipping)"),
        (t.weight_decay >= 0, "train.weight_decay must be >= 0"),
        (0 <= t.min_lr_ratio <= 1, "train.min_lr_ratio must be in [0, 1]"),
        (t.early_stop_patience is None or t.early_stop_patience >= 1,
         "train.early_stop_patience must be >= 1, or null for no early stopping"),
        (math.isfinite(t.lr), "train.lr must be finite"),
        (d.image_size is None or 1 <= d.image_size <= 4096, "data.image_size must be in 1..4096, or null"),
        (d.channels in (None, 1, 3), "data.channels must be 1, 3 or null (from the data)"),
        (d.val_size >= 0 and d.test_size >= 0, "data.val_size and data.test_size must be >= 0"),
        (d.num_graphs >= 1, "data.num_graphs must be >= 1"),
        (d.train_size is None or d.train_size >= 1, "data.train_size must be >= 1, or null for the whole split"),
        (not (cfg.privacy.enabled and (d.num_labels is not None or cfg.model_name in SEMI_SUPERVISED_MODELS)),
         "private training does not support semi-supervised runs yet (Poisson batches would hold almost no "
         "labels): drop the privacy.* settings"),
        (d.num_labels is None or d.num_labels >= 1, "data.num_labels must be >= 1, or null for every label"),
        (d.labelled_batch >= 1, f"data.labelled_batch must be >= 1, got {d.labelled_batch}"),
        (d.num_labels is None or cfg.model_name in SEMI_SUPERVISED_MODELS,
         f"data.num_labels leaves training images unlabelled, which only {', '.join(SEMI_SUPERVISED_MODELS)} "
         f"can learn from; a {cfg.model_name} run needs every label: drop data.num_labels"),
        (d.train_on in ("train", "test"), f"data.train_on must be train or test, got {d.train_on!r}"),
        (d.sample_rate is None or 1000 <= d.sample_rate <= 192_000, "data.sample_rate must be in 1000..192000 Hz, or null"),
        (16 <= d.audio_length <= 10_000_000, "data.audio_length must be in 16..10000000 samples"),
        (d.vocab_size >= 257 or d.tokenizer != "bpe", "data.vocab_size must be >= 257 (256 bytes + merges)"),
        (not d.binarize or d.normalize == "zero_one", "data.binarize needs data.normalize=zero_one"),
        (cfg.model_name in TRANSLATION_MODELS or d.dataset not in TRANSLATION_DATASETS,
         f"data.dataset={d.dataset} holds two image domains, for pix2pix or cyclegan; a {cfg.model_name} run "
         "reads one dataset: set data.dataset to its own (its preset: `genlab presets --show NAME`)"),
        (cfg.model_name not in TRANSLATION_MODELS or d.dataset in TRANSLATION_DATASETS,
         f"{cfg.model_name} translates between two image domains; set data.dataset to one of "
         f"{', '.join(TRANSLATION_DATASETS if cfg.model_name == 'cyclegan' else PAIRED_DATASETS)}"),
        (cfg.model_name != "pix2pix" or d.dataset not in UNPAIRED_DATASETS,
         f"pix2pix learns from pairs; data.dataset={d.dataset} is unpaired: use cyclegan, or one of "
         f"{', '.join(PAIRED_DATASETS)}"),
        (d.style is None or cfg.model_name == "style",
         f"data.style is the style image of style-transfer runs; this is a {cfg.model_name} run: drop data.style"),
        (cfg.model_name != "style" or d.style,
         "style-transfer runs need a style image: --set data.style=IMAGE (a file, or sample:flower.jpg)"),
        (cfg.model_name != "style" or d.normalize == "zero_one",
         "style-transfer runs need data.normalize=zero_one (the feature network reads pixels in [0, 1])"),
        (t.lora_rank >= 0, f"train.lora_rank must be >= 0 (0: no adapters), got {t.lora_rank}"),
        (not t.lora_rank or t.init_from, "LoRA adapts a trained model: set train.init_from=RUN_DIR (--init-from) "
         "with train.lora_rank"),
        (not t.lora_rank or set(t.lora_layers) <= {"linear", "conv"} and t.lora_layers,
         f"train.lora_layers must list linear and/or conv, got {list(t.lora_layers)}"),
        (t.lora_alpha is None or (math.isfinite(t.lora_alpha) and t.lora_alpha > 0),
         "train.lora_alpha must be a number > 0, or null for the rank"),
        (not (t.lora_rank and cfg.privacy.enabled), "private training does not support LoRA adapters yet: drop "
         "train.lora_rank or the privacy.* settings"),
        (0 <= t.replay < 1, f"train.replay must be in [0, 1), got {t.replay}"),
        (not t.replay or t.init_from, "train.replay replays the data of the run it continues: set "
         "train.init_from=RUN_DIR (--init-from)"),
        (all(isinstance(f, str) and f.strip(". ") for f in t.freeze),
         f"train.freeze must list parameter-name prefixes such as encoder, got {list(t.freeze)}"),
        (set(t.trackers) <= {"wandb", "mlflow"} and len(set(t.trackers)) == len(t.trackers),
         f"train.trackers must list wandb and/or mlflow (each once), got {list(t.trackers)}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)


# --------------------------------------------------------------------------- entry points


def load_tree(source: str) -> dict:
    """The nested dict for a preset name or a YAML file (which may name a `preset:` base)."""
    from genlab.presets import PRESETS

    if source.endswith((".yaml", ".yml")):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file {source} not found")
        try:
            tree = yaml_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError:
            raise ConfigError(f"{source} is not a UTF-8 text file; give a YAML config") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{source} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{source} must hold a mapping of sections (model, data, train)")
        return with_preset(tree)
    if source not in PRESETS:
        raise ConfigError(f"unknown preset {source!r}{close_matches(source, PRESETS)}; "
                          "list them with `genlab presets`")
    return deep_update(PRESETS[source].tree, {"preset": source})


def with_preset(tree: dict) -> dict:
    """`tree` over the preset (or YAML file) its `preset:` key names; `tree` itself when it names none.
    YAML files and dicts given to genlab.train/resolve start from a preset the same way."""
    base = tree.get("preset")
    if not base:
        return tree
    if not isinstance(base, str):
        raise ConfigError(f"preset must be a preset name or FILE.yaml, got {base!r}")
    return deep_update(load_tree(base), tree)


def resolve(source: str | dict, overrides: typing.Sequence[str] = ()) -> RunConfig:
    """Preset name, YAML path or nested dict (which may name a `preset:` base, like a YAML
    file), plus `--set` items -> a checked RunConfig."""
    if isinstance(source, Path):
        source = str(source)
    if not isinstance(source, (str, dict)):
        raise ConfigError(f"a config is a preset name, FILE.yaml or a dict, got {type(source).__name__}")
    tree = load_tree(source) if isinstance(source, str) else with_preset(dict(source))
    return build_config(deep_update(tree, parse_set(overrides)))


def save_config(cfg: RunConfig, path: Path) -> None:
    from genlab.engine.checkpoint import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def load_config(path: Path) -> RunConfig:
    if not path.is_file():
        raise ConfigError(f"{path} not found; is this a genlab run directory?")
    try:
        tree = yaml_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        raise ConfigError(f"{path} is not valid YAML; the run directory is damaged") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path} does not hold a run config; the run directory is damaged")
    return build_config(tree)
