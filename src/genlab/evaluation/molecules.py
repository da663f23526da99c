"""Molecule metrics of a molecule run (a text run with data.tokenizer=smiles|selfies), the
MOSES benchmark's set (genlab.metrics.molecules defines each):

- generated n molecules (default 10,000; MOSES draws 30,000: --n 30000), each sampled from
  "\\n" to the next "\\n" at temperature 1;
- `validity` over all n; `unique_1k`, `unique_10k` over the first 1,000 / 10,000 valid ones;
  `novelty` against the run's training molecules; `intdiv`, `intdiv2`, `filters` and the rest
  over the valid molecules (duplicates kept, as MOSES does);
- against a reference set: `fcd`, `snn`, `frag`, `scaf` and the property distances
  `wd_logp`, `wd_qed`, `wd_sa`, `wd_weight` (1-D Wasserstein). The reference is the MOSES test
  set for runs on the MOSES train file, plus the scaffold test set for `*_tsf` (fcd_tsf, snn_tsf,
  frag_tsf, scaf_tsf); other data is scored against the run's own val molecules.
  `data.reference_size` (or `reference_size=`) keeps a fixed random choice of that many
  reference molecules, for quick checks; the statistics of each reference (fingerprints,
  fragment and scaffold counts, ChemNet mean/covariance, properties) are cached in genlab's
  cache dir, so only the first evaluation against a reference pays for them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np

from genlab.errors import ConfigError
from genlab.options import check_number

log = logging.getLogger("genlab")

COUNT_METRICS = ("validity", "unique_1k", "unique_10k", "novelty", "intdiv", "intdiv2", "filters")
REFERENCE_METRICS = ("fcd", "snn", "frag", "scaf", "wd_logp", "wd_qed", "wd_sa", "wd_weight")
SCAFFOLD_METRICS = ("fcd_tsf", "snn_tsf", "frag_tsf", "scaf_tsf")
METRICS = COUNT_METRICS + REFERENCE_METRICS + SCAFFOLD_METRICS
DEFAULT_N = 10_000
STATS_VERSION = 1  # bump when a cached reference statistic changes meaning


# --------------------------------------------------------------------------- reference statistics


class Reference:
    """One reference set's statistics, each computed on first use and cached on disk under a key
    of the molecules themselves (so a changed file or subset never reuses stale numbers)."""

    def __init__(self, name: str, smiles: list[str]):
        from genlab.data.datasets import cache_dir

        self.name, self.smiles = name, smiles
        h = hashlib.sha256(f"v{STATS_VERSION}".encode())
        for s in smiles:
            h.update(s.encode() + b"\n")
        self.folder = cache_dir() / "molecules" / f"ref-{h.hexdigest()[:24]}"

    def _cached(self, part: str, compute, save, load):
        path = self.folder / part
        if path.exists():
            try:
                return load(path)
            except (OSError, ValueError, KeyError):
                pass
        t0 = time.perf_counter()
        value = compute()
        log.info("%s reference (%d molecules): %s computed in %.1f s (cached for later evaluations)", self.name,
                 len(self.smiles), part.split(".")[0], time.perf_counter() - t0)
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"tmp{os.getpid()}-{path.name}")
        save(tmp, value)
        os.replace(tmp, path)
        return value

    def _npz(self, part: str, compute):
        def save(p, d):
            with open(p, "wb") as f:
                np.savez(f, **d)

        return self._cached(part + ".npz", compute, save, lambda p: dict(np.load(p)))

    def _counts(self, part: str, compute) -> Counter:
        return self._cached(part + ".json", compute, lambda p, c: Path(p).write_text(json.dumps(c)),
                            lambda p: Counter(json.loads(Path(p).read_text())))

    def fingerprints(self) -> np.ndarray:
        from genlab.metrics import molecules as M

        d = self._npz("fingerprints", lambda: {"bits": np.packbits(M.fingerprints(self.smiles), axis=1)})
        return np.unpackbits(d["bits"], axis=1)[:, :M.FP_BITS]

    def chemnet(self) -> dict[str, np.ndarray]:
        from genlab.metrics import molecules as M

        return self._npz("chemnet", lambda: M.chemnet_stats(self.smiles))

    def properties(self) -> dict[str, np.ndarray]:
        from genlab.metrics import molecules as M

        return self._npz("properties", lambda: M.properties(self.smiles))

    def fragments(self) -> Counter:
        from genlab.metrics import molecules as M

        return self._counts("fragments", lambda: M.fragment_counts(self.smiles))

    def scaffolds(self) -> Counter:
        from genlab.metrics import molecules as M

        return self._counts("scaffolds", lambda: M.scaffold_counts(self.smiles))


def reference_sets(data, reference_size: int | None) -> dict[str, Reference]:
    """{"": main reference, "_tsf": MOSES scaffold test (MOSES runs only)} for a MoleculeData."""
    from genlab.data.molecules import SUBSET_SEED, load_molecules

    refs = data.molecules.get("reference")
    if refs == "val" or not refs:
        smiles = list(data.val_smiles)
        if reference_size is not None and reference_size < len(smiles):
            keep = np.sort(np.random.default_rng(SUBSET_SEED).choice(len(smiles), reference_size, replace=False))
            smiles = [smiles[i] for i in keep]
        return {"": Reference("val", smiles)}
    out = {}
    for suffix, key in (("", "test"), ("_tsf", "test_scaffolds")):
        mols = load_molecules(refs[key], "SMILES", max_molecules=reference_size)
        out[suffix] = Reference(f"MOSES {key}", mols.smiles)
    return out


# --------------------------------------------------------------------------- evaluation


def score_molecules(generated: list[str], train: list[str], references: dict[str, "Reference"],
                    wanted: list[str], keep: dict | None = None) -> dict[str, tuple[float, dict]]:
    """{metric: (value, extra report fields)} of generated SMILES against train and the references.
    `keep` (a dict) receives the generated side's statistics that were computed ("props", ...)."""
    from genlab.metrics import molecules as M

    valid = M.canonical_valid(generated)
    if not valid:
        if set(wanted) - {"validity"}:
            log.warning("no generated molecule is valid: only validity can be scored")
        return {"validity": (0.0, {"valid": 0})} if "validity" in wanted else {}
    out: dict[str, tuple[float, dict]] = {}
    fps = M.fingerprints(valid) if {"intdiv", "intdiv2", "snn", "snn_tsf"} & set(wanted) else None
    cache: dict = {} if keep is None else keep

    def gen(part: str):  # the generated side's statistics, once each
        if part not in cache:
            cache[part] = {"chemnet": lambda: M.chemnet_stats(valid), "props": lambda: M.properties(valid),
                           "frag": lambda: M.fragment_counts(valid), "scaf": lambda: M.scaffold_counts(valid)}[part]()
        return cache[part]

    for name in wanted:
        t0 = time.perf_counter()
        suffix = "_tsf" if name.endswith("_tsf") else ""
        base = name[:-4] if suffix else name
        ref = references.get(suffix)
        extra: dict = {"valid": len(valid)}
        if name in REFERENCE_METRICS + SCAFFOLD_METRICS:
            if ref is None:
                continue  # no scaffold test set for this data
            extra["reference"] = f"{ref.name} ({len(ref.smiles)} molecules)"
        if name == "validity":
            value = len(valid) / len(generated)
        elif name in ("unique_1k", "unique_10k"):
            k = 1000 if name == "unique_1k" else 10_000
            value = M.unique_at(valid, k)
            extra["valid"] = min(k, len(valid))
        elif name == "novelty":
            value = M.novelty(valid, train)
            extra["train"] = len(train)
        elif name in ("intdiv", "intdiv2"):
            value = M.internal_diversity(fps, p=1 if name == "intdiv" else 2)
        elif name == "filters":
            value = M.filters(valid)
        elif base == "fcd":
            if len(valid) < 2:
                continue
            value = M.frechet_distance(gen("chemnet"), ref.chemnet())
        elif base == "snn":
            value = M.snn(fps, ref.fingerprints())
        elif base == "frag":
            value = M.cosine_counts(gen("frag"), ref.fragments())
        elif base == "scaf":
            value = M.cosine_counts(gen("scaf"), ref.scaffolds())
        elif base.startswith("wd_"):
            value = M.wasserstein_1d(gen("props")[base[3:]], ref.properties()[base[3:]])
        else:  # pragma: no cover  (METRICS lists every name handled above)
            raise ConfigError(f"unknown molecule metric {name}")
        extra["seconds"] = round(time.perf_counter() - t0, 3)
        out[name] = (float(value), extra)
    return out


