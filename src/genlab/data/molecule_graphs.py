"""Molecules as graphs, for the graph generators (`data.dataset=molecules`, model molgraphrnn).

The molecules come from the same files, cache and settings as the SMILES text runs
(`genlab.data.molecules.load_molecules`: data.path, default the MOSES train file; data.column;
data.max_molecules; data.val_size; canonical SMILES cached once). Each canonical SMILES becomes a
kekulised heavy-atom graph:

- nodes: atom types, element + formal charge ("C", "N+", "O-"), as indices into ATOM_TYPES, a
  fixed, append-only alphabet with a valence per type (data.json lists the types the training
  split uses, with counts). Fixed rather than built from the training set because a model is
  built from its config alone and the engine fills only integer fields from the data
  (max_nodes, max_prev); types the data lacks are simply never targets. Implicit hydrogens are
  not nodes: RDKit puts them back from each atom's valence when the graph becomes a molecule.
- edges: bond orders 1, 2, 3 (aromatic rings kekulised into single and double bonds).

Molecules that no such graph can hold (an atom type outside ATOM_TYPES, a radical, an isotope,
a dative or other unusual bond, several fragments, an atom with more bonds than MAX_VALENCE) are
left out, counted and named like invalid lines; more than MAX_INVALID_SHARE of them refuses the file.

The graphs are stored flat (CSR-like: one array of atom types, one of bonds (i, j, order), and
offsets), so the whole 1.58M-molecule MOSES set takes ~150 MB, and batches are padded on the fly.
Converted sets are cached beside the canonical SMILES, keyed by the molecules themselves (250,000
MOSES molecules: 98-129 s to convert on one thread; 0.05 s to read back).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from genlab.errors import ConfigError, DataError

log = logging.getLogger("genlab")

# The atom alphabet, (element, formal charge) -> the largest total bond order RDKit's sanitisation
# accepts with implicit hydrogens filling the rest (RDKit 2026.09: S 2/4/6 -> 6, P 3/5 -> 5;
# charged atoms take their isoelectronic neighbour's valences: N+ like C, O- like F). Iodine is held
# to 1 like the other halogens, below RDKit's 5: a hypervalent iodine graph can sanitise while its
# SMILES does not read back (RDKit's reader turns C[O+]=[IH] into a valence error on the O).
# tests/test_molgraph.py checks every entry against RDKit (max sanitises, max + 1 does not but for I).
# Append only: a run's atom indices are positions in this tuple.
ATOM_TYPES: tuple[str, ...] = ("C", "N", "O", "F", "S", "Cl", "Br", "I", "P", "B", "Si", "Se",
                               "N+", "N-", "O+", "O-", "S+", "S-", "C-", "C+", "P+", "B-")
MAX_VALENCE: dict[str, int] = {"C": 4, "N": 3, "O": 2, "F": 1, "S": 6, "Cl": 1, "Br": 1, "I": 1, "P": 5, "B": 3,
                               "Si": 4, "Se": 6, "N+": 4, "N-": 2, "O+": 3, "O-": 1, "S+": 5, "S-": 5, "C-": 3,
                               "C+": 3, "P+": 4, "B-": 4}
ATOM_INDEX = {t: i for i, t in enumerate(ATOM_TYPES)}
BOND_ORDERS = (1, 2, 3)  # single, double, triple; 0 = no bond
GRAPH_FORMAT = 2  # bump when the conversion changes: cached graph sets are keyed by it
SHOWN_LEFT_OUT = 20


def atom_type(symbol: str, charge: int) -> str:
    """"C", "N+", "O-", "N++" ...: the ATOM_TYPES spelling of an element and formal charge."""
    return symbol + ("+" * charge if charge > 0 else "-" * -charge)


def max_valences() -> np.ndarray:
    """(len(ATOM_TYPES),) int64: each type's largest total bond order, in ATOM_TYPES order."""
    return np.array([MAX_VALENCE[t] for t in ATOM_TYPES], dtype=np.int64)


# --------------------------------------------------------------------------- SMILES <-> graph


