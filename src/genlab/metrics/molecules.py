"""Molecule metrics, as the MOSES benchmark defines them (Polykovskiy et al. 2020, "Molecular
Sets (MOSES)", Front. Pharmacol.; molecularsets/moses, moses/metrics/). Pure functions: lists
of SMILES in, numbers out. RDKit comes from the molecules extra.

Conventions shared by every function:
- generated lists may hold invalid strings; `validity` counts them, the others look only at
  the valid molecules, in RDKit canonical form (`canonical`), as MOSES does after `remove_invalid`;
- fingerprints are Morgan (ECFP4: radius 2) bit vectors of 1024 bits, MOSES's choice for
  IntDiv and SNN; Tanimoto similarity of two bit sets a, b = |a & b| / |a | b|.
The code is genlab's own; the definitions, the MCF SMARTS and the filter rules follow MOSES.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from functools import lru_cache

import numpy as np

from genlab.extras import require

FP_BITS = 1024
FP_RADIUS = 2

# MOSES's medicinal-chemistry filters (moses/metrics/mcf.csv, after Polykovskiy et al. 2020, SI):
# substructures unwanted in drug-like molecules. Data, listed as published there.
MCF_SMARTS = (
    "[#6]=&!@[#6]-[#6]#[#7]", "[#6]=&!@[#6]-[#16](=[#8])=[#8]", "[#6]=&!@[#6&!H0]-&!@[#6](=[#8])-&!@[#7]",
    "[H]C([H])([#6])[F,Cl,Br,I]", "[#6]1-[#8]-[#6]-1", "[#6]-[#7]=[#6]=[#8]", "[#6&!H0]=[#8]",
    "[#6](=&!@[#7&!H0])-&!@[#6,#7,#8,#16]", "[#6]1-[#7]-[#6]-1", "[#6]~&!@[#7]~&!@[#7]~&!@[#6]", "[#7]=&!@[#7]",
    "[H][#6]-1=[#6]([H])-[#6]=[#6](-*)-[#8]-1", "[H][#6]-1=[#6]([H])-[#6]=[#6](-*)-[#16]-1",
    "[#17,#35,#53]-c(:*):[!#1!#6]:*", "[H][#7]([H])-[#6]-1=[#6]-[#6]=[#6]-[#6]=[#6]-1", "[#16]~[#16]",
    "[#7]~&!@[#7]~&!@[#7]", "[#7]-&!@[#6&!H0&!H1]-&!@[#7]", "[#6&!H0](-&!@[#8])-&!@[#8]", "[#35].[#35].[#35]",
    "[#17].[#17].[#17].[#17]", "[#9].[#9].[#9].[#9].[#9].[#9].[#9]",
)
# MOSES's atom rule: only these elements (hydrogens included), and no charged atom.
ALLOWED_ATOMS = frozenset({"C", "N", "S", "O", "F", "Cl", "Br", "H"})
MAX_RING = 7  # MOSES rejects molecules with a ring of 8 atoms or more


def _chem():
    return require("rdkit.Chem", "molecules", "molecule metrics")


@contextmanager
def quiet_rdkit():
    """RDKit prints a line per unparsable SMILES; genlab counts and reports them instead."""
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")
    try:
        yield
    finally:
        RDLogger.EnableLog("rdApp.*")


def to_mol(smiles: str):
    """An RDKit molecule, or None for an empty or unparsable string (RDKit sanitises it)."""
    if not smiles or not smiles.strip():
        return None
    mol = _chem().MolFromSmiles(smiles)
    return mol if mol is not None and mol.GetNumAtoms() > 0 else None


def canonical(smiles: str) -> str | None:
    """RDKit's canonical SMILES of `smiles` (isomeric), or None when it is not a valid molecule."""
    with quiet_rdkit():
        mol = to_mol(smiles)
    return None if mol is None else _chem().MolToSmiles(mol)


def canonical_valid(smiles: Iterable[str]) -> list[str]:
    """The canonical forms of the valid molecules of `smiles`, in order (MOSES's remove_invalid)."""
    out = []
    with quiet_rdkit():
        for s in smiles:
            mol = to_mol(s)
            if mol is not None:
                out.append(_chem().MolToSmiles(mol))
    return out


# --------------------------------------------------------------------------- counts


def validity(generated: Sequence[str]) -> float:
    """Share of generated strings that RDKit parses and sanitises into a non-empty molecule."""
    if not generated:
        raise ValueError("validity of an empty list")
    return len(canonical_valid(generated)) / len(generated)