def evaluate_molecules(run, *, n: int | None, seed: int, metrics: list[str] | None,
                       reference_size: int | None = None, data_root=None,
                       temperature: float = 1.0, smiles_syntax: bool = False) -> tuple[dict[str, dict], dict]:
    """The MOSES metrics of a molecule run as report entries, and the report's artefacts (the
    first generated molecules as text). `temperature`: the sampling temperature (MOSES samples at
    1; lower trades diversity for validity); `smiles_syntax`: sampling constrained to SMILES's
    grammar (genlab.data.smiles_syntax); both recorded with every metric."""
    from genlab.data.molecule_condition import run_condition
    from genlab.data.molecules import sample_molecules
    from genlab.evaluation.molecule_condition import (CONDITION_METRICS, DEFAULT_CONDITION_METRICS, evaluate_condition,
                                                      require_condition)
    from genlab.progress import Progress

    conditioned = run_condition(run.meta) is not None  # data.condition runs add the success rate
    wanted = list(metrics) if metrics else list(METRICS) + list(DEFAULT_CONDITION_METRICS if conditioned else ())
    unknown = [m for m in wanted if m not in METRICS + CONDITION_METRICS]
    if unknown:
        raise ConfigError(f"unknown molecule metric(s) {', '.join(unknown)}; choose from "
                          f"{', '.join(METRICS + CONDITION_METRICS)}")
    condition = [m for m in wanted if m in CONDITION_METRICS]
    wanted = [m for m in wanted if m not in CONDITION_METRICS]
    if condition:
        require_condition(run, condition)
    check_number("--temperature", temperature, lo=0, lo_open=True)
    n = n or DEFAULT_N
    data = run.data(data_root)
    scored = evaluate_condition(run, data, condition, n=n, seed=seed, temperature=temperature) if condition else {}
    if not wanted:
        return scored, {}
    reference_size = reference_size if reference_size is not None else run.cfg.data.reference_size
    refs = reference_sets(data, reference_size) if set(wanted) & set(REFERENCE_METRICS + SCAFFOLD_METRICS) else {}
    t0 = time.perf_counter()
    with Progress("generating", n, unit="molecules") as bar:
        generated = sample_molecules(run.model.eval(), data.tokenizer, n, seed=seed, max_tokens=data.max_tokens(),
                                     temperature=temperature, progress=bar, smiles_syntax=smiles_syntax)
    gen_secs = time.perf_counter() - t0
    grammar = "SMILES syntax and valences" if getattr(data.tokenizer, "kekulize", False) else "SMILES syntax"
    sampling = f"temperature {temperature:g}" + (f", {grammar}" if smiles_syntax else "")
    stats: dict = {}
    scores = score_molecules(generated, data.train_smiles, refs, wanted, keep=stats)
    out = {}
    for name in wanted:
        if name not in scores:
            continue
        value, extra = scores[name]
        secs = extra.pop("seconds", 0.0)
        out[name] = {"value": value, "extractor": "chemnet" if name.startswith("fcd") else None, "n": n,
                     "seed": seed, "seconds": round(secs + (gen_secs if name == "validity" else 0.0), 3),
                     "sampling": sampling, **extra}
    if "validity" in out:  # the generation alone, for a samples/second figure
        out["validity"]["generation_seconds"] = round(gen_secs, 3)
    out.update(scored)
    shown = "\n".join(s if s else "(unfinished)" for s in generated[:50])
    artefacts = {"text": f"first {min(50, n)} of {n} generated molecules (seed {seed}):\n{shown}"}
    grid = molecule_images(generated[:200], GRID)
    if grid is not None:  # the report's sample grid: drawings of the first valid molecules
        artefacts["samples"] = grid
    if "props" in stats and "" in refs:
        artefacts["figures"] = {f"property distributions: generated vs {refs[''].name}":
                                property_figure(stats["props"], refs[""].properties(), refs[""].name)}
    return out, artefacts


