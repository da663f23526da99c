"""Audio metrics: the IS-style score, Frechet distance and label accuracy against hand-computed
values; the shipped digits-fsdd judge on real FSDD clips and its weights checks; evaluate_audio's
report entries and the audio HTML on a fake audio run."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from genlab.audio import fit_length, read_wav
from genlab.data.audio import AudioData
from genlab.errors import CheckpointError, ConfigError, ShapeError
from genlab.metrics import audio as am
from tests.conftest import DATA

pytestmark = pytest.mark.usefixtures("one_thread")

FSDD = DATA / "fsdd" / "recordings" if DATA is not None else None
T = 5120


def log_table(p: list[list[float]]) -> torch.Tensor:
    """A probability table as logits (log p; zeros as log 1e-30, so 0 log 0 counts as 0)."""
    return torch.tensor(p, dtype=torch.float64).clamp_min(1e-30).log()


# --------------------------------------------------------------------------- pure metrics


def test_audio_is_on_hand_computed_tables():
    assert am.audio_is(log_table([[0, 1, 0]] * 4))[0] == pytest.approx(1.0, abs=1e-12)  # one class only
    k = 5
    mean, std = am.audio_is(log_table(np.eye(k).tolist()))  # each class once, judged with certainty
    assert mean == pytest.approx(k, rel=1e-12) and std == 0.0
    # rows (1/2, 1/2) and (1, 0): p(y) = (3/4, 1/4);
    # KL = 1/2 ln(2/3) + 1/2 ln 2 and ln(4/3); IS = exp of their mean = 1.240806...
    kl = [0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25), math.log(1 / 0.75)]
    assert am.audio_is(log_table([[0.5, 0.5], [1, 0]]))[0] == pytest.approx(math.exp(sum(kl) / 2), rel=1e-12)
    # splits: two copies of the uniform table give K in each split, std 0
    assert am.audio_is(log_table(np.eye(k).tolist() * 2), splits=2) == pytest.approx((k, 0.0))
    assert am.is_splits(20) == 1 and am.is_splits(1000) == 10 and am.is_splits(450) == 4
    with pytest.raises(ShapeError, match="N >= splits"):
        am.audio_is(torch.zeros(3, 10), splits=10)


def exact_moments(mu: torch.Tensor, a: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n points (n, D) whose sample mean is exactly mu and unbiased covariance exactly a a^T."""
    z = torch.randn(n, len(mu), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = z - z.mean(0)
    l_inv = torch.linalg.inv(torch.linalg.cholesky(z.T @ z / (n - 1)))
    return mu + (z @ l_inv.T) @ a.T  # whitened, then coloured


def test_frechet_distance_self_and_closed_form():
    x = torch.randn(200, 6, generator=torch.Generator().manual_seed(0))
    assert abs(am.frechet_distance(x, x)) < 1e-6
    # diagonal covariances: FD = |mu1 - mu2|^2 + sum_i (s1_i - s2_i)^2 with s the standard deviations
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0], dtype=torch.float64), torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    s1, s2 = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64), torch.tensor([3.0, 1.0, 0.5], dtype=torch.float64)
    a, b = exact_moments(mu1, torch.diag(s1), 50, 1), exact_moments(mu2, torch.diag(s2), 80, 2)
    closed = float((mu1 - mu2).pow(2).sum() + (s1 - s2).pow(2).sum())  # 5 + 4 + 1 = 10
    assert am.frechet_distance(a, b) == pytest.approx(closed, rel=1e-9)
    # full covariances: against scipy's matrix square root
    from scipy.linalg import sqrtm

    la = torch.tensor([[1.0, 0, 0], [0.8, 0.6, 0], [-0.3, 0.2, 1.1]], dtype=torch.float64)
    lb = torch.tensor([[0.5, 0, 0], [0.1, 1.5, 0], [0.7, -0.4, 0.3]], dtype=torch.float64)
    ca, cb = (la @ la.T).numpy(), (lb @ lb.T).numpy()
    closed = float((mu1 - mu2).pow(2).sum()) + np.trace(ca + cb - 2 * sqrtm(ca @ cb).real)
    a, b = exact_moments(mu1, la, 40, 3), exact_moments(mu2, lb, 60, 4)
    assert am.frechet_distance(a, b) == pytest.approx(closed, rel=1e-9)


def test_label_accuracy_hand_made():
    logits = torch.tensor([[5.0, 0, 0], [0, 5, 0], [0, 0, 5], [5, 0, 0], [0, 5, 0]])  # judged 0 1 2 0 1
    acc, per = am.label_accuracy(logits, torch.tensor([0, 1, 1, 0, 2]))
    assert acc == pytest.approx(3 / 5)
    assert per == pytest.approx([1.0, 0.5, 0.0])  # class 0: 2/2, class 1: 1/2, class 2: 0/1
    with pytest.raises(ShapeError, match="labels"):
        am.label_accuracy(logits, torch.tensor([0, 1]))


