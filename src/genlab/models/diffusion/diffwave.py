"""DiffWave (Kong et al. 2021): Gaussian diffusion on raw waveforms x0 (B, 1, T) in [-1, 1].

The process (schedule, eps/x0/v prediction, min-SNR loss, classifier-free guidance, the
ddpm/ddim/dpmpp samplers) is ddpm.GaussianDiffusion's; this file adds the network and the
config. The network is the paper's: an input 1x1 conv, `layers` residual layers of non-causal
dilated convs (kernel 3, dilations 1, 2, ..., 2^(dilation_cycle-1), repeated), each with the
diffusion-step embedding added to its input, a gated tanh * sigmoid unit, and residual and skip
1x1 convs; the skips are summed into two output 1x1 convs, the last zero-initialised. Class
labels are the paper's global conditioner: a label embedding (index num_classes = "no label",
for classifier-free guidance) added per layer as a bias after the dilated conv. No norms.

CPU option the paper does not have: `patch` folds p consecutive samples into channels at the
input and unfolds them at the output, so the convolutions run at T/p positions (p = 4: about 4x
cheaper per layer) and each dilation spans p times more samples.

Receptive field: an output sample depends on the input patches within sum(dilations) of its own
patch on either side, i.e. (1 + 2 sum(dilations)) p samples (`receptive_field`). The defaults
(20 layers, cycle 10, p = 4) give 4093 * 4 = 16,372 samples: more than twice the default clip
(5120), so every output sample sees the whole clip wherever it sits in it.

Sampling: the shared samplers, with steps spaced uniformly in log-SNR from lambda = -3 down
(`sampling_timesteps`; images keep the even spacing). Speech has rms ~0.05 against images' ~0.5,
so its detail sits at low noise levels that even spacing crosses in one final jump. On the
diffwave-fsdd network after 10 CPU-minutes (20 clips, mean |log-mel| difference from the same
noise sampled with 200 steps): DPM-Solver++ evenly spaced, 4.1 dB at 20 steps and 0.4 dB at 50;
log-SNR spaced from lambda = -3, 0.19 dB at 10 steps and 0.05 dB at 20 (0.07 dB with guidance
w = 2 against 1000 steps), hence the default of 20.

Padding: the loss ignores batch["mask"]. Clips are zero-padded to T; that silence is real data
the sampler must produce too (samples are always T long), so the model is trained on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genlab.errors import ConfigError
from genlab.models.diffusion import schedules as sch
from genlab.models.diffusion.ddpm import GaussianDiffusion, ProcessConfig
from genlab.models.diffusion.unet import timestep_embedding
from genlab.registry import register


# Where the samplers' log-SNR spacing starts after the first step: at lambda = -3 the noise is 20x a
# unit signal, 400x speech at rms ~0.05, so the x0 estimate is the data mean and one step crosses it.
LOGSNR_FLOOR = -3.0
# Without gradients the network runs in chunks of this many rows, whose activations stay in a
# core's L2 cache: 200 rows (100 guided clips) in one call took 2.5x longer per row than chunks
# of 8-32 (25.7 against 10.1 ms at 5120 samples, 32 channels; 2-core Xeon, 2 MB L2 per core).
EVAL_CHUNK = 16


@dataclass
class DiffWaveConfig(ProcessConfig):
    """Waveform diffusion: the process fields (ProcessConfig) plus the DiffWave network's."""
    residual_channels: int = 32  # C of every residual layer (the paper's DiffWave-base: 64, ~3x the CPU time)
    layers: int = 20  # residual layers (the paper: 30)
    dilation_cycle: int = 10  # dilations 1, 2, ..., 2^(cycle-1), repeated (the paper: 10)
    patch: int = 4  # samples folded into channels: the network runs at audio_length / patch positions
    # Filled in from the data when left None (and ProcessConfig.num_classes).
    audio_length: int | None = None

    def validate(self) -> None:
        super().validate()
        for key in ("residual_channels", "layers", "dilation_cycle", "patch"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.{key} must be >= 1, got {getattr(self, key)}")
        if self.audio_length is not None and self.audio_length % self.patch:
            raise ConfigError(f"model.audio_length ({self.audio_length}) must be divisible by model.patch "
                              f"({self.patch}); set data.audio_length or model.patch")


def dilations(layers: int, cycle: int) -> list[int]:
    """The dilation of each residual layer: 1, 2, ..., 2^(cycle-1), 1, 2, ..."""
    return [2 ** (i % cycle) for i in range(layers)]


def receptive_field(layers: int, cycle: int, patch: int) -> int:
    """Samples of input one output sample depends on: (1 + 2 sum(dilations)) patches of `patch`."""
    return (1 + 2 * sum(dilations(layers, cycle))) * patch


def fold(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, T) -> (B, C p, T / p): channel c p + j at position i holds x[c, i p + j]."""
    B, C, T = x.shape
    return x.reshape(B, C, T // p, p).transpose(2, 3).reshape(B, C * p, T // p)  # (B, C p, T/p)


def unfold(h: torch.Tensor, p: int) -> torch.Tensor:
    """The inverse of `fold`: (B, C p, L) -> (B, C, L p)."""
    B, Cp, L = h.shape
    return h.reshape(B, Cp // p, p, L).transpose(2, 3).reshape(B, Cp // p, L * p)  # (B, C, L p)


class ResidualLayer(nn.Module):
    def __init__(self, c: int, emb: int, dilation: int, conditional: bool):
        super().__init__()
        self.step = nn.Linear(emb, c)  # the diffusion-step embedding, added to the input
        self.conv = nn.Conv1d(c, 2 * c, 3, padding=dilation, dilation=dilation)  # non-causal
        self.cond = nn.Linear(emb, 2 * c) if conditional else None  # the label, a bias after the conv
        self.out = nn.Conv1d(c, 2 * c, 1)  # residual and skip

    def forward(self, x: torch.Tensor, temb: torch.Tensor, yemb: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.conv(x + self.step(temb)[:, :, None])  # (B, 2C, L)
        if self.cond is not None:
            h = h + self.cond(yemb)[:, :, None]
        gate, filt = h.chunk(2, dim=1)  # (B, C, L) each
        residual, skip = self.out(torch.sigmoid(gate) * torch.tanh(filt)).chunk(2, dim=1)  # (B, C, L) each
        return (x + residual) / math.sqrt(2), skip


class DiffWaveNet(nn.Module):
    """(x_t (B, 1, T), t (B,) long, y (B,) long or None) -> (B, 1, T)."""

    def __init__(self, residual_channels: int, layers: int, dilation_cycle: int, patch: int,
                 num_classes: int | None = None):
        super().__init__()
        c, self.patch, self.num_classes = residual_channels, patch, num_classes
        emb = 4 * c
        self.time_mlp = nn.Sequential(nn.Linear(c, emb), nn.SiLU(), nn.Linear(emb, emb), nn.SiLU())
        self.class_emb = nn.Embedding(num_classes + 1, emb) if num_classes else None
        self.conv_in = nn.Conv1d(patch, c, 1)
        self.layers = nn.ModuleList(ResidualLayer(c, emb, d, bool(num_classes))
                                    for d in dilations(layers, dilation_cycle))
        self.skip_out = nn.Conv1d(c, c, 1)
        self.conv_out = nn.Conv1d(c, patch, 1)
        nn.init.zeros_(self.conv_out.weight)  # the network starts by predicting 0
        nn.init.zeros_(self.conv_out.bias)
        self.receptive_field = receptive_field(layers, dilation_cycle, patch)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        B, _, T = x.shape
        if B > EVAL_CHUNK and not torch.is_grad_enabled():
            ys = y.split(EVAL_CHUNK) if y is not None else [None] * math.ceil(B / EVAL_CHUNK)
            return torch.cat([self(*c) for c in zip(x.split(EVAL_CHUNK), t.split(EVAL_CHUNK), ys)])
        temb = self.time_mlp(timestep_embedding(t, self.conv_in.out_channels))  # (B, emb)
        yemb = None
        if self.class_emb is not None:
            if y is None:  # unconditional: the "no label" token
                y = torch.full((B,), self.num_classes, device=x.device, dtype=torch.long)
            yemb = self.class_emb(y)  # (B, emb)
        h = F.relu(self.conv_in(fold(x, self.patch)))  # (B, C, T/p)
        skips = 0
        for layer in self.layers:
            h, s = layer(h, temb, yemb)
            skips = skips + s  # (B, C, T/p)
        h = F.relu(self.skip_out(skips / math.sqrt(len(self.layers))))
        return unfold(self.conv_out(h), self.patch)  # (B, 1, T)


class WaveDiffusion(GaussianDiffusion):
    """Waveforms x0 (B, 1, audio_length) in [-1, 1] on a DiffWave network."""

    family = "audio"
    conditional_example = "diffwave-fsdd"

    def __init__(self, cfg: DiffWaveConfig):
        if cfg.audio_length is None:
            raise ConfigError("the diffwave model needs model.audio_length (taken from data.audio_length)")
        if cfg.conditional and not cfg.num_classes:
            raise ConfigError("a conditional diffwave model needs labelled data (e.g. FSDD's digits)")
        cfg.validate()  # again: audio_length may have been filled in from the data since
        super().__init__(cfg)

    def build_net(self, cfg: DiffWaveConfig) -> DiffWaveNet:
        return DiffWaveNet(cfg.residual_channels, cfg.layers, cfg.dilation_cycle, cfg.patch,
                           cfg.num_classes if cfg.conditional else None)

    def data_shape(self) -> tuple[int, int]:
        return (1, self.cfg.audio_length)

    def sampling_timesteps(self, steps: int, start: int | None = None) -> list[int]:
        """Steps uniform in log-SNR from lambda = LOGSNR_FLOOR down to the clean end (see the
        module notes): the even spacing of images leaves the quiet detail of audio to one last jump."""
        return sch.logsnr_timesteps(self.alpha_bar, steps, start, floor=LOGSNR_FLOOR)

    @property
    def receptive_field(self) -> int:
        """Input samples each output sample of the network depends on (see the module notes)."""
        return self.net.receptive_field


register("diffwave", DiffWaveConfig, WaveDiffusion)
