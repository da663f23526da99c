"""Metrics against independent computations (numpy/scipy, hand-worked values, reference packages)."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from genlab.data.datasets import load_idx_split
from genlab.errors import CheckpointError, ConfigError, ShapeError
from genlab.evaluation.images import reference_features
from genlab.metrics import reconstruction as rec
from genlab.metrics import sample_quality as sq
from genlab.metrics import text as tm
from genlab.metrics.features import get_extractor
from genlab.metrics.likelihood import discretized_gaussian_log_prob


def _features(seed, n, d, shift=0.0, scale=1.0):
    mix = torch.randn(d, d, generator=torch.Generator().manual_seed(1234)) / math.sqrt(d)  # one distribution
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g) @ mix) * scale + shift


def _numpy_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _numpy_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    m, d = x.shape
    k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2 * kxy.mean())


def test_fid_matches_scipy_and_is_batch_invariant():
    real, fake = _features(0, 600, 12), _features(1, 500, 12, shift=0.3, scale=1.2)
    a, b = sq.FeatureSet(), sq.FeatureSet()
    for chunk in real.split(128):  # accumulation in pieces equals one pass
        a.update(chunk)
    b.update(fake)
    ours = sq.fid(a, b)
    ref = _numpy_fid(real.double().numpy(), fake.double().numpy())
    assert ours == pytest.approx(ref, rel=1e-4)
    assert ref > 0.5
    same = sq.FeatureSet()
    same.update(real)
    assert abs(sq.fid(a, same)) < 1e-8


def test_kid_matches_numpy_unbiased_mmd():
    real, fake = _features(2, 300, 8), _features(3, 300, 8, shift=0.5)
    # one subset holding every row: KID is then the unbiased MMD^2 of the full sets
    mean, std = sq._compute_kid(real, fake, subsets=1, subset_size=300)
    assert mean == pytest.approx(_numpy_mmd2(real.double().numpy(), fake.double().numpy()), rel=1e-4)
    assert std == 0.0
    # same distribution: KID is unbiased, so it averages out near zero; shifted: clearly positive
    m_same, _ = sq._compute_kid(_features(4, 400, 8), _features(5, 400, 8), subsets=20, subset_size=200)
    m_diff, _ = sq._compute_kid(real, fake, subsets=20, subset_size=200)
    assert abs(m_same) < 0.1 * m_diff
    # a seed fixes the subsets
    assert sq._compute_kid(real, fake, subsets=5, subset_size=100, seed=7) == \
        sq._compute_kid(real, fake, subsets=5, subset_size=100, seed=7)


def test_precision_recall_against_brute_force():
    real, fake = _features(6, 200, 4), _features(7, 150, 4, shift=0.8)
    p, r = sq._compute_precision_recall(real, fake, k=3)

    def brute(points, centres):
        d_cc = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
        radii = np.sort(d_cc, axis=1)[:, 3]  # index 0 is the point itself
        d = np.linalg.norm(points[:, None] - centres[None], axis=-1)
        return float((d <= radii[None]).any(1).mean())

    assert p == pytest.approx(brute(fake.numpy(), real.numpy()), abs=1e-9)
    assert r == pytest.approx(brute(real.numpy(), fake.numpy()), abs=1e-9)
    assert 0 < p < 1 and 0 < r < 1
    p_same, r_same = sq._compute_precision_recall(real, real, k=3)
    assert p_same == 1.0 and r_same == 1.0


def test_inception_score_extremes_and_formula():
    k = 10
    uniform = torch.zeros(100, k)
    assert sq._compute_inception_score(uniform, splits=2)[0] == pytest.approx(1.0)
    confident = torch.full((100, k), -50.0)
    confident[torch.arange(100), torch.arange(100) % k] = 50.0  # certain and balanced
    assert sq._compute_inception_score(confident, splits=1)[0] == pytest.approx(k, rel=1e-6)
    logits = torch.randn(60, 5, generator=torch.Generator().manual_seed(0))
    p = torch.softmax(logits.double(), 1).numpy()
    ref = np.exp((p * (np.log(p) - np.log(p.mean(0)))).sum(1).mean())
    assert sq._compute_inception_score(logits, splits=1)[0] == pytest.approx(ref, rel=1e-9)


@pytest.fixture(scope="module")
def mnist(data_root):
    train, _ = load_idx_split(data_root, "mnist", "train")
    test, _ = load_idx_split(data_root, "mnist", "test")
    return train[:2000], test[:2000]


def test_fid_on_real_mnist_ranks_distortions(mnist):
    train, test = mnist
    ext = get_extractor("lenet-mnist")

    def fid_to(images):
        a, b = sq.FeatureSet(), sq.FeatureSet()
        a.update(ext(test)[0])
        b.update(ext(images)[0])
        return sq.fid(a, b)

    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, test.shape, generator=g, dtype=torch.uint8)
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    k = (torch.outer(k, k) / 256).view(1, 1, 5, 5)
    blurred = F.conv2d(train.float(), k, padding=2).round().clamp(0, 255).to(torch.uint8)
    shifted = torch.roll(train, shifts=(3, 3), dims=(2, 3))
    floor, f_noise, f_blur, f_shift = fid_to(train), fid_to(noise), fid_to(blurred), fid_to(shifted)
    assert floor < 0.05 * f_noise
    assert floor < 0.5 * f_blur and floor < 0.5 * f_shift


def test_reference_features_are_cached(mnist, monkeypatch):
    _, test = mnist
    ext = get_extractor("lenet-mnist")
    calls = []
    real_fn = ext.fn
    ext.fn = lambda x: (calls.append(len(x)), real_fn(x))[1]
    f1, l1 = reference_features(ext, test[:500], "mnist-test")
    f2, l2 = reference_features(ext, test[:500], "mnist-test")
    assert len(calls) == 1  # the second call read the cache
    assert torch.equal(f1, f2) and torch.equal(l1, l2)
    reference_features(ext, test[:400], "mnist-test")  # another N is another entry
    assert len(calls) == 2


def test_extractor_checks_its_input():
    ext = get_extractor("lenet-mnist")
    with pytest.raises(ShapeError, match="extractor lenet-mnist expects images of shape"):
        ext(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ShapeError, match="uint8"):
        ext(torch.zeros(2, 1, 28, 28))


def test_missing_inception_weights_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="Inception weights not found at .*--inception-weights"):
        get_extractor("inception", weights=tmp_path / "absent.pth")


def _ssim_reference(x: torch.Tensor, y: torch.Tensor) -> float:
    """Gaussian-window SSIM (11, 1.5), data range 1 (Wang et al. 2004), over the whole image with
    reflect padding, torchmetrics' convention (skimage instead crops the 5-pixel border)."""
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ax = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-ax ** 2 / (2 * 1.5 ** 2))
    g = g / g.sum()
    w = torch.outer(g, g).view(1, 1, 11, 11)
    f = lambda t: F.conv2d(F.pad(t, (5, 5, 5, 5), mode="reflect"), w)  # noqa: E731
    mx, my = f(x), f(y)
    vx, vy, cxy = f(x * x) - mx ** 2, f(y * y) - my ** 2, f(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.mean().item()


def test_psnr_ssim_mse_against_hand_computation_and_torchmetrics():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (3, 1, 28, 28), generator=g, dtype=torch.uint8)
    noise = torch.randint(-20, 21, a.shape, generator=g)
    b = (a.int() + noise).clamp(0, 255).to(torch.uint8)
    x, y = a.double() / 255, b.double() / 255
    per_image_mse = ((x - y) ** 2).flatten(1).mean(1)
    assert rec.mse(a, b) == pytest.approx(per_image_mse.mean().item(), rel=1e-12)
    assert rec.psnr(a, b) == pytest.approx((10 * torch.log10(1 / per_image_mse)).mean().item(), rel=1e-6)
    assert rec.ssim(a, b) == pytest.approx(_ssim_reference(x, y), abs=1e-6)
    assert rec.ssim(a, a) == pytest.approx(1.0)
    from torchmetrics.functional.image import peak_signal_noise_ratio

    tm_psnr = torch.stack([peak_signal_noise_ratio(x[i], y[i], data_range=1.0) for i in range(3)]).mean()
    assert rec.psnr(a, b) == pytest.approx(tm_psnr.item(), rel=1e-6)  # torchmetrics, image by image
    with pytest.raises(ShapeError, match="share one"):
        rec.psnr(a, b[:2])


