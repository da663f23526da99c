"""One tiny finished run per served model family, shared by the hostile-input and server tests."""

from __future__ import annotations

from pathlib import Path

import genlab
from tests.conftest import DATA, TINY_VAE
from tests.test_diffusion import TINY_DIFFUSION, small_mnist
from tests.test_graphs import TINY_RNN
from tests.test_text import TINY_TEXT


def train_tiny_runs(base: Path, data_root: Path) -> dict[str, Path]:
    """cvae (28x28 conditional VAE), ddpm (16x16 diffusion; base/mnist16.npz holds its data),
    gpt (char GPT on 5,000 characters of Shakespeare), graph (GraphRNN on grids): 2 steps each."""
    r = {"cvae": genlab.train("cvae-mnist", base / "cvae", overrides=TINY_VAE, steps=2, data_root=str(data_root)),
         "ddpm": genlab.train("ddpm-mnist", base / "ddpm", overrides=TINY_DIFFUSION + small_mnist(base, data_root),
                              steps=2, data_root=str(data_root))}
    corpus = base / "corpus.txt"
    corpus.write_text((DATA / "shakespeare" / "input.txt").read_text(encoding="utf-8")[:5_000], encoding="utf-8")
    r["gpt"] = genlab.train("gpt-shakespeare-cpu", base / "gpt", overrides=TINY_TEXT + [f"data.path={corpus}"],
                            steps=2)
    r["graph"] = genlab.train("graphgen-grid", base / "graph", overrides=TINY_RNN, steps=2)
    return {k: v.run_dir for k, v in r.items()}
