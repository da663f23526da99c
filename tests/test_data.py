import gzip
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from genlab.config import DataConfig
from genlab.data.datasets import load_array, load_idx_split, load_image_data, read_idx
from genlab.data.transforms import BatchPipeline, denormalize, normalize, random_crop, random_hflip
from genlab.errors import DataError, ShapeError

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_idx_reader_on_real_mnist(data_root):
    x, y = load_idx_split(data_root, "mnist", "train")
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.uint8
    assert torch.bincount(y).tolist() == MNIST_TRAIN_COUNTS
    assert x.double().mean().item() / 255 == pytest.approx(0.1307, abs=1e-4)
    xt, yt = load_idx_split(data_root, "mnist", "test")
    assert xt.shape == (10000, 1, 28, 28)
    assert torch.bincount(yt).tolist() == MNIST_TEST_COUNTS


def test_idx_reader_uncompressed_and_truncated(data_root, tmp_path):
    raw = gzip.open(data_root / "MNIST/raw/t10k-labels-idx1-ubyte.gz").read()
    (tmp_path / "labels").write_bytes(raw)
    assert read_idx(tmp_path / "labels").tolist()[:5] == [7, 2, 1, 0, 4]
    (tmp_path / "short").write_bytes(raw[:-10])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "short")
    (tmp_path / "junk").write_bytes(b"hello world")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "junk")


def test_mnist_splits_are_disjoint_and_sized(data_root):
    d = load_image_data(DataConfig(dataset="mnist"), data_root)
    assert (len(d.train_x), len(d.val_x), len(d.test_x)) == (55000, 5000, 10000)
    assert d.num_classes == 10 and d.native_size == (28, 28)
    # train and val are a partition of the official training split
    full, _ = load_idx_split(data_root, "mnist", "train")
    assert full.double().sum() == d.train_x.double().sum() + d.val_x.double().sum()
    assert d.mean[0] == pytest.approx(d.train_x.double().mean().item() / 255, abs=1e-9)


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"fashion-mnist train files not found in .*--data-root"):
        load_image_data(DataConfig(dataset="fashion-mnist"), tmp_path)


def test_mnist_falls_back_to_sklearn_digits(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="genlab"):
        d = load_image_data(DataConfig(dataset="mnist"), tmp_path)
    assert "scikit-learn's 8x8 digits" in caplog.text
    assert d.train_x.shape[1:] == (1, 28, 28)
    assert len(d.train_x) + len(d.val_x) + len(d.test_x) == 1797
    assert d.num_classes == 10


def _make_folder(root, sizes_modes):
    rng = np.random.default_rng(0)
    for cls, items in sizes_modes.items():
        (root / cls).mkdir(parents=True)
        for i, (w, h, mode) in enumerate(items):
            a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(a).convert(mode).save(root / cls / f"{i}.{'jpg' if mode == 'L' else 'png'}")


def test_rgb_image_folder_loads_with_labels(tmp_path):
    _make_folder(tmp_path / "imgs", {"cat": [(40, 30, "RGB"), (64, 64, "RGBA"), (33, 50, "P")] * 4,
                                      "dog": [(20, 20, "L"), (100, 70, "RGB")] * 4})
    cfg = DataConfig(dataset="folder", path=str(tmp_path / "imgs"), image_size=32, channels=3,
                     normalize="minus_one_one", val_size=0.1, test_size=0.1)
    d = load_image_data(cfg, tmp_path)
    n = len(d.train_x) + len(d.val_x) + len(d.test_x)
    assert n == 20 and d.train_x.shape[1:] == (3, 32, 32) and d.train_x.dtype == torch.uint8
    assert d.class_names == ["cat", "dog"] and d.num_classes == 2
    assert sorted(torch.cat([d.train_y, d.val_y, d.test_y]).tolist()) == [0] * 12 + [1] * 8


def test_empty_folder_and_bad_arrays(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_image_data(DataConfig(dataset="folder", path=str(tmp_path / "empty")), tmp_path)
    np.save(tmp_path / "f.npy", np.zeros((4, 8, 8), np.float32))
    with pytest.raises(ShapeError, match="must be uint8"):
        load_array(tmp_path / "f.npy")
    np.savez(tmp_path / "n.npz", pictures=np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(DataError, match="no 'images' array"):
        load_array(tmp_path / "n.npz")


@pytest.mark.parametrize("shape", [(10, 8, 8), (10, 3, 8, 8), (10, 8, 8, 3)])
def test_array_layouts(tmp_path, shape):
    a = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=a, labels=np.arange(10) % 2)
    x, y = load_array(tmp_path / "a.npz")
    assert x.shape[0] == 10 and x.shape[-2:] == (8, 8) and y.tolist() == [0, 1] * 5
    if len(shape) == 4 and shape[-1] == 3:
        assert torch.equal(x, torch.from_numpy(a).permute(0, 3, 1, 2))


@pytest.mark.parametrize("mode", ["zero_one", "minus_one_one", "standardize"])
def test_normalize_round_trips(mode):
    x = torch.randint(0, 256, (16, 3, 5, 5), dtype=torch.uint8)
    mean, std = [0.1, 0.5, 0.9], [0.2, 0.3, 0.25]
    f = normalize(x, mode, mean, std)
    assert f.dtype == torch.float32
    if mode == "minus_one_one":
        assert f.min() >= -1 and f.max() <= 1
    if mode == "standardize":
        assert torch.allclose(f[:, 1], (x[:, 1].float() / 255 - 0.5) / 0.3, atol=1e-6)
    assert torch.equal(denormalize(f, mode, mean, std), x)


def test_random_crop_shifts_each_image_within_the_padding():
    torch.manual_seed(0)
    x = torch.randint(1, 256, (64, 2, 6, 6), dtype=torch.uint8)  # no zeros, so padding shows
    out = random_crop(x, 2)
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    shifts = set()
    for i in range(len(x)):
        hits = [(dy, dx) for dy in range(5) for dx in range(5)
                if torch.equal(padded[i, :, dy:dy + 6, dx:dx + 6], out[i])]
        assert len(hits) == 1, "each output must be one crop of its own padded image"
        shifts.add(hits[0])
    assert len(shifts) > 10  # offsets really vary across the batch


def test_hflip_flips_about_half():
    torch.manual_seed(0)
    x = torch.arange(1000 * 4, dtype=torch.float32).view(1000, 1, 1, 4)
    out = random_hflip(x)
    flipped = (out[:, 0, 0, 0] == x[:, 0, 0, 3])
    assert torch.equal(out[flipped], x[flipped].flip(-1)) and torch.equal(out[~flipped], x[~flipped])
    assert 400 < int(flipped.sum()) < 600


def test_pipeline_binarises_and_is_reproducible():
    x = torch.full((256, 1, 4, 4), 64, dtype=torch.uint8)
    y = torch.arange(256)
    p = BatchPipeline("zero_one", [0.0], [1.0], hflip=True, crop_padding=1, binarize=True)
    torch.manual_seed(3)
    a = p(x, y)
    torch.manual_seed(3)
    b = p(x, y)
    assert torch.equal(a["x"], b["x"]) and torch.equal(a["y"], y)
    assert set(a["x"].unique().tolist()) <= {0.0, 1.0}
    # interior pixels are 1 with probability 64/255; padding pixels are 0
    assert a["x"][:, :, 1:3, 1:3].mean().item() == pytest.approx(64 / 255, abs=0.03)
    # eval batches are not augmented
    assert p(x, y, train=False)["x"].shape == (256, 1, 4, 4)
