"""Colour photos for style transfer: reading them, the `photos` dataset of random crops, and the
style image that rides along with every batch of a style-transfer run.

Photos are files of any format Pillow reads, or `sample:NAME`, one of the sample photos that
scikit-learn (a core dependency) ships offline: `sample:china.jpg` (a temple) and
`sample:flower.jpg` (427 x 640 each). Transparent pixels are composited onto white.

`data.dataset=photos` is CROPS random square crops (a random photo, a random scale between
the whole shorter side and a quarter of it, a random place) of the photos in `data.path` (a
folder; default: the sample photos), resized to `data.image_size`: a fixed set, drawn once from
a fixed seed, that the usual splits and batches take from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from genlab.data.datasets import IMAGE_EXTENSIONS, ImageData, ImageFeeder
from genlab.errors import DataError, ShapeError

SAMPLE_PREFIX = "sample:"
SAMPLE_PHOTOS = ("china.jpg", "flower.jpg")
CROPS = 1000  # crops in the photos dataset
CROP_SEED = 4  # fixed: the dataset is the same for every run seed


def read_photo(source: str | os.PathLike, what: str, *, max_side: int | None = None,
               colour: bool = True) -> torch.Tensor:
    """A photo file or `sample:NAME` -> uint8 (1, 3, H, W).

    Args:
        what: how messages call it ("--content", "data.style").
        max_side: refuse an image with a longer side above this (None: any size).
        colour: refuse a greyscale image (True) or replicate it to RGB (False).
    """
    from PIL import Image, UnidentifiedImageError

    s = str(source)
    if s.startswith(SAMPLE_PREFIX):
        name = s[len(SAMPLE_PREFIX):]
        if name not in SAMPLE_PHOTOS:
            raise DataError(f"{what}: no sample photo {name!r}; the sample photos are "
                            f"{', '.join(SAMPLE_PREFIX + n for n in SAMPLE_PHOTOS)}")
        p = sample_photo_path(name)
    else:
        p = Path(s)
        if not p.is_file():
            raise DataError(f"{what}: {p} not found; give an image file or one of "
                            f"{', '.join(SAMPLE_PREFIX + n for n in SAMPLE_PHOTOS)}")
    try:
        with Image.open(p) as im:
            if Image.getmodebase(im.mode) == "L" and colour:
                raise ShapeError(f"{what}: {p} is a greyscale image; style transfer works on colour photos: "
                                 "give an RGB image")
            if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
                im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
            a = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except UnidentifiedImageError:
        raise DataError(f"{what}: cannot read {p}: not an image format Pillow knows") from None
    except (Image.DecompressionBombError, OSError, ValueError) as e:  # truncated, damaged, huge
        raise DataError(f"{what}: cannot read {p}: {e}") from None
    H, W = a.shape[:2]
    if max_side is not None and max(H, W) > max_side:
        raise ShapeError(f"{what}: {s} is {W}x{H} pixels; style transfer takes images up to {max_side} pixels "
                         "a side: resize it")
    return torch.from_numpy(a.transpose(2, 0, 1).copy())[None]  # (1, 3, H, W)


def sample_photo_path(name: str) -> Path:
    """Where scikit-learn keeps sample photo `name` (sklearn/datasets/images/), found without
    importing sklearn.datasets (seconds of imports for one JPEG)."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    p = Path(spec.submodule_search_locations[0]) / "datasets" / "images" / name if spec else None
    if p is None or not p.is_file():
        raise DataError(f"scikit-learn's sample photo {name} is missing (looked in {p}); reinstall scikit-learn")
    return p


def scale_to(image: torch.Tensor, short_side: int) -> torch.Tensor:
    """uint8 (1, C, H, W) resized (antialiased bilinear, aspect kept) so its shorter side is
    `short_side`; the style image is matched to the content's scale this way."""
    H, W = image.shape[-2:]
    k = short_side / min(H, W)
    size = (max(1, round(H * k)), max(1, round(W * k)))
    if size == (H, W):
        return image
    y = F.interpolate(image.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8)


def folder_photos(path: Path) -> list[torch.Tensor]:
    """Every image in a folder (sub-folders included), uint8 (1, 3, H, W) each."""
    if not path.is_dir():
        raise DataError(f"photo folder {path} not found; set data.path to a folder of photos (or leave it unset "
                        "for the sample photos)")
    files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
                   and not any(part.startswith(".") for part in f.relative_to(path).parts))
    if not files:
        raise DataError(f"no images found in {path}; put photos there (.png, .jpg, ...)")
    return [read_photo(f, "data.path", colour=False) for f in files]


