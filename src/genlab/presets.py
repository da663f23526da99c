"""Named presets: a description and a nested config dict over the dataclass defaults.
Each preset's `train.steps` is the step count its LR schedule is laid out for."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    description: str
    tree: dict


_MNIST_BINARY = {"dataset": "mnist", "normalize": "zero_one", "binarize": True}

PRESETS: dict[str, Preset] = {
    "vae-mnist": Preset(
        "VAE, MLP 784-512-512-z32, Bernoulli likelihood on dynamically binarised MNIST",
        {
            "model": {"name": "vae", "arch": "mlp", "latent_dim": 32, "hidden": 512},
            "data": dict(_MNIST_BINARY),
            "train": {"steps": 150_000, "batch_size": 128, "lr": 1e-3, "warmup_steps": 200,
                      "ema_decay": 0.999, "eval_every": 1000, "sample_every": 2000},
        },
    ),
    "beta-vae-mnist": Preset(
        "beta-VAE (beta=4), conv encoder/decoder, Bernoulli likelihood, binarised MNIST",
        {
            "model": {"name": "vae", "arch": "conv", "latent_dim": 10, "hidden": 256, "beta": 4.0},
            "data": dict(_MNIST_BINARY),
            "train": {"steps": 20_000, "batch_size": 128, "lr": 1e-3, "warmup_steps": 200,
                      "ema_decay": 0.999, "eval_every": 1000, "sample_every": 2000},
        },
    ),
    "cvae-mnist": Preset(
        "conditional VAE (class label to encoder and decoder), conv, Bernoulli, binarised MNIST",
        {
            "model": {"name": "vae", "arch": "conv", "latent_dim": 16, "hidden": 256,
                      "conditional": True},
            "data": dict(_MNIST_BINARY),
            "train": {"steps": 20_000, "batch_size": 128, "lr": 1e-3, "warmup_steps": 200,
                      "ema_decay": 0.999, "eval_every": 1000, "sample_every": 2000},
        },
    ),
}
