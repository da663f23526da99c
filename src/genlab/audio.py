"""Audio signals: WAV reading and writing, resampling, mu-law and linear quantisation, log-mel
features and spectrogram pictures. Waveforms are float32 in [-1, 1]; a batch is (N, T) or (N, 1, T).

Reading goes through soundfile (libsndfile), resampling through scipy's polyphase filter
(`scipy.signal.resample_poly`); the mel filterbank is the HTK-scale triangle bank that
librosa/torchaudio build with `htk=True, norm=None`.
"""

from __future__ import annotations

import io
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from genlab.engine.checkpoint import atomic_write_bytes
from genlab.errors import DataError, ShapeError


# --------------------------------------------------------------------------- files


def read_wav(path: str | Path, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """A mono audio file -> (float32 (T,) in [-1, 1], sample rate). With `sample_rate` set, a
    file at another rate is resampled to it. DataError (one line, naming the file and the fix)
    for a missing, non-audio, multi-channel or empty file."""
    from genlab.extras import require

    sf = require("soundfile", "audio", "reading audio files")

    p = Path(path)
    if not p.is_file():
        raise DataError(f"audio file {p} not found")
    try:
        x, sr = sf.read(str(p), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as e:  # LibsndfileError subclasses RuntimeError
        raise DataError(f"{p} is not a readable audio file ({str(e).splitlines()[0]}); give a WAV file") from None
    if x.shape[1] != 1:
        raise DataError(f"{p} has {x.shape[1]} channels; genlab's audio models are mono: "
                        "mix it down first (e.g. sox in.wav -c 1 out.wav)")
    if x.shape[0] == 0:
        raise DataError(f"{p} holds no samples (an empty recording); remove it")
    x = x[:, 0]
    if not np.isfinite(x).all():
        raise DataError(f"{p} holds NaN or infinite samples; re-export it")
    if sample_rate is not None and sr != sample_rate:
        x = resample(x, sr, sample_rate)
        sr = sample_rate
    return x, int(sr)


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Polyphase resampling of float (..., T) audio from `rate_in` to `rate_out` Hz (scipy)."""
    from genlab.extras import require

    resample_poly = require("scipy.signal", "audio", "resampling audio").resample_poly

    if rate_in == rate_out:
        return x
    f = Fraction(rate_out, rate_in)
    return resample_poly(x, f.numerator, f.denominator, axis=-1).astype(np.float32)


def wav_bytes(x: np.ndarray | torch.Tensor, sample_rate: int) -> bytes:
    """A float (T,) waveform in [-1, 1] as the bytes of a 16-bit PCM mono WAV file."""
    from genlab.extras import require

    sf = require("soundfile", "audio", "writing audio files")

    a = _mono(x)
    buf = io.BytesIO()
    sf.write(buf, np.clip(a, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def write_wav(path: str | Path, x: np.ndarray | torch.Tensor, sample_rate: int) -> Path:
    """Write one waveform as a 16-bit WAV, atomically."""
    p = Path(path)
    atomic_write_bytes(p, wav_bytes(x, sample_rate))
    return p


def _mono(x: np.ndarray | torch.Tensor) -> np.ndarray:
    a = x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)
    a = a.reshape(-1) if a.ndim == 2 and 1 in a.shape else a
    if a.ndim != 1:
        raise ShapeError(f"expected one waveform (T,), got shape {a.shape}")
    return a


# --------------------------------------------------------------------------- encodings


def mu_law_encode(x: torch.Tensor, mu: int = 255) -> torch.Tensor:
    """float in [-1, 1] -> int64 classes 0..mu: sign(x) ln(1 + mu |x|) / ln(1 + mu), quantised
    uniformly (WaveNet's 8-bit companding for mu = 255)."""
    x = x.clamp(-1.0, 1.0)
    y = torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)  # in [-1, 1]
    return ((y + 1) / 2 * mu + 0.5).floor().clamp(0, mu).long()


def mu_law_decode(q: torch.Tensor, mu: int = 255) -> torch.Tensor:
    """int classes 0..mu -> float in [-1, 1], the inverse of `mu_law_encode` at bin centres."""
    y = 2 * q.float() / mu - 1
    return torch.sign(y) * torch.expm1(y.abs() * math.log1p(mu)) / mu


def linear_encode(x: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """float in [-1, 1] -> int64 classes 0..bins-1: uniform quantisation, [-1, 1] cut into `bins`
    equal intervals (class k holds [-1 + 2k / bins, -1 + 2(k + 1) / bins); 1.0 joins the last)."""
    x = x.clamp(-1.0, 1.0)
    return ((x + 1) / 2 * bins).floor().clamp(0, bins - 1).long()


def linear_decode(q: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """int classes 0..bins-1 -> float in (-1, 1), the centres of `linear_encode`'s intervals."""
    return (2 * q.float() + 1) / bins - 1


# --------------------------------------------------------------------------- features


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0,
                   f_max: float | None = None) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) triangular filters, equally spaced on the HTK mel scale."""
    f_max = f_max or sample_rate / 2
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    hz = lambda m: 700.0 * (10 ** (m / 2595.0) - 1.0)  # noqa: E731
    edges = hz(np.linspace(mel(f_min), mel(f_max), n_mels + 2))  # (n_mels + 2,)
    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)  # (F,)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None] - lo) / (mid - lo)
    down = (hi - freqs[None]) / (hi - mid)
    return torch.from_numpy(np.maximum(0.0, np.minimum(up, down))).float()


MEL_EPS = 1e-5  # log_mel's floor: log(mel power + MEL_EPS), so silence is log(MEL_EPS) (-50 dB), not -inf


def log_mel(x: torch.Tensor, sample_rate: int, *, n_fft: int = 256, hop: int = 64, n_mels: int = 64,
            eps: float = MEL_EPS) -> torch.Tensor:
    """float (N, T) or (N, 1, T) waveforms -> (N, n_mels, frames) natural-log mel power
    (Hann window, centred frames zero-padded at the ends, so clips shorter than n_fft work too),
    the features of the audio metrics and spectrogram plots."""
    if x.dim() == 3:
        x = x[:, 0]
    if x.dim() != 2:
        raise ShapeError(f"expected waveforms (N, T) or (N, 1, T), got {tuple(x.shape)}")
    spec = torch.stft(x.float(), n_fft, hop_length=hop, window=torch.hann_window(n_fft, device=x.device),
                      center=True, pad_mode="constant", return_complex=True).abs().pow(2)  # (N, F, frames)
    fb = mel_filterbank(sample_rate, n_fft, n_mels).to(x.device)
    return torch.log(torch.einsum("mf,nft->nmt", fb, spec) + eps)


def spectrogram_images(x: torch.Tensor, sample_rate: int, *, floor_db: float = 80.0) -> torch.Tensor:
    """Waveforms (N, T) -> uint8 (N, 3, n_mels, frames) log-mel pictures (low frequencies at the
    bottom, viridis colours), each scaled from a reference level (brightest) down to `floor_db`
    below it (darkest). The reference is the clip's peak, but never below `floor_db` above the
    level of silence (log_mel's MEL_EPS, -50 dB): a silent clip is dark, not drawn at full
    brightness, and a very quiet one dim."""
    from matplotlib import colormaps

    db = 10 / math.log(10)
    m = log_mel(x, sample_rate) * db  # dB
    ref = m.amax(dim=(1, 2), keepdim=True).clamp(min=math.log(MEL_EPS) * db + floor_db)  # (N, 1, 1)
    m = m - ref
    v = ((m + floor_db) / floor_db).clamp(0, 1).flip(1)  # (N, M, F), high frequencies on top
    rgb = colormaps["viridis"](v.numpy())[..., :3]  # (N, M, F, 3)
    return torch.from_numpy((rgb * 255).round().astype(np.uint8)).permute(0, 3, 1, 2).contiguous()


def check_waveforms(x: torch.Tensor, what: str = "audio") -> torch.Tensor:
    """(N, T) or (N, 1, T) finite float waveforms -> (N, T); ShapeError otherwise."""
    if x.dim() == 3 and x.shape[1] == 1:
        x = x[:, 0]
    if x.dim() != 2 or not x.is_floating_point():
        raise ShapeError(f"{what}: expected float waveforms (N, T), got {x.dtype} {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ShapeError(f"{what}: holds NaN or infinite samples")
    return x


# --------------------------------------------------------------------------- clips


def fit_length(x: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """One waveform (T,) -> (float32 (length,), bool (length,) mask, True on real samples):
    a longer one centre-cropped, a shorter one zero-padded equally on both sides (the odd
    sample on the right), so the recording sits in the middle either way."""
    if length < 1:
        raise ShapeError(f"clip length must be >= 1 sample, got {length}")
    a = np.asarray(x, dtype=np.float32).reshape(-1)
    out, mask = np.zeros(length, np.float32), np.zeros(length, bool)
    if len(a) >= length:
        start = (len(a) - length) // 2
        out[:] = a[start:start + length]
        mask[:] = True
    else:
        start = (length - len(a)) // 2
        out[start:start + len(a)] = a
        mask[start:start + len(a)] = True
    return out, mask


# --------------------------------------------------------------------------- batches of clips


def concat_with_gaps(clips: torch.Tensor, sample_rate: int, gap_s: float = 0.25) -> torch.Tensor:
    """(N, T) clips -> one (N T + (N - 1) gap,) waveform, the clips in a row with `gap_s` of
    silence between them (one file to listen through)."""
    clips = check_waveforms(clips)
    gap = torch.zeros(int(round(gap_s * sample_rate)), dtype=clips.dtype)
    parts = []
    for i, c in enumerate(clips):
        parts += [gap, c] if i else [c]
    return torch.cat(parts)


def spectrogram_grid_png(clips: torch.Tensor, sample_rate: int, nrow: int | None = None) -> bytes:
    """PNG bytes of a grid of the clips' log-mel spectrograms (see `spectrogram_images`)."""
    from genlab.images import make_grid, png_bytes

    return png_bytes(make_grid(spectrogram_images(check_waveforms(clips), sample_rate), nrow=nrow))


def npz_audio_bytes(clips: torch.Tensor, sample_rate: int, labels: torch.Tensor | None = None) -> bytes:
    """The .npz genlab writes for audio: `audio` float32 (N, T) in [-1, 1], `sample_rate`, `labels`."""
    arrays = {"audio": check_waveforms(clips).float().clamp(-1, 1).numpy(), "sample_rate": np.int64(sample_rate)}
    if labels is not None:
        arrays["labels"] = labels.to(torch.int64).numpy()
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def encode_audio(fmt: str, clips: torch.Tensor, sample_rate: int, labels: torch.Tensor | None = None) -> bytes:
    """The bytes of FILE.wav (the clips in a row) or FILE.npz for (N, T) clips: fmt "wav" | "npz"."""
    if fmt == "wav":
        return wav_bytes(concat_with_gaps(clips, sample_rate), sample_rate)
    if fmt == "npz":
        return npz_audio_bytes(clips, sample_rate, labels)
    raise ShapeError(f"audio batches are encoded as wav or npz, got {fmt!r}")


def write_audio(out: str | Path, clips: torch.Tensor, labels: torch.Tensor | None, sample_rate: int,
                nrow: int | None = None) -> tuple[Path, Path]:
    """Write (N, T) clips to `out` (FILE.wav, FILE.npz or DIR/ of one WAV each) and a grid of their
    spectrograms beside it (FILE.png, DIR/spectrograms.png); all writes atomic. Returns both paths."""
    s = str(out)
    if s.endswith(("/", "\\")) or Path(s).is_dir():
        from genlab.images import numbered_names

        folder = Path(s)
        for c, name in zip(clips, numbered_names(len(clips), labels, ".wav")):  # as image folders: 07_label3.wav
            write_wav(folder / name, c, sample_rate)
        path, png = folder, folder / "spectrograms.png"
    else:
        path = Path(s)
        fmt = path.suffix.lower().lstrip(".")
        atomic_write_bytes(path, encode_audio(fmt, clips, sample_rate, labels))
        png = path.with_suffix(".png")
    atomic_write_bytes(png, spectrogram_grid_png(clips, sample_rate, nrow))
    return path, png
