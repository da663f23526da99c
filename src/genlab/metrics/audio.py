"""Audio metrics: the `digits-fsdd` spoken-digit judge and the scores computed from it.

The judge is a small CNN on log-mel features of 8 kHz speech (FSDD's ten digits). It judges
whether a conditional generator's clips say the requested digit (`label_accuracy`), gives
the class probabilities of an Inception-style score (`audio_is`) and, through `features`
(the 128-d penultimate layer), the embedding of a Frechet distance (`frechet_distance`, FAD
style: the FID formula of `metrics.sample_quality` on judge features, not on VGGish ones, so
its values are comparable only with other "FAD (digits-fsdd)" numbers).

Weights ship as `genlab/weights/digits-fsdd.safetensors`, trained by
`scripts/train_audio_classifier.py`; the file's metadata records the sha256 of its tensors,
checked on load (a CheckpointError, one line, for a missing, corrupt or mismatched file).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from genlab.audio import check_waveforms, log_mel, resample
from genlab.errors import CheckpointError, ConfigError, ShapeError
from genlab.metrics import sample_quality as sq

JUDGE = "digits-fsdd"
KNOWN_JUDGES = (JUDGE,)
JUDGE_SAMPLE_RATE = 8000  # Hz: waveforms at other rates are resampled before judging
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


# --------------------------------------------------------------------------- the judge


class DigitJudge(nn.Module):
    """Spoken-digit classifier for float waveforms in [-1, 1] at 8 kHz, of any length.

    log-mel (64 bands, 256-point FFT, hop 64 = 8 ms) -> fixed standardisation (training-set
    mean and std, buffers) -> three 1-D convs over time (mel bands as channels; kernel 5,
    dilations 1, 2, 4; GroupNorm, ReLU) -> mean and max over time -> fc 128 (the feature
    layer, post-ReLU) -> dropout -> fc num_classes. GroupNorm makes the output of a clip
    independent of the batch it is in; the global pooling makes any clip length work.
    """

    feature_dim = 128
    n_mels = 64

    def __init__(self, num_classes: int = 10, width: int = 128, dropout: float = 0.2):
        super().__init__()
        self.register_buffer("mel_mean", torch.zeros(()))
        self.register_buffer("mel_std", torch.ones(()))
        self.conv1 = nn.Conv1d(self.n_mels, width, 5, padding=2, bias=False)
        self.norm1 = nn.GroupNorm(8, width)
        self.conv2 = nn.Conv1d(width, width, 5, padding=4, dilation=2, bias=False)
        self.norm2 = nn.GroupNorm(8, width)
        self.conv3 = nn.Conv1d(width, width, 5, padding=8, dilation=4, bias=False)
        self.norm3 = nn.GroupNorm(8, width)
        self.fc1 = nn.Linear(2 * width, self.feature_dim)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(self.feature_dim, num_classes)

    @staticmethod
    def mel(x: torch.Tensor) -> torch.Tensor:
        """float (B, T) or (B, 1, T) at 8 kHz -> (B, 64, frames) natural-log mel power; clips
        shorter than one FFT window are zero-padded to it."""
        if x.dim() == 3:
            x = x[:, 0]
        if x.shape[-1] < 256:
            x = F.pad(x, (0, 256 - x.shape[-1]))
        return log_mel(x, JUDGE_SAMPLE_RATE, n_fft=256, hop=64, n_mels=DigitJudge.n_mels)

    def features_from_mel(self, m: torch.Tensor) -> torch.Tensor:
        """(B, 64, frames) log-mel -> (B, 128) penultimate activations."""
        h = (m - self.mel_mean) / self.mel_std
        h = F.relu(self.norm1(self.conv1(h)))  # (B, W, frames)
        h = F.relu(self.norm2(self.conv2(h)))  # (B, W, frames)
        h = F.relu(self.norm3(self.conv3(h)))  # (B, W, frames)
        pooled = torch.cat([h.mean(-1), h.amax(-1)], dim=1)  # (B, 2W)
        return F.relu(self.fc1(pooled))  # (B, 128)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: float (B, T) or (B, 1, T) at 8 kHz -> (B, 128) post-ReLU penultimate activations."""
        return self.features_from_mel(self.mel(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: float (B, T) or (B, 1, T) at 8 kHz -> logits (B, num_classes)."""
        return self.fc2(self.drop(self.features(x)))


def weights_path(name: str = JUDGE) -> Path:
    """Path of the shipped weights of judge `name` (ConfigError if unknown)."""
    if name not in KNOWN_JUDGES:
        raise ConfigError(f"unknown audio judge {name!r}; known: {', '.join(KNOWN_JUDGES)}")
    return WEIGHTS_DIR / f"{name}.safetensors"


def tensors_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors' names, dtypes, shapes and bytes, in name order: the digest
    the weights file records in its metadata (a file cannot hold its own file hash)."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def read_judge_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a judge weights file, verified against its recorded sha256."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"audio judge weights not found at {path}; "
                              "train them with scripts/train_audio_classifier.py")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118  (safe_open is not iterable)
    except Exception as e:  # noqa: BLE001  (safetensors raises several types on bad files)
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"cannot read audio judge weights {path} ({first}); "
                              "re-train them with scripts/train_audio_classifier.py") from None
    if "sha256" not in meta:
        raise CheckpointError(f"audio judge weights {path} record no sha256; "
                              "re-train them with scripts/train_audio_classifier.py")
    if tensors_sha256(state) != meta["sha256"]:
        raise CheckpointError(f"audio judge weights {path} are corrupt (sha256 of the tensors differs from "
                              "the recorded one); re-train them with scripts/train_audio_classifier.py")
    return state, meta


def load_judge(name: str = JUDGE, device: str | torch.device = "cpu", *,
               path: str | Path | None = None) -> DigitJudge:
    """Build the judge and load its shipped (or `path`'s) weights, in eval mode on `device`."""
    path = Path(path) if path is not None else weights_path(name)
    state, meta = read_judge_file(path)
    try:
        cfg = json.loads(meta.get("config", "{}"))
        model = DigitJudge(**cfg)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except (RuntimeError, TypeError, ValueError) as e:
        raise CheckpointError(f"audio judge weights {path} do not fit DigitJudge: "
                              f"{str(e).splitlines()[0]}") from None
    model.meta = meta  # training record: test accuracy, command, ...
    return model.to(device).eval()


# --------------------------------------------------------------------------- judging


@dataclass
class JudgeExtractor:
    """The judge as a feature extractor: `(waveforms (N, T), at `sample_rate`) -> (features
    (N, 128), logits (N, 10))`, float32 on the CPU, in batches."""

    model: DigitJudge
    sample_rate: int
    name: str = JUDGE
    batch_size: int = 256

    @property
    def dim(self) -> int:
        return self.model.feature_dim

    @torch.no_grad()
    def __call__(self, waveforms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = check_waveforms(torch.as_tensor(waveforms), f"the {self.name} judge")  # (N, T)
        if self.sample_rate != JUDGE_SAMPLE_RATE:
            x = torch.from_numpy(resample(x.float().numpy(), self.sample_rate, JUDGE_SAMPLE_RATE))
        dev = next(self.model.parameters()).device
        feats, logits = [], []
        for i in range(0, len(x), self.batch_size):
            f = self.model.features(x[i:i + self.batch_size].to(dev).float())
            feats.append(f.float().cpu())
            logits.append(self.model.fc2(f).float().cpu())  # dropout is off in eval mode
        if not feats:
            return torch.empty(0, self.dim), torch.empty(0, self.model.fc2.out_features)
        return torch.cat(feats), torch.cat(logits)

    @property
    def sha256(self) -> str:
        """The recorded digest of the judge's weights (changes whenever they are retrained)."""
        return getattr(self.model, "meta", {}).get("sha256", "untrained")


def get_judge(sample_rate: int, device: str | torch.device = "cpu", name: str = JUDGE) -> JudgeExtractor:
    """The shipped judge, taking waveforms at `sample_rate` Hz."""
    return JudgeExtractor(load_judge(name, device), int(sample_rate), name)


# --------------------------------------------------------------------------- metrics (pure)


def label_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, list[float]]:
    """Fraction of clips whose judged class (argmax of logits (N, K)) is the requested label
    (N,), and the same per class, for the classes present (in class order)."""
    labels = torch.as_tensor(labels).long().cpu()
    if logits.dim() != 2 or labels.shape != (len(logits),):
        raise ShapeError(f"label_accuracy needs logits (N, K) and labels (N,), got {tuple(logits.shape)} "
                         f"and {tuple(labels.shape)}")
    if len(labels) == 0:
        raise ShapeError("label_accuracy needs at least one clip")
    right = logits.argmax(1).cpu() == labels
    per = [right[labels == c].double().mean().item() for c in range(logits.shape[1]) if (labels == c).any()]
    return right.double().mean().item(), per


def is_splits(n: int) -> int:
    """Splits of the Inception-style score for n clips: 10 of at least 100 clips each, fewer
    (down to 1) for smaller n, since the marginal p(y) of a tiny split is a poor estimate."""
    return max(1, min(10, n // 100))


def audio_is(logits: torch.Tensor, splits: int = 1) -> tuple[float, float]:
    """Inception-style score exp(E_x KL(p(y|x) || p(y))) of the judge's logits (N, K) ->
    (mean, std) over `splits` consecutive splits; 1 (one class, or no confidence) .. K (all
    K classes in equal shares, each clip judged with certainty). The formula is
    `sample_quality._compute_inception_score`, shared with the image IS."""
    if logits.dim() != 2 or len(logits) < splits or splits < 1:
        raise ShapeError(f"audio_is needs logits (N, K) with N >= splits = {splits}, got {tuple(logits.shape)}")
    return sq._compute_inception_score(logits, splits=splits)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to feature sets a (N, D) and b (M, D):
    the FID formula (`sample_quality.fid`) in whichever feature space a and b come from."""
    fa, fb = sq.FeatureSet(), sq.FeatureSet()
    fa.update(a)
    fb.update(b)
    return sq.fid(fa, fb)


def real_time_factor(n_clips: int, clip_samples: int, sample_rate: int, seconds: float) -> float:
    """Seconds of audio generated per second of wall time (> 1: faster than real time)."""
    if seconds <= 0:
        return math.inf
    return n_clips * clip_samples / sample_rate / seconds
