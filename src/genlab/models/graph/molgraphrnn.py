"""MolGraphRNN: GraphRNN (graphrnn.py) for molecules, with atom types, bond orders and a valence
check. A molecule is generated atom by atom in BFS order (the same randomised BFS GraphRNN
trains on, `bfs_orders`):

- a node-level GRU reads the previous atom (its type and its bonds to the `max_prev` atoms before
  it) and emits the next atom's type, or "stop";
- an edge-level GRU, started from the node state and the new atom's type, emits for each of the
  `max_prev` previous atoms (nearest first) a bond order in {none, single, double, triple},
  each conditioned on the bonds before it, on the type of the atom it would bond to and on the
  bond orders both atoms already carry (known in training and generation alike, they let the
  model learn valences instead of inferring each atom's degree from its hidden state).

Valence check (`valence_check`, on by default), at generation time: a bond order that would
take either atom past its largest valence (genlab.data.molecule_graphs.MAX_VALENCE) is masked out
before sampling; a new atom must bond to at least one earlier atom ("none" is masked at its last
chance), so every molecule is connected, as BFS order implies; and an atom type is masked when no
atom within reach has a free valence left (the new atom's one bond would fit nowhere), which
leaves "stop". With the check on, every generated graph sanitises in RDKit. Training applies the
same masks (every training molecule satisfies them), so the softmax is learnt over the choices that
sampling leaves open, as in MolecularRNN's valency masks, rather than renormalised after the fact.

Training: teacher forcing with cross-entropy on the atom types (and "stop") and the bond orders
within reach, the molecule's negative log-likelihood divided by its atom count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genlab.data.molecule_graphs import ATOM_TYPES, dense_bonds, graph_to_smiles, max_valences
from genlab.errors import ConfigError
from genlab.models.base import GenerativeModel
from genlab.models.graph.graphrnn import bfs_orders

K = len(ATOM_TYPES)  # atom types; index K is "stop" (node outputs) or "start" (node inputs)
BONDS = 4  # none, single, double, triple
DEGREES = 8  # bond-order sums an edge step is told about: 0..7 (more is clamped to 7)


@dataclass
class MolGraphRNNConfig:
    hidden: int = 128  # node-level GRU width
    embed: int = 64  # node-level input embedding (previous atom type + its bonds)
    layers: int = 2  # node-level GRU layers
    out_hidden: int = 64  # atom-type head width (the bond head is edge_hidden wide)
    # the edge level runs on every (atom, predecessor) pair, ~15x the node level's rows: kept narrow
    edge_hidden: int = 32  # edge-level GRU width
    edge_embed: int = 16  # edge-level input embedding (previous bond + partner atom type)
    edge_layers: int = 1  # edge-level GRU layers
    # mask valence-breaking bonds and atoms at generation time, and train under the same masks (the
    # softmax over the allowed choices only), so the model learns the distribution it samples from
    valence_check: bool = True
    max_nodes: int | None = None  # from the data (the largest molecule's heavy atoms)
    max_prev: int | None = None  # from the data (a BFS bandwidth bound)


def bfs_sequences(atoms: torch.Tensor, bonds: torch.Tensor, n: torch.Tensor, max_prev: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each molecule in a random BFS order (start and neighbour priorities from torch's global
    generator, which the engine seeds per micro-batch) as teacher-forcing arrays:
    atom types (B, N) int64 (-1 padding), S (B, N, M) int64, S[b, i, k] = bond order between
    BFS atoms i and i-1-k (0 where none or out of reach), and D (B, N, M) int64, the bond orders
    atom i-1-k carries when atom i arrives (its bonds to atoms before i)."""
    B, N = atoms.shape
    M = max_prev
    a_np, e_np, n_np = atoms.cpu().numpy(), bonds.cpu().numpy(), n.cpu().numpy()
    start = (torch.rand(B).numpy() * n_np).astype(np.int64)
    rank = torch.rand(B, N).argsort(1).numpy()  # random neighbour priorities
    order = bfs_orders(e_np > 0, n_np, start, rank)  # (B, N)
    rows = np.arange(B)[:, None]
    a = a_np[rows, order]  # (B, N) types in BFS order
    e = e_np[rows[:, :, None], order[:, :, None], order[:, None, :]]  # (B, N, N) bonds in BFS order
    if np.tril(e, -M - 1).any():
        raise ConfigError(f"a molecule has a bond further back than model.max_prev={M} in BFS order; "
                          "leave model.max_prev unset to take it from the data")
    i = np.arange(N)[:, None]
    j = i - 1 - np.arange(M)[None]  # (N, M) partner of atom i, nearest first
    s = e[:, i, np.maximum(j, 0)] * (j >= 0)  # (B, N, M)
    before = np.cumsum(e, 2, dtype=np.int64) - e  # (B, N, N): [b, x, y] = bonds of x to atoms < y
    d = before[:, np.maximum(j, 0), i] * (j >= 0)  # (B, N, M) partner j's degree when atom i arrives
    return a.astype(np.int64), s.astype(np.int64), d


