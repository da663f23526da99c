"""`genlab apply` for molecule runs with a latent space (the SMILES VAE): interpolation between
two molecules.

    genlab apply RUN interpolate --input pair.smi --frames 8 --out path.smi   (or path.png, path.txt)
    genlab apply RUN interpolate --seeds 1 2 --out path.smi                    (two prior draws)

The input holds exactly two molecules, one a line (an SMI file: the first whitespace-separated
field of each non-blank line; a CSV: its data.column). Each is canonicalised with RDKit, as the
training data was, and encoded to its encoder mean. The frames walk the straight line between
the two means (linear, not slerp: the means are points the encoder chose, whose norms differ
from a prior draw's, and the straight line is the path of least change between them); --seeds
gives two prior draws, walked by slerp as image VAEs do (it keeps a Gaussian draw's typical
norm). Every frame is decoded greedily, so the first and last frames are the model's
reconstructions of the inputs (equal to them when the model reconstructs them).

Output: FILE.smi/.txt: the K SMILES, one a line (an empty line for a frame not finished within
model.block_size + 1 tokens); FILE.png: the K frames drawn (RDKit), 8 a row, an invalid frame as
a blank tile. One log line says how many frames are valid and distinct and whether the ends
reproduce the inputs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from genlab.errors import ConfigError, DataError

log = logging.getLogger("genlab")

OUTPUTS = (".smi", ".txt", ".png")
PER_ROW = 8  # frames a row of the PNG
TILE = 200  # pixels a side of a drawn frame


def read_pair(path: str | Path, tokenizer, column: str = "SMILES") -> list[str]:
    """The two molecules of `path` as canonical SMILES; a one-line DataError for another count,
    an invalid SMILES or a token outside the run's vocabulary (each naming the line)."""
    from genlab.data.molecules import read_smiles_lines
    from genlab.metrics.molecules import canonical

    strings, lines = read_smiles_lines(Path(path), column)
    if len(strings) != 2:
        raise DataError(f"{path}: interpolate needs exactly 2 molecules, one a line; found {len(strings)}")
    out = []
    for s, n in zip(strings, lines):
        c = canonical(s)
        if c is None:
            raise DataError(f"{path} line {n}: {s[:60]!r} is not a valid SMILES")
        try:
            tokenizer.encode(tokenizer.corpus([c])[0])
        except DataError as e:
            raise DataError(f"{path} line {n}: {e}") from None
        out.append(c)
    return out


@torch.no_grad()
def interpolate_molecules(model, tokenizer, *, smiles: list[str] | None = None, seeds: list[int] | None = None,
                          steps: int = 8) -> list[str]:
    """`steps` greedy decodes (SMILES, "" when unfinished) from the first molecule (or seed) to the second."""
    from genlab.sampling import slerp
    from genlab.seed import make_generator

    if steps < 2:
        raise ConfigError(f"--frames must be >= 2 (endpoints included), got {steps}")
    t = torch.linspace(0, 1, steps)[:, None]  # (K, 1)
    if smiles is not None:
        mu = model.encode_smiles(smiles, tokenizer=tokenizer).cpu()  # (2, Z)
        z = (1 - t) * mu[0] + t * mu[1]  # (K, Z): the straight line
    else:
        draws = torch.cat([torch.randn(1, model.cfg.latent_dim, generator=make_generator(s)) for s in seeds])  # (2, Z)
        z = slerp(draws[:1], draws[1:], t[:, 0])[0]  # (K, Z)
    return model.decode_latents(z, tokenizer=tokenizer, max_tokens=model.cfg.block_size + 1, temperature=0.0)


def frames_png(frames: list[str]) -> bytes:
    """The frames drawn in rows of PER_ROW (an invalid or unfinished frame: a blank tile), as PNG bytes."""
    from genlab.apply.io import labelled_rows
    from genlab.evaluation.molecules import molecule_images
    from genlab.images import png_bytes

    blank = torch.zeros(3, TILE, TILE, dtype=torch.uint8)
    tiles = []
    for s in frames:
        drawn = molecule_images([s], 1, TILE)  # (1, 3, TILE, TILE) or None when invalid
        tiles.append(blank if drawn is None else drawn[0])
    tiles = torch.stack(tiles)  # (K, 3, TILE, TILE)
    rows = [(f"{i + 1}-{min(i + PER_ROW, len(frames))}", tiles[i:i + PER_ROW]) for i in range(0, len(frames), PER_ROW)]
    return png_bytes(labelled_rows(rows, min(PER_ROW, len(frames))))


def apply_molecules(run, task: str, *, input, out, name: str, steps: int | None = None,
                    seeds: list[int] | None = None, **options) -> Path:
    """`genlab apply` for a run whose model encodes molecules: `task` must be interpolate; writes `out`."""
    from genlab.engine.checkpoint import atomic_write_bytes
    from genlab.metrics.molecules import canonical

    if task != "interpolate":
        raise ConfigError(f"{task} works on images; {name} is a {run.cfg.model_name} molecule run (it can interpolate)")
    given = sorted(k for k, v in options.items() if v is not None)
    if given:
        raise ConfigError(f"--{given[0].replace('_', '-')} is not an option of interpolate for molecule runs "
                          "(it takes --input or --seeds, --frames and --out)")
    p = Path(out)
    if p.suffix.lower() not in OUTPUTS:
        raise ConfigError(f"--out for a molecule run must be FILE.smi, FILE.txt or FILE.png, got {p.name}")
    if (input is None) == (seeds is None):
        raise ConfigError("interpolate takes either --input FILE.smi (2 molecules, one a line) or --seeds A B")
    if seeds is not None and len(seeds) != 2:
        raise ConfigError(f"--seeds takes two seeds, got {len(seeds)}")
    smiles = read_pair(input, run.tokenizer, run.cfg.data.column) if input is not None else None
    frames = interpolate_molecules(run.model, run.tokenizer, smiles=smiles, seeds=seeds,
                                   steps=8 if steps is None else steps)
    valid = [c for c in map(canonical, frames) if c is not None]
    ends = ""
    if smiles is not None:  # greedy decodes of the inputs' means: the model's reconstructions
        same = ["yes" if canonical(f) == s else "no" for f, s in zip((frames[0], frames[-1]), smiles)]
        ends = f"; the ends reproduce the inputs: {same[0]}, {same[1]}"
    log.info("interpolate: %d frames, %d valid, %d distinct valid molecules%s", len(frames), len(valid),
             len(set(valid)), ends)
    data = frames_png(frames) if p.suffix.lower() == ".png" else "".join(f + "\n" for f in frames).encode()
    atomic_write_bytes(p, data)
    return p
