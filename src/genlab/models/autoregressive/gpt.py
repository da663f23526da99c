"""A GPT: token + position embeddings, pre-norm transformer blocks with causal attention
(`scaled_dot_product_attention`; one query as products and sums in the compiled step), a final
LayerNorm and a head tied to the token embedding (nanoGPT's shape, GPT-2's init). A KV cache
makes generating n tokens cost n single-token forward passes; in inference those take a leaner
path (`_decode_one`: the same arithmetic in fewer tensor operations), which `compile_decode`
hands to torch.compile, alone and as chunks of K steps with their token picks in one graph
(`decode_chunk`): a small model's step at batch 1 costs per operation and per call, not per
multiply."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genlab.errors import ConfigError
from genlab.models.autoregressive.generation import gumbel_pick
from genlab.models.base import GenerativeModel
from genlab.registry import register


@dataclass
class GPTConfig:
    vocab_size: int | None = None  # from the data's tokenizer
    block_size: int = 256  # context length (training windows and the generation window)
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.2
    bias: bool = False  # biases in Linear layers and LayerNorms
    position: str = "learned"  # learned (a table, as GPT-2) | rope (rotary, on queries and keys)
    # Narrower layers than the defaults (a structurally pruned run: heads and MLP units removed).
    head_size: int | None = None  # per head; None: n_embd // n_head
    mlp_hidden: int | None = None  # MLP hidden units; None: 4 * n_embd

    @property
    def head_dim(self) -> int:
        """The width of one attention head (n_head of them make the attention's inner width)."""
        return self.head_size or self.n_embd // self.n_head

    @property
    def mlp_dim(self) -> int:
        """The MLP's hidden width."""
        return self.mlp_hidden or 4 * self.n_embd


class KVCache:
    """Keys and values of the tokens seen so far, per layer: preallocated (B, nh, block, hs)
    buffers (zeroed: the compiled step attends over whole buffers, masking the unfilled part)
    and a fill count."""

    def __init__(self, n_layer: int, B: int, n_head: int, block_size: int, head_size: int,
                 device: torch.device, dtype: torch.dtype):
        shape = (B, n_head, block_size, head_size)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.length = 0  # tokens stored (advanced once all layers have written)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nh, T, hs) after the cached tokens; return all keys/values so far."""
        end = self.length + k.shape[2]
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]  # (B, nh, L+T, hs)


