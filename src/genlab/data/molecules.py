"""Molecules as text: a SMILES file (the MOSES splits, the ZINC 5k file, or the user's CSV/SMI)
read, validated and canonicalised with RDKit, tokenised atom by atom (SMILES) or symbol by
symbol (SELFIES), and joined by "\\n" into the token corpus the text models (GPT, LSTM) already
train on. A generated molecule is what the model writes from one "\\n" to the next.

A run is a text run whose `data.tokenizer` is `smiles` or `selfies` (`is_molecule_config`):
    data.path       CSV (.csv, .csv.gz: a header row, `data.column` names the SMILES column;
                    default molecules/moses/train.csv.gz under the data root) or SMI/TXT
                    (one molecule a line, the first whitespace-separated field)
    data.column     SMILES (matched case-insensitively when the exact name is absent)
    data.max_molecules  a fixed random choice of this many lines (seed 0), read before
                    validation, so CPU-sized runs never parse the whole 1.58M-line file
    data.val_size   molecules held out for the val loss (a fraction if < 1)
Invalid lines are skipped, counted and named (log and data.json); when more than
MAX_INVALID_SHARE of the lines are invalid the file is refused (wrong column, not SMILES).
Canonical SMILES are cached in genlab's cache dir, keyed by the file's path, size and mtime
(the 1.58M MOSES lines take minutes to validate once; later runs read the cache).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from genlab.data.molecule_condition import CONDITION_TOKEN
from genlab.data.text import TextData, cached_ids
from genlab.errors import ConfigError, DataError

log = logging.getLogger("genlab")

DEFAULT_MOLECULES = "molecules/moses/train.csv.gz"
MOLECULE_TOKENIZERS = ("smiles", "selfies")
MAX_INVALID_SHARE = 0.1  # more invalid lines than this: the wrong column or not a SMILES file
SUBSET_SEED = 0  # data.max_molecules and the val split are fixed choices, the same for every run
SEP = "\n"
SHOWN_INVALID = 100  # invalid line numbers a run's data.json lists

# Atom-level SMILES tokens: bracket atoms whole ([nH], [C@@H], [O-]), the two-letter organic
# atoms before their one-letter prefixes, two-digit ring closures (%10), then single characters.
# Both also read the property-bin tokens (<qed:7>) of conditioned runs (genlab.data.molecule_condition).
SMILES_TOKEN = re.compile(CONDITION_TOKEN + r"|\[[^\[\]]+\]|Br|Cl|%\d\d|[BCNOPSFIbcnops]|\d|[=#$:/\\\-+()~.@*]|\n")
SELFIES_TOKEN = re.compile(CONDITION_TOKEN + r"|\[[^\[\]]+\]|\.|\n")


def is_molecule_config(data_cfg) -> bool:
    """Whether a DataConfig describes a molecule corpus (a text run with a molecule tokenizer, or
    molecules as graphs, data.dataset=molecules): such runs sample SMILES and get the MOSES metrics."""
    d = getattr(data_cfg, "dataset", None)
    return d in ("smiles", "molecules") or (d == "text" and getattr(data_cfg, "tokenizer", None) in MOLECULE_TOKENIZERS)


# --------------------------------------------------------------------------- tokenizer


class MoleculeTokenizer:
    """One id per SMILES token (atoms, bonds, branches, ring closures) or SELFIES symbol seen in
    the corpus, plus "\\n" (the molecule separator); sorted, so the same corpus gives the same ids.
    `kekulize`: the run reads SMILES in Kekule form (data.kekulize; `corpus` writes them so)."""

    def __init__(self, kind: str, tokens: list[str], *, kekulize: bool = False):
        if kind not in MOLECULE_TOKENIZERS:
            raise ConfigError(f"molecule tokenizer must be smiles or selfies, got {kind!r}")
        self.kind = kind
        self.kekulize = kekulize
        self.tokens = list(tokens)
        self.stoi = {t: i for i, t in enumerate(self.tokens)}
        self.pattern = SMILES_TOKEN if kind == "smiles" else SELFIES_TOKEN

    @classmethod
    def train(cls, kind: str, text: str, *, kekulize: bool = False) -> "MoleculeTokenizer":
        tok = cls(kind, [])
        return cls(kind, sorted(set(tok.split(text)) | {SEP}), kekulize=kekulize)

    def corpus(self, smiles: list[str]) -> list[str]:
        """Canonical SMILES as this tokenizer reads them (Kekule SMILES, SELFIES, or as they are)."""
        return _corpus(smiles, self.kind, self.kekulize)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @property
    def condition_ids(self) -> frozenset[int]:
        """Ids of the property-bin tokens of a conditioned run (genlab.data.molecule_condition); none otherwise."""
        from genlab.data.molecule_condition import is_condition_token

        return frozenset(i for i, t in enumerate(self.tokens) if is_condition_token(t))

    def split(self, text: str) -> list[str]:
        """The tokens of `text`; DataError naming the first character no token covers."""
        pieces = self.pattern.findall(text)
        if sum(map(len, pieces)) != len(text):
            pos = 0
            for p in self.pattern.finditer(text):
                if p.start() != pos:
                    break
                pos = p.end()
            raise DataError(f"{self.kind.upper()} text has a character no {self.kind} token covers: "
                            f"{text[pos]!r} at position {pos} ({text[max(0, pos - 10):pos + 10]!r})")
        return pieces

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[t] for t in self.split(text)]
        except KeyError:
            bad = sorted({t for t in self.split(text) if t not in self.stoi})
            raise DataError(f"the text has {len(bad)} token(s) outside this run's {self.vocab_size}-token "
                            f"{self.kind} vocabulary ({', '.join(map(repr, bad[:5]))})") from None

    def decode(self, ids) -> str:
        return "".join(self.tokens[i] for i in ids)

    def to_smiles(self, molecule: str) -> str:
        """A decoded molecule as SMILES (SELFIES strings are translated; an untranslatable one gives "")."""
        if self.kind == "smiles":
            return molecule
        sf = _selfies()
        try:
            return sf.decoder(molecule) or ""
        except Exception:  # noqa: BLE001  (selfies raises its own DecoderError and others)
            return ""

    def to_json(self) -> str:
        extra = {"kekulize": True} if self.kekulize else {}
        return json.dumps({"genlab_tokenizer": self.kind, "tokens": self.tokens, **extra}, ensure_ascii=False)


def _selfies():
    from genlab.extras import require

    return require("selfies", "molecules", "data.tokenizer=selfies")


# --------------------------------------------------------------------------- reading


def _open_text(path: Path) -> io.TextIOBase:
    return gzip.open(path, "rt", encoding="utf-8", newline="") if path.suffix == ".gz" else \
        open(path, encoding="utf-8", newline="")


def read_smiles_lines(path: Path, column: str) -> tuple[list[str], list[int]]:
    """(strings, 1-based file line numbers) of a CSV's `column` or of an SMI file's first field.
    Blank SMI lines are skipped; an empty CSV cell is kept (it is counted invalid later)."""
    if not path.is_file():
        raise DataError(f"molecule file {path} not found; set data.path to a CSV or SMI file "
                        "(relative to the data root) or pass --data-root")
    stem = path.name[:-3] if path.name.endswith(".gz") else path.name
    try:
        with _open_text(path) as f:
            if stem.endswith(".csv"):
                return _read_csv(f, path, column)
            strings, lines = [], []
            for i, line in enumerate(f, 1):
                fields = line.split()
                if fields:
                    strings.append(fields[0])
                    lines.append(i)
            return strings, lines
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start}); give a CSV or SMI file of SMILES") from None
    except (OSError, EOFError, csv.Error) as e:
        raise DataError(f"cannot read {path}: {e}") from None


def _read_csv(f, path: Path, column: str) -> tuple[list[str], list[int]]:
    reader = csv.reader(f)
    header = next(reader, None)
    if not header:
        raise DataError(f"{path} is empty; a CSV of molecules needs a header row naming its SMILES column")
    if column in header:
        col = header.index(column)
    else:
        folded = [h.strip().lower() for h in header]
        if folded.count(column.lower()) != 1:
            raise ConfigError(f"{path} has no column {column!r} (columns: {', '.join(header[:10])}); "
                              "set data.column to the SMILES column")
        col = folded.index(column.lower())
    strings, lines = [], []
    for i, row in enumerate(reader, 2):
        if not row:
            continue
        strings.append(row[col].strip() if col < len(row) else "")
        lines.append(i)
    return strings, lines


@dataclass
class MoleculeSet:
    """The valid molecules of a file in canonical SMILES (file order), and what was refused."""

    smiles: list[str]
    read: int  # lines read (after data.max_molecules)
    invalid: list[tuple[int, str]] = field(default_factory=list)  # (file line, text) of each invalid line
    source: str = ""
    seconds: float = 0.0  # validation time (0 when read from the cache)
    cached: bool = False
    key: str = ""  # the cache key of the file's molecules (_cache_key): derived caches are named by it

    def summary(self) -> dict:
        return {"file": self.source, "read": self.read, "valid": len(self.smiles), "invalid": len(self.invalid),
                "invalid_lines": [n for n, _ in self.invalid[:SHOWN_INVALID]]}


def _cache_key(path: Path, column: str, limit: int | None) -> str:
    """The cache entry of a file's molecules: its bytes (sha256, ~0.1 s for MOSES's 10 MB; a copy or a
    fresh checkout of the same file hits the cache, an edited file misses it), the column, the
    subset and RDKit's version (canonical SMILES differ between versions)."""
    from genlab.metrics.molecules import _chem

    content = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            content.update(block)
    rdkit = _chem().rdBase.rdkitVersion
    ident = f"{content.hexdigest()}|{column}|{limit}|{SUBSET_SEED}|rdkit {rdkit}"
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