def mol_to_graph(mol) -> tuple[np.ndarray, np.ndarray] | str:
    """(atom type indices (n,) uint8, bonds (E, 3) uint8 rows (i, j, order) with i < j) of an RDKit
    molecule, kekulised; or a reason (str) why no graph of this alphabet holds it."""
    from rdkit import Chem

    if len(Chem.GetMolFrags(mol)) != 1:
        return "several fragments"
    mol = Chem.Mol(mol)
    try:
        Chem.Kekulize(mol, clearAromaticFlags=True)
    except Exception:  # noqa: BLE001  (RDKit raises KekulizeException and others)
        return "cannot be kekulised"
    atoms = []
    for a in mol.GetAtoms():
        t = atom_type(a.GetSymbol(), a.GetFormalCharge())
        if t not in ATOM_INDEX:
            return f"atom type {t} outside the alphabet"
        if a.GetNumRadicalElectrons() or a.GetIsotope():
            return "radical or isotope"
        atoms.append(ATOM_INDEX[t])
    order = {Chem.BondType.SINGLE: 1, Chem.BondType.DOUBLE: 2, Chem.BondType.TRIPLE: 3}
    bonds = []
    for b in mol.GetBonds():
        o = order.get(b.GetBondType())
        if o is None:
            return f"bond type {b.GetBondType()}"
        i, j = sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx()))
        bonds.append((i, j, o))
    atoms, bonds = np.array(atoms, np.uint8), np.array(bonds, np.uint8).reshape(-1, 3)
    used = np.bincount(bonds[:, :2].ravel(), np.repeat(bonds[:, 2], 2), minlength=len(atoms))
    if (used > max_valences()[atoms]).any():  # e.g. hypervalent iodine: the generator's masks exclude it
        return "valence above the generator's table"
    return atoms, bonds


def smiles_to_graph(smiles: str) -> tuple[np.ndarray, np.ndarray] | str:
    """mol_to_graph of a SMILES string (a reason string when it does not parse)."""
    from genlab.metrics.molecules import quiet_rdkit, to_mol

    if "." in smiles:  # checked before parsing: a quarter of the conversion time
        return "several fragments"
    with quiet_rdkit():
        mol = to_mol(smiles)
    return "not a valid SMILES" if mol is None else mol_to_graph(mol)


def dense_bonds(adj: np.ndarray) -> np.ndarray:
    """(E, 3) rows (i, j, order), i < j, of a symmetric (n, n) matrix of bond orders."""
    i, j = np.nonzero(np.triu(adj, 1))
    return np.stack([i, j, adj[i, j]], 1).astype(np.int64)


def graph_to_mol(atoms, bonds):
    """An RDKit molecule (sanitised) of atom type indices (n,) and bonds (E, 3) rows (i, j, order);
    None when RDKit refuses it."""
    from rdkit import Chem

    kinds = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}
    m = Chem.RWMol()
    for t in np.asarray(atoms).tolist():
        sym = ATOM_TYPES[t].rstrip("+-")
        a = Chem.Atom(sym)
        a.SetFormalCharge(ATOM_TYPES[t].count("+") - ATOM_TYPES[t].count("-"))
        m.AddAtom(a)
    for i, j, o in np.asarray(bonds).tolist():
        m.AddBond(int(i), int(j), kinds[int(o)])
    mol = m.GetMol()
    try:
        Chem.SanitizeMol(mol)
    except Exception:  # noqa: BLE001  (valence, kekulisation: RDKit raises several types)
        return None
    return mol


def graph_to_smiles(atoms, bonds) -> str:
    """Canonical SMILES of a graph (bonds as (E, 3) rows), "" when RDKit refuses the molecule."""
    from rdkit import Chem

    from genlab.metrics.molecules import quiet_rdkit

    if len(atoms) == 0:
        return ""
    with quiet_rdkit():
        mol = graph_to_mol(atoms, bonds)
        return "" if mol is None else Chem.MolToSmiles(mol)


def bfs_reach(n: int, bonds: np.ndarray) -> int:
    """An upper bound, over every start atom and neighbour order, of how far back in BFS order an
    atom's earliest neighbour can be, for one molecule of n atoms (see bfs_reach_all)."""
    return bfs_reach_all(MolGraphs.from_graphs([(np.zeros(n, np.uint8), bonds)]))


