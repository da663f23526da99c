"""Checkpoints: safetensors for tensors, JSON for the rest, both written atomically.

A checkpoint `step-00001000` is two files: `step-00001000.<sha>.safetensors`, named by the
first 16 hex digits of its sha256, then `step-00001000.json`, which names that file and
records its full sha256. The JSON is the commit marker, and because a tensor file's name
changes with its content, rewriting a checkpoint (`best`) never touches the file the current
JSON points to. So a kill at any moment leaves either the new checkpoint or the old one,
complete and verifiable; tensor files that no JSON names are removed at the next save.
Nothing is ever unpickled. (Runs written before this scheme have `NAME.safetensors` and a
JSON without a file name; they still load.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from genlab.errors import CheckpointError

log = logging.getLogger("genlab")

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@dataclass
class Checkpoint:
    tensors: dict[str, torch.Tensor]
    state: dict[str, Any]
    name: str


def save_checkpoint(folder: Path, name: str, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """Write `name.<sha>.safetensors`, then `name.json` naming it, then drop tensor files of
    `name` that the new JSON does not name."""
    blob = st_save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
    sha = hashlib.sha256(blob).hexdigest()
    file = f"{name}.{sha[:16]}.safetensors"
    atomic_write_bytes(folder / file, blob)
    atomic_write_json(folder / f"{name}.json", {**state, "sha256": sha, "file": file})
    for old in _tensor_files(folder, name):
        if old.name != file:
            old.unlink(missing_ok=True)


def _tensor_files(folder: Path, name: str) -> list[Path]:
    return [p for p in folder.glob(f"{name}.*safetensors") if p.name == f"{name}.safetensors"
            or (p.name.startswith(f"{name}.") and p.name.count(".") == 2)]


def read_checkpoint(folder: Path, name: str) -> Checkpoint:
    """Load and verify one checkpoint; CheckpointError names what is wrong."""
    js = folder / f"{name}.json"
    try:
        state = json.loads(js.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {folder / name} is incomplete ({js.name} missing)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"checkpoint {js} is corrupt (not valid JSON)") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {js} is corrupt (not a JSON object)")
    file = _named_file(state, name)
    if not isinstance(file, str) or Path(file).name != file or not file.endswith(".safetensors"):
        raise CheckpointError(f"checkpoint {js} is corrupt (bad tensor file name {file!r})")
    st = folder / file
    try:
        blob = st.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {folder / name} is incomplete ({file} missing)") from None
    if state.get("sha256") != hashlib.sha256(blob).hexdigest():
        raise CheckpointError(f"checkpoint {st} is corrupt or truncated (checksum mismatch)")
    try:
        tensors = st_load(blob)
    except (SafetensorError, ValueError) as e:
        raise CheckpointError(f"checkpoint {st} is not a valid safetensors file: {e}") from None
    return Checkpoint(tensors, state, name)


def _named_file(state: dict, name: str) -> str:
    """The tensor file checkpoint `name`'s JSON state names (older runs: NAME.safetensors)."""
    return state.get("file", f"{name}.safetensors")


def tensor_file(folder: Path, name: str) -> Path:
    """The tensor file a committed checkpoint's JSON names (for tools and tests)."""
    return folder / _named_file(json.loads((folder / f"{name}.json").read_text()), name)


def named_tensor_files(folder: Path) -> set[str]:
    """Names of the tensor files that the JSON markers in `folder` name; for a damaged JSON,
    every tensor file of its checkpoint name (it may have named any of them)."""
    named = set()
    for js in folder.glob("*.json"):
        try:
            named.add(_named_file(json.loads(js.read_text()), js.stem))
        except (OSError, ValueError, AttributeError):
            named.update(p.name for p in _tensor_files(folder, js.stem))
    return named


def list_steps(folder: Path) -> list[str]:
    """Names of step checkpoints that have a commit marker, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("step-*.json"))


def latest_valid(folder: Path) -> Checkpoint | None:
    """The newest checkpoint that verifies, warning about (and skipping) damaged ones."""
    for name in reversed(list_steps(folder)):
        try:
            return read_checkpoint(folder, name)
        except CheckpointError as e:
            log.warning("skipping %s", e)
    return None


def prune(folder: Path, keep: int) -> None:
    """Delete all but the newest `keep` step checkpoints (the JSON first: the checkpoint is
    uncommitted from then on), stray temp files, and tensor files that no JSON names (left
    by a kill between the two deletions, or between writing the tensors and their JSON)."""
    for name in list_steps(folder)[:-keep]:
        (folder / f"{name}.json").unlink(missing_ok=True)
    for tmp in folder.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    named = named_tensor_files(folder)
    for st in folder.glob("*.safetensors"):
        if st.name not in named:
            st.unlink(missing_ok=True)


# --------------------------------------------------------------------------- optimisers


def optimizer_to_flat(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimiser's state_dict into tensors (for safetensors) and JSON-able rest."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{prefix}.{idx}.{k}"] = v
            else:
                scalars.setdefault(str(idx), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(opt: torch.optim.Optimizer, prefix: str, tensors: dict[str, torch.Tensor],
                        meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith(prefix + "."):
            idx, k = key[len(prefix) + 1:].split(".", 1)
            state.setdefault(int(idx), {})[k] = v
    for idx, kv in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(kv)
    try:
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"optimiser state {prefix} does not fit this model: {e}") from None