def load_molecules(path: str | os.PathLike, column: str = "SMILES", *, max_molecules: int | None = None,
                   use_cache: bool = True) -> MoleculeSet:
    """Read, validate and canonicalise the molecules of a CSV/SMI file (see the module docstring).

    Args:
        path: the file (.csv, .csv.gz, .smi, .txt, optionally gzipped).
        column: the CSV column holding SMILES.
        max_molecules: keep a fixed random choice of this many lines (file order kept); None = all.
        use_cache: read/write the canonical list in genlab's cache dir.

    Returns:
        A MoleculeSet; DataError when no line or too many lines are valid, naming the first bad line.
    """
    from genlab.data.datasets import cache_dir
    from genlab.extras import require
    from genlab.metrics.molecules import quiet_rdkit, to_mol

    Chem = require("rdkit.Chem", "molecules", "molecule data (data.tokenizer=smiles or selfies)")
    path = Path(path)
    if not path.is_file():
        read_smiles_lines(path, column)  # raises the not-found DataError
    key = _cache_key(path, column, max_molecules)
    cached = cache_dir() / "molecules" / f"{key}.json"
    if use_cache and cached.is_file():
        try:
            d = json.loads(cached.read_text(encoding="utf-8"))
            return MoleculeSet(d["smiles"], d["read"], [tuple(x) for x in d["invalid"]], str(path), cached=True,
                               key=key)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is rebuilt
    t0 = time.perf_counter()
    strings, lines = read_smiles_lines(path, column)
    if max_molecules is not None and max_molecules < len(strings):
        keep = np.sort(np.random.default_rng(SUBSET_SEED).choice(len(strings), max_molecules, replace=False))
        strings, lines = [strings[i] for i in keep], [lines[i] for i in keep]
    if not strings:
        raise DataError(f"{path} holds no molecules")
    out, invalid = [], []
    with quiet_rdkit():
        for s, n in zip(strings, lines):
            mol = to_mol(s)
            if mol is None:
                invalid.append((n, s))
            else:
                out.append(Chem.MolToSmiles(mol))
    mols = MoleculeSet(out, len(strings), invalid, str(path), time.perf_counter() - t0, key=key)
    check_invalid(mols, path)
    if use_cache:
        from genlab.engine.checkpoint import atomic_write_text

        cached.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cached, json.dumps({"smiles": out, "read": len(strings), "invalid": invalid}))
    return mols


