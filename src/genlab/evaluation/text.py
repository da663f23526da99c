"""Text metrics for a trained text run: likelihood on held-out text and the quality and
diversity of generated continuations.

- `val_loss` (nats/token), `perplexity`, `bits_per_char`: the mean cross-entropy of the model
  on random windows of the **val split** (text runs hold out the last 10% of the corpus as
  val and have no test split), each window scored at every position, as nanoGPT estimates
  its val loss (but over ~131k tokens, not 20 x 12 windows). Bits per character spread the
  tokens' total NLL over the characters they cover (for a char tokenizer: mean / ln 2).
- `bleu`, `rouge_l`: n held-out prompts (random val windows of block_size // 2 tokens, at
  most 64) are continued by 128 tokens of ancestral sampling (temperature 1, no filtering,
  KV cache) and scored against the true 128-token continuations (sacrebleu corpus BLEU,
  ROUGE-L F-measure; 0-1).
- `distinct_2`: distinct word bigrams over all word bigrams of those continuations.
Everything is a function of `seed`.
"""

from __future__ import annotations

import time

import torch

from genlab.errors import ConfigError
from genlab.metrics.text import bits_per_char, bleu, distinct_n, perplexity, rouge_l
from genlab.models.autoregressive.generation import SamplingConfig, generate
from genlab.progress import Progress
from genlab.seed import derive_seed, make_generator

METRICS = ("val_loss", "perplexity", "bits_per_char", "bleu", "rouge_l", "distinct_2")
LIKELIHOOD = {"val_loss", "perplexity", "bits_per_char"}
GENERATION = {"bleu", "rouge_l", "distinct_2"}
EVAL_TOKENS = 131_072  # tokens scored for val_loss: 2,048 windows of 64, 512 of 256
CONTINUATION = 128  # tokens generated per held-out prompt


@torch.no_grad()
def mean_nll(model, data, split: str, n_windows: int, seed: int, batch_size: int = 64) -> float:
    """Mean next-token cross-entropy (nats/token) over n_windows random windows of `split`."""
    g = make_generator(derive_seed(seed, "val_loss"))
    total, count = 0.0, 0
    dev = next(model.parameters()).device
    with Progress("scoring", n_windows, unit="windows") as bar:
        for i in range(0, n_windows, batch_size):
            b = data.random_batch(split, min(batch_size, n_windows - i), generator=g, device=dev)
            out = model.loss(b)["loss"]
            total += float(out) * b["y"].numel()
            count += b["y"].numel()
            bar.set(i + len(b["y"]))
    return total / count


@torch.no_grad()
def continuations(model, data, split: str, n: int, seed: int, prompt_len: int, new_tokens: int,
                  batch_size: int = 50) -> tuple[list[str], list[str]]:
    """(generated, true) continuations of n random held-out prompts, decoded to text."""
    ids = data.split(split)
    if len(ids) <= prompt_len + new_tokens:
        raise ConfigError(f"the {split} split has {len(ids)} tokens, too few for prompts of {prompt_len} "
                          f"plus {new_tokens} tokens")
    g = make_generator(derive_seed(seed, "prompts"))
    starts = torch.randint(0, len(ids) - prompt_len - new_tokens, (n,), generator=g)  # (n,)
    windows = ids[starts[:, None] + torch.arange(prompt_len + new_tokens)]  # (n, P+N)
    gen_g = make_generator(derive_seed(seed, "continuations"))
    dev = next(model.parameters()).device
    hyps, refs = [], []
    with Progress("generating", n, unit="continuations") as bar:
        for i in range(0, n, batch_size):
            w = windows[i:i + batch_size]
            with bar.part(i, len(w)):  # moved token by token inside generate
                out = generate(model, w[:, :prompt_len].to(dev), new_tokens, SamplingConfig(temperature=1.0),
                               generator=gen_g)
            hyps += [data.tokenizer.decode(r[prompt_len:].tolist()) for r in out.cpu()]
            refs += [data.tokenizer.decode(r[prompt_len:].tolist()) for r in w]
    return hyps, refs


def evaluate_text(run, *, n: int | None, seed: int, metrics: list[str] | None) -> dict[str, dict]:
    """The text metrics of a loaded text run (genlab.engine.run.load) as report entries
    {name: {"value", "extractor": None, "n", "seed", "seconds", ...}}. `n`: held-out prompts
    for bleu/rouge_l/distinct_2 (default 100); val_loss always scores EVAL_TOKENS tokens."""
    wanted = list(metrics) if metrics else list(METRICS)
    unknown = [m for m in wanted if m not in METRICS]
    if unknown:
        raise ConfigError(f"unknown text metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    n = n or 100
    data = run.data()
    model = run.model.eval()
    T = data.block_size
    out: dict[str, dict] = {}

    def entry(value: float, count: int, secs: float, **extra) -> dict:
        return {"value": float(value), "extractor": None, "n": int(count), "seed": seed, "seconds": round(secs, 3),
                **extra}

    if LIKELIHOOD & set(wanted):
        t0 = time.perf_counter()
        n_windows = max(1, EVAL_TOKENS // T)
        nll = mean_nll(model, data, "val", n_windows, seed)
        secs = time.perf_counter() - t0
        tokens = n_windows * T
        chars_per_token = data.n_chars["val"] / len(data.val_x)
        values = {"val_loss": nll, "perplexity": perplexity(nll),
                  "bits_per_char": bits_per_char(nll * tokens, round(tokens * chars_per_token))}
        for k in LIKELIHOOD & set(wanted):
            out[k] = entry(values[k], tokens, secs, split="val",
                           **({"unit": "nats/token"} if k == "val_loss" else {}))
    if GENERATION & set(wanted):
        t0 = time.perf_counter()
        prompt_len = min(64, max(1, T // 2))
        hyps, refs = continuations(model, data, "val", n, seed, prompt_len, CONTINUATION)
        secs = time.perf_counter() - t0
        values = {"bleu": lambda: bleu(hyps, refs), "rouge_l": lambda: rouge_l(hyps, refs),
                  "distinct_2": lambda: distinct_n(hyps, 2)}
        for k in GENERATION & set(wanted):
            t1 = time.perf_counter()
            v = values[k]()
            out[k] = entry(v, n, secs + time.perf_counter() - t1, split="val", prompt_tokens=prompt_len,
                           continuation_tokens=CONTINUATION, sampling="temperature 1.0")
    return {k: out[k] for k in wanted}
