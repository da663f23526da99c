"""Attention maps of a GPT, per layer and head, and next-token probabilities along a text.

The GPT computes attention with `F.scaled_dot_product_attention`, which returns only the
weighted values. The weights are recomputed here from each block's own projections, exactly as
that call forms them: softmax(q k^T / sqrt(head size) + causal mask), with rotary positions
applied to q and k when the model uses them; each block's input comes from running the model's
blocks in order. (`attention_output` multiplies them back into the values and through the
block's output projection: the tests check that this equals the block's attention output.)
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from genlab.errors import ConfigError
from genlab.explain.common import ExplainOptions, Part, figure_png, pyplot

SHOWN = 64  # tokens drawn in the figures (the last ones of the text)
TOP = 3  # most likely next tokens recorded per position


def reason(run) -> str | None:
    """None for GPT runs, else why attention maps do not apply."""
    from genlab.models.autoregressive.gpt import GPT

    return None if isinstance(run.model, GPT) else "attention maps need a GPT run (a transformer)"


def _qkv(attn, h: torch.Tensor, rope) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A CausalSelfAttention's queries, keys and values (B, nh, T, hs) of its input h (B, T, C),
    with rotary positions applied to q and k when `rope` (cos, sin) is given."""
    from genlab.models.autoregressive.gpt import apply_rope

    B, T, _ = h.shape
    nh, hs = attn.n_head, attn.head_size
    q, k, v = attn.c_attn(h).split(nh * hs, dim=2)  # 3 x (B, T, A)
    q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
    k = k.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
    v = v.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
    if rope is not None:
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    return q, k, v


@torch.no_grad()
def attention_probs(attn, h: torch.Tensor, rope=None) -> torch.Tensor:
    """Attention weights of one CausalSelfAttention on its input h (B, T, C) -> (B, nh, T, T):
    row i holds how much query i takes from each key j (0 for j > i), summing to 1."""
    q, k, _ = _qkv(attn, h, rope)
    T = h.shape[1]
    scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(attn.head_size)  # (B, nh, T, T)
    future = torch.ones(T, T, dtype=torch.bool, device=h.device).triu(1)  # (T, T) keys after the query
    return scores.masked_fill(future, float("-inf")).softmax(dim=-1)


@torch.no_grad()
def attention_output(attn, h: torch.Tensor, probs: torch.Tensor, rope=None) -> torch.Tensor:
    """The attention's output (B, T, C) from weights probs (B, nh, T, T): what the block adds to
    its residual stream (dropout off)."""
    _, _, v = _qkv(attn, h, rope)
    B, T, _ = h.shape
    y = (probs.to(v.dtype) @ v).transpose(1, 2).reshape(B, T, attn.n_head * attn.head_size)  # (B, T, A)
    return attn.c_proj(y)


def _embed(model, idx: torch.Tensor):
    """The GPT's input to its first block (B, T, C) and its rotary tables (or None), as its forward."""
    from genlab.models.autoregressive.gpt import rope_tables

    T = idx.shape[1]
    pos = torch.arange(T, device=idx.device)
    x = model.wte(idx)  # (B, T, C)
    if model.wpe is not None:
        return x + model.wpe(pos), None
    return x, rope_tables(pos, model.cfg.head_dim)


@torch.no_grad()
def attention_maps(model, idx: torch.Tensor) -> torch.Tensor:
    """Every layer's and head's attention weights for tokens idx (B, T), T <= block size.

    Returns:
        (L, B, nh, T, T): zero above the diagonal (causal), rows summing to 1.
    """
    if idx.shape[1] > model.cfg.block_size:
        raise ConfigError(f"{idx.shape[1]} tokens exceed the model's context of {model.cfg.block_size}")
    was = model.training
    model.eval()
    try:
        x, rope = _embed(model, idx)
        maps = []
        for i, block in enumerate(model.blocks):
            maps.append(attention_probs(block.attn, block.ln_1(x), rope))
            x = block(x, None, i, rope)
    finally:
        model.train(was)
    return torch.stack(maps)


@torch.no_grad()
def next_token_probabilities(model, idx: torch.Tensor, k: int = TOP) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """How likely the model found each token of idx (1, T) after the ones before it.

    Returns:
        (p (T - 1,): p(token t + 1 | tokens <= t); top ids (T - 1, k) and their probabilities
        (T - 1, k): the k most likely next tokens at each position).
    """
    logp = F.log_softmax(model(idx)[0].float(), dim=-1)  # (T, V)
    p = logp[:-1].gather(1, idx[0, 1:, None])[:, 0].exp()  # (T - 1,)
    top_p, top_i = logp[:-1].exp().topk(min(k, logp.shape[-1]), dim=-1)  # (T - 1, k)
    return p.cpu(), top_i.cpu(), top_p.cpu()


