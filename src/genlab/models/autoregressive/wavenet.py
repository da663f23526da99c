"""WaveNet (van den Oord et al., 2016): an autoregressive waveform model with an exact
likelihood, p(x) = prod_t p(x_t | x_<t) over quantisation classes of the samples: `encoding`
mulaw (the paper's mu-law companding, mu = quantization - 1) or linear (uniform bins of [-1, 1]).

  - input: the class of the *previous* sample (the sequence shifted right by one; the first
    input is the class of 0.0), embedded (= one-hot followed by a 1x1 convolution);
  - `stacks` x `layers` residual layers with dilations 1, 2, ..., 2^(layers-1) (repeated per
    stack), each a kernel-2 dilated causal convolution (left padding only) feeding a gated unit
    z = tanh(W_f x + V_f h) * sigmoid(W_g x + V_g h), h the class label (global conditioning),
    then a 1x1 convolution to the residual stream and one to the skip sum;
  - output: ReLU -> 1x1 -> ReLU -> 1x1 to `quantization` logits of the next sample's class.

The prediction of x_t reads x_{t-R} .. x_{t-1}, R = `receptive_field` = stacks (2^layers - 1) + 1.

Sampling caches each layer's past (Fast WaveNet, Paine et al. 2016): a ring buffer per layer of
the `dilation` newest contributions its convolution will read, so each new sample costs one
step per layer, not a pass over the receptive field. `sample(use_cache=False)` re-runs the
whole network over the sequence so far at every step (slow; the reference the cache is tested
against); both draw step t's class from the same uniform number, so they give the same audio.

Classifier-free guidance (Ho & Salimans 2022, as the diffusion models and autoregressive audio
models such as AudioGen use it): with `label_dropout` > 0 a share of the training labels is
replaced by a "no label" class, so one network learns p(x_t | x_<t, y) and p(x_t | x_<t); sampling
at `guidance` w draws each sample from softmax(l_u + w (l_c - l_u)) of the two logit vectors
(w = 1: the conditional model, no extra cost; w = 0: the unconditional one; w > 1 sharpens the
class), both computed in one batch of 2n rows that share the drawn samples.

Data: batches {"x": (B, 1, T) float in [-1, 1], "mask": (B, T) bool (True = real sample),
"y": (B,) labels}; padded positions count for nothing in the NLL (`nll`, "bits_per_sample"), and
in the training loss only with `pad_loss` (the default: samples must contain the silence too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genlab.audio import linear_decode, linear_encode, mu_law_decode, mu_law_encode
from genlab.errors import ConfigError, ShapeError
from genlab.models.base import GenerativeModel
from genlab.options import check_number
from genlab.progress import advance
from genlab.registry import register


ENCODINGS = ("mulaw", "linear")


@dataclass
class WaveNetConfig:
    # CPU-sized defaults: 2 stacks of 10 layers see 2047 samples (0.26 s at 8 kHz: many pitch
    # periods and most of a phoneme); 32/64 channels (common GPU set-ups use 64-512) cost about
    # 0.33 MFLOP per sample forward, so a batch of 4 clips of 5120 samples trains in ~0.6 s on one
    # CPU core and cached generation runs ~10x faster than real time for 100 clips at once.
    residual_channels: int = 32  # width of the residual stream (and of the gated units)
    skip_channels: int = 64  # width of the skip sum and of the output head's hidden layer
    layers: int = 10  # layers per stack: dilations 1, 2, ..., 2^(layers-1)
    stacks: int = 2  # times the dilation cycle repeats
    quantization: int = 256  # classes per sample (mu-law: mu = quantization - 1); the paper's 8 bits
    encoding: str = "mulaw"  # mulaw (companded, fine steps near silence) | linear (uniform bins of [-1, 1])
    conditional: bool = False  # global conditioning on the class label
    temperature: float = 1.0  # sampling: softmax(logits / temperature); 0 = the most likely class
    label_dropout: float = 0.0  # classifier-free guidance: share of training labels replaced by "no label"
    # (label_dropout and guidance apply to conditional models; an unconditional one ignores them)
    guidance: float = 1.0  # sampling: logits l_u + w (l_c - l_u); 1 = conditional, 0 = unconditional
    pad_loss: bool = True  # train on the padding around recordings too (see loss); NLL counts real samples
    # Filled in from the data when left None.
    audio_length: int | None = None  # samples per generated clip (data.audio_length)
    num_classes: int | None = None

    def validate(self) -> None:
        for name in ("residual_channels", "skip_channels", "layers", "stacks"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"model.{name} must be an integer >= 1, got {v!r}")
        if self.layers > 16:
            raise ConfigError(f"model.layers must be <= 16 (dilation 2^15 already spans 4 s at 8 kHz), "
                              f"got {self.layers}")
        q = self.quantization
        if isinstance(q, bool) or not isinstance(q, int) or not 2 <= q <= 65536:
            raise ConfigError(f"model.quantization must be an integer in 2..65536 (classes per sample; 256 = 8 bits), "
                              f"got {q!r}")
        if self.encoding not in ENCODINGS:
            raise ConfigError(f"model.encoding must be one of {', '.join(ENCODINGS)} (how samples become classes), "
                              f"got {self.encoding!r}")
        check_number("model.temperature", self.temperature, lo=0)
        check_number("model.guidance", self.guidance)
        check_number("model.label_dropout", self.label_dropout, lo=0)
        if not self.label_dropout < 1:
            raise ConfigError(f"model.label_dropout must be in [0, 1), got {self.label_dropout}")
        if self.conditional and self.guidance != 1 and not self.label_dropout:
            raise ConfigError(f"model.guidance {self.guidance:g} needs model.label_dropout > 0 (classifier-free "
                              "guidance learns the unconditional model from dropped labels), or guidance 1")
        if self.audio_length is not None and self.audio_length < 1:
            raise ConfigError(f"model.audio_length must be >= 1, got {self.audio_length}")
        if self.num_classes is not None and self.num_classes < 1:
            raise ConfigError(f"model.num_classes must be >= 1, got {self.num_classes}")


def _gate(pre: torch.Tensor, dim: int) -> torch.Tensor:
    """tanh(filter) * sigmoid(gate), the two halves of `pre` along `dim`."""
    f, g = pre.chunk(2, dim=dim)
    return torch.tanh(f) * torch.sigmoid(g)


def draw_classes(logits: torch.Tensor, u: torch.Tensor, temperature: float) -> torch.Tensor:
    """Inverse-CDF sampling: logits (n, Q) and uniforms u (n,) in [0, 1) -> classes (n,) int64,
    the first class whose cumulative probability under softmax(logits / temperature) exceeds u
    (temperature 0: the argmax). A pure function of its inputs, so any two code paths that give
    it the same logits and u pick the same class."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() if temperature == 1 else logits.float() / temperature
    cdf = torch.softmax(logits, dim=-1).cumsum_(-1)  # (n, Q)
    idx = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True)  # (n, 1)
    return idx.squeeze(1).clamp_(max=logits.shape[-1] - 1)


