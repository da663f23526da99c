"""Small LeNet classifiers for MNIST and Fashion-MNIST.

They judge whether a conditional generator's samples show the requested class
(`label_accuracy`, `class_histogram`) and serve as the `lenet-mnist` / `lenet-fashion`
feature extractors for FID/KID (`LeNet.features`, the 256-d penultimate layer).
Weights ship as safetensors in `genlab/weights/` and are trained by `scripts/train_classifier.py`
with `train_lenet`, the same recipe that `genlab evaluate --metrics tstr` applies to generated
samples (train on synthetic, test on real).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from genlab.data.transforms import random_crop
from genlab.engine.optim import lr_at
from genlab.errors import CheckpointError, ConfigError, ShapeError
from genlab.seed import make_generator

log = logging.getLogger("genlab")

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


# --------------------------------------------------------------------------- training


def train_lenet(images_uint8: torch.Tensor, labels: torch.Tensor, *, epochs: int, batch_size: int, lr: float,
                seed: int, device: str | torch.device = "cpu", shift: int = 2, num_classes: int = 10,
                verbose: bool = False) -> LeNet:
    """Train a LeNet from scratch: Adam, linear warm-up for a quarter epoch then cosine decay,
    random shifts of up to `shift` pixels, the ragged last batch of each epoch dropped (batch
    norm dislikes tiny batches). The recipe of the shipped weights (scripts/train_classifier.py)
    and of TSTR (train on synthetic, test on real).

    Args:
        images_uint8: uint8 (N, 1, 28, 28), pixel values 0..255; N >= batch_size.
        labels: int (N,) classes in 0..num_classes-1.
        epochs, batch_size, lr: the schedule.
        seed: fixes the initial weights, the batch order, the shifts and dropout. Torch's global
            generator is seeded inside and restored afterwards, so the caller's stream is untouched.
        device: where to train.
        shift: maximum random shift in pixels (0 = none).
        verbose: log each epoch's mean loss at INFO (else DEBUG).
    Returns:
        the trained LeNet in eval mode on `device`.
    """
    _check_images(images_uint8)
    labels = torch.as_tensor(labels).long().cpu()
    if labels.shape != (len(images_uint8),):
        raise ShapeError(f"labels must have shape ({len(images_uint8)},), got {tuple(labels.shape)}")
    if batch_size < 1 or len(images_uint8) < batch_size:
        raise ShapeError(f"train_lenet needs at least batch_size={batch_size} images, got {len(images_uint8)}")
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < num_classes:
        raise ShapeError(f"labels must be in 0..{num_classes - 1}, got {int(labels.min())}..{int(labels.max())}")
    device = torch.device(device)
    level = logging.INFO if verbose else logging.DEBUG
    # enable_grad: callers may hold no_grad (evaluation does); the classifier must still learn
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.enable_grad():
        torch.manual_seed(seed)  # initial weights, shifts and dropout come from the global stream
        g = make_generator(seed)  # the batch order
        model = LeNet(num_classes).to(device, memory_format=torch.channels_last)  # ~25% faster convs on CPU
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        steps_per_epoch = len(images_uint8) // batch_size
        total = epochs * steps_per_epoch
        step = 0
        for epoch in range(epochs):
            model.train()
            perm = torch.randperm(len(images_uint8), generator=g)
            loss_sum = 0.0
            for i in range(steps_per_epoch):
                idx = perm[i * batch_size:(i + 1) * batch_size]
                xb = random_crop(images_uint8[idx], shift)  # uint8 (B, 1, 28, 28)
                xb = _to_model_space(xb, device).contiguous(memory_format=torch.channels_last)
                for group in opt.param_groups:
                    group["lr"] = lr_at(step, total, lr, warmup=steps_per_epoch // 4, min_ratio=0.0)
                loss = F.cross_entropy(model(xb), labels[idx].to(device))
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                loss_sum += loss.item()
                step += 1
            log.log(level, "epoch %d/%d  train loss %.4f", epoch + 1, epochs, loss_sum / steps_per_epoch)
    return model.to(memory_format=torch.contiguous_format).eval()


# --------------------------------------------------------------------------- train on synthetic, test on real

# TSTR trains the shipped weights' recipe (scripts/train_classifier.py: Adam 2e-3, batches of 128,
# 4 epochs) on N labelled images. Small N would then mean a handful of steps, so batches shrink
# to N / 8 (at least 16) and epochs grow until there are at least TSTR_MIN_STEPS steps.
TSTR_EPOCHS, TSTR_MIN_STEPS, TSTR_LR, TSTR_MAX_BATCH = 4, 100, 2e-3, 128
TSTR_MIN_N = 100  # 10 images per class to learn from
# the random shift each shipped LeNet was trained with (the commands in weights/README.md)
RECIPE_SHIFT = {"lenet-mnist": 2, "lenet-fashion": 0}


def tstr_recipe(n: int) -> dict:
    """The schedule TSTR trains with on n images: {"batch_size", "epochs", "steps", "lr"}."""
    batch = min(TSTR_MAX_BATCH, max(16, n // 8))
    per_epoch = n // batch
    if per_epoch < 1:
        raise ShapeError(f"TSTR needs at least {batch} images to train on, got {n}")
    epochs = max(TSTR_EPOCHS, math.ceil(TSTR_MIN_STEPS / per_epoch))
    return {"batch_size": batch, "epochs": epochs, "steps": epochs * per_epoch, "lr": TSTR_LR}


def train_test_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                        *, seed: int, shift: int = 2, device: str | torch.device = "cpu") -> tuple[float, dict]:
    """Train a LeNet with `tstr_recipe` on (train_x, train_y) and score it on (test_x, test_y).

    With generated images as the training set this is TSTR (train on synthetic, test on real;
    Esteban et al. 2017, Ravuri and Vinyals 2019's classification accuracy score); with real ones,
    its baseline.

    Args:
        train_x, test_x: uint8 (N, 1, 28, 28); train_y, test_y: (N,) classes 0..9.
        seed: fixes the classifier's training.
        shift: random shift of the training images, as the dataset's shipped LeNet used.
    Returns:
        (test accuracy in [0, 1], the recipe used).
    """
    test_y = torch.as_tensor(test_y).long().cpu()
    if len(test_y) == 0 or test_y.shape != (len(test_x),):
        raise ShapeError(f"test labels must have shape ({len(test_x)},), at least one, got {tuple(test_y.shape)}")
    recipe = tstr_recipe(len(train_x))
    model = train_lenet(train_x, train_y, epochs=recipe["epochs"], batch_size=recipe["batch_size"], lr=recipe["lr"],
                        seed=seed, device=device, shift=shift)
    pred = predict(model, test_x, batch_size=100)  # batches of 100 stay in cache: twice as fast as 1000 on a CPU
    return (pred == test_y).double().mean().item(), recipe
