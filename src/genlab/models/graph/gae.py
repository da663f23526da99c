"""Graph autoencoders for link prediction (Kipf & Welling, 2016): a GCN or GAT encoder maps
node features and the message-passing graph to node embeddings z (VGAE: a Gaussian per node),
and an inner-product decoder scores a node pair as sigmoid(z_i . z_j).

Two reconstruction losses:
  - `recon=full` (the paper's code): weighted binary cross-entropy over all N^2 entries of
    A_train + I, positives weighted by pos_weight = (N^2 - E) / E and the mean scaled by
    norm = N^2 / (2 (N^2 - E)); KL = -(0.5 / N) mean_i sum_d (1 + 2 log s - mu^2 - s^2).
  - `recon=sampled` (PyG's GAE): BCE on the training edges and as many sampled non-edges;
    KL = -(0.5 / N) mean_i sum_d (...), the same term.
Held-out (val/test) batches are always scored on their positive and negative pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genlab.errors import ConfigError
from genlab.models.base import GenerativeModel

MAX_LOGSTD = 10.0  # as PyG's VGAE: exp(2 * logstd) stays finite


@dataclass
class GAEConfig:
    variational: bool = True  # VGAE (Gaussian embeddings, KL term) or GAE
    encoder: str = "gcn"  # gcn | gat
    hidden: int = 32  # width of the hidden layers
    latent_dim: int = 16
    layers: int = 2  # message-passing layers, the output layer included
    heads: int = 4  # gat: attention heads of the hidden layers (concatenated; hidden must divide)
    dropout: float = 0.0  # on the input of every layer
    recon: str = "full"  # full | sampled
    num_features: int | None = None  # from the data


def gcn_norm_dense(adj: torch.Tensor) -> torch.Tensor:
    """D^-1/2 (A + I) D^-1/2 of a dense adjacency (N, N): what a GCN layer multiplies by."""
    a = adj + torch.eye(len(adj), dtype=adj.dtype)
    d = a.sum(1).pow(-0.5)
    return d[:, None] * a * d[None, :]


def kl_term(mu: torch.Tensor, logstd: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, s^2) || N(0, I)) summed over dimensions, averaged over nodes, divided by N
    (the scaling of the VGAE paper's code and PyG)."""
    n = mu.shape[0]
    return -0.5 / n * torch.mean(torch.sum(1 + 2 * logstd - mu ** 2 - logstd.exp() ** 2, dim=1))


def full_recon_loss(z: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The VGAE paper's weighted BCE over every entry of A + I (A from the undirected edges `pos`,
    (2, E), each once), i.e. norm * mean(BCE(z z^T, A + I, pos_weight)), computed as a dense sum
    of softplus(logits) plus a correction on the positive entries only:
    BCE_w(l, 1) = pw * (softplus(l) - l), BCE(l, 0) = softplus(l)."""
    n = z.shape[0]
    idx = torch.arange(n, device=z.device)
    rows, cols = torch.cat([pos[0], pos[1], idx]), torch.cat([pos[1], pos[0], idx])  # entries of A + I
    e = rows.numel()
    pos_weight = (n * n - e) / e
    norm = n * n / (2 * (n * n - e))
    dense = F.softplus(z @ z.t()).sum()  # (N, N) logits, all taken as negatives
    lp = (z[rows] * z[cols]).sum(-1)  # (e,) logits of the positive entries
    correction = ((pos_weight - 1) * F.softplus(lp) - pos_weight * lp).sum()
    return norm * (dense + correction) / (n * n)


def pair_logits(z: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    return (z[pairs[0]] * z[pairs[1]]).sum(-1)


def sampled_recon_loss(z: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """BCE on positive pairs plus BCE on negative pairs (each a mean), as PyG's GAE.recon_loss."""
    lp, ln = pair_logits(z, pos), pair_logits(z, neg)
    return F.binary_cross_entropy_with_logits(lp, torch.ones_like(lp)) + \
        F.binary_cross_entropy_with_logits(ln, torch.zeros_like(ln))


