"""Feature extractors for sample-quality metrics (FID, KID, precision/recall, IS).

An extractor maps uint8 images (N, C, H, W) to float features (N, D) and class logits
(N, K). Every number computed from it is reported with its name, e.g. "FID (lenet-mnist)",
because FIDs from different extractors are not comparable with each other, nor with
the Inception FIDs of papers.

  lenet-mnist, lenet-fashion   shipped LeNets (genlab/weights), 256-d penultimate layer,
                               for 1x28x28 images; offline, the default for MNIST-like data
  inception                    torch-fidelity's FID Inception-v3 (2048-d pool3), on request;
                               needs its weights file locally (or --download when online)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from genlab.errors import CheckpointError, ConfigError, ShapeError

EXTRACTORS = ("lenet-mnist", "lenet-fashion", "inception")
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_FILE

# dataset name -> the extractor that knows it
DEFAULT_EXTRACTOR = {"mnist": "lenet-mnist", "digits": "lenet-mnist", "fashion-mnist": "lenet-fashion"}


@dataclass
class Extractor:
    """A named, frozen network: `features_and_logits(uint8 images) -> ((N, D), (N, K))` float32."""

    name: str
    dim: int
    input_shape: tuple[int, ...] | None  # (C, H, W) it accepts, None = any RGB/grey size
    fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    batch_size: int = 1000

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (N, C, H, W) -> (features (N, D), logits (N, K)), float32 on the CPU."""
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
            raise ShapeError(f"extractor {self.name} expects uint8 images (N, C, H, W), got {got}")
        if self.input_shape and tuple(images.shape[1:]) != self.input_shape:
            raise ShapeError(f"extractor {self.name} expects images of shape {self.input_shape}, got "
                             f"{tuple(images.shape[1:])}; use --extractor inception for other image sizes")
        feats, logits = [], []
        for i in range(0, len(images), self.batch_size):
            f, lg = self.fn(images[i:i + self.batch_size])
            feats.append(f.float().cpu())
            logits.append(lg.float().cpu())
        return torch.cat(feats), torch.cat(logits)


def _lenet(name: str, device: torch.device) -> Extractor:
    from genlab.metrics.classifier import LeNet, load_classifier

    net = load_classifier(name, device)

    def fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(device).float().mul_(2 / 255.0).sub_(1.0)
        f = net.features(x)
        return f, net.fc2(f)  # dropout is off in eval mode

    return Extractor(name, LeNet.feature_dim, (1, 28, 28), fn)


def inception_weights_path(explicit: str | os.PathLike | None = None) -> Path:
    """Where the Inception weights are looked for: the argument, $GENLAB_INCEPTION_WEIGHTS,
    else genlab's cache directory."""
    from genlab.data.datasets import cache_dir

    if explicit:
        return Path(explicit)
    env = os.environ.get("GENLAB_INCEPTION_WEIGHTS")
    return Path(env) if env else cache_dir() / "weights" / INCEPTION_FILE


def _inception(device: torch.device, weights: str | os.PathLike | None, download: bool) -> Extractor:
    path = inception_weights_path(weights)
    if not path.is_file():
        if not download:
            raise CheckpointError(f"Inception weights not found at {path}; pass --inception-weights FILE "
                                  f"(torch-fidelity's {INCEPTION_FILE}) or --download when online")
        from genlab.engine.checkpoint import atomic_write_bytes
        import urllib.request

        try:
            with urllib.request.urlopen(INCEPTION_URL, timeout=60) as r:
                atomic_write_bytes(path, r.read())
        except OSError as e:
            raise CheckpointError(f"cannot download the Inception weights ({e}); "
                                  f"fetch {INCEPTION_URL} by hand and pass --inception-weights FILE") from None
    from genlab.extras import require

    require("torch_fidelity", "inception", "the inception extractor")
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                      feature_extractor_weights_path=str(path)).to(device).eval()

    def fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        f, lg = net(x.to(device))  # uint8 in, resized to 299 inside, as torch-fidelity does
        return f, lg

    return Extractor("inception", 2048, None, fn, batch_size=100)


def get_extractor(name: str, device: str | torch.device = "cpu", *, weights: str | os.PathLike | None = None,
                  download: bool = False) -> Extractor:
    """Build extractor `name` (see EXTRACTORS) on `device`."""
    device = torch.device(device)
    if name in ("lenet-mnist", "lenet-fashion"):
        return _lenet(name, device)
    if name == "inception":
        return _inception(device, weights, download)
    raise ConfigError(f"unknown feature extractor {name!r}; choose one of: {', '.join(EXTRACTORS)}")


def default_extractor(dataset: str, shape: tuple[int, ...]) -> str | None:
    """The offline extractor for a dataset, or None when only Inception would fit."""
    name = DEFAULT_EXTRACTOR.get(dataset)
    if name is None and tuple(shape) == (1, 28, 28):
        name = "lenet-mnist"  # 28x28 grey folders/arrays: digits-like; reported by name
    return name