def check_invalid(mols: MoleculeSet, path: Path) -> None:
    """Refuse a file with too many invalid lines (one line naming the first); warn about a few."""
    if not mols.invalid:
        return
    n, text = mols.invalid[0]
    first = f"line {n}: {text[:60]!r}" + (" (empty)" if not text else "")
    share = len(mols.invalid) / mols.read
    if share > MAX_INVALID_SHARE:
        raise DataError(f"{path}: {len(mols.invalid)} of {mols.read} lines are not valid SMILES, first at {first}; "
                        "fix the file or set data.column to the SMILES column")
    log.warning("%s: %d of %d lines are not valid SMILES and are left out (first at %s; a run's data.json "
                "lists the first %d line numbers)", path, len(mols.invalid), mols.read, first, SHOWN_INVALID)


# --------------------------------------------------------------------------- dataset


def molecule_path(cfg, root: Path | None) -> Path:
    """data.path (or the MOSES train file) resolved against the data root."""
    p = Path(cfg.path or DEFAULT_MOLECULES)
    return root / p if not p.is_absolute() and root is not None else p


def moses_references(path: Path) -> dict[str, Path] | None:
    """The MOSES test and scaffold-test files beside a MOSES train file, or None for other data
    (whose runs are then scored against their own val molecules)."""
    refs = {"test": path.parent / "test.csv.gz", "test_scaffolds": path.parent / "test_scaffolds.csv.gz"}
    return refs if path.name.startswith("train.csv") and all(p.is_file() for p in refs.values()) else None


