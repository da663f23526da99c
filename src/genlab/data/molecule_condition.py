"""Property-conditioned molecule corpora: goal-directed generation for the SMILES GPT and LSTM.

With `data.condition=qed` (or logp, sa, weight) every molecule of the corpus is prefixed by one
token naming the quantile bin of its property, `<qed:7>`, so the language model learns
p(molecule | bin); sampling starts a row from "\\n<qed:9>" instead of "\\n" and asks for a
molecule of the top bin. The tokens cannot collide with SMILES or SELFIES tokens (neither
uses "<"), and they are appended after the run's SMILES tokens, so those keep the ids an
unconditioned run gives them.

`data.condition_bins` quantile bins of the training molecules' property: bin k holds the values
in [edges[k], edges[k+1]), the first and last bins open towards -inf and +inf (a generated
molecule may leave the training range). The edges are stored in the run's data.json
(`molecules.condition`), so sampling and evaluation use the bins training used.

The property (genlab.metrics.molecules.properties, the functions the MOSES property metrics
use) of every molecule of a file is computed once and cached beside the canonical SMILES, under
the same key plus the property's name: QED or SA of the 1.58M MOSES molecules takes many minutes.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genlab.errors import ConfigError

log = logging.getLogger("genlab")

CONDITION_PROPERTIES = ("logp", "qed", "sa", "weight")  # genlab.metrics.molecules.PROPERTIES
CONDITION_TOKEN = r"<[a-z]+:\d+>"  # the regex alternative the molecule tokenizers match first


def condition_token(prop: str, k: int) -> str:
    """The corpus token of bin k of property `prop`: <qed:7>."""
    return f"<{prop}:{k}>"


def is_condition_token(token: str) -> bool:
    return re.fullmatch(CONDITION_TOKEN, token) is not None


def bin_edges(values: np.ndarray, bins: int) -> np.ndarray:
    """The bins+1 quantile edges (linear interpolation, NumPy's default) of `values`: edges[0] is
    the minimum, edges[-1] the maximum, so each bin holds about len(values)/bins of them."""
    if bins < 2:
        raise ConfigError(f"data.condition_bins must be >= 2, got {bins}")
    if len(values) < bins:
        raise ConfigError(f"{len(values)} training molecules cannot fill data.condition_bins={bins} bins; "
                          "use fewer bins or more molecules")
    return np.quantile(np.asarray(values, np.float64), np.linspace(0.0, 1.0, bins + 1))


def bin_of(values, edges) -> np.ndarray:
    """The bin index (0..len(edges)-2) of each value: k with edges[k] <= v < edges[k+1], the
    outer bins open-ended (a value at the maximum is in the top bin)."""
    inner = np.asarray(edges, np.float64)[1:-1]
    return np.searchsorted(inner, np.asarray(values, np.float64), side="right")


@dataclass
class Condition:
    """A run's property bins: which property, the quantile edges of its training molecules and
    how many training molecules each bin holds."""

    prop: str
    edges: list[float]
    train_counts: list[int]

    @property
    def bins(self) -> int:
        return len(self.edges) - 1

    @property
    def tokens(self) -> list[str]:
        return [condition_token(self.prop, k) for k in range(self.bins)]

    def bounds(self, k: int) -> tuple[float, float]:
        """[lo, hi) of bin k, with the outer bins open (-inf, +inf)."""
        lo = -np.inf if k == 0 else self.edges[k]
        hi = np.inf if k == self.bins - 1 else self.edges[k + 1]
        return float(lo), float(hi)

    def base_rate(self, k: int) -> float:
        """Share of the training molecules in bin k: what an unconditioned model that matches
        the training distribution would score."""
        return self.train_counts[k] / sum(self.train_counts)

    def resolve(self, value: str | float) -> int:
        """The bin `genlab sample --condition VALUE` asks for: `bin:K`, or a property value inside
        the training range (ConfigError otherwise)."""
        text = str(value).strip()
        if text.lower().startswith("bin:"):
            try:
                k = int(text[4:])
            except ValueError:
                k = -1
            if not 0 <= k < self.bins:
                raise ConfigError(f"--condition {text}: this run has bins 0..{self.bins - 1} of {self.prop}")
            return k
        try:
            v = float(text)
        except ValueError:
            raise ConfigError(f"--condition expects a {self.prop} value or bin:K, got {text!r}") from None
        lo, hi = self.edges[0], self.edges[-1]
        if not lo <= v <= hi:
            raise ConfigError(f"--condition {text} is outside the {self.prop} range of the training molecules, "
                              f"{lo:.4g}..{hi:.4g}; give a value inside it or bin:K (K in 0..{self.bins - 1})")
        return int(bin_of([v], self.edges)[0])

    def meta(self) -> dict:
        return {"property": self.prop, "bins": self.bins, "edges": self.edges, "tokens": self.tokens,
                "train_counts": self.train_counts}

    @classmethod
    def from_meta(cls, d: dict) -> "Condition":
        return cls(d["property"], list(d["edges"]), list(d["train_counts"]))


def fit_condition(prop: str, bins: int, train_values: np.ndarray) -> Condition:
    """The bins of `prop` over the training molecules' values."""
    edges = bin_edges(train_values, bins)
    counts = np.bincount(bin_of(train_values, edges), minlength=bins)
    if (counts == 0).any():  # ties (e.g. molecular weights) can make two edges equal
        log.warning("data.condition=%s: %d of %d bins hold no training molecule (tied values); their tokens "
                    "are never seen in training", prop, int((counts == 0).sum()), bins)
    return Condition(prop, [float(e) for e in edges], [int(c) for c in counts])


def run_condition(meta: dict) -> Condition | None:
    """The Condition a molecule run was trained with (its data.json), or None."""
    d = (meta or {}).get("molecules", {}).get("condition")
    return Condition.from_meta(d) if d else None


def prefix(texts: list[str], values: np.ndarray, cond: Condition) -> list[str]:
    """Each molecule's text behind its bin token: "<qed:7>CCO"."""
    tokens = cond.tokens
    return [tokens[k] + t for k, t in zip(bin_of(values, cond.edges), texts)]


# --------------------------------------------------------------------------- the property cache


def cached_property(cache_key: str, prop: str, smiles: list[str]) -> np.ndarray:
    """`prop` of each molecule of `smiles` (a file's canonical valid molecules), read from or
    written to genlab's cache as molecules/{cache_key}-{prop}.npy, beside the canonical SMILES
    (cache_key is theirs: the file, its size and mtime, the subset, the RDKit version)."""
    from genlab.data.datasets import cache_dir
    from genlab.metrics.molecules import properties

    if prop not in CONDITION_PROPERTIES:
        raise ConfigError(f"data.condition must be one of {', '.join(CONDITION_PROPERTIES)}, got {prop!r}")
    path = cache_dir() / "molecules" / f"{cache_key}-{prop}.npy"
    if path.is_file():
        try:
            values = np.load(path)
            if values.shape == (len(smiles),):
                return values
        except (OSError, ValueError):
            pass  # a damaged entry is rebuilt
    t0 = time.perf_counter()
    values = properties(smiles, names=(prop,))[prop]
    log.info("computed %s of %d molecules in %.1f s (cached for later runs)", prop, len(smiles),
             time.perf_counter() - t0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"tmp{os.getpid()}-{path.name}")
    with open(tmp, "wb") as f:
        np.save(f, values)
    os.replace(tmp, path)
    return values


def check_condition_tokens(tokens: list[str], cond: Condition, source: Path | str) -> None:
    """A resumed or fine-tuned run's tokenizer must hold this condition's bin tokens."""
    missing = [t for t in cond.tokens if t not in tokens]
    if missing:
        raise ConfigError(f"the tokenizer of {source} has no {', '.join(missing[:3])} token(s): it was trained "
                          f"without data.condition={cond.prop} (or with other bins); keep the run's data.condition "
                          "and data.condition_bins")
