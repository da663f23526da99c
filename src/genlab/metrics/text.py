"""Text metrics: cross-entropy conversions (perplexity, bits per character), BLEU, ROUGE-L
and distinct-n.

BLEU is sacrebleu's corpus BLEU with its defaults (13a tokenisation, exp smoothing), the
number papers report, given as a fraction (0-1) instead of sacrebleu's 0-100. ROUGE-L is
Google's rouge-score F-measure per pair, averaged over pairs.
"""

from __future__ import annotations

import math

from genlab.errors import ShapeError


def perplexity(mean_nll_nats: float) -> float:
    """exp of the mean per-token negative log-likelihood in nats."""
    return math.exp(mean_nll_nats)


def bits_per_char(total_nll_nats: float, n_chars: int) -> float:
    """Total NLL (nats) of a text over its number of characters, in bits per character.
    For a char-level model this is mean NLL / ln 2; for BPE the tokens' total is spread
    over the characters they cover."""
    if n_chars <= 0:
        raise ShapeError("bits_per_char needs at least one character")
    return total_nll_nats / (n_chars * math.log(2))


def _check_pairs(hypotheses: list[str], references: list[str]) -> None:
    if len(hypotheses) != len(references) or not hypotheses:
        raise ShapeError(f"need as many references as hypotheses (>= 1), got {len(hypotheses)} and {len(references)}")


def bleu(hypotheses: list[str], references: list[str]) -> float:
    """Corpus BLEU (sacrebleu defaults) of hypotheses against one reference each, 0-1."""
    from genlab.extras import require

    sacrebleu = require("sacrebleu", "text", "the bleu metric")

    _check_pairs(hypotheses, references)
    return sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score / 100.0


def rouge_l(hypotheses: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F-measure (rouge-score, no stemming), 0-1."""
    from genlab.extras import require

    rouge_scorer = require("rouge_score.rouge_scorer", "text", "the rouge_l metric")

    _check_pairs(hypotheses, references)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    return sum(scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hypotheses, references)) / len(hypotheses)


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams over all n-grams of whitespace tokens across `texts` (0-1; higher =
    more diverse). 0 when there is no n-gram at all."""
    grams = [tuple(t[i:i + n]) for t in (s.split() for s in texts) for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0