def bfs_reach_all(graphs: MolGraphs, chunk: int = 4096) -> int:
    """bfs_reach over every molecule: the bound of genlab.data.graphs.bfs_bandwidth_bound (two
    neighbours lie in the same or adjacent BFS levels, so at most |L_k| + |L_k+1| - 1 apart), with
    the BFS from every start of every molecule in a chunk run at once, one level per batched
    (n, n) product: 89 us of CPU a MOSES molecule, against 1.03 ms for bfs_bandwidth_bound's loop."""
    best = 1
    size = int(graphs.sizes.max()) if len(graphs) else 1
    for i in range(0, len(graphs), chunk):
        _, adj, n = graphs.dense(np.arange(i, min(i + chunk, len(graphs))), size)
        a = (adj > 0).float()  # (C, N, N)
        real = torch.arange(size)[None] < n[:, None]  # (C, N)
        frontier = torch.diag_embed(real.float())  # (C, N, N): row s holds the atoms at the current distance
        seen = frontier > 0
        prev = real.float()  # |L_0| = 1 for each real start
        while True:
            nxt = (torch.bmm(frontier, a) > 0) & ~seen
            width = nxt.sum(2).float()  # (C, N) atoms at this distance from each start
            if not width.any():
                break
            best = max(best, int((prev + width).max()) - 1)
            seen |= nxt
            frontier, prev = nxt.float(), width
    return best


# --------------------------------------------------------------------------- flat storage


