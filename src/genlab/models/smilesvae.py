"""A SMILES VAE (Gómez-Bombarelli et al., 2018; the MOSES VAE baseline, Polykovskiy et al., 2020):
molecules as token sequences, a bidirectional GRU encoder to the mean and log-variance of a
Gaussian latent z, and a GRU decoder that starts from z (its initial state) and reads z again
beside every input token. Training is teacher-forced: token cross-entropy plus a KL term whose
weight rises linearly (MOSES: 0 -> 0.05), as in `kl_weight`.

It reads one molecule a row (`text_batches = "molecules"`: the data layer then serves padded
rows "\\n" + molecule + "\\n" with their lengths, see genlab.data.molecules.MoleculeRows),
not the windows of the token stream the GPT and LSTM read.

CPU-sized defaults, and why they differ from MOSES (d_z 128, a 1-layer GRU encoder of 256, a
3-layer GRU decoder of 512, batches of 512). Both GRUs run at every token, and a GRU layer
costs 3 (in + H) H multiply-adds per token and direction forward (about three times that with
the backward pass): MOSES's decoder ~4.2M per token, too slow for useful training in an hour
on one CPU core. So the default decoder is 2 layers of 384 (~1.5M, with z beside each input),
the encoder a bidirectional GRU of 128 a direction (MOSES's 256-wide encoder state, split over
the two directions: ~0.15M, against ~0.5M for 256 a direction, which measured about a third
slower per step), and the latent keeps MOSES's 128 dimensions (cheap). The `smiles-vae-moses`
preset states its measured step time.

The loss terms (per batch):
    recon  mean cross-entropy per real target token (padding excluded), as MOSES computes it;
    kl     mean over molecules of KL(q(z|x) || N(0, I)) (nats per molecule);
    loss   recon + w * kl, with w = kl_weight(step) while training (the step comes with the
           batch) and the final weight kl_w_end for validation, so val losses compare across steps.
Because recon is per token, w = 0.05 weighs a ~35-token molecule's KL about 1.75 against its
summed reconstruction loss: MOSES's choice, kept so its weights mean the same here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from genlab.data.molecules import SEP, pad_molecules
from genlab.errors import ConfigError
from genlab.models.base import GenerativeModel
from genlab.registry import register


@dataclass
class SmilesVAEConfig:
    vocab_size: int | None = None  # from the data's tokenizer
    # The longest molecule (tokens, without the "\n" markers) a training row holds; longer training
    # molecules are left out (counted in the log). The engine also reads it as the text block size.
    block_size: int = 120
    n_embd: int = 64  # token embedding width (MOSES: the vocabulary size, ~30)
    enc_hidden: int = 128  # encoder GRU width per direction
    enc_layers: int = 1
    bidirectional: bool = True
    latent_dim: int = 128
    dec_hidden: int = 384
    dec_layers: int = 2
    dec_dropout: float = 0.0  # between decoder GRU layers
    word_dropout: float = 0.0  # zero a decoder input token's embedding with this probability (Bowman et al.)
    # KL weight: kl_w_start for the first kl_start steps, then linear to kl_w_end over kl_warmup steps
    kl_start: int = 0
    kl_warmup: int = 1000
    kl_w_start: float = 0.0
    kl_w_end: float = 0.05

    def validate(self) -> None:
        if min(self.n_embd, self.enc_hidden, self.enc_layers, self.latent_dim, self.dec_hidden,
               self.dec_layers, self.block_size) < 1:
            raise ConfigError("model.n_embd, enc_hidden, enc_layers, latent_dim, dec_hidden, dec_layers and "
                              "block_size must be >= 1")
        if not (0 <= self.dec_dropout < 1 and 0 <= self.word_dropout < 1):
            raise ConfigError(f"model.dec_dropout and model.word_dropout must be in [0, 1), got "
                              f"{self.dec_dropout} and {self.word_dropout}")
        if self.kl_start < 0 or self.kl_warmup < 0:
            raise ConfigError(f"model.kl_start and model.kl_warmup must be >= 0 steps, got {self.kl_start} and "
                              f"{self.kl_warmup}")
        if self.kl_w_start < 0 or self.kl_w_end < 0:
            raise ConfigError(f"model.kl_w_start and model.kl_w_end must be >= 0, got {self.kl_w_start} and "
                              f"{self.kl_w_end}")


# --------------------------------------------------------------------------- pure functions


def kl_weight(step: int, *, start: int, warmup: int, w_start: float, w_end: float) -> float:
    """The KL weight at training step `step` (0-based): w_start until `start`, then linear to
    w_end over `warmup` steps, then w_end."""
    if step < start:
        return w_start
    if warmup == 0 or step - start >= warmup:
        return w_end
    return w_start + (w_end - w_start) * (step - start) / warmup


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) of each row: (B, D) -> (B,)."""
    return 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).sum(-1)


