"""Graph models: GCN normalisation, VGAE loss terms, link splits, graph MMD, GraphRNN sequences,
seeded and resumed graph runs, graph sampling files, bad graph input."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import genlab
from genlab.data.graphs import (LinkData, check_link_split, grid_graph, load_graph_data,
                                synthetic_graphs, two_community_graph)
from genlab.errors import ConfigError, DataError, GenlabError
from genlab.metrics.graph_stats import gaussian_emd, graph_mmd
from tests.conftest import assert_same_tensors, weights_of

# A tiny VGAE and a tiny GraphRNN: a couple of seconds per run.
TINY_GAE = ["data.dataset=edgelist", "model.hidden=16", "model.latent_dim=8", "train.steps=30",
            "train.log_every=10", "train.ckpt_every=100", "data.val_size=0.1", "data.test_size=0.2"]
TINY_RNN = ["model.hidden=16", "model.embed=8", "model.layers=1", "model.out_hidden=16", "data.num_graphs=40",
            "train.batch_size=8", "train.log_every=2", "train.eval_every=1000", "train.sample_every=1000",
            "train.ckpt_every=1000", "train.warmup_steps=0"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def community_csv(tmp_path_factory):
    """A graph of three two-community blocks as an edge-list CSV (with a header)."""
    rng = np.random.default_rng(0)
    blocks = [two_community_graph(rng) for _ in range(3)]
    n = sum(len(b) for b in blocks)
    a = np.zeros((n, n), np.uint8)
    o = 0
    for b in blocks:
        a[o:o + len(b), o:o + len(b)] = b
        o += len(b)
    a[0, n - 1] = a[n - 1, 0] = 1
    i, j = np.nonzero(np.triu(a, 1))
    p = tmp_path_factory.mktemp("g") / "edges.csv"
    p.write_text("source,target\n" + "\n".join(f"{x},{y}" for x, y in zip(i, j)) + "\n")
    return p


# --------------------------------------------------------------------------- encoders and losses


def test_gcn_layer_normalises_like_a_hand_computation():
    """Path 0-1-2 with self-loops: degrees 2, 3, 2, so D^-1/2 (A+I) D^-1/2 has 1/2, 1/3 on the
    diagonal and 1/sqrt(6) between neighbours."""
    from torch_geometric.nn import GCNConv

    from genlab.models.graph.gae import gcn_norm_dense

    ei = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 3.0]], dtype=torch.float64)
    conv = GCNConv(2, 2, bias=False).double()
    with torch.no_grad():
        conv.lin.weight.copy_(torch.eye(2))
    r6 = 1 / math.sqrt(6)
    hand = torch.tensor([[0.5, r6, 0.0], [r6, 1 / 3, r6], [0.0, r6, 0.5]], dtype=torch.float64)
    assert torch.allclose(gcn_norm_dense(torch.tensor([[0.0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=torch.float64)),
                          hand, atol=1e-12)
    expected = torch.tensor([[0.5, r6], [3 * r6, 1 / 3 + 3 * r6], [1.0, r6 + 1.5]], dtype=torch.float64)
    assert torch.allclose(conv(x, ei), expected, atol=1e-12)
    assert torch.allclose(conv(x, ei), hand @ x, atol=1e-12)


def test_vgae_kl_and_reconstruction_terms_on_a_toy_graph():
    from genlab.models.graph.gae import GAE, GAEConfig, full_recon_loss, kl_term, sampled_recon_loss

    # KL of N(mu, s^2) against N(0, 1): 0.5 (mu^2 + s^2 - 1 - 2 log s) per dimension, / N
    mu = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    logstd = torch.tensor([[0.0, math.log(2.0)], [0.0, 0.0]], dtype=torch.float64)
    node0 = 0.5 * 1.0 + 0.5 * (4.0 - 1.0 - 2 * math.log(2.0))
    assert kl_term(mu, logstd).item() == pytest.approx((node0 + 0.0) / 2 / 2, abs=1e-12)
    # reconstruction: 3 nodes, edge 0-1: A + I has 5 ones (pw = 4/5, norm = 9/8) and 4 zeros
    z = torch.tensor([[1.0, 0.5], [2.0, -1.0], [-0.5, 1.0]], dtype=torch.float64)
    logits, t = z @ z.t(), torch.eye(3, dtype=torch.float64)
    t[0, 1] = t[1, 0] = 1
    sp = F.softplus
    hand = sum((0.8 * sp(-logits[i, j]) if t[i, j] else sp(logits[i, j])) for i in range(3) for j in range(3)) / 9
    assert full_recon_loss(z, torch.tensor([[0], [1]])).item() == pytest.approx(9 / 8 * hand.item(), rel=1e-12)
    lp, ln = (z[0] * z[1]).sum(), (z[0] * z[2]).sum()
    assert sampled_recon_loss(z, torch.tensor([[0], [1]]), torch.tensor([[0], [2]])).item() == pytest.approx(
        (sp(-lp) + sp(ln)).item(), rel=1e-12)
    # the model's terms are these functions of its encoder's outputs, and loss = recon + kl
    torch.manual_seed(0)
    m = GAE(GAEConfig(num_features=3, hidden=4, latent_dim=2)).double().eval()
    batch = {"x": torch.eye(3, dtype=torch.float64), "edge_index": torch.tensor([[0, 1], [1, 0]]),
             "pos": torch.tensor([[0], [1]]), "neg": torch.tensor([[0], [2]])}
    out = m.loss(batch)
    mu, ls = m.encoder(batch["x"], batch["edge_index"])
    assert out["kl"].item() == pytest.approx(kl_term(mu, ls).item(), rel=1e-12)
    assert out["recon"].item() == pytest.approx(full_recon_loss(mu, batch["pos"]).item(), rel=1e-12)
    assert out["loss"].item() == pytest.approx(out["recon"].item() + out["kl"].item(), rel=1e-12)


# --------------------------------------------------------------------------- data


def test_link_split_is_disjoint_and_keeps_held_out_edges_out_of_message_passing(community_csv):
    from genlab.config import DataConfig

    d = load_graph_data(DataConfig(dataset="edgelist", path=str(community_csv), val_size=0.1, test_size=0.2),
                        None, seed=3)
    n = d.num_nodes
    ids = {k: {tuple(sorted(e)) for e in getattr(d, k).t().tolist()}
           for k in ("train_pos", "val_pos", "test_pos", "val_neg", "test_neg", "mp_edge_index")}
    total = ids["train_pos"] | ids["val_pos"] | ids["test_pos"]
    assert len(total) == len(ids["train_pos"]) + len(ids["val_pos"]) + len(ids["test_pos"])  # disjoint
    raw = {tuple(sorted(map(int, l.split(",")))) for l in community_csv.read_text().split("\n")[1:] if l}
    assert total == raw and len(ids["test_pos"]) == round(0.2 * len(raw))
    assert ids["mp_edge_index"] == ids["train_pos"]  # message passing: training edges only
    assert not (ids["val_pos"] | ids["test_pos"]) & ids["mp_edge_index"]
    assert not (ids["val_neg"] | ids["test_neg"]) & total and len(ids["test_neg"]) == len(ids["test_pos"])
    assert d.mp_edge_index.shape[1] == 2 * len(ids["train_pos"]) and n == d.x.shape[0] == d.x.shape[1]
    # the check catches a leak
    leaky = LinkData(**{**d.__dict__, "mp_edge_index": torch.cat([d.mp_edge_index, d.test_pos[:, :1]], 1)})
    with pytest.raises(DataError, match="test edge"):
        check_link_split(leaky)
    # the same seed gives the same split, another seed another one
    again = load_graph_data(DataConfig(dataset="edgelist", path=str(community_csv), val_size=0.1, test_size=0.2),
                            None, seed=3)
    other = load_graph_data(DataConfig(dataset="edgelist", path=str(community_csv), val_size=0.1, test_size=0.2),
                            None, seed=4)
    assert torch.equal(again.test_pos, d.test_pos) and not torch.equal(other.test_pos, d.test_pos)


def test_bad_graph_input_gives_one_line_errors(tmp_path, community_csv, capsys):
    from genlab.config import DataConfig

    def load(**kw):
        return load_graph_data(DataConfig(**{"dataset": "edgelist", **kw}), None, seed=0)

    with pytest.raises(DataError, match="not found"):
        load(path=str(tmp_path / "missing.csv"))
    bad = tmp_path / "bad.csv"
    bad.write_text("0,1\n1,2\n2;x\n")
    with pytest.raises(DataError, match="line 3: expected two integer node ids"):
        load(path=str(bad))
    feats = tmp_path / "f.csv"
    feats.write_text("1,0\n0,1\n1,1\n")
    with pytest.raises(DataError, match=r"node id \d+ is out of range for 3 nodes"):
        load(path=str(community_csv), features=str(feats))
    with pytest.raises(ConfigError, match="data.image_size is an image option"):
        load(path=str(community_csv), image_size=32)
    with pytest.raises(DataError, match="Planetoid Cora not found"):
        load_graph_data(DataConfig(dataset="cora", val_size=0.05, test_size=0.1), tmp_path, seed=0)
    from genlab.cli import main

    assert main(["train", "graphgen-grid", "--set", "data.hflip=true", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("genlab: error: data.hflip is an image option") and not (tmp_path / "r").exists()
    assert main(["train", "gae-cora", "--set", "data.dataset=mnist", "--out", str(tmp_path / "r2")]) == 2
    assert "is a graph model but data.dataset=mnist" in capsys.readouterr().err


# --------------------------------------------------------------------------- metrics


def test_mmd_is_zero_for_a_set_against_itself_and_grows_with_perturbation():
    graphs = synthetic_graphs("community", 12, seed=5)
    same = graph_mmd(graphs, graphs)
    assert all(abs(v) < 1e-12 for v in same.values())
    rng = np.random.default_rng(0)

    def flip(a, k):  # toggle k random node pairs
        a = a.copy()
        for _ in range(k):
            i, j = rng.choice(len(a), 2, replace=False)
            a[i, j] = a[j, i] = 1 - a[i, j]
        return a

    small = graph_mmd(graphs, [flip(a, 3) for a in graphs])
    large = graph_mmd(graphs, [flip(a, 30) for a in graphs])
    for s in ("degree", "clustering", "spectral"):
        assert 0 < small[s] < large[s], s
    # EMD kernel by hand: mass 1 moved by one bin -> exp(-1/2)
    assert gaussian_emd(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(math.exp(-0.5))


# --------------------------------------------------------------------------- GraphRNN


@pytest.mark.parametrize("edges", ["rnn", "mlp"])
def test_graphrnn_sequences_encode_the_graph_and_samples_are_valid_graphs(edges):
    from genlab.data.graphs import bfs_bandwidth_bound, pad_graphs
    from genlab.models.graph.graphrnn import GraphRNN, GraphRNNConfig, encode_sequences

    graphs = [grid_graph(3, 4), two_community_graph(np.random.default_rng(1))]
    adj, n = pad_graphs(graphs, 20)
    M = max(bfs_bandwidth_bound(a) for a in graphs)
    inputs, targets, mask = encode_sequences(adj.float(), n, M, generator=torch.Generator().manual_seed(0))
    for b, a in enumerate(graphs):
        k = len(a)
        rebuilt = np.zeros((k, k), np.uint8)  # decode S_1..S_{k-1} back into a graph
        for i in range(1, k):
            for j in np.flatnonzero(targets[b, i - 1].numpy()):
                rebuilt[i, i - 1 - j] = rebuilt[i - 1 - j, i] = 1
        assert rebuilt.sum() == a.sum()  # every edge, once
        assert sorted(rebuilt.sum(1)) == sorted(a.sum(1))  # same degree sequence
        assert (targets[b, k - 1] == 0).all() and mask[b, k - 1].sum() == min(k, M)  # EOS row is scored
        assert mask[b, k:].sum() == 0 and (inputs[b, 0] == 1).all()
    torch.manual_seed(0)
    m = GraphRNN(GraphRNNConfig(hidden=16, embed=8, layers=1, out_hidden=16, max_nodes=20, max_prev=M,
                                edges=edges))
    out = m.sample_graphs(10, generator=torch.Generator().manual_seed(1))
    assert len(out) == 10
    from genlab.data.graphs import is_connected

    for a in out:
        assert (a == a.T).all() and (np.diag(a) == 0).all() and 1 <= len(a) <= 20
        assert len(a) == 1 or is_connected(a)  # BFS generation links each new node to an earlier one
    again = m.sample_graphs(10, generator=torch.Generator().manual_seed(1))
    assert all(np.array_equal(x, y) for x, y in zip(out, again))


def test_graphrnn_edge_level_model_is_causal_and_learns_edge_dependence():
    """Edge k's logit depends on edges 0..k-1 and never on edge k or later; sampling draws each
    edge from the same conditionals as training; and on nodes that link to exactly one of their
    two predecessors (which independent edges cannot express: their best is 2 ln 2 = 1.386 nats)
    the edge GRU learns the dependence and the independent-edge model (GraphRNN-S) does not."""
    from genlab.models.graph.graphrnn import GraphRNN, GraphRNNConfig

    torch.manual_seed(0)
    m = GraphRNN(GraphRNNConfig(hidden=16, embed=8, layers=1, out_hidden=16, max_nodes=10, max_prev=5,
                                edges="rnn"))
    node = torch.randn(3, 16)
    s = (torch.rand(3, 5) < 0.5).float()
    base = m.edge_logits(node, s)
    for k in range(5):
        changed = s.clone()
        changed[:, k:] = 1 - changed[:, k:]
        after = m.edge_logits(node, changed)
        assert torch.equal(after[:, :k + 1], base[:, :k + 1])  # logit k is computed before edge k is seen
        if k < 4:
            assert not torch.allclose(after[:, k + 1:], base[:, k + 1:])  # ... and does see it after
    # sampling: with the sampler's own uniform draws (one per edge, in order), each edge must be
    # 1 exactly when its draw falls below the training-time probability given the edges before it
    with torch.no_grad():
        nodes = torch.randn(4, 16)
        sampled = m.sample_edges(nodes, 3, torch.Generator().manual_seed(3)).float()  # (4, 5); 3 in reach
        p = torch.sigmoid(m.edge_logits(nodes, sampled))
    same_stream = torch.Generator().manual_seed(3)
    draws = torch.stack([torch.rand(4, generator=same_stream) for _ in range(3)], 1)  # (4, 3)
    assert (sampled[:, 3:] == 0).all() and 0 < sampled.sum() < 12
    assert torch.equal(sampled[:, :3], (draws < p[:, :3]).float())
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).repeat(32, 1)  # exactly one of two edges
    for edges, expect in (("rnn", lambda nll: nll < 0.75), ("mlp", lambda nll: nll > 1.3)):
        torch.manual_seed(0)
        m = GraphRNN(GraphRNNConfig(hidden=8, embed=4, layers=1, out_hidden=16, max_nodes=4, max_prev=2,
                                    edges=edges))
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        node = torch.zeros(64, 8)  # one node state for both cases: only the edge model can tell them apart
        for _ in range(300):
            nll = F.binary_cross_entropy_with_logits(m.edge_logits(node, targets), targets, reduction="sum") / 64
            opt.zero_grad()
            nll.backward()
            opt.step()
        # nats per node: the GRU gets ln 2 for the first edge and ~0 for the second; independent
        # edges cannot do better than 2 ln 2 = 1.386
        assert expect(nll.item()), (edges, nll.item())


def test_graphrnn_run_resumes_exactly_and_samples_to_files(tmp_path, capsys):
    full, part = tmp_path / "full", tmp_path / "part"
    genlab.train("graphgen-grid", full, overrides=TINY_RNN, steps=6)  # LR schedule: the preset's steps
    genlab.train("graphgen-grid", part, overrides=TINY_RNN, steps=3)
    genlab.train(resume=part, steps=6)
    assert_same_tensors(weights_of(full), weights_of(part), atol=0)
    from genlab.cli import main

    assert main(["sample", str(full), "--n", "5", "--out", str(tmp_path / "g.npz")]) == 0
    z = np.load(tmp_path / "g.npz")
    assert z["adjacency"].shape[0] == 5 and z["num_nodes"].shape == (5,) and z["adjacency"].dtype == np.uint8
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["sample", str(full), "--n", "3", "--out", str(tmp_path / "dir") + "/"]) == 0
    assert len(list((tmp_path / "dir").glob("graph-*.csv"))) == 3 and (tmp_path / "dir" / "drawing.png").is_file()
    from genlab.cli import main
    from genlab.evaluation import evaluate

    assert main(["sample", str(full), "--label", "1"]) == 2
    assert "image options" in capsys.readouterr().err
    rep = evaluate(full, n=8, seed=0, html=False)
    for k in ("mmd_degree", "mmd_clustering", "mmd_spectral"):
        e = rep["metrics"][k]
        assert e["value"] >= 0 and e["erdos_renyi"] > 0 and e["n"] == 8 and e["extractor"].startswith("gaussian")
    with pytest.raises(GenlabError, match="do not apply to graph runs"):
        evaluate(full, n=8, html=False, extractor="lenet-mnist")


# --------------------------------------------------------------------------- a seeded VGAE run


def test_seeded_vgae_run_reproduces_its_auc(tmp_path, community_csv, capsys):
    from genlab.cli import main
    from genlab.evaluation import evaluate

    n_edges = len(community_csv.read_text().strip().split("\n")) - 1
    aucs = []
    for name in ("a", "b"):
        genlab.train("vgae-cora", tmp_path / name, overrides=TINY_GAE + [f"data.path={community_csv}"])
        rep = evaluate(tmp_path / name, seed=0, html=False)
        aucs.append((rep["metrics"]["auc"]["value"], rep["metrics"]["ap"]["value"]))
        assert rep["metrics"]["auc"]["n"] == 2 * round(0.2 * n_edges)  # test positives + as many negatives
    assert aucs[0] == aucs[1]
    assert aucs[0][0] > 0.8  # three dense communities: held-out edges are easy to tell apart
    assert main(["sample", str(tmp_path / "a")]) == 2
    assert "draws no graphs" in capsys.readouterr().err
