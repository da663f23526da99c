"""Small LeNet classifiers for MNIST and Fashion-MNIST.

They judge whether a conditional generator's samples show the requested class
(`label_accuracy`, `class_histogram`) and serve as the `lenet-mnist` / `lenet-fashion`
feature extractors for FID/KID (`LeNet.features`, the 256-d penultimate layer).
Weights ship as safetensors in `genlab/weights/` and are trained by `scripts/train_classifier.py`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from genlab.errors import CheckpointError, ConfigError, ShapeError

KNOWN_CLASSIFIERS = ("lenet-mnist", "lenet-fashion")
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


class LeNet(nn.Module):
    """LeNet-5-style convnet for 1x28x28 images in [-1, 1].

    conv 5x5 (32) -> BN -> ReLU -> pool -> conv 5x5 (64) -> BN -> ReLU -> pool
    -> fc 256 (the feature layer) -> dropout -> fc num_classes.
    """

    feature_dim = 256

    def __init__(self, num_classes: int = 10, dropout: float = 0.3):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 5, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.fc1 = nn.Linear(64 * 4 * 4, self.feature_dim)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: float (B, 1, 28, 28) in [-1, 1] -> (B, 256) post-ReLU penultimate activations."""
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)  # (B, 32, 12, 12)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)  # (B, 64, 4, 4)
        return F.relu(self.fc1(x.flatten(1)))  # (B, 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: float (B, 1, 28, 28) in [-1, 1] -> logits (B, num_classes)."""
        return self.fc2(self.drop(self.features(x)))


def weights_path(name: str) -> Path:
    """Path of the shipped weights for classifier `name` (raises ConfigError if unknown)."""
    if name not in KNOWN_CLASSIFIERS:
        raise ConfigError(f"unknown classifier {name!r}; known: {', '.join(KNOWN_CLASSIFIERS)}")
    return WEIGHTS_DIR / f"{name}.safetensors"


def load_classifier(name: str = "lenet-mnist", device: str | torch.device = "cpu") -> LeNet:
    """Build LeNet and load the shipped weights for `name`, in eval mode on `device`.

    Weights may be stored as fp16 to keep the package small; they are cast to fp32 here.
    """
    path = weights_path(name)
    if not path.is_file():
        raise CheckpointError(f"weights for classifier {name!r} not found at {path}; "
                              f"train them with scripts/train_classifier.py")
    try:
        state = load_file(str(path))
    except Exception as e:  # noqa: BLE001  (safetensors raises several types on bad files)
        raise CheckpointError(f"cannot read classifier weights {path}: {e}") from None
    model = LeNet()
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"classifier weights {path} do not match LeNet: {e}") from None
    return model.to(device).eval()


def _check_images(images_uint8: torch.Tensor) -> None:
    if not isinstance(images_uint8, torch.Tensor) or images_uint8.dtype != torch.uint8:
        got = images_uint8.dtype if isinstance(images_uint8, torch.Tensor) else type(images_uint8).__name__
        raise ShapeError(f"classifier expects uint8 images (N, 1, 28, 28) in 0..255, got dtype {got}")
    if images_uint8.ndim != 4 or tuple(images_uint8.shape[1:]) != (1, 28, 28):
        raise ShapeError(f"classifier expects uint8 images (N, 1, 28, 28), got shape {tuple(images_uint8.shape)}")


def _to_model_space(images_uint8: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B, 1, 28, 28) -> float32 in [-1, 1] on `device`."""
    return images_uint8.to(device).float().mul_(2 / 255.0).sub_(1.0)


@torch.no_grad()
def predict(model: LeNet, images_uint8: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Predicted classes of raw images.

    Args:
        model: a LeNet (put in eval mode by the caller, as `load_classifier` does).
        images_uint8: uint8 (N, 1, 28, 28), pixel values 0..255.
        batch_size: images per forward pass.
    Returns:
        int64 (N,) on the CPU.
    """
    _check_images(images_uint8)
    device = next(model.parameters()).device
    out = [model(_to_model_space(images_uint8[i:i + batch_size], device)).argmax(1).cpu()
           for i in range(0, len(images_uint8), batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def label_accuracy(model: LeNet, images_uint8: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of images (N, 1, 28, 28) uint8 whose predicted class equals `labels` (N,)."""
    labels = torch.as_tensor(labels).long().cpu()
    if labels.shape != (len(images_uint8),):
        raise ShapeError(f"labels must have shape ({len(images_uint8)},), got {tuple(labels.shape)}")
    if len(labels) == 0:
        raise ShapeError("label_accuracy needs at least one image")
    return (predict(model, images_uint8) == labels).double().mean().item()


def class_histogram(model: LeNet, images_uint8: torch.Tensor, num_classes: int = 10) -> torch.Tensor:
    """Fraction of images (N, 1, 28, 28) uint8 predicted as each class -> float64 (num_classes,)."""
    if len(images_uint8) == 0:
        raise ShapeError("class_histogram needs at least one image")
    counts = torch.bincount(predict(model, images_uint8), minlength=num_classes)
    return counts.double() / counts.sum()
