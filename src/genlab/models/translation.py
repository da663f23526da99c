"""Image-to-image translation: pix2pix (paired; Isola et al., 2017) and CycleGAN (unpaired;
Zhu et al., 2017).

Batches are {"a": (B, C, S, S), "b": (B, C, S, S)} in the data space, [-1, 1] (genlab.data.paired):
A is the input domain, B the target. Both models train on the shared engine like
genlab.models.gan: two optimisers, `schedule()` = [("discriminator", 1), ("generator", 1)].
They draw nothing of their own: they translate given images (`translate(x, direction)`), which
`genlab apply RUN translate`, `genlab evaluate` and the training grids (`gallery`) use.

pix2pix: a U-Net generator G: A -> B and a conditional PatchGAN D(a, b) that scores each
receptive-field patch of the pair; G minimises the GAN loss + lambda |G(a) - b|_1 (lambda 100).
CycleGAN: generators G: A -> B and F: B -> A (ResNet blocks or a U-Net), a PatchGAN per domain,
least-squares GAN losses, cycle loss lambda (|F(G(a)) - a|_1 + |G(F(b)) - b|_1), an optional
identity loss (|G(b) - b|_1 + |F(a) - a|_1, weighted identity_weight x lambda) and a pool of past
fakes for the discriminators.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genlab.config import TRANSLATION_DATASETS
from genlab.errors import ConfigError
from genlab.models.base import GenerativeModel, check_image_fields
from genlab.registry import register

NORMS = ("batch", "instance", "none")
DIRECTIONS = ("AtoB", "BtoA")


def _check_common(cfg, name: str) -> None:
    if cfg.norm not in NORMS:
        raise ConfigError(f"model.norm must be one of {', '.join(NORMS)}, got {cfg.norm!r}")
    if cfg.n_layers < 0:
        raise ConfigError(f"model.n_layers (the PatchGAN's stride-2 layers) must be >= 0, got {cfg.n_layers}")
    for k in ("d_channels", "depth"):
        if getattr(cfg, k) < 1:
            raise ConfigError(f"model.{k} of {name} must be >= 1, got {getattr(cfg, k)}")


@dataclass
class Pix2PixConfig:
    base_channels: int = 32  # U-Net: channels at full size, doubling per level (at most 8x)
    depth: int = 2  # U-Net levels (stride-2 convs); the image size must be divisible by 2**depth
    d_channels: int = 32  # PatchGAN: channels of its first layer, doubling per layer (at most 8x)
    n_layers: int = 2  # PatchGAN stride-2 layers; receptive field 16, 34, 70 px for 1, 2, 3 (receptive_field)
    norm: str = "batch"  # batch | instance | none, in G and D
    gan_loss: str = "bce"  # bce (the paper's) | lsgan
    l1_weight: float = 100.0  # lambda: weight of |G(a) - b|_1 beside the GAN loss
    dropout: float = 0.5  # in the U-Net's innermost decoder layer, while training
    # Filled in from the data when left None.
    channels: int | None = None
    image_size: int | None = None

    def validate(self) -> None:
        _check_common(self, "pix2pix")
        if self.gan_loss not in ("bce", "lsgan"):
            raise ConfigError(f"model.gan_loss must be bce or lsgan, got {self.gan_loss!r}")
        if self.l1_weight < 0 or not 0 <= self.dropout < 1 or self.base_channels < 1:
            raise ConfigError("model.l1_weight must be >= 0, model.dropout in [0, 1), model.base_channels >= 1")


@dataclass
class CycleGANConfig:
    generator: str = "resnet"  # resnet (CycleGAN's: residual blocks at 1/4 size) | unet
    g_channels: int = 32  # resnet: stem channels (x2, x4 after the two down-samplings); unet: base channels
    n_blocks: int = 6  # resnet: residual blocks
    depth: int = 2  # unet: levels
    d_channels: int = 32
    n_layers: int = 2  # PatchGAN stride-2 layers (receptive_field)
    norm: str = "instance"  # batch | instance | none, in G and D
    cycle_weight: float = 10.0  # lambda
    identity_weight: float = 0.5  # the identity loss's weight as a multiple of lambda; 0 turns it off
    pool_size: int = 50  # past fakes each discriminator is shown half the time; 0: only the newest
    # Filled in from the data when left None.
    channels: int | None = None
    image_size: int | None = None

    def validate(self) -> None:
        _check_common(self, "cyclegan")
        if self.generator not in ("resnet", "unet"):
            raise ConfigError(f"model.generator must be resnet or unet, got {self.generator!r}")
        if min(self.cycle_weight, self.identity_weight) < 0 or self.pool_size < 0 or self.n_blocks < 0:
            raise ConfigError("model.cycle_weight, identity_weight, pool_size and n_blocks must be >= 0")
        if self.g_channels < 1:
            raise ConfigError(f"model.g_channels must be >= 1, got {self.g_channels}")


# --------------------------------------------------------------------------- pure functions


def patchgan_layers(n_layers: int) -> list[tuple[int, int]]:
    """(kernel, stride) of a PatchGAN's convolutions, input to output: `n_layers` 4x4 stride-2
    convolutions, then two 4x4 stride-1 ones (the last down to one score per patch)."""
    return [(4, 2)] * n_layers + [(4, 1), (4, 1)]


def receptive_field(layers: list[tuple[int, int]]) -> int:
    """Side of the input square one output pixel of a conv stack sees: from r = 1 at the output,
    each layer (kernel k, stride s), last to first, widens it to (r - 1) s + k."""
    r = 1
    for k, s in reversed(layers):
        r = (r - 1) * s + k
    return r


def check_patchgan_fits(n_layers: int, image_size: int) -> None:
    """A PatchGAN with `n_layers` stride-2 layers must leave at least one score per image: each
    halves the side (floor), then the two 4x4 stride-1 ones take 1 px each."""
    side = image_size // 2 ** n_layers - 2
    if side < 1:
        deepest = max(n for n in range(image_size.bit_length()) if image_size // 2 ** n >= 3)
        raise ConfigError(f"model.n_layers={n_layers} is too deep for {image_size}x{image_size} images (the "
                          f"PatchGAN would have no output left); use model.n_layers <= {deepest}")


def adversarial(kind: str, score: torch.Tensor, real: bool) -> torch.Tensor:
    """GAN loss of raw patch scores (B, 1, h, w) labelled all real or all fake: "bce" (the
    non-saturating cross-entropy) or "lsgan" (mean squared distance to 1 or 0)."""
    if kind == "lsgan":
        return (score - float(real)).pow(2).mean()
    return F.softplus(-score if real else score).mean()


def l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of two (B, C, S, S) batches."""
    return (x - y).abs().mean()


