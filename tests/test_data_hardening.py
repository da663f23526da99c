"""Damaged MNIST files are refused (not replaced by the digits fallback); image folders with
mixed channel counts, transparency and stray files load deterministically (issue 19)."""

import gzip
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from genlab.config import DataConfig
from genlab.data import datasets
from genlab.data.datasets import load_folder, load_image_data
from genlab.errors import DataError

FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _idx_bytes(a: np.ndarray) -> bytes:
    """uint8 array -> IDX bytes (magic 0x00 0x00 0x08 ndim, big-endian dims, data)."""
    head = bytes([0, 0, 0x08, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    return head + a.astype(np.uint8).tobytes()


def _fake_mnist(root, n_train=20, n_test=10):
    """A tiny MNIST/raw/ of gzipped IDX files under `root`; returns the raw dir."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        img, lab = FILES[split]
        (raw / f"{img}.gz").write_bytes(gzip.compress(_idx_bytes(rng.integers(0, 256, (n, 28, 28)))))
        (raw / f"{lab}.gz").write_bytes(gzip.compress(_idx_bytes(np.arange(n) % 10)))
    return raw


def test_fake_mnist_loads_and_records_the_dataset(tmp_path):
    _fake_mnist(tmp_path)
    d = load_image_data(DataConfig(dataset="mnist", val_size=0.2), tmp_path)
    assert (len(d.train_x), len(d.val_x), len(d.test_x)) == (16, 4, 10)
    assert d.dataset == "mnist" and d.meta()["dataset"] == "mnist"


def test_digits_fallback_records_digits(tmp_path):
    d = load_image_data(DataConfig(dataset="mnist"), tmp_path)
    assert d.dataset == "digits" and d.meta()["dataset"] == "digits"


def _truncated_gz(raw):
    p = raw / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:-40])  # gzip stream cut short
    return p.name


def _bad_magic_gz(raw):
    p = raw / "t10k-labels-idx1-ubyte.gz"
    p.write_bytes(gzip.compress(b"\x12\x34" + bytes(100)))  # valid gzip, not IDX inside
    return p.name


def _not_gzip(raw):
    p = raw / "train-labels-idx1-ubyte.gz"
    p.write_bytes(b"<html>404 Not Found</html>")  # what a failed download often leaves
    return p.name


def _truncated_plain(raw):
    gz = raw / "t10k-images-idx3-ubyte.gz"
    plain = raw / "t10k-images-idx3-ubyte"
    plain.write_bytes(gzip.decompress(gz.read_bytes())[:-100])
    gz.unlink()
    return plain.name


@pytest.mark.parametrize("damage", [_truncated_gz, _bad_magic_gz, _not_gzip, _truncated_plain])
def test_damaged_mnist_is_refused_not_replaced_by_digits(tmp_path, caplog, damage):
    name = damage(_fake_mnist(tmp_path))
    with caplog.at_level(logging.WARNING, logger="genlab"), pytest.raises(DataError) as e:
        load_image_data(DataConfig(dataset="mnist", val_size=0.2), tmp_path)
    msg = str(e.value)
    assert name in msg and "re-download it or remove it" in msg and "\n" not in msg
    assert "digits" not in caplog.text


def test_damaged_mnist_is_refused_even_with_download(tmp_path, monkeypatch):
    _truncated_gz(_fake_mnist(tmp_path))
    monkeypatch.setattr(datasets, "_download_idx", lambda name: pytest.fail("must not download"))
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        load_image_data(DataConfig(dataset="mnist", val_size=0.2, download=True), tmp_path)


def test_partial_mnist_is_an_error_not_the_digits(tmp_path):
    raw = _fake_mnist(tmp_path)
    for stem in FILES["test"]:
        (raw / f"{stem}.gz").unlink()
    with pytest.raises(DataError, match=r"mnist test files not found in .*--download"):
        load_image_data(DataConfig(dataset="mnist", val_size=0.2), tmp_path)


def test_missing_mnist_still_downloads(tmp_path, monkeypatch):
    _fake_mnist(tmp_path / "cache")
    monkeypatch.setattr(datasets, "_download_idx", lambda name: tmp_path / "cache")
    d = load_image_data(DataConfig(dataset="mnist", val_size=0.2, download=True), tmp_path)
    assert d.dataset == "mnist" and "downloaded" in d.source and len(d.test_x) == 10


# --------------------------------------------------------------------------- image folders

WHITE, RED, HIDDEN = (255, 255, 255), (255, 0, 0), (0, 0, 255)


def _mixed_folder(root):
    """8x8 files: grayscale, RGB, RGBA and LA with a transparent right half, P with a
    transparent palette entry. Transparent pixels store a colour (blue / black) underneath."""
    root.mkdir()
    Image.new("L", (8, 8), 50).save(root / "a_gray.png")
    Image.new("RGB", (8, 8), (10, 200, 30)).save(root / "b_rgb.png")
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:, :4] = (*RED, 255)
    rgba[:, 4:] = (*HIDDEN, 0)
    Image.fromarray(rgba, "RGBA").save(root / "c_rgba.png")
    la = np.zeros((8, 8, 2), np.uint8)
    la[:, :4] = (100, 255)
    Image.fromarray(la, "LA").save(root / "d_la.png")
    p = Image.new("P", (8, 8), 0)
    p.putpalette([*HIDDEN, *RED] + [0] * 762)
    p.paste(1, (0, 0, 4, 8))
    p.save(root / "e_p.png", transparency=0)


def test_mixed_folder_is_rgb_with_alpha_on_white(tmp_path):
    _mixed_folder(tmp_path / "imgs")
    x, y, names = load_folder(tmp_path / "imgs", None, None)
    assert x.shape == (5, 3, 8, 8) and x.dtype == torch.uint8 and y is None and names is None
    px = lambda i, col: tuple(x[i, :, 0, col].tolist())  # noqa: E731
    assert torch.all(x[0] == 50) and px(1, 0) == (10, 200, 30)  # grayscale replicated to RGB
    assert px(2, 0) == RED and px(2, 7) == WHITE  # transparent -> white, not the hidden blue
    assert px(3, 0) == (100, 100, 100) and px(3, 7) == WHITE
    assert px(4, 0) == RED and px(4, 7) == WHITE


def test_mixed_folder_as_grayscale(tmp_path):
    _mixed_folder(tmp_path / "imgs")
    x, _, _ = load_folder(tmp_path / "imgs", None, 1)
    assert x.shape == (5, 1, 8, 8)
    assert torch.all(x[0] == 50) and torch.all(x[2:, :, :, 4:] == 255)  # transparent -> white
    assert x[2, 0, 0, 0] == 76  # red's luma (ITU-R 601: 0.299 * 255)


def test_folder_of_grayscale_files_stays_one_channel(tmp_path):
    (tmp_path / "g").mkdir()
    for i in range(3):
        Image.new("L", (8, 8), 10 * i).save(tmp_path / "g" / f"{i}.png")
    assert load_folder(tmp_path / "g", None, None)[0].shape == (3, 1, 8, 8)


def test_folder_skips_non_images_and_refuses_corrupt_ones(tmp_path, caplog):
    d = tmp_path / "imgs" / "cat"
    d.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(d / "0.png")
    (d / "notes.txt").write_text("shot on a phone")
    (d / ".DS_Store").write_bytes(b"\x00\x01")
    with caplog.at_level(logging.WARNING, logger="genlab"):
        x, y, names = load_folder(tmp_path / "imgs", None, None)
    assert x.shape == (1, 3, 8, 8) and names == ["cat"]
    assert "notes.txt" in caplog.text and ".DS_Store" not in caplog.text
    (d / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(30))  # a PNG header and nothing else
    with pytest.raises(DataError, match=r"cannot read image .*1\.png .*remove or replace it") as e:
        load_folder(tmp_path / "imgs", None, None)
    assert "\n" not in str(e.value)


def test_folder_with_no_images_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_folder(tmp_path / "empty", None, None)
    (tmp_path / "empty" / "notes.txt").write_text("todo")
    with pytest.raises(DataError, match="no images"):
        load_folder(tmp_path / "empty", None, None)