def unique_at(valid: Sequence[str], k: int) -> float:
    """unique@k: share of distinct molecules among the first k valid (canonical) ones. MOSES
    reports @1000 and @10000; with fewer than k valid molecules all of them count (MOSES warns)."""
    head = list(valid[:k])
    if not head:
        raise ValueError("unique@k of no valid molecule")
    return len(set(head)) / len(head)


def novelty(valid: Sequence[str], train: Iterable[str]) -> float:
    """Share of the distinct valid generated molecules that are not in the training set
    (both canonical): MOSES's |set(gen) - set(train)| / |set(gen)|."""
    gen = set(valid)
    if not gen:
        raise ValueError("novelty of no valid molecule")
    return len(gen - set(train)) / len(gen)


# --------------------------------------------------------------------------- fingerprints


@lru_cache(maxsize=1)
def _morgan_generator():
    rdFingerprintGenerator = require("rdkit.Chem.rdFingerprintGenerator", "molecules", "molecule fingerprints")
    return rdFingerprintGenerator.GetMorganGenerator(radius=FP_RADIUS, fpSize=FP_BITS)


def fingerprints(smiles: Sequence[str]) -> np.ndarray:
    """Morgan bit vectors (radius 2, 1024 bits) of valid SMILES as a (N, 1024) uint8 0/1 array."""
    gen = _morgan_generator()
    out = np.zeros((len(smiles), FP_BITS), dtype=np.uint8)
    with quiet_rdkit():
        for i, s in enumerate(smiles):
            mol = to_mol(s)
            if mol is None:
                raise ValueError(f"not a valid molecule: {s!r}")
            out[i] = gen.GetFingerprintAsNumPy(mol)
    return out


def _tanimoto_blocks(a: np.ndarray, b: np.ndarray, block: int = 4096):
    """Yield (start, T) with T (len(chunk), len(b)) the Tanimoto similarities of a[start:start+block] to b."""
    bf = b.astype(np.float32)
    nb = bf.sum(1)  # (M,)
    for i in range(0, len(a), block):
        af = a[i:i + block].astype(np.float32)
        inter = af @ bf.T  # (n, M)
        union = af.sum(1)[:, None] + nb[None, :] - inter
        # two empty fingerprints are identical (MOSES sets 0/0 to 1)
        yield i, np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def tanimoto_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) Tanimoto similarities of two 0/1 fingerprint arrays."""
    return np.concatenate([t for _, t in _tanimoto_blocks(a, b)]) if len(a) else np.zeros((0, len(b)))


def internal_diversity(fps: np.ndarray, p: int = 1) -> float:
    """IntDiv_p = 1 - (mean over all ordered pairs (i, j), i = j included, of T(i, j)^p)^(1/p),
    MOSES's definition (it averages over every pair of the generated set with itself, so a set
    of one repeated molecule scores 0 and the diagonal keeps IntDiv below 1 - 1/N)."""
    if len(fps) == 0:
        raise ValueError("internal diversity of no molecule")
    total = sum(float((t.astype(np.float64) ** p).sum()) for _, t in _tanimoto_blocks(fps, fps))
    return 1.0 - (total / len(fps) ** 2) ** (1.0 / p)


def snn(gen_fps: np.ndarray, ref_fps: np.ndarray) -> float:
    """SNN: mean over generated molecules of the Tanimoto similarity to the nearest reference molecule."""
    if len(gen_fps) == 0 or len(ref_fps) == 0:
        raise ValueError("SNN needs generated and reference molecules")
    best = np.zeros(len(gen_fps))
    for j in range(0, len(ref_fps), 8192):  # reference in blocks: memory stays (block x 8192)
        for i, t in _tanimoto_blocks(gen_fps, ref_fps[j:j + 8192]):
            best[i:i + len(t)] = np.maximum(best[i:i + len(t)], t.max(1))
    return float(best.mean())


# --------------------------------------------------------------------------- fragments, scaffolds


def fragment_counts(smiles: Iterable[str]) -> Counter:
    """Counts of BRICS fragments (canonical SMILES of the pieces left when every BRICS bond is
    broken, dummy atoms included) over a set of molecules, as MOSES's compute_fragments."""
    Chem = _chem()
    BRICS = require("rdkit.Chem.BRICS", "molecules", "fragment similarity")
    counts: Counter = Counter()
    with quiet_rdkit():
        for s in smiles:
            mol = to_mol(s)
            if mol is not None:
                counts.update(Chem.MolToSmiles(BRICS.BreakBRICSBonds(mol)).split("."))
    return counts