def test_reconstruction_metrics_in_chunks_equal_one_call():
    from torchmetrics.functional.image import structural_similarity_index_measure

    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (50, 1, 16, 16), generator=g, dtype=torch.uint8)
    b = (a.int() + torch.randint(-40, 41, a.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    one_call = structural_similarity_index_measure(a.double() / 255, b.double() / 255, data_range=1.0).item()
    assert rec.ssim(a, b, chunk=16) == pytest.approx(one_call, rel=1e-12)  # chunks of 16, 16, 16 and 2
    for fn in (rec.mse, rec.psnr, rec.ssim):
        assert fn(a, b, chunk=16) == pytest.approx(fn(a, b, chunk=50), rel=1e-12), fn.__name__
    with pytest.raises(ConfigError, match="chunk"):
        rec.ssim(a, b, chunk=0)


def test_catalog_knows_the_translation_metrics():
    from genlab.metrics import catalog

    better = {"class_agreement": "higher", "acceptance": "higher", "acceptance_ab": "higher",
              "acceptance_ba": "higher", "fid_ab": "lower", "fid_ba": "lower", "cycle_l1_aba": "lower",
              "cycle_l1_bab": "lower", "psnr_ab": "higher", "ssim_ab": "higher", "mse_ab": "lower",
              "class_agreement_ab": "higher"}
    for name, way in better.items():
        text, direction = catalog.describe(name)
        assert text and direction == way and catalog.known(name), name
    assert "domain A to B" in catalog.describe("fid_ab")[0] and not catalog.known("no_such_metric_ab")


def test_bleu_and_rouge_match_hand_values_and_torchmetrics():
    from torchmetrics.functional.text import rouge_score, sacre_bleu_score

    hyp, ref = ["the cat sat on the mat today"], ["the cat sat on the mat"]
    # n-gram precisions 6/7, 5/6, 4/5, 3/4, no brevity penalty (the hypothesis is longer)
    assert tm.bleu(hyp, ref) == pytest.approx((6 / 7 * 5 / 6 * 4 / 5 * 3 / 4) ** 0.25, rel=1e-6)
    assert tm.bleu(hyp, ref) == pytest.approx(sacre_bleu_score(hyp, [ref]).item(), rel=1e-5)
    # ROUGE-L: LCS 6 of 7 and 6 tokens -> P 6/7, R 1
    p, r = 6 / 7, 1.0
    assert tm.rouge_l(hyp, ref) == pytest.approx(2 * p * r / (p + r), rel=1e-9)
    hyps = ["a quick brown fox jumps", "the cat is here"]
    refs = ["the quick brown fox jumped over", "a cat was here"]
    tm_rouge = rouge_score(hyps, refs, rouge_keys="rougeL")["rougeL_fmeasure"].item()
    assert tm.rouge_l(hyps, refs) == pytest.approx(tm_rouge, rel=1e-5)
    assert tm.bleu(refs, refs) == pytest.approx(1.0)
    with pytest.raises(ShapeError, match="as many references"):
        tm.bleu(hyps, refs[:1])


def test_perplexity_and_bits_per_char_arithmetic():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [-3.0, 1.0, 2.0]])
    targets = torch.tensor([0, 2, 1])
    nll = F.cross_entropy(logits, targets, reduction="none").double()
    by_hand = [-(logits[i, t] - torch.logsumexp(logits[i], 0)).item() for i, t in enumerate(targets)]
    assert nll.tolist() == pytest.approx(by_hand)
    assert tm.perplexity(nll.mean().item()) == pytest.approx(math.exp(sum(by_hand) / 3))
    # a uniform model over V symbols: perplexity V, log2 V bits per character
    v = 65
    assert tm.perplexity(math.log(v)) == pytest.approx(v)
    assert tm.bits_per_char(100 * math.log(v), 100) == pytest.approx(math.log2(v))
    assert tm.distinct_n(["a b a b", "a b c"], 2) == pytest.approx(3 / 5)


