"""GraphRNN (You et al., 2018): a graph is generated node by node in BFS order; a node-level GRU
reads the previous node's adjacency vector, and the new node's edges to the `max_prev` nodes
before it (nearest first) come from its output in one of two ways:

- `edges: rnn` (GraphRNN): an edge-level GRU, started from the node state, emits the edges one by
  one, each conditioned on the ones before it;
- `edges: mlp` (GraphRNN-S): an MLP gives independent Bernoulli probabilities for all of them.

An all-zero vector ends the graph (every BFS node after the first has an earlier neighbour, so it
means "no new node").

Training orders each graph by a BFS from a random node with randomly permuted neighbours (drawn
from torch's global generator, which the engine seeds per micro-batch), teacher-forced with
binary cross-entropy over the entries that can exist (node i has min(i, max_prev) predecessors
in reach).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genlab.errors import ConfigError
from genlab.models.base import GenerativeModel


@dataclass
class GraphRNNConfig:
    hidden: int = 128  # GRU width
    embed: int = 64  # input embedding of an adjacency vector
    layers: int = 4  # GRU layers
    out_hidden: int = 64  # MLP head width
    # "rnn" (GraphRNN: edge-level GRU, the presets' choice) or "mlp" (GraphRNN-S: independent
    # edges; the default, so that runs saved before the option existed load as they were trained)
    edges: str = "mlp"
    edge_hidden: int = 16  # edge-level GRU width (edges: rnn)
    edge_embed: int = 8  # edge-level input embedding (edges: rnn)
    edge_layers: int = 4  # edge-level GRU layers (edges: rnn)
    max_nodes: int | None = None  # from the data
    max_prev: int | None = None  # from the data (a BFS bandwidth bound)


def bfs_order(adj: np.ndarray, perm: np.ndarray, start: int) -> np.ndarray:
    """Node order of a BFS from `start`, neighbours visited in the order of `perm`
    (rank[i] = position of node i in perm); unreached nodes follow in perm order."""
    n = len(adj)
    rank = np.empty(n, np.int64)
    rank[perm] = np.arange(n)
    seen = np.zeros(n, bool)
    order = []
    for s in [start, *perm.tolist()]:
        if seen[s]:
            continue
        seen[s] = True
        todo = deque([s])
        while todo:
            i = todo.popleft()
            order.append(i)
            nb = np.flatnonzero(adj[i] & ~seen)
            for j in nb[np.argsort(rank[nb])]:
                seen[j] = True
                todo.append(j)
    return np.asarray(order)


def bfs_orders(adj: np.ndarray, n: np.ndarray, start: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """`bfs_order` for a padded batch of connected graphs at once, level by level in numpy (no
    per-node Python): adj (B, N, N) bool, n (B,) node counts, start (B,) start nodes, rank (B, N)
    neighbour priorities (lower first; rank[b, perm] = arange, as bfs_order ranks `perm`).

    Returns:
        order (B, N) int64: order[b, p] is the node at BFS position p; padding nodes (>= n[b])
        follow in index order. Equal to bfs_order(adj[b], perm, start[b]) for connected graphs:
        a node's BFS position is fixed by its level, then the position of its earliest-visited
        neighbour in the level before (the node that dequeued it), then its rank."""
    B, N = adj.shape[:2]
    big = np.int64(N + 1)  # "not placed yet"
    rows = np.arange(B)
    pos = np.full((B, N), big, np.int64)
    pos[rows, start] = 0
    frontier = np.zeros((B, N), bool)
    frontier[rows, start] = True
    seen, placed = frontier.copy(), np.ones(B, np.int64)
    key_rank = rank / (N + 1.0)  # in [0, 1): breaks ties between nodes of the same parent
    while frontier.any():
        parent = np.where(adj & frontier[:, :, None], pos[:, :, None], big).min(1)  # (B, N) earliest parent
        new = (parent < big) & ~seen
        key = np.where(new, parent + key_rank, np.inf)
        r = np.empty((B, N), np.int64)
        np.put_along_axis(r, np.argsort(key, 1, kind="stable"), np.arange(N)[None].repeat(B, 0), 1)
        pos = np.where(new, placed[:, None] + r, pos)  # r < number of new nodes for the new ones
        placed += new.sum(1)
        seen |= new
        frontier = new
    pos = np.where(np.arange(N)[None] < n[:, None], pos, big)  # padding after the graph
    return np.argsort(pos, 1, kind="stable")


def encode_sequences(adj: torch.Tensor, n: torch.Tensor, max_prev: int, generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher-forcing tensors of a padded batch (B, N, N) with node counts n (B,):
    inputs (B, N, M) [SOS, S_1, ..., S_{n-1}], targets (B, N, M) [S_1, ..., S_{n-1}, 0] and the
    loss mask (B, N, M), where S_i[k] = 1 iff BFS node i links to BFS node i-1-k."""
    B, N, _ = adj.shape
    M = max_prev
    a_np = adj.detach().to("cpu", torch.uint8).numpy()
    seqs = np.zeros((B, N + 1, M), np.float32)  # S_0 .. S_N (S_0 unused, S_n = EOS zeros)
    mask = np.zeros((B, N, M), np.float32)
    for b, k in enumerate(n.tolist()):
        perm = torch.randperm(k, generator=generator).numpy()
        start = int(torch.randint(0, k, (1,), generator=generator))
        o = bfs_order(a_np[b, :k, :k].astype(bool), perm, start)
        ap = a_np[b][np.ix_(o, o)]  # (k, k) in BFS order
        for i in range(1, k):
            lo = max(0, i - M)
            row = ap[i, lo:i][::-1]  # nearest predecessor first
            if ap[i, :lo].any():
                raise ConfigError(f"a graph has an edge further back than model.max_prev={M} in BFS order; "
                                  "leave model.max_prev unset to take it from the data")
            seqs[b, i, :len(row)] = row
        for t in range(k):  # row t predicts S_{t+1}: node t+1 has min(t+1, M) predecessors in reach
            mask[b, t, :min(t + 1, M)] = 1.0
    s = torch.from_numpy(seqs).to(adj.device)
    inputs = s[:, :N].clone()
    inputs[:, 0] = 1.0  # SOS
    return inputs, s[:, 1:], torch.from_numpy(mask).to(adj.device)


