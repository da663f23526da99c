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


# Semi-supervised M2 (Kingma et al., 2014) on binarised MNIST with 100 labels (10 per class; 600 or 1,000 by
# --set data.num_labels=N): every batch is 128 images of the epoch order (nearly all unlabelled) plus 32
# drawn from the labelled ones. Sized for 60 minutes on one CPU core (0.18 s a step with the core to
# itself; 6,597 steps in 30 minutes on a shared one); the LR anneals over the time budget. The classifier q(y|x) is a small conv net trained on shifted copies of
# the labelled images (see genlab.models.semivae); `genlab evaluate RUN --metrics classifier_accuracy`.
PRESETS.update({
    "semi-vae-mnist": Preset(
        "semi-supervised VAE (M2): conv classifier q(y|x), MLP 500-500 q(z|x,y) and p(x|y,z), z50, "
        "binarised MNIST with 100 labels",
        {
            "model": {"name": "semivae", "latent_dim": 50, "hidden": 500, "classifier": "conv",
                      "classifier_width": 32, "alpha": 50.0, "shift": 2},
            "data": {**_MNIST_BINARY, "num_labels": 100, "labelled_batch": 32},
            "train": {"steps": 100_000, "minutes": 60, "batch_size": 128, "lr": 1e-3, "warmup_steps": 200,
                      "ema_decay": 0.999, "amp": "off", "log_every": 100, "eval_every": 1000,
                      "eval_batches": 10, "sample_every": 5000, "ckpt_every": 1000},
        },
    ),
})


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
    # Learning rates 20x the usual 2e-4 (G 4e-3, D 8e-3) and a short EMA (0.99): the spectrally
    # normalised D keeps such steps stable, and on a CPU budget it is the number of steps that is
    # short. In a one-run-each screening at 1,400 steps (2 threads, AMD EPYC) FID fell steadily from
    # lr 2e-4 to 8e-3; 4e-3 was kept as the margin against instability in long runs. The result at
    # 5 CPU minutes: benchmarks/results/gan-mnist.md.
    "dcgan-mnist": Preset(
        "DCGAN, improved: spectrally normalised D at 2x the G learning rate (G 4e-3), Adam(0, 0.9), "
        "EMA generator (0.99)",
        {
            "model": {"name": "gan", "arch": "dcgan", "loss": "bce", "latent_dim": 64, "g_channels": 32,
                      "d_channels": 32, "spectral_norm": True, "d_lr_scale": 2.0},
            "data": dict(_MNIST_GAN),
            "train": {**_GAN_TRAIN, "steps": 20_000, "lr": 4e-3, "betas": [0.0, 0.9], "ema_decay": 0.99},
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


# Text: tiny Shakespeare, character level, nanoGPT's split (first 90% train, last 10% val).
_SHAKESPEARE_CHAR = {"dataset": "text", "path": "shakespeare/input.txt", "tokenizer": "char", "val_size": 0.1}
# nanoGPT's optimiser: AdamW, beta2 0.99, weight decay 0.1, clip 1.0, 100 warmup steps,
# lr decayed (cosine) to a tenth over the run.
_NANOGPT_TRAIN = {"optimizer": "adamw", "lr": 1e-3, "betas": [0.9, 0.99], "weight_decay": 0.1, "grad_clip": 1.0,
                  "warmup_steps": 100, "min_lr_ratio": 0.1, "schedule": "cosine"}

# nanoGPT's CPU shape (its README's command), with rotary positions
_GPT_CPU_MODEL = {"name": "gpt", "n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "dropout": 0.0,
                  "position": "rope"}

PRESETS.update({
    "gpt-shakespeare-cpu": Preset(
        "char GPT in nanoGPT's documented CPU shape (4 layers, 4 heads, 128 wide, block 64, batch 12, 2000 steps), "
        "rotary positions",
        {
            "model": dict(_GPT_CPU_MODEL),
            "data": dict(_SHAKESPEARE_CHAR),
            # 20 warmup steps instead of nanoGPT's 100: 2,000 steps leave no time to spare
            "train": {**_NANOGPT_TRAIN, "warmup_steps": 20, "steps": 2000, "batch_size": 12, "log_every": 50,
                      "eval_every": 500,
                      "eval_batches": 20, "sample_every": 1000, "ckpt_every": 500},
        },
    ),
    "gpt-shakespeare-muon": Preset(
        "gpt-shakespeare-cpu's model trained for speed: Muon on the weight matrices (AdamW on embeddings "
        "and gains), batch 16, 400 steps",
        {
            "model": dict(_GPT_CPU_MODEL),
            "data": dict(_SHAKESPEARE_CHAR),
            # lr (embeddings, AdamW) and muon_lr from a short sweep (benchmarks/results/gpt-shakespeare.md)
            "train": {**_NANOGPT_TRAIN, "optimizer": "muon", "lr": 6e-3, "muon_lr": 0.04, "warmup_steps": 20,
                      "steps": 400, "batch_size": 16, "log_every": 50, "eval_every": 200, "eval_batches": 20,
                      "sample_every": 400, "ckpt_every": 200},
        },
    ),
    "gpt-shakespeare": Preset(
        "char GPT as nanoGPT's shakespeare_char (6 layers, 6 heads, 384 wide, block 256, batch 64, dropout 0.2), "
        "rotary positions",
        {
            "model": {"name": "gpt", "n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256, "dropout": 0.2,
                      "position": "rope"},
            "data": dict(_SHAKESPEARE_CHAR),
            "train": {**_NANOGPT_TRAIN, "steps": 5000, "batch_size": 64, "log_every": 10, "eval_every": 250,
                      "eval_batches": 20, "sample_every": 500, "ckpt_every": 250},
        },
    ),
    "lstm-shakespeare": Preset(
        "char LSTM (char-rnn style): 2 layers of 512, embedding 128, dropout 0.2, windows of 128",
        {
            "model": {"name": "lstm", "n_layer": 2, "hidden": 512, "n_embd": 128, "block_size": 128, "dropout": 0.2},
            "data": dict(_SHAKESPEARE_CHAR),
            "train": {"optimizer": "adam", "lr": 2e-3, "grad_clip": 1.0, "warmup_steps": 100, "min_lr_ratio": 0.1,
                      "steps": 5000, "batch_size": 32, "log_every": 50, "eval_every": 500, "eval_batches": 20,
                      "sample_every": 1000, "ckpt_every": 500},
        },
    ),
})


# Molecules: MOSES train SMILES (1.58M, canonicalised and cached on first load; 5% held out for the
# val loss), atom-level tokens, one molecule a line; `genlab evaluate` scores the MOSES metrics against
# the MOSES test and scaffold-test sets (genlab.data.molecules, genlab.evaluation.molecules).
# For a CPU check: --set data.max_molecules=20000. Goal-directed generation (GPT, LSTM): --set data.condition=qed
# prefixes each molecule by its QED bin's token; `genlab sample RUN --condition 0.9` (genlab.data.molecule_condition).
_MOSES_SMILES = {"dataset": "smiles", "path": "molecules/moses/train.csv.gz", "column": "SMILES",
                 "tokenizer": "smiles", "val_size": 0.05}

PRESETS.update({
    # Sized for a CPU hour (one pass over MOSES is ~58M tokens; an hour on one thread is ~0.7 of it, so
    # no dropout). Measured with a bare training step (AdamW, bf16 autocast; one thread of this
    # machine's Xeon with AMX, 2026-12-03): dropout 0.1 and windows of 128 x 64 rows 8.5k tokens/s,
    # dropout 0 10.5k (dropout's masks were a fifth of the step and force attention's math kernel),
    # windows of 64 x 128 rows 12.9k. torch.compile was slower (10.5k). In the engine: 1.25 steps/s
    # (10.2k tokens/s), so at the benchmark's 60-minute mark the cosine schedule is at step ~4,500 of
    # 5,000, within 3% of its floor.
    "smiles-gpt-moses": Preset(
        "atom-level SMILES GPT on MOSES (4 layers, 4 heads, 256 wide, windows of 64 tokens: ~1.7 molecules, "
        "no dropout), rotary positions; MOSES metrics in genlab evaluate",
        {
            "model": {"name": "gpt", "n_layer": 4, "n_head": 4, "n_embd": 256, "block_size": 64, "dropout": 0.0,
                      "position": "rope"},
            "data": dict(_MOSES_SMILES),
            # AdamW: Muon (lr 3e-3, muon_lr 0.03) had the lower val loss after 5 CPU minutes but the worse
            # MOSES figures after 30 and 60 (benchmarks/results/molecules-moses.md)
            "train": {**_NANOGPT_TRAIN, "steps": 5_000, "batch_size": 128, "log_every": 50, "eval_every": 500,
                      "eval_batches": 20, "sample_every": 1000, "ckpt_every": 500},
        },
    ),
    "smiles-lstm-moses": Preset(
        "atom-level SMILES LSTM on MOSES, MOSES's CharRNN shape (3 layers of 768, dropout 0.2), windows of 128 "
        "tokens; MOSES metrics in genlab evaluate",
        {
            "model": {"name": "lstm", "n_layer": 3, "hidden": 768, "n_embd": 64, "block_size": 128, "dropout": 0.2},
            "data": dict(_MOSES_SMILES),
            "train": {"optimizer": "adam", "lr": 1e-3, "grad_clip": 1.0, "warmup_steps": 100, "min_lr_ratio": 0.1,
                      "steps": 10_000, "batch_size": 64, "log_every": 50, "eval_every": 1000, "eval_batches": 20,
                      "sample_every": 1000, "ckpt_every": 1000},
        },
    ),
    # SMILES VAE (genlab.models.smilesvae: MOSES's VAE shape, CPU-sized), one molecule a row.
    # Step time, batches of 128 MOSES molecules (37 tokens a row with the markers), one thread: 0.84 s
    # of CPU on the Xeon without bf16 autocast (2026-12-02), 0.42 s with bf16 on the Xeon with AMX
    # (2.4 steps/s, 2026-12-03). The 10,000 steps are more than an hour buys on either: a run with a
    # time budget (--minutes, the benchmark's 30 and 60) anneals the learning rate by the clock. The
    # KL weight reaches 0.05 after 2,000 steps. MOSES's own shape (GRU encoder of 256, decoder of
    # 3 x 512) measured 1.86 s of CPU a step without autocast: less than half as many molecules an hour.
    # On a Zen 4 EPYC (one thread, 60 steps, 2026-12-04) 1.13 steps/s in fp32 and 1.83 in bf16. lr 3e-3
    # rather than 1e-3: after 12 minutes of training on that Zen 4 (one thread each, side by side, seed 0,
    # ~1,330 steps, train.amp=auto chose bf16) the val loss was 0.661 against 0.701 and the validity of
    # 3,000 samples 0.787 against 0.631 (0.812 / 0.663 under --smiles-syntax).
    # After 60 minutes (benchmarks/results/molecules-moses.md) the gain had shrunk: validity 0.922 and
    # FCD/Test 0.223 against 0.917 / 0.156 for lr 1e-3 on the Xeon (6,630 steps against 7,079).
    # Kekule SMILES (data.kekulize, 2026-12-05): explicit single and double bonds instead of aromatic
    # atoms, which the model could write as rings RDKit cannot kekulize (165 of 213 invalid molecules
    # of an aromatic run). Rows 20% longer (5,632 steps in 60 minutes against 7,158), and after 30
    # minutes validity 0.916 against 0.851-0.863, FCD/Test 0.496 against 0.564 (molecules-moses.md).
    "smiles-vae-moses": Preset(
        "SMILES VAE on MOSES (bidirectional GRU encoder of 2 x 128, latent 128, GRU decoder of 2 x 384 fed z at "
        "every token), KL weight 0 -> 0.05 over 2,000 steps; MOSES metrics in genlab evaluate, latent "
        "interpolation with genlab apply RUN interpolate",
        {
            "model": {"name": "smilesvae", "n_embd": 64, "enc_hidden": 128, "bidirectional": True, "latent_dim": 128,
                      "dec_hidden": 384, "dec_layers": 2, "block_size": 120, "kl_start": 0, "kl_warmup": 2000,
                      "kl_w_start": 0.0, "kl_w_end": 0.05},
            "data": {**_MOSES_SMILES, "kekulize": True},
            "train": {"optimizer": "adam", "lr": 3e-3, "grad_clip": 1.0, "warmup_steps": 50, "min_lr_ratio": 0.1,
                      "steps": 10_000, "batch_size": 128, "log_every": 50, "eval_every": 500, "eval_batches": 10,
                      "sample_every": 1000, "ckpt_every": 500},
        },
    ),
})

# The same MOSES molecules as kekulised atom/bond graphs (genlab.data.molecule_graphs) for the
# GraphRNN-style molecule generator with its valence check (molgraphrnn): same file, column and SMILES
# cache as the SMILES presets, and the same MOSES metrics in `genlab evaluate`. A fixed choice of
# 250,000 molecules (canonicalised and converted to graphs once, ~2 minutes, then read from the cache),
# ~12 epochs in the budget. Step time, batch 128, one thread on core 1 of the development machine's
# Intel Xeon, 20 steps on the real data after 3 warm-up steps: 0.186 s (0.184 s of CPU; batching and the
# BFS encoding 6.5 ms of it); on the Xeon with AMX 12,000 steps took 31.9 minutes (2026-12-03). The
# 24,000 steps are more than an hour buys there: a run with a time budget (--minutes, the benchmark's
# 30 and 60) anneals the learning rate by the clock, as smiles-vae-moses.
PRESETS.update({
    "graphgen-moses": Preset(
        "GraphRNN for molecules on MOSES (atom types + bond orders in BFS order, node GRU 2x128, edge GRU 32), "
        "valence check at generation; MOSES metrics in genlab evaluate",
        {
            "model": {"name": "molgraphrnn", "hidden": 128, "embed": 64, "layers": 2, "out_hidden": 64,
                      "edge_hidden": 32, "edge_embed": 16, "edge_layers": 1, "valence_check": True},
            "data": {"dataset": "molecules", "path": "molecules/moses/train.csv.gz", "column": "SMILES",
                     "max_molecules": 250_000, "val_size": 0.02},
            "train": {"optimizer": "adam", "lr": 2e-3, "grad_clip": 1.0, "warmup_steps": 100, "min_lr_ratio": 0.05,
                      "amp": "off", "steps": 24_000, "batch_size": 128, "log_every": 100, "eval_every": 1000,
                      "eval_batches": 10, "sample_every": 2000, "ckpt_every": 1000},
        },
    ),
})


# PixelCNN: exact likelihood on dynamically binarised MNIST (the published reference is
# 81.3 nats for a Gated PixelCNN trained long on a GPU).
# Precision: train.amp=auto's probe of the model's own step decides. These small asymmetric
# convolutions ran 4.5x slower in bf16 than in fp32 on the earlier AMD EPYC development machine
# (torch profiler, batch 16; no bf16 instructions: its bf16 matmul peak measured ~1 GFLOP/s, and
# there the probe is not even run), and faster on a Zen 4 EPYC with avx512_bf16 (2 threads, batch
# 64, 40 steps, 2026-12-04: fp32 101 images/s, bf16 139). lr 3e-3 rather than 1e-3: after 10
# minutes on one thread of that Zen 4 (bf16, ~845 steps, one seed, the two runs side by side, one
# core each) the exact test NLL was 90.64 nats against 94.61. pixelcnn-cond-mnist shares these
# settings (not measured separately).
_PIXELCNN_TRAIN = {"steps": 60_000, "batch_size": 64, "lr": 3e-3, "warmup_steps": 200, "ema_decay": 0.999,
                   "amp": "auto", "eval_every": 1000, "eval_batches": 10, "sample_every": 5000,
                   "ckpt_every": 1000}

PRESETS.update({
    "pixelcnn-mnist": Preset(
        "Gated PixelCNN, 8 gated layers x 32 channels (CPU-sized), Bernoulli pixels, binarised MNIST (exact NLL)",
        {"model": {"name": "pixelcnn", "likelihood": "bernoulli", "hidden": 32, "layers": 8, "kernel": 3,
                   "out_hidden": 128},
         "data": dict(_MNIST_BINARY), "train": dict(_PIXELCNN_TRAIN)},
    ),
    "pixelcnn-cond-mnist": Preset(
        "class-conditional Gated PixelCNN (label embedding in every layer), binarised MNIST",
        {"model": {"name": "pixelcnn", "likelihood": "bernoulli", "hidden": 32, "layers": 8, "kernel": 3,
                   "out_hidden": 128, "conditional": True},
         "data": dict(_MNIST_BINARY), "train": dict(_PIXELCNN_TRAIN)},
    ),
})


# Graphs. Link prediction as in the VGAE paper (Kipf & Welling, 2016): 85/5/10% edge split, Adam 0.01,
# 200 full-graph steps, weighted BCE over the whole adjacency, 16-d embeddings; but a one-layer
# (linear) GCN encoder, z = A_hat X W, which Salha et al. (2020) found as good as or better than the
# paper's two-layer GCN 32-16 (`--set model.layers=2`); in short trial runs on the development
# machine it scored higher on Cora too (benchmarks/results/graphs.md has the 10-seed figures).
_LINK_DATA = {"val_size": 0.05, "test_size": 0.1}
_LINK_TRAIN = {"steps": 200, "batch_size": 1, "lr": 0.01, "schedule": "constant", "warmup_steps": 0,
               "grad_clip": None, "amp": "off", "log_every": 10, "eval_every": 50, "eval_batches": 1,
               "sample_every": 100_000, "ckpt_every": 100, "keep_last": 1}
# Graph generation as in GraphRNN's small benchmarks; 80/20 train/test split (10% of all held out as val).
_GRAPHGEN_TRAIN = {"steps": 3000, "batch_size": 32, "lr": 3e-3, "warmup_steps": 50, "min_lr_ratio": 0.1,
                   "grad_clip": 1.0, "amp": "off", "log_every": 50, "eval_every": 500, "eval_batches": 5,
                   "sample_every": 1000, "ckpt_every": 500}

PRESETS.update({
    "vgae-cora": Preset(
        "VGAE (linear GCN encoder to 16-d, inner-product decoder) for link prediction on Cora, 85/5/10% edges",
        {"model": {"name": "gae", "variational": True, "encoder": "gcn", "layers": 1, "hidden": 32,
                   "latent_dim": 16},
         "data": {"dataset": "cora", **_LINK_DATA}, "train": dict(_LINK_TRAIN)},
    ),
    "gae-cora": Preset(
        "GAE (linear GCN encoder to 16-d, inner-product decoder) for link prediction on Cora, 85/5/10% edges",
        {"model": {"name": "gae", "variational": False, "encoder": "gcn", "layers": 1, "hidden": 32,
                   "latent_dim": 16},
         "data": {"dataset": "cora", **_LINK_DATA}, "train": dict(_LINK_TRAIN)},
    ),
    "graphgen-community": Preset(
        "GraphRNN generator (edge-level GRU) of two-community graphs (12-20 nodes), 200 graphs, BFS order",
        {"model": {"name": "graphrnn", "edges": "rnn"},
         "data": {"dataset": "community", "num_graphs": 200, "test_size": 0.2, "val_size": 0.1},
         "train": dict(_GRAPHGEN_TRAIN)},
    ),
    "graphgen-grid": Preset(
        "GraphRNN generator (edge-level GRU) of 2-D grids (3-6 x 3-6 nodes), 200 graphs, BFS order",
        {"model": {"name": "graphrnn", "edges": "rnn"},
         "data": {"dataset": "grid", "num_graphs": 200, "test_size": 0.2, "val_size": 0.1},
         "train": dict(_GRAPHGEN_TRAIN)},
    ),
})


# Diffusion on MNIST-sized images, sized for a CPU: a 1.7M-parameter UNet (32-64-64 channels,
# 2 residual blocks per level, attention at 7x7 and in the middle) behind a 2x2 pixel-unshuffle
# stem, so the convolutions run at 14x14 (28.8 GFLOP per training step at batch 64, against
# 105.8 for the same UNet at 28x28). v-prediction on the cosine schedule with min-SNR-5 weights,
# Adam 1e-3, EMA 0.999. train.amp=auto: the run's first step is timed in fp32 and in bf16 and the
# faster is kept; bf16 (convolutions in bf16, GroupNorm and attention in fp32) was 1.4x faster on an
# Intel Xeon with AMX (146 against 199 ms per step, 2 threads). On the AMD EPYC development machine
# the whole step in bf16 had run 7x slower than fp32 (batch 64, one thread; before GroupNorm and
# attention were kept in fp32), so the presets trained in fp32 until 2026-12-05.
_DIFFUSION_MODEL = {"name": "diffusion", "schedule": "cosine", "timesteps": 1000, "prediction": "v",
                    "loss_weight": "min_snr", "base_channels": 32, "channel_mults": [1, 2, 2],
                    "num_res_blocks": 2, "attention_resolutions": [7], "patch": 2}
_DIFFUSION_TRAIN = {"steps": 40_000, "batch_size": 64, "lr": 1e-3, "warmup_steps": 200, "min_lr_ratio": 0.1,
                    "grad_clip": 1.0, "ema_decay": 0.999, "amp": "auto", "log_every": 50, "eval_every": 1000,
                    "eval_batches": 5, "sample_every": 2000, "ckpt_every": 500}

PRESETS.update({
    # ddpm-mnist samples with fresh noise at each step (eta 1: DPM-Solver++'s SDE form; DDIM's ancestral
    # form under --sampler ddim): on a checkpoint of 30 CPU minutes, FID (lenet-mnist, N = 2,000) 19.29
    # against 28.58 for the ODE at 20 steps and at the same speed, 17.97 against 28.91 for DDIM 50
    # (benchmarks/results/diffusion-samplers.md). 50 steps rather than 20: on two 30-minute checkpoints
    # (N = 5,000) 16.33 against 17.95 and 12.96 against 13.78, and 11.97 against 12.74 (N = 10,000) on
    # run 2 of diffusion-mnist-2thread.md (commit bfa5996; its rows are in that file's git history), at 2.5x
    # the sampling time. Tried and dropped: an EMA window
    # of a quarter of the run (train.ema_warmup=5 train.ema_decay=0.9999) rather than the default's
    # ninth: 17.51 against 17.95 after 4,600 steps on one thread, but that 2-thread run 2 (with it)
    # scored 12.74 at 20 SDE steps against run 1's 11.89 (5% fewer steps: the machine ran slower);
    # lr 2e-3 (18.70); batch 128 at lr 2e-3 for the same images (19.18). The
    # runs' rows are in benchmarks/results/diffusion-samplers.md. Not (yet) the other diffusion presets:
    # unmeasured for them, and the ODE was better for DiffWave's waveforms (audio-fsdd.md).
    "ddpm-mnist": Preset(
        "diffusion, 1.7M-param UNet (2x2 patch stem), v-prediction, cosine schedule, EMA; DPM-Solver++ 50 steps "
        "in its SDE form (eta 1)",
        {"model": {**_DIFFUSION_MODEL, "eta": 1.0, "sampling_steps": 50},
         "data": {"dataset": "mnist", "normalize": "minus_one_one"},
         "train": dict(_DIFFUSION_TRAIN)},
    ),
    "ddpm-fashion": Preset(
        "diffusion as ddpm-mnist on Fashion-MNIST",
        {"model": dict(_DIFFUSION_MODEL), "data": {"dataset": "fashion-mnist", "normalize": "minus_one_one"},
         "train": dict(_DIFFUSION_TRAIN)},
    ),
    "ddpm-cond-mnist": Preset(
        "class-conditional diffusion (label dropout 0.1, classifier-free guidance w=2 by default), MNIST",
        {"model": {**_DIFFUSION_MODEL, "conditional": True, "label_dropout": 0.1, "guidance": 2.0},
         "data": {"dataset": "mnist", "normalize": "minus_one_one"}, "train": dict(_DIFFUSION_TRAIN)},
    ),
})


# Spoken digits (FSDD, 8 kHz, clips of 5120 samples = 0.64 s, centre-padded), sized for one CPU
# core and an hour. The WaveNet (205k parameters, 2 stacks of 11 layers: receptive field 4095
# samples, about a spoken digit) trains on batches of 4 clips: on one Xeon thread B=4 reached a
# lower test NLL than B=8 in the same minutes. 11 layers rather than 10 (receptive field 2047):
# after 60 minutes on one thread of a Zen 4 EPYC, 83.1% of 1,000 samples were heard as their digit
# against 77.8% (benchmarks/results/audio-fsdd.md, one run each), for 5% fewer steps. The DiffWave (32 channels, 20 layers, dilations up to 512 on 4-sample patches: every
# output sample sees the whole clip) trains on batches of 16; both on the padding too (samples
# must contain the silence around a word). Precision: train.amp=auto's probe of each model's own
# step decides: bf16 was slower than fp32 on the Xeons without AMX; on a Zen 4 EPYC (one thread,
# 2026-12-05) the probe measured DiffWave's step at 497 ms fp32 / 305 ms bf16 and WaveNet's at
# 486 / 315, and 120 DiffWave steps ran at 2.0 steps/s in fp32 and 3.0 in bf16. The step budgets
# are more than an hour buys there (the Xeon's fp32 hour made ~5,600 of either): a run with a
# time budget (--minutes, the benchmark's 30 and 60) anneals the learning rate by the clock.
_FSDD = {"dataset": "fsdd", "val_size": 0.1, "audio_length": 5120}
_AUDIO_TRAIN = {"lr": 2e-3, "warmup_steps": 200, "min_lr_ratio": 0.1, "grad_clip": 1.0, "ema_decay": 0.999,
                "amp": "auto", "log_every": 50, "eval_every": 500, "eval_batches": 10, "sample_every": 2000,
                "ckpt_every": 500}

PRESETS.update({
    "wavenet-fsdd": Preset(
        "class-conditional WaveNet (2 x 11 dilated causal layers, 256-way mu-law, CFG w=2), FSDD spoken digits",
        {"model": {"name": "wavenet", "residual_channels": 32, "skip_channels": 64, "layers": 11, "stacks": 2,
                   "quantization": 256, "conditional": True, "label_dropout": 0.1, "guidance": 2.0},
         "data": dict(_FSDD), "train": {**_AUDIO_TRAIN, "steps": 12_000, "batch_size": 4}},
    ),
    "diffwave-fsdd": Preset(
        "class-conditional DiffWave (20 dilated layers on 4-sample patches, CFG w=2), FSDD spoken digits",
        {"model": {"name": "diffwave", "residual_channels": 32, "layers": 20, "dilation_cycle": 10, "patch": 4,
                   "conditional": True, "label_dropout": 0.1, "guidance": 2.0},
         "data": dict(_FSDD), "train": {**_AUDIO_TRAIN, "steps": 12_000, "batch_size": 16}},
    ),
})


# Differentially private training (DP-SGD, privacy.epsilon at delta 1e-5; see genlab.engine.privacy),
# sized for one CPU core and about five minutes: per-example gradients cost time in proportion to
# batch x parameters, so the networks are small and the batches large (the noise on the mean
# gradient is sigma C / batch). Conditional models, so their samples can train a classifier (TSTR).
# EMA weights are post-processing of the private ones: the guarantee covers them too.
_DP = {"epsilon": 10.0, "delta": 1e-5, "max_grad_norm": 1.0}
_DP_TRAIN = {"batch_size": 256, "warmup_steps": 20, "min_lr_ratio": 0.1, "ema_decay": 0.99, "amp": "off",
             "log_every": 20, "eval_every": 200, "eval_batches": 4, "sample_every": 400, "ckpt_every": 100}

PRESETS.update({
    "dp-cvae-mnist": Preset(
        "private conditional VAE (MLP 784-128-128-z16, Bernoulli), DP-SGD epsilon 10 on binarised MNIST",
        {"model": {"name": "vae", "arch": "mlp", "latent_dim": 16, "hidden": 128, "conditional": True},
         "data": dict(_MNIST_BINARY), "privacy": dict(_DP),
         "train": {**_DP_TRAIN, "steps": 800, "lr": 2e-3}},
    ),
    "dp-cgan-mnist": Preset(
        "private conditional DCGAN: DP-SGD on the projection discriminator (no spectral norm), epsilon 10",
        {"model": {"name": "gan", "arch": "dcgan", "loss": "hinge", "latent_dim": 32, "spectral_norm": False,
                   "conditional": True, "g_channels": 16, "d_channels": 16},
         "data": dict(_MNIST_GAN), "privacy": dict(_DP),
         "train": {**_DP_TRAIN, "steps": 1000, "batch_size": 128, "lr": 5e-4, "betas": [0.5, 0.999],
                   "grad_clip": None}},
    ),
    # Not a network: probabilistic PCA per class, its statistics released once with Gaussian noise
    # (genlab.models.gaussian). Images are clipped to L2 norm 10 (MNIST's in [0, 1]: 9.3 on average).
    "dp-gaussian-mnist": Preset(
        "private class-conditional Gaussian in a 40-dim principal subspace (Gaussian mechanism), epsilon 10",
        {"model": {"name": "gaussian", "components": 40, "conditional": True},
         "data": {"dataset": "mnist", "normalize": "zero_one"}, "privacy": {**_DP, "max_grad_norm": 10.0},
         "train": {"steps": 1, "batch_size": 1000, "amp": "off", "ema_decay": 0.0, "warmup_steps": 0,
                   "log_every": 1, "eval_every": 1, "sample_every": 1, "ckpt_every": 1}},
    ),
    "dp-diffusion-mnist": Preset(
        "private conditional diffusion (small UNet, 2 noise draws per image as DPDM), DP-SGD epsilon 10",
        {"model": {**_DIFFUSION_MODEL, "conditional": True, "label_dropout": 0.1, "guidance": 2.0,
                   "base_channels": 16, "channel_mults": [1, 2], "num_res_blocks": 1,
                   "attention_resolutions": [], "heads": 2, "noise_draws": 2},
         "data": {"dataset": "mnist", "normalize": "minus_one_one"}, "privacy": dict(_DP),
         "train": {**_DP_TRAIN, "steps": 300, "batch_size": 128, "lr": 2e-3, "ema_decay": 0.98}},
    ),
})


# Image-to-image translation on 28x28 (genlab.models.translation, genlab.data.paired), sized for
# 15-30 minutes on one CPU core: pix2pix 17 GFLOP per step at batch 32 (U-Net 32-64-128, PatchGAN
# with 16x16 receptive fields, a bit over half the image), CycleGAN 16 GFLOP per step at batch 16
# (two ResNet generators 16-32-64 with 4 blocks, PatchGANs seeing 34x34, all of the image). Adam
# (0.5, 0.999) at 2e-4 as both papers; bf16 autocast off (these small convolutions are slower in
# bf16 on CPUs, as for the diffusion and PixelCNN presets). The CycleGAN preset leaves out the
# identity loss: it is for keeping colours (paintings <-> photos) and would hold digits as they are.
_TRANSLATION_TRAIN = {"lr": 2e-4, "betas": [0.5, 0.999], "grad_clip": None, "warmup_steps": 0,
                      "min_lr_ratio": 0.1, "amp": "off", "log_every": 50, "sample_every": 500,
                      "ckpt_every": 500}

PRESETS.update({
    "pix2pix-mnist-edges": Preset(
        "pix2pix: U-Net generator, PatchGAN (16x16 patches), L1 x 100, from Sobel edge maps to MNIST digits",
        {"model": {"name": "pix2pix", "base_channels": 32, "depth": 2, "d_channels": 32, "n_layers": 1,
                   "norm": "batch", "gan_loss": "bce", "l1_weight": 100.0, "dropout": 0.5},
         "data": {"dataset": "mnist-edges", "normalize": "minus_one_one"},
         "train": {**_TRANSLATION_TRAIN, "steps": 5000, "batch_size": 32}},
    ),
    "cyclegan-mnist-fashion": Preset(
        "CycleGAN: two ResNet generators, two PatchGANs, LSGAN, cycle loss x 10, pool of 50; MNIST <-> Fashion-MNIST",
        {"model": {"name": "cyclegan", "generator": "resnet", "g_channels": 16, "n_blocks": 4, "d_channels": 32,
                   "n_layers": 2, "norm": "instance", "cycle_weight": 10.0, "identity_weight": 0.0,
                   "pool_size": 50},
         "data": {"dataset": "mnist-fashion", "normalize": "minus_one_one"},
         "train": {**_TRANSLATION_TRAIN, "steps": 4000, "batch_size": 16}},
    ),
})


# Feed-forward style transfer (genlab.models.style; Johnson et al. 2016, at CPU size: 16-32-64
# channels, 5 residual blocks, 0.42M parameters) on 128x128 random crops of scikit-learn's two
# sample photos (genlab.data.photos), with the random-feature perceptual losses of
# genlab.metrics.style; about 1.4 steps/s at batch 4 on one Xeon thread (2,000 steps: ~25 min).
# The style defaults to a sample photo so the preset runs offline as is; set your own with
# --set data.style=PAINTING.jpg. bf16 autocast off (slower on these CPUs).
PRESETS.update({
    "style-transfer": Preset(
        "feed-forward style network (Johnson et al.: encoder, 5 residual blocks, decoder) for one style "
        "(data.style), random-feature perceptual losses, 128x128 crops of sample photos",
        {"model": {"name": "style", "width": 16, "res_blocks": 5, "content_weight": 1.0, "style_weight": 100.0,
                   "tv_weight": 1.0},
         "data": {"dataset": "photos", "image_size": 128, "normalize": "zero_one", "hflip": True,
                  "style": "sample:flower.jpg"},
         "train": {"steps": 2000, "batch_size": 4, "lr": 1e-3, "warmup_steps": 50, "min_lr_ratio": 0.1,
                   "grad_clip": 1.0, "amp": "off", "log_every": 50, "eval_every": 500, "eval_batches": 5,
                   "sample_every": 500, "ckpt_every": 500}},
    ),
})


# Self-supervised pretext tasks (genlab.models.pretext) that train vae-mnist's conv encoder without
# labels: the encoder is the VAE's (same class and names, conv, latent 32, hidden 512, 32 channels),
# so `genlab train vae-mnist --set model.arch=conv --init-from RUN` loads every encoder.* tensor,
# and `genlab evaluate RUN` fits a linear probe on 100 labels. Same binarised data as vae-mnist, so
# the encoder sees what it will see there. Five minutes on one CPU core (the LR anneals over them);
# bf16 autocast off (slower than fp32 for these small convolutions on CPUs).
_PRETEXT_ENCODER = {"name": "pretext", "arch": "conv", "latent_dim": 32, "hidden": 512, "base_channels": 32}
_PRETEXT_TRAIN = {"steps": 20_000, "minutes": 5, "batch_size": 64, "lr": 1e-3, "warmup_steps": 100,
                  "min_lr_ratio": 0.1, "amp": "off", "log_every": 50, "eval_every": 500, "eval_batches": 10,
                  "sample_every": 1000, "ckpt_every": 500}

PRESETS.update({
    "rotation-mnist": Preset(
        "self-supervised rotation prediction (Gidaris et al. 2018): vae-mnist's conv encoder and a 4-way head "
        "on all four rotations of binarised MNIST, 5 min; reuse with --init-from",
        {"model": {**_PRETEXT_ENCODER, "task": "rotation"}, "data": dict(_MNIST_BINARY),
         "train": dict(_PRETEXT_TRAIN)},
    ),
    "masked-mnist": Preset(
        "self-supervised masked-patch prediction: vae-mnist's conv encoder and decoder rebuild a quarter of "
        "7x7 patches zeroed in binarised MNIST, 5 min; reuse with --init-from",
        {"model": {**_PRETEXT_ENCODER, "task": "masked", "patch": 7, "mask_ratio": 0.25},
         "data": dict(_MNIST_BINARY), "train": dict(_PRETEXT_TRAIN)},
    ),
})

def preset_yaml(name: str) -> str:
    """Preset `name`'s full resolved config as commented YAML that `genlab train FILE.yaml`
    accepts (it resolves to the same config as the preset); ConfigError naming close matches
    for an unknown name."""
    import yaml

    from genlab.config import resolve

    tree = resolve(name).to_dict()
    head = (f"# {name}: {PRESETS[name].description}\n"
            f"# Save as FILE.yaml, edit, then `genlab train FILE.yaml`. Every key is shown; a file may\n"
            f"# instead keep `preset: {name}` and only the keys it changes (see examples/).\n")
    return head + yaml.safe_dump(tree, sort_keys=False)