@dataclass
class MoleculeData(TextData):
    """TextData whose corpus is molecules joined by "\\n", with the molecules themselves
    (canonical SMILES of the train and val splits) for novelty and as a reference."""

    train_smiles: list[str] = field(default_factory=list)
    val_smiles: list[str] = field(default_factory=list)
    molecules: dict = field(default_factory=dict)  # MoleculeSet.summary() and the reference files
    family = "text"

    @torch.no_grad()
    def write_samples(self, model, folder: Path, stem: str, seed: int, max_tokens: int = 300) -> None:
        """16 molecules drawn from "\\n" with a fixed seed, one a line."""
        from genlab.engine.checkpoint import atomic_write_text

        mols = sample_molecules(model, self.tokenizer, 16, seed=seed, max_tokens=self.max_tokens())
        atomic_write_text(folder / f"{stem}.txt", "\n".join(mols) + "\n")

    def max_tokens(self) -> int:
        """A generation budget per molecule: the longest training molecule's tokens plus half."""
        return int(self.molecules.get("max_tokens", 100) * 1.5) + 1

    def meta(self) -> dict:
        return {**super().meta(), "molecules": self.molecules}


def pad_molecules(rows: list, sep: int) -> dict[str, torch.Tensor]:
    """Molecules as token ids (without separators) -> one padded row each:
    {"x": (B, L + 2) int64: sep, the tokens, sep, then sep as padding; "length": (B,) tokens + 2}.
    Models mask the padding by `length`, so its value never matters."""
    lengths = torch.tensor([len(r) + 2 for r in rows], dtype=torch.long)  # (B,)
    x = torch.full((len(rows), int(lengths.max()) if len(rows) else 2), sep, dtype=torch.long)  # (B, T)
    for i, r in enumerate(rows):
        x[i, 1:len(r) + 1] = torch.as_tensor(r, dtype=torch.long)
    return {"x": x, "length": lengths}