class GraphRNN(GenerativeModel):
    """GRU over nodes; an edge-level GRU (GraphRNN) or an MLP (GraphRNN-S) to the new node's edges."""

    family = "graph"
    task = "generate"

    def __init__(self, cfg: GraphRNNConfig):
        super().__init__()
        if cfg.max_nodes is None or cfg.max_prev is None:
            raise ConfigError("GraphRNN needs model.max_nodes and model.max_prev (taken from the data)")
        if cfg.edges not in ("rnn", "mlp"):
            raise ConfigError(f"model.edges must be 'rnn' (GraphRNN) or 'mlp' (GraphRNN-S), got {cfg.edges!r}")
        if min(cfg.edge_hidden, cfg.edge_embed, cfg.edge_layers) < 1:
            raise ConfigError("model.edge_hidden, model.edge_embed and model.edge_layers must be >= 1")
        self.cfg = cfg
        M = cfg.max_prev
        self.inp = nn.Sequential(nn.Linear(M, cfg.embed), nn.ReLU())
        self.gru = nn.GRU(cfg.embed, cfg.hidden, num_layers=cfg.layers, batch_first=True)
        if cfg.edges == "mlp":
            self.head = nn.Sequential(nn.Linear(cfg.hidden, cfg.out_hidden), nn.ReLU(),
                                      nn.Linear(cfg.out_hidden, M))
        else:
            He = cfg.edge_hidden
            self.edge_init = nn.Linear(cfg.hidden, He)  # node state -> the edge GRU's first-layer state
            self.edge_inp = nn.Sequential(nn.Linear(1, cfg.edge_embed), nn.ReLU())
            self.edge_gru = nn.GRU(cfg.edge_embed, He, num_layers=cfg.edge_layers, batch_first=True)
            self.edge_head = nn.Sequential(nn.Linear(He, cfg.out_hidden), nn.ReLU(), nn.Linear(cfg.out_hidden, 1))

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Node-level step(s): adjacency vectors (B, T, M) -> node states (B, T, hidden), GRU state."""
        return self.gru(self.inp(x), h)

    def _edge_state(self, node_out: torch.Tensor) -> torch.Tensor:
        """The edge GRU's initial state (edge_layers, R, edge_hidden) from node states (R, hidden)."""
        first = self.edge_init(node_out)[None]
        rest = first.new_zeros(self.cfg.edge_layers - 1, *first.shape[1:])
        return torch.cat([first, rest]).contiguous()

    def edge_logits(self, node_out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Teacher-forced edge logits (R, M) from node states (R, hidden) and the true edges (R, M):
        logit k sees only edges 0..k-1 (edge-level GRU) or none of them (MLP)."""
        if self.cfg.edges == "mlp":
            return self.head(node_out)
        prev = torch.cat([torch.ones_like(targets[:, :1]), targets[:, :-1]], 1)  # SOS = 1, then S[:-1]
        out, _ = self.edge_gru(self.edge_inp(prev[..., None]), self._edge_state(node_out))
        return self.edge_head(out)[..., 0]

    def sample_edges(self, node_out: torch.Tensor, reach: int, generator: torch.Generator) -> torch.Tensor:
        """Edges (R, M) uint8 of new nodes, given their node states (R, hidden); only the first
        `reach` entries can be 1 (a node has at most that many predecessors within reach)."""
        R, M = len(node_out), self.cfg.max_prev
        if self.cfg.edges == "mlp":
            p = torch.sigmoid(self.head(node_out)).float().cpu()
            s = (torch.rand(p.shape, generator=generator, device=generator.device).cpu() < p).to(torch.uint8)
            s[:, reach:] = 0
            return s
        s = torch.zeros(R, M, dtype=torch.uint8)
        h = self._edge_state(node_out)
        x = node_out.new_ones(R, 1, 1)
        for k in range(reach):
            out, h = self.edge_gru(self.edge_inp(x), h)
            p = torch.sigmoid(self.edge_head(out)[:, 0, 0]).float().cpu()
            bit = torch.rand(R, generator=generator, device=generator.device).cpu() < p
            s[:, k] = bit.to(torch.uint8)
            x = bit.to(node_out.dtype).to(node_out.device)[:, None, None]
        return s

    def loss(self, batch: dict[str, torch.Tensor], opt: str = "model") -> dict[str, torch.Tensor]:
        inputs, targets, mask = encode_sequences(batch["adj"], batch["n"], self.cfg.max_prev)
        out, _ = self(inputs)
        rows = mask[..., 0] > 0  # node steps that exist (padding rows are skipped)
        targets, mask = targets[rows], mask[rows]
        bce = F.binary_cross_entropy_with_logits(self.edge_logits(out[rows], targets), targets, reduction="none")
        loss = (bce * mask).sum() / mask.sum()
        return {"loss": loss, "nll_per_graph": (bce * mask).sum() / len(inputs)}

    @torch.no_grad()
    def sample_graphs(self, n: int, *, generator: torch.Generator, batch_size: int = 256) -> list[np.ndarray]:
        """n graphs as numpy adjacency matrices (uint8, symmetric)."""
        if n < 1:
            raise ConfigError(f"--n must be >= 1, got {n}")
        was = self.training
        self.eval()
        dev = next(self.parameters()).device
        out = []
        for i in range(0, n, batch_size):
            out += self._sample_batch(min(batch_size, n - i), generator, dev)
        self.train(was)
        return out

    def _sample_batch(self, B: int, generator: torch.Generator, dev) -> list[np.ndarray]:
        N, M = self.cfg.max_nodes, self.cfg.max_prev
        adj = torch.zeros(B, N, N, dtype=torch.uint8)
        size = torch.full((B,), N, dtype=torch.int64)
        alive = torch.ones(B, dtype=torch.bool)
        x = torch.ones(B, 1, M, device=dev)
        h = None
        for t in range(N - 1):  # decides whether node t+1 exists and its edges
            out, h = self(x, h)
            s = self.sample_edges(out[:, 0], min(t + 1, M), generator)  # (B, M)
            end = alive & (s.sum(1) == 0)
            size[end] = t + 1
            alive &= ~end
            if not alive.any():
                break
            k = torch.arange(min(t + 1, M))
            for b in torch.nonzero(alive).flatten().tolist():
                prev = t - k[s[b, :len(k)].bool()]  # earlier nodes this one links to
                adj[b, t + 1, prev] = 1
                adj[b, prev, t + 1] = 1
            x = (s * alive[:, None]).float().to(dev)[:, None]  # (B, 1, M)
        return [adj[b, :size[b], :size[b]].numpy() for b in range(B)]

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator, labels=None) -> list[np.ndarray]:
        return self.sample_graphs(n, generator=generator)

from genlab.registry import register  # noqa: E402

register("graphrnn", GraphRNNConfig, GraphRNN)