def scaffold_counts(smiles: Iterable[str], min_rings: int = 2) -> Counter:
    """Counts of Bemis-Murcko scaffolds (canonical SMILES) with at least `min_rings` rings, MOSES's
    compute_scaffolds (min_rings=2 there; acyclic molecules and one-ring scaffolds are left out)."""
    Chem = _chem()
    MurckoScaffold = require("rdkit.Chem.Scaffolds.MurckoScaffold", "molecules", "scaffold similarity")
    counts: Counter = Counter()
    with quiet_rdkit():
        for s in smiles:
            mol = to_mol(s)
            if mol is None:
                continue
            try:
                scaf = MurckoScaffold.GetScaffoldForMol(mol)
            except (ValueError, RuntimeError):
                continue
            text = Chem.MolToSmiles(scaf)
            if text and scaf.GetRingInfo().NumRings() >= min_rings:
                counts[text] += 1
    return counts


def cosine_counts(a: Counter, b: Counter) -> float:
    """Cosine similarity of two count vectors over the union of their keys (Frag, Scaf); 0 when
    either is empty, so a set without any scaffold scores 0 rather than failing."""
    dot = sum(a[k] * b[k] for k in a.keys() & b.keys())
    na, nb = math.sqrt(sum(v * v for v in a.values())), math.sqrt(sum(v * v for v in b.values()))
    return dot / (na * nb) if na and nb else 0.0


# --------------------------------------------------------------------------- filters


@lru_cache(maxsize=1)
def _filter_patterns():
    """MCF SMARTS (matched on the molecule with explicit hydrogens, as MOSES does) and RDKit's
    PAINS catalogue (families A, B, C: Baell & Holloway 2010, the source of MOSES's wehi_pains.csv)."""
    Chem = _chem()
    FilterCatalog = require("rdkit.Chem.FilterCatalog", "molecules", "the filters metric")
    params = FilterCatalog.FilterCatalogParams()
    params.AddCatalog(FilterCatalog.FilterCatalogParams.FilterCatalogs.PAINS)
    return [Chem.MolFromSmarts(s) for s in MCF_SMARTS], FilterCatalog.FilterCatalog(params)


def passes_filters(mol) -> bool:
    """MOSES's mol_passes_filters: no ring of 8+ atoms, no charged atom, only C N S O F Cl Br H,
    and no MCF or PAINS match."""
    Chem = _chem()
    if mol is None:
        return False
    if any(len(r) > MAX_RING for r in mol.GetRingInfo().AtomRings()):
        return False
    if any(a.GetFormalCharge() != 0 or a.GetSymbol() not in ALLOWED_ATOMS for a in mol.GetAtoms()):
        return False
    mcf, pains = _filter_patterns()
    h_mol = Chem.AddHs(mol)
    if any(h_mol.HasSubstructMatch(p) for p in mcf):
        return False
    return not pains.HasMatch(mol)


def filters(valid: Sequence[str]) -> float:
    """Share of valid generated molecules passing MOSES's filters (`passes_filters`)."""
    if not valid:
        raise ValueError("filters of no valid molecule")
    with quiet_rdkit():
        return sum(passes_filters(to_mol(s)) for s in valid) / len(valid)


# --------------------------------------------------------------------------- properties


@lru_cache(maxsize=1)
def _sascorer():
    """RDKit's Contrib SA score (Ertl & Schuffenhauer 2009), shipped in the rdkit wheel."""
    import importlib.util
    import os

    RDConfig = require("rdkit.RDConfig", "molecules", "the SA score")
    path = os.path.join(RDConfig.RDContribDir, "SA_Score", "sascorer.py")
    spec = importlib.util.spec_from_file_location("genlab_sascorer", path)
    if spec is None or not os.path.isfile(path):
        raise FileNotFoundError(f"RDKit's SA_Score contribution is missing ({path})")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


PROPERTIES = ("logp", "qed", "sa", "weight")


def _property_functions() -> dict:
    """{name: RDKit function of a molecule} for PROPERTIES."""
    _chem()  # the molecules extra's clear error before the imports below
    from rdkit.Chem import QED, Crippen, Descriptors

    return {"logp": Crippen.MolLogP, "qed": QED.qed, "sa": _sascorer().calculateScore, "weight": Descriptors.MolWt}