@dataclass
class MoleculeRows(MoleculeData):
    """MoleculeData served one molecule a row, for models whose `text_batches` is "molecules"
    (the SMILES VAE; data.batches says so): batches are `pad_molecules` rows, and training rows
    also carry "step" (B,), the global batch number (the step, for a single-optimiser model), so
    a schedule inside the loss (the VAE's KL warm-up) resumes exactly without state of its own.
    The token stream, tokenizer, cache and val split are MoleculeData's; training draws random
    molecules from torch's global generator (which the engine seeds per micro-batch), validation
    reads the val molecules in order. Molecules longer than block_size tokens are left out."""

    unit = "molecules"
    per_example = 1

    def __post_init__(self):
        self.rows = {name: self._spans(name) for name in ("train", "val")}  # (start, length) of each molecule

    def _spans(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.split(split)
        at = (ids == self.tokenizer.stoi[SEP]).nonzero().flatten()  # (n,): each molecule's leading "\n"
        length = torch.cat([at[1:], torch.tensor([len(ids)])]) - at - 1  # (n,)
        keep = length <= self.block_size
        if not bool(keep.all()):
            log.warning("%d of %d %s molecules are longer than model.block_size=%d tokens and are left out",
                        int((~keep).sum()), len(at), split, self.block_size)
        return at[keep] + 1, length[keep]

    def num_windows(self, split: str) -> int:
        return self.eval_size(split)

    def _rows(self, split: str, ix: torch.Tensor, device) -> dict[str, torch.Tensor]:
        ids, (start, length) = self.split(split), self.rows[split]
        batch = pad_molecules([ids[s:s + n] for s, n in zip(start[ix].tolist(), length[ix].tolist())],
                              self.tokenizer.stoi[SEP])
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}

    def random_batch(self, split: str, n: int, *, generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """n random molecules of a split (with replacement), drawn from `generator` (torch's global one when None)."""
        if self.eval_size(split) < 1:
            raise DataError(f"the {split} split has no molecule of at most {self.block_size} tokens; raise "
                            "model.block_size or use more molecules")
        return self._rows(split, torch.randint(0, self.eval_size(split), (n,), generator=generator), device)

    def train_batch(self, b: int, shard: int, micro: int, device) -> dict[str, torch.Tensor]:
        batch = self.random_batch("train", micro, device=device)
        batch["step"] = torch.full((micro,), b, dtype=torch.long, device=device)
        return batch

    def eval_size(self, split: str) -> int:
        return len(self.rows[split][0]) if split in self.rows else 0

    def num_eval_batches(self, split: str, batch_size: int) -> int:
        return -(-self.eval_size(split) // batch_size)

    def eval_batch(self, split: str, i: int, batch_size: int, device) -> dict[str, torch.Tensor]:
        return self._rows(split, torch.arange(i * batch_size, min((i + 1) * batch_size, self.eval_size(split))),
                          device)


def _corpus(smiles: list[str], kind: str, kekulize: bool = False) -> list[str]:
    """The molecules as the tokenizer reads them: canonical SMILES (in Kekule form with
    `kekulize`), or their SELFIES."""
    if kind == "smiles":
        return [kekule_smiles(s) for s in smiles] if kekulize else smiles
    sf = _selfies()
    out = []
    for s in smiles:
        try:
            out.append(sf.encoder(s))
        except Exception as e:  # noqa: BLE001  (selfies.EncoderError for molecules it cannot express)
            raise DataError(f"SELFIES cannot encode {s!r} ({type(e).__name__}); use data.tokenizer=smiles") from None
    return out


def _corpus_cached(smiles: list[str], kind: str, kekulize: bool, key: str) -> list[str]:
    """_corpus of a file's molecules (`key`: load_molecules' cache key), cached beside its canonical
    SMILES when it rewrites them (Kekule SMILES, SELFIES: a couple of minutes for MOSES's 1.58M)."""
    if kind == "smiles" and not kekulize:
        return smiles
    from genlab.data.datasets import cache_dir
    from genlab.engine.checkpoint import atomic_write_text

    path = cache_dir() / "molecules" / f"{key}-{'kekule' if kekulize else kind}.json"
    if path.is_file():
        try:
            out = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(out, list) and len(out) == len(smiles):
                return out
        except (OSError, ValueError):
            pass  # a damaged cache entry is rebuilt
    t0 = time.perf_counter()
    out = _corpus(smiles, kind, kekulize)
    log.info("wrote %d molecules as %s in %.1f s (cached)", len(out), "Kekule SMILES" if kekulize else kind,
             time.perf_counter() - t0)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(out))
    return out


def kekule_smiles(smiles: str) -> str:
    """`smiles` written with explicit single and double bonds and no aromatic atoms (RDKit's
    canonical Kekule SMILES); RDKit reads it back as the same molecule."""
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise DataError(f"not a valid SMILES: {smiles!r}")
    Chem.Kekulize(mol, clearAromaticFlags=True)
    return Chem.MolToSmiles(mol, kekuleSmiles=True)


def encode_molecules(tok: MoleculeTokenizer, molecules: list[str], chunk: int = 50_000) -> torch.Tensor:
    """"\\n" + molecule + "\\n" + ... as int64 token ids: every molecule follows the separator, so
    a window that starts a molecule has seen its "\\n", as generation does. Chunked, so that 1.5M
    molecules never become one list of 50M token strings."""
    parts = []
    for i in range(0, len(molecules), chunk):
        text = SEP + SEP.join(molecules[i:i + chunk])
        parts.append(np.fromiter((tok.stoi[t] for t in tok.split(text)), dtype=np.int64))
    return torch.from_numpy(np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64))


