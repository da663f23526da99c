"""Image datasets, held in memory as uint8 tensors (N, C, H, W).

Sources: MNIST / Fashion-MNIST IDX files in torchvision's `ROOT/<Name>/raw/` layout (gzipped
or not), a folder of PNG/JPEG images (class sub-folders give labels), an `.npz`/`.npy` array,
and scikit-learn's 8x8 digits as the offline fallback when MNIST is absent.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from genlab.config import DataConfig
from genlab.errors import DataError, ShapeError

log = logging.getLogger("genlab")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_IDX_DIRS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]


def resolve_data_root(explicit: str | os.PathLike | None = None) -> Path | None:
    """`explicit`, else $GENLAB_DATA, else ../shared/data (from the working directory or from
    the project checkout) when it exists, else None."""
    # A root the user names must exist: a typo must not silently become another dataset.
    for given, what in ((explicit, "--data-root"), (os.environ.get("GENLAB_DATA"), "$GENLAB_DATA")):
        if given:
            if not Path(given).is_dir():
                raise DataError(f"{what} {given} is not a folder; give the folder holding the datasets "
                                "(e.g. ../shared/data)")
            return Path(given)
    project = Path(__file__).resolve().parents[3]
    for cand in (Path.cwd() / ".." / "shared" / "data", project / ".." / "shared" / "data"):
        if cand.is_dir():
            return cand.resolve()
    return None


def cache_dir() -> Path:
    """genlab's own writable cache ($GENLAB_CACHE, else ~/.cache/genlab)."""
    d = Path(os.environ.get("GENLAB_CACHE", Path.home() / ".cache" / "genlab"))
    d.mkdir(parents=True, exist_ok=True)
    return d


# --------------------------------------------------------------------------- readers


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array of its stored dtype/shape.
    A damaged file is a DataError naming it, never an empty or partial array."""
    path = Path(path)
    fix = "re-download it or remove it"
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip reports damage as all three
        raise DataError(f"cannot read IDX file {path} ({e}); {fix}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path} is not an IDX file (bad magic number); {fix}")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise DataError(f"{path}: unknown IDX element type 0x{raw[2]:02x}; {fix}")
    nd = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(nd)]
    dtype = np.dtype(dtypes[raw[2]])
    expected = 4 + 4 * nd + math.prod(dims) * dtype.itemsize  # exact: np.prod can overflow on junk
    if len(raw) != expected:
        raise DataError(f"{path} is truncated or corrupt ({len(raw)} bytes, expected {expected}); {fix}")
    return np.frombuffer(raw, dtype, offset=4 + 4 * nd).reshape(dims)


def _find(raw_dir: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (raw_dir / name).is_file():
            return raw_dir / name
    return None


def _count_idx_files(root: Path | None, dataset: str) -> int:
    """How many of the dataset's four IDX files (train/test images/labels) exist under `root`."""
    if root is None:
        return 0
    raw_dir = root / _IDX_DIRS[dataset] / "raw"
    return sum(_find(raw_dir, stem) is not None for stems in _IDX_FILES.values() for stem in stems)


def load_idx_split(root: Path, dataset: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST-layout split -> (uint8 (N, 1, 28, 28), int64 (N,)). Raises DataError if absent."""
    raw_dir = root / _IDX_DIRS[dataset] / "raw"
    img_stem, lab_stem = _IDX_FILES[split]
    img_path, lab_path = _find(raw_dir, img_stem), _find(raw_dir, lab_stem)
    if img_path is None or lab_path is None:
        raise DataError(f"{dataset} {split} files not found in {raw_dir}; pass --data-root DIR "
                        f"(holding {_IDX_DIRS[dataset]}/raw/) or --download")
    x, y = read_idx(img_path), read_idx(lab_path)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise ShapeError(f"{img_path}: expected images (N, H, W) and labels (N,), got {x.shape} and {y.shape}; "
                         "re-download both files")
    return torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64))


def _download_idx(dataset: str) -> Path:
    """Fetch MNIST/Fashion-MNIST with torchvision into genlab's cache; returns the root."""
    import torchvision.datasets as tvd

    root = cache_dir() / "data"
    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST}[dataset]
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as e:  # noqa: BLE001  (network errors come in many types)
        raise DataError(f"downloading {dataset} failed ({type(e).__name__}); "
                        "check the network or pass --data-root") from None
    return root


