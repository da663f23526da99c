"""The class-conditional Gaussian in a principal subspace (genlab.models.gaussian): its fit against
statistics computed by hand, its density against torch's multivariate normal, the Gaussian
mechanism of a private fit (clipping, noise scale, the accountant's epsilon) and the run it makes."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

import genlab
from genlab.engine.privacy import epsilon_of
from genlab.errors import ConfigError
from genlab.models.gaussian import RELEASES, GaussianConfig, GaussianModel, _noisy, _noisy_symmetric
from tests.conftest import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


def model(k: int = 3, classes: int = 2, size: int = 4) -> GaussianModel:
    return GaussianModel(GaussianConfig(components=k, channels=1, image_size=size, num_classes=classes))


def data(n: int = 4000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes of 4x4 images, each a Gaussian with its own mean and covariance."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    A = torch.randn(2, 16, 16, generator=g) * torch.linspace(1.0, 0.05, 16)  # decaying spectrum
    mu = torch.randn(2, 16, generator=g)
    x = mu[y] + (torch.randn(n, 1, 16, generator=g) @ A[y].transpose(1, 2)).squeeze(1)
    return x.double().reshape(n, 1, 4, 4), y


def batches_of(x, y, bs: int = 700):
    return lambda: ((x[i:i + bs], y[i:i + bs]) for i in range(0, len(x), bs))


def test_fit_matches_the_statistics_computed_by_hand():
    x, y = data()
    m = model()
    m.fit_statistics(batches_of(x, y))
    X = x.reshape(len(x), -1)
    evals, evecs = torch.linalg.eigh(torch.cov(X.T, correction=0))
    V = evecs[:, -3:]
    # the basis spans the top-3 principal directions (signs and order aside)
    torch.testing.assert_close((m.basis.double() @ m.basis.double().T), V @ V.T, atol=1e-4, rtol=0)
    for c in range(2):
        Z = X[y == c] @ m.basis.double()
        torch.testing.assert_close(m.class_mean[c].double(), Z.mean(0), atol=1e-5, rtol=1e-5)
        S = m.class_eigvecs[c].double() @ torch.diag(m.class_eigvals[c].double()) @ m.class_eigvecs[c].double().T
        torch.testing.assert_close(S, torch.cov(Z.T, correction=0), atol=1e-4, rtol=1e-4)
    # the residual variance: the mean of the discarded eigenvalues
    torch.testing.assert_close(m.noise_var.double(), evals[:-3].mean(), atol=1e-5, rtol=1e-4)


def test_density_is_the_multivariate_normal_it_describes():
    x, y = data()
    m = model()
    m.fit_statistics(batches_of(x, y))
    V, b, s2 = m.basis.double(), m.offset.double(), m.noise_var.double()
    for c in range(2):
        S = m.class_eigvecs[c].double() @ torch.diag(m.class_eigvals[c].double()) @ m.class_eigvecs[c].double().T
        mvn = torch.distributions.MultivariateNormal(b + V @ m.class_mean[c].double(),
                                                     V @ S @ V.T + s2 * torch.eye(16, dtype=torch.float64))
        xs = x[y == c][:50]
        ours = m.example_loss({"x": xs.float(), "y": torch.full((50,), c)})["loss"].double()
        torch.testing.assert_close(ours, -mvn.log_prob(xs.reshape(50, -1)), rtol=1e-4, atol=1e-3)


def test_samples_follow_the_fitted_class_distribution():
    x, y = data()
    m = model()
    m.fit_statistics(batches_of(x, y))
    g = torch.Generator().manual_seed(1)
    s = m.sample(20_000, generator=g, labels=torch.ones(20_000, dtype=torch.long)).reshape(20_000, -1).double()
    X = x.reshape(len(x), -1)[y == 1]
    # the sample mean is the class mean in the subspace (the mean image off it is the offset)
    P = m.basis.double() @ m.basis.double().T
    torch.testing.assert_close(s.mean(0), X.mean(0) @ P + m.offset.double(), atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(s.T) @ P, P @ torch.cov(X.T, correction=0) @ P, atol=0.15, rtol=0.05)
    a = m.sample(4, generator=torch.Generator().manual_seed(3), labels=torch.tensor([0, 1, 0, 1]))
    b = m.sample(4, generator=torch.Generator().manual_seed(3), labels=torch.tensor([0, 1, 0, 1]))
    assert torch.equal(a, b) and a.shape == (4, 1, 4, 4)


def test_clipping_bounds_each_images_norm_before_it_is_counted():
    x, y = data()
    big = x * 100  # every image far beyond the bound
    m, ref = model(), model()
    C = 2.0
    m.fit_statistics(batches_of(big, y), clip=C)  # no noise: clipping alone
    clipped = big.reshape(len(big), -1)
    clipped = clipped * (C / clipped.norm(dim=1, keepdim=True))
    ref.fit_statistics(batches_of(clipped.reshape(big.shape), y))
    torch.testing.assert_close(m.class_mean, ref.class_mean)
    assert (m.offset.norm() <= C)


@pytest.mark.parametrize("fn", [_noisy, _noisy_symmetric])
def test_released_noise_has_the_stated_standard_deviation(fn):
    scale = 0.7
    g = torch.Generator().manual_seed(0)
    e = fn(torch.zeros(200, 30, 30, dtype=torch.float64), scale, g)
    if fn is _noisy_symmetric:
        assert torch.equal(e, e.transpose(1, 2))
        e = e[:, *torch.triu_indices(30, 30)]  # the independent entries
    assert abs(e.std().item() - scale) < 0.01 and abs(e.mean().item()) < 0.01
    assert torch.equal(fn(torch.ones(3, 3), scale, None), torch.ones(3, 3))


def test_epsilon_of_the_releases_bounds_the_exact_gaussian_mechanism():
    """Five releases at sigma compose (as one Gaussian mechanism at sigma / sqrt(5)); the
    accountant's epsilon must be at least the exact one (Balle & Wang 2018) and not far above."""
    sigma, delta = 1.2, 1e-5
    eps = epsilon_of("rdp", [[sigma, 1.0, RELEASES]], delta)
    s = sigma / math.sqrt(RELEASES)
    Phi = torch.distributions.Normal(0.0, 1.0).cdf

    def exact_delta(e: float) -> float:
        e64 = torch.tensor(e, dtype=torch.float64)
        return float(Phi(1 / (2 * s) - e64 * s) - torch.exp(e64) * Phi(-1 / (2 * s) - e64 * s))

    lo, hi = 0.0, 50.0
    for _ in range(60):  # the exact epsilon at delta: exact_delta is decreasing in epsilon
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if exact_delta(mid) > delta else (lo, mid)
    assert hi <= eps <= 1.25 * hi, (eps, hi)
    # one release counted instead of five would claim less than the exact epsilon
    assert epsilon_of("rdp", [[sigma, 1.0, 1]], delta) < hi