def test_discretized_gaussian_matches_hand_computation():
    """log P(pixel) of N(mean, s^2) integrated over the pixel's 8-bit bin, against mpmath: on
    [-1, 1] (normalize=minus_one_one) a bin is 2/255 wide, pixels 0 and 255 own the tails."""
    import mpmath

    pix = [0, 1, 128, 200, 254, 255]
    mean = [-0.9, -0.9, 0.0, -0.5, 0.99, 0.5]  # (pixel 200 sits 43 scales above its mean: a far tail)
    s, h = 0.025, 1 / 255
    want = []
    with mpmath.workdps(500):  # Phi differences down to 1e-400
        for p, m in zip(pix, mean):
            x = mpmath.mpf(p) * 2 / 255 - 1
            lo = mpmath.ncdf((x - h - m) / s) if p > 0 else 0
            hi = mpmath.ncdf((x + h - m) / s) if p < 255 else 1
            want.append(float(mpmath.log(hi - lo)))
    x = torch.tensor(pix, dtype=torch.float64) * 2 / 255 - 1
    got = discretized_gaussian_log_prob(x, torch.tensor(mean, dtype=torch.float64),
                                        torch.tensor(math.log(s), dtype=torch.float64), -1.0, 1.0)
    assert got.tolist() == pytest.approx(want, rel=1e-9)
    assert got[3] < -900  # the far tail is a finite log-probability, not log(0), also in float32:
    got32 = discretized_gaussian_log_prob(x.float(), torch.tensor(mean), torch.tensor(math.log(s)), -1.0, 1.0)
    assert got32.tolist() == pytest.approx(want, rel=1e-4)


_STANDARDIZED = (torch.tensor([-0.4, -1.2], dtype=torch.float64).view(1, 2, 1),
                 torch.tensor([2.1, 0.9], dtype=torch.float64).view(1, 2, 1))  # per-channel (1, C, 1)


@pytest.mark.parametrize("low, high", [(0.0, 1.0), (-1.0, 1.0), _STANDARDIZED])
def test_discretized_gaussian_is_a_distribution_over_the_256_levels(low, high):
    # zero_one (bin 1/255), minus_one_one (2/255) and per-channel standardisation (1 / (255 std))
    levels = torch.arange(256, dtype=torch.float64).view(1, 1, 256) / 255  # pixel / 255, (1, 1, 256)
    x = (low + (high - low) * levels).expand(3, 2, 256)  # (3 means, 2 channels, 256 levels)
    mean = torch.tensor([-3.0, 0.3, 0.7], dtype=torch.float64).view(3, 1, 1)
    for log_s in (-6.0, -2.0, 1.0):
        lp = discretized_gaussian_log_prob(x, mean, torch.tensor(log_s, dtype=torch.float64), low, high)
        assert (lp <= 0).all() and torch.isfinite(lp).all()
        assert lp.exp().sum(-1).flatten().tolist() == pytest.approx([1.0] * 6, abs=1e-9)