# --------------------------------------------------------------------------- networks


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


class PatchGAN(nn.Module):
    """Scores every patch of an image: (B, C_in, S, S) -> (B, 1, h, w) raw scores, each seeing a
    receptive_field(patchgan_layers(n_layers)) square of the input (through its convolutions;
    batch and instance norm statistics mix all pixels while training). Widths: d_channels,
    doubling per layer up to 8x; no norm on the first and last layers."""

    def __init__(self, in_channels: int, d_channels: int, n_layers: int, norm: str):
        super().__init__()
        layers = patchgan_layers(n_layers)
        widths = [d_channels * min(2 ** i, 8) for i in range(len(layers) - 1)] + [1]
        mods: list[nn.Module] = []
        prev = in_channels
        for i, ((k, s), w) in enumerate(zip(layers, widths)):
            mods.append(nn.Conv2d(prev, w, k, s, 1))
            if i < len(layers) - 1:
                mods += ([norm_layer(norm, w)] if i > 0 else []) + [nn.LeakyReLU(0.2)]
            prev = w
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class UNet(nn.Module):
    """Encoder-decoder with skip connections: (B, C_in, S, S) -> (B, C_out, S, S) in [-1, 1],
    S divisible by 2**depth. A 3x3 stem at full size, `depth` 4x4 stride-2 convolutions down
    (widths base x 1, 2, 4, 8, 8, ...), two 3x3 convolutions at the bottom, `depth` 4x4 stride-2
    transposed convolutions up, each fed its own output and the encoder's at that size
    (concatenated), and a 3x3 convolution + tanh on the stem's features beside the last."""

    def __init__(self, c_in: int, c_out: int, base: int, depth: int, norm: str, dropout: float = 0.0):
        super().__init__()
        w = [base * min(2 ** i, 8) for i in range(depth + 1)]
        self.stem = nn.Sequential(nn.Conv2d(c_in, w[0], 3, 1, 1), nn.LeakyReLU(0.2))
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv2d(w[i], w[i + 1], 4, 2, 1), norm_layer(norm, w[i + 1]), nn.LeakyReLU(0.2))
            for i in range(depth))
        self.mid = nn.Sequential(
            nn.Conv2d(w[-1], w[-1], 3, 1, 1), norm_layer(norm, w[-1]), nn.ReLU(),
            nn.Conv2d(w[-1], w[-1], 3, 1, 1), norm_layer(norm, w[-1]), nn.ReLU())
        self.up = nn.ModuleList(
            nn.Sequential(nn.ConvTranspose2d(2 * w[i + 1], w[i], 4, 2, 1), norm_layer(norm, w[i]), nn.ReLU(),
                          nn.Dropout(dropout if i == depth - 1 else 0.0))
            for i in reversed(range(depth)))
        self.out = nn.Sequential(nn.Conv2d(2 * w[0], c_out, 3, 1, 1), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.stem(x)]  # (B, w0, S, S)
        for down in self.down:
            skips.append(down(skips[-1]))  # (B, w_{i+1}, S / 2^(i+1), S / 2^(i+1))
        y = self.mid(skips[-1])  # (B, w_depth, S / 2^depth, ...)
        for up, skip in zip(self.up, reversed(skips[1:])):
            y = up(torch.cat([y, skip], 1))  # (B, 2 w_{i+1}, ...) -> (B, w_i, twice the size)
        return self.out(torch.cat([y, skips[0]], 1))  # (B, 2 w0, S, S) -> (B, C_out, S, S)


