"""Generating text from an autoregressive model: logits filters (pure functions), the
token loop with or without a cache, and a streaming text wrapper.

A model takes part through three members, and optionally a pair more:
  - `forward_step(idx, state) -> (logits (B, T, V), state)`: logits for new tokens idx (B, T)
    that follow what `state` has seen (a GPT's KV cache, an LSTM's (h, c));
  - `init_state(batch)`: the empty state;
  - `context_limit`: the most tokens the model may see (a GPT's block size) or None;
  - `chunk_size` and `decode_chunk(tok, state, noise, sampling) -> (B, chunk_size)` tokens:
    a compiled GPT feeds a token and picks the next chunk_size in one call (the picks in-graph,
    by `gumbel_pick` with the noise drawn here), while the window has room and the sampling is
    plain temperature (no top-k / top-p: each value would compile a graph of its own; no
    repetition penalty or constraint, which need the context).

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
from genlab.progress import advance


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
               generator: torch.Generator | None, constraint=None) -> torch.Tensor:
    """Pick the next token (B, 1) from the last-position logits (B, V). `constraint`: an object
    with mask() -> (B, V) bool of the allowed tokens (the others get probability 0) and
    update(tok), told each pick (e.g. genlab.data.smiles_syntax.SmilesSyntax)."""
    tok = _pick(logits, context, s, generator, None if constraint is None else constraint.mask())
    if constraint is not None:
        constraint.update(tok)
    return tok


def _pick(logits: torch.Tensor, context: torch.Tensor, s: SamplingConfig, generator: torch.Generator | None,
          allowed: torch.Tensor | None) -> torch.Tensor:
    logits = apply_repetition_penalty(logits.float(), context, s.repetition_penalty)
    if allowed is not None:
        logits = logits.masked_fill(~allowed, -torch.inf)
    if s.temperature == 0:
        return logits.clamp(max=torch.finfo(logits.dtype).max).argmax(-1, keepdim=True)
    noise = gumbel_noise(logits.shape, generator, logits.device)
    return gumbel_pick(logits, noise, torch.tensor(s.temperature, device=logits.device), s.top_k, s.top_p)


def gumbel_noise(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Gumbel(0, 1) noise -log(E), E ~ Exp(1), drawn from `generator` (on its own device, then
    moved): `gumbel_pick` adds it to the logits. E is kept above the smallest normal float so the
    noise stays finite (a masked -inf logit stays -inf)."""
    gen_device = generator.device if generator is not None else device
    e = torch.empty(shape, device=gen_device).exponential_(generator=generator)
    return e.clamp_(min=torch.finfo(e.dtype).tiny).log_().neg_().to(device)


def gumbel_pick(logits: torch.Tensor, noise: torch.Tensor, temperature: torch.Tensor, top_k: int | None = None,
                top_p: float | None = None) -> torch.Tensor:
    """A draw (B, 1) from softmax(logits / temperature) (B, V) after the top-k and top-p filters,
    by the Gumbel-max trick: argmax(logits / T + noise) with `gumbel_noise`. Pure tensor code
    with no host sync, so a compiled decode step (GPT.decode_chunk) picks its tokens in-graph
    the same way. A temperature so small that logits / T overflow float32 (in any row) gives the
    greedy pick for the whole batch, the limit T -> 0."""
    logits = logits.clamp(max=torch.finfo(logits.dtype).max)  # a tiny penalty overflows float32 to inf
    scaled = logits / temperature
    overflow = ~torch.isfinite(scaled.amax(-1)).all() | scaled.isnan().any()
    drawn = (top_p_filter(top_k_filter(scaled, top_k), top_p) + noise).argmax(-1, keepdim=True)
    return torch.where(overflow, logits.argmax(-1, keepdim=True), drawn)


# --------------------------------------------------------------------------- the token loop