def load_molecule_data(cfg, root, *, block_size: int, tokenizer_path=None) -> MoleculeData:
    """The molecule corpus `cfg` names (see the module docstring), split train/val (a fixed
    random choice of val_size molecules), tokenised with the run's tokenizer when it has one."""
    from genlab.data.datasets import resolve_data_root
    from genlab.data.text import load_tokenizer

    path = molecule_path(cfg, resolve_data_root(root))
    mols = load_molecules(path, cfg.column, max_molecules=cfg.max_molecules)
    if mols.cached:
        log.info("molecules of %s read from the cache (%d valid, %d invalid lines)", path, len(mols.smiles),
                 len(mols.invalid))
    else:
        log.info("validated %d lines of %s in %.1f s (%d invalid)", mols.read, path, mols.seconds, len(mols.invalid))
    n = len(mols.smiles)
    n_val = int(round(cfg.val_size * n)) if cfg.val_size < 1 else int(cfg.val_size)
    if not 0 < n_val < n:
        raise ConfigError(f"data.val_size={cfg.val_size} leaves no train or no val molecules of {n}; "
                          "use a fraction below 1 or fewer molecules")
    perm = np.random.default_rng(SUBSET_SEED).permutation(n)
    val_idx = np.sort(perm[:n_val])
    is_val = np.zeros(n, dtype=bool)
    is_val[val_idx] = True
    train_smiles = [s for s, v in zip(mols.smiles, is_val) if not v]
    val_smiles = [s for s, v in zip(mols.smiles, is_val) if v]
    kind, kekulize = cfg.tokenizer, bool(getattr(cfg, "kekulize", False))
    corpus = _corpus_cached(mols.smiles, kind, kekulize, mols.key)
    train_text = [c for c, v in zip(corpus, is_val) if not v]
    val_text = [c for c, v in zip(corpus, is_val) if v]
    cond, train_seq, val_seq = None, train_text, val_text
    if getattr(cfg, "condition", None):  # a property-bin token before each molecule (genlab.data.molecule_condition)
        cond, train_seq, val_seq = _conditioned(cfg, path, mols, is_val, train_text, val_text)
    if tokenizer_path is not None and Path(tokenizer_path).is_file():
        tok = load_tokenizer(tokenizer_path)
        if not isinstance(tok, MoleculeTokenizer) or tok.kind != kind:
            raise ConfigError(f"the run's tokenizer is {getattr(tok, 'kind', '?')}, not {kind}; keep the run's "
                              "data.tokenizer")
        if tok.kekulize != kekulize:
            raise ConfigError(f"the run's tokenizer reads {'Kekule' if tok.kekulize else 'aromatic'} SMILES; keep "
                              "the run's data.kekulize")
    else:
        tok = MoleculeTokenizer.train(kind, SEP.join(train_text + val_text), kekulize=kekulize)
        if cond is not None:  # after the SMILES tokens, which keep an unconditioned run's ids
            tok = MoleculeTokenizer(kind, tok.tokens + cond.tokens, kekulize=kekulize)
    if cond is not None:
        from genlab.data.molecule_condition import check_condition_tokens

        check_condition_tokens(tok.tokens, cond, tokenizer_path)
    t0 = time.perf_counter()
    train_ids, val_ids = _encode_cached(tok, train_seq), _encode_cached(tok, val_seq)
    log.debug("tokenised %d molecules in %.1f s", n, time.perf_counter() - t0)
    refs = moses_references(path)
    info = {**mols.summary(), "tokenizer": kind, "column": cfg.column, "max_molecules": cfg.max_molecules,
            "train": len(train_smiles), "val": len(val_smiles),
            "max_tokens": max(map(len, train_text)),  # characters: a bound on tokens, without a second pass
            "reference": {k: str(v) for k, v in refs.items()} if refs else "val"}
    if cond is not None:
        info["condition"] = cond.meta()
    rows = getattr(cfg, "batches", None) == "molecules"  # one molecule a row (the SMILES VAE), not windows
    data = (MoleculeRows if rows else MoleculeData)(train_ids, val_ids, train_ids[:0], tok, block_size,
                                                    f"molecules ({path})",
                        {"train": sum(map(len, train_text)) + len(train_text),
                         "val": sum(map(len, val_text)) + len(val_text), "test": 0},
                        train_smiles=train_smiles, val_smiles=val_smiles, molecules=info)
    for split in ("train", "val"):
        if data.num_windows(split) < 1:
            data.random_batch(split, 1)  # raises the DataError naming the split
    return data


def _conditioned(cfg, path: Path, mols: MoleculeSet, is_val: np.ndarray, train_text: list[str],
                 val_text: list[str]):
    """(Condition, train texts, val texts) of a data.condition run: the bins are quantiles of the
    training molecules' property (computed once per file and cached beside its canonical SMILES),
    and every molecule is prefixed by its bin's token."""
    from genlab.data.molecule_condition import cached_property, fit_condition, prefix

    values = cached_property(mols.key, cfg.condition, mols.smiles)
    cond = fit_condition(cfg.condition, cfg.condition_bins, values[~is_val])
    return cond, prefix(train_text, values[~is_val], cond), prefix(val_text, values[is_val], cond)


