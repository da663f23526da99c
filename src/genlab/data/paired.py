"""Two image domains for translation models (genlab.models.translation): A, the input, and B,
the target, held in memory as uint8 (N, C, S, S) per split.

Paired data (pix2pix): A[i] and B[i] show the same thing.
  mnist-edges, fashion-edges  A = `edge_map` of an MNIST / Fashion-MNIST image, B = the image
  paired-folder               data.path holds A/ and B/ with the same file names (x.png <-> x.jpg
                              pair up too); a pair must share one size, a folder one mode
Unpaired data (CycleGAN): two domains of any sizes, drawn independently.
  mnist-fashion               A = MNIST digits, B = Fashion-MNIST garments
  unpaired-folder             data.path holds A/ and B/ (any names, any counts)

Both domains share one channel count (a grey domain beside a colour one is repeated to RGB)
and one square size, the size the model translates at. Batches are {"a": (B, C, S, S),
"b": (B, C, S, S)} in the data space; a pair is cropped and flipped as one image.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from genlab.config import TRANSLATION_DATASETS, DataConfig
from genlab.data.datasets import (
    IMAGE_EXTENSIONS,
    BatchOrder,
    _count,
    _open_image,
    _split,
    channel_stats,
    list_class_folder,
    load_image_data,
    resolve_data_root,
)
from genlab.data.transforms import BatchPipeline
from genlab.errors import ConfigError, DataError, ShapeError

log = logging.getLogger("genlab")

EDGE_SOURCES = {"mnist-edges": "mnist", "fashion-edges": "fashion-mnist"}  # paired: edges -> image
UNPAIRED_SOURCES = {"mnist-fashion": ("mnist", "fashion-mnist")}  # unpaired: (domain A, domain B)
FOLDERS = {"paired-folder": True, "unpaired-folder": False}  # dataset -> paired
DATASETS = TRANSLATION_DATASETS  # named in genlab.config, which checks them against the model


# --------------------------------------------------------------------------- edge maps (pure)


def edge_map(x: torch.Tensor, threshold: float = 0.25) -> torch.Tensor:
    """Binary Sobel edges of uint8 images, a deterministic 'sketch' of each.

    The gradient magnitude of the grey level in [0, 1] (channels averaged), divided by 4 so that
    a sharp 0 -> 1 step scores 1, is thresholded at `threshold`.

    Args:
        x: uint8 (N, C, H, W).
    Returns:
        uint8 (N, C, H, W), 255 on edges and 0 elsewhere (the same map in every channel).
    """
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise ShapeError(f"edge_map expects uint8 images (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
    grey = x.float().mean(1, keepdim=True) / 255.0  # (N, 1, H, W)
    p = F.pad(grey, (1, 1, 1, 1), mode="replicate")  # (N, 1, H+2, W+2)
    # Sobel as differences smoothed by (1, 2, 1) across them: separable, and much faster on a CPU
    # than a 2-channel conv2d over tens of thousands of small images.
    dx = p[..., :, 2:] - p[..., :, :-2]  # (N, 1, H+2, W)
    dy = p[..., 2:, :] - p[..., :-2, :]  # (N, 1, H, W+2)
    gx = dx[..., :-2, :] + 2 * dx[..., 1:-1, :] + dx[..., 2:, :]  # (N, 1, H, W)
    gy = dy[..., :, :-2] + 2 * dy[..., :, 1:-1] + dy[..., :, 2:]  # (N, 1, H, W)
    edges = (gx.pow(2) + gy.pow(2)).sqrt() / 4.0 > threshold  # (N, 1, H, W)
    return (edges.to(torch.uint8) * 255).expand_as(x).contiguous()


# --------------------------------------------------------------------------- the data


@dataclass
class PairedData:
    """Domains A (input) and B (target) per split, uint8 (N, C, S, S). `paired`: A[i] and B[i]
    belong together (then both have N images per split)."""

    train_a: torch.Tensor
    train_b: torch.Tensor
    val_a: torch.Tensor
    val_b: torch.Tensor
    test_a: torch.Tensor
    test_b: torch.Tensor
    paired: bool
    source: str
    dataset: str
    domains: tuple[str, str]  # what A and B are, e.g. ("edges", "mnist"): names the extractor to use
    mean: list[float] = field(default_factory=list)  # per channel, [0, 1] units, both train domains
    std: list[float] = field(default_factory=list)

    @property
    def channels(self) -> int:
        return self.train_b.shape[1]

    @property
    def image_size(self) -> int:
        return self.train_b.shape[-1]

    @property
    def native_size(self) -> tuple[int, int]:
        """Translation works at the size the model was trained at (inputs of other sizes are refused)."""
        return (self.image_size, self.image_size)

    # The target domain stands for "the data" where the engine counts images.
    @property
    def train_x(self) -> torch.Tensor:
        return self.train_b

    @property
    def val_x(self) -> torch.Tensor:
        return self.val_b

    @property
    def test_x(self) -> torch.Tensor:
        return self.test_b

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) of split "train", "val" or "test"."""
        return getattr(self, f"{name}_a"), getattr(self, f"{name}_b")

    def meta(self) -> dict:
        """What a run directory keeps (data.json): ImageData's keys (`sizes` counts B, the
        targets) plus `sizes_a`, `paired` and `domains`."""
        splits = ("train", "val", "test")
        return {"dataset": self.dataset, "source": self.source, "native_size": list(self.native_size),
                "channels": self.channels, "image_size": self.image_size, "num_classes": None,
                "class_names": None, "mean": self.mean, "std": self.std,
                "sizes": {s: len(self.split(s)[1]) for s in splits},
                "sizes_a": {s: len(self.split(s)[0]) for s in splits},
                "paired": self.paired, "domains": list(self.domains)}

    def feeder(self, pipeline: BatchPipeline, batch_size: int, seed: int) -> PairedFeeder:
        """What the training engine draws batches from (see genlab.engine.trainer)."""
        return PairedFeeder(self, pipeline, batch_size, seed)