def _open_image(f: Path, mode: str | None):
    """One image file as a PIL image in `mode` ("L" or "RGB"; None = "L" for grayscale files,
    else "RGB"), with any transparency composited onto white."""
    from PIL import Image

    with Image.open(f) as im:
        if mode is None:
            mode = "L" if Image.getmodebase(im.mode) == "L" else "RGB"
        if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
            # Dropping alpha would show whatever colour is stored under transparent pixels.
            im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
        return im.convert(mode)


def list_class_folder(path: Path, extensions: tuple[str, ...], kind: str) -> tuple[list[tuple[Path, int]], list[Path]]:
    """The files of a data folder: ([(file, class index)], class sub-folders). Sub-folders are
    classes, sorted by name; in a flat folder (no sub-folders) every index is -1. Hidden entries
    (.DS_Store, macOS ._x.png, .ipynb_checkpoints/) are never data; files without one of
    `extensions`, and files beside class sub-folders, are skipped with a warning naming `kind`
    ("an image", "an audio")."""
    hidden = (lambda f: any(part.startswith(".") for part in f.relative_to(path).parts))
    entries = [f for f in sorted(path.iterdir()) if not hidden(f)]
    subdirs = [d for d in entries if d.is_dir()]
    if subdirs:
        found = [(f, i) for i, d in enumerate(subdirs) for f in sorted(d.rglob("*"))
                 if f.is_file() and not hidden(f)]
        stray = [f for f in entries if f.is_file()]  # beside the class folders: no label, not used
    else:
        found, stray = [(f, -1) for f in entries if f.is_file()], []
    files = [(f, i) for f, i in found if f.suffix.lower() in extensions]
    skipped = [f for f, _ in found if f.suffix.lower() not in extensions] + stray
    if skipped:
        log.warning("skipping %d file(s) in %s without %s extension (%s) or outside the "
                    "class sub-folders, e.g. %s", len(skipped), path, kind, ", ".join(extensions), skipped[0])
    return files, subdirs


def load_folder(path: Path, size: int | None, channels: int | None) -> tuple[torch.Tensor, torch.Tensor | None, list[str] | None]:
    """A folder of images -> (uint8 (N, C, S, S), labels or None, class names or None).

    Sub-folders are classes (sorted by name); images are resized on the short side and
    centre-cropped to `size` (default: the first image's short side). Channels: `channels`
    if given (1 = grayscale, 3 = RGB), else 3 if any file is in colour (grayscale files are
    then replicated to RGB, as torchvision's ImageFolder does), else 1. Transparent pixels
    are composited onto a white background. Hidden files and files without an image
    extension are skipped with a warning; an unreadable image file is a DataError.
    """
    from PIL import Image

    if not path.is_dir():
        raise DataError(f"image folder {path} not found; set data.path relative to the data root")
    if channels not in (None, 1, 3):
        raise DataError(f"data.channels={channels} is not supported for image folders; use 1 or 3")
    files, subdirs = list_class_folder(path, IMAGE_EXTENSIONS, "an image")
    names = [d.name for d in subdirs] or None
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {path}; "
                        "put images there, or one sub-folder of images per class")
    images = []
    for f, _ in files:
        try:
            im = _open_image(f, {1: "L", 3: "RGB"}.get(channels))
        except (OSError, SyntaxError, Image.DecompressionBombError) as e:  # PIL's ways of saying 'damaged'
            raise DataError(f"cannot read image {f} ({e}); remove or replace it") from None
        if size is None:
            size = min(im.size)
        w, h = im.size
        s = size / min(w, h)
        im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        a = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
        images.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))  # (C, S, S)
    c = max(a.shape[0] for a in images)
    x = torch.from_numpy(np.stack([np.broadcast_to(a, (c, size, size)) for a in images]))
    y = torch.tensor([i for _, i in files]) if names else None
    return x, y, names