def _encode_cached(tok: MoleculeTokenizer, molecules: list[str]) -> torch.Tensor:
    """encode_molecules, cached by (molecules, tokenizer): 1.5M MOSES molecules take ~a minute."""
    from genlab.data.datasets import cache_dir

    h = hashlib.sha256(tok.to_json().encode())
    for m in molecules:
        h.update(m.encode())
        h.update(b"\n")
    path = cache_dir() / "molecules" / f"ids-{h.hexdigest()[:24]}.npy"
    dtype = np.int16 if tok.vocab_size < 32_000 else np.int32
    return cached_ids(path, lambda: encode_molecules(tok, molecules).numpy().astype(dtype),
                      save=len(molecules) >= 10_000)  # small corpora encode faster than the cache reads


# --------------------------------------------------------------------------- generation


@torch.no_grad()
def sample_molecules(model, tok: MoleculeTokenizer, n: int, *, seed: int = 0, max_tokens: int = 150,
                     batch_size: int = 256, temperature: float = 1.0, progress=None,
                     condition: str | None = None, smiles_syntax: bool = False) -> list[str]:
    """n molecules as SMILES strings (possibly invalid, "" for an empty or unfinished one): each
    row starts at "\\n" and is sampled (ancestral, temperature 1) until its next "\\n" or
    max_tokens tokens; SELFIES runs are decoded to SMILES. A model that is not a next-token
    language model (the SMILES VAE, a graph generator) brings its own `sample_smiles` with the
    same arguments and contract.
    `condition`: a property-bin token of a conditioned run (<qed:9>); rows then start at
    "\\n<qed:9>". Without it, a conditioned run's model writes the bin token itself, and it is
    left out of the molecule.
    `smiles_syntax`: draw only tokens that keep each row a possible complete SMILES
    (genlab.data.smiles_syntax: balanced branches, closed rings, no dangling bond)."""
    if condition is not None and (hasattr(model, "sample_smiles") or tok.stoi.get(condition) not in tok.condition_ids):
        raise ConfigError(f"conditioned sampling needs a SMILES GPT/LSTM run trained with the {condition} token "
                          "(data.condition)")
    from genlab.data.smiles_syntax import SmilesSyntax, check_tokenizer

    if smiles_syntax:
        check_tokenizer(tok)
    if hasattr(model, "sample_smiles"):
        return model.sample_smiles(n, tokenizer=tok, seed=seed, max_tokens=max_tokens, batch_size=batch_size,
                                   temperature=temperature, progress=progress,
                                   **({"smiles_syntax": True} if smiles_syntax else {}))
    from genlab.models.autoregressive.generation import SamplingConfig, generate_ids
    from genlab.seed import make_generator

    g = make_generator(seed)
    sep = tok.stoi[SEP]
    cond_ids = tok.condition_ids
    dev = next(model.parameters()).device
    out: list[str] = []
    while len(out) < n:
        b = min(batch_size, n - len(out))
        prompt = torch.full((b, 1), sep, dtype=torch.long, device=dev)  # (b, 1)
        if condition is not None:
            prompt = torch.cat([prompt, torch.full_like(prompt, tok.stoi[condition])], dim=1)  # (b, 2)
        rows = [[] for _ in range(b)]
        done = np.zeros(b, dtype=bool)
        syntax = SmilesSyntax(tok, b, dev) if smiles_syntax else None
        if syntax is not None and condition is not None:
            syntax.update(prompt[:, 1])  # the bin token the rows start from
        for tok_ids in generate_ids(model, prompt, max_tokens, SamplingConfig(temperature=temperature), generator=g,
                                    constraint=syntax):
            for i, t in enumerate(tok_ids[:, 0].tolist()):
                if not done[i]:
                    if t == sep:
                        done[i] = True
                    elif condition is None and not rows[i] and t in cond_ids:
                        pass  # the bin a conditioned run's model chose for itself: not part of the molecule
                    else:
                        rows[i].append(t)
            if done.all():
                break
        # a row that hit max_tokens without "\n" is unfinished: counted as an invalid molecule
        out += [tok.to_smiles(tok.decode(r)) if d else "" for r, d in zip(rows, done)]
        if progress is not None:
            progress.set(len(out))
    return out