class ResidualLayer(nn.Module):
    """One dilated, gated residual layer on channels-last features (B, T, R). The kernel-2
    dilated causal convolution is a matmul over [h_{t-d}, h_t] (on a CPU, matmuls on this layout
    run several times faster than Conv1d, whose 1x1 and dilated kernels take slow paths); the
    filter and gate halves are one matmul with 2R outputs, and the residual and skip 1x1
    convolutions one with S + R outputs (the last layer has no residual output: nothing reads it)."""

    def __init__(self, R: int, S: int, dilation: int, last: bool):
        super().__init__()
        self.R, self.S, self.dilation, self.last = R, S, dilation, last
        self.conv = nn.Linear(2 * R, 2 * R)  # weight[:, :R] taps h_{t-d}, weight[:, R:] taps h_t
        self.out = nn.Linear(R, S if last else S + R)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, R), cond (B, 1, 2R) or 0 -> (next residual stream (B, T, R), skip (B, T, S))."""
        T = x.shape[1]
        past = F.pad(x, (0, 0, self.dilation, 0))[:, :T]  # (B, T, R): h_{t-d}, zeros before the start
        pre = self.conv(torch.cat([past, x], dim=2))  # (B, T, 2R)
        if not isinstance(cond, float):
            pre = pre + cond
        out = self.out(_gate(pre, 2))  # (B, T, S [+ R])
        if self.last:
            return x, out
        skip, res = out.split([self.S, self.R], dim=2)  # (split: one cat in backward, not two pads)
        return x + res, skip


class WaveNet(GenerativeModel):
    family = "audio"

    def __init__(self, cfg: WaveNetConfig):
        super().__init__()
        if cfg.audio_length is None:
            raise ConfigError("WaveNet needs model.audio_length (taken from the data's data.audio_length)")
        if cfg.conditional and not cfg.num_classes:
            raise ConfigError("a conditional WaveNet needs labelled data (model.num_classes from the data); "
                              "set model.conditional=false for unlabelled audio")
        self.cfg = cfg
        self.conditional = cfg.conditional
        self.num_classes = cfg.num_classes if cfg.conditional else None
        R, S, Q = cfg.residual_channels, cfg.skip_channels, cfg.quantization
        self.mu = Q - 1
        self.dilations = [2 ** i for _ in range(cfg.stacks) for i in range(cfg.layers)]
        n = len(self.dilations)
        self.embed = nn.Embedding(Q, R)  # one-hot input class -> 1x1 convolution
        # V_f h and V_g h of every layer at once: one row of n * 2R terms per class (and, for
        # classifier-free guidance, a last row for "no label")
        self.guided = cfg.conditional and cfg.label_dropout > 0
        self.cond = (nn.Embedding(cfg.num_classes + self.guided, n * 2 * R) if cfg.conditional else None)
        self.layers = nn.ModuleList([ResidualLayer(R, S, d, i == n - 1) for i, d in enumerate(self.dilations)])
        self.head1 = nn.Linear(S, S)  # the output 1x1 convolutions
        self.head2 = nn.Linear(S, Q)
        self.skip_scale = math.sqrt(1 / n)  # the skip sum of n terms at unit scale
        # the class of the sample before the first one, 0.0 (silence)
        self.encoding = cfg.encoding
        self.start_class = int(self.quantize(torch.zeros(1)))

    @property
    def receptive_field(self) -> int:
        """How many past samples the prediction of x_t reads: x_{t-R} .. x_{t-1}."""
        return sum(self.dilations) + 1

    # ------------------------------------------------------------------ the network
    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """float samples in [-1, 1] -> classes 0..quantization-1 (int64), by model.encoding."""
        return mu_law_encode(x, self.mu) if self.encoding == "mulaw" else linear_encode(x, self.mu + 1)

    def dequantize(self, q: torch.Tensor) -> torch.Tensor:
        """classes -> float samples at their bins' centres, the inverse of `quantize`."""
        return mu_law_decode(q, self.mu) if self.encoding == "mulaw" else linear_decode(q, self.mu + 1)

    def targets(self, x: torch.Tensor) -> torch.Tensor:
        """Waveforms (B, 1, T) in [-1, 1] -> classes (B, T) int64, what the model predicts."""
        return self.quantize(x[:, 0])

    def _conditioning(self, y: torch.Tensor | None, B: int) -> list[torch.Tensor | float]:
        """Each layer's class term V h, (B, 2R) each (0.0 for unconditional models)."""
        if self.cond is None:
            return [0.0] * len(self.layers)
        if y is None:
            raise ConfigError("this WaveNet is class-conditional: it needs labels (batch['y'], --label)")
        if y.shape != (B,):
            raise ShapeError(f"WaveNet labels must be ({B},), got {tuple(y.shape)}")
        return list(self.cond(y).chunk(len(self.layers), dim=1))  # n x (B, 2R)

    def _net(self, inp: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Input classes inp (B, T) (position t holds the class of x_{t-1}) -> logits (B, T, Q)
        for x_t; position t reads inputs <= t only."""
        conds = self._conditioning(y, inp.shape[0])
        h = self.embed(inp)  # (B, T, R)
        skip = 0.0
        for layer, c in zip(self.layers, conds):
            h, s = layer(h, c if isinstance(c, float) else c[:, None, :])
            skip = skip + s  # (B, T, S)
        out = self.head1(F.relu(skip * self.skip_scale))
        return self.head2(F.relu(out))  # (B, T, Q)

    def _shift(self, q: torch.Tensor) -> torch.Tensor:
        """Classes (B, T) -> inputs (B, T): position t holds the class of x_{t-1}."""
        return F.pad(q[:, :-1], (1, 0), value=self.start_class)

    def logits(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Waveforms x (B, 1, T) in [-1, 1] -> logits (B, T, Q) of p(x_t | x_<t, y)."""
        self._check(x)
        return self._net(self._shift(self.targets(x)), y)

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 3 or x.shape[1] != 1 or x.shape[2] < 1:
            raise ShapeError(f"WaveNet expects waveforms (B, 1, T), got {tuple(x.shape)}")

    def _nats(self, batch: dict[str, torch.Tensor], crop: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(-ln p of every position (B, T') in nats, the real-sample mask (B, T')). With `crop`,
        positions after the batch's last real sample are cut off first: they predict padding only
        and (causality) no real position reads them, so the real samples' sum is unchanged."""
        x = batch["x"]
        self._check(x)
        B, _, T = x.shape
        mask = batch.get("mask")
        if mask is None:
            mask = torch.ones(B, T, dtype=torch.bool, device=x.device)
        elif mask.shape != (B, T):
            raise ShapeError(f"WaveNet batch['mask'] must be ({B}, {T}) like x, got {tuple(mask.shape)}")
        mask = mask.bool()
        if crop:
            real = mask.any(0).nonzero()
            T = int(real[-1]) + 1 if len(real) else 1
            x, mask = x[..., :T], mask[:, :T]
        q = self.targets(x)  # (B, T)
        lg = self._net(self._shift(q), batch.get("y") if self.conditional else None).float()  # (B, T, Q)
        ce = F.cross_entropy(lg.flatten(0, 1), q.flatten(), reduction="none").view(B, T)  # nats
        return ce, mask

    def loss(self, batch: dict[str, torch.Tensor], opt: str = "model") -> dict[str, torch.Tensor]:
        """"loss": mean -ln p over the real samples, or over every position with `pad_loss` (the
        silence around each recording is part of every clip a sample must be: trained on, the
        model learns where words start and stop); "bits_per_sample": over the real samples."""
        y = batch.get("y")
        if self.guided and self.training and y is not None:  # classifier-free guidance: some labels become "no label"
            drop = torch.rand(y.shape, device=y.device) < self.cfg.label_dropout
            batch = {**batch, "y": y.masked_fill(drop, self.num_classes)}
        ce, mask = self._nats(batch, crop=not self.cfg.pad_loss)
        real = ce.masked_fill(~mask, 0.0).sum() / mask.sum().clamp(min=1)
        return {"loss": ce.mean() if self.cfg.pad_loss else real, "bits_per_sample": real / math.log(2)}

    @torch.no_grad()
    def nll(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(total -log2 p over the batch's real samples (float64 scalar), their count (int64)):
        summed over a split and divided, the exact NLL in bits per sample."""
        ce, mask = self._nats(batch, crop=True)
        return ce.masked_fill(~mask, 0.0).sum().double() / math.log(2), mask.sum().long()

    # ------------------------------------------------------------------ sampling
    def _sample_setup(self, n: int, generator: torch.Generator, labels: torch.Tensor | None,
                      temperature: float | None, guidance: float | None
                      ) -> tuple[torch.Tensor | None, torch.Tensor, float, float]:
        check_number("n", n, lo=1, integer=True)
        temperature = self.cfg.temperature if temperature is None else temperature
        check_number("--temperature", temperature, lo=0)
        # (an unconditional model made from a guided preset ignores the preset's guidance)
        guidance = (self.cfg.guidance if self.guided else 1.0) if guidance is None else guidance
        check_number("--guidance", guidance)
        guidance = float(guidance)
        if guidance != 1 and not self.guided:
            raise ConfigError(f"guidance {guidance:g} needs a conditional WaveNet trained with model.label_dropout > 0 "
                              "(classifier-free guidance); this one has no unconditional model: use guidance 1")
        dev = self.embed.weight.device
        y = None
        if self.conditional:
            if labels is None:
                raise ConfigError("this WaveNet is class-conditional: pass labels (--label)")
            y = labels.to(dev).long().reshape(-1)
            if y.shape != (n,):
                raise ShapeError(f"labels must be ({n},), got {tuple(labels.shape)}")
            if y.numel() and not (0 <= int(y.min()) and int(y.max()) < self.num_classes):
                raise ConfigError(f"labels must be in 0..{self.num_classes - 1}")
        # all the randomness, drawn up front the same way for both paths: u[t] picks step t's classes
        u = torch.rand(self.cfg.audio_length, n, generator=generator, device=generator.device).to(dev)
        return y, u, float(temperature), guidance

    def _guided_labels(self, y: torch.Tensor | None, guidance: float) -> torch.Tensor | None:
        """The labels of the rows the network runs on: y (guidance 1), "no label" (0), or both, y then
        "no label" (2n rows, combined by `_guide`)."""
        if y is None or guidance == 1:
            return y
        null = torch.full_like(y, self.num_classes)
        return null if guidance == 0 else torch.cat([y, null])

    @staticmethod
    def _guide(lg: torch.Tensor, n: int, guidance: float) -> torch.Tensor:
        """Logits of the network's rows -> the n rows to sample from: l_u + w (l_c - l_u)."""
        if lg.shape[0] == n:
            return lg
        c, u = lg[:n], lg[n:]
        return u + guidance * (c - u)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator, labels: torch.Tensor | None = None,
               temperature: float | None = None, guidance: float | None = None,
               use_cache: bool = True) -> torch.Tensor:
        """n clips (n, 1, audio_length) float32 in [-1, 1] (the classes' bin centres).

        Args:
            labels: (n,) classes, required by (and only used by) conditional models.
            temperature: softmax temperature (None: model.temperature; 0: the likeliest class).
            guidance: classifier-free guidance weight w (None: model.guidance; 1 = conditional).
            use_cache: the Fast WaveNet step (O(layers) per sample); False re-runs the network
                over the whole prefix per sample (O(T^2), for tests). Both give the same clips.
        """
        y, u, temperature, guidance = self._sample_setup(n, generator, labels, temperature, guidance)
        y = self._guided_labels(y, guidance)
        gen = self._generate_cached if use_cache else self._generate_uncached
        q = gen(y, u, temperature, guidance)
        return self.dequantize(q).unsqueeze(1)  # (n, 1, T)

    def _generate_uncached(self, y: torch.Tensor | None, u: torch.Tensor, temperature: float,
                           guidance: float = 1.0) -> torch.Tensor:
        T, n = u.shape
        rows = 1 if y is None else y.shape[0] // n  # 2: conditional and "no label" rows (guidance)
        q = torch.empty(n, T, dtype=torch.long, device=u.device)
        for t in range(T):
            inp = self._shift(q[:, :t + 1]).repeat(rows, 1)  # (rows n, t+1): the classes before each position
            lg = self._guide(self._net(inp, y)[:, -1], n, guidance)  # (n, Q) for x_t
            q[:, t] = draw_classes(lg, u[t], temperature)
            advance(t + 1, T)  # progress within the caller's batch (genlab.progress)
        return q

    def _generate_cached(self, y: torch.Tensor | None, u: torch.Tensor, temperature: float,
                         guidance: float = 1.0) -> torch.Tensor:
        """The Fast WaveNet loop, six tensor ops per layer per step into preallocated buffers.

        Layer l's convolution at time t is W_past h_{t-d} + W_cur h_t + b (b: bias + class term).
        The layer's ring buffer holds, for each of the d newest steps s, W_past h_s + b, the part
        step s + d will need (slot s mod d). Step t reads its slot (written at t - d; b alone
        before the start: the left zero padding) as the bias of one matmul with W_cur, then
        overwrites it with W_past h_t + b. The gated units z_l are written into one buffer Z
        (m, L, R + 1) whose last column is 1, so that the residual and skip 1x1 convolutions
        carry their biases inside the matmul; the skips of all layers are one matmul at the end.
        With guidance the network runs on m = 2n rows (y, then "no label") fed the same samples.
        """
        T, n = u.shape
        dev, R, S, L = u.device, self.cfg.residual_channels, self.cfg.skip_channels, len(self.layers)
        m = n if y is None else y.shape[0]  # rows the network runs on
        conds = self._conditioning(y, m)
        Z = torch.ones(m, L, R + 1, device=dev)  # [z_l, 1] per layer
        skip_w = torch.zeros(L, R + 1, S, device=dev)  # Z.view(n, L (R+1)) @ skip_w = the scaled skip sum
        plan = []  # per layer: (W_cur (R, 2R), W_past (R, 2R), b (m, 2R), ring slots, residual weight, z)
        for li, (layer, c) in enumerate(zip(self.layers, conds)):
            w = layer.conv.weight  # (2R, 2R): [:, :R] taps h_{t-d}, [:, R:] taps h_t
            b = (layer.conv.bias + c).expand(m, 2 * R).contiguous()  # (m, 2R)
            ring = b.unsqueeze(0).repeat(layer.dilation, 1, 1)  # (d, m, 2R)
            ow, ob = layer.out.weight, layer.out.bias  # (S [+ R], R), (S [+ R],)
            skip_w[li] = torch.cat([ow[:S].t(), ob[None, :S]]) * self.skip_scale  # (R + 1, S)
            res_w = None if layer.last else torch.cat([ow[S:].t(), ob[None, S:]]).contiguous()  # (R + 1, R)
            plan.append((w[:, R:].t().contiguous(), w[:, :R].t().contiguous(), b, ring.unbind(0),
                         res_w, Z[:, li], Z[:, li, :R]))
        skip_w = skip_w.view(L * (R + 1), S)
        h1w, h1b = self.head1.weight.t().contiguous(), self.head1.bias  # (S, S)
        h2w, h2b = self.head2.weight.t().contiguous(), self.head2.bias  # (S, Q)
        h = torch.empty(m, R, device=dev)
        pre = torch.empty(m, 2 * R, device=dev)
        # tanh runs over both halves: its kernel is ~3x slower on a strided half than on all of pre
        th, sg = torch.empty(m, 2 * R, device=dev), torch.empty(m, R, device=dev)
        tf, pre_g = th[:, :R], pre[:, R:]
        Zflat = Z.view(m, L * (R + 1))
        q = torch.empty(n, T, dtype=torch.long, device=dev)
        cls = torch.full((m,), self.start_class, dtype=torch.long, device=dev)
        for t in range(T):
            torch.index_select(self.embed.weight, 0, cls, out=h)  # (m, R) the previous sample's embedding
            for w_cur, w_past, b, slots, res_w, z1, z in plan:
                slot = slots[t % len(slots)]  # (m, 2R): W_past h_{t-d} + b
                torch.addmm(slot, h, w_cur, out=pre)  # (m, 2R) the convolution at t
                torch.addmm(b, h, w_past, out=slot)  # what step t + d reads
                torch.tanh(pre, out=th)
                torch.sigmoid(pre_g, out=sg)
                torch.mul(tf, sg, out=z)  # (m, R) the gated unit, into Z
                if res_w is not None:
                    h.addmm_(z1, res_w)  # h + W_res z + b_res
            hid = torch.addmm(h1b, F.relu(Zflat @ skip_w), h1w)  # (m, S)
            lg = self._guide(torch.addmm(h2b, F.relu(hid), h2w), n, guidance)  # (n, Q)
            q[:, t] = draw_classes(lg, u[t], temperature)
            cls = q[:, t].repeat(m // n)  # (m,) every row is fed the drawn sample
            advance(t + 1, T)
        return q


register("wavenet", WaveNetConfig, WaveNet)