def test_a_private_fit_is_one_step_that_spends_its_target_epsilon(tmp_path):
    sets = ["data.dataset=digits", "model.components=8", "privacy.epsilon=2", "privacy.max_grad_norm=8"]
    out = tmp_path / "run"
    res = genlab.train("dp-gaussian-mnist", out, overrides=sets, seed=0)
    assert res.state.step == 1 and res.state.stop_reason == "steps"
    state = json.loads(sorted((out / "checkpoints").glob("step-*.json"))[-1].read_text())
    assert state["privacy"]["history"] == [[pytest.approx(state["privacy"]["noise_multiplier"]), 1.0, RELEASES]]
    assert 1.9 <= state["privacy"]["epsilon"] <= 2.0
    assert json.loads((out / "report.json").read_text())["privacy"]["epsilon"] == state["privacy"]["epsilon"]
    info = run_cli("info", str(out))
    assert info.returncode == 0 and re.fullmatch(r"epsilon: (1\.9\d*|2) \(delta 1e-05\)", info.stdout.splitlines()[0])
    run = genlab.load(out)
    x, labels = run.sample(20, seed=0)
    assert x.shape == (20, 1, *run.meta["native_size"]) and x.dtype == torch.uint8 and labels.tolist()[:3] == [0, 1, 2]
    # the noise comes from a secret, not from train.seed: the same config and seed fit differently
    again = genlab.train("dp-gaussian-mnist", tmp_path / "again", overrides=sets, seed=0)
    assert not torch.equal(run.model.class_mean, genlab.load(again.run_dir).model.class_mean)


@pytest.mark.parametrize("sets, match", [
    (["train.steps=2"], "fitted in one pass"),
    (["privacy.delta=0.01"], "not below 1/n"),
    (["model.components=0"], "components must be >= 1"),
])
def test_bad_settings_are_refused_in_one_line(tmp_path, sets, match):
    with pytest.raises(ConfigError, match=match):
        genlab.train("dp-gaussian-mnist", tmp_path / "run", overrides=["data.dataset=digits"] + sets)