def mean_distance(maps: torch.Tensor) -> torch.Tensor:
    """How far back each head looks: sum_j p_ij (i - j), averaged over queries i (and batch),
    from maps (L, B, nh, T, T) -> (L, nh) tokens."""
    T = maps.shape[-1]
    back = (torch.arange(T)[:, None] - torch.arange(T)[None, :]).clamp(min=0).to(maps)  # (T, T) i - j
    return (maps * back).sum(-1).mean(dim=(1, 3))


def _show(token: str) -> str:
    """A token as an axis label: newlines and spaces made visible."""
    return token.replace("\n", "\\n").replace(" ", "\u00b7") or "\u2205"


def attention_png(maps: torch.Tensor, tokens: list[str]) -> bytes:
    """A grid of heat maps, one per layer (rows) and head (columns), of maps (L, nh, T, T)."""
    plt = pyplot()
    L, nh, T, _ = maps.shape
    cell = 2.2 if T <= 24 else 3.2
    fig, axes = plt.subplots(L, nh, figsize=(cell * nh + 0.6, cell * L + 0.4), squeeze=False)
    labels = [_show(t) for t in tokens]
    for i in range(L):
        for j in range(nh):
            ax = axes[i][j]
            ax.imshow(maps[i, j].numpy(), cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"layer {i} head {j}", fontsize=8)
            if T <= 40:
                ax.set_xticks(range(T), labels, fontsize=5, rotation=90)
                ax.set_yticks(range(T), labels, fontsize=5)
            else:
                ax.set_xticks([])
                ax.set_yticks([])
    fig.tight_layout()
    return figure_png(fig)


def next_token_png(p: np.ndarray, tokens: list[str]) -> bytes:
    """Bars of p(token | the text before it) along the text; tokens[i] is the i-th predicted one."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(min(24, 2 + 0.17 * len(p)), 3.0))
    ax.bar(np.arange(len(p)), p, color=plt.get_cmap("RdYlGn")(p))
    ax.set_xticks(range(len(p)), [_show(t) for t in tokens], fontsize=6)
    ax.set_ylim(0, 1)
    ax.set_ylabel("p(token | before)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return figure_png(fig)


def explain_attention(run, o: ExplainOptions) -> Part:
    """Generate o.max_tokens after o.prompt (seed o.seed), then draw the attention maps over the
    text (its last SHOWN tokens) and the probability the model gave each token of it."""
    model, tok = run.model, run.tokenizer
    prompt = "\n" if o.prompt is None else o.prompt
    generated = "".join(run.generate(prompt, o.max_tokens, seed=o.seed))
    ids = tok.encode(prompt + generated)[-model.cfg.block_size:]
    if len(ids) < 2:
        raise ConfigError("attention maps need a text of at least 2 tokens; give a longer --prompt or --max-tokens")
    idx = torch.tensor([ids], device=run.device)
    maps = attention_maps(model, idx)[:, 0].float().cpu()  # (L, nh, T, T)
    p, top_i, top_p = next_token_probabilities(model, idx)
    tokens = [tok.decode([i]) for i in ids]
    s = min(SHOWN, len(ids))
    part = Part()
    L, nh, T = maps.shape[0], maps.shape[1], maps.shape[-1]
    shown = "the whole text" if s == T else f"the last {s} of its {T} tokens (rows also attend to earlier ones)"
    part.figures.append(("attention-maps.png",
                         f"attention weights per layer (rows) and head (columns) over {shown}; row i: how much "
                         "token i takes from each earlier token (causal: nothing above the diagonal)",
                         attention_png(maps[:, :, -s:, -s:], tokens[-s:])))
    sp = min(SHOWN, len(p))
    part.figures.append(("attention-next-token.png",
                         f"the probability the model gave each of the last {sp} tokens of the text after the ones "
                         "before it (prompt and generated continuation)",
                         next_token_png(p[-sp:].numpy(), tokens[-sp:])))
    dist = mean_distance(maps[:, None])
    part.record = {
        "prompt": prompt, "generated": generated, "tokens": T, "layers": L, "heads": nh, "seed": o.seed,
        "mean_distance": [[round(v, 3) for v in row] for row in dist.tolist()],
        "mean_log_prob": round(float(p.clamp(min=1e-30).log().mean()), 6),
        "next_token": [{"token": tokens[t + 1], "p": round(float(p[t]), 6),
                        "top": [[tok.decode([int(i)]), round(float(q), 6)] for i, q in zip(top_i[t], top_p[t])]}
                       for t in range(len(p))]}
    far = dist.flatten().argmax().item()
    part.summary.append(f"attention: {L} layers x {nh} heads over {T} tokens; mean p(next token) {float(p.mean()):.3f}; "
                        f"the head looking furthest back is layer {far // nh} head {far % nh} "
                        f"({float(dist.flatten()[far]):.1f} tokens on average)")
    return part
