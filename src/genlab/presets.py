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


_MNIST_GAN = {"dataset": "mnist", "normalize": "minus_one_one"}
_GAN_TRAIN = {"batch_size": 64, "lr": 2e-4, "betas": [0.5, 0.999], "grad_clip": None, "ema_decay": 0.999,
              "warmup_steps": 0, "min_lr_ratio": 0.25, "log_every": 100, "sample_every": 1000,
              "ckpt_every": 1000}

PRESETS.update({
    "gan-mlp-mnist": Preset(
        "the seeds' MLP GAN: G 100-256-512-1024-784 (tanh), mirrored D, BCE, Adam 2e-4",
        {
            "model": {"name": "gan", "arch": "mlp", "loss": "bce", "latent_dim": 100, "g_batchnorm": False},
            "data": dict(_MNIST_GAN),
            "train": {**_GAN_TRAIN, "steps": 50_000},
        },
    ),
    "dcgan-mnist": Preset(
        "DCGAN, improved: spectrally normalised D at 2x the G learning rate, Adam(0, 0.9), EMA generator",
        {
            "model": {"name": "gan", "arch": "dcgan", "loss": "bce", "latent_dim": 64, "g_channels": 32,
                      "d_channels": 32, "spectral_norm": True, "d_lr_scale": 2.0},
            "data": dict(_MNIST_GAN),
            "train": {**_GAN_TRAIN, "steps": 20_000, "betas": [0.0, 0.9]},
        },
    ),
    "wgan-gp-mnist": Preset(
        "WGAN-GP: DCGAN architecture, critic with gradient penalty 10, 5 critic steps per G step",
        {
            "model": {"name": "gan", "arch": "dcgan", "loss": "wgan-gp", "latent_dim": 64, "n_critic": 5,
                      "gp_weight": 10.0, "g_channels": 32, "d_channels": 32},
            "data": dict(_MNIST_GAN),
            "train": {**_GAN_TRAIN, "steps": 10_000, "lr": 1e-4, "betas": [0.0, 0.9]},
        },
    ),
    "cgan-mnist": Preset(
        "class-conditional DCGAN: label-embedding G, projection D with spectral norm, hinge loss",
        {
            "model": {"name": "gan", "arch": "dcgan", "loss": "hinge", "latent_dim": 64, "spectral_norm": True,
                      "conditional": True, "g_channels": 32, "d_channels": 32, "d_lr_scale": 2.0},
            "data": dict(_MNIST_GAN),
            "train": {**_GAN_TRAIN, "steps": 20_000, "betas": [0.0, 0.9]},
        },
    ),
    "sngan-mnist": Preset(
        "SN-GAN: spectral norm on every D layer, hinge loss, two-time-scale LRs",
        {
            "model": {"name": "gan", "arch": "dcgan", "loss": "hinge", "latent_dim": 64, "spectral_norm": True,
                      "g_channels": 32, "d_channels": 32, "d_lr_scale": 2.0},
            "data": dict(_MNIST_GAN),
            "train": {**_GAN_TRAIN, "steps": 20_000, "betas": [0.0, 0.9]},
        },
    ),
})
