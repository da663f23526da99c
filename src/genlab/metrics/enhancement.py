"""Speech-enhancement scores between a clean reference and an estimate (a denoised or gap-filled
recording): SI-SDR, PESQ and STOI.

  - `si_sdr`: scale-invariant signal-to-distortion ratio (Le Roux et al. 2019, "SDR - half-baked
    or well done?"), in dB: both signals made zero-mean, the reference scaled by the least-squares
    gain alpha = <s_hat, s> / |s|^2, then 10 log10(|alpha s|^2 / |alpha s - s_hat|^2). A gain on
    the estimate does not change it; identical signals give a very large value (about 10 log10 of
    the signal energy over float64's epsilon, > 100 dB), not inf. Pure torch, float64.
  - `snr_db`: plain SNR in dB, and `noise_scale_for_snr`, its inverse (the noise std that gives
    an SNR): the one place of the dB/power conversion (`genlab.apply.audio` adds noise at an SNR
    and reads a noise level off a given SNR with them);
  - `pesq_score`: ITU-T P.862 narrowband PESQ (MOS-LQO, about 1.0-4.5) through the `pesq`
    package, at 8 kHz (other rates are resampled to 8 kHz first);
  - `stoi_score`: short-time objective intelligibility (Taal et al. 2011, 0-1) through `pystoi`.

PESQ and STOI come from the optional `bench` extra; without them the wrappers raise a one-line
ConfigError naming the pip command.
"""

from __future__ import annotations

import numpy as np
import torch

from genlab.errors import ConfigError, ShapeError

PESQ_RATE = 8000  # Hz: narrowband PESQ ('nb') is defined at 8 kHz


def si_sdr(estimate: torch.Tensor, reference: torch.Tensor, eps: float | None = None) -> torch.Tensor:
    """SI-SDR in dB of each estimate against its reference.

    Args:
        estimate, reference: float (N, T) or (T,) waveforms of one shape.
        eps: added to the numerators and denominators (default float64's epsilon, as torchmetrics
            uses its dtype's), so silence and exact matches give finite values.
    Returns:
        float64 (N,) (or a 0-d tensor for (T,) inputs).
    """
    if estimate.shape != reference.shape or estimate.dim() not in (1, 2) or estimate.shape[-1] < 1:
        raise ShapeError(f"si_sdr needs an estimate and a reference of one shape (N, T) or (T,), got "
                         f"{tuple(estimate.shape)} and {tuple(reference.shape)}")
    eps = torch.finfo(torch.float64).eps if eps is None else eps
    s_hat = estimate.double() - estimate.double().mean(-1, keepdim=True)
    s = reference.double() - reference.double().mean(-1, keepdim=True)
    alpha = ((s_hat * s).sum(-1, keepdim=True) + eps) / (s.pow(2).sum(-1, keepdim=True) + eps)
    target = alpha * s  # the part of the estimate explained by the reference
    distortion = target - s_hat
    return 10 * torch.log10((target.pow(2).sum(-1) + eps) / (distortion.pow(2).sum(-1) + eps))


def snr_db(estimate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Plain SNR 10 log10(|s|^2 / |s - s_hat|^2) in dB, float64 (N,): unlike SI-SDR it scores
    a gain error and an all-zero estimate (0 dB) meaningfully. For a noisy recording
    (estimate = clean + noise, reference = clean) it is the recording's SNR."""
    estimate, reference = torch.as_tensor(estimate), torch.as_tensor(reference)
    if estimate.shape != reference.shape:
        raise ShapeError(f"snr_db needs two signals of one shape, got {tuple(estimate.shape)} and "
                         f"{tuple(reference.shape)}")
    eps = torch.finfo(torch.float64).eps
    s, e = reference.double(), reference.double() - estimate.double()
    return 10 * torch.log10((s.pow(2).sum(-1) + eps) / (e.pow(2).sum(-1) + eps))


def noise_scale_for_snr(power: torch.Tensor | float, snr: float, *, noisy: bool = False) -> torch.Tensor:
    """The noise std (RMS) that gives an SNR of `snr` dB: snr_db's inverse, in float64.

    Args:
        power: the mean power (mean square) of the clean signal, P_x: then P_n = P_x / 10^(snr/10).
        noisy: `power` is instead that of the noisy recording, P_y = P_x + P_n for independent
            noise: then P_n = P_y / (1 + 10^(snr/10)).
    """
    ratio = 10 ** (snr / 10)
    p = torch.as_tensor(power, dtype=torch.float64)
    return (p / (1 + ratio if noisy else ratio)).sqrt()


def _rows(x: np.ndarray | torch.Tensor) -> np.ndarray:
    a = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2:
        raise ShapeError(f"expected waveforms (N, T) or (T,), got shape {a.shape}")
    return a


def _pair(ref, deg, what: str) -> tuple[np.ndarray, np.ndarray]:
    r, d = _rows(ref), _rows(deg)
    if r.shape != d.shape:
        raise ShapeError(f"{what} needs a reference and an estimate of one shape, got {r.shape} and {d.shape}")
    return r, d


def pesq_score(ref: np.ndarray | torch.Tensor, deg: np.ndarray | torch.Tensor, sr: int) -> np.ndarray:
    """Narrowband PESQ (MOS-LQO) of each degraded clip against its reference, float64 (N,); NaN
    for a clip PESQ cannot score (e.g. no speech found in the reference). Inputs (N, T) or (T,)
    at `sr` Hz, resampled to 8 kHz when needed."""
    try:
        from pesq import PesqError, pesq
    except ImportError:
        raise ConfigError("PESQ needs the pesq package: pip install genlab[bench] (or pip install pesq)") from None
    r, d = _pair(ref, deg, "pesq_score")
    if sr != PESQ_RATE:
        from genlab.audio import resample

        r, d = resample(r, sr, PESQ_RATE).astype(np.float64), resample(d, sr, PESQ_RATE).astype(np.float64)
    out = np.full(len(r), np.nan)
    for i in range(len(r)):
        v = pesq(PESQ_RATE, r[i], d[i], "nb", on_error=PesqError.RETURN_VALUES)
        out[i] = v if v > 0 else np.nan  # errors come back as negative codes
    return out


def stoi_score(ref: np.ndarray | torch.Tensor, deg: np.ndarray | torch.Tensor, sr: int) -> np.ndarray:
    """STOI (0-1) of each degraded clip against its reference, float64 (N,). Inputs (N, T) or
    (T,) at `sr` Hz (pystoi resamples to its 10 kHz internally). NaN for a clip with too little
    speech to score (STOI needs 30 non-silent frames, about 0.4 s; pystoi would warn and return
    1e-5, which would drag a mean down)."""
    import warnings

    try:
        from pystoi import stoi
    except ImportError:
        raise ConfigError("STOI needs the pystoi package: pip install genlab[bench] (or pip install pystoi)") from None
    r, d = _pair(ref, deg, "stoi_score")
    out = np.full(len(r), np.nan)
    for i in range(len(r)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            v = stoi(r[i], d[i], sr, extended=False)
        if not any("Not enough STFT frames" in str(w.message) for w in caught):
            out[i] = v
    return out