def load_array(path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """An .npz (with `images` and optional `labels`) or .npy of uint8 images, laid out as
    (N, H, W), (N, C, H, W) or (N, H, W, C) with C in {1, 3}."""
    if not path.is_file():
        raise DataError(f"array file {path} not found; set data.path relative to the data root")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if "images" not in z:
                    raise DataError(f"{path} has no 'images' array (found: {', '.join(z.files)})")
                x = z["images"]
                y = z["labels"] if "labels" in z else None
        else:
            x, y = np.load(path, allow_pickle=False), None
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if x.dtype != np.uint8:
        raise ShapeError(f"{path}: images must be uint8 (0-255), got {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ShapeError(f"{path}: images must be (N, H, W), (N, C, H, W) or (N, H, W, C) with C in 1 or 3; got {x.shape}")
    if y is not None and (y.ndim != 1 or len(y) != len(x)):
        raise ShapeError(f"{path}: labels must be (N,) = ({len(x)},), got {y.shape}")
    return torch.from_numpy(np.ascontiguousarray(x)), None if y is None else torch.from_numpy(y.astype(np.int64))


def load_digits_fallback() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 8x8 digits (values 0-16) as uint8 (N, 1, 28, 28), upscaled
    bilinearly so MNIST presets run unchanged."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images).float().unsqueeze(1) * (255.0 / 16.0)  # (N, 1, 8, 8)
    x = F.pad(x, (1, 1, 1, 1))  # MNIST digits sit inside a 4-pixel border; keep some margin
    x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8), torch.from_numpy(d.target.astype(np.int64))


# --------------------------------------------------------------------------- assembly


@dataclass
class ImageData:
    """A dataset's three splits in memory, plus what sampling needs to undo preprocessing."""

    train_x: torch.Tensor
    train_y: torch.Tensor | None
    val_x: torch.Tensor
    val_y: torch.Tensor | None
    test_x: torch.Tensor
    test_y: torch.Tensor | None
    native_size: tuple[int, int]  # (H, W) the user's data had; samples come back at this size
    source: str
    dataset: str  # the dataset really loaded: "digits" when MNIST fell back to it
    class_names: list[str] | None = None
    mean: list[float] = field(default_factory=list)  # per-channel, in [0, 1] units, train split
    std: list[float] = field(default_factory=list)
    num_labels: int | None = None  # semi-supervised runs: data.num_labels, data.labelled_batch
    labelled_batch: int = 0

    @property
    def channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def image_size(self) -> int:
        return self.train_x.shape[-1]

    @property
    def num_classes(self) -> int | None:
        if self.train_y is None:
            return None
        return len(self.class_names) if self.class_names else int(self.train_y.max()) + 1

    def meta(self) -> dict:
        """What a run directory keeps to turn model outputs back into images."""
        return {"dataset": self.dataset, "source": self.source, "native_size": list(self.native_size),
                "channels": self.channels,
                "image_size": self.image_size, "num_classes": self.num_classes,
                "class_names": self.class_names, "mean": self.mean, "std": self.std,
                "sizes": {"train": len(self.train_x), "val": len(self.val_x), "test": len(self.test_x)}}

    def feeder(self, pipeline, batch_size: int, seed: int) -> "ImageFeeder":
        """What the training engine draws batches from (see genlab.engine.trainer)."""
        if self.num_labels is not None:
            return SemiSupervisedFeeder(self, pipeline, batch_size, seed)
        return ImageFeeder(self, pipeline, batch_size, seed)


class BatchOrder:
    """Global batch number -> example indices: successive epochs of random permutations,
    each fixed by (seed, epoch), the incomplete tail of each epoch dropped."""

    def __init__(self, n: int, batch_size: int, seed: int, what: str = "images"):
        from genlab.errors import ConfigError

        if n < batch_size:
            raise ConfigError(f"the training split has {n} {what}, fewer than train.batch_size={batch_size}; "
                              "lower train.batch_size")
        self.n, self.bs, self.seed = n, batch_size, seed
        self.per_epoch = n // batch_size
        self._epoch, self._perm = -1, None

    def indices(self, b: int) -> torch.Tensor:
        from genlab.seed import derive_seed, make_generator

        epoch, i = divmod(b, self.per_epoch)
        if epoch != self._epoch:
            g = make_generator(derive_seed(self.seed, "epoch", epoch))
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g)
        return self._perm[i * self.bs:(i + 1) * self.bs]


