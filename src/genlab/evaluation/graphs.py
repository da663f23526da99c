"""Graph metrics for `genlab evaluate`.

- Link predictors (GAE/VGAE): `auc` and `ap` (0-1, scikit-learn) of sigmoid(mu_i . mu_j) on the
  run's test pairs (positive test edges and as many sampled non-edges, the split fixed by the
  run's seed; message passing over the training edges only), and `val_auc`, `val_ap`.
- Graph generators: `mmd_degree`, `mmd_clustering`, `mmd_spectral` (genlab.metrics.graph_stats)
  between n generated graphs (default 256, seed `seed`) and the test graphs; each entry also
  carries `erdos_renyi`, the same MMD for n G(n, p) graphs of matched density. `graphs_per_s`:
  sampling speed of those n graphs.
"""

from __future__ import annotations

import io
import time

import numpy as np
import torch

from genlab.errors import ConfigError
from genlab.metrics.graph_stats import KERNELS, STATS, erdos_renyi_like, graph_mmd, link_auc_ap
from genlab.seed import make_generator

LINK_METRICS = ("auc", "ap", "val_auc", "val_ap")
GEN_METRICS = ("mmd_degree", "mmd_clustering", "mmd_spectral", "graphs_per_s")


def _entry(value: float, n: int, seed: int, secs: float, extractor: str | None = None, **extra) -> dict:
    return {"value": float(value), "extractor": extractor, "n": int(n), "seed": seed, "seconds": round(secs, 3),
            **extra}


def evaluate_graphs(run, *, n: int | None, seed: int, metrics: list[str] | None,
                    data_root: str | None = None, **opts) -> tuple[dict[str, dict], dict]:
    """(report entries, artefacts) of a loaded graph run."""
    if opts:
        raise ConfigError(f"option(s) {', '.join('--' + k.replace('_', '-') for k in opts)} do not apply to "
                          "graph runs")
    task = getattr(run.model, "task", "link")
    names = LINK_METRICS if task == "link" else GEN_METRICS
    wanted = list(metrics) if metrics else list(names)
    unknown = [m for m in wanted if m not in names]
    if unknown:
        raise ConfigError(f"unknown metric(s) {', '.join(unknown)} for this graph run; choose from {', '.join(names)}")
    data = run.data(data_root)
    if task == "link":
        return evaluate_links(run.model, data, seed, wanted), {}
    return evaluate_generator(run.model, data, n or 256, seed, wanted)


@torch.no_grad()
def link_metrics(model, data, split: str) -> tuple[float, float, int]:
    """(auc, ap, pairs scored) of a link predictor on a held-out split."""
    model.eval()
    dev = next(model.parameters()).device
    pos, neg = data.pairs(split)
    x, ei = data.x.to(dev), data.mp_edge_index.to(dev)
    auc, ap = link_auc_ap(model.link_scores(x, ei, pos.to(dev)), model.link_scores(x, ei, neg.to(dev)))
    return auc, ap, pos.shape[1] + neg.shape[1]


def evaluate_links(model, data, seed: int, wanted: list[str]) -> dict[str, dict]:
    out = {}
    for split, prefix in (("test", ""), ("val", "val_")):
        if not {prefix + "auc", prefix + "ap"} & set(wanted):
            continue
        t0 = time.perf_counter()
        auc, ap, count = link_metrics(model, data, split)
        secs = time.perf_counter() - t0
        for k, v in ((prefix + "auc", auc), (prefix + "ap", ap)):
            out[k] = _entry(v, count, seed, secs, split=split)
    return {k: out[k] for k in wanted}


def evaluate_generator(model, data, n: int, seed: int, wanted: list[str]) -> tuple[dict[str, dict], dict]:
    ref = data.graphs("test")
    t0 = time.perf_counter()
    generated = model.sample_graphs(n, generator=make_generator(seed))
    sample_secs = time.perf_counter() - t0
    out = {"graphs_per_s": _entry(n / sample_secs, n, seed, sample_secs, unit="graphs/s")}
    stats = [s for s in STATS if f"mmd_{s}" in wanted]
    if stats:
        baseline = erdos_renyi_like(data.graphs("train"), n, seed=seed)
        for s in stats:
            t1 = time.perf_counter()
            v = graph_mmd(ref, generated, [s])[s]
            secs = time.perf_counter() - t1
            er = graph_mmd(ref, baseline, [s])[s]
            out[f"mmd_{s}"] = _entry(v, n, seed, secs, KERNELS[s][0], reference=f"{len(ref)} test graphs",
                                     erdos_renyi=er)
    sizes = [len(a) for a in generated]
    art = {"samples": drawing_tensor(generated[:16]),
           "text": f"{n} generated graphs: {np.mean(sizes):.1f} nodes on average (test: "
                   f"{np.mean([len(a) for a in ref]):.1f}), "
                   f"{np.mean([a.sum() / 2 for a in generated]):.1f} edges (test: "
                   f"{np.mean([a.sum() / 2 for a in ref]):.1f})"}
    return {k: out[k] for k in wanted}, art


def drawing_tensor(graphs: list[np.ndarray]) -> torch.Tensor:
    """A drawing of the graphs as one uint8 image (1, 3, H, W), for the HTML report."""
    import tempfile
    from pathlib import Path

    from PIL import Image

    from genlab.data.graphs import draw_graphs

    with tempfile.TemporaryDirectory() as d:
        p = draw_graphs(graphs, Path(d) / "g.png")
        img = np.asarray(Image.open(io.BytesIO(p.read_bytes())).convert("RGB"))
    return torch.from_numpy(img.copy()).permute(2, 0, 1)[None]