def test_real_time_factor():
    assert am.real_time_factor(10, 8000, 8000, 2.0) == pytest.approx(5.0)  # 10 s of audio in 2 s


# --------------------------------------------------------------------------- the judge


def fsdd_clips(indices: range, per_digit: int, speakers: tuple[str, ...] = ("george", "jackson", "lucas",
                                                                             "nicolas", "theo", "yweweler")):
    """per_digit real clips of each digit (recording indices `indices`), centred in T samples
    as genlab's FSDD reader holds them -> (float32 (N, T), int64 (N,))."""
    if FSDD is None or not FSDD.is_dir():
        pytest.skip("FSDD not found (set GENLAB_DATA or put it in ../shared/data)")
    xs, ys = [], []
    for d in range(10):
        names = [f"{d}_{s}_{i}.wav" for i in indices for s in speakers]
        for k, name in enumerate(names[:per_digit]):
            xs.append(fit_length(read_wav(FSDD / name)[0], T)[0])
            ys.append(d)
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys)


@pytest.fixture(scope="module")
def judge():
    return am.load_judge()


def test_judge_shapes_determinism_any_length(judge):
    assert not judge.training
    g = torch.Generator().manual_seed(0)
    for length in (100, 256, 3000, T, 9001):
        x = 0.1 * torch.randn(3, length, generator=g)
        with torch.no_grad():
            lg, f = judge(x), judge.features(x[:, None])  # (N, T) and (N, 1, T) both accepted
        assert lg.shape == (3, 10) and f.shape == (3, am.DigitJudge.feature_dim) == (3, 128)
        assert torch.isfinite(lg).all() and (f >= 0).all()
    with torch.no_grad():
        assert torch.equal(judge(x), am.load_judge()(x))  # a fresh load: the same numbers
        # GroupNorm: a clip's output does not depend on the batch it is judged in
        assert torch.allclose(judge(x[:1]), judge(x)[:1], rtol=1e-5, atol=1e-5)


def test_judge_hears_real_test_digits(judge):
    x, y = fsdd_clips(range(5), per_digit=2)  # the official test split: recordings 0-4
    ext = am.JudgeExtractor(judge, 8000)
    feats, logits = ext(x)
    assert feats.shape == (20, 128) and logits.shape == (20, 10)
    acc, _ = am.label_accuracy(logits, y)
    assert acc >= 0.9
    # at another rate the clips are resampled to 8 kHz first: 16 kHz copies are judged alike
    from genlab.audio import resample

    up = torch.from_numpy(resample(x.numpy(), 8000, 16000))
    assert am.label_accuracy(am.JudgeExtractor(judge, 16000)(up)[1], y)[0] >= 0.9


def test_shipped_weights_record_their_training():
    meta = am.read_judge_file(am.weights_path())[1]
    assert meta["name"] == "digits-fsdd" and meta["sample_rate"] == "8000"
    assert float(meta["test_accuracy"]) >= 0.95
    assert "digits-fsdd" in (am.WEIGHTS_DIR / "README.md").read_text()


def test_missing_and_corrupt_weights_are_one_line_checkpoint_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="digits-fsdd"):
        am.weights_path("vggish")
    monkeypatch.setattr(am, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(CheckpointError, match="not found.*train_audio_classifier") as e:
        am.load_judge()
    assert "\n" not in str(e.value)
    src = Path(am.__file__).resolve().parent.parent / "weights" / "digits-fsdd.safetensors"
    path = tmp_path / "digits-fsdd.safetensors"
    blob = bytearray(src.read_bytes())
    blob[-100] ^= 0x40  # one flipped bit inside the last tensor: still a valid safetensors file
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="corrupt") as e:
        am.load_judge()
    assert "\n" not in str(e.value)
    path.write_bytes(src.read_bytes()[:5000])  # truncated
    with pytest.raises(CheckpointError, match="cannot read") as e:
        am.load_judge()
    assert "\n" not in str(e.value)
    shutil.copy(src, path)
    assert am.load_judge().fc2.out_features == 10


# --------------------------------------------------------------------------- evaluate_audio


class FakeModel(nn.Module):
    """Stands in for a trained audio model: conditional, 10 classes, an exact `nll` of 8 bits
    per recorded sample (a uniform 256-class model)."""

    family = "audio"
    conditional = True
    num_classes = 10

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def nll(self, batch):
        count = batch["mask"].sum()
        return count.double() * 8.0, count


