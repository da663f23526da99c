"""Disentanglement on data with known factors: the mutual information gap (MIG; Chen et al. 2018,
"Isolating sources of disentanglement in VAEs").

For each ground-truth factor v_k, the mutual information I(v_k; z_j) with every latent
dimension j is estimated from discretised codes (the latent means binned into equal-width bins
per dimension, as Locatello et al. 2019's disentanglement_lib does); MIG is the gap between the
largest and second-largest of them, divided by the factor's entropy H(v_k), averaged over the
factors. 1: each factor is captured by one dimension alone; 0: by none, or equally by two.
All information in nats.
"""

from __future__ import annotations

import numpy as np
import torch

from genlab.errors import ShapeError


def discretize(values: np.ndarray, bins: int = 20) -> np.ndarray:
    """Each column of float (N, D) into `bins` equal-width bins between its min and max -> int64
    (N, D) bin indices in 0..bins-1 (a constant column is all 0)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2:
        raise ShapeError(f"discretize expects (N, D) values, got shape {v.shape}")
    if bins < 2:
        raise ShapeError(f"discretize needs at least 2 bins, got {bins}")
    out = np.zeros(v.shape, dtype=np.int64)
    for j in range(v.shape[1]):
        lo, hi = v[:, j].min(), v[:, j].max()
        if hi > lo:
            edges = np.linspace(lo, hi, bins + 1)
            out[:, j] = np.clip(np.digitize(v[:, j], edges[1:-1]), 0, bins - 1)
    return out


def entropy(a: np.ndarray) -> float:
    """Entropy in nats of the empirical distribution of integer labels a (N,)."""
    _, counts = np.unique(np.asarray(a), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """I(a; b) in nats of two integer label vectors (N,), from their joint histogram
    (H(a) + H(b) - H(a, b); 0 when independent in the sample, H(a) when b determines a)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ShapeError(f"mutual_information expects two label vectors of one length, got {a.shape} and {b.shape}")
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    joint = ai.astype(np.int64) * (bi.max() + 1) + bi
    return max(0.0, entropy(a) + entropy(b) - entropy(joint))


def mutual_information_matrix(codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """I(v_k; z_j) for discrete codes (N, D) and factors (N, K) -> float64 (K, D), nats."""
    codes, factors = np.asarray(codes), np.asarray(factors)
    if codes.ndim != 2 or factors.ndim != 2 or len(codes) != len(factors):
        raise ShapeError(f"codes (N, D) and factors (N, K) must have the same N, got {codes.shape} and "
                         f"{factors.shape}")
    return np.array([[mutual_information(factors[:, k], codes[:, j]) for j in range(codes.shape[1])]
                     for k in range(factors.shape[1])])


def mig(latents: np.ndarray, factors: np.ndarray, bins: int = 20) -> dict:
    """The mutual information gap of latent codes against ground-truth factors.

    Args:
        latents: float (N, D) codes, D >= 2 (a VAE's posterior means).
        factors: int (N, K) factor values or indices.
        bins: equal-width bins per latent dimension.
    Returns:
        {"mig": mean over factors of (largest - second largest I(v_k; z_j)) / H(v_k),
         "per_factor": (K,) those gaps (None for a factor constant in the sample, left out of
         the mean), "best_dim": (K,) the dimension holding most of each factor,
         "mi": (K, D) the information matrix, "entropy": (K,) H(v_k), "bins": bins}; nats.
    """
    z = np.asarray(latents, dtype=np.float64)
    v = np.asarray(factors)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ShapeError(f"MIG needs latent codes (N, D) with D >= 2, got shape {z.shape}")
    if v.ndim != 2 or len(v) != len(z):
        raise ShapeError(f"factors must be (N, K) with N = {len(z)}, got shape {v.shape}")
    mi = mutual_information_matrix(discretize(z, bins), v)  # (K, D)
    h = np.array([entropy(v[:, k]) for k in range(v.shape[1])])  # (K,)
    top2 = np.sort(mi, axis=1)[:, ::-1][:, :2]  # (K, 2) largest first
    gaps = [float((t[0] - t[1]) / hk) if hk > 0 else None for t, hk in zip(top2, h)]
    used = [g for g in gaps if g is not None]
    if not used:
        raise ShapeError("every factor is constant in the sample: MIG is undefined")
    return {"mig": float(np.mean(used)), "per_factor": gaps, "best_dim": mi.argmax(axis=1).tolist(),
            "mi": mi.tolist(), "entropy": h.tolist(), "bins": bins}


@torch.no_grad()
def encode_means(run, images: torch.Tensor, batch_size: int = 500) -> np.ndarray:
    """A VAE run's posterior means of uint8 images (N, C, H, W) at its image size -> float64
    (N, latent_dim), read in the run's data space without binarisation (deterministic)."""
    from genlab.apply.io import to_model_space
    from genlab.errors import ConfigError

    if not hasattr(run.model, "encode"):
        raise ConfigError(f"{run.run_dir} is a {run.cfg.model_name} run; latent means need a VAE (an encoder)")
    if getattr(run.model, "conditional", False):
        raise ConfigError("latent means of a conditional VAE depend on the label; use an unconditional VAE")
    out = [run.model.encode(to_model_space(run, images[i:i + batch_size]))[0].double().cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy()
