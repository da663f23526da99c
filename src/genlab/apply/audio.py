"""`genlab apply` for audio runs: denoising and gap filling with a waveform diffusion model
(diffwave), beside the classical baselines they are scored against.

Denoising (`method`):
  - diffusion: the DiffWave paper's zero-shot idea. A recording y = x + n with white Gaussian
    noise of std sigma is, up to scale, a point of the forward process:
    x_t / sqrt(ab_t) = x0 + sqrt((1 - ab_t) / ab_t) eps. So the reverse process starts at the
    step t* whose noise-to-signal ratio sqrt((1 - ab) / ab) is closest to sigma, from
    x_t* = sqrt(ab_t*) y, and runs down to t = 0 with the run's sampler in a few steps
    (`genlab.apply.denoise.denoise`, shared with images);
  - spectral: spectral subtraction (Boll 1979, with Berouti et al.'s over-subtraction and
    floor): |S|^2 = max(|Y|^2 - a N, b |Y|^2) on the STFT, with the noisy phase;
  - wiener: a spectral Wiener gain G = xi / (1 + xi) with the decision-directed a-priori SNR
    xi (Ephraim & Malah 1984; Scalart & Filho 1996), noisy phase.

The noise level sigma (std, in waveform units: full scale is 1) comes from `snr` when given
(the noisy power is P_y = P_x + P_n for independent noise, so sigma^2 = P_y / (1 + 10^(snr/10)):
metrics.enhancement.noise_scale_for_snr),
or `sigma` itself, or else is estimated from the quietest frames: the mean power spectrum of the
10% of STFT frames with least energy is the noise spectrum N (speech has pauses; a steady tone
does not, and would be taken for noise), and sigma^2 its total power (about 10% low in std for
white noise: the quietest noise frames are quieter than the average one). The baselines use that
spectrum's colour; a given snr/sigma rescales it to the given level. Diffusion denoising takes
the run's sampling steps times (t* + 1) / T steps unless told (one step, the network's estimate
E[x0 | x_t*], for the small t* of speech at 5-10 dB SNR).

Gap filling (`method`):
  - diffusion: the reverse process from pure noise where every x0 estimate is projected onto
    the known samples, x0 <- mask * known + (1 - mask) * x0 (eps recomputed from it), so the
    known part of each x_t is the known samples noised to that step (replacement, as in RePaint
    with one pass per step; with the ddpm sampler fresh noise enters at each step). The result
    keeps the known samples exactly: they are copied in at the end;
  - linear: straight lines across each gap between the samples either side (held flat at the
    recording's ends); zeros: silence.
Every method keeps the known samples of the waveform it is given bit for bit. Through `apply`
that is the input as the run sees it: at the run's sample rate, and written as 16-bit PCM
(FILE.wav) or float32 (FILE.npz). So the output file repeats the input file's known samples
exactly only when the input is at the run's rate and in a format the output holds exactly
(16-bit PCM for FILE.wav); otherwise `apply` logs one line saying that the known samples are
kept exactly as the run's resampled/re-quantised version of the input.

Lengths: the diffusion model sees windows of its own length L (data.audio_length). Shorter
recordings are padded in the middle of a window, as the data layer pads training clips (denoising:
with noise of std sigma, inpainting: with known silence); longer ones are cut into windows with
50% overlap, denoised independently and cross-faded (Hann weights), or filled window by window,
left to right, each taking the samples filled before it as known.

    denoise_audio(model, noisy, snr_db=5, generator=g)         # (N, T) -> (N, T)
    inpaint_audio(model, x, gap_mask(x.shape[-1], "0.2:0.3", 8000), generator=g)
"""

from __future__ import annotations

import logging
import math
import re
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from genlab.apply import DIFFUSION_OPTIONS
from genlab.apply.denoise import denoise, start_step
from genlab.errors import ConfigError, DataError, ShapeError
from genlab.metrics.enhancement import noise_scale_for_snr
from genlab.progress import Progress, subpart
from genlab.sampling import DIFFUSION_MODELS, check_diffusion_options
from genlab.seed import make_generator

log = logging.getLogger("genlab")

NOISES = ("white", "pink", "babble")
METHODS = {"denoise": ("diffusion", "spectral", "wiener"), "inpaint": ("diffusion", "linear", "zeros")}
# the diffusion options (of apply's DIFFUSION_OPTIONS) that audio tasks take
SAMPLING_OPTIONS = tuple(k for k in DIFFUSION_OPTIONS if k in ("sampler", "sampling_steps", "eta", "guidance"))
TASK_OPTIONS = {"denoise": ("snr", "sigma"), "inpaint": ("gap",)}
COMMON_OPTIONS = ("method", "seed", "label") + SAMPLING_OPTIONS
N_FFT = 256  # 32 ms at 8 kHz
QUIET_SHARE = 0.1  # share of STFT frames (the least energetic) taken as noise only


# --------------------------------------------------------------------------- noise makers


def white_noise(n: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """(n, length) standard Gaussian noise."""
    return torch.randn(n, length, generator=generator, dtype=torch.float64)


def pink_noise(n: int, length: int, generator: torch.Generator, fmin: float = 0.0025) -> torch.Tensor:
    """(n, length) pink noise (power proportional to 1/f: -10 dB per decade, -3 dB per octave),
    unit RMS per row: white noise's spectrum times 1/sqrt(max(f, fmin)), no DC. `fmin` (a share
    of the sample rate: 20 Hz at 8 kHz) keeps the spectrum flat below it, as the `colorednoise`
    package's fmin does: a pure 1/f would put a third of a 0.64 s clip's noise power below 20 Hz,
    where it is inaudible but counts in the SNR."""
    spec = torch.fft.rfft(white_noise(n, length, generator), dim=-1)  # (n, F)
    f = torch.arange(spec.shape[-1], dtype=torch.float64) / length  # bin frequencies / sample rate
    shape = torch.where(f > 0, f.clamp_min(max(fmin, 1 / length)).rsqrt(), torch.zeros_like(f))  # amplitude
    x = torch.fft.irfft(spec * shape, n=length, dim=-1)
    return x / x.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12)


