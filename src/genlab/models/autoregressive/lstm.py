"""A character/token LSTM language model: embedding, multi-layer LSTM with dropout between
layers, a linear head (optionally tied to the embedding). Generation carries the LSTM state,
so each new token costs one step."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genlab.errors import ConfigError
from genlab.models.base import GenerativeModel
from genlab.registry import register


@dataclass
class LSTMConfig:
    vocab_size: int | None = None  # from the data's tokenizer
    block_size: int = 128  # training window (truncated back-propagation length)
    n_embd: int = 128
    hidden: int = 512
    n_layer: int = 2
    dropout: float = 0.2
    tie_weights: bool = False  # needs n_embd == hidden


class LSTM(GenerativeModel):
    family = "text"
    context_limit = None  # the state summarises any length of context

    def __init__(self, cfg: LSTMConfig):
        super().__init__()
        if not cfg.vocab_size:
            raise ConfigError("lstm needs model.vocab_size (taken from the data's tokenizer)")
        if cfg.tie_weights and cfg.n_embd != cfg.hidden:
            raise ConfigError(f"model.tie_weights needs model.n_embd == model.hidden, got {cfg.n_embd} and {cfg.hidden}")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.rnn = nn.LSTM(cfg.n_embd, cfg.hidden, num_layers=cfg.n_layer, batch_first=True,
                           dropout=cfg.dropout if cfg.n_layer > 1 else 0.0)
        self.head = nn.Linear(cfg.hidden, cfg.vocab_size)
        if cfg.tie_weights:
            self.head.weight = self.embed.weight

    def forward(self, idx: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None):
        """idx (B, T) -> (logits (B, T, V), (h, c) each (n_layer, B, hidden))."""
        x = self.drop(self.embed(idx))  # (B, T, E)
        y, state = self.rnn(x, state)  # (B, T, H)
        return self.head(self.drop(y)), state

    def loss(self, batch: dict[str, torch.Tensor], opt: str = "model") -> dict[str, torch.Tensor]:
        logits, _ = self(batch["x"])  # (B, T, V)
        return {"loss": F.cross_entropy(logits.flatten(0, 1).float(), batch["y"].flatten())}

    # --- the generation protocol (see autoregressive/generation.py)
    def init_state(self, batch: int):
        return None  # nn.LSTM starts from zeros

    def forward_step(self, idx: torch.Tensor, state):
        return self(idx, state)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator, labels: torch.Tensor | None = None) -> torch.Tensor:
        raise ConfigError("text models sample from a prompt: use genlab sample RUN --prompt TEXT")

register("lstm", LSTMConfig, LSTM)