def properties(smiles: Sequence[str], names: Sequence[str] = PROPERTIES) -> dict[str, np.ndarray]:
    """Crippen logP, QED, SA score and molecular weight of each valid molecule (MOSES's four
    property distributions; `names` picks some of them), as float64 arrays."""
    fns = _property_functions()
    out = {k: np.zeros(len(smiles)) for k in names}
    with quiet_rdkit():
        for i, s in enumerate(smiles):
            mol = to_mol(s)
            if mol is None:
                raise ValueError(f"not a valid molecule: {s!r}")
            for k in names:
                out[k][i] = fns[k](mol)
    return out


def condition_success(values: Sequence[float | None], lo: float, hi: float) -> float:
    """Success rate of goal-directed generation: the share of ALL generated molecules (None for
    an invalid one, which fails) whose property lies in [lo, hi). Dividing by every sample, not
    by the valid ones, keeps a model from scoring by emitting few valid molecules."""
    if not len(values):
        raise ValueError("success rate of no generated molecule")
    return sum(v is not None and lo <= v < hi for v in values) / len(values)


def wasserstein_1d(u: np.ndarray, v: np.ndarray) -> float:
    """Earth mover's distance between two 1-D empirical distributions: the integral of
    |F_u - F_v| over the line (the statistic MOSES reports for property distributions)."""
    u, v = np.sort(np.asarray(u, np.float64)), np.sort(np.asarray(v, np.float64))
    if not len(u) or not len(v):
        raise ValueError("Wasserstein distance of an empty sample")
    grid = np.concatenate([u, v])
    grid.sort()
    widths = np.diff(grid)  # (n+m-1,)
    fu = np.searchsorted(u, grid[:-1], side="right") / len(u)
    fv = np.searchsorted(v, grid[:-1], side="right") / len(v)
    return float(np.sum(np.abs(fu - fv) * widths))


# --------------------------------------------------------------------------- FCD


@lru_cache(maxsize=1)
def _fcd_model():
    fcd_torch = require("fcd_torch", "molecules", "the fcd metric")
    return fcd_torch.FCD(device="cpu", n_jobs=1)


CHEMNET_CHUNK = 2000  # molecules per fcd_torch call (see chemnet_stats)


def chemnet_stats(smiles: Sequence[str]) -> dict[str, np.ndarray]:
    """Mean (512,) and covariance (512, 512; unbiased, as np.cov) of ChemNet's penultimate
    activations (fcd_torch's network, shipped in its wheel) over valid SMILES: one side of the FCD.
    Activations are summed chunk by chunk in float64: one fcd_torch call over the 176k MOSES test
    molecules grew to 23 GB and was killed (peak memory rose ~180 kB per molecule within a call,
    not across calls)."""
    import warnings

    if len(smiles) < 2:
        raise ValueError("FCD needs at least 2 molecules per set")
    model, n = _fcd_model(), len(smiles)
    total, outer = np.zeros(512), np.zeros((512, 512))
    with warnings.catch_warnings():  # fcd_torch 1.0.7 calls np.row_stack, deprecated in NumPy 2
        warnings.simplefilter("ignore", DeprecationWarning)
        for i in range(0, n, CHEMNET_CHUNK):
            act = model.get_predictions(list(smiles[i:i + CHEMNET_CHUNK])).astype(np.float64)  # (b, 512)
            total += act.sum(0)
            outer += act.T @ act
    mu = total / n
    return {"mu": mu, "sigma": (outer - n * np.outer(mu, mu)) / (n - 1)}


def frechet_distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """FCD = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) (Preuer et al. 2018), through
    genlab's own Fréchet distance (the one FID uses)."""
    import torch

    from genlab.metrics.sample_quality import _compute_fid

    t = {k: torch.as_tensor(np.asarray(v), dtype=torch.float64) for k, v in (
        ("m1", a["mu"]), ("c1", a["sigma"]), ("m2", b["mu"]), ("c2", b["sigma"]))}
    return max(0.0, _compute_fid(t["m1"], t["c1"], t["m2"], t["c2"]))


def fcd(generated: Sequence[str], reference: Sequence[str]) -> float:
    """Fréchet ChemNet Distance between two sets of valid SMILES."""
    return frechet_distance(chemnet_stats(generated), chemnet_stats(reference))