def _trim(clip: torch.Tensor) -> torch.Tensor:
    """A clip without its leading and trailing (near-)silence, e.g. the data layer's padding."""
    loud = (clip.abs() > 1e-4 * clip.abs().max().clamp_min(1e-12)).nonzero()
    return clip[int(loud[0]):int(loud[-1]) + 1] if len(loud) else clip


def babble_noise(n: int, length: int, pool: Sequence[torch.Tensor] | torch.Tensor, generator: torch.Generator,
                 talkers: int = 6) -> torch.Tensor:
    """(n, length) babble: per row, the sum of `talkers` different recordings of `pool` (other
    speakers; padding trimmed, looped to `length` from a random offset, each scaled to unit RMS
    so every talker is equally loud), scaled to unit RMS."""
    clips = [_trim(torch.as_tensor(c, dtype=torch.float64).reshape(-1)) for c in pool]
    clips = [c for c in clips if c.pow(2).sum() > 0]
    if len(clips) < 2:
        raise ConfigError(f"babble noise needs at least 2 non-silent recordings of other speakers, got {len(clips)}")
    k = min(talkers, len(clips))
    out = torch.zeros(n, length, dtype=torch.float64)
    for i in range(n):
        for j in torch.randperm(len(clips), generator=generator)[:k].tolist():
            c = clips[j]
            shift = int(torch.randint(len(c), (1,), generator=generator))
            c = torch.roll(c, -shift).repeat(-(-length // len(c)))[:length]  # looped from a random offset
            out[i] += c / c.pow(2).mean().sqrt().clamp_min(1e-12)
    return out / out.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12)


def make_noise(kind: str, n: int, length: int, generator: torch.Generator,
               babble_pool: Sequence[torch.Tensor] | torch.Tensor | None = None) -> torch.Tensor:
    """(n, length) float64 noise of `kind` (white | pink | babble; babble draws on `babble_pool`)."""
    if kind == "white":
        return white_noise(n, length, generator)
    if kind == "pink":
        return pink_noise(n, length, generator)
    if kind == "babble":
        if babble_pool is None:
            raise ConfigError("babble noise needs babble_pool: recordings of other speakers")
        return babble_noise(n, length, babble_pool, generator)
    raise ConfigError(f"noise kind must be one of {', '.join(NOISES)}, got {kind!r}")


def add_noise(clean: torch.Tensor | np.ndarray, kind: str, snr_db: float, seed: int,
              babble_pool: Sequence[torch.Tensor] | torch.Tensor | None = None) -> torch.Tensor:
    """clean + noise of `kind`, scaled so that each row's SNR 10 log10(|clean|^2 / |noise|^2) is
    exactly `snr_db` (measured on the noise drawn, not its expectation).

    Args:
        clean: float (N, T) or (T,) waveforms. seed: seeds the noise (a torch.Generator).
        babble_pool: recordings (a list of (T_i,) or an (M, T) batch) of other speakers, for babble.
    Returns:
        float32 noisy waveforms, clean's shape.
    """
    x = torch.as_tensor(clean).double()
    one = x.dim() == 1
    x = x[None] if one else x
    if x.dim() != 2 or x.shape[-1] < 2:
        raise ShapeError(f"add_noise needs waveforms (N, T) or (T,), got {tuple(x.shape)}")
    p_clean = x.pow(2).mean(-1, keepdim=True)
    if bool((p_clean == 0).any()):
        raise ConfigError("cannot set an SNR for a silent (all-zero) clip")
    noise = make_noise(kind, *x.shape, make_generator(seed), babble_pool)
    rms = noise.pow(2).mean(-1, keepdim=True).sqrt()
    noise = noise * (noise_scale_for_snr(p_clean, snr_db) / rms)  # the drawn noise at exactly the std wanted
    y = (x + noise).float()
    return y[0] if one else y


# --------------------------------------------------------------------------- noise level


def _stft(y: torch.Tensor, n_fft: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float (N, T) -> (complex (N, F, frames) STFT with a periodic Hann window and 75% overlap,
    centred frames; the window)."""
    w = torch.hann_window(n_fft, dtype=y.dtype, device=y.device)
    return torch.stft(y, n_fft, hop_length=n_fft // 4, window=w, center=True, return_complex=True), w


def _istft(spec: torch.Tensor, w: torch.Tensor, length: int) -> torch.Tensor:
    return torch.istft(spec, len(w), hop_length=len(w) // 4, window=w, center=True, length=length)


def _fft_size(length: int) -> int:
    """N_FFT, or the largest power of two below a short recording's length (reflect padding
    needs length > n_fft / 2)."""
    return min(N_FFT, 2 ** max(2, int(math.floor(math.log2(max(length - 1, 4))))))


def _power(psd: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Per-sample variance of the signal whose one-sided STFT power spectrum is psd (..., F)
    (Parseval: the two-sided bins sum to n_fft * sum(w^2) * variance)."""
    n = len(w)
    two_sided = psd[..., 0] + 2 * psd[..., 1:-1].sum(-1) + psd[..., -1]
    return two_sided / (n * w.pow(2).sum())


def quiet_frame_psd(power: torch.Tensor, share: float = QUIET_SHARE) -> torch.Tensor:
    """|STFT|^2 (N, F, frames) -> the noise power spectrum (N, F): the mean over the `share` of
    frames with the least energy (at least one)."""
    k = max(1, round(share * power.shape[-1]))
    quiet = power.sum(1).argsort(dim=-1)[:, :k]  # (N, k) frame indices
    return torch.gather(power, 2, quiet[:, None].expand(-1, power.shape[1], -1)).mean(-1)


def estimate_noise_std(y: torch.Tensor) -> torch.Tensor:
    """Noisy waveforms (N, T) -> the noise std (N,) float64, from the quietest frames' power."""
    y = torch.as_tensor(y).double()
    spec, w = _stft(y, _fft_size(y.shape[-1]))
    return _power(quiet_frame_psd(spec.abs().pow(2)), w).sqrt()


def noise_std_from_snr(y: torch.Tensor, snr_db: float) -> torch.Tensor:
    """Noisy waveforms (N, T) and their SNR in dB -> the noise std (N,): for independent noise
    P_y = P_x + P_n = P_n (1 + 10^(snr/10))."""
    return noise_scale_for_snr(torch.as_tensor(y).double().pow(2).mean(-1), snr_db, noisy=True)


def _noise_std(y: torch.Tensor, snr_db: float | None, sigma: float | torch.Tensor | None) -> torch.Tensor:
    if sigma is not None:
        return torch.as_tensor(sigma, dtype=torch.float64).expand(y.shape[0]).clone()
    if snr_db is not None:
        return noise_std_from_snr(y, snr_db)
    return estimate_noise_std(y)


# --------------------------------------------------------------------------- classical baselines


def _noise_psd(power: torch.Tensor, w: torch.Tensor, level: torch.Tensor | None) -> torch.Tensor:
    """The noise spectrum (N, F, 1) for noisy |STFT|^2 (N, F, frames): the quietest frames'
    colour, rescaled to noise std `level` (N,) when given (flat if the quiet frames are silent)."""
    psd = quiet_frame_psd(power)
    if level is not None:
        p = _power(psd, w)
        flat = (level ** 2 * w.pow(2).sum())[:, None].expand_as(psd)  # white noise of std `level`
        scaled = psd * (level ** 2 / p.clamp_min(1e-30))[:, None]
        psd = torch.where((p > 0)[:, None], scaled, flat)
    return psd[..., None]


def _prepare(y: torch.Tensor) -> tuple[torch.Tensor, bool]:
    y = torch.as_tensor(y)
    one = y.dim() == 1
    y = (y[None] if one else y).double()
    if y.dim() != 2 or y.shape[-1] < 8:
        raise ShapeError(f"expected waveforms (N, T) or (T,) with T >= 8, got {tuple(y.shape)}")
    return y, one


def spectral_subtraction(y: torch.Tensor, *, snr_db: float | None = None, sigma: float | None = None,
                         over: float = 2.0, floor: float = 0.02) -> torch.Tensor:
    """Spectral subtraction: |S|^2 = max(|Y|^2 - over * N, floor * |Y|^2) per STFT bin, with the
    noisy phase. N is the quietest frames' spectrum (level from `snr_db`/`sigma` when given).
    y float (N, T) or (T,) -> float32, same shape."""
    x, one = _prepare(y)
    spec, w = _stft(x, _fft_size(x.shape[-1]))
    power = spec.abs().pow(2)
    level = None if snr_db is None and sigma is None else _noise_std(x, snr_db, sigma)
    noise = _noise_psd(power, w, level)
    clean = torch.maximum(power - over * noise, floor * power)
    gain = (clean / power.clamp_min(1e-30)).sqrt()
    out = _istft(spec * gain, w, x.shape[-1]).float()
    return out[0] if one else out


def wiener_filter(y: torch.Tensor, *, snr_db: float | None = None, sigma: float | None = None,
                  smoothing: float = 0.98, xi_min_db: float = -25.0) -> torch.Tensor:
    """Wiener filtering on the STFT: gain xi / (1 + xi) with the decision-directed a-priori SNR
    xi(l) = a |S(l-1)|^2 / N + (1 - a) max(|Y(l)|^2 / N - 1, 0), floored at `xi_min_db`
    (smoothing a across frames is what avoids musical noise); noisy phase. N as for
    `spectral_subtraction`. y float (N, T) or (T,) -> float32, same shape."""
    x, one = _prepare(y)
    spec, w = _stft(x, _fft_size(x.shape[-1]))
    power = spec.abs().pow(2)
    level = None if snr_db is None and sigma is None else _noise_std(x, snr_db, sigma)
    noise = _noise_psd(power, w, level)[..., 0].clamp_min(1e-30)  # (N, F)
    gamma = power / noise[..., None]  # a-posteriori SNR (N, F, frames)
    xi_min = 10 ** (xi_min_db / 10)
    gains, prev = [], None  # prev: the previous frame's |S|^2 / N
    for frame in range(power.shape[-1]):
        ml = (gamma[..., frame] - 1).clamp_min(0)  # the maximum-likelihood SNR of this frame alone
        xi = ml if prev is None else smoothing * prev + (1 - smoothing) * ml
        g = xi.clamp_min(xi_min) / (1 + xi.clamp_min(xi_min))
        gains.append(g)
        prev = g.pow(2) * gamma[..., frame]
    out = _istft(spec * torch.stack(gains, -1), w, x.shape[-1]).float()
    return out[0] if one else out


def linear_fill(x: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Straight lines across the gaps: x (N, T), fill bool (N, T) or (T,) True = to fill ->
    (N, T), the known samples unchanged; gaps at an end hold the nearest known sample."""
    x = torch.as_tensor(x)
    fill = torch.as_tensor(fill).expand(x.shape)
    out = x.clone()
    t = np.arange(x.shape[-1])
    for i in range(x.shape[0]):
        f = fill[i].numpy()
        if f.any() and not f.all():
            xi = x[i].double().numpy()
            out[i, torch.from_numpy(f)] = torch.from_numpy(np.interp(t[f], t[~f], xi[~f])).to(x.dtype)
    return out


# --------------------------------------------------------------------------- diffusion


def window_length(model) -> int:
    """The waveform length L the diffusion model was built for."""
    return int(model.data_shape()[-1]) if hasattr(model, "data_shape") else int(model.cfg.audio_length)


def window_starts(length: int, L: int) -> list[int]:
    """Starts of windows of L samples covering `length` with 50% overlap, the last flush with
    the end; [0] when length <= L (one padded window)."""
    if length <= L:
        return [0]
    hop = max(1, L // 2)
    starts = list(range(0, length - L + 1, hop))
    return starts if starts[-1] == length - L else starts + [length - L]


def _pad_centre(x: torch.Tensor, L: int, fill: torch.Tensor | float = 0.0) -> tuple[torch.Tensor, int]:
    """(N, T) with T < L -> (N, L): x where the data layer puts a short clip (genlab.audio.fit_length:
    the middle, the odd sample of padding on the right), the rest taken from `fill` (N, L) or a
    constant; and the offset of x in it. x itself is copied in at its own dtype."""
    from genlab.audio import fit_length

    n, T = x.shape
    _, where = fit_length(np.zeros(T, np.float32), L)  # (L,) True on the clip's samples
    left = int(where.argmax())
    out = fill.clone() if isinstance(fill, torch.Tensor) else torch.full((n, L), float(fill), dtype=x.dtype)
    out[:, left:left + T] = x
    return out, left


def _labels_for(labels: torch.Tensor | None, idx: list[int], device) -> torch.Tensor | None:
    return None if labels is None else labels[idx].to(device)


@torch.no_grad()
def denoise_audio(model, y: torch.Tensor, *, snr_db: float | None = None, sigma: float | torch.Tensor | None = None,
                  steps: int | None = None, sampler: str | None = None, eta: float | None = None,
                  guidance: float = 1.0, labels: torch.Tensor | None = None,
                  generator: torch.Generator) -> torch.Tensor:
    """Diffusion denoising of noisy waveforms y (N, T) in [-1, 1] -> (N, T) float32.

    Args:
        snr_db / sigma: the input's SNR in dB, or its noise std; neither: estimated (module doc).
        steps: reverse steps from t* (default: the run's sampling steps times (t* + 1) / T).
        sampler, eta: default the run's. labels: (N,) classes for a conditional model, or None.
    """
    y, _ = _prepare(y)
    dev = model.alpha_bar.device
    N, T = y.shape
    L = window_length(model)
    sig = _noise_std(y, snr_db, sigma)
    sampler = sampler or model.cfg.sampler
    eta = model.eta_for(sampler, eta)
    # every window of every clip, grouped by its start step t* (one batch per t*); the group's
    # first sigma stands for it: `denoise` maps each of the group's sigmas to the same t*
    segments: dict[int, list[tuple[int, int, torch.Tensor]]] = {}
    group_sigma: dict[int, float] = {}
    for i in range(N):
        yi, off = y[i:i + 1], 0
        if T < L:
            noise = sig[i] * torch.randn(1, L, generator=generator, device=generator.device).double().cpu()
            yi, off = _pad_centre(yi, L, noise)
        t = start_step(model, float(sig[i]))
        group_sigma.setdefault(t, float(sig[i]))
        for s in window_starts(yi.shape[-1], L):
            segments.setdefault(t, []).append((i, s - off, yi[0, s:s + L]))
    acc = torch.zeros(N, T, dtype=torch.float64)
    weight = torch.zeros(N, T, dtype=torch.float64)
    fade = torch.hann_window(L, periodic=False, dtype=torch.float64).clamp_min(1e-3)  # cross-fade weights
    done, total = 0, sum(len(segs) for segs in segments.values())
    for t, segs in segments.items():
        windows = torch.stack([s for *_, s in segs])[:, None].float().to(dev)  # (B, 1, L)
        with subpart(done, len(segs), total):  # progress: this group's share of the windows
            x0 = denoise(model, windows, group_sigma[t], steps=steps, sampler=sampler, eta=eta, guidance=guidance,
                         labels=_labels_for(labels, [i for i, *_ in segs], dev),
                         generator=generator)[:, 0].double().cpu()  # (B, L)
        done += len(segs)
        for (i, s, _), out in zip(segs, x0):
            lo, hi = max(s, 0), min(s + L, T)  # a padded window: only the recording's part
            acc[i, lo:hi] += fade[lo - s:hi - s] * out[lo - s:hi - s]
            weight[i, lo:hi] += fade[lo - s:hi - s]
    return (acc / weight).float()


@torch.no_grad()
def inpaint_audio(model, x: torch.Tensor, fill: torch.Tensor, *, steps: int | None = None,
                  sampler: str | None = None, eta: float | None = None, guidance: float = 1.0,
                  labels: torch.Tensor | None = None, generator: torch.Generator) -> torch.Tensor:
    """Fill the samples of x (N, T) where `fill` (N, T) or (T,) is True with the diffusion model
    (module doc); the other samples of the result are x's, bit for bit. -> (N, T), x's dtype."""
    x = torch.as_tensor(x)
    if x.dim() != 2:
        raise ShapeError(f"inpaint_audio needs waveforms (N, T), got {tuple(x.shape)}")
    fill = torch.as_tensor(fill, dtype=torch.bool).expand(x.shape)
    N, T = x.shape
    dev = model.alpha_bar.device
    L = window_length(model)
    sampler = sampler or model.cfg.sampler
    steps = (model.T if sampler == "ddpm" else model.cfg.sampling_steps) if steps is None else steps
    eta = model.eta_for(sampler, eta)
    work, known, off = x.float().clone(), (~fill).clone(), 0  # filled in place, window by window
    if T < L:  # padding is known silence, like the data layer's
        work, off = _pad_centre(work, L, 0.0)
        known, _ = _pad_centre(known.float(), L, 1.0)
        known = known.bool()
    y = None if labels is None else labels.to(dev)
    starts = window_starts(work.shape[-1], L)
    for k, s in enumerate(starts):
        m = known[:, s:s + L]
        if bool(m.all()):
            continue
        seg, keep = work[:, None, s:s + L].to(dev), m[:, None].to(dev)  # (N, 1, L)

        def project(x0: torch.Tensor, t: int, seg=seg, keep=keep) -> torch.Tensor:
            return torch.where(keep, seg, x0)  # x0 on the known samples: the measurement, exactly

        noise = model.initial_noise(N, generator).to(dev)  # (N, 1, L)
        with subpart(k, 1, len(starts)):  # progress: one window's share
            out = model.sample_from(noise, model.T - 1, steps=steps, sampler=sampler, eta=eta, guidance=guidance,
                                    labels=y, generator=generator, x0_hook=project)[:, 0].float().cpu()
        work[:, s:s + L] = torch.where(m, work[:, s:s + L], out)
        known[:, s:s + L] = True  # later windows take these samples as given
    filled = work[:, off:off + T].to(x.dtype)
    return torch.where(fill, filled, x)


# --------------------------------------------------------------------------- gaps

_GAP_END = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s|n)?\s*$")
GAP_HELP = "START:END in seconds (0.20:0.35), milliseconds (200ms:350ms) or sample indices (1600n:2800n)"


def parse_gap(spec: str | tuple[int, int], length: int, sample_rate: int) -> tuple[int, int]:
    """A gap -> (start, end) sample indices, end exclusive. `spec`: GAP_HELP's string, or a
    (start, end) pair of sample indices. ConfigError for a malformed, empty or out-of-range gap,
    or one covering the whole recording."""
    if isinstance(spec, str):
        parts = spec.split(":")
        ends = [_GAP_END.match(p) for p in parts]
        if len(parts) != 2 or not all(ends):
            raise ConfigError(f"--gap must be {GAP_HELP}, got {spec!r}")
        scale = {None: sample_rate, "s": sample_rate, "ms": sample_rate / 1000, "n": 1}
        start, end = (int(round(float(m[1]) * scale[m[2]])) for m in ends)
    else:
        try:
            start, end = (int(v) for v in spec)
        except (TypeError, ValueError):
            raise ConfigError(f"gap must be (start, end) sample indices or {GAP_HELP}, got {spec!r}") from None
    where = f"the recording ({length / sample_rate:.3f} s, {length} samples)"
    if start < 0:
        raise ConfigError(f"--gap {spec}: starts before the recording (sample {start})")
    if end > length:
        raise ConfigError(f"--gap {spec}: ends at {end / sample_rate:.3f} s (sample {end}), after the end of {where}")
    if end <= start:
        raise ConfigError(f"--gap {spec} is empty (samples {start}:{end}); END must come after START")
    if start == 0 and end == length:
        raise ConfigError(f"--gap {spec} covers the whole recording: nothing is known to fill it from "
                          "(genlab sample generates audio)")
    return start, end


def gap_mask(length: int, spec: str | tuple[int, int], sample_rate: int) -> torch.Tensor:
    """bool (length,), True inside the gap `spec` (see parse_gap)."""
    start, end = parse_gap(spec, length, sample_rate)
    m = torch.zeros(length, dtype=torch.bool)
    m[start:end] = True
    return m


# --------------------------------------------------------------------------- tasks on a loaded run


def is_diffusion_run(run) -> bool:
    """Whether `run` samples with the Gaussian diffusion process (diffwave among audio runs),
    decided by its model name as every diffusion-option check in genlab decides it."""
    return run.cfg.model_name in DIFFUSION_MODELS


def task_problem(run, task: str, name: str | None = None, method: str | None = None) -> str | None:
    """Why the audio `run` cannot do `task` with `method` (default diffusion), or None."""
    name = name or str(run.run_dir)
    if task not in METHODS:
        return f"{task} is an image task; audio runs do {' and '.join(METHODS)}"
    method = method or "diffusion"
    if method not in METHODS[task]:
        return f"--method for audio {task} must be one of {', '.join(METHODS[task])}, got {method!r}"
    if method == "diffusion" and not is_diffusion_run(run):
        others = "|".join(m for m in METHODS[task] if m != "diffusion")
        return (f"{task} with the diffusion method needs a diffwave run; {name} is a {run.cfg.model_name} run: "
                f"train a diffwave run, or give --method {others} for a classical baseline")
    return None


def _flags(keys) -> str:
    return ", ".join("--" + k.replace("_", "-") for k in keys)


def _check_options(run, task: str, method: str, options: dict, name: str) -> None:
    given = {k for k, v in options.items() if v is not None}
    diff = sorted(k for k in given if k in DIFFUSION_OPTIONS)
    check_diffusion_options(run, [f"--{k.replace('_', '-')}" for k in diff], name)  # a run of another family
    allowed = set(COMMON_OPTIONS) | set(TASK_OPTIONS[task])
    stray = sorted(given - allowed)
    if stray:
        raise ConfigError(f"{_flags(stray)}: not an option of {task} for audio runs (it takes {_flags(sorted(allowed))})")
    if diff and method != "diffusion":
        raise ConfigError(f"{_flags(diff)}: diffusion options, but --method {method} does not sample a model")
    if task == "inpaint" and "gap" not in given:
        raise ConfigError(f"inpaint needs --gap {GAP_HELP}")
    if task == "denoise" and "snr" in given and "sigma" in given:
        raise ConfigError("give --snr or --sigma (the noise level), not both")
    label = options.get("label")
    if label is not None:
        k = getattr(run.model, "num_classes", None) if getattr(run.model, "conditional", False) else None
        if method != "diffusion":
            raise ConfigError(f"--label conditions the diffusion model; --method {method} does not use it")
        if not k:
            raise ConfigError(f"--label needs a class-conditional run; {name} is unconditional")
        if not 0 <= label < k:
            raise ConfigError(f"--label must be in 0..{k - 1}, got {label}")


def _check_labels(model, labels: torch.Tensor | None, n: int, where: str) -> torch.Tensor | None:
    """The clips' labels as int64 (n,), or None; for a class-conditional model every label must be
    one of its classes 0..K-1 (the index K is its "no label" embedding, never a class)."""
    if labels is None:
        return None
    labels = torch.as_tensor(labels)
    if labels.shape != (n,) or labels.is_floating_point() or labels.is_complex():
        raise ShapeError(f"{where}: labels must be integers of shape ({n},), got {labels.dtype} {tuple(labels.shape)}")
    labels = labels.long()
    k = getattr(model, "num_classes", None) if getattr(model, "conditional", False) else None
    if k and not bool(((labels >= 0) & (labels < k)).all()):
        raise ConfigError(f"{where}: labels must be classes in 0..{k - 1} for this run, got values "
                          f"{int(labels.min())}..{int(labels.max())}")
    return labels


def run_audio_task(run, task: str, clips: torch.Tensor, labels: torch.Tensor | None = None, *,
                   name: str | None = None, input_name: str = "labels", method: str | None = None, seed: int = 0,
                   label: int | None = None, snr: float | None = None, sigma: float | None = None,
                   gap: str | tuple | torch.Tensor | None = None, sampler: str | None = None,
                   sampling_steps: int | None = None, eta: float | None = None,
                   guidance: float | None = None) -> torch.Tensor:
    """The in-memory half of `apply` for audio runs: clips float (N, T) at the run's sample rate
    -> (N, T) float32. `labels` (N,): the clips' classes, used by conditional runs unless
    `label` is given (a ConfigError naming `input_name` for one outside the run's classes).
    `gap`: GAP_HELP's string, (start, end) samples, or a bool mask (T,)/(N, T)."""
    name = name or str(run.run_dir)
    options = dict(method=method, seed=seed, label=label, snr=snr, sigma=sigma, gap=gap, sampler=sampler,
                   sampling_steps=sampling_steps, eta=eta, guidance=guidance)
    problem = task_problem(run, task, name, method)
    if problem:
        raise ConfigError(problem)
    method = method or "diffusion"
    _check_options(run, task, method, options, name)
    x = torch.as_tensor(clips).float()
    if x.dim() != 2 or x.shape[0] < 1 or x.shape[1] < 8:
        raise ShapeError(f"audio {task} needs waveforms (N, T) with T >= 8 samples, got {tuple(x.shape)}")
    sr = int(run.meta["sample_rate"])
    model = run.model
    labels = _check_labels(model, labels, len(x), input_name)
    steps = w = y = g = None  # the diffusion method's
    if method == "diffusion":
        sampler, steps, w, eta = model.sampling_options(sampler, sampling_steps, guidance, eta)  # checks the values
        if getattr(model, "conditional", False):
            y = torch.full((len(x),), label, dtype=torch.long) if label is not None else labels
        g = make_generator(seed)
    if task == "denoise":
        if method == "spectral":
            return spectral_subtraction(x, snr_db=snr, sigma=sigma)
        if method == "wiener":
            return wiener_filter(x, snr_db=snr, sigma=sigma)
        # steps from t*: --sampling-steps if given, else the run's scaled by the share of the process left
        with Progress("denoising", len(x), unit="clips") as bar, bar.part(0, len(x)):
            return denoise_audio(model, x, snr_db=snr, sigma=sigma, steps=sampling_steps, sampler=sampler,
                                 eta=eta, guidance=w, labels=y, generator=g)
    if isinstance(gap, (torch.Tensor, np.ndarray)):
        fill = torch.as_tensor(gap, dtype=torch.bool)
        if fill.shape not in ((x.shape[1],), tuple(x.shape)):
            raise ShapeError(f"a gap mask must be bool ({x.shape[1]},) or {tuple(x.shape)}, got {tuple(fill.shape)}")
        if not bool(fill.any()):
            raise ConfigError("the gap mask selects no sample to fill")
        fill = fill.expand(x.shape)
    else:
        fill = gap_mask(x.shape[1], gap, sr).expand(x.shape)
    if method == "linear":
        return linear_fill(x, fill)
    if method == "zeros":
        return torch.where(fill, torch.zeros_like(x), x)
    with Progress("inpainting", len(x), unit="clips") as bar, bar.part(0, len(x)):
        return inpaint_audio(model, x, fill, steps=steps, sampler=sampler, eta=eta, guidance=w, labels=y,
                             generator=g)


# formats (soundfile subtypes; npz float dtypes) whose samples the output formats hold exactly
_EXACT_IN = {"wav": ("PCM_16", "PCM_S8", "PCM_U8"),
             "npz": ("PCM_16", "PCM_S8", "PCM_U8", "PCM_24", "FLOAT", "float32")}


def read_audio_input(path: str | Path, sample_rate: int) -> tuple[torch.Tensor, torch.Tensor | None, int, str]:
    """--input FILE.wav (mono) or FILE.npz (`audio` float (N, T) or (T,), `sample_rate` one
    positive integer, optional integer `labels` (N,)) -> (float32 (N, T) at `sample_rate`, labels
    or None, the file's own rate, its sample format: a WAV's soundfile subtype, e.g. PCM_16 or
    FLOAT, an npz's float dtype); another rate is resampled (and logged). ShapeError/DataError
    (one line, naming the file) for anything else."""
    from genlab.audio import read_wav, resample

    p = Path(path)
    if not p.is_file():
        raise DataError(f"input {p} not found")
    suffix = p.suffix.lower()
    if suffix == ".wav":
        from genlab.extras import require

        sf = require("soundfile", "audio", "reading audio files")

        a, sr = read_wav(p)
        a, labels, fmt = a[None], None, sf.info(str(p)).subtype
    elif suffix == ".npz":
        try:
            with np.load(p) as z:
                if "audio" not in z or "sample_rate" not in z:
                    raise ShapeError(f"{p} must hold 'audio' (float N x T) and 'sample_rate' "
                                     f"(found: {', '.join(z.files) or 'nothing'})")
                a, rate, labels = z["audio"], z["sample_rate"], (z["labels"] if "labels" in z else None)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise DataError(f"cannot read {p} as .npz: {e}") from None
        if rate.shape != () or rate.dtype.kind not in "iuf":
            raise ShapeError(f"{p}: 'sample_rate' must be one number (Hz), got {rate.dtype} {rate.shape}")
        if not (np.isfinite(rate) and rate > 0 and rate == np.floor(rate)):
            raise DataError(f"{p}: 'sample_rate' must be a positive whole number of Hz, got {rate.item()}")
        sr = int(rate)
        a = a[None] if a.ndim == 1 else a
        if a.dtype.kind != "f" or a.ndim != 2 or a.shape[0] < 1 or not np.isfinite(a).all():
            raise ShapeError(f"{p}: 'audio' must be finite floats (N, T) or (T,), got {a.dtype} {a.shape}")
        if labels is not None and (labels.shape != (len(a),) or labels.dtype.kind not in "iu"):
            raise ShapeError(f"{p}: 'labels' must be integers of shape ({len(a)},), got {labels.dtype} {labels.shape}")
        fmt = str(a.dtype)
    else:
        raise DataError(f"--input must be a mono .wav file (or an .npz with 'audio' and 'sample_rate'), got {p.name}")
    if sr != sample_rate:
        log.info("resampling %s from %d Hz to the run's %d Hz", p, sr, sample_rate)
        a = resample(np.asarray(a, dtype=np.float32), sr, sample_rate)
    x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    return x, None if labels is None else torch.from_numpy(labels).long(), sr, fmt


def _log_inexact_known(input: str | Path, out: Path, rate: int, fmt: str, sample_rate: int) -> None:
    """Inpainting keeps the known samples of the waveform it is given, the input at the run's
    rate; say so (one line) when the output file cannot repeat the input file's samples exactly."""
    kind = out.suffix.lower()[1:]
    if rate == sample_rate and fmt in _EXACT_IN[kind]:
        return
    why = f"was resampled from {rate} Hz" if rate != sample_rate else f"holds {fmt} samples"
    held = "16-bit PCM" if kind == "wav" else "float32"
    log.info("inpaint: %s %s: the known samples are kept exactly at the run's %d Hz in %s, not as the file has them",
             input, why, sample_rate, held)


def apply_audio(run, task: str, *, input: str | Path | None, out: str | Path, name: str | None = None,
                **options) -> Path:
    """`apply` for a loaded audio run: read `input`, run `task`, write `out` (FILE.wav: the clips
    in a row, or FILE.npz: `audio` float32 (N, T), `sample_rate`, `labels`) atomically."""
    from genlab.audio import encode_audio
    from genlab.engine.checkpoint import atomic_write_bytes

    name = name or str(run.run_dir)
    p = Path(out)
    options = {k: v for k, v in options.items() if v is not None}  # flags not given
    problem = task_problem(run, task, name, options.get("method"))  # refuse before reading anything
    if problem:
        raise ConfigError(problem)
    _check_options(run, task, options.get("method") or "diffusion", options, name)
    if p.suffix.lower() not in (".wav", ".npz"):
        raise ConfigError(f"--out for an audio run must be FILE.wav or FILE.npz, got {p.name}")
    if input is None:
        raise ConfigError(f"{task} needs --input FILE.wav")
    sr = int(run.meta["sample_rate"])
    clips, labels, rate, fmt = read_audio_input(input, sr)
    result = run_audio_task(run, task, clips, labels, name=name, input_name=str(input), **options)
    if task == "inpaint":
        _log_inexact_known(input, p, rate, fmt, sr)
    atomic_write_bytes(p, encode_audio(p.suffix.lower()[1:], result, sr, labels))
    return p


# --------------------------------------------------------------------------- benchmarks


def _scores(est: torch.Tensor, ref: torch.Tensor, sr: int, perceptual: bool) -> dict[str, float]:
    from genlab.metrics.enhancement import pesq_score, si_sdr, stoi_score

    out = {"si_sdr": float(si_sdr(est, ref).mean())}
    if perceptual:
        out["pesq"] = _nanmean(pesq_score(ref, est, sr))
        out["stoi"] = _nanmean(stoi_score(ref, est, sr))
    return out


def _nanmean(a: np.ndarray) -> float:
    """The mean of the clips a score could be computed for (NaN when none)."""
    ok = a[~np.isnan(a)]
    return float(ok.mean()) if len(ok) else float("nan")


def _perceptual_available() -> bool:
    try:
        import pesq  # noqa: F401
        import pystoi  # noqa: F401
    except ImportError:
        return False
    return True


def _model_of(run):
    return None if run is None else getattr(run, "model", run)


def denoise_benchmark(run, clips: torch.Tensor, sample_rate: int, kinds: Sequence[str] = NOISES,
                      snr_db: float = 5.0, seed: int = 0, *, labels: torch.Tensor | None = None,
                      known_snr: bool = True, babble_pool: Sequence[torch.Tensor] | None = None,
                      **diffusion_options) -> dict:
    """Mean SI-SDR (dB; and PESQ, STOI when installed) of the noisy input and of spectral
    subtraction, Wiener and diffusion outputs, per noise kind.

    Args:
        run: a diffwave Run (or the model itself); None scores the baselines only.
        clips: clean float (N, T) (or (N, 1, T)) waveforms at `sample_rate`, the run's rate.
        snr_db: the SNR of the noise added; `known_snr`: every method is told it (else each
            estimates the level from the quietest frames).
        babble_pool: other speakers' recordings; default: for clip i, the other clips.
        diffusion_options: steps, sampler, eta, guidance for `denoise_audio`.
    Returns:
        {"snr_db", "n", "kinds": {kind: {"noisy" | "spectral" | "wiener" | "diffusion":
        {"si_sdr", "pesq"?, "stoi"?}}}}.
    """
    x = torch.as_tensor(clips).float()
    x = x[:, 0] if x.dim() == 3 else x
    model = _model_of(run)
    perceptual = _perceptual_available()
    level = snr_db if known_snr else None
    res: dict = {"snr_db": snr_db, "n": len(x), "known_snr": known_snr, "kinds": {}}
    for k, kind in enumerate(kinds):
        noisy = torch.stack([
            add_noise(x[i], kind, snr_db, seed + 1000 * k + i,
                      babble_pool if babble_pool is not None else [x[j] for j in range(len(x)) if j != i])
            for i in range(len(x))])
        outs = {"noisy": noisy, "spectral": spectral_subtraction(noisy, snr_db=level),
                "wiener": wiener_filter(noisy, snr_db=level)}
        if model is not None:
            outs["diffusion"] = denoise_audio(model, noisy, snr_db=level, labels=labels,
                                              generator=make_generator(seed + k), **diffusion_options)
        res["kinds"][kind] = {m: _scores(v, x, sample_rate, perceptual) for m, v in outs.items()}
    return res


def inpaint_benchmark(run, clips: torch.Tensor, sample_rate: int, gap_s: float = 0.05, seed: int = 0, *,
                      gap: tuple[int, int] | None = None, labels: torch.Tensor | None = None,
                      **diffusion_options) -> dict:
    """SI-SDR and SNR (dB) inside a gap of linear interpolation, zeros (SNR only: SI-SDR of
    silence is meaningless) and diffusion filling, and PESQ and STOI of the whole filled clip
    (when the packages are installed, as in `denoise_benchmark`), means over clips.

    Args:
        clips: clean float (N, T) (or (N, 1, T)) at `sample_rate`. gap: (start, end) samples;
            default `gap_s` seconds in the middle (where FSDD's centred recordings speak).
        run: a diffwave Run or model; None scores the baselines only.
    Returns:
        {"gap": [start, end], "n", "methods": {"linear" | "zeros" | "diffusion":
        {"si_sdr"?, "snr", "pesq"?, "stoi"?}}}.
    """
    from genlab.metrics.enhancement import si_sdr, snr_db

    x = torch.as_tensor(clips).float()
    x = x[:, 0] if x.dim() == 3 else x
    T = x.shape[-1]
    if gap is None:
        n = max(1, int(round(gap_s * sample_rate)))
        gap = ((T - n) // 2, (T - n) // 2 + n)
    s, e = parse_gap(tuple(gap), T, sample_rate)
    fill = torch.zeros(T, dtype=torch.bool)
    fill[s:e] = True
    outs = {"linear": linear_fill(x, fill), "zeros": torch.where(fill, torch.zeros_like(x), x)}
    model = _model_of(run)
    if model is not None:
        outs["diffusion"] = inpaint_audio(model, x, fill, labels=labels, generator=make_generator(seed),
                                          **diffusion_options)
    perceptual = _perceptual_available()
    methods = {}
    for m, v in outs.items():
        methods[m] = {"snr": float(snr_db(v[:, s:e], x[:, s:e]).mean())}
        if m != "zeros":
            methods[m]["si_sdr"] = float(si_sdr(v[:, s:e], x[:, s:e]).mean())
        if perceptual:  # the whole clip: PESQ and STOI need far more than a gap's samples
            whole = _scores(v, x, sample_rate, perceptual)
            methods[m].update(pesq=whole["pesq"], stoi=whole["stoi"])
    return {"gap": [s, e], "n": len(x), "methods": methods}
