"""Train the LeNet classifiers shipped in src/genlab/weights/ (lenet-mnist, lenet-fashion).

    python scripts/train_classifier.py --dataset mnist
    python scripts/train_classifier.py --dataset fashion-mnist

Trains on the training split with random 2-pixel shifts, Adam and a cosine learning rate,
reports accuracy on the test split, writes the weights atomically as safetensors and updates
the table in src/genlab/weights/README.md. Runs on the CPU with one thread.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import shlex
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load, save

from genlab.data.datasets import load_idx_split, resolve_data_root
from genlab.engine.checkpoint import atomic_write_bytes, atomic_write_text
from genlab.engine.device import cpu_model
from genlab.errors import DataError
from genlab.metrics.classifier import WEIGHTS_DIR, LeNet, label_accuracy, train_lenet
from genlab.seed import seed_everything

log = logging.getLogger("genlab")

NAMES = {"mnist": "lenet-mnist", "fashion-mnist": "lenet-fashion"}
MAX_FP32_BYTES = 1_500_000  # above this the weights are stored as fp16 (cast back on load)
README_HEADER = [
    "# Shipped classifier weights",
    "",
    "LeNet classifiers (`genlab.metrics.classifier`) used to judge conditional samples and as the",
    "`lenet-mnist` / `lenet-fashion` FID/KID feature extractors (256-d penultimate layer).",
    "Written by `scripts/train_classifier.py`, which updates this table; accuracy is on the",
    "10,000-image test split, training seconds are wall time of the training loop (one CPU thread).",
    "",
    "| name | test accuracy | epochs | training seconds | CPU | command | date |",
    "|---|---|---|---|---|---|---|",
]


def update_readme(path: Path, row: dict[str, str]) -> None:
    """Replace (or add) the table row for row["name"], keeping the other models' rows and what
    follows the table (other judges' sections, e.g. the audio judge's)."""
    rows: dict[str, str] = {}
    tail: list[str] = []
    if path.is_file():
        lines = path.read_text().splitlines()
        ours = [i for i, line in enumerate(lines) if line.startswith("| `lenet-")]
        rows = {lines[i].split("|")[1].strip(): lines[i] for i in ours}
        if ours:
            tail = lines[ours[-1] + 1:]
        else:  # no LeNet table yet: keep everything after our header (or the whole file)
            tail = lines[len(README_HEADER):] if lines[:len(README_HEADER)] == README_HEADER else lines
    cells = [f"`{row['name']}`", row["accuracy"], row["epochs"], row["seconds"], row["cpu"],
             f"`{row['command']}`", row["date"]]
    rows[f"`{row['name']}`"] = "| " + " | ".join(cells) + " |"
    atomic_write_text(path, "\n".join(README_HEADER + [rows[k] for k in sorted(rows)] + tail) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=sorted(NAMES), required=True)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--shift", type=int, default=2, help="max random shift in pixels (0 = none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default=None)
    p.add_argument("--out-dir", type=Path, default=WEIGHTS_DIR)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(1)

    root = resolve_data_root(args.data_root)
    if root is None:
        raise DataError("no data root found; pass --data-root DIR or set GENLAB_DATA")
    x_train, y_train = load_idx_split(root, args.dataset, "train")
    x_test, y_test = load_idx_split(root, args.dataset, "test")
    log.info("%s: %d train, %d test images from %s", args.dataset, len(x_train), len(x_test), root)

    t0 = time.perf_counter()
    seed_everything(args.seed)  # Python/NumPy too; train_lenet seeds (and restores) torch's stream itself
    model = train_lenet(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                        seed=args.seed, shift=args.shift, verbose=True)
    seconds = time.perf_counter() - t0
    name = NAMES[args.dataset]

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    blob = save(state, metadata={"name": name})
    if len(blob) > MAX_FP32_BYTES:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        blob = save(state, metadata={"name": name, "dtype": "float16"})
    # Score the weights exactly as shipped (after any fp16 rounding), not the in-memory model.
    shipped = LeNet()
    shipped.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in load(blob).items()})
    acc = label_accuracy(shipped.eval(), x_test, y_test)
    log.info("%s: test accuracy %.4f after %d epochs in %.0f s", name, acc, args.epochs, seconds)
    out = args.out_dir / f"{name}.safetensors"
    atomic_write_bytes(out, blob)
    log.info("wrote %s (%d bytes)", out, len(blob))

    command = shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["python", __file__, *argv])
    update_readme(args.out_dir / "README.md", {
        "name": name, "accuracy": f"{acc:.4f}", "epochs": str(args.epochs),
        "seconds": f"{seconds:.0f}", "cpu": cpu_model(), "command": command,
        "date": datetime.date.today().isoformat(),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
