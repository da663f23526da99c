"""Splitting a training set among K clients. Every partitioner returns K sorted index arrays
that together hold each training example exactly once (a partition), and is a pure function
of its arguments (the seed included), so a client process recomputes its own shard.

- `iid`: a random permutation cut into K near-equal parts;
- `dirichlet`: label skew (Hsu et al., 2019): for each class, the shares of its examples that
  go to the K clients are drawn from Dir(alpha); small alpha (0.1) gives clients that hold
  one or two classes, large alpha (100) approaches iid;
- `classes`: each client holds `classes_per_client` classes (McMahan et al.'s pathological
  non-iid split): each class is cut into as many pieces as clients that hold it;
- `speaker`: whole speakers per client (audio with speaker names, e.g. FSDD), so a client's
  voices never appear at another client.

A text run's training split is one token stream: `iid` cuts it into K contiguous pieces (each
client holds its own stretch of the corpus, e.g. different plays or molecules); the label-based
partitions do not apply.
"""

from __future__ import annotations

import numpy as np

from genlab.errors import ConfigError


def _check(n: int, k: int) -> None:
    if k < 1:
        raise ConfigError(f"the number of clients must be >= 1, got {k}")
    if n < k:
        raise ConfigError(f"{n} training examples cannot be split among {k} clients: use fewer clients")


def iid(n: int, k: int, seed: int) -> list[np.ndarray]:
    _check(n, k)
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(p) for p in np.array_split(perm, k)]


def dirichlet(labels: np.ndarray, k: int, alpha: float, seed: int, min_size: int = 1) -> list[np.ndarray]:
    """Label-skewed shards; redrawn (up to 100 times) until every client holds >= min_size examples."""
    labels = np.asarray(labels)
    _check(len(labels), k)
    rng = np.random.default_rng(seed)
    for _ in range(100):
        shards: list[list[np.ndarray]] = [[] for _ in range(k)]
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            p = rng.dirichlet(np.full(k, alpha))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(int)
            for i, part in enumerate(np.split(idx, cuts)):
                shards[i].append(part)
        out = [np.sort(np.concatenate(s)) for s in shards]
        if min(len(s) for s in out) >= min_size:
            return out
    raise ConfigError(f"Dirichlet alpha={alpha} left a client without data in 100 draws; raise alpha or use "
                      "fewer clients")


def by_classes(labels: np.ndarray, k: int, per_client: int, seed: int) -> list[np.ndarray]:
    """Client i holds classes (i * per_client + j) mod C for j < per_client (classes spread evenly)."""
    labels = np.asarray(labels)
    _check(len(labels), k)
    classes = np.unique(labels)
    if per_client > len(classes):
        raise ConfigError(f"classes_per_client={per_client} but the data has {len(classes)} classes")
    if k * per_client < len(classes):
        raise ConfigError(f"{k} clients x {per_client} classes cannot cover the {len(classes)} classes: raise "
                          "classes_per_client or clients")
    rng = np.random.default_rng(seed)
    holders: dict[int, list[int]] = {int(c): [] for c in classes}
    for i in range(k):
        for j in range(per_client):
            holders[int(classes[(i * per_client + j) % len(classes)])].append(i)
    shards: list[list[np.ndarray]] = [[] for _ in range(k)]
    for c, who in holders.items():
        idx = rng.permutation(np.flatnonzero(labels == c))
        for i, part in zip(who, np.array_split(idx, len(who))):
            shards[i].append(part)
    return [np.sort(np.concatenate(s)) if s else np.zeros(0, np.int64) for s in shards]


def by_speaker(speakers: list[str] | None, k: int, seed: int) -> list[np.ndarray]:
    """Speakers dealt round-robin (in a seeded random order) to the clients."""
    if not speakers:
        raise ConfigError("partition: speaker needs data with speaker names (e.g. data.dataset=fsdd); use iid, "
                          "dirichlet or classes")
    names = sorted(set(speakers))
    if len(names) < k:
        raise ConfigError(f"the data has {len(names)} speakers, fewer than the {k} clients: use fewer clients")
    order = np.random.default_rng(seed).permutation(len(names))
    client_of = {names[s]: i % k for i, s in enumerate(order)}
    owner = np.array([client_of[s] for s in speakers])
    return [np.flatnonzero(owner == i) for i in range(k)]


def partition(data, k: int, how: str, *, seed: int, alpha: float = 0.5, classes_per_client: int = 2
              ) -> list[np.ndarray]:
    """The K shards of `data`'s training split (an ImageData or AudioData)."""
    n = len(data.train_x)
    if getattr(data, "family", None) == "text":
        if how != "iid":
            raise ConfigError(f"a text run's training split is one token stream without labels: partition iid "
                              f"(contiguous pieces), got {how}")
        _check(n, k)
        return [np.asarray(p) for p in np.array_split(np.arange(n), k)]
    labels = None if getattr(data, "train_y", None) is None else data.train_y.numpy()
    if how in ("dirichlet", "classes") and labels is None:
        raise ConfigError(f"partition: {how} splits by label, and this data has none: use iid")
    if how == "iid":
        return iid(n, k, seed)
    if how == "dirichlet":
        return dirichlet(labels, k, alpha, seed)
    if how == "classes":
        return by_classes(labels, k, classes_per_client, seed)
    if how == "speaker":
        return by_speaker(getattr(data, "speakers", {}).get("train"), k, seed)
    raise ConfigError(f"unknown partition {how!r}")