@dataclass
class MolGraphs:
    """Molecule graphs stored flat: `atoms` (A,) uint8 type indices with `atom_ptr` (G+1,)
    offsets, `bonds` (E, 3) uint8 (i, j, order) local to each molecule with `bond_ptr` (G+1,)."""

    atoms: np.ndarray
    atom_ptr: np.ndarray
    bonds: np.ndarray
    bond_ptr: np.ndarray

    def __len__(self) -> int:
        return len(self.atom_ptr) - 1

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.atom_ptr)

    @classmethod
    def from_graphs(cls, graphs: list[tuple[np.ndarray, np.ndarray]]) -> MolGraphs:
        na = np.array([len(a) for a, _ in graphs], np.int64)
        nb = np.array([len(b) for _, b in graphs], np.int64)
        return cls(np.concatenate([a for a, _ in graphs]) if graphs else np.zeros(0, np.uint8),
                   np.concatenate([[0], np.cumsum(na)]),
                   np.concatenate([b for _, b in graphs]) if graphs else np.zeros((0, 3), np.uint8),
                   np.concatenate([[0], np.cumsum(nb)]))

    def subset(self, idx: np.ndarray) -> MolGraphs:
        idx = np.asarray(idx, np.int64)
        a_idx, na = _ranges(self.atom_ptr, idx)
        b_idx, nb = _ranges(self.bond_ptr, idx)
        return MolGraphs(self.atoms[a_idx], np.concatenate([[0], np.cumsum(na)]), self.bonds[b_idx],
                         np.concatenate([[0], np.cumsum(nb)]))

    def graph(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return (self.atoms[self.atom_ptr[i]:self.atom_ptr[i + 1]],
                self.bonds[self.bond_ptr[i]:self.bond_ptr[i + 1]])

    def dense(self, idx, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Padded batch of molecules `idx`: atom types (B, size) int64 (-1 past each molecule's
        atoms), bond orders (B, size, size) uint8 (symmetric) and atom counts (B,) int64."""
        idx = np.asarray(idx, np.int64)
        B = len(idx)
        a_idx, na = _ranges(self.atom_ptr, idx)
        b_idx, nb = _ranges(self.bond_ptr, idx)
        atoms = np.full((B, size), -1, np.int64)
        atoms[np.repeat(np.arange(B), na), _local(na)] = self.atoms[a_idx]
        adj = np.zeros((B, size, size), np.uint8)
        rows, bonds = np.repeat(np.arange(B), nb), self.bonds[b_idx]
        adj[rows, bonds[:, 0], bonds[:, 1]] = bonds[:, 2]
        adj[rows, bonds[:, 1], bonds[:, 0]] = bonds[:, 2]
        return torch.from_numpy(atoms), torch.from_numpy(adj), torch.from_numpy(na)


def _ranges(ptr: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flat positions of the items of groups idx, items per group) of a CSR offset array."""
    counts = ptr[idx + 1] - ptr[idx]
    return np.repeat(ptr[idx], counts) + _local(counts), counts


def _local(counts: np.ndarray) -> np.ndarray:
    """0..c-1 for each count c, concatenated."""
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(int(counts.sum())) - starts


# --------------------------------------------------------------------------- the dataset


@dataclass
class MoleculeGraphData:
    """Train and val molecule graphs (no test split: the MOSES test files are the evaluation's
    reference), with the canonical SMILES `genlab evaluate` reads (the same fields as
    genlab.data.molecules.MoleculeData: train_smiles for novelty, val_smiles and `molecules`)."""

    train: MolGraphs
    val: MolGraphs
    train_smiles: list[str]
    val_smiles: list[str]
    source: str
    max_nodes: int  # the largest molecule's heavy atoms
    max_prev: int  # BFS reach bound over all molecules
    molecules: dict = field(default_factory=dict)  # MoleculeSet.summary(), reference files, vocabulary
    family = "graph"
    kind = "molecules"
    tokenizer = None  # graph generators read no tokens (sample_molecules passes it through)
    train_y = val_y = test_y = None

    @property
    def train_x(self) -> MolGraphs:
        return self.train

    @property
    def val_x(self) -> MolGraphs:
        return self.val

    @property
    def test_x(self) -> MolGraphs:
        return self.val.subset(np.zeros(0, np.int64))

    def max_tokens(self) -> int:
        """The generation budget evaluate passes on; a graph generator is bounded by max_nodes."""
        return self.max_nodes

    def meta(self) -> dict:
        return {"family": "graph", "kind": "molecules", "source": self.source, "max_nodes": self.max_nodes,
                "max_prev": self.max_prev, "molecules": self.molecules,
                "sizes": {"train": len(self.train), "val": len(self.val), "test": 0}}

    def feeder(self, pipeline, batch_size: int, seed: int) -> MoleculeGraphFeeder:
        return MoleculeGraphFeeder(self, batch_size, seed)


class MoleculeGraphFeeder:
    """Batches of whole molecules in seeded epochs: {"atoms", "bonds", "n"} padded to max_nodes."""

    unit, per_example = "molecules", 1

    def __init__(self, data: MoleculeGraphData, batch_size: int, seed: int):
        from genlab.data.datasets import BatchOrder

        self.data = data
        self.order = BatchOrder(len(data.train), batch_size, seed, what="molecules")

    def _batch(self, graphs: MolGraphs, idx, device) -> dict[str, torch.Tensor]:
        atoms, bonds, n = graphs.dense(idx, self.data.max_nodes)
        return {"atoms": atoms.to(device), "bonds": bonds.to(device), "n": n.to(device)}

    def train_batch(self, b: int, shard: int, micro: int, device) -> dict[str, torch.Tensor]:
        idx = self.order.indices(b)[shard * micro:(shard + 1) * micro].numpy()
        return self._batch(self.data.train, idx, device)

    def eval_size(self, split: str) -> int:
        return len(self.data.val) if split == "val" else 0

    def num_eval_batches(self, split: str, batch_size: int) -> int:
        return -(-self.eval_size(split) // batch_size)

    def eval_batch(self, split: str, i: int, batch_size: int, device) -> dict[str, torch.Tensor]:
        n = self.eval_size(split)
        return self._batch(self.data.val, np.arange(i * batch_size, min(n, (i + 1) * batch_size)), device)

    @torch.no_grad()
    def write_samples(self, model, folder: Path, stem: str, seed: int) -> None:
        """16 molecules with a fixed seed, one SMILES a line ("" for a failure), as text runs write them."""
        from genlab.engine.checkpoint import atomic_write_text

        mols = model.sample_smiles(16, tokenizer=None, seed=seed, max_tokens=self.data.max_nodes, batch_size=16,
                                   temperature=1.0, progress=None)
        atomic_write_text(folder / f"{stem}.txt", "\n".join(mols) + "\n")


def convert_molecules(smiles: list[str]) -> tuple[MolGraphs, np.ndarray, list[tuple[int, str, str]], int]:
    """(graphs of the convertible molecules, their positions in `smiles`, (position, SMILES, reason)
    of the others, BFS reach bound), cached by the molecules (the conversion of 1.58M MOSES
    molecules takes minutes; reading the cache, a second)."""
    from genlab.data.datasets import cache_dir

    h = hashlib.sha256(f"molgraph v{GRAPH_FORMAT} {','.join(ATOM_TYPES)}".encode())
    for s in smiles:
        h.update(s.encode() + b"\n")
    path = cache_dir() / "molecules" / f"graphs-{h.hexdigest()[:24]}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                g = MolGraphs(z["atoms"], z["atom_ptr"], z["bonds"], z["bond_ptr"])
                left = [(int(i), smiles[int(i)], str(r)) for i, r in zip(z["left_idx"], z["left_why"])]
                return g, z["keep"], left, int(z["reach"])
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is rebuilt
    t0 = time.perf_counter()
    graphs, keep, left = [], [], []
    for i, s in enumerate(smiles):
        g = smiles_to_graph(s)
        if isinstance(g, str):
            left.append((i, s, g))
            continue
        graphs.append(g)
        keep.append(i)
    out = MolGraphs.from_graphs(graphs)
    reach = bfs_reach_all(out)
    keep = np.array(keep, np.int64)
    log.info("converted %d molecules to graphs in %.1f s", len(smiles), time.perf_counter() - t0)
    if len(smiles) >= 10_000:  # small sets convert faster than the cache reads
        buf = io.BytesIO()
        np.savez(buf, atoms=out.atoms, atom_ptr=out.atom_ptr, bonds=out.bonds, bond_ptr=out.bond_ptr, keep=keep,
                 left_idx=np.array([i for i, _, _ in left], np.int64), left_why=np.array([r for _, _, r in left]),
                 reach=np.array(reach))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"tmp{os.getpid()}-{path.name}")
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, path)
    return out, keep, left, reach


def load_molecule_graphs(cfg, root: Path | None) -> MoleculeGraphData:
    """The molecules `cfg` (a DataConfig with dataset=molecules) names as graphs: read and
    canonicalised by genlab.data.molecules.load_molecules (its cache), split train/val exactly as
    the SMILES runs split them, converted to graphs."""
    from genlab.data.molecules import MAX_INVALID_SHARE, SUBSET_SEED, load_molecules, molecule_path, moses_references

    if cfg.tokenizer != "char":
        raise ConfigError(f"data.tokenizer={cfg.tokenizer} is for text runs; data.dataset=molecules reads graphs "
                          "(drop data.tokenizer, or use data.dataset=smiles with a text model)")
    path = molecule_path(cfg, root)
    mols = load_molecules(path, cfg.column, max_molecules=cfg.max_molecules)
    graphs, keep, left, reach = convert_molecules(mols.smiles)
    n = len(mols.smiles)
    if left:
        _, s, why = left[0]
        if len(left) > MAX_INVALID_SHARE * n:
            raise DataError(f"{path}: {len(left)} of {n} molecules have no graph in the atom alphabet, first {s!r} "
                            f"({why}); the graph generator takes {', '.join(ATOM_TYPES)}, single fragments")
        log.warning("%s: %d of %d molecules are left out of the graphs (first %r: %s)", path, len(left), n, s, why)
    smiles = [mols.smiles[i] for i in keep]
    g = len(smiles)
    n_val = round(cfg.val_size * g) if cfg.val_size < 1 else int(cfg.val_size)
    if not 0 < n_val < g:
        raise ConfigError(f"data.val_size={cfg.val_size} leaves no train or no val molecules of {g}; "
                          "use a fraction below 1 or fewer molecules")
    is_val = np.zeros(g, dtype=bool)
    is_val[np.random.default_rng(SUBSET_SEED).permutation(g)[:n_val]] = True  # as load_molecule_data splits
    tr, va = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    train, val = graphs.subset(tr), graphs.subset(va)
    counts = np.bincount(train.atoms, minlength=len(ATOM_TYPES))
    refs = moses_references(path)
    info = {**mols.summary(), "column": cfg.column, "max_molecules": cfg.max_molecules,
            "train": len(tr), "val": len(va), "left_out": len(left),
            "left_out_examples": [{"smiles": s, "why": w} for _, s, w in left[:SHOWN_LEFT_OUT]],
            "atom_types": {t: int(c) for t, c in zip(ATOM_TYPES, counts) if c},
            "reference": {k: str(v) for k, v in refs.items()} if refs else "val"}
    return MoleculeGraphData(train, val, [smiles[i] for i in tr], [smiles[i] for i in va],
                             f"molecule graphs ({path})", max_nodes=int(graphs.sizes.max()), max_prev=reach,
                             molecules=info)