def photo_crops(photos: list[torch.Tensor], n: int, size: int, seed: int) -> torch.Tensor:
    """n random square crops -> uint8 (n, 3, size, size): for each, a random photo, a crop side
    between the photo's shorter side and a quarter of it (at least `size`, when the photo
    allows), a random place, resized to size x size."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(n, 3, size, size, dtype=torch.uint8)
    for i in range(n):
        img = photos[int(torch.randint(len(photos), (1,), generator=g))]
        H, W = img.shape[-2:]
        short = min(H, W)
        lo = min(short, max(size, short // 4))
        side = int(torch.randint(lo, short + 1, (1,), generator=g))
        y0 = int(torch.randint(H - side + 1, (1,), generator=g))
        x0 = int(torch.randint(W - side + 1, (1,), generator=g))
        crop = img[..., y0:y0 + side, x0:x0 + side].float()  # (1, 3, side, side)
        out[i] = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True,
                               align_corners=False).round().clamp(0, 255).to(torch.uint8)[0]
    return out


def load_photo_crops(path: Path | None, size: int | None) -> tuple[torch.Tensor, str]:
    """The photos dataset: (uint8 (CROPS, 3, size, size), its source description)."""
    if size is None:
        raise DataError("data.dataset=photos needs data.image_size, the side of its square crops (e.g. 128)")
    photos = folder_photos(path) if path is not None else [read_photo(SAMPLE_PREFIX + n, "photos")
                                                          for n in SAMPLE_PHOTOS]
    where = str(path) if path is not None else "scikit-learn's sample photos " + ", ".join(SAMPLE_PHOTOS)
    return photo_crops(photos, CROPS, size, CROP_SEED), f"photos ({CROPS} random {size}x{size} crops of {where})"


# --------------------------------------------------------------------------- the style image


class StyleFeeder(ImageFeeder):
    """ImageFeeder whose batches also hold "style": the style image (1, 3, h, w), prepared by
    the pipeline without augmentation, beside the content images "x"."""

    def __init__(self, data: StyleData, pipeline, batch_size: int, seed: int):
        super().__init__(data, pipeline, batch_size, seed)
        self.style = data.style

    def _with_style(self, batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
        batch["style"] = self.pipeline(self.style, train=False, device=device)["x"]
        return batch

    def batch_at(self, idx: torch.Tensor, device) -> dict[str, torch.Tensor]:
        return self._with_style(super().batch_at(idx, device), device)

    def eval_batch(self, split: str, i: int, batch_size: int, device) -> dict[str, torch.Tensor]:
        return self._with_style(super().eval_batch(split, i, batch_size, device), device)

    @torch.no_grad()
    def write_samples(self, model, folder: Path, stem: str, seed: int) -> None:
        """Two rows: 8 validation (else training) content images, and the model's stylisations."""
        from genlab.images import save_grid

        x = (self.data.val_x if len(self.data.val_x) else self.data.train_x)[:8]
        dev = next(model.parameters()).device
        out = self.pipeline.to_uint8(model(self.pipeline(x, train=False, device=dev)["x"]))
        save_grid(torch.cat([x, out]), folder / f"{stem}.png", nrow=len(x))


@dataclass
class StyleData(ImageData):
    """An image dataset (the content images) plus the style image, uint8 (1, 3, h, w)."""
    style: torch.Tensor | None = None
    style_source: str = ""

    def meta(self) -> dict:
        return {**super().meta(), "style": self.style_source, "style_size": list(self.style.shape[-2:])}

    def feeder(self, pipeline, batch_size: int, seed: int) -> StyleFeeder:
        return StyleFeeder(self, pipeline, batch_size, seed)


def with_style(data: ImageData, source: str, root: Path | None) -> StyleData:
    """`data` (an ImageData of colour content images) as a StyleData holding the style image
    `source` (a file, relative to the data root or the working directory, or sample:NAME),
    scaled so its shorter side matches the content images' size."""
    if data.channels != 3:
        raise ShapeError(f"data.style needs colour content images, got {data.channels} channel(s); "
                         "set data.channels=3")
    p = source
    if not source.startswith(SAMPLE_PREFIX) and not Path(source).is_absolute() and root is not None \
            and (root / source).is_file():
        p = str(root / source)
    style = scale_to(read_photo(p, "data.style", colour=False), data.image_size)
    fields = {k: getattr(data, k) for k in ImageData.__dataclass_fields__}
    return StyleData(**fields, style=style, style_source=p)