def allowed_atoms(free: torch.Tensor, t: int | torch.Tensor, max_nodes: int, check: bool) -> torch.Tensor:
    """Which next-atom outputs (..., K+1) may be drawn at node step t (column K = stop), given the
    free valences (..., reach) of the atoms within reach (`t` an int, or a tensor (...) of steps):
    the first atom cannot be "stop", atom max_nodes cannot be an atom, and (check) an atom needs
    one free valence within reach (every type takes a bond: MAX_VALENCE >= 1)."""
    t = torch.as_tensor(t).expand(free.shape[:-1])
    room = (free >= 1).any(-1) | (t == 0) if check else torch.ones_like(t, dtype=torch.bool)
    atom_ok = room & (t < max_nodes)  # (...)
    return torch.cat([atom_ok[..., None].expand(*t.shape, K), (t > 0)[..., None]], -1)


def allowed_bonds(partner_free: torch.Tensor, own_free: torch.Tensor, bonded: torch.Tensor,
                  later: torch.Tensor, check: bool) -> torch.Tensor:
    """Which bond orders (R, 4) (none, single, double, triple) a new atom may take to one earlier
    atom, given that atom's free valence (R,), the new atom's own (R,), whether it already has a
    bond (R,) bool, and whether a later partner could still take one (R,) bool. With the check, an
    order above either free valence is out; always, "none" is out at the last chance of the one
    bond that keeps the molecule connected (unless no bond is possible here either)."""
    orders = torch.arange(BONDS)
    allowed = torch.ones(len(partner_free), BONDS, dtype=torch.bool)
    if check:
        allowed &= orders[None] <= torch.minimum(partner_free, own_free)[:, None]
    allowed[:, 0] &= bonded | later
    allowed[:, 0] |= ~allowed[:, 1:].any(1)  # never an empty choice (cannot happen with the check on)
    return allowed


