"""The shipped LeNet classifiers: accuracy on real MNIST test images and input checks."""

import pytest
import torch

from genlab.data.datasets import load_idx_split, resolve_data_root
from genlab.errors import CheckpointError, ConfigError, ShapeError
from genlab.metrics import classifier
from genlab.metrics.classifier import LeNet, class_histogram, label_accuracy, load_classifier, predict


@pytest.fixture(scope="module")
def mnist_test():
    root = resolve_data_root()
    if root is None:
        pytest.skip("MNIST not found (set GENLAB_DATA or put it in ../shared/data)")
    x, y = load_idx_split(root, "mnist", "test")
    return x[:1000], y[:1000]


@pytest.fixture(scope="module")
def lenet_mnist():
    torch.set_num_threads(1)
    return load_classifier("lenet-mnist")


def test_shipped_mnist_weights_classify_test_images(lenet_mnist, mnist_test):
    x, y = mnist_test
    pred = predict(lenet_mnist, x, batch_size=256)
    assert pred.dtype == torch.long and pred.shape == (1000,)
    assert (pred == y).double().mean().item() >= 0.98


def test_label_accuracy_and_histogram(lenet_mnist, mnist_test):
    x, y = mnist_test
    pred = predict(lenet_mnist, x)
    assert label_accuracy(lenet_mnist, x, y) == pytest.approx((pred == y).double().mean().item())
    hist = class_histogram(lenet_mnist, x)
    assert hist.shape == (10,)
    assert hist.sum().item() == pytest.approx(1.0)
    assert torch.equal(hist, torch.bincount(pred, minlength=10).double() / 1000)


def test_features_shape(lenet_mnist, mnist_test):
    x, _ = mnist_test
    with torch.no_grad():
        f = lenet_mnist.features(x[:4].float() / 127.5 - 1)
    assert f.shape == (4, LeNet.feature_dim) == (4, 256)


def test_fashion_weights_load():
    model = load_classifier("lenet-fashion")
    assert not model.training
    assert predict(model, torch.zeros(2, 1, 28, 28, dtype=torch.uint8)).shape == (2,)


def test_predict_rejects_float_and_bad_shape(lenet_mnist):
    with pytest.raises(ShapeError, match="uint8"):
        predict(lenet_mnist, torch.rand(2, 1, 28, 28))
    with pytest.raises(ShapeError, match=r"\(N, 1, 28, 28\)"):
        predict(lenet_mnist, torch.zeros(2, 3, 28, 28, dtype=torch.uint8))


def test_unknown_name_lists_known_ones():
    with pytest.raises(ConfigError, match="lenet-mnist"):
        load_classifier("lenet-cifar")


def test_missing_weights_file(tmp_path, monkeypatch):
    monkeypatch.setattr(classifier, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        load_classifier("lenet-mnist")