@torch.no_grad()
def generate_ids(model, prompt: torch.Tensor, max_new_tokens: int, sampling: SamplingConfig = SamplingConfig(),
                 *, generator: torch.Generator | None = None, use_cache: bool = True,
                 constraint=None) -> Iterator[torch.Tensor]:
    """Yield the next token (B, 1) for each of `max_new_tokens` steps after prompt (B, T0).
    Sampling draws from `generator` only, so a seed fixes the text. `constraint`: as next_token's."""
    sampling.check()
    was_training = model.training
    model.eval()
    try:
        ids, logits, state, start = _first_pass(model, prompt, use_cache)
        limit, k = model.context_limit, 0
        plain = sampling.repetition_penalty == 1.0 and sampling.top_k is None and sampling.top_p is None
        chunk = getattr(model, "chunk_size", 0) if use_cache and constraint is None and plain and limit else 0
        while k < max_new_tokens:
            new = next_token(logits[:, -1], ids[:, start:], sampling, generator, constraint)  # (B, 1)
            while True:
                for j in range(new.shape[1]):
                    tok = new[:, j:j + 1]  # (B, 1)
                    ids = torch.cat([ids, tok], dim=1)
                    k += 1
                    advance(k, max_new_tokens)  # progress within the caller's batch (genlab.progress)
                    yield tok
                if k == max_new_tokens:
                    return
                # the cache holds the window but its newest token: room for `chunk` more inputs?
                if not chunk or k + chunk > max_new_tokens or ids.shape[1] - start - 1 + chunk > limit:
                    break
                new = model.decode_chunk(tok, state, _chunk_noise(sampling, chunk, logits, generator),
                                         sampling)  # (B, chunk)
            logits, state, start = _advance(model, ids, tok, state, start, use_cache)
    finally:
        model.train(was_training)


def _chunk_noise(sampling: SamplingConfig, n: int, logits: torch.Tensor, generator: torch.Generator | None):
    """The Gumbel noise (n, B, V) of n picks in a row, drawn as n single picks draw it (so a
    chunked generation follows the same random stream); zeros for greedy decoding."""
    B, V = logits.shape[0], logits.shape[-1]
    if sampling.temperature == 0:
        return torch.zeros(n, B, V, device=logits.device)
    return torch.stack([gumbel_noise((B, V), generator, logits.device) for _ in range(n)])


def _first_pass(model, prompt: torch.Tensor, use_cache: bool):
    """The prompt (B, T0)'s forward pass, over its newest context_limit tokens.
    Returns (ids on the model's device, logits (B, T, V), state, start of the window)."""
    B, T0 = prompt.shape
    if T0 < 1:
        raise ConfigError("the prompt must encode to at least one token")
    limit = model.context_limit
    ids = prompt.to(next(model.parameters()).device)
    start = max(0, T0 - limit) if limit else 0
    return (ids, *model.forward_step(ids[:, start:], model.init_state(B) if use_cache else None), start)


def _advance(model, ids: torch.Tensor, tok: torch.Tensor, state, start: int, use_cache: bool):
    """The forward pass after token(s) tok (B, 1) joined ids (B, T): just the new token with the
    cache, or the whole window when there is no cache or the window is full (it then jumps so
    that the newest half stays, and the cache is refilled from it once).
    Returns (logits (B, T', V), state, start of the window)."""
    limit = model.context_limit
    if limit and ids.shape[1] - start > limit:
        start = ids.shape[1] - limit // 2
    elif use_cache:
        return (*model.forward_step(tok, state), start)
    return (*model.forward_step(ids[:, start:], model.init_state(len(ids)) if use_cache else None), start)


def generate(model, prompt: torch.Tensor, max_new_tokens: int, sampling: SamplingConfig = SamplingConfig(),
             *, generator: torch.Generator | None = None, use_cache: bool = True) -> torch.Tensor:
    """prompt (B, T0) -> prompt followed by max_new_tokens generated tokens (B, T0 + n)."""
    new = list(generate_ids(model, prompt, max_new_tokens, sampling, generator=generator, use_cache=use_cache))
    return torch.cat([prompt.to(new[0].device) if new else prompt, *new], dim=1)