def rope_tables(positions: torch.Tensor, head_size: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (T, hs/2) of the rotary angles pos * base^(-2i/hs)."""
    inv = base ** (-torch.arange(0, head_size, 2, dtype=torch.float32, device=positions.device) / head_size)
    ang = positions.float()[:, None] * inv[None, :]  # (T, hs/2)
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of x (..., T, hs) by the angles of each position
    (cos, sin: (T, hs/2)); x may hold queries and keys together, (2, B, nh, T, hs)."""
    x1, x2 = x.float().chunk(2, dim=-1)  # 2 x (B, nh, T, hs/2)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


def _packed(idx: torch.Tensor) -> torch.Tensor:
    """idx with its rows packed (strides (T, 1)): a compiled step given a slice of a longer
    tensor (other strides) would compile a second graph."""
    return idx.clone(memory_format=torch.contiguous_format)


class CausalSelfAttention(nn.Module):
    """n_head heads of head_dim each; their inner width A = n_head * head_dim is n_embd unless
    heads were pruned away."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.head_size, self.dropout = cfg.n_head, cfg.head_dim, cfg.dropout
        inner = cfg.n_head * cfg.head_dim
        self.c_attn = nn.Linear(cfg.n_embd, 3 * inner, bias=cfg.bias)  # q, k, v, each head-major
        self.c_proj = nn.Linear(inner, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, T, C = x.shape
        hs = self.head_size
        A = self.n_head * hs
        qk, v = self.c_attn(x).view(B, T, 3, self.n_head, hs).permute(2, 0, 3, 1, 4).split([2, 1])
        if rope is not None:  # queries and keys rotated at once (keys are cached already rotated)
            qk = apply_rope(qk, *rope)  # (2, B, nh, T, hs)
        q, k = qk.unbind(0)  # 2 x (B, nh, T, hs)
        v = v[0]  # (B, nh, T, hs)
        past = cache.length if cache is not None else 0
        if cache is not None:
            k, v = cache.append(layer, k, v)  # (B, nh, past+T, hs)
        if past == 0:
            mask, causal = None, True
        elif T == 1:  # one new token attends to everything before it
            mask, causal = None, False
        else:  # new token i (at position past+i) sees keys 0..past+i
            mask = torch.arange(past + T, device=x.device)[None, :] <= (past + torch.arange(T, device=x.device))[:, None]
            causal = False  # (T, past+T) boolean mask
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, A)  # (B, T, A)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, cfg.mlp_dim, bias=cfg.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(cfg.mlp_dim, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, rope=None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer, rope)
        return x + self.mlp(self.ln_2(x))


class GPT(GenerativeModel):
    family = "text"

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if not cfg.vocab_size:
            raise ConfigError("gpt needs model.vocab_size (taken from the data's tokenizer)")
        if cfg.head_size is None and cfg.n_embd % cfg.n_head:
            raise ConfigError(f"model.n_embd={cfg.n_embd} must be divisible by model.n_head={cfg.n_head}")
        for name in ("head_size", "mlp_hidden"):
            if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
                raise ConfigError(f"model.{name} must be >= 1 (or null for the default), got {getattr(cfg, name)}")
        if cfg.position not in ("learned", "rope"):
            raise ConfigError(f"model.position must be learned or rope, got {cfg.position!r}")
        if cfg.position == "rope" and cfg.head_dim % 2:
            raise ConfigError(f"rope needs an even head size, got {cfg.head_dim}")
        if not 0 <= cfg.dropout < 1:
            raise ConfigError(f"model.dropout must be in [0, 1), got {cfg.dropout}")
        self.cfg = cfg
        self.context_limit = cfg.block_size
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.position == "learned" else None
        self._rope: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}  # rotary tables per device
        self._rope_rows: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}  # the same, for _decode_one
        self._compiled_decode = None  # compile_decode's step
        self._compiled_chunk = None  # and its chunk of steps (decode_chunk)
        self._compiled_refill = None  # and the forward pass over half a window (generation's refill)
        self.chunk_size = 0  # tokens per decode_chunk call in generation; 0: one step at a time
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        # The output head is tied to the token embedding: logits = h @ wte.weight^T (no second
        # parameter, so checkpoints hold each tensor once).
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled by 1/sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def _rope_tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin (block_size, hs/2) of every position, made once per device and kept out of
        the state dict and of `.to(dtype)` (they stay float32 whatever the weights are)."""
        if device not in self._rope:  # ordinary tensors even when first made under inference_mode
            with torch.inference_mode(False), torch.no_grad():
                self._rope[device] = rope_tables(torch.arange(self.cfg.block_size, device=device), self.cfg.head_dim)
        return self._rope[device]

    def _rope_whole(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The rotary tables laid out to rotate whole head vectors: c = [cos, cos] and
        s = [-sin, sin] (block_size, hs), so that rot(x) = x * c + roll(x, hs/2) * s. Each half
        is the products and sum apply_rope computes (a + b and b + a, a - b and a + (-b) are the
        same float), so both give the same bits. Made once per device, as ordinary tensors like
        `_rope_tables`'s."""
        if device not in self._rope_rows:
            cos, sin = self._rope_tables(device)
            with torch.inference_mode(False), torch.no_grad():
                self._rope_rows[device] = torch.cat([cos, cos], -1), torch.cat([-sin, sin], -1)
        return self._rope_rows[device]

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits (B, T, V) for tokens idx (B, T) that follow the `cache.length` cached ones."""
        B, T = idx.shape
        past = cache.length if cache is not None else 0
        if past + T > self.cfg.block_size:
            raise ConfigError(f"{past + T} tokens exceed the context of {self.cfg.block_size}")
        if T == 1 and cache is not None and not self.training:  # generation's step: the lean path
            if self._compiled_decode is None:
                logits = self._decode_one(idx, past, cache.k, cache.v)
            else:
                logits = self._compiled_decode(_packed(idx), torch.tensor([past], device=idx.device), cache.k, cache.v)
            cache.length += 1
            return logits
        if self._compiled_refill is not None and cache is not None and past == 0 and not self.training \
                and T == self.cfg.block_size // 2:  # generation's window refill: one shape, compiled
            logits = self._compiled_refill(_packed(idx), cache, 0)
        else:
            logits = self._forward(idx, cache, past)
        if cache is not None:
            cache.length += T
        return logits

    def _forward(self, idx: torch.Tensor, cache: KVCache | None, past: int) -> torch.Tensor:
        B, T = idx.shape
        x = self.wte(idx)  # (B, T, C)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(past, past + T, device=idx.device))
        else:
            cos, sin = self._rope_tables(idx.device)
            rope = cos[past:past + T], sin[past:past + T]  # 2 x (T, hs/2)
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i, rope)
        return F.linear(self.ln_f(x), self.wte.weight)  # (B, T, V)

    def _decode_one(self, idx: torch.Tensor, pos: int | torch.Tensor, keys: list[torch.Tensor],
                    values: list[torch.Tensor]) -> torch.Tensor:
        """Logits (B, 1, V) of one new token per row, idx (B, 1), at position `pos` after the
        cached ones (keys/values: the KVCache's per-layer (B, nh, block, hs) buffers, written
        here), in eval mode. forward's arithmetic in fewer tensor operations (458 against 537
        aten calls per step for gpt-shakespeare-cpu's shape): rows stay (B, C), the new key and
        value go straight into the cache, queries and keys rotate together by two whole-vector
        products, no dropout calls; with an int `pos` the logits and cache equal the plain
        forward's to the bit (tests compare).

        With `pos` a (1,) tensor (the compiled step and `decode_chunk`) the position is data, so
        one graph serves every position: attention runs over the whole block with the later
        positions masked (KVCache starts zeroed, so they hold finite numbers)."""
        B = len(idx)
        nh, hs = self.cfg.n_head, self.cfg.head_dim
        static = isinstance(pos, torch.Tensor)
        x = self.wte(idx[:, 0])  # (B, C)
        if self.wpe is not None:
            x = x + self.wpe.weight[pos]
        else:
            c, s = (t[pos] for t in self._rope_whole(idx.device))  # 2 x (hs,) or (1, hs)
        if static:
            later = torch.arange(self.cfg.block_size, device=idx.device)[None] > pos  # (1, block)
        for i, block in enumerate(self.blocks):
            qkv = block.attn.c_attn(block.ln_1(x)).view(B, 3, nh, hs)
            qk, v = qkv[:, :2], qkv[:, 2]  # (B, 2, nh, hs), (B, nh, hs)
            if self.wpe is None:
                f = qk.float()
                qk = (f * c + f.roll(hs // 2, -1) * s).type_as(qk)
            q = qk[:, 0, :, None]  # (B, nh, 1, hs)
            if static:
                keys[i].index_copy_(2, pos, qk[:, 1, :, None])
                values[i].index_copy_(2, pos, v[:, :, None])
                # attention of one query as products and sums, which fuse into the compiled graph
                # (scaled_dot_product_attention would be a kernel call of its own per layer)
                att = (q * keys[i]).sum(-1) * hs ** -0.5  # (B, nh, block)
                att = att.masked_fill(later, float("-inf")).softmax(-1)
                y = (att[..., None] * values[i]).sum(-2)  # (B, nh, hs)
            else:
                keys[i][:, :, pos] = qk[:, 1]
                values[i][:, :, pos] = v
                y = F.scaled_dot_product_attention(q, keys[i][:, :, :pos + 1], values[i][:, :, :pos + 1])
            x = x + block.attn.c_proj(y.reshape(B, nh * hs))  # y (B, nh, 1, hs) or static (B, nh, hs)
            m = block.mlp
            x = x + m.c_proj(m.gelu(m.c_fc(block.ln_2(x))))
        return F.linear(self.ln_f(x), self.wte.weight)[:, None]  # (B, 1, V)

    def decode_chunk(self, idx: torch.Tensor, cache: KVCache, noise: torch.Tensor, sampling) -> torch.Tensor:
        """Feed tokens idx (B, 1) at the cache's end and pick the next len(noise) tokens (B, K),
        each fed back for the next: K one-token steps and their picks at `sampling`'s temperature
        (generation.gumbel_pick, with the Gumbel noise (K, B, V) drawn by the caller; generation
        uses chunks only without top-k / top-p) in one call, so a compiled chunk
        pays Python's and the compiler's per-call costs once per K tokens. The caller checks
        that the cache has room for K more."""
        K = len(noise)
        temperature = torch.tensor(sampling.temperature or 1.0, device=idx.device)  # 0: noise is zeros
        step = self._compiled_chunk or self._decode_chunk
        out = step(_packed(idx), torch.tensor([cache.length], device=idx.device), cache.k, cache.v, noise, temperature)
        cache.length += K
        return out

    def _decode_chunk(self, idx: torch.Tensor, pos: torch.Tensor, keys: list[torch.Tensor],
                      values: list[torch.Tensor], noise: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
        picks = []
        for j in range(len(noise)):
            logits = self._decode_one(idx, pos + j, keys, values)[:, 0].float()  # (B, V)
            idx = gumbel_pick(logits, noise[j], temperature)  # (B, 1)
            picks.append(idx)
        return torch.cat(picks, 1)

    def compile_decode(self, chunk: int = 8) -> GPT:
        """torch.compile the one-token step (`genlab sample RUN --prompt P --compile`) and a
        chunk of `chunk` steps with their picks (`decode_chunk`, which generation then uses
        for plain-temperature sampling), and the forward pass over half a window from an empty
        cache (generation's refill; any forward of that shape with a cache takes it): one graph
        per batch size each, made on first use (seconds to a minute or two each, faster when
        inductor's on-disk cache has them; on CPU it needs a C++ compiler), then each token costs
        a fraction of the eager step. Logits agree with the eager step to float rounding, not to
        the bit (masked whole-block attention)."""
        if chunk < 0:
            raise ConfigError(f"the decode chunk must be >= 0 tokens (0: none), got {chunk}")
        self._compiled_decode = torch.compile(self._decode_one, fullgraph=True, dynamic=False)
        self._compiled_chunk = torch.compile(self._decode_chunk, fullgraph=True, dynamic=False) if chunk else None
        self._compiled_refill = torch.compile(self._forward, fullgraph=True, dynamic=False)
        self.chunk_size = chunk
        return self

    def loss(self, batch: dict[str, torch.Tensor], opt: str = "model") -> dict[str, torch.Tensor]:
        logits = self(batch["x"])  # (B, T, V)
        ce = F.cross_entropy(logits.flatten(0, 1).float(), batch["y"].flatten())
        return {"loss": ce}

    # --- the generation protocol (see autoregressive/generation.py)
    def init_state(self, batch: int) -> KVCache:
        p = self.wte.weight
        return KVCache(self.cfg.n_layer, batch, self.cfg.n_head, self.cfg.block_size,
                       self.cfg.head_dim, p.device, p.dtype)

    def forward_step(self, idx: torch.Tensor, state: KVCache | None) -> tuple[torch.Tensor, KVCache | None]:
        return self(idx, state), state

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator, labels: torch.Tensor | None = None) -> torch.Tensor:
        raise ConfigError("text models sample from a prompt: use genlab sample RUN --prompt TEXT")

register("gpt", GPTConfig, GPT)