class GraphEncoder(nn.Module):
    """`layers` GCNConv or GATConv layers (PyG), ReLU between them; the last layer is doubled
    into (mu, logstd) heads for a VGAE, as in the paper (shared first layer, two output GCNs)."""

    def __init__(self, cfg: GAEConfig):
        super().__init__()
        from genlab.extras import require

        require("torch_geometric", "graph", "GAE/VGAE models")
        from torch_geometric.nn import GATConv, GCNConv

        if cfg.encoder not in ("gcn", "gat"):
            raise ConfigError(f"model.encoder must be gcn or gat, got {cfg.encoder!r}")
        if cfg.layers < 1:
            raise ConfigError(f"model.layers must be >= 1, got {cfg.layers}")
        if cfg.encoder == "gat" and cfg.hidden % cfg.heads:
            raise ConfigError(f"model.hidden={cfg.hidden} must be divisible by model.heads={cfg.heads} for gat")
        self.dropout = cfg.dropout

        def conv(i: int, o: int, last: bool) -> nn.Module:
            if cfg.encoder == "gcn":
                return GCNConv(i, o, cached=False)
            return GATConv(i, o, heads=1) if last else GATConv(i, o // cfg.heads, heads=cfg.heads)

        dims = [cfg.num_features] + [cfg.hidden] * (cfg.layers - 1)
        self.hidden = nn.ModuleList(conv(dims[k], dims[k + 1], False) for k in range(cfg.layers - 1))
        self.mu = conv(dims[-1], cfg.latent_dim, True)
        self.logstd = conv(dims[-1], cfg.latent_dim, True) if cfg.variational else None

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        for layer in self.hidden:
            x = F.relu(layer(F.dropout(x, self.dropout, self.training), edge_index))  # (N, hidden)
        h = F.dropout(x, self.dropout, self.training)
        mu = self.mu(h, edge_index)  # (N, latent)
        logstd = self.logstd(h, edge_index).clamp(max=MAX_LOGSTD) if self.logstd is not None else None
        return mu, logstd


class GAE(GenerativeModel):
    """GAE / VGAE with an inner-product decoder."""

    family = "graph"
    task = "link"

    def __init__(self, cfg: GAEConfig):
        super().__init__()
        if cfg.num_features is None:
            raise ConfigError("the graph autoencoder needs model.num_features (taken from the data)")
        if cfg.recon not in ("full", "sampled"):
            raise ConfigError(f"model.recon must be full or sampled, got {cfg.recon!r}")
        self.cfg = cfg
        self.encoder = GraphEncoder(cfg)

    def embed(self, x: torch.Tensor, edge_index: torch.Tensor, *, sample: bool | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(z, mu, logstd): z = mu + s * eps in training (VGAE), mu otherwise."""
        mu, logstd = self.encoder(x, edge_index)
        sample = self.training if sample is None else sample
        if logstd is not None and sample:
            return mu + torch.randn_like(mu) * logstd.exp(), mu, logstd
        return mu, mu, logstd

    def loss(self, batch: dict[str, torch.Tensor], opt: str = "model") -> dict[str, torch.Tensor]:
        z, mu, logstd = self.embed(batch["x"], batch["edge_index"])
        if self.cfg.recon == "full" and "held_out" not in batch:
            recon = full_recon_loss(z, batch["pos"])
        else:
            recon = sampled_recon_loss(z, batch["pos"], batch["neg"])
        out = {"recon": recon}
        if logstd is not None:
            out["kl"] = kl_term(mu, logstd)
            out["loss"] = recon + out["kl"]
        else:
            out["loss"] = recon
        return out

    @torch.no_grad()
    def link_scores(self, x: torch.Tensor, edge_index: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        """sigmoid(mu_i . mu_j) for node pairs (2, P), using the mean embeddings."""
        _, mu, _ = self.embed(x, edge_index, sample=False)
        return torch.sigmoid(pair_logits(mu, pairs))

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator, labels=None) -> torch.Tensor:
        raise ConfigError("GAE/VGAE runs predict links between known nodes and draw no samples; "
                          "use `genlab evaluate RUN_DIR` for test AUC/AP")

from genlab.registry import register  # noqa: E402

register("gae", GAEConfig, GAE)