LABELS = {"logp": "logP (Crippen)", "qed": "QED", "sa": "SA score", "weight": "molecular weight (Da)"}


def property_figure(gen: dict[str, np.ndarray], ref: dict[str, np.ndarray], ref_name: str) -> bytes:
    """Histograms (densities) of the four MOSES properties, generated against reference, as PNG bytes."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from genlab.metrics.molecules import PROPERTIES, wasserstein_1d

    fig, axes = plt.subplots(1, len(PROPERTIES), figsize=(4 * len(PROPERTIES), 3))
    for ax, k in zip(axes, PROPERTIES):
        lo, hi = np.percentile(np.concatenate([gen[k], ref[k]]), [0.5, 99.5])
        bins = np.linspace(lo, hi, 40)
        ax.hist(ref[k], bins=bins, density=True, alpha=0.5, label=ref_name)
        ax.hist(gen[k], bins=bins, density=True, histtype="step", lw=1.5, label="generated")
        ax.set_title(f"{LABELS[k]}: W1 = {wasserstein_1d(gen[k], ref[k]):.3g}", fontsize=9)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


GRID = 30  # molecules drawn in the HTML report


def molecule_images(smiles: list[str], k: int, size: int = 200):
    """2-D drawings of the first k valid molecules of `smiles` as uint8 (k', 3, size, size), or None
    when none is valid."""
    import torch

    from genlab.metrics.molecules import canonical_valid, to_mol

    Draw = __import__("rdkit.Chem.Draw", fromlist=["Draw"])
    pics = []
    for s in canonical_valid(smiles)[:k]:
        img = Draw.MolToImage(to_mol(s), size=(size, size)).convert("RGB")
        pics.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1))  # (3, size, size)
    return torch.stack(pics) if pics else None