class ImageFeeder:
    """Image batches for the engine: epochs of seeded permutations, prepared by the batch
    pipeline (augmentation and binarisation draw from torch's global generator, which the
    engine seeds per micro-batch)."""

    unit, per_example = "images", 1

    def __init__(self, data: ImageData, pipeline, batch_size: int, seed: int):
        self.data, self.pipeline = data, pipeline
        self.train_y = data.train_y  # the labels training sees (-1: unlabelled, SemiSupervisedFeeder)
        self.order = BatchOrder(len(data.train_x), batch_size, seed)

    def train_batch(self, b: int, shard: int, micro: int, device) -> dict[str, torch.Tensor]:
        """Micro-batch `shard` (of size `micro`) of global batch number `b`."""
        return self.batch_at(self.order.indices(b)[shard * micro:(shard + 1) * micro], device)

    def batch_at(self, idx: torch.Tensor, device) -> dict[str, torch.Tensor]:
        """The training examples `idx`, prepared (private training's Poisson batches)."""
        y = self.train_y[idx] if self.train_y is not None else None
        return self.pipeline(self.data.train_x[idx], y, device=device)

    def eval_size(self, split: str) -> int:
        return len(getattr(self.data, f"{split}_x"))

    def num_eval_batches(self, split: str, batch_size: int) -> int:
        return -(-self.eval_size(split) // batch_size)

    def eval_batch(self, split: str, i: int, batch_size: int, device) -> dict[str, torch.Tensor]:
        x, y = getattr(self.data, f"{split}_x"), getattr(self.data, f"{split}_y")
        sl = slice(i * batch_size, (i + 1) * batch_size)
        return self.pipeline(x[sl], y[sl] if y is not None else None, train=False, device=device)

    @torch.no_grad()
    def write_samples(self, model, folder: Path, stem: str, seed: int) -> None:
        """A grid from fixed noise; conditional models: one column per class. A model that draws
        no samples (a pretext task) shows its `gallery` of 8 held-out images instead."""
        from genlab.images import save_grid
        from genlab.sampling import draw_samples

        if not getattr(model, "draws_samples", True) and hasattr(model, "gallery"):
            return self._write_gallery(model, folder, stem, seed)
        k = model.num_classes if model.conditional else None
        nrow = k if k and k <= 16 else 8
        images, _ = draw_samples(model, self.pipeline, nrow * 8, seed=seed, native_size=self.data.native_size)
        save_grid(images, folder / f"{stem}.png", nrow=nrow)

    def _write_gallery(self, model, folder: Path, stem: str, seed: int) -> None:
        """folder/stem.png: the labelled rows of `model.gallery(x, seed)` for the first 8 images of
        the validation split (else test, else train)."""
        from genlab.apply.io import labelled_rows
        from genlab.engine.checkpoint import atomic_write_bytes
        from genlab.images import png_bytes, resize_uint8

        split = next((s for s in ("val", "test") if self.eval_size(s)), "train")
        k = min(8, self.eval_size(split))
        batch = self.eval_batch(split, 0, k, next(model.parameters()).device)
        was_training = model.training
        model.eval()
        try:
            rows = [(label, resize_uint8(self.pipeline.to_uint8(x), self.data.native_size))
                    for label, x in model.gallery(batch["x"], seed)]
        finally:
            model.train(was_training)
        atomic_write_bytes(Path(folder) / f"{stem}.png", png_bytes(labelled_rows(rows, k)))


def balanced_label_subset(y: torch.Tensor, num_labels: int, num_classes: int, seed: int) -> torch.Tensor:
    """Indices of `num_labels` training images, num_labels / num_classes of each class, a random
    choice fixed by `seed` (sorted); the labelled set of a semi-supervised run. ConfigError when
    the classes cannot all give their share."""
    from genlab.errors import ConfigError
    from genlab.seed import derive_seed, make_generator

    if num_labels > len(y):
        raise ConfigError(f"data.num_labels={num_labels} but the training split has {len(y)} images; lower it")
    if num_labels % num_classes:
        raise ConfigError(f"data.num_labels={num_labels} must be a multiple of the {num_classes} classes "
                          "(the same number of labels per class)")
    per_class = num_labels // num_classes
    return pick_per_class(y, {c: per_class for c in range(num_classes)}, make_generator(derive_seed(seed, "labels")),
                          lambda c, want, have: ConfigError(
                              f"data.num_labels={num_labels} asks {want} labels of class {c}, which has only {have} "
                              "training images; lower data.num_labels"))


def pick_per_class(y: torch.Tensor, want: dict[int, int], g: torch.Generator, too_few) -> torch.Tensor:
    """Sorted indices of want[c] examples of each class c, a random choice drawn from `g`;
    `too_few(c, want, have)` makes the error raised when a class has fewer examples."""
    picks = []
    for c, k in want.items():
        members = (y == c).nonzero().flatten()
        if len(members) < k:
            raise too_few(c, k, len(members))
        picks.append(members[torch.randperm(len(members), generator=g)[:k]])
    return torch.cat(picks).sort().values


class SemiSupervisedFeeder(ImageFeeder):
    """Batches for semi-supervised training (data.num_labels): only a class-balanced subset of the
    training images keeps its labels (fixed by the run seed), the others are -1. Every micro-batch
    is its share of the usual epoch order (mostly unlabelled) plus its share of data.labelled_batch
    images drawn from the labelled subset with torch's global generator, which the engine seeds
    per micro-batch: with 100 labels among 55,000 images, epoch order alone would leave most
    batches without a single label."""

    def __init__(self, data: ImageData, pipeline, batch_size: int, seed: int):
        from genlab.errors import ConfigError

        super().__init__(data, pipeline, batch_size, seed)
        if data.train_y is None:
            raise ConfigError("data.num_labels keeps some training labels, but this data has none; use labelled "
                              "data (class sub-folders, an .npz with labels, MNIST) or drop data.num_labels")
        self.labelled = balanced_label_subset(data.train_y, data.num_labels, data.num_classes, seed)
        self.train_y = torch.full_like(data.train_y, -1)
        self.train_y[self.labelled] = data.train_y[self.labelled]
        self.batch_size = batch_size

    def train_batch(self, b: int, shard: int, micro: int, device) -> dict[str, torch.Tensor]:
        from genlab.errors import ConfigError

        shards = self.batch_size // micro
        if self.data.labelled_batch % shards:
            raise ConfigError(f"data.labelled_batch={self.data.labelled_batch} must be divisible by the "
                              f"{shards} micro-batches of a batch (train.accum x processes)")
        pick = torch.randint(len(self.labelled), (self.data.labelled_batch // shards,))
        idx = self.order.indices(b)[shard * micro:(shard + 1) * micro]
        return self.batch_at(torch.cat([idx, self.labelled[pick]]), device)


def channel_stats(x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Exact per-channel mean and std of uint8 images in [0, 1] units, from value histograms."""
    v = torch.arange(256, dtype=torch.float64) / 255.0
    mean, std = [], []
    for c in range(x.shape[1]):
        h = torch.bincount(x[:, c].reshape(-1), minlength=256).double()
        m = (h * v).sum() / h.sum()
        mean.append(m.item())
        std.append(max(((h * (v - m) ** 2).sum() / h.sum()).sqrt().item(), 1e-3))
    return mean, std


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    y = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8)


def _count(n_total: int, size: float) -> int:
    return int(round(size * n_total)) if size < 1 else int(size)


def _split(x: torch.Tensor, y: torch.Tensor | None, n_hold: int, seed: int):
    """Hold out `n_hold` random items (fixed by `seed`, independent of the run seed)."""
    if n_hold <= 0:
        return x, y, x[:0], None if y is None else y[:0]
    if n_hold >= len(x):
        raise DataError(f"cannot hold out {n_hold} of {len(x)} images; lower data.val_size/test_size")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    keep, hold = perm[n_hold:].sort().values, perm[:n_hold].sort().values
    pick = (lambda t, i: None if t is None else t[i])
    return x[keep], pick(y, keep), x[hold], pick(y, hold)


def load_image_data(cfg: DataConfig, root: str | os.PathLike | None = None, *,
                    fallback: bool = True) -> ImageData:
    """Load, resize and split the dataset `cfg` describes. `root` as in resolve_data_root.
    With `fallback`, MNIST absent from the data root (none of its files) is replaced by the
    8x8 digits (ImageData.dataset says so); without, it is a DataError."""
    from genlab.data import paired

    if cfg.dataset in paired.DATASETS:  # two domains for translation models: genlab.data.paired
        return paired.load_paired_data(cfg, root)
    root_path = resolve_data_root(root)
    names = None
    if cfg.dataset in _IDX_DIRS:
        found = _count_idx_files(root_path, cfg.dataset)
        # Only missing files are replaced (by a download, or for MNIST with no files at all by the
        # digits); files that are there are read, so a damaged copy is refused, never skipped.
        if found < 4 and cfg.download:
            dl = _download_idx(cfg.dataset)
            tr_x, tr_y = load_idx_split(dl, cfg.dataset, "train")
            te_x, te_y = load_idx_split(dl, cfg.dataset, "test")
            source = f"{cfg.dataset} (downloaded to {dl})"
        elif found == 0 and cfg.dataset == "mnist" and fallback:
            log.warning("MNIST not found under %s; falling back to scikit-learn's 8x8 digits "
                        "(1,797 images, upscaled to 28x28); pass --data-root or --download for MNIST",
                        root_path or "any data root")
            return load_image_data(DataConfig(**{**cfg.__dict__, "dataset": "digits"}), root)
        elif root_path is None:
            raise DataError(f"{cfg.dataset} not found (no data root); pass --data-root DIR "
                            f"(holding {_IDX_DIRS[cfg.dataset]}/raw/) or --download")
        else:
            tr_x, tr_y = load_idx_split(root_path, cfg.dataset, "train")
            te_x, te_y = load_idx_split(root_path, cfg.dataset, "test")
            source = f"{cfg.dataset} ({root_path / _IDX_DIRS[cfg.dataset] / 'raw'})"
        if cfg.dataset == "fashion-mnist":
            names = FASHION_CLASSES
        tr_x, tr_y, va_x, va_y = _split(tr_x, tr_y, _count(len(tr_x), cfg.val_size), seed=1)
    else:
        if cfg.dataset == "digits":
            x, y = load_digits_fallback()
            source = "scikit-learn 8x8 digits (upscaled to 28x28)"
        elif cfg.dataset == "photos":  # random crops of colour photos (genlab.data.photos)
            from genlab.data.photos import load_photo_crops

            p = None if not cfg.path else Path(cfg.path)
            if p is not None and not p.is_absolute() and root_path is not None and (root_path / p).exists():
                p = root_path / p
            (x, source), y = load_photo_crops(p, cfg.image_size), None
        else:
            if not cfg.path:
                raise DataError(f"data.dataset={cfg.dataset} needs data.path (a folder or .npz/.npy file)")
            p = Path(cfg.path)
            if not p.is_absolute() and root_path is not None and (root_path / p).exists():
                p = root_path / p
            if cfg.dataset == "folder":
                x, y, names = load_folder(p, cfg.image_size, cfg.channels)
            else:
                x, y = load_array(p)
            source = f"{cfg.dataset} ({p})"
        n = len(x)
        # Small datasets: the val/test counts default to fractions of what is there.
        val = cfg.val_size if cfg.val_size < 1 else min(cfg.val_size, max(1, n // 10))
        x, y, te_x, te_y = _split(x, y, _count(n, cfg.test_size), seed=2)
        tr_x, tr_y, va_x, va_y = _split(x, y, _count(n, val), seed=1)
    if cfg.channels is not None and tr_x.shape[1] != cfg.channels:
        if cfg.channels == 3 and tr_x.shape[1] == 1:
            tr_x, va_x, te_x = (t.expand(-1, 3, -1, -1).contiguous() for t in (tr_x, va_x, te_x))
        else:
            raise ShapeError(f"data.channels={cfg.channels} but the data has {tr_x.shape[1]} channels")
    if cfg.train_on == "test":  # a reference model for membership audits: never saw the train split
        tr_x, tr_y, te_x, te_y = te_x, te_y, tr_x, tr_y
    if cfg.train_size is not None:
        if cfg.train_size > len(tr_x):
            raise DataError(f"data.train_size={cfg.train_size} but the training split has {len(tr_x)} images; "
                            "lower it or set it to null")
        tr_x, tr_y, _, _ = _split(tr_x, tr_y, len(tr_x) - cfg.train_size, seed=3)
    native = (tr_x.shape[-2], tr_x.shape[-1])
    if cfg.image_size is not None:
        tr_x, va_x, te_x = (_resize(t, cfg.image_size) for t in (tr_x, va_x, te_x))
    elif native[0] != native[1]:
        raise ShapeError(f"images are {native[0]}x{native[1]}; set data.image_size to train on squares")
    mean, std = channel_stats(tr_x)
    data = ImageData(tr_x.contiguous(), tr_y, va_x.contiguous(), va_y, te_x.contiguous(), te_y,
                     native, source, cfg.dataset, names, mean, std, cfg.num_labels, cfg.labelled_batch)
    if cfg.style is not None:  # style transfer: the style image goes with every batch (genlab.data.photos)
        from genlab.data.photos import with_style

        data = with_style(data, cfg.style, root_path)
    return data