class PairedFeeder:
    """Batches {"a": (B, C, S, S), "b": (B, C, S, S)} for the engine. Paired data: one seeded
    order of pairs, each pair cropped and flipped as one image (its domains stacked on the
    channels). Unpaired: one order per domain (seeds derived from the run seed), each domain
    augmented on its own."""

    unit, per_example = "images", 1

    def __init__(self, data: PairedData, pipeline: BatchPipeline, batch_size: int, seed: int):
        from genlab.seed import derive_seed

        self.data, self.pipeline = data, pipeline
        p = pipeline
        # the pipeline's per-channel statistics, once for each domain of the stacked pair
        self.joint = BatchPipeline(p.mode, list(p.mean) * 2, list(p.std) * 2, hflip=p.hflip,
                                   crop_padding=p.crop_padding, binarize=p.binarize)
        if data.paired:
            self.orders = (BatchOrder(len(data.train_a), batch_size, seed, "image pairs"),)
        else:
            self.orders = tuple(BatchOrder(len(t), batch_size, derive_seed(seed, "domain", d), f"images in {d}/")
                                for d, t in (("A", data.train_a), ("B", data.train_b)))

    def _prepare(self, a: torch.Tensor, b: torch.Tensor, train: bool, device) -> dict[str, torch.Tensor]:
        if self.data.paired:
            x = self.joint(torch.cat([a, b], 1), train=train, device=device)["x"]  # (B, 2C, S, S)
            return {"a": x[:, :a.shape[1]], "b": x[:, a.shape[1]:]}
        return {"a": self.pipeline(a, train=train, device=device)["x"],
                "b": self.pipeline(b, train=train, device=device)["x"]}

    def train_batch(self, b: int, shard: int, micro: int, device) -> dict[str, torch.Tensor]:
        """Micro-batch `shard` (of size `micro`) of global batch number `b`."""
        idx = [o.indices(b)[shard * micro:(shard + 1) * micro] for o in self.orders]
        ia, ib = idx[0], idx[-1]
        return self._prepare(self.data.train_a[ia], self.data.train_b[ib], True, device)

    def eval_size(self, split: str) -> int:
        a, b = self.data.split(split)
        return min(len(a), len(b))

    def num_eval_batches(self, split: str, batch_size: int) -> int:
        return -(-self.eval_size(split) // batch_size)

    def eval_batch(self, split: str, i: int, batch_size: int, device) -> dict[str, torch.Tensor]:
        a, b = self.data.split(split)
        sl = slice(i * batch_size, min((i + 1) * batch_size, self.eval_size(split)))
        return self._prepare(a[sl], b[sl], False, device)

    @torch.no_grad()
    def write_samples(self, model, folder: Path, stem: str, seed: int) -> None:
        """The model's `gallery` of 8 held-out examples (validation split, else test, else
        train): labelled rows such as input / output / target."""
        from genlab.apply.io import labelled_rows
        from genlab.engine.checkpoint import atomic_write_bytes
        from genlab.images import png_bytes

        split = next((s for s in ("val", "test") if self.eval_size(s)), "train")
        k = min(8, self.eval_size(split))
        device = next(model.parameters()).device
        batch = self.eval_batch(split, 0, k, device)
        was_training = model.training
        model.eval()
        try:
            rows = [(label, self.pipeline.to_uint8(x)) for label, x in model.gallery(batch["a"], batch["b"])]
        finally:
            model.train(was_training)
        atomic_write_bytes(Path(folder) / f"{stem}.png", png_bytes(labelled_rows(rows, k)))


# --------------------------------------------------------------------------- loading


def load_paired_data(cfg: DataConfig, root: str | os.PathLike | None = None) -> PairedData:
    """Load and split the two domains `cfg.dataset` (one of DATASETS) names."""
    if cfg.normalize != "minus_one_one":
        raise ConfigError(f"translation data is scaled to [-1, 1] (the generators end in tanh), but "
                          f"data.normalize={cfg.normalize}; set data.normalize=minus_one_one")
    d = cfg.dataset
    if d in EDGE_SOURCES:
        base = load_image_data(dataclasses.replace(cfg, dataset=EDGE_SOURCES[d]), root, fallback=False)
        splits = [(edge_map(x), x) for x in (base.train_x, base.val_x, base.test_x)]
        return _assemble(splits, True, f"edges of {base.source}", d, ("edges", base.dataset))
    if d in UNPAIRED_SOURCES:
        da, db = (load_image_data(dataclasses.replace(cfg, dataset=s), root, fallback=False)
                  for s in UNPAIRED_SOURCES[d])
        splits = list(zip((da.train_x, da.val_x, da.test_x), (db.train_x, db.val_x, db.test_x)))
        return _assemble(splits, False, f"A: {da.source}; B: {db.source}", d, (da.dataset, db.dataset))
    if d not in FOLDERS:
        raise ConfigError(f"{d} is not a translation dataset; choose one of {', '.join(DATASETS)}")
    path = _domain_root(cfg, root)
    if FOLDERS[d]:
        a, b = read_paired_folder(path, cfg.image_size, cfg.channels)
        splits = _split_pairs(a, b, cfg)
        return _assemble(splits, True, f"paired-folder ({path})", d, ("A", "B"))
    # Unpaired folders: each domain read as an image folder; B at the size A came out at.
    da = load_image_data(dataclasses.replace(cfg, dataset="folder", path=str(path / "A")), root)
    db = load_image_data(dataclasses.replace(cfg, dataset="folder", path=str(path / "B"),
                                             image_size=cfg.image_size or da.image_size), root)
    splits = list(zip((da.train_x, da.val_x, da.test_x), (db.train_x, db.val_x, db.test_x)))
    return _assemble(splits, False, f"unpaired-folder ({path})", d, ("A", "B"))


def _domain_root(cfg: DataConfig, root: str | os.PathLike | None) -> Path:
    """data.path (relative to the data root when it is there), a folder holding A/ and B/."""
    if not cfg.path:
        raise DataError(f"data.dataset={cfg.dataset} needs data.path, a folder holding A/ and B/")
    p = Path(cfg.path)
    root_path = resolve_data_root(root)
    if not p.is_absolute() and root_path is not None and (root_path / p).exists():
        p = root_path / p
    missing = [s for s in ("A", "B") if not (p / s).is_dir()]
    if missing:
        raise DataError(f"{p} has no {' or '.join(f'{m}/' for m in missing)} folder; data.path must hold "
                        "A/ (inputs) and B/ (targets)")
    return p


def _assemble(splits: list[tuple[torch.Tensor, torch.Tensor]], paired: bool, source: str, dataset: str,
              domains: tuple[str, str]) -> PairedData:
    """PairedData from [(A, B)] of train, val, test: one channel count for both domains (grey
    repeated to RGB beside colour), statistics over both training domains."""
    c = max(t.shape[1] for pair in splits for t in pair)
    splits = [tuple(t.expand(-1, c, -1, -1).contiguous() for t in pair) for pair in splits]
    (tr_a, tr_b), (va_a, va_b), (te_a, te_b) = splits
    if tr_a.shape[-2:] != tr_b.shape[-2:]:
        raise ShapeError(f"domains A and B come out at {tuple(tr_a.shape[-2:])} and {tuple(tr_b.shape[-2:])}; "
                         "set data.image_size")
    mean, std = channel_stats(torch.cat([tr_a, tr_b]))
    return PairedData(tr_a, tr_b, va_a, va_b, te_a, te_b, paired, source, dataset, domains, mean, std)


def _split_pairs(a: torch.Tensor, b: torch.Tensor, cfg: DataConfig) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Hold out test and validation pairs as load_image_data does for folders (fixed seeds), then
    keep data.train_size training pairs; data.train_on=test swaps train and test."""
    x = torch.stack([a, b], 1)  # (N, 2, C, S, S): a pair stays together
    n = len(x)
    val = cfg.val_size if cfg.val_size < 1 else min(cfg.val_size, max(1, n // 10))
    x, _, te, _ = _split(x, None, _count(n, cfg.test_size), seed=2)
    tr, _, va, _ = _split(x, None, _count(n, val), seed=1)
    if cfg.train_on == "test":
        tr, te = te, tr
    if cfg.train_size is not None:
        if cfg.train_size > len(tr):
            raise DataError(f"data.train_size={cfg.train_size} but the training split has {len(tr)} pairs; "
                            "lower it or set it to null")
        tr, _, _, _ = _split(tr, None, len(tr) - cfg.train_size, seed=3)
    return [(t[:, 0], t[:, 1]) for t in (tr, va, te)]


def _image_files(folder: Path) -> dict[str, Path]:
    """{relative path without extension: file} of a domain folder's images."""
    files, _ = list_class_folder(folder, IMAGE_EXTENSIONS, "an image")
    out: dict[str, Path] = {}
    for f, _ in files:
        key = f.relative_to(folder).with_suffix("").as_posix()
        if key in out:
            raise DataError(f"{folder} holds {out[key].name} and {f.name}: two images named {key!r}; "
                            "keep one, so each name pairs with one image of the other folder")
        out[key] = f
    return out


def read_paired_folder(path: Path, size: int | None, channels: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """path/A and path/B with matching names -> (A, B), uint8 (N, C, S, S) each, in name order.

    Names match without their extension (A/x.png pairs with B/x.jpg). Refused with a DataError
    naming a file and the fix: a name in one folder only; a pair whose two images differ in size;
    a folder mixing grey and colour images (unless data.channels says which to convert to);
    pairs of different sizes, or non-square ones, unless data.image_size is set (each image is
    then resized on its short side and centre-cropped to it, as image folders are).
    """
    from PIL import Image

    fa, fb = _image_files(path / "A"), _image_files(path / "B")
    only_a, only_b = sorted(set(fa) - set(fb)), sorted(set(fb) - set(fa))
    if only_a or only_b:
        side, name = ("A", only_a[0]) if only_a else ("B", only_b[0])
        other = "B" if side == "A" else "A"
        raise DataError(f"{path}: {len(only_a)} image(s) in A/ and {len(only_b)} in B/ have no partner of the same "
                        f"name (e.g. {side}/{Path((fa if side == 'A' else fb)[name]).name} has none in {other}/); "
                        "give each image in A/ its partner in B/ under the same name")
    if not fa:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {path}/A and {path}/B")
    mode = {1: "L", 3: "RGB"}.get(channels)
    first: dict[str, tuple[str, Path]] = {}  # domain -> (mode, file) of its first image
    pair_size = None
    out: dict[str, list[torch.Tensor]] = {"A": [], "B": []}
    for key in sorted(fa):
        ims = {}
        for side, f in (("A", fa[key]), ("B", fb[key])):
            try:
                im = _open_image(f, mode)
            except (OSError, SyntaxError, Image.DecompressionBombError) as e:
                raise DataError(f"cannot read image {f} ({e}); remove or replace it") from None
            m0, f0 = first.setdefault(side, (im.mode, f))
            if im.mode != m0:
                raise DataError(f"{path}/{side} mixes grey and colour images ({f0.name} is {m0}, {f.name} is "
                                f"{im.mode}); convert them to one mode or set data.channels=1 or 3")
            ims[side] = im
        if ims["A"].size != ims["B"].size:
            (wa, ha), (wb, hb) = ims["A"].size, ims["B"].size
            raise DataError(f"{path}: A/{fa[key].name} is {wa}x{ha} but B/{fb[key].name} is {wb}x{hb}; "
                            "the two images of a pair must have one size")
        if size is None:
            pair_size = pair_size or ims["A"].size
            if ims["A"].size != pair_size:
                raise DataError(f"{path}: pairs come in sizes {pair_size[0]}x{pair_size[1]} and "
                                f"{ims['A'].size[0]}x{ims['A'].size[1]} ({fa[key].name}); set data.image_size "
                                "to resize them all to one square size")
        for side, im in ims.items():
            out[side].append(_to_tensor(im, size))
    a, b = torch.stack(out["A"]), torch.stack(out["B"])  # (N, C_a, S, S), (N, C_b, S, S)
    if a.shape[-1] != a.shape[-2]:
        raise ShapeError(f"{path} holds {a.shape[-2]}x{a.shape[-1]} pairs; set data.image_size to train on squares")
    c = max(a.shape[1], b.shape[1])
    return a.expand(-1, c, -1, -1).contiguous(), b.expand(-1, c, -1, -1).contiguous()


def _to_tensor(im, size: int | None) -> torch.Tensor:
    """A PIL image ("L" or "RGB") -> uint8 (C, H, W); with `size`, resized on its short side
    (bicubic) and centre-cropped to size x size."""
    import numpy as np
    from PIL import Image

    if size is not None:
        w, h = im.size
        s = size / min(w, h)
        im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
    a = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy((a[None] if a.ndim == 2 else a.transpose(2, 0, 1)).copy())