def masked_token_ce(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the positions where mask is True: logits (B, T, V), target and mask (B, T)."""
    ce = F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), reduction="none")  # (B*T,)
    m = mask.flatten().to(ce.dtype)
    return (ce * m).sum() / m.sum().clamp(min=1)


# --------------------------------------------------------------------------- the model


class SmilesVAE(GenerativeModel):
    family = "text"
    text_batches = "molecules"  # the data layer serves padded molecule rows, not token windows

    def __init__(self, cfg: SmilesVAEConfig):
        super().__init__()
        if not cfg.vocab_size:
            raise ConfigError("smilesvae needs model.vocab_size (taken from the data's tokenizer)")
        self.cfg = cfg
        V, E, Z = cfg.vocab_size, cfg.n_embd, cfg.latent_dim
        dirs = 2 if cfg.bidirectional else 1
        self.embed = nn.Embedding(V, E)  # shared by encoder and decoder (as MOSES)
        self.encoder = nn.GRU(E, cfg.enc_hidden, num_layers=cfg.enc_layers, batch_first=True,
                              bidirectional=cfg.bidirectional)
        self.to_mu = nn.Linear(dirs * cfg.enc_hidden, Z)
        self.to_logvar = nn.Linear(dirs * cfg.enc_hidden, Z)
        self.to_state = nn.Linear(Z, cfg.dec_layers * cfg.dec_hidden)  # z -> the decoder's initial state
        self.decoder = nn.GRU(E + Z, cfg.dec_hidden, num_layers=cfg.dec_layers, batch_first=True,
                              dropout=cfg.dec_dropout if cfg.dec_layers > 1 else 0.0)
        self.head = nn.Linear(cfg.dec_hidden, V)

    # ------------------------------------------------------------------ encoder / decoder
    def encode(self, x: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded rows x (B, T) with lengths (B,) -> (mu, logvar), each (B, latent_dim). The
        sequence is packed, so padding never reaches the GRU (nor its backward direction)."""
        B = x.shape[0]
        packed = pack_padded_sequence(self.embed(x), length.cpu(), batch_first=True, enforce_sorted=False)
        _, h = self.encoder(packed)  # (layers * dirs, B, H)
        dirs = 2 if self.cfg.bidirectional else 1
        h = h.view(self.cfg.enc_layers, dirs, B, -1)[-1]  # (dirs, B, H): the last layer
        h = h.transpose(0, 1).reshape(B, -1)  # (B, dirs * H)
        return self.to_mu(h), self.to_logvar(h)

    def initial_state(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, Z) -> the decoder's initial state (layers, B, H)."""
        B = z.shape[0]
        return self.to_state(z).view(B, self.cfg.dec_layers, -1).transpose(0, 1).contiguous()

    def decode_step(self, tokens: torch.Tensor, z: torch.Tensor, state: torch.Tensor,
                    word_keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Input tokens (B, T) after `state` (layers, B, H), with z (B, Z) beside each ->
        (logits (B, T, V), the new state). word_keep (B, T, 1): word dropout's mask, or None."""
        e = self.embed(tokens)  # (B, T, E)
        if word_keep is not None:
            e = e * word_keep
        inp = torch.cat([e, z[:, None].expand(-1, tokens.shape[1], -1)], dim=-1)  # (B, T, E + Z)
        y, state = self.decoder(inp, state)  # (B, T, H)
        return self.head(y), state

    # ------------------------------------------------------------------ training
    def loss(self, batch: dict[str, torch.Tensor], opt: str = "model") -> dict[str, torch.Tensor]:
        x, length = batch["x"], batch["length"]  # (B, T), (B,)
        B, T = x.shape
        mu, logvar = self.encode(x, length)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()  # reparameterised draw, (B, Z)
        inp, target = x[:, :-1], x[:, 1:]  # (B, T - 1): teacher forcing
        keep = None
        if self.training and self.cfg.word_dropout > 0:
            keep = (torch.rand(B, T - 1, 1, device=x.device) >= self.cfg.word_dropout).to(self.embed.weight.dtype)
            keep[:, 0] = 1.0  # the start marker always stays
        logits, _ = self.decode_step(inp, z, self.initial_state(z), keep)  # (B, T - 1, V)
        mask = torch.arange(T - 1, device=x.device)[None] < (length - 1)[:, None]  # (B, T - 1): real targets
        recon = masked_token_ce(logits, target, mask)
        kl = gaussian_kl(mu.float(), logvar.float()).mean()
        out = {"recon": recon, "kl": kl}
        if "step" in batch:  # training: the feeder stamps the batch with its step
            c = self.cfg
            w = kl_weight(int(batch["step"].reshape(-1)[0]), start=c.kl_start, warmup=c.kl_warmup,
                          w_start=c.kl_w_start, w_end=c.kl_w_end)
            out["kl_weight"] = torch.tensor(w, device=recon.device)
        else:
            w = self.cfg.kl_w_end
        out["loss"] = recon + w * kl
        return out

    # ------------------------------------------------------------------ molecules in, molecules out
    @torch.no_grad()
    def encode_smiles(self, smiles: list[str], *, tokenizer) -> torch.Tensor:
        """The encoder means (N, latent_dim) of molecules given as the run's training data reads
        them (canonical SMILES; SELFIES runs translate them). DataError naming a token outside the
        run's vocabulary."""
        rows = [tokenizer.encode(s) for s in tokenizer.corpus(list(smiles))]
        batch = pad_molecules(rows, tokenizer.stoi[SEP])
        dev = self.embed.weight.device
        was_training = self.training
        self.eval()
        try:
            mu, _ = self.encode(batch["x"].to(dev), batch["length"])
        finally:
            self.train(was_training)
        return mu

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor, *, tokenizer, max_tokens: int = 150, temperature: float = 0.0,
                       generator: torch.Generator | None = None, smiles_syntax: bool = False) -> list[str]:
        """Latents z (N, latent_dim) -> N SMILES, each decoded from "\\n" until the next "\\n"
        (greedy at temperature 0, else sampled from `generator`); "" for a row that has not
        ended within max_tokens tokens. SELFIES runs are translated to SMILES. `smiles_syntax`:
        draw only tokens that keep the row a possible complete SMILES (genlab.data.smiles_syntax)."""
        from genlab.data.smiles_syntax import SmilesSyntax
        from genlab.models.autoregressive.generation import SamplingConfig, next_token

        sampling = SamplingConfig(temperature=temperature)
        sampling.check()
        sep, B, dev = tokenizer.stoi[SEP], z.shape[0], self.embed.weight.device
        z = z.to(dev, self.embed.weight.dtype)
        was_training = self.training
        self.eval()
        try:
            state, tok = self.initial_state(z), torch.full((B, 1), sep, dtype=torch.long, device=dev)
            no_context = torch.zeros(B, 0, dtype=torch.long, device=dev)
            syntax = SmilesSyntax(tokenizer, B, dev) if smiles_syntax else None
            out, end = [], torch.full((B,), -1, dtype=torch.long)  # end: index of each row's "\n", -1 = open
            for k in range(max_tokens):
                logits, state = self.decode_step(tok, z, state)  # (B, 1, V)
                tok = next_token(logits[:, -1], no_context, sampling, generator, syntax)  # (B, 1)
                out.append(tok[:, 0].cpu())
                end = torch.where((end < 0) & (out[-1] == sep), k, end)
                if bool((end >= 0).all()):
                    break
        finally:
            self.train(was_training)
        ids = torch.stack(out, 1).tolist() if out else [[] for _ in range(B)]
        return [tokenizer.to_smiles(tokenizer.decode(r[:e])) if e >= 0 else "" for r, e in zip(ids, end.tolist())]

    @torch.no_grad()
    def sample_smiles(self, n: int, *, tokenizer, seed: int = 0, max_tokens: int = 150, batch_size: int = 256,
                      temperature: float = 1.0, progress=None, smiles_syntax: bool = False) -> list[str]:
        """n molecules from the prior (genlab.data.molecules.sample_molecules's contract): z ~ N(0, I)
        from a generator seeded with `seed`, each decoded at `temperature` (0 = greedy), under
        SMILES's grammar with `smiles_syntax`."""
        from genlab.seed import make_generator

        dev = self.embed.weight.device
        g = make_generator(seed, dev)
        z = torch.randn(n, self.cfg.latent_dim, generator=g, device=dev)  # all prior draws first: batch-size free
        out: list[str] = []
        for i in range(0, n, batch_size):
            out += self.decode_latents(z[i:i + batch_size], tokenizer=tokenizer, max_tokens=max_tokens,
                                       temperature=temperature, generator=g, smiles_syntax=smiles_syntax)
            if progress is not None:
                progress.set(len(out))
        return out

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator, labels: torch.Tensor | None = None) -> torch.Tensor:
        raise ConfigError("a SMILES VAE samples molecules: use genlab sample RUN --n N")


register("smilesvae", SmilesVAEConfig, SmilesVAE)