class ResBlock(nn.Module):
    def __init__(self, c: int, norm: str):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), norm_layer(norm, c), nn.ReLU(),
            nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), norm_layer(norm, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """CycleGAN's generator (after Johnson et al., 2016): a reflect-padded 7x7 stem, two 3x3
    stride-2 convolutions down (c, 2c, 4c channels), `n_blocks` residual blocks at S/4, two
    transposed convolutions up and a reflect-padded 7x7 convolution + tanh.
    (B, C, S, S) -> (B, C, S, S) in [-1, 1], S divisible by 4."""

    def __init__(self, channels: int, c: int, n_blocks: int, norm: str):
        super().__init__()
        self.net = nn.Sequential(
            nn.ReflectionPad2d(3), nn.Conv2d(channels, c, 7), norm_layer(norm, c), nn.ReLU(),  # (B, c, S, S)
            nn.Conv2d(c, 2 * c, 3, 2, 1), norm_layer(norm, 2 * c), nn.ReLU(),  # (B, 2c, S/2, S/2)
            nn.Conv2d(2 * c, 4 * c, 3, 2, 1), norm_layer(norm, 4 * c), nn.ReLU(),  # (B, 4c, S/4, S/4)
            *[ResBlock(4 * c, norm) for _ in range(n_blocks)],
            nn.ConvTranspose2d(4 * c, 2 * c, 3, 2, 1, output_padding=1), norm_layer(norm, 2 * c), nn.ReLU(),
            nn.ConvTranspose2d(2 * c, c, 3, 2, 1, output_padding=1), norm_layer(norm, c), nn.ReLU(),  # (B, c, S, S)
            nn.ReflectionPad2d(3), nn.Conv2d(c, channels, 7), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ImagePool(nn.Module):
    """The last `size` fakes a discriminator saw (Shrivastava et al., 2017), kept as buffers so
    checkpoints carry them and a resumed run continues exactly. `query` returns each new fake,
    or, half the time once the pool is full, a stored one that the new fake replaces."""

    def __init__(self, size: int, shape: tuple[int, int, int]):
        super().__init__()
        self.size = size
        self.register_buffer("images", torch.zeros(size, *shape))  # (size, C, S, S)
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def query(self, fakes: torch.Tensor) -> torch.Tensor:
        """fakes (B, C, S, S) -> (B, C, S, S): the batch the discriminator is shown. Draws from
        torch's global generator (seeded by the engine per micro-batch)."""
        if self.size == 0:
            return fakes
        out = fakes.clone()
        for i in range(len(fakes)):
            n = int(self.count)
            if n < self.size:  # filling up: store it, show it
                self.images[n] = fakes[i]
                self.count += 1
            elif torch.rand(()) < 0.5:  # show an old fake, store the new one in its place
                j = int(torch.randint(self.size, ()))
                out[i] = self.images[j]
                self.images[j] = fakes[i]
        return out


# --------------------------------------------------------------------------- models


class TranslationModel(GenerativeModel):
    """What pix2pix and CycleGAN share: the two-optimiser schedule, `translate`, and no
    sampling of their own."""

    validation_loss = False  # GAN losses say nothing about quality: `genlab evaluate` measures it
    draws_samples = False

    def translators(self) -> dict[str, nn.Module]:
        """direction ("AtoB", "BtoA") -> the generator that translates that way."""
        raise NotImplementedError

    def discriminators(self) -> list[nn.Module]:
        raise NotImplementedError

    @property
    def directions(self) -> tuple[str, ...]:
        return tuple(self.translators())

    def optimizers(self) -> dict[str, list[nn.Parameter]]:
        gens = list(dict.fromkeys(self.translators().values()))  # each generator once
        return {"discriminator": [p for d in self.discriminators() for p in d.parameters()],
                "generator": [p for g in gens for p in g.parameters()]}

    def schedule(self) -> list[tuple[str, int]]:
        return [("discriminator", 1), ("generator", 1)]

    def _check_batch(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if "a" not in batch or "b" not in batch:
            raise ConfigError(f"{type(self).__name__} trains on two image domains; set data.dataset to one of "
                              f"{', '.join(TRANSLATION_DATASETS)}")
        return batch["a"], batch["b"]

    def _train_only(self, opt: str) -> None:
        """Only the optimiser being stepped needs weight gradients (saves D's in G's update)."""
        for d in self.discriminators():
            d.requires_grad_(opt == "discriminator")

    @torch.no_grad()
    def translate(self, x: torch.Tensor, direction: str = "AtoB") -> torch.Tensor:
        """Images (B, C, S, S) of the source domain, data space -> their translations, same shape."""
        if direction not in self.directions:
            raise ConfigError(f"{type(self).__name__.lower()} translates {' and '.join(self.directions)}, "
                              f"not {direction}; use --direction {self.directions[0]}")
        return self.translators()[direction](x)

    def gallery(self, a: torch.Tensor, b: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        """Labelled rows (data space, (k, C, S, S) each) that show what the model does to k
        held-out examples: the training grids and the benchmark's galleries."""
        raise NotImplementedError

    def sample(self, n: int, *, generator: torch.Generator, labels: torch.Tensor | None = None) -> torch.Tensor:
        raise ConfigError(f"a {type(self).__name__.lower()} run translates given images and draws none of its own: "
                          "use `genlab apply RUN translate --input x.png --out y.png` (RUN/samples/ holds the "
                          "training grids of held-out translations)")


class Pix2Pix(TranslationModel):
    def __init__(self, cfg: Pix2PixConfig):
        super().__init__()
        check_image_fields(cfg, "pix2pix U-Net", 2 ** cfg.depth)
        check_patchgan_fits(cfg.n_layers, cfg.image_size)
        self.cfg = cfg
        C = cfg.channels
        self.generator = UNet(C, C, cfg.base_channels, cfg.depth, cfg.norm, cfg.dropout)
        self.discriminator = PatchGAN(2 * C, cfg.d_channels, cfg.n_layers, cfg.norm)  # sees (a, b) stacked

    def translators(self) -> dict[str, nn.Module]:
        return {"AtoB": self.generator}

    def discriminators(self) -> list[nn.Module]:
        return [self.discriminator]

    def loss(self, batch: dict[str, torch.Tensor], opt: str = "generator") -> dict[str, torch.Tensor]:
        a, b = self._check_batch(batch)
        self._train_only(opt)
        kind = self.cfg.gan_loss
        if opt == "generator":
            fake = self.generator(a)
            g_gan = adversarial(kind, self.discriminator(torch.cat([a, fake], 1)).float(), True)
            err = l1(fake.float(), b.float())
            return {"loss": g_gan + self.cfg.l1_weight * err, "g_gan": g_gan, "l1": err}
        with torch.no_grad():
            fake = self.generator(a)
        d_real = self.discriminator(torch.cat([a, b], 1)).float()  # (B, 1, h, w)
        d_fake = self.discriminator(torch.cat([a, fake], 1)).float()
        d = 0.5 * (adversarial(kind, d_real, True) + adversarial(kind, d_fake, False))  # halved, as the paper
        edge = 0.5 if kind == "lsgan" else 0.0  # the score that separates real from fake
        return {"loss": d, "d_loss": d, "d_acc_real": (d_real > edge).float().mean(),
                "d_acc_fake": (d_fake < edge).float().mean()}

    def gallery(self, a: torch.Tensor, b: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        return [("input", a), ("output", self.generator(a)), ("target", b)]


class CycleGAN(TranslationModel):
    def __init__(self, cfg: CycleGANConfig):
        super().__init__()
        resnet = cfg.generator == "resnet"
        check_image_fields(cfg, f"cyclegan {cfg.generator} generator", 4 if resnet else 2 ** cfg.depth)
        check_patchgan_fits(cfg.n_layers, cfg.image_size)
        self.cfg = cfg
        C, S = cfg.channels, cfg.image_size

        def make() -> nn.Module:
            if resnet:
                return ResnetGenerator(C, cfg.g_channels, cfg.n_blocks, cfg.norm)
            return UNet(C, C, cfg.g_channels, cfg.depth, cfg.norm)

        self.g_ab, self.g_ba = make(), make()  # G: A -> B, F: B -> A
        self.d_a = PatchGAN(C, cfg.d_channels, cfg.n_layers, cfg.norm)  # real A against F(b)
        self.d_b = PatchGAN(C, cfg.d_channels, cfg.n_layers, cfg.norm)  # real B against G(a)
        self.pool_a, self.pool_b = ImagePool(cfg.pool_size, (C, S, S)), ImagePool(cfg.pool_size, (C, S, S))

    def translators(self) -> dict[str, nn.Module]:
        return {"AtoB": self.g_ab, "BtoA": self.g_ba}

    def discriminators(self) -> list[nn.Module]:
        return [self.d_a, self.d_b]

    def loss(self, batch: dict[str, torch.Tensor], opt: str = "generator") -> dict[str, torch.Tensor]:
        a, b = self._check_batch(batch)
        self._train_only(opt)
        if opt == "generator":
            fake_b, fake_a = self.g_ab(a), self.g_ba(b)
            adv = (adversarial("lsgan", self.d_b(fake_b).float(), True)
                   + adversarial("lsgan", self.d_a(fake_a).float(), True))
            cycle = l1(self.g_ba(fake_b).float(), a.float()) + l1(self.g_ab(fake_a).float(), b.float())
            lam = self.cfg.cycle_weight
            out = {"g_gan": adv, "cycle": cycle}
            total = adv + lam * cycle
            if self.cfg.identity_weight > 0:  # each generator should leave its own target domain alone
                idt = l1(self.g_ab(b).float(), b.float()) + l1(self.g_ba(a).float(), a.float())
                out["identity"] = idt
                total = total + self.cfg.identity_weight * lam * idt
            return {"loss": total, **out}
        with torch.no_grad():
            fake_b, fake_a = self.pool_b.query(self.g_ab(a)), self.pool_a.query(self.g_ba(b))
        terms = {}
        for name, d, real, fake in (("d_a", self.d_a, a, fake_a), ("d_b", self.d_b, b, fake_b)):
            terms[name] = 0.5 * (adversarial("lsgan", d(real).float(), True)
                                 + adversarial("lsgan", d(fake).float(), False))
        return {"loss": terms["d_a"] + terms["d_b"], **terms}

    def gallery(self, a: torch.Tensor, b: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        fake_b, fake_a = self.g_ab(a), self.g_ba(b)
        return [("A", a), ("A to B", fake_b), ("back to A", self.g_ba(fake_b)),
                ("B", b), ("B to A", fake_a), ("back to B", self.g_ab(fake_a))]


register("pix2pix", Pix2PixConfig, Pix2Pix)
register("cyclegan", CycleGANConfig, CycleGAN)