class MolGraphRNN(GenerativeModel):
    """Node-level GRU over atoms (type or stop), edge-level GRU over bond orders to earlier atoms."""

    family = "graph"
    task = "molecules"

    def __init__(self, cfg: MolGraphRNNConfig):
        super().__init__()
        if cfg.max_nodes is None or cfg.max_prev is None:
            raise ConfigError("MolGraphRNN needs model.max_nodes and model.max_prev (taken from the data: "
                              "data.dataset=molecules)")
        if min(cfg.hidden, cfg.embed, cfg.layers, cfg.out_hidden, cfg.edge_hidden, cfg.edge_embed,
               cfg.edge_layers) < 1:
            raise ConfigError("model widths and layer counts must be >= 1")
        self.cfg = cfg
        M, He = cfg.max_prev, cfg.edge_hidden
        self.inp = nn.Sequential(nn.Linear(K + 1 + BONDS * M, cfg.embed), nn.ReLU())  # atom (or start) + bonds
        self.gru = nn.GRU(cfg.embed, cfg.hidden, num_layers=cfg.layers, batch_first=True)
        self.atom_head = nn.Sequential(nn.Linear(cfg.hidden, cfg.out_hidden), nn.ReLU(),
                                       nn.Linear(cfg.out_hidden, K + 1))
        self.edge_init = nn.Linear(cfg.hidden + K, He * cfg.edge_layers)  # node state + new atom type
        # previous bond, partner type, partner's and own bond-order sums so far
        self.edge_inp = nn.Sequential(nn.Linear(BONDS + 1 + K + 2 * DEGREES, cfg.edge_embed), nn.ReLU())
        self.edge_gru = nn.GRU(cfg.edge_embed, He, num_layers=cfg.edge_layers, batch_first=True)
        self.edge_head = nn.Sequential(nn.Linear(He, He), nn.ReLU(), nn.Linear(He, BONDS))  # runs on R x M rows
        self.register_buffer("valence", torch.from_numpy(max_valences()), persistent=False)  # (K,)

    # ------------------------------------------------------------------ pieces shared by loss and sampling

    def node_input(self, atom: torch.Tensor, s: torch.Tensor, reach: torch.Tensor) -> torch.Tensor:
        """Node-level inputs (..., K+1+4M) of atoms (...) int (K = start) with bond orders s (..., M)
        to their predecessors; entries k >= reach (...) are zeros (no atom there)."""
        M = self.cfg.max_prev
        within = (torch.arange(M, device=s.device) < reach[..., None]).float()
        bonds = F.one_hot(s, BONDS).float() * within[..., None]  # (..., M, 4)
        return torch.cat([F.one_hot(atom, K + 1).float(), bonds.flatten(-2)], -1)

    def edge_state(self, node_out: torch.Tensor, atom: torch.Tensor) -> torch.Tensor:
        """The edge GRU's initial state (edge_layers, R, edge_hidden) from node states (R, hidden)
        and the new atoms' types (R,)."""
        R = len(node_out)
        h = self.edge_init(torch.cat([node_out, F.one_hot(atom, K).float()], -1))  # (R, L * He)
        return h.view(R, self.cfg.edge_layers, self.cfg.edge_hidden).transpose(0, 1).contiguous()

    def edge_input(self, prev: torch.Tensor, partner: torch.Tensor, partner_deg: torch.Tensor,
                   own_deg: torch.Tensor) -> torch.Tensor:
        """Edge-level inputs (..., edge_embed) of previous bond orders (...) (BONDS = start), partner
        types (...), the partners' bond-order sums so far (...) and the new atom's own (...)."""
        return self.edge_inp(torch.cat([F.one_hot(prev, BONDS + 1).float(),
                                        F.one_hot(partner.clamp(min=0), K).float(),
                                        F.one_hot(partner_deg.clamp(0, DEGREES - 1), DEGREES).float(),
                                        F.one_hot(own_deg.clamp(0, DEGREES - 1), DEGREES).float()], -1))

    # ------------------------------------------------------------------ training

    def loss(self, batch: dict[str, torch.Tensor], opt: str = "model") -> dict[str, torch.Tensor]:
        dev = batch["atoms"].device
        M = self.cfg.max_prev
        a, s, d = (torch.from_numpy(x).to(dev) for x in bfs_sequences(batch["atoms"], batch["bonds"], batch["n"], M))
        n = batch["n"].to(dev)
        B, N = a.shape
        steps = torch.arange(N + 1, device=dev)  # node step t reads atom t-1 and predicts atom t
        # inputs: start at t = 0, then atom t-1 with its bonds (atom i has min(i, M) predecessors)
        prev_atom = torch.cat([torch.full((B, 1), K, device=dev), a.clamp(min=0)], 1)  # (B, N+1)
        prev_s = torch.cat([torch.zeros(B, 1, M, dtype=torch.long, device=dev), s], 1)  # (B, N+1, M)
        reach = torch.cat([torch.zeros(1, device=dev), torch.arange(N, device=dev).clamp(max=M)]).long()
        out, _ = self.gru(self.inp(self.node_input(prev_atom, prev_s, reach.expand(B, -1))))  # (B, N+1, H)
        check = self.cfg.valence_check
        val = self.valence.to(dev)
        k = torch.arange(M, device=dev)
        # free valences of atom t's predecessors when it arrives (B, N, M); none beyond reach
        partner_all = a[torch.arange(B, device=dev)[:, None, None], (steps[:N, None] - 1 - k).clamp(min=0)]
        free_all = val[partner_all.clamp(min=0)] - d
        free_all = free_all.masked_fill(k[None, None] >= steps[:N, None].clamp(max=M), 0)
        free_steps = torch.cat([free_all, torch.zeros(B, 1, M, dtype=free_all.dtype, device=dev)], 1)  # (B, N+1, M)
        atom_ok = allowed_atoms(free_steps, steps.expand(B, -1), N, check)  # (B, N+1, K+1)
        # atom targets: atom t for t < n, stop at t = n, nothing after
        target = torch.cat([a, torch.full((B, 1), -1, device=dev)], 1)  # (B, N+1)
        target = torch.where(steps[None] == n[:, None], torch.full_like(target, K), target)
        target = torch.where(steps[None] > n[:, None], torch.full_like(target, -100), target)
        atom_logits = self.atom_head(out).masked_fill(~atom_ok, float("-inf"))  # (B, N+1, K+1)
        atom_nll = F.cross_entropy(atom_logits.flatten(0, 1), target.flatten(), ignore_index=-100, reduction="sum")
        # bonds of atoms 1..n-1 to their min(t, M) predecessors
        rows = (steps[None, :N] >= 1) & (steps[None, :N] < n[:, None])  # (B, N)
        node_out, new_atom, s_rows, d_rows = out[:, :N][rows], a[rows], s[rows], d[rows]  # (R, H), (R,), (R, M) x2
        t = steps[None, :N].expand(B, -1)[rows]  # (R,)
        within = k[None] < t[:, None].clamp(max=M)  # (R, M)
        partner_idx = (t[:, None] - 1 - k[None]).clamp(min=0)  # (R, M)
        partner = a[rows.nonzero()[:, :1].expand(-1, M), partner_idx]  # (R, M)
        prev = torch.cat([torch.full_like(s_rows[:, :1], BONDS), s_rows[:, :-1]], 1)  # start, then S[:-1]
        own = s_rows.cumsum(1) - s_rows  # (R, M) the new atom's bond orders before partner k
        x = self.edge_input(prev, partner, d_rows, own)  # (R, M, edge_embed)
        eo, _ = self.edge_gru(x, self.edge_state(node_out, new_atom))  # (R, M, He)
        pf = free_all[rows]  # (R, M) partners' free valences
        later = (pf.flip(1).cumsum(1).flip(1) - pf) > 0 if check else within.flip(1).cumsum(1).flip(1) > 1
        ok = allowed_bonds(pf.flatten(), (val[new_atom][:, None] - own).flatten(), own.flatten() > 0,
                           later.flatten(), check).view(-1, M, BONDS)
        ok |= ~within[..., None]  # beyond reach: no mask (and no loss)
        bond_logits = self.edge_head(eo).masked_fill(~ok, float("-inf"))  # (R, M, 4)
        bond_ce = F.cross_entropy(bond_logits.flatten(0, 1), s_rows.flatten(), reduction="none")
        bond_nll = (bond_ce * within.flatten().float()).sum()
        atoms_total = n.sum().clamp(min=1).float()
        return {"loss": (atom_nll + bond_nll) / atoms_total, "atom_nll": atom_nll / atoms_total,
                "bond_nll": bond_nll / atoms_total, "nll_per_molecule": (atom_nll + bond_nll) / B}

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def sample_graphs(self, n: int, *, generator: torch.Generator, batch_size: int = 256,
                      temperature: float = 1.0) -> list[tuple[np.ndarray, np.ndarray]]:
        """n molecule graphs as (atom type indices (k,), bond orders (k, k) symmetric uint8)."""
        if n < 1:
            raise ConfigError(f"--n must be >= 1, got {n}")
        if not temperature > 0:
            raise ConfigError(f"the temperature must be > 0, got {temperature}")
        was = self.training
        self.eval()
        out: list = []
        for i in range(0, n, batch_size):
            out += self._sample_batch(min(batch_size, n - i), generator, temperature)
        self.train(was)
        return out

    def _draw(self, logits: torch.Tensor, allowed: torch.Tensor, generator: torch.Generator,
              temperature: float) -> torch.Tensor:
        """One draw per row of softmax(logits / T) restricted to `allowed` (bool, same shape)."""
        z = (logits.float().cpu() / temperature).masked_fill(~allowed, float("-inf"))
        return torch.multinomial(torch.softmax(z, -1), 1, generator=generator)[:, 0]

    def _sample_batch(self, B: int, g: torch.Generator, temp: float) -> list[tuple[np.ndarray, np.ndarray]]:
        N, M, check = self.cfg.max_nodes, self.cfg.max_prev, self.cfg.valence_check
        dev = next(self.parameters()).device
        val = self.valence.cpu()
        atoms = torch.full((B, N), -1, dtype=torch.long)
        adj = torch.zeros(B, N, N, dtype=torch.long)
        free = torch.zeros(B, N, dtype=torch.long)  # valence left per atom
        size = torch.full((B,), N, dtype=torch.long)
        alive = torch.ones(B, dtype=torch.bool)
        x = self.node_input(torch.full((B,), K), torch.zeros(B, M, dtype=torch.long), torch.zeros(B, dtype=torch.long))
        h = None
        for t in range(N + 1):
            out, h = self.gru(self.inp(x.to(dev))[:, None], h)
            node_out = out[:, 0]
            reach = min(t, M)
            partners = t - 1 - torch.arange(reach)  # nearest first
            allowed = allowed_atoms(free[:, partners], t, N, check)
            a = self._draw(self.atom_head(node_out), allowed, g, temp)
            end = alive & (a == K)
            size[end] = t
            alive &= ~end
            if not alive.any():
                break
            live = alive.nonzero()[:, 0]
            atoms[live, t] = a[live]
            s = torch.zeros(B, M, dtype=torch.long)
            if t > 0:
                s[live, :reach] = self._sample_bonds(node_out[live.to(dev)], a[live], atoms[live][:, partners],
                                                     adj[live][:, partners].sum(2), free[live][:, partners],
                                                     val[a[live]], g, temp)
                adj[live[:, None], t, partners[None]] = s[live, :reach]
                adj[live[:, None], partners[None], t] = s[live, :reach]
                free[live[:, None], partners[None]] -= s[live, :reach]
            free[live, t] = val[a[live]] - s[live].sum(1)
            x = self.node_input(a.clamp(max=K - 1) * alive, s, torch.full((B,), reach))
        return [(atoms[b, :size[b]].numpy(), adj[b, :size[b], :size[b]].numpy().astype(np.uint8)) for b in range(B)]

    def _sample_bonds(self, node_out, atom, partner, partner_deg, partner_free, own, g, temp) -> torch.Tensor:
        """Bond orders (R, reach) of R new atoms (types `atom`, valences `own`) to their `reach`
        predecessors (types `partner`, bond-order sums `partner_deg`, free valences `partner_free`,
        each (R, reach)), masked by the valence check and the one-bond rule."""
        R, reach = partner.shape
        dev = node_out.device
        check = self.cfg.valence_check
        h = self.edge_state(node_out, atom.to(dev))
        prev = torch.full((R,), BONDS, dtype=torch.long)
        left = own.clone()  # the new atom's free valence
        bonded = torch.zeros(R, dtype=torch.bool)
        # can_later[:, k]: some partner after k could still take a single bond
        ok1 = partner_free >= 1 if check else torch.ones(R, reach, dtype=torch.bool)
        can_later = torch.cat([ok1.flip(1).cumsum(1).flip(1)[:, 1:] > 0, torch.zeros(R, 1, dtype=torch.bool)], 1)
        s = torch.zeros(R, reach, dtype=torch.long)
        for k in range(reach):
            x = self.edge_input(prev, partner[:, k], partner_deg[:, k], own - left)  # (R, edge_embed)
            o, h = self.edge_gru(x[:, None].to(dev), h)
            allowed = allowed_bonds(partner_free[:, k], left, bonded, can_later[:, k], check)
            b = self._draw(self.edge_head(o[:, 0]), allowed, g, temp)
            s[:, k] = b
            left -= b
            bonded |= b > 0
            prev = b
        return s

    @torch.no_grad()
    def sample_smiles(self, n: int, *, tokenizer=None, seed: int = 0, max_tokens: int | None = None,
                      batch_size: int = 256, temperature: float = 1.0, progress=None) -> list[str]:
        """n molecules as canonical SMILES ("" where RDKit refuses the graph), as
        genlab.data.molecules.sample_molecules documents; `tokenizer` and `max_tokens` do not
        apply (a molecule ends at "stop" or at max_nodes atoms)."""
        from genlab.seed import make_generator

        g = make_generator(seed)
        out: list[str] = []
        while len(out) < n:
            for atoms, adj in self.sample_graphs(min(batch_size, n - len(out)), generator=g,
                                                 batch_size=batch_size, temperature=temperature):
                out.append(graph_to_smiles(atoms, dense_bonds(adj)))
            if progress is not None:
                progress.set(len(out))
        return out

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator, labels=None) -> list[tuple[np.ndarray, np.ndarray]]:
        return self.sample_graphs(n, generator=generator)


from genlab.registry import register  # noqa: E402

register("molgraphrnn", MolGraphRNNConfig, MolGraphRNN)
