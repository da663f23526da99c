"""Graph data: one big graph split into links (Planetoid citation graphs, a user's edge-list
CSV) for graph autoencoders, and sets of small graphs (synthetic families made from a seed)
for graph generators.

- Planetoid (`data.dataset=cora|citeseer`): the `ind.<name>.*` files of `ROOT/Planetoid/<Name>/raw/`
  (PyG's layout). A data root is user input and the files are pickles, so each file must match the
  official file's sha256 before any is parsed, and the parse allows only the few classes they hold;
  the result equals PyG's `Planetoid` x and edge_index. Nothing is written or cached.
- Edge list (`data.dataset=edgelist`, `data.path=FILE.csv`): two integer columns (source,
  target; a non-numeric first line is a header). Without a node-feature CSV, node ids are labels
  (any ids >= 0, renumbered 0..N-1 in increasing order) and nodes get one-hot features; with one
  (`data.features`, one row of numbers per node), id i is row i, so ids must be 0..rows-1.
- Link splits: PyG's `RandomLinkSplit` (undirected; `data.val_size`/`data.test_size` of the edges,
  fractions or counts; one negative pair per held-out edge), seeded by `train.seed`. Message
  passing uses the training edges only, for training and for scoring val/test pairs, and
  `check_link_split` verifies that no val/test edge leaks into it.
- Molecules (`data.dataset=molecules`, the SMILES files and settings of the text runs: data.path,
  data.column, data.max_molecules, data.val_size): kekulised heavy-atom graphs with atom types and
  bond orders, for molgraphrnn (genlab.data.molecule_graphs).
- Small-graph families (`data.dataset=community|grid|ego`, `data.num_graphs`), generated from a
  fixed seed as in GraphRNN's benchmarks: two-community graphs (two G(n, 0.7) of 6-10 nodes joined
  by sparse inter-community edges), 2-D grids (3-6 x 3-6 nodes), and radius-1 ego graphs (4-18 nodes)
  of a seeded power-law cluster graph. Splits: seeded, `data.test_size` (default 20%) and
  `data.val_size` of the graphs.
"""

from __future__ import annotations

import collections
import hashlib
import io
import logging
import math
import os
import pickle
import random
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genlab.errors import ConfigError, DataError

log = logging.getLogger("genlab")

PLANETOID = {"cora": "Cora", "citeseer": "CiteSeer"}
FAMILIES = ("community", "grid", "ego")
LINK_DATASETS = (*PLANETOID, "edgelist")
MOLECULE_DATASET = "molecules"  # molecules as atom/bond graphs (genlab.data.molecule_graphs)
GRAPH_DATASETS = (*LINK_DATASETS, *FAMILIES, MOLECULE_DATASET)
_PLANETOID_FILES = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")


# --------------------------------------------------------------------------- readers


# sha256 of the official Planetoid files: GitHub kimiyoung/planetoid at commit af6abf46 (data/ind.*),
# the files PyG's Planetoid downloads. Computed from the copies in ../shared/data/Planetoid (see its
# README), whose git blob SHA-1s equal that commit's blobs.
_PLANETOID_SHA256 = {
    "ind.cora.x": "23cfa55d91c6f624233f5eb7b6e3f141f1bd2b2ae39608a63cf5d084bb27baab",
    "ind.cora.tx": "b9afbaa4a400df991f6f02ef677e1e44da55ffc04801fd02f9e673987829226a",
    "ind.cora.allx": "9419ba2f26f5c35243db64aba110e0f35a04851609e0dc5433450676ca6b8543",
    "ind.cora.y": "94465c14eb53e04ca262198dcbb2521ee8af60fb3f3d546cd6ca24a511b0e7d1",
    "ind.cora.ty": "41f5ac76596a1699cc33f53084a2419e92961c42bb75f36fc38e616d348532ad",
    "ind.cora.ally": "2b998f5cc7fedc86e7f97ca2498f47a1ffc1462c29e2d578b23bf3f62b6e7d71",
    "ind.cora.graph": "58f13302f39dde8852dad6fe6d15b89b077b6d7f837626bce671ef80344b383d",
    "ind.cora.test.index": "297ce89af2b51a6a194181c7dbe1796c6a1cf9cd9349a88383b1b1e227867875",
    "ind.citeseer.x": "d20de19150741e555de0ed037195630fc194114ebc7fd72ced62810148aa22f6",
    "ind.citeseer.tx": "539a8906a2da97628d212f2fdd668c109a8b3f0d36574b59e5d3fd5b5303da21",
    "ind.citeseer.allx": "2ac30345d95c9ec933a817ee0bdd6a5f077f8c184a20e696910192d534414668",
    "ind.citeseer.y": "8ba87e515d8e3ee3cf52f6d2c5b86aa73f11ecad825a808455209ec26cd54924",
    "ind.citeseer.ty": "55e5bd1ba1e733a04598753ad1a8d57957f4b8f89e74519f41f4f4938767e4ce",
    "ind.citeseer.ally": "f704b2d986dde6c2669934de1f3ae5696a6cf9455c0f6b2646a2d135ea0a1c95",
    "ind.citeseer.graph": "d79a4ef9d3e7169aee8946145f6b7306e35bc79bffad26346cfb94e10e9912a7",
    "ind.citeseer.test.index": "2af990671580b6b2df5d158d1038f8292e30c9cd821b5453f399659b25b723d4",
}
_PLANETOID_MAX_BYTES = 1 << 20  # the largest official file is 595,021 bytes; read no more than this + 1