@torch.no_grad()
def generate_rows(model, prompt: torch.Tensor, max_new_tokens: list[int], sampling: list[SamplingConfig],
                  generators: list[torch.Generator | None], *, done: list[bool],
                  use_cache: bool = True) -> Iterator[list[int | None]]:
    """Several requests' `generate_ids` in lockstep, one forward pass per step for all rows of
    prompt (B, T0). The prompts have equal length, so every row's context window jumps at the
    same step. Row i draws from its own logits with sampling[i] and generators[i], in the order
    generate_ids would for it alone, so its tokens equal the alone ones whenever the batched
    logits equal the single ones. Each step yields every row's token, None for a row that is
    done: it has max_new_tokens[i] tokens or the caller set done[i] (the caller's way to end a
    row early). A done row stays in the batch (masked: a filler token, never sampled) so the
    cache keeps its shape; the loop ends when every row is done."""
    B = len(prompt)
    for s in sampling:
        s.check()
    was_training = model.training
    model.eval()

    def live(step: int) -> list[int]:
        return [i for i in range(B) if not done[i] and step < max_new_tokens[i]]

    try:
        ids, logits, state, start = _first_pass(model, prompt, use_cache)  # logits (B, T, V)
        step = 0
        while rows := live(step):
            tok = logits[:, -1].argmax(-1, keepdim=True)  # (B, 1); the filler of done rows
            for i in rows:
                tok[i] = next_token(logits[i:i + 1, -1], ids[i:i + 1, start:], sampling[i], generators[i])[0]
            ids = torch.cat([ids, tok], dim=1)
            yield [int(tok[i]) if i in rows else None for i in range(B)]
            step += 1
            if not live(step):
                return  # no row needs the next pass
            logits, state, start = _advance(model, ids, tok, state, start, use_cache)
    finally:
        model.train(was_training)


class TextPieces:
    """One request's new tokens -> its text pieces: whole characters (byte-level BPE tokens may
    split one), ending before `stop` if it appears (then `done`). `add` each token, then
    `finish` when the tokens run out."""

    def __init__(self, tokenizer, stop: str | None):
        self.tokenizer, self.stop = tokenizer, stop
        self.new: list[int] = []
        self.emitted = ""
        self.done = False

    def add(self, tok: int) -> list[str]:
        self.new.append(tok)
        text = self.tokenizer.decode(self.new)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its next byte
            return []
        stop = self.stop
        if stop and stop in text:
            self.done = True
            return [text[len(self.emitted):text.index(stop)] if text.index(stop) > len(self.emitted) else ""]
        # hold back a tail that could be the start of the stop string
        hold = max((k for k in range(1, len(stop)) if text.endswith(stop[:k])), default=0) if stop else 0
        ready = text[:len(text) - hold]
        if len(ready) > len(self.emitted):
            piece, self.emitted = ready[len(self.emitted):], ready
            return [piece]
        return []

    def finish(self) -> list[str]:
        self.done = True
        text = self.tokenizer.decode(self.new)
        return [text[len(self.emitted):]] if len(text) > len(self.emitted) else []


def stream_text(model, tokenizer, prompt: str, max_new_tokens: int, sampling: SamplingConfig = SamplingConfig(),
                *, seed: int = 0, stop: str | None = None, use_cache: bool = True) -> Iterator[str]:
    """Yield the continuation of `prompt` piece by piece, ending before `stop` if it appears.
    Pieces are whole characters (byte-level BPE tokens may split one)."""
    from genlab.seed import make_generator

    ids = tokenizer.encode(prompt)
    g = make_generator(seed)
    out = TextPieces(tokenizer, stop)
    for tok in generate_ids(model, torch.tensor([ids]), max_new_tokens, sampling, generator=g, use_cache=use_cache):
        yield from out.add(int(tok))
        if out.done:
            return
    yield from out.finish()
