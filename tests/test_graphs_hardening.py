"""Graph input hardening: Planetoid files are checked against the official checksums before
anything parses them, parsed without general unpickling and never served from a stale cache;
edge lists treat node ids as labels and turn bad input into one-line DataErrors."""

import pickle
import shutil

import pytest
import torch

from genlab.config import DataConfig
from genlab.data.graphs import _unpickle, load_edge_list_graph, load_graph_data, load_planetoid
from genlab.errors import DataError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def cora_root(data_root, tmp_path):
    """A writable copy of the official Cora raw files, as a data root."""
    src = data_root / "Planetoid" / "Cora" / "raw"
    if not src.is_dir():
        pytest.fail(f"{src} is required (the official Planetoid files)")
    shutil.copytree(src, tmp_path / "root" / "Planetoid" / "Cora" / "raw")
    return tmp_path / "root"


class _Marker:
    """Unpickling this creates a file: what a malicious pickle could do instead."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def _one_line(e: pytest.ExceptionInfo, *parts: str) -> None:
    msg = str(e.value)
    assert "\n" not in msg and all(p in msg for p in parts), msg


# --------------------------------------------------------------------------- Planetoid


@pytest.mark.parametrize("name, folder", [("cora", "Cora"), ("citeseer", "CiteSeer")])
def test_planetoid_reader_equals_pygs_planetoid(data_root, tmp_path, name, folder):
    from torch_geometric.datasets import Planetoid

    x, ei, _ = load_planetoid(data_root, name)  # straight from the read-only root: nothing is written
    shutil.copytree(data_root / "Planetoid" / folder, tmp_path / folder)
    ref = Planetoid(str(tmp_path), folder)[0]
    assert torch.equal(x, ref.x) and torch.equal(ei, ref.edge_index)


@pytest.mark.parametrize("victim", ["ind.cora.allx", "ind.cora.graph"])
def test_malicious_planetoid_pickle_is_refused_and_never_unpickled(cora_root, tmp_path, victim):
    marker = tmp_path / "pwned"
    (cora_root / "Planetoid" / "Cora" / "raw" / victim).write_bytes(pickle.dumps(_Marker(marker), protocol=2))
    with pytest.raises(DataError, match="is not the official Planetoid file") as e:
        load_planetoid(cora_root, "cora")
    _one_line(e, victim, "restore it from github.com/kimiyoung/planetoid")
    assert not marker.exists()


def test_one_changed_byte_of_a_planetoid_file_is_refused(cora_root):
    f = cora_root / "Planetoid" / "Cora" / "raw" / "ind.cora.test.index"  # read last: all are checked first
    b = bytearray(f.read_bytes())
    b[0] = ord("9") if b[0] != ord("9") else ord("8")
    f.write_bytes(bytes(b))
    with pytest.raises(DataError, match="ind.cora.test.index is not the official Planetoid file") as e:
        load_planetoid(cora_root, "cora")
    _one_line(e, str(f))


def test_restricted_unpickler_refuses_any_other_global(tmp_path):
    """Defence in depth: even past the checksums, only the classes the files hold can load."""
    marker = tmp_path / "pwned"
    with pytest.raises(DataError, match="refers to .*open"):
        _unpickle(pickle.dumps(_Marker(marker), protocol=2))
    assert not marker.exists()
    assert _unpickle(pickle.dumps({"a": [1, 2]}, protocol=2)) == {"a": [1, 2]}  # plain data still loads


def test_a_modified_copy_never_reuses_what_an_earlier_copy_left(cora_root, tmp_path, monkeypatch):
    """The old reader recopied a raw file into the cache only when its size changed and PyG reused
    its processed/ files, so a same-size change was silently served the earlier graph."""
    monkeypatch.setenv("GENLAB_CACHE", str(tmp_path / "cache"))
    x, ei, _ = load_planetoid(cora_root, "cora")
    assert x.shape == (2708, 1433) and ei.shape == (2, 10556)
    other = tmp_path / "other"
    shutil.copytree(cora_root, other)
    g = other / "Planetoid" / "Cora" / "raw" / "ind.cora.graph"
    b = bytearray(g.read_bytes())
    b[-2] ^= 1  # same size, different content
    g.write_bytes(bytes(b))
    with pytest.raises(DataError, match="ind.cora.graph is not the official Planetoid file"):
        load_planetoid(other, "cora")
    assert not (tmp_path / "cache" / "planetoid").exists()  # nothing cached that could go stale


# --------------------------------------------------------------------------- edge lists


def _ring_with_chords(n: int) -> list[tuple[int, int]]:
    return [(i, (i + 1) % n) for i in range(n)] + [(i, (i + 7) % n) for i in range(0, n, 2)]


def test_edge_list_node_ids_are_labels(tmp_path):
    """Huge, sparse ids (over 2^32) give the same graph and split as ids 0..N-1 in the same order,
    without an N x N matrix of the largest id; a byte-order mark is not part of the first id."""
    edges = _ring_with_chords(40)
    small, big = tmp_path / "small.csv", tmp_path / "big.csv"
    small.write_text("".join(f"{a},{b}\n" for a, b in edges))
    big.write_text("\ufeff" + "".join(f"{a * 10**9 + 5},{b * 10**9 + 5}\n" for a, b in edges), encoding="utf-8")

    def load(p):
        return load_graph_data(DataConfig(dataset="edgelist", path=str(p), val_size=0.1, test_size=0.2), None, 0)

    a, b = load(small), load(big)
    assert b.num_nodes == b.num_features == 40
    for k in ("x", "mp_edge_index", "train_pos", "val_pos", "val_neg", "test_pos", "test_neg"):
        assert torch.equal(getattr(a, k), getattr(b, k)), k


def test_edge_list_that_needs_too_big_a_one_hot_matrix_is_refused(tmp_path):
    p = tmp_path / "wide.csv"
    p.write_text("".join(f"{i * 10**6},{i * 10**6 + 1}\n" for i in range(10_000)))  # 20,000 nodes
    with pytest.raises(DataError, match=r"20000 nodes would need a 20000 x 20000 one-hot .*1\.5 GiB") as e:
        load_edge_list_graph(p, None)
    _one_line(e, str(p), "give data.features")


@pytest.mark.parametrize("text, match", [
    ("", "holds no edges; it needs lines of source,target"),
    ("source,target\n", "holds no edges"),
    ("0,1\na,b\n", "line 2: expected two integer node ids"),
    ("0,1\n-1,2\n", "line 2: node ids must be >= 0"),
    ("0,1\n--1,2\n", "line 2: expected two integer node ids"),
    ("0\n1\n2\n", "line 1: expected two integer node ids"),
    ("0,1,2\n", "line 1: expected two integer node ids"),
    ("0,1\n\u00b2,3\n", "line 2: expected two integer node ids"),  # superscript two: int() raises
    ("0,1\n\u0663,4\n", "line 2: expected two integer node ids"),  # Arabic-Indic three: int() takes it
    ("0,1\n1,\u202e2\n", "line 2: expected two integer node ids"),
    ("0,99999999999999999999\n", "line 1: node id over 2\\^63-1"),
    ("0," + "9" * 5000 + "\n", "line 1: node id over 2\\^63-1"),  # int() refuses over 4300 digits
    ("0,0\n1,1\n", "every edge is a self-loop"),
])
def test_bad_edge_lists_give_one_line_data_errors(tmp_path, text, match):
    p = tmp_path / "edges.csv"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=match) as e:
        load_edge_list_graph(p, None)
    _one_line(e, str(p))


def test_binary_junk_edge_list_gives_a_one_line_data_error(tmp_path):
    p = tmp_path / "edges.csv"
    p.write_bytes(b"0,1\n\xff\xfe\x00\x81garbage,\x00\n")
    with pytest.raises(DataError, match="line 2: expected two integer node ids") as e:
        load_edge_list_graph(p, None)
    _one_line(e, str(p))


@pytest.mark.parametrize("feats, match", [
    ("1,0\n0,1\n1,1\n", r"node id 5000000000 is out of range for 3 nodes .*row i is node i"),
    ("", "holds no rows"),
    ("1,0\n0,1\n1\n", "line 3: 1 values where the first row has 2"),
    ("1,0\nnan,1\n1,1\n", "line 2: features must be finite"),
    ("f1,f2\n1,0\nx,1\n", "line 3: expected numbers"),
])
def test_bad_node_feature_files_give_one_line_data_errors(tmp_path, feats, match):
    p, f = tmp_path / "edges.csv", tmp_path / "feats.csv"
    p.write_text("0,1\n1,2\n0,5000000000\n")
    f.write_text(feats)
    with pytest.raises(DataError, match=match) as e:
        load_edge_list_graph(p, f)
    _one_line(e, str(f))
