"""Text data: a UTF-8 corpus (a file or a folder of files), a character or byte-level BPE
tokenizer trained on it, and the token ids of each split as one contiguous tensor from which
training draws random windows.

The split is nanoGPT's: the first 90% of the text (by characters) trains, the last 10%
validates; there is no test split. The tokenizer is saved in the run directory
(`tokenizer.json`) and reloaded from there on resume and for sampling, so a run always
decodes with the vocabulary it was trained with.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genlab.errors import ConfigError, DataError

log = logging.getLogger("genlab")

DEFAULT_CORPUS = "shakespeare/input.txt"


# --------------------------------------------------------------------------- tokenizers


class CharTokenizer:
    """One id per distinct character of the corpus (sorted by code point)."""

    kind = "char"

    def __init__(self, chars: list[str]):
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def train(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            bad = sorted({c for c in text if c not in self.stoi})
            shown = ", ".join(repr(c) for c in bad[:5])
            raise DataError(f"the text has {len(bad)} character(s) outside this run's {self.vocab_size}-character "
                            f"vocabulary ({shown}); use only characters of the training corpus") from None

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def to_json(self) -> str:
        return json.dumps({"genlab_tokenizer": "char", "chars": self.chars}, ensure_ascii=False)


class BPETokenizer:
    """Byte-level BPE (GPT-2 style) from the Hugging Face `tokenizers` library: any UTF-8
    text encodes, and decode(encode(t)) == t."""

    kind = "bpe"

    def __init__(self, tok):
        self.tok = tok

    @classmethod
    def train(cls, text: str, vocab_size: int) -> "BPETokenizer":
        from genlab.extras import require

        require("tokenizers", "text", "data.tokenizer=bpe")
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False, special_tokens=[])
        # Train on lines in chunks (the trainer takes an iterator of strings).
        chunk = 1 << 16
        tok.train_from_iterator((text[i:i + chunk] for i in range(0, len(text), chunk)), trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(list(ids))

    def to_json(self) -> str:
        return self.tok.to_str()


Tokenizer = CharTokenizer | BPETokenizer


def tokenizer_from_json(text: str) -> Tokenizer:
    d = json.loads(text)
    if d.get("genlab_tokenizer") == "char":
        return CharTokenizer(d["chars"])
    if d.get("genlab_tokenizer") in ("smiles", "selfies"):  # molecule runs (genlab.data.molecules)
        from genlab.data.molecules import MoleculeTokenizer

        return MoleculeTokenizer(d["genlab_tokenizer"], d["tokens"], kekulize=d.get("kekulize", False))
    from genlab.extras import require

    HFTokenizer = require("tokenizers", "text", "a BPE-tokenized text run").Tokenizer

    return BPETokenizer(HFTokenizer.from_str(text))


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    path = Path(path)
    try:
        return tokenizer_from_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"cannot read the tokenizer {path} ({type(e).__name__}); the run directory is damaged") from None


def train_tokenizer(kind: str, text: str, vocab_size: int) -> Tokenizer:
    if kind == "char":
        return CharTokenizer.train(text)
    if kind == "bpe":
        if vocab_size < 257:
            raise ConfigError(f"data.vocab_size must be >= 257 for byte-level BPE (256 bytes + merges), got {vocab_size}")
        return BPETokenizer.train(text, vocab_size)
    raise ConfigError(f"data.tokenizer must be char or bpe, got {kind!r}")


# --------------------------------------------------------------------------- corpus


def read_corpus(path: Path) -> str:
    """A UTF-8 file, or every file of a folder (recursively, sorted by path) joined by newlines."""
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file() and not f.name.startswith("."))
        if not files:
            raise DataError(f"the corpus folder {path} holds no files")
    elif path.is_file():
        files = [path]
    else:
        raise DataError(f"text corpus {path} not found; set data.path to a UTF-8 file or folder "
                        "(relative to the data root) or pass --data-root")
    parts = []
    for f in files:
        try:
            parts.append(f.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(f"{f} is not UTF-8 text (byte {e.start}); convert it or remove it from the corpus") from None
        except OSError as e:
            raise DataError(f"cannot read {f}: {e}") from None
    text = "\n".join(parts)
    if not text:
        raise DataError(f"the corpus {path} is empty")
    return text


def _encode_cached(tok: Tokenizer, text: str) -> torch.Tensor:
    """Token ids of `text` as int64, cached on disk by (text, tokenizer) for BPE, where
    encoding a megabyte takes seconds; character encoding is faster than the cache."""
    if tok.kind == "char":
        lut = np.full(max(map(ord, tok.chars)) + 1, -1, dtype=np.int64)
        lut[[ord(c) for c in tok.chars]] = np.arange(len(tok.chars))
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        if codes.size and (codes.max() >= len(lut) or (lut[codes] < 0).any()):
            tok.encode(text)  # raises with the offending characters
        return torch.from_numpy(lut[codes].copy())
    from genlab.data.datasets import cache_dir

    key = hashlib.sha256(text.encode() + b"\0" + tok.to_json().encode()).hexdigest()[:24]
    return cached_ids(cache_dir() / "text" / f"{key}.npy", lambda: np.asarray(tok.encode(text), dtype=np.int32))


def cached_ids(path: Path, compute, save: bool = True) -> torch.Tensor:
    """Token ids (int64) from the .npy cache file `path`, or `compute()`d (an integer array, in
    the dtype to store) and saved atomically when `save`; a damaged cache file is recomputed."""
    if path.is_file():
        try:
            return torch.from_numpy(np.load(path).astype(np.int64))
        except (OSError, ValueError):
            pass
    ids = compute()
    if save:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
        np.save(tmp, ids)
        os.replace(tmp, path)
    return torch.from_numpy(ids.astype(np.int64))


# --------------------------------------------------------------------------- dataset


@dataclass
class TextData:
    """Token ids of each split as one 1-D int64 tensor (`train_x`, `val_x`, `test_x`; the
    `_x` names match ImageData so the engine reads splits the same way), the tokenizer, and
    the window length `block_size` that batches use."""

    train_x: torch.Tensor
    val_x: torch.Tensor
    test_x: torch.Tensor
    tokenizer: Tokenizer
    block_size: int
    source: str
    n_chars: dict[str, int]  # characters of text behind each split (for bits per character)
    train_y = val_y = test_y = None  # no labels
    family = "text"

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def split(self, name: str) -> torch.Tensor:
        return getattr(self, f"{name}_x")

    def num_windows(self, split: str) -> int:
        """Distinct windows of block_size + 1 tokens (input plus shifted target) in a split."""
        return max(0, len(self.split(split)) - self.block_size)

    def random_batch(self, split: str, n: int, *, generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """n random windows: {"x": (n, T) inputs, "y": (n, T) next tokens}, offsets drawn from
        `generator` (torch's global generator when None, which the engine seeds per micro-batch)."""
        ids, T = self.split(split), self.block_size
        if self.num_windows(split) < 1:
            raise DataError(f"the {split} split has {len(ids)} tokens, too few for windows of "
                            f"{T + 1}; use a bigger corpus or a smaller model.block_size")
        ix = torch.randint(0, len(ids) - T, (n,), generator=generator)  # (n,)
        chunk = ids[ix[:, None] + torch.arange(T + 1)]  # (n, T+1)
        return {"x": chunk[:, :-1].to(device, non_blocking=True), "y": chunk[:, 1:].to(device, non_blocking=True)}

    # ------------------------------------------------------------ what the engine draws from
    unit = "tokens"

    @property
    def per_example(self) -> int:
        return self.block_size

    def feeder(self, pipeline, batch_size: int, seed: int) -> "TextData":
        """Text has no epochs: every micro-batch draws random windows, so the data is its own feeder."""
        return self

    def train_batch(self, b: int, shard: int, micro: int, device) -> dict[str, torch.Tensor]:
        """`micro` random windows from torch's global generator (seeded by the engine per micro-batch)."""
        return self.random_batch("train", micro, device=device)

    def eval_size(self, split: str) -> int:
        return len(self.split(split))

    def num_eval_batches(self, split: str, batch_size: int) -> int:
        """As many windows as the split has tokens / block_size."""
        return -(-(self.num_windows(split) // self.block_size) // batch_size)

    def eval_batch(self, split: str, i: int, batch_size: int, device) -> dict[str, torch.Tensor]:
        return self.random_batch(split, batch_size, device=device)

    @torch.no_grad()
    def write_samples(self, model, folder: Path, stem: str, seed: int, max_tokens: int = 300) -> None:
        """A text "grid": the continuation of the first tokens of the val split, with a fixed seed."""
        from genlab.engine.checkpoint import atomic_write_text
        from genlab.models.autoregressive.generation import SamplingConfig, generate

        dev = next(model.parameters()).device
        prompt = self.val_x[:min(16, self.block_size // 2)][None]  # (1, T0)
        ids = generate(model, prompt.to(dev), max_tokens, SamplingConfig(temperature=0.8),
                       generator=torch.Generator(device=dev).manual_seed(seed))
        atomic_write_text(folder / f"{stem}.txt", self.tokenizer.decode(ids[0].tolist()))

    def meta(self) -> dict:
        """What the run directory keeps (data.json); the tokenizer itself is tokenizer.json."""
        return {"family": "text", "source": self.source, "tokenizer": self.tokenizer.kind,
                "vocab_size": self.vocab_size, "block_size": self.block_size,
                "sizes": {"train": len(self.train_x), "val": len(self.val_x), "test": len(self.test_x)},
                "chars": self.n_chars}


def load_text_data(cfg, root: str | os.PathLike | None, *, block_size: int,
                   tokenizer_path: str | os.PathLike | None = None) -> TextData:
    """Read the corpus `cfg` (a DataConfig with dataset=text) names, tokenise it with the
    tokenizer at `tokenizer_path` when that file exists (a resumed run) or a new one trained
    on the training split, and split it 90/10 (or as data.val_size says)."""
    from genlab.data.datasets import resolve_data_root
    from genlab.data.molecules import is_molecule_config, load_molecule_data

    if is_molecule_config(cfg):  # data.tokenizer=smiles|selfies: a molecule file, one molecule a line
        return load_molecule_data(cfg, root, block_size=block_size, tokenizer_path=tokenizer_path)
    root_path = resolve_data_root(root)
    p = Path(cfg.path or DEFAULT_CORPUS)
    if not p.is_absolute() and root_path is not None:
        p = root_path / p
    text = read_corpus(p)
    n_val = int(round(cfg.val_size * len(text))) if cfg.val_size < 1 else int(cfg.val_size)
    if not 0 < n_val < len(text):
        raise ConfigError(f"data.val_size={cfg.val_size} leaves no train or no val text of {len(text)} characters")
    train_text, val_text = text[:-n_val], text[-n_val:]
    if tokenizer_path is not None and Path(tokenizer_path).is_file():
        tok = load_tokenizer(tokenizer_path)
    else:
        # The char vocabulary covers the whole corpus (as nanoGPT's does), so val text encodes;
        # BPE learns merges from the training text only and encodes anything.
        tok = train_tokenizer(cfg.tokenizer, text if cfg.tokenizer == "char" else train_text, cfg.vocab_size)
    train_ids, val_ids = _encode_cached(tok, train_text), _encode_cached(tok, val_text)
    data = TextData(train_ids, val_ids, train_ids[:0], tok, block_size, f"text ({p})",
                    {"train": len(train_text), "val": len(val_text), "test": 0})
    for split in ("train", "val"):
        if data.num_windows(split) < 1:
            data.random_batch(split, 1)  # raises the DataError naming the split
    return data
