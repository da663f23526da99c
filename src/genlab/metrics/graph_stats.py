"""Graph statistics: MMD between sets of graphs (GraphRNN's evaluation) and link-prediction
AUC/AP.

MMD^2(X, Y) = E k(x, x') + E k(y, y') - 2 E k(x, y) over per-graph distributions (the biased
estimate GraphRNN and GRAN report, not its square root), with
  - degree: histogram of node degrees (bins 0, 1, 2, ...), Gaussian kernel of the earth mover's
    distance between the normalised histograms, sigma = 1 (GraphRNN);
  - clustering: histogram of local clustering coefficients, 100 bins on [0, 1], Gaussian-EMD
    with bin width 1/100 and sigma = 0.1 (GraphRNN);
  - spectral: histogram of the normalised Laplacian's eigenvalues, 200 bins on [-1e-5, 2],
    Gaussian kernel of the total-variation distance, sigma = 1 (GRAN).
For 1-D histograms the EMD with ground distance |i - j| * bin_width is the L1 distance of the
CDFs times the bin width. Graphs are numpy adjacency matrices (symmetric 0/1, zero diagonal).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

STATS = ("degree", "clustering", "spectral")


# --------------------------------------------------------------------------- per-graph statistics


def degree_histogram(adj: np.ndarray) -> np.ndarray:
    """Counts of nodes with degree 0, 1, 2, ..."""
    return np.bincount(adj.sum(1).astype(np.int64)).astype(np.float64)


def clustering_coefficients(adj: np.ndarray) -> np.ndarray:
    """Local clustering of each node: triangles through it / (d (d - 1) / 2); 0 where d < 2."""
    a = adj.astype(np.float64)
    tri = np.einsum("ij,jk,ki->i", a, a, a) / 2  # triangles through each node
    d = a.sum(1)
    pairs = d * (d - 1) / 2
    return np.divide(tri, pairs, out=np.zeros_like(tri), where=pairs > 0)


def clustering_histogram(adj: np.ndarray, bins: int = 100) -> np.ndarray:
    return np.histogram(clustering_coefficients(adj), bins=bins, range=(0.0, 1.0))[0].astype(np.float64)


def normalized_laplacian_eigenvalues(adj: np.ndarray) -> np.ndarray:
    """Eigenvalues of I - D^-1/2 A D^-1/2 (isolated nodes: a zero row, as networkx)."""
    a = adj.astype(np.float64)
    d = a.sum(1)
    inv = np.divide(1.0, np.sqrt(d), out=np.zeros_like(d), where=d > 0)
    lap = np.diag((d > 0).astype(np.float64)) - inv[:, None] * a * inv[None, :]
    return np.linalg.eigvalsh(lap)


def spectral_histogram(adj: np.ndarray, bins: int = 200) -> np.ndarray:
    h = np.histogram(normalized_laplacian_eigenvalues(adj), bins=bins, range=(-1e-5, 2.0))[0].astype(np.float64)
    return h


# --------------------------------------------------------------------------- kernels and MMD


def _pad(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = max(len(x), len(y))
    return np.pad(x, (0, n - len(x))), np.pad(y, (0, n - len(y)))


def _normalise(h: np.ndarray) -> np.ndarray:
    s = h.sum()
    return h / s if s > 0 else h


def gaussian_emd(x: np.ndarray, y: np.ndarray, sigma: float = 1.0, bin_width: float = 1.0) -> float:
    """exp(-EMD(x, y)^2 / (2 sigma^2)) of two histograms (normalised here)."""
    x, y = _pad(_normalise(x), _normalise(y))
    emd = np.abs(np.cumsum(x - y)).sum() * bin_width
    return float(np.exp(-emd * emd / (2 * sigma * sigma)))


def gaussian_tv(x: np.ndarray, y: np.ndarray, sigma: float = 1.0) -> float:
    """exp(-TV(x, y)^2 / (2 sigma^2)), TV = half the L1 distance of the normalised histograms."""
    x, y = _pad(_normalise(x), _normalise(y))
    tv = 0.5 * np.abs(x - y).sum()
    return float(np.exp(-tv * tv / (2 * sigma * sigma)))


def _mmd(xs: Sequence[np.ndarray], ys: Sequence[np.ndarray], kernel: Callable[[np.ndarray, np.ndarray], float]) -> float:
    """Biased MMD^2 between two sets of histograms under `kernel` (float64)."""
    def mean_k(a, b):
        return float(np.mean([kernel(p, q) for p in a for q in b]))

    return mean_k(xs, xs) + mean_k(ys, ys) - 2 * mean_k(xs, ys)


KERNELS = {
    "degree": ("gaussian-emd (sigma 1)", degree_histogram, lambda x, y: gaussian_emd(x, y, sigma=1.0)),
    "clustering": ("gaussian-emd (sigma 0.1, 100 bins)", clustering_histogram,
                   lambda x, y: gaussian_emd(x, y, sigma=0.1, bin_width=1 / 100)),
    "spectral": ("gaussian-tv (sigma 1, 200 bins)", spectral_histogram, lambda x, y: gaussian_tv(x, y, sigma=1.0)),
}


def graph_mmd(reference: Sequence[np.ndarray], generated: Sequence[np.ndarray],
              stats: Sequence[str] = STATS) -> dict[str, float]:
    """{stat: MMD^2} between two sets of graphs, for each of `stats` (degree, clustering, spectral)."""
    out = {}
    for s in stats:
        _, fn, kernel = KERNELS[s]
        out[s] = _mmd([fn(a) for a in reference], [fn(a) for a in generated], kernel)
    return out


class GraphMMD:
    """Accumulator: `update(graphs, real=True|False)`, `compute() -> {stat: MMD^2}`, `reset()`."""

    def __init__(self, stats: Sequence[str] = STATS):
        self.stats = tuple(stats)
        self.reset()

    def reset(self) -> None:
        self.real: list[np.ndarray] = []
        self.fake: list[np.ndarray] = []

    def update(self, graphs: Sequence[np.ndarray], real: bool) -> None:
        (self.real if real else self.fake).extend(graphs)

    def compute(self) -> dict[str, float]:
        return graph_mmd(self.real, self.fake, self.stats)


def erdos_renyi_like(graphs: Sequence[np.ndarray], count: int, seed: int = 0) -> list[np.ndarray]:
    """`count` G(n, p) graphs: n drawn from the node counts of `graphs`, p their overall edge
    density (edges / possible pairs): the matched-density baseline."""
    rng = np.random.default_rng(seed)
    edges = sum(a.sum() / 2 for a in graphs)
    pairs = sum(len(a) * (len(a) - 1) / 2 for a in graphs)
    p = edges / pairs
    sizes = rng.choice([len(a) for a in graphs], size=count)
    out = []
    for n in sizes:
        a = np.triu(rng.random((n, n)) < p, 1)
        out.append((a | a.T).astype(np.uint8))
    return out


# --------------------------------------------------------------------------- link prediction


def link_auc_ap(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> tuple[float, float]:
    """(ROC AUC, average precision) of scores for positive and negative pairs (scikit-learn)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = np.concatenate([np.ones(len(pos_scores)), np.zeros(len(neg_scores))])
    s = np.concatenate([pos_scores.double().cpu().numpy(), neg_scores.double().cpu().numpy()])
    return float(roc_auc_score(y, s)), float(average_precision_score(y, s))
