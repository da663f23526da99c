"""Audio applications: the enhancement scores (SI-SDR against torchmetrics, PESQ/STOI wrappers),
the noise makers, the classical denoisers and gap filler, diffusion denoising and gap filling
with a tiny WaveDiffusion (the known samples kept bit for bit), and `genlab apply` on tiny
diffwave and WaveNet runs with its one-line errors."""

import logging
import math
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from genlab.apply import apply
from genlab.apply import audio as A
from genlab.audio import read_wav
from genlab.errors import ConfigError, DataError, ShapeError
from genlab.metrics.enhancement import pesq_score, si_sdr, snr_db, stoi_score
from genlab.models.diffusion.diffwave import WaveDiffusion
from genlab.seed import make_generator
from tests.conftest import DATA
from tests.test_diffwave import _model
from tests.tiny_runs import train_tiny_audio, train_tiny_wavenet

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (see conftest)

SR = 8000
TINY = dict(patch=4, layers=2, cycle=2)  # _model: an untrained 2-layer WaveDiffusion on 64 samples, 50 steps


def tone_burst(T: int = 4000, freq: float = 440.0, amp: float = 0.5) -> torch.Tensor:
    """A tone in the middle half of T samples, silence either side (speech-like pauses)."""
    x = amp * torch.sin(2 * math.pi * freq * torch.arange(T) / SR)
    x[: T // 4] = 0
    x[-(T // 4):] = 0
    return x


# --------------------------------------------------------------------------- scores


def test_si_sdr_matches_torchmetrics():
    from torchmetrics.audio import ScaleInvariantSignalDistortionRatio
    from torchmetrics.functional.audio import scale_invariant_signal_distortion_ratio

    g = make_generator(0)
    ref = torch.randn(3, 500, generator=g, dtype=torch.float64) + 0.2
    est = 0.7 * ref + 0.4 * torch.randn(3, 500, generator=g, dtype=torch.float64)
    ours = si_sdr(est, ref)
    theirs = scale_invariant_signal_distortion_ratio(est, ref, zero_mean=True)
    assert ours.shape == (3,) and torch.allclose(ours, theirs, atol=1e-9)
    acc = ScaleInvariantSignalDistortionRatio(zero_mean=True)
    acc.update(est.float(), ref.float())
    assert abs(float(acc.compute()) - float(ours.mean())) < 1e-3


def test_si_sdr_identity_scale_invariance_and_a_known_value():
    g = make_generator(1)
    x = torch.randn(2, 400, generator=g, dtype=torch.float64)
    assert bool((si_sdr(x, x) > 100).all())  # identical: float64 epsilon bounds it, far above any real score
    assert bool((si_sdr(3.0 * x, x) > 100).all())
    y = x + 0.5 * torch.randn(2, 400, generator=g, dtype=torch.float64)
    for a in (0.25, 4.0, -1.0):  # a gain (even a sign flip) on the estimate changes nothing
        assert torch.allclose(si_sdr(a * y, x), si_sdr(y, x), atol=1e-9)
    # x plus noise orthogonal to it (both zero-mean) at |x|^2 / |n|^2 = 10^(7.5 / 10): exactly 7.5 dB
    x = x - x.mean(1, keepdim=True)
    n = torch.randn(2, 400, generator=g, dtype=torch.float64)
    n = n - n.mean(1, keepdim=True)
    n = n - ((n * x).sum(1, keepdim=True) / x.pow(2).sum(1, keepdim=True)) * x
    n = n * (x.pow(2).sum(1, keepdim=True) / n.pow(2).sum(1, keepdim=True) / 10 ** 0.75).sqrt()
    assert torch.allclose(si_sdr(x + n, x), torch.full((2,), 7.5, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(snr_db(x + n, x), torch.full((2,), 7.5, dtype=torch.float64), atol=1e-9)


@pytest.mark.skipif(DATA is None or not (DATA / "fsdd" / "recordings").is_dir(), reason="FSDD recordings needed")
def test_pesq_and_stoi_rank_clean_above_noisy_and_need_their_packages(monkeypatch):
    pytest.importorskip("pesq")
    pytest.importorskip("pystoi")
    x, sr = read_wav(DATA / "fsdd" / "recordings" / "7_jackson_0.wav")
    clean = torch.from_numpy(x)
    noisy = A.add_noise(clean, "white", 0.0, seed=0)
    p_clean, p_noisy = pesq_score(clean, clean, sr)[0], pesq_score(clean, noisy, sr)[0]
    assert p_clean > 4.0 and 1.0 <= p_noisy < p_clean - 1
    s = stoi_score(torch.stack([clean, clean]), torch.stack([clean, noisy]), sr)
    assert s[0] > 0.99 and s[1] < s[0]
    monkeypatch.setitem(sys.modules, "pesq", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "pystoi", None)
    with pytest.raises(ConfigError, match=r"pip install genlab\[bench\]"):
        pesq_score(clean, noisy, sr)
    with pytest.raises(ConfigError, match=r"pip install genlab\[bench\]"):
        stoi_score(clean, noisy, sr)


# --------------------------------------------------------------------------- noise


@pytest.mark.parametrize("kind", A.NOISES)
def test_noise_makers_hit_the_snr_and_are_seeded(kind):
    g = make_generator(2)
    clean = 0.3 * torch.randn(2, 3000, generator=g)
    pool = [tone_burst(1500, f) for f in (200, 310, 450, 520)] if kind == "babble" else None
    for target in (-5.0, 0.0, 10.0):
        noisy = A.add_noise(clean, kind, target, seed=3, babble_pool=pool)
        got = snr_db(noisy, clean)
        assert torch.allclose(got, torch.full((2,), target, dtype=torch.float64), atol=0.1)
    a, b = (A.add_noise(clean, kind, 0.0, seed=s, babble_pool=pool) for s in (3, 3))
    assert torch.equal(a, b) and not torch.equal(a, A.add_noise(clean, kind, 0.0, seed=4, babble_pool=pool))


def _slope_db_per_decade(x: np.ndarray) -> float:
    from scipy.signal import welch

    f, p = welch(x, fs=SR, nperseg=1024)
    band = (f >= 50) & (f <= 3500)
    return float(np.polyfit(np.log10(f[band]), 10 * np.log10(p[band]), 1)[0])


def test_pink_noise_falls_10_db_per_decade_and_white_is_flat():
    g = make_generator(5)
    assert abs(_slope_db_per_decade(A.pink_noise(1, 2 ** 16, g)[0].numpy()) + 10) < 1.0
    assert abs(_slope_db_per_decade(A.white_noise(1, 2 ** 16, g)[0].numpy())) < 1.0
    with pytest.raises(ConfigError, match="babble noise needs"):
        A.add_noise(tone_burst(), "babble", 5.0, seed=0)
    with pytest.raises(ConfigError, match="white, pink, babble"):
        A.add_noise(tone_burst(), "brown", 5.0, seed=0)


def test_noise_level_from_the_snr_and_from_the_quietest_frames():
    x = tone_burst(8000)
    y = A.add_noise(x, "white", 0.0, seed=1)[None]
    true = float((y[0] - x).std())
    assert abs(float(A.noise_std_from_snr(y, 0.0)[0]) / true - 1) < 0.03
    # the quietest noise-only frames are a little quieter than average: about 10% low
    assert 0.85 < float(A.estimate_noise_std(y)[0]) / true < 1.02


# --------------------------------------------------------------------------- baselines


@pytest.mark.parametrize("method", [A.spectral_subtraction, A.wiener_filter])
def test_spectral_baselines_improve_a_tone_in_white_noise(method):
    x = tone_burst(6000)
    y = A.add_noise(x, "white", 0.0, seed=0)
    before = float(si_sdr(y, x))
    for level in ({}, {"snr_db": 0.0}):  # blind, and told the SNR
        out = method(y, **level)
        assert out.shape == y.shape and out.dtype == torch.float32
        assert float(si_sdr(out, x)) > before + 5


def test_linear_fill_is_exact_on_a_ramp_and_keeps_the_known_samples():
    x = torch.linspace(-0.8, 0.6, 100).repeat(2, 1)
    x[1] = x[1] * -0.5 + 0.1
    fill = torch.zeros(100, dtype=torch.bool)
    fill[30:60] = True
    out = A.linear_fill(x, fill)
    assert torch.allclose(out, x, atol=1e-6) and torch.equal(out[:, ~fill], x[:, ~fill])
    edge = torch.zeros(100, dtype=torch.bool)
    edge[90:] = True  # a gap at the end holds the last known sample
    assert torch.equal(A.linear_fill(x, edge)[:, 90:], x[:, 89:90].expand(2, 10))


# --------------------------------------------------------------------------- diffusion


def test_start_step_matches_sigma_within_one_step():
    m = _model(**TINY, randomize=False)
    ratio = ((1 - m.alpha_bar) / m.alpha_bar).sqrt()  # increasing in t
    for sigma in (0.01, 0.1, 0.3, 1.0, 3.0):
        t = A.start_step(m, sigma)
        assert 0 <= t < m.T
        lo, hi = ratio[max(t - 1, 0)], ratio[min(t + 1, m.T - 1)]
        assert lo <= sigma <= hi or t in (0, m.T - 1)
    assert A.start_step(m, 1e6) == m.T - 1 and A.start_step(m, 0.0) == 0


@pytest.mark.parametrize("T, sampler", [(64, "dpmpp"), (40, "ddpm"), (150, "dpmpp")])
def test_diffusion_inpainting_keeps_the_known_samples_exactly(T, sampler):
    """One window, a padded short clip, and a clip of three overlapping windows."""
    m = _model(**TINY)
    x = 0.5 * torch.sin(torch.arange(T) / 3.0).repeat(2, 1)
    x[1] *= -0.7
    before = x.clone()
    fill = torch.zeros(T, dtype=torch.bool)
    fill[T // 3: T // 3 + 20] = True
    out = A.inpaint_audio(m, x, fill, sampler=sampler, steps=4, generator=make_generator(0))
    assert torch.equal(x, before)  # the input is not written to
    assert out.shape == x.shape and torch.equal(out[:, ~fill], x[:, ~fill])  # bit for bit
    assert bool((out[:, fill] != x[:, fill]).all()) and bool(out.isfinite().all())
    again = A.inpaint_audio(m, x, fill, sampler=sampler, steps=4, generator=make_generator(0))
    assert torch.equal(out, again)  # seeded


@pytest.mark.parametrize("T", [40, 64, 150])
def test_diffusion_denoising_at_a_tiny_noise_level_returns_the_input(T, monkeypatch):
    """At sigma ~ 0 the start step is 0, where x_0 ~ x: so padding, windows and the cross-fade
    must give the input back (up to the network's last small correction). At 5 dB SNR every
    window starts at the step matching its clip's noise level, from sqrt(ab) y, with the run's
    steps scaled to the share of the process left."""
    m = _model(**TINY)
    y = 0.4 * torch.sin(torch.arange(T) / 4.0).repeat(2, 1)
    out = A.denoise_audio(m, y, sigma=1e-4, generator=make_generator(0))
    assert out.shape == y.shape and (out - y).abs().max() < 0.05
    noisy = A.add_noise(y, "white", 5.0, seed=0)
    calls, sample_from = [], m.sample_from

    def spy(x, start, **kw):
        calls.append((start, kw["steps"], x.detach().clone()))
        return sample_from(x, start, **kw)

    monkeypatch.setattr(m, "sample_from", spy)
    a = A.denoise_audio(m, noisy, snr_db=5.0, generator=make_generator(1))
    sigma = A.noise_std_from_snr(noisy, 5.0)
    starts = {A.start_step(m, float(s)) for s in sigma}
    assert {t for t, *_ in calls} == starts and 0 < min(starts) and max(starts) < m.T // 2
    for t, steps, x in calls:
        assert steps == min(t + 1, max(1, round(m.cfg.sampling_steps * (t + 1) / m.T)))
        if T == 64:  # one window per clip, no padding: x_t* = sqrt(ab_t*) y for one of the clips
            for row in x[:, 0]:
                assert any(torch.allclose(row, math.sqrt(m.ab(t)) * clip, atol=1e-6) for clip in noisy)
    assert sum(len(x) for *_, x in calls) == 2 * len(A.window_starts(max(T, 64), 64))
    b = A.denoise_audio(m, noisy, sigma=sigma, generator=make_generator(1))  # the level given as a std
    assert torch.equal(a, b) and bool(a.isfinite().all()) and not torch.allclose(a, noisy, atol=1e-3)


class Oracle(torch.nn.Module):
    """A denoising network that knows the clean window `clean` (L,): it outputs the exact
    v (or eps, x0) target for it, so every x0 estimate is `clean`, at every step."""

    def __init__(self, model: WaveDiffusion, clean: torch.Tensor):
        super().__init__()
        self.model, self.clean = [model], clean

    def forward(self, x, t, y=None):
        from genlab.models.diffusion import schedules as sch

        m = self.model[0]
        ab = m.alpha_bar[t].float()  # (B,)
        c = self.clean.expand_as(x)
        eps = (x - ab.sqrt().view(-1, 1, 1) * c) / (1 - ab).sqrt().view(-1, 1, 1)
        return sch.from_x0_eps(c, eps, ab, m.cfg.prediction)


@pytest.mark.parametrize("T", [64, 40, 160])
def test_with_a_perfect_network_denoising_and_filling_give_the_clean_signal(T):
    """The bookkeeping around the model (start step and scaling, padding, windows and their
    cross-fade, the known-sample projection) is exact: a network that knows the clean signal
    gets it back. The signal repeats every 16 samples, so every window (starts 0, 32, 64, 96
    for T = 160) and the centre-padded short clip see the same clean window."""
    m = _model(**TINY, randomize=False)
    clean = 0.5 * torch.sin(2 * math.pi * torch.arange(T) / 16)
    window = clean[:64]
    if T < 64:  # a short clip sits in the middle of a window of silence (and, when noisy, noise)
        window = torch.zeros(64)
        window[(64 - T) // 2:(64 - T) // 2 + T] = clean
    m.net = Oracle(m, window)
    noisy = A.add_noise(clean[None], "white", 0.0, seed=0)
    out = A.denoise_audio(m, noisy, snr_db=0.0, generator=make_generator(0))
    assert (out[0] - clean).abs().max() < 1e-4
    fill = torch.zeros(T, dtype=torch.bool)
    fill[T // 4: T // 2] = True
    gappy = torch.where(fill, torch.zeros_like(clean), clean)[None]
    filled = A.inpaint_audio(m, gappy, fill, generator=make_generator(0))
    assert (filled[0] - clean).abs().max() < 1e-4


def test_benchmarks_report_every_method():
    """Every method scored (PESQ and STOI too when installed); on tones in white noise at 5 dB
    the classical denoisers raise SI-SDR above the noisy input's. The 256-sample clips take
    several of the model's 64-sample windows."""
    m = _model(**TINY, randomize=False)
    perceptual = A._perceptual_available()
    clips = torch.stack([tone_burst(256, f) for f in (300, 500, 700)])
    r = A.denoise_benchmark(m, clips, SR, kinds=("white", "babble"), snr_db=5, seed=0, steps=2)
    assert set(r["kinds"]) == {"white", "babble"}
    for scores in r["kinds"].values():
        assert set(scores) == {"noisy", "spectral", "wiener", "diffusion"}
        assert abs(scores["noisy"]["si_sdr"] - 5) < 0.5 and ("pesq" in scores["noisy"]) == perceptual
    white = r["kinds"]["white"]
    for method in ("spectral", "wiener"):
        assert white[method]["si_sdr"] > white["noisy"]["si_sdr"] + 1.5  # about +3 dB here
    g = A.inpaint_benchmark(m, clips, SR, gap_s=0.004, steps=2)
    assert set(g["methods"]) == {"linear", "zeros", "diffusion"} and g["gap"] == [112, 144]
    assert g["methods"]["zeros"]["snr"] == pytest.approx(0.0, abs=1e-9)
    for scores in g["methods"].values():
        assert ({"pesq", "stoi"} <= set(scores)) == perceptual


# --------------------------------------------------------------------------- gaps


def test_gap_parsing_and_errors():
    assert A.parse_gap("0.25:0.5", 8000, SR) == (2000, 4000)
    assert A.parse_gap("250ms:500ms", 8000, SR) == (2000, 4000)
    assert A.parse_gap("2000n:4000n", 8000, SR) == (2000, 4000)
    assert A.parse_gap((10, 20), 8000, SR) == (10, 20)
    for spec, msg in [("0.5:1.2", "after the end of the recording"), ("0.4:0.3", "is empty"),
                      ("0.3:0.3", "is empty"), ("abc", "START:END"), ("-0.1:0.2", "START:END"),
                      ("0:1", "covers the whole recording"), ((-5, 10), "starts before")]:
        with pytest.raises(ConfigError, match=msg):
            A.parse_gap(spec, 8000, SR)


# --------------------------------------------------------------------------- genlab apply


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny class-conditional diffwave and WaveNet runs (tests/tiny_runs.py: 2 steps on 256-sample
    tones at 8 kHz in low/ and high/), and a test WAV of 400 samples."""
    root = tmp_path_factory.mktemp("audio_apply")
    out = {"diffwave": train_tiny_audio(root), "wavenet": train_tiny_wavenet(root)}
    rec = (0.3 * np.sin(np.arange(400) / 5.0) * np.hanning(400)).astype(np.float32)
    sf.write(root / "rec.wav", rec, SR, subtype="PCM_16")
    out["rec"] = root / "rec.wav"
    return out


def test_apply_inpaint_writes_a_wav_keeping_the_known_samples(runs, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="genlab"):
        out = apply(runs["diffwave"], "inpaint", input=runs["rec"], out=tmp_path / "f.wav", gap="100n:200n",
                    seed=1, mask=None, steps=None)  # the CLI passes every flag, given or not
    assert "kept exactly" not in caplog.text  # 16-bit PCM at the run's rate: the file's samples themselves
    got, sr = sf.read(out, dtype="int16")
    src, _ = sf.read(runs["rec"], dtype="int16")
    assert sr == SR and got.shape == src.shape
    assert (got[:100] == src[:100]).all() and (got[200:] == src[200:]).all() and (got[100:200] != src[100:200]).any()
    lin = apply(runs["wavenet"], "inpaint", input=runs["rec"], out=tmp_path / "l.npz", gap="100n:200n",
                method="linear")
    with np.load(lin) as z:
        assert z["audio"].shape == (1, 400) and z["audio"].dtype == np.float32 and int(z["sample_rate"]) == SR
        a = z["audio"][0]
    x, _ = read_wav(runs["rec"])
    assert (a[:100] == x[:100]).all() and (a[200:] == x[200:]).all()  # the known samples, exactly
    assert np.allclose(a[99:201], np.linspace(x[99], x[200], 102), atol=1e-6)  # a straight line across the gap


def test_apply_inpaint_says_when_the_file_s_samples_are_not_kept_as_they_are(runs, tmp_path, caplog):
    x, _ = read_wav(runs["rec"])
    sf.write(tmp_path / "float.wav", x + 1e-5, SR, subtype="FLOAT")  # not on the 16-bit grid
    sf.write(tmp_path / "hi.wav", np.repeat(x, 2), 2 * SR, subtype="PCM_16")
    for name, why in (("float.wav", "holds FLOAT samples"), ("hi.wav", "was resampled from 16000 Hz")):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="genlab"):
            apply(runs["wavenet"], "inpaint", input=tmp_path / name, out=tmp_path / "o.wav", gap="0.01:0.02",
                  method="linear")
        lines = [r.getMessage() for r in caplog.records if "kept exactly" in r.getMessage()]
        assert len(lines) == 1 and why in lines[0] and "8000 Hz in 16-bit PCM" in lines[0]


def test_apply_denoise_resamples_other_rates(runs, tmp_path, caplog):
    rec, _ = read_wav(runs["rec"])
    sf.write(tmp_path / "hi.wav", np.repeat(rec, 2), 2 * SR, subtype="PCM_16")  # the same, at 16 kHz
    with caplog.at_level(logging.INFO, logger="genlab"):
        out = apply(runs["diffwave"], "denoise", input=tmp_path / "hi.wav", out=tmp_path / "d.wav", snr=10, seed=0)
    assert "resampling" in caplog.text and "8000 Hz" in caplog.text
    x, sr = sf.read(out)
    assert sr == SR and len(x) == 400


def test_apply_baseline_denoisers_raise_si_sdr_on_any_audio_run(runs, tmp_path):
    clean = tone_burst(2000, 440, amp=0.3)
    sf.write(tmp_path / "noisy.wav", A.add_noise(clean, "white", 5.0, seed=0).numpy(), SR, subtype="PCM_16")
    noisy, _ = read_wav(tmp_path / "noisy.wav")
    before = float(si_sdr(torch.from_numpy(noisy), clean))
    for method in ("spectral", "wiener"):  # baselines run on any audio run
        out = apply(runs["wavenet"], "denoise", input=tmp_path / "noisy.wav", out=tmp_path / f"{method}.wav",
                    method=method, snr=5)
        got, _ = read_wav(out)
        assert got.shape == noisy.shape and float(si_sdr(torch.from_numpy(got), clean)) > before + 3


def test_apply_npz_input_checks_labels_and_sample_rate(runs, tmp_path):
    x, _ = read_wav(runs["rec"])
    audio = np.stack([x, x[::-1].copy()])

    def npz(name, **arrays):
        np.savez(tmp_path / name, **arrays)
        return tmp_path / name

    ok = apply(runs["diffwave"], "inpaint", input=npz("ok.npz", audio=audio, sample_rate=SR, labels=[1, 0]),
               out=tmp_path / "ok.npz", gap="100n:200n", method="linear")
    with np.load(ok) as z:
        assert z["labels"].tolist() == [1, 0] and (z["audio"][:, :100] == audio[:, :100]).all()
    for labels in ([0, 2], [-1, 0]):  # 2 would be the run's "no label" embedding: no silent unconditional
        bad = npz("labels.npz", audio=audio, sample_rate=SR, labels=labels)
        for method in ("diffusion", "spectral"):
            with pytest.raises(ConfigError, match=r"labels\.npz: labels must be classes in 0\.\.1 for this run"):
                apply(runs["diffwave"], "denoise", input=bad, out=tmp_path / "o.npz", method=method, snr=5)
    for rate, err, msg in [(np.array([SR, SR]), ShapeError, "'sample_rate' must be one number"),
                           (np.array("8000"), ShapeError, "'sample_rate' must be one number"),
                           (0, DataError, "'sample_rate' must be a positive whole number of Hz, got 0"),
                           (-8000, DataError, "positive whole number"), (8000.5, DataError, "positive whole number")]:
        with pytest.raises(err, match=msg):
            apply(runs["diffwave"], "denoise", input=npz("rate.npz", audio=audio, sample_rate=rate),
                  out=tmp_path / "o.npz", method="spectral")
    assert not (tmp_path / "o.npz").exists()


def test_apply_audio_errors(runs, tmp_path):
    rec = runs["rec"]
    sf.write(tmp_path / "stereo.wav", np.zeros((400, 2), np.float32), SR)
    (tmp_path / "text.wav").write_text("not audio")
    (tmp_path / "song.mp3").write_bytes(b"ID3")
    cases = [
        (dict(run_dir=runs["wavenet"], task="denoise", input=rec), ConfigError, "needs a diffwave run.*--method"),
        (dict(run_dir=runs["wavenet"], task="inpaint", input=rec, gap="0.01:0.02"), ConfigError, "diffwave"),
        (dict(run_dir=runs["wavenet"], task="denoise", input=rec, method="spectral", sampler="ddim", guidance=2),
         ConfigError, r"^--guidance, --sampler: diffusion options, but .* is a wavenet run$"),
        (dict(run_dir=runs["wavenet"], task="inpaint", input=rec, gap="0.01:0.02", method="linear", zeta=1),
         ConfigError, r"^--zeta: diffusion options, but .* is a wavenet run$"),
        (dict(run_dir=runs["diffwave"], task="inpaint", input=rec, gap="0.01:0.02", zeta=1), ConfigError,
         "--zeta: not an option of inpaint for audio runs"),
        (dict(run_dir=runs["diffwave"], task="inpaint", input=rec, gap="0.01:0.9"), ConfigError, "after the end"),
        (dict(run_dir=runs["diffwave"], task="inpaint", input=rec, gap="0.02:0.01"), ConfigError, "is empty"),
        (dict(run_dir=runs["diffwave"], task="inpaint", input=rec), ConfigError, "needs --gap"),
        (dict(run_dir=runs["diffwave"], task="upscale", input=rec), ConfigError, "audio runs do denoise and inpaint"),
        (dict(run_dir=runs["diffwave"], task="denoise", input=tmp_path / "stereo.wav"), DataError, "2 channels"),
        (dict(run_dir=runs["diffwave"], task="denoise", input=tmp_path / "text.wav"), DataError, "not a readable"),
        (dict(run_dir=runs["diffwave"], task="denoise", input=tmp_path / "song.mp3"), DataError, "mono .wav"),
        (dict(run_dir=runs["diffwave"], task="denoise", input=rec, method="spectral", sampler="ddim"),
         ConfigError, "--sampler: diffusion options, but --method spectral does not sample a model"),
        (dict(run_dir=runs["diffwave"], task="denoise", input=rec, method="median"), ConfigError,
         "diffusion, spectral, wiener"),
        (dict(run_dir=runs["diffwave"], task="inpaint", input=rec, gap="0:0.01", mask="center"), ConfigError,
         "--mask: not an option"),
        (dict(run_dir=runs["diffwave"], task="denoise", input=rec, snr=5, sigma=0.1), ConfigError, "not both"),
        (dict(run_dir=runs["diffwave"], task="denoise", input=rec, label=2), ConfigError,
         r"--label must be in 0\.\.1"),
        (dict(run_dir=runs["diffwave"], task="denoise", input=rec, method="wiener", label=1), ConfigError,
         "--method wiener does not use it"),
    ]
    for kw, err, msg in cases:
        with pytest.raises(err, match=msg):
            apply(out=tmp_path / "o.wav", **kw)
    with pytest.raises(ConfigError, match="FILE.wav or FILE.npz"):
        apply(runs["diffwave"], "denoise", input=rec, out=tmp_path / "o.png")
    assert not (tmp_path / "o.wav").exists() and not (tmp_path / "o.png").exists()