def _read_verified(path: Path) -> bytes:
    """The bytes of an official Planetoid file, or DataError. The bytes that are hashed are the
    bytes that get parsed, so the file cannot change between the check and the read."""
    with open(path, "rb") as f:
        data = f.read(_PLANETOID_MAX_BYTES + 1)  # a longer file fails the hash without filling memory
    if hashlib.sha256(data).hexdigest() != _PLANETOID_SHA256[path.name]:
        raise DataError(f"{path} is not the official Planetoid file (sha256 mismatch); restore it from "
                        f"github.com/kimiyoung/planetoid (data/{path.name}), the file PyG's Planetoid downloads")
    return data


class _PlanetoidUnpickler(pickle.Unpickler):
    """Unpickles only what the Planetoid files hold (numpy arrays, scipy CSR matrices, the graph's
    defaultdict of lists): a pickle naming any other global (os.system, eval, ...) is refused
    before it runs. Defence in depth behind the checksums."""

    def find_class(self, module: str, name: str):
        from genlab.extras import require

        require("scipy.sparse", "graph", "Planetoid datasets")
        import scipy.sparse

        allowed = {("numpy.core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.empty(0))[0],
                   ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                   ("scipy.sparse.csr", "csr_matrix"): scipy.sparse.csr_matrix,
                   ("collections", "defaultdict"): collections.defaultdict, ("__builtin__", "list"): list}
        if (module, name) not in allowed:
            raise DataError(f"Planetoid file refers to {module}.{name}, which a Planetoid file never holds; "
                            "restore the official files from github.com/kimiyoung/planetoid")
        return allowed[(module, name)]


def _unpickle(data: bytes):
    return _PlanetoidUnpickler(io.BytesIO(data), encoding="latin1").load()  # Python-2 pickles


def load_planetoid(root: Path | None, name: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(features (N, F) float32, edge_index (2, E) both directions, source) of Cora/CiteSeer, read
    as PyG's `read_planetoid_data` reads them (same x, same coalesced edge_index) but from files
    checked against the official checksums, without general unpickling and without a cache (the
    parse takes well under a second, so nothing stale can ever be reused)."""
    folder = PLANETOID[name]
    raw = root / "Planetoid" / folder / "raw" if root is not None else None
    files = [f"ind.{name}.{s}" for s in _PLANETOID_FILES]
    if raw is None or not all((raw / f).is_file() for f in files):
        where = raw or "the data root (none found)"
        raise DataError(f"Planetoid {folder} not found in {where} (needs {', '.join(files[:2])}, ...); "
                        "pass --data-root with Planetoid/<Name>/raw/ in PyG's layout")
    blobs = {s: _read_verified(raw / f) for s, f in zip(_PLANETOID_FILES, files)}  # all, before parsing any
    allx, tx, graph = (_unpickle(blobs[s]) for s in ("allx", "tx", "graph"))
    test_index = np.array([int(t) for t in blobs["test.index"].split()], dtype=np.int64)  # one id a line
    sorted_test = np.sort(test_index)
    tx = tx.toarray()
    if name == "citeseer":  # isolated test nodes have no row in tx: zero rows fill the gaps (as PyG does)
        lo = sorted_test[0]
        full = np.zeros((sorted_test[-1] - lo + 1, tx.shape[1]), tx.dtype)
        full[sorted_test - lo] = tx
        tx = full
    x = np.concatenate([allx.toarray(), tx])
    x[test_index] = x[sorted_test]  # the test rows are stored in sorted order
    n = len(x)
    src = np.array([k for k, v in graph.items() for _ in v], dtype=np.int64)
    dst = np.array([j for v in graph.values() for j in v], dtype=np.int64)
    keep = src != dst  # the files hold a few self-loops and duplicates: drop them, sort by target as PyG does
    ids = np.unique(dst[keep] * n + src[keep])
    ei = torch.from_numpy(np.stack([ids % n, ids // n]))
    return torch.from_numpy(x).float(), ei, f"Planetoid {folder} ({raw})"


def _numbers(line: str) -> list[str]:
    return [t.strip() for t in line.replace("\t", ",").replace(";", ",").split(",")] if "," in line or "\t" in line \
        or ";" in line else line.split()


def _csv_rows(path: Path):
    """(line number, values, raw line) of each non-blank, non-comment line of a CSV/TSV/space file."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:  # -sig: a byte-order mark is not data
        for no, line in enumerate(f, 1):
            line = line.strip()
            if line and not line.startswith("#"):
                yield no, _numbers(line), line


_INT = re.compile(r"-?[0-9]+")  # ASCII digits only: int() also takes '٣' and raises on '²'
_INT64_MAX = 2**63 - 1
_ONE_HOT_MAX_BYTES = 1 << 30  # one-hot features larger than this must come from data.features


def read_edge_list(path: Path) -> torch.Tensor:
    """Edges (2, E) int64 of a CSV of `source,target` lines (commas, tabs or spaces; an optional
    header line; blank lines and `#` comments skipped). Node ids are integers 0..2^63-1."""
    if not path.is_file():
        raise DataError(f"edge list {path} not found; set data.path to a CSV of source,target node ids")
    edges = []
    for k, (no, parts, line) in enumerate(_csv_rows(path)):
        if len(parts) != 2 or not all(_INT.fullmatch(p) for p in parts):
            if k == 0 and not any(_INT.fullmatch(p) for p in parts):
                continue  # header (a first line without numbers)
            raise DataError(f"{path}, line {no}: expected two integer node ids (source,target), got {line[:60]!r}; "
                            "fix or remove that line")
        if any(p.startswith("-") for p in parts):
            raise DataError(f"{path}, line {no}: node ids must be >= 0, got {line[:60]!r}; renumber the nodes")
        digits = [p.lstrip("0") or "0" for p in parts]
        if any(len(d) > 19 or int(d) > _INT64_MAX for d in digits):  # length first: int() of 5000 digits raises
            raise DataError(f"{path}, line {no}: node id over 2^63-1 in {line[:60]!r}; renumber the nodes")
        edges.append((int(digits[0]), int(digits[1])))
    if not edges:
        raise DataError(f"edge list {path} holds no edges; it needs lines of source,target node ids")
    return torch.tensor(edges, dtype=torch.int64).t().contiguous()


def read_node_features(path: Path) -> torch.Tensor:
    """(N, F) float32 of a CSV with one row of finite numbers per node (an optional header line)."""
    if not path.is_file():
        raise DataError(f"node-feature file {path} not found; set data.features to a CSV with one row per node")
    rows = []
    for k, (no, parts, line) in enumerate(_csv_rows(path)):
        try:
            row = [float(p) for p in parts]
        except ValueError:
            if k == 0:
                continue  # header
            raise DataError(f"{path}, line {no}: expected numbers, got {line[:60]!r}; "
                            "fix or remove that line") from None
        if not all(math.isfinite(v) for v in row):
            raise DataError(f"{path}, line {no}: features must be finite numbers, got {line[:60]!r}")
        if rows and len(row) != len(rows[0]):
            raise DataError(f"{path}, line {no}: {len(row)} values where the first row has {len(rows[0])}; "
                            "give every node the same number of features")
        rows.append(row)
    if not rows:
        raise DataError(f"node-feature file {path} holds no rows; it needs one row of numbers per node")
    return torch.tensor(rows, dtype=torch.float32)


def load_edge_list_graph(path: Path, features: Path | None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(features (N, F), edge_index (2, E), source) of a user's graph. With a feature file, node id
    i is row i of it (ids must be 0..rows-1; rows without edges are isolated nodes). Without one,
    ids are labels: the distinct ids, in increasing order, become nodes 0..N-1 with one-hot
    features, so ids need not be contiguous (0,5000000000 is a graph of two nodes)."""
    ei = read_edge_list(path)
    if bool((ei[0] == ei[1]).all()):
        raise DataError(f"{path}: every edge is a self-loop (i,i); link prediction needs edges between "
                        "distinct nodes")
    if features is not None:
        x = read_node_features(features)
        n = len(x)
        if int(ei.max()) >= n:
            raise DataError(f"{path}: node id {int(ei.max())} is out of range for {n} nodes (the {n} rows of "
                            f"{features}, row i is node i); ids must be 0..{n - 1}, or give one row per node")
    else:
        ids, ei = torch.unique(ei, return_inverse=True)  # (2, E) now indexes the sorted distinct ids
        n = len(ids)
        if 4 * n * n > _ONE_HOT_MAX_BYTES:
            raise DataError(f"{path}: {n} nodes would need a {n} x {n} one-hot feature matrix "
                            f"({4 * n * n / 2**30:.1f} GiB); give data.features, a CSV with one row per node")
        x = torch.eye(n)
    return x, ei, f"edge list ({path}{', features ' + str(features) if features else ''})"


# --------------------------------------------------------------------------- link splits


@dataclass
class LinkData:
    """One graph for link prediction. Edges are (2, E) int64 with one column per undirected
    edge (`*_pos`) or per sampled non-edge (`*_neg`); `mp_edge_index` holds the training edges
    in both directions, the only edges message passing sees. `train_x`/`val_x`/`test_x` are the
    positive edges as (E, 2) so that sizes read like the other data kinds'."""

    x: torch.Tensor  # (N, F) node features
    mp_edge_index: torch.Tensor  # (2, 2 E_train)
    train_pos: torch.Tensor
    val_pos: torch.Tensor
    val_neg: torch.Tensor
    test_pos: torch.Tensor
    test_neg: torch.Tensor
    source: str
    family = "graph"
    kind = "link"
    train_y = val_y = test_y = None

    @property
    def num_nodes(self) -> int:
        return self.x.shape[0]

    @property
    def num_features(self) -> int:
        return self.x.shape[1]

    @property
    def train_x(self) -> torch.Tensor:
        return self.train_pos.t()

    @property
    def val_x(self) -> torch.Tensor:
        return self.val_pos.t()

    @property
    def test_x(self) -> torch.Tensor:
        return self.test_pos.t()

    def pairs(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(positive (2, P), negative (2, Q)) pairs of a held-out split."""
        return getattr(self, f"{split}_pos"), getattr(self, f"{split}_neg")

    def meta(self) -> dict:
        return {"family": "graph", "kind": "link", "source": self.source, "num_nodes": self.num_nodes,
                "num_features": self.num_features,
                "sizes": {"train": self.train_pos.shape[1], "val": self.val_pos.shape[1],
                          "test": self.test_pos.shape[1]}}

    def feeder(self, pipeline, batch_size: int, seed: int) -> "LinkFeeder":
        return LinkFeeder(self)


def _edge_ids(ei: torch.Tensor, n: int) -> torch.Tensor:
    """Undirected edge ids min * n + max."""
    a, b = torch.minimum(ei[0], ei[1]), torch.maximum(ei[0], ei[1])
    return a * n + b


def check_link_split(d: LinkData) -> None:
    """Raise DataError if positive edge sets overlap, a negative pair is an edge, or a val/test
    edge is in the message-passing graph."""
    n = d.num_nodes
    ids = {k: set(_edge_ids(getattr(d, k), n).tolist()) for k in
           ("train_pos", "val_pos", "val_neg", "test_pos", "test_neg")}
    mp = set(_edge_ids(d.mp_edge_index, n).tolist())
    for a, b in (("train_pos", "val_pos"), ("train_pos", "test_pos"), ("val_pos", "test_pos")):
        if ids[a] & ids[b]:
            raise DataError(f"link split: {len(ids[a] & ids[b])} edge(s) in both {a} and {b}")
    for k in ("val_pos", "test_pos"):
        if ids[k] & mp:
            raise DataError(f"link split: {len(ids[k] & mp)} {k.split('_')[0]} edge(s) in the message-passing graph")
    if mp != ids["train_pos"]:
        raise DataError("link split: the message-passing graph is not the training edges")
    every = ids["train_pos"] | ids["val_pos"] | ids["test_pos"]
    for k in ("val_neg", "test_neg"):
        if ids[k] & every:
            raise DataError(f"link split: {len(ids[k] & every)} {k} pair(s) are edges")


def _count(total: int, size: float) -> int:
    return int(round(size * total)) if size < 1 else int(size)


def link_split(x: torch.Tensor, edge_index: torch.Tensor, val_size: float, test_size: float, seed: int,
               source: str) -> LinkData:
    """Split an undirected graph's edges with RandomLinkSplit, seeded by `seed`, and check it."""
    from genlab.extras import require

    require("torch_geometric", "graph", "link prediction")
    from torch_geometric.data import Data
    from torch_geometric.transforms import RandomLinkSplit
    from torch_geometric.utils import coalesce, remove_self_loops, to_undirected

    n = x.shape[0]
    ei = coalesce(to_undirected(remove_self_loops(edge_index)[0], num_nodes=n), num_nodes=n)
    e = ei.shape[1] // 2
    n_val, n_test = _count(e, val_size), _count(e, test_size)
    if n_val < 1 or n_test < 1 or n_val + n_test >= e:
        raise ConfigError(f"data.val_size={val_size} and data.test_size={test_size} of {e} edges leave "
                          f"{n_val} val / {n_test} test / {e - n_val - n_test} train edges; each needs at least one")
    split = RandomLinkSplit(num_val=n_val, num_test=n_test, is_undirected=True, add_negative_train_samples=False,
                            split_labels=True)
    py_state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)  # PyG's negative sampling draws from Python's `random`
        tr, va, te = split(Data(x=x, edge_index=ei, num_nodes=n))
    random.setstate(py_state)
    d = LinkData(x=x, mp_edge_index=tr.edge_index, train_pos=tr.pos_edge_label_index,
                 val_pos=va.pos_edge_label_index, val_neg=va.neg_edge_label_index,
                 test_pos=te.pos_edge_label_index, test_neg=te.neg_edge_label_index, source=source)
    check_link_split(d)
    return d


def sample_negatives(n: int, num: int, forbidden: torch.Tensor, *, generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """`num` random node pairs (2, num), i != j, none of them in `forbidden` (sorted undirected
    edge ids), drawn from `generator` (torch's global one when None)."""
    out, have = [], 0
    while have < num:
        k = int((num - have) * 1.2) + 16
        ij = torch.randint(0, n, (2, k), generator=generator)
        ok = (ij[0] != ij[1]) & ~torch.isin(_edge_ids(ij, n), forbidden)
        out.append(ij[:, ok])
        have += int(ok.sum())
    return torch.cat(out, 1)[:, :num].to(device)


class LinkFeeder:
    """Full-graph batches: every micro-batch is the whole training graph with fresh negative
    pairs (one per training edge) from the seeded global generator."""

    unit = "edges"

    def __init__(self, data: LinkData):
        self.data = data
        self.per_example = data.train_pos.shape[1]
        self.forbidden = torch.unique(_edge_ids(data.train_pos, data.num_nodes))

    def train_batch(self, b: int, shard: int, micro: int, device) -> dict[str, torch.Tensor]:
        d = self.data
        neg = sample_negatives(d.num_nodes, d.train_pos.shape[1], self.forbidden, device=device)
        return {"x": d.x.to(device), "edge_index": d.mp_edge_index.to(device), "pos": d.train_pos.to(device),
                "neg": neg}

    def eval_size(self, split: str) -> int:
        return getattr(self.data, f"{split}_pos").shape[1]

    def num_eval_batches(self, split: str, batch_size: int) -> int:
        return 1

    def eval_batch(self, split: str, i: int, batch_size: int, device) -> dict[str, torch.Tensor]:
        d = self.data
        pos, neg = d.pairs(split)
        return {"x": d.x.to(device), "edge_index": d.mp_edge_index.to(device), "pos": pos.to(device),
                "neg": neg.to(device), "held_out": torch.ones((), dtype=torch.bool)}

    def write_samples(self, model, folder: Path, stem: str, seed: int) -> None:
        """Link predictors draw no samples."""


# --------------------------------------------------------------------------- small graphs


def _gnp(n: int, p: float, rng: np.random.Generator) -> np.ndarray:
    a = np.triu(rng.random((n, n)) < p, 1)
    return (a | a.T).astype(np.uint8)


def is_connected(adj: np.ndarray) -> bool:
    n = len(adj)
    if n == 0:
        return False
    seen, todo = {0}, deque([0])
    while todo:
        for j in np.flatnonzero(adj[todo.popleft()]):
            if j not in seen:
                seen.add(int(j))
                todo.append(int(j))
    return len(seen) == n


def two_community_graph(rng: np.random.Generator, sizes=(6, 10), p_in: float = 0.7, p_out: float = 0.05) -> np.ndarray:
    """Two G(n_i, p_in) communities (n_i uniform in `sizes`), each connected, joined by inter-
    community edges of probability p_out (at least one)."""
    while True:
        n1, n2 = rng.integers(sizes[0], sizes[1] + 1, size=2)
        c1, c2 = _gnp(n1, p_in, rng), _gnp(n2, p_in, rng)
        if is_connected(c1) and is_connected(c2):
            break
    n = n1 + n2
    a = np.zeros((n, n), np.uint8)
    a[:n1, :n1], a[n1:, n1:] = c1, c2
    cross = rng.random((n1, n2)) < p_out
    if not cross.any():
        cross[rng.integers(n1), rng.integers(n2)] = True
    a[:n1, n1:], a[n1:, :n1] = cross, cross.T
    return a


def grid_graph(rows: int, cols: int) -> np.ndarray:
    n = rows * cols
    a = np.zeros((n, n), np.uint8)
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            if c + 1 < cols:
                a[i, i + 1] = a[i + 1, i] = 1
            if r + 1 < rows:
                a[i, i + cols] = a[i + cols, i] = 1
    return a


def ego_graphs(rng: np.random.Generator, count: int, sizes=(4, 18)) -> list[np.ndarray]:
    """Radius-1 ego graphs with 4-18 nodes of seeded power-law cluster graphs (Holme-Kim, m=2, p=0.3)."""
    import networkx as nx  # a dependency of torch itself, so in every install

    out = []
    while len(out) < count:
        g = nx.powerlaw_cluster_graph(400, 2, 0.3, seed=int(rng.integers(2**31)))
        for c in rng.permutation(g.number_of_nodes()):
            e = nx.ego_graph(g, int(c), radius=1)
            if sizes[0] <= e.number_of_nodes() <= sizes[1]:
                out.append(nx.to_numpy_array(e, dtype=np.uint8))
                if len(out) == count or len(out) % 20 == 0:
                    break  # take a few centres per big graph, not all of one graph's
    return out


def synthetic_graphs(family: str, count: int, seed: int = 0) -> list[np.ndarray]:
    """`count` adjacency matrices (uint8, symmetric, zero diagonal) of a family, fixed by `seed`."""
    if count < 1:
        raise ConfigError(f"data.num_graphs must be >= 1, got {count}")
    rng = np.random.default_rng(seed)
    if family == "community":
        return [two_community_graph(rng) for _ in range(count)]
    if family == "grid":
        return [grid_graph(int(rng.integers(3, 7)), int(rng.integers(3, 7))) for _ in range(count)]
    if family == "ego":
        return ego_graphs(rng, count)
    raise ConfigError(f"unknown graph family {family!r}; choose from {', '.join(FAMILIES)}")


def bfs_bandwidth_bound(adj: np.ndarray) -> int:
    """An upper bound, over every start node and neighbour order, of how far back (in BFS order)
    a node's earliest neighbour can be: two neighbours sit in the same or adjacent BFS levels,
    so they are at most |L_k| + |L_k+1| - 1 apart."""
    n, best = len(adj), 1
    for s in range(n):
        level = np.full(n, -1)
        level[s] = 0
        todo = deque([s])
        while todo:
            i = todo.popleft()
            for j in np.flatnonzero(adj[i]):
                if level[j] < 0:
                    level[j] = level[i] + 1
                    todo.append(j)
        widths = np.bincount(level[level >= 0])
        if len(widths) > 1:
            best = max(best, int((widths[:-1] + widths[1:]).max()) - 1)
    return best


@dataclass
class GraphSetData:
    """Small graphs as zero-padded adjacency matrices: `*_x` (G, Nmax, Nmax) uint8 and `*_n`
    (G,) int64 node counts, per split."""

    train_x: torch.Tensor
    train_n: torch.Tensor
    val_x: torch.Tensor
    val_n: torch.Tensor
    test_x: torch.Tensor
    test_n: torch.Tensor
    source: str
    max_prev: int  # BFS bandwidth bound over all graphs: how many earlier nodes a node can link to
    family = "graph"
    kind = "set"
    train_y = val_y = test_y = None

    @property
    def max_nodes(self) -> int:
        return self.train_x.shape[-1]

    def graphs(self, split: str) -> list[np.ndarray]:
        """The split's graphs as unpadded numpy adjacency matrices."""
        x, n = getattr(self, f"{split}_x"), getattr(self, f"{split}_n")
        return [x[i, :k, :k].numpy() for i, k in enumerate(n.tolist())]

    def meta(self) -> dict:
        return {"family": "graph", "kind": "set", "source": self.source, "max_nodes": self.max_nodes,
                "max_prev": self.max_prev,
                "sizes": {"train": len(self.train_x), "val": len(self.val_x), "test": len(self.test_x)}}

    def feeder(self, pipeline, batch_size: int, seed: int) -> "GraphSetFeeder":
        return GraphSetFeeder(self, batch_size, seed)


def pad_graphs(graphs: list[np.ndarray], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    out = np.zeros((len(graphs), size, size), np.uint8)
    for i, a in enumerate(graphs):
        out[i, :len(a), :len(a)] = a
    return torch.from_numpy(out), torch.tensor([len(a) for a in graphs], dtype=torch.int64)


class GraphSetFeeder:
    """Batches of whole graphs in seeded epochs, like images."""

    unit, per_example = "graphs", 1

    def __init__(self, data: GraphSetData, batch_size: int, seed: int):
        from genlab.data.datasets import BatchOrder

        self.data = data
        self.order = BatchOrder(len(data.train_x), batch_size, seed, what="graphs")

    def train_batch(self, b: int, shard: int, micro: int, device) -> dict[str, torch.Tensor]:
        idx = self.order.indices(b)[shard * micro:(shard + 1) * micro]
        return {"adj": self.data.train_x[idx].to(device).float(), "n": self.data.train_n[idx].to(device)}

    def eval_size(self, split: str) -> int:
        return len(getattr(self.data, f"{split}_x"))

    def num_eval_batches(self, split: str, batch_size: int) -> int:
        return -(-self.eval_size(split) // batch_size)

    def eval_batch(self, split: str, i: int, batch_size: int, device) -> dict[str, torch.Tensor]:
        sl = slice(i * batch_size, (i + 1) * batch_size)
        return {"adj": getattr(self.data, f"{split}_x")[sl].to(device).float(),
                "n": getattr(self.data, f"{split}_n")[sl].to(device)}

    @torch.no_grad()
    def write_samples(self, model, folder: Path, stem: str, seed: int) -> None:
        from genlab.seed import make_generator

        graphs = model.sample_graphs(16, generator=make_generator(seed))
        draw_graphs(graphs, folder / f"{stem}.png")


# --------------------------------------------------------------------------- loading


def _check_graph_options(cfg) -> None:
    image = {"image_size": None, "channels": None, "binarize": False, "hflip": False, "crop_padding": 0}
    bad = [k for k, v in image.items() if getattr(cfg, k) != v]
    if bad:
        raise ConfigError(f"data.{bad[0]} is an image option; graph data (data.dataset={cfg.dataset}) takes "
                          "data.path, data.features, data.num_graphs, data.val_size, data.test_size")


def load_graph_data(cfg, root: str | os.PathLike | None, seed: int) -> LinkData | GraphSetData:
    """The graph dataset `cfg` (a DataConfig) names. Link splits are seeded by `seed` (the run's
    train.seed); synthetic families are fixed (seed 0) so every run sees the same test graphs."""
    from genlab.data.datasets import resolve_data_root
    _check_graph_options(cfg)
    root_path = resolve_data_root(root)
    if cfg.dataset == MOLECULE_DATASET:
        from genlab.data.molecule_graphs import load_molecule_graphs

        return load_molecule_graphs(cfg, root_path)
    if cfg.dataset in LINK_DATASETS:
        if cfg.dataset in PLANETOID:
            x, ei, source = load_planetoid(root_path, cfg.dataset)
        else:
            if not cfg.path:
                raise ConfigError("data.dataset=edgelist needs data.path (a CSV of source,target node ids)")

            def find(p: str) -> Path:
                q = Path(p)
                return root_path / q if not q.is_absolute() and root_path is not None and (root_path / q).exists() else q

            x, ei, source = load_edge_list_graph(find(cfg.path), find(cfg.features) if cfg.features else None)
        return link_split(x, ei, cfg.val_size, cfg.test_size, seed, source)
    if cfg.features:
        raise ConfigError(f"data.features is for edge lists; data.dataset={cfg.dataset} has no node features")
    graphs = synthetic_graphs(cfg.dataset, cfg.num_graphs, seed=0)
    g = len(graphs)
    n_test = _count(g, cfg.test_size)
    n_val = _count(g, cfg.val_size) if cfg.val_size < 1 else min(int(cfg.val_size), max(1, g // 10))
    if n_test < 1 or n_val + n_test >= g:
        raise ConfigError(f"data.num_graphs={g} with data.val_size={cfg.val_size}, data.test_size={cfg.test_size} "
                          "leaves no training or no test graphs")
    perm = np.random.default_rng(1).permutation(g)
    te, va, tr = perm[:n_test], perm[n_test:n_test + n_val], perm[n_test + n_val:]
    size = max(len(a) for a in graphs)
    parts = [pad_graphs([graphs[i] for i in sorted(ix)], size) for ix in (tr, va, te)]
    bound = max(bfs_bandwidth_bound(a) for a in graphs)
    return GraphSetData(*parts[0], *parts[1], *parts[2],
                        source=f"synthetic {cfg.dataset} graphs ({g}, seed 0)", max_prev=bound)


# --------------------------------------------------------------------------- output


def adjacency_to_edges(adj: np.ndarray) -> np.ndarray:
    """(E, 2) int64 undirected edges i < j of an adjacency matrix."""
    i, j = np.nonzero(np.triu(adj, 1))
    return np.stack([i, j], 1).astype(np.int64)


def write_graphs(path: str | os.PathLike, graphs: list[np.ndarray]) -> Path:
    """`FILE.npz`: `adjacency` uint8 (G, Nmax, Nmax) zero-padded and `num_nodes` int64 (G,);
    `DIR/`: one `graph-XXXX.csv` edge list (source,target) per graph. Returns the path."""
    from genlab.engine.checkpoint import atomic_write_bytes, atomic_write_text

    p = Path(path)
    if str(path).endswith(("/", os.sep)) or p.is_dir() or not p.suffix:
        p.mkdir(parents=True, exist_ok=True)
        for k, a in enumerate(graphs):
            rows = "\n".join(f"{i},{j}" for i, j in adjacency_to_edges(a))
            atomic_write_text(p / f"graph-{k:04d}.csv", f"# nodes: {len(a)}\nsource,target\n{rows}\n")
        return p
    if p.suffix != ".npz":
        raise ConfigError(f"graphs are written as FILE.npz or DIR/ of edge lists, got {p}")
    import io

    adj, n = pad_graphs(graphs, max((len(a) for a in graphs), default=0))
    buf = io.BytesIO()
    np.savez_compressed(buf, adjacency=adj.numpy(), num_nodes=n.numpy())
    atomic_write_bytes(p, buf.getvalue())
    return p


def draw_graphs(graphs: list[np.ndarray], path: str | os.PathLike, ncol: int = 4) -> Path:
    """A PNG drawing of the graphs (spring layout, fixed seed), `ncol` per row."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from genlab.engine.checkpoint import atomic_write_bytes
    import networkx as nx

    k = max(1, len(graphs))
    rows = -(-k // ncol)
    fig, axes = plt.subplots(rows, min(ncol, k), figsize=(2.2 * min(ncol, k), 2.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, a in zip(axes.flat, graphs):
        g = nx.from_numpy_array(a)
        nx.draw_networkx(g, pos=nx.spring_layout(g, seed=0), ax=ax, node_size=18, with_labels=False,
                         width=0.6, node_color="#3b6ea5")
        ax.set_title(f"{g.number_of_nodes()} nodes, {g.number_of_edges()} edges", fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    p = Path(path)
    atomic_write_bytes(p, buf.getvalue())
    return p
