"""Generating text from an autoregressive model: logits filters (pure functions), the
token loop with or without a cache, and a streaming text wrapper.

A model takes part through three members:
  - `forward_step(idx, state) -> (logits (B, T, V), state)`: logits for new tokens idx (B, T)
    that follow what `state` has seen (a GPT's KV cache, an LSTM's (h, c));
  - `init_state(batch)`: the empty state;
  - `context_limit`: the most tokens the model may see (a GPT's block size) or None.

The context window: the model sees tokens[start:]. When that grows past `context_limit`,
`start` jumps so that the newest `context_limit // 2` tokens stay (then the cache is
refilled from them once). The uncached path uses the same window, recomputing the whole
window for every token, so both paths compute the same logits and pick the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from genlab.errors import ConfigError


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0  # 0 = greedy
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the context

    def check(self) -> None:
        from genlab.options import check_number

        check_number("--temperature", self.temperature, lo=0)
        check_number("--top-k", self.top_k, lo=1, integer=True)
        check_number("--top-p", self.top_p, lo=0, hi=1, lo_open=True)
        check_number("--repetition-penalty", self.repetition_penalty, lo=0, lo_open=True)


# --------------------------------------------------------------------------- filters (pure)


def apply_repetition_penalty(logits: torch.Tensor, context: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty: logits (B, V) of tokens present in context (B, L) are divided by
    `penalty` when positive and multiplied by it when negative."""
    if penalty == 1.0 or context.numel() == 0:
        return logits
    seen = logits.gather(1, context)  # (B, L)
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(1, context, seen)


def top_k_filter(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Keep the k largest logits of each row (B, V); the rest become -inf."""
    if k is None or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float | None) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability
    reaches p (always at least the top one); the rest become -inf. logits (B, V)."""
    if p is None or p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    probs = sorted_logits.softmax(-1)
    before = probs.cumsum(-1) - probs  # mass of the tokens ranked above each one
    drop_sorted = before >= p
    drop_sorted[..., 0] = False  # the top one, also when p underflows float32 to 0
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def next_token(logits: torch.Tensor, context: torch.Tensor, s: SamplingConfig,
               generator: torch.Generator | None) -> torch.Tensor:
    """Pick the next token (B, 1) from the last-position logits (B, V)."""
    logits = apply_repetition_penalty(logits.float(), context, s.repetition_penalty)
    logits = logits.clamp(max=torch.finfo(logits.dtype).max)  # a tiny penalty overflows float32 to inf
    if s.temperature == 0:
        return logits.argmax(-1, keepdim=True)
    scaled = logits / s.temperature
    if not bool(torch.isfinite(scaled.max(-1).values).all()) or bool(scaled.isnan().any()):
        # so tiny a temperature overflows float32 (the limit T -> 0 of the softmax is greedy)
        return logits.argmax(-1, keepdim=True)
    logits = top_p_filter(top_k_filter(scaled, s.top_k), s.top_p)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)  # (B, 1)


# --------------------------------------------------------------------------- the token loop


@torch.no_grad()
def generate_ids(model, prompt: torch.Tensor, max_new_tokens: int, sampling: SamplingConfig = SamplingConfig(),
                 *, generator: torch.Generator | None = None, use_cache: bool = True) -> Iterator[torch.Tensor]:
    """Yield the next token (B, 1) for each of `max_new_tokens` steps after prompt (B, T0).
    Sampling draws from `generator` only, so a seed fixes the text."""
    sampling.check()
    B, T0 = prompt.shape
    if T0 < 1:
        raise ConfigError("the prompt must encode to at least one token")
    was_training = model.training
    model.eval()
    limit = model.context_limit
    dev = next(model.parameters()).device
    ids = prompt.to(dev)
    start = max(0, T0 - limit) if limit else 0
    try:
        state = model.init_state(B) if use_cache else None
        logits, state = model.forward_step(ids[:, start:], state)
        for _ in range(max_new_tokens):
            tok = next_token(logits[:, -1], ids[:, start:], sampling, generator)  # (B, 1)
            ids = torch.cat([ids, tok], dim=1)
            yield tok
            if limit and ids.shape[1] - start > limit:
                start = ids.shape[1] - limit // 2  # the window jumps; refill from the newest half
                refill = True
            else:
                refill = not use_cache
            if refill:
                logits, state = model.forward_step(ids[:, start:], model.init_state(B) if use_cache else None)
            else:
                logits, state = model.forward_step(tok, state)
    finally:
        model.train(was_training)


def generate(model, prompt: torch.Tensor, max_new_tokens: int, sampling: SamplingConfig = SamplingConfig(),
             *, generator: torch.Generator | None = None, use_cache: bool = True) -> torch.Tensor:
    """prompt (B, T0) -> prompt followed by max_new_tokens generated tokens (B, T0 + n)."""
    new = list(generate_ids(model, prompt, max_new_tokens, sampling, generator=generator, use_cache=use_cache))
    return torch.cat([prompt.to(new[0].device) if new else prompt, *new], dim=1)


def stream_text(model, tokenizer, prompt: str, max_new_tokens: int, sampling: SamplingConfig = SamplingConfig(),
                *, seed: int = 0, stop: str | None = None, use_cache: bool = True) -> Iterator[str]:
    """Yield the continuation of `prompt` piece by piece, ending before `stop` if it appears.
    Pieces are whole characters (byte-level BPE tokens may split one)."""
    from genlab.seed import make_generator

    ids = tokenizer.encode(prompt)
    g = make_generator(seed)
    new: list[int] = []
    emitted = ""
    for tok in generate_ids(model, torch.tensor([ids]), max_new_tokens, sampling, generator=g, use_cache=use_cache):
        new.append(int(tok))
        text = tokenizer.decode(new)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its next byte
            continue
        if stop and stop in text:
            yield text[len(emitted):text.index(stop)] if text.index(stop) > len(emitted) else ""
            return
        # hold back a tail that could be the start of the stop string
        hold = max((k for k in range(1, len(stop)) if text.endswith(stop[:k])), default=0) if stop else 0
        ready = text[:len(text) - hold]
        if len(ready) > len(emitted):
            yield ready[len(emitted):]
            emitted = ready
    text = tokenizer.decode(new)
    if len(text) > len(emitted):
        yield text[len(emitted):]