class FakeRun:
    """A "run" whose samples are real held-out clips in the labels asked for: a generator as good
    as the data. It quacks like genlab.engine.run.Run for the evaluator."""

    def __init__(self, run_dir: Path, data: AudioData, pool: tuple[torch.Tensor, torch.Tensor]):
        self.run_dir, self._data, self._pool = run_dir, data, pool
        self.model, self.device, self.step, self.family = FakeModel(), torch.device("cpu"), 7, "audio"
        self.checkpoint = type("Ckpt", (), {"state": {"state": {"step": 7}}})()  # trained without privacy
        self.cfg = type("Cfg", (), {"preset": None, "model_name": "wavenet",
                                    "data": type("D", (), {"dataset": "fsdd"})()})()

    def data(self, data_root=None):
        return self._data

    def sample(self, n, *, seed=0, label=None):
        x, y = self._pool
        labels = torch.arange(n) % 10
        idx = torch.stack([torch.nonzero(y == c)[(i // 10) % int((y == c).sum())] for i, c in enumerate(labels)])
        return x[idx.reshape(-1)], labels


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    train_x, train_y = fsdd_clips(range(5, 50), per_digit=4)  # 40 training clips
    test_x, test_y = fsdd_clips(range(5), per_digit=3)  # 30 test clips
    pool = fsdd_clips(range(5, 50), per_digit=8)  # the "generated" clips: other real ones
    mask = lambda x: x != 0
    data = AudioData(train_x[:, None], train_y, mask(train_x), train_x[:0, None], train_y[:0], mask(train_x[:0]),
                     test_x[:, None], test_y, mask(test_x), 8000, "fsdd (test)", "fsdd",
                     class_names=[str(d) for d in range(10)])
    return FakeRun(tmp_path_factory.mktemp("audio-run"), data, pool)


def test_evaluate_audio_report_layout_and_html(fake_run):
    from genlab.evaluation import EVALUATORS, _evaluate_and_write

    assert "audio" in EVALUATORS
    report = _evaluate_and_write(fake_run, fake_run.run_dir, "audio", time.perf_counter(), n=20, metrics=None,
                                 out=None, seed=3, html=True)
    rep = json.loads((fake_run.run_dir / "report.json").read_text())
    assert rep["metrics"] == report["metrics"] and rep["step"] == 7
    m = rep["metrics"]
    assert list(m) == ["label_accuracy", "audio_is", "fad", "nll_bits_per_sample", "generation_rtf"]
    for name, e in m.items():
        assert {"value", "extractor", "n", "seed", "seconds"} <= set(e) and e["seed"] == 3
        assert e["extractor"] == ("digits-fsdd" if name in ("label_accuracy", "audio_is", "fad") else None)
    assert m["label_accuracy"]["n"] == 20 and m["label_accuracy"]["value"] >= 0.9  # real clips, right digits
    assert m["label_accuracy"]["judge_test_accuracy"] >= 0.9 and len(m["label_accuracy"]["per_class"]) == 10
    assert 5 <= m["audio_is"]["value"] <= 10 and m["audio_is"]["splits"] == 1 and m["audio_is"]["real_test"] > 5
    assert m["fad"]["value"] > 0 and m["fad"]["floor"] > 0 and m["fad"]["floor_n"] == 20
    assert m["fad"]["n_real"] == 30
    assert m["nll_bits_per_sample"]["value"] == pytest.approx(8.0) and m["nll_bits_per_sample"]["n"] == 30
    assert m["generation_rtf"]["value"] > 0 and m["generation_rtf"]["audio_seconds"] == pytest.approx(20 * T / 8000)
    page = (fake_run.run_dir / "report.html").read_text()
    assert page.count("<audio controls") == 10 and page.count("src='data:audio/wav;base64,") == 10
    assert page.count("src='data:image/png;base64,") == 10 and "label 9" in page
    assert "floor" in page and "_files/" not in page.split("Audio samples")[1]  # embedded, no files


def test_evaluate_audio_subsets_and_errors(fake_run):
    from genlab.evaluation.audio import evaluate_audio

    out, art = evaluate_audio(fake_run, n=10, seed=0, metrics=["fad"], floor=False)
    assert set(out) == {"fad"} and "floor" not in out["fad"] and art["samples"].shape == (10, T)
    again, _ = evaluate_audio(fake_run, n=10, seed=0, metrics=["fad"], floor=False)
    assert again["fad"]["value"] == out["fad"]["value"]  # the same seed, the same number
    out, art = evaluate_audio(fake_run, n=10, seed=0, metrics=["nll_bits_per_sample"])
    assert set(out) == {"nll_bits_per_sample"} and "samples" not in art  # no sampling needed
    with pytest.raises(ConfigError, match="unknown audio metric.*fid.*choose from label_accuracy, audio_is, fad"):
        evaluate_audio(fake_run, n=10, metrics=["fad", "fid"])
    fake_run.model.conditional = False
    try:
        with pytest.raises(ConfigError, match="label_accuracy needs a conditional model"):
            evaluate_audio(fake_run, n=10, metrics=["label_accuracy"])
    finally:
        fake_run.model.conditional = True
