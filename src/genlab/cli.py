"""The `genlab` command: parse arguments, call the library, turn errors into one line.

Results go to files (or stdout where a command prints a result); logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from genlab import __version__
from genlab.errors import ConfigError, GenlabError

log = logging.getLogger("genlab")

MAX_GRID = 65_536  # images in one PNG grid (a 256 x 256 grid of 28 x 28 images is 7,700 pixels wide)


class _Stderr(logging.StreamHandler):
    """A handler writing to the sys.stderr of the moment, not the one it was made with: a caller
    that swaps sys.stderr (pytest's capture, a notebook) and closes the old one leaves no handler
    writing to a closed file."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass


def _setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Logs and progress (genlab.progress) on stderr: INFO by default, DEBUG with -v; -q keeps
    warnings and errors only (no progress)."""
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s" if verbose else "genlab: %(message)s"))
    root = logging.getLogger("genlab")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    root.propagate = False


class _Parser(argparse.ArgumentParser):
    """argparse with genlab's error format: one line naming the problem and where help is,
    instead of the usage block (the one-line rule holds for every command-line mistake)."""

    def error(self, message: str):
        self.exit(2, f"genlab: error: {message}; see `{self.prog} --help`\n")


RUN_DIR_HELP = "a run directory (written by `genlab train`)"
DEVICE_HELP = "auto (default: cuda when available, else cpu), cpu or cuda"
SEED_HELP = "random seed (default 0): the same seed gives the same output"
CHECKPOINT_HELP = "'last' (default), 'best' or step-NNNNNNNN"


class _SetAction(argparse.Action):
    """`--set` takes every word after it, so in `train --set train.lr=1e-3 vae-mnist` the preset
    lands among the overrides: the words without '=' that end a --set group are kept apart
    (`set_tail`) and become the config when they look like one (see `_train_config`)."""

    def __call__(self, parser, namespace, values, option_string=None):
        k = len(values)
        while k and "=" not in values[k - 1]:
            k -= 1
        setattr(namespace, self.dest, list(getattr(namespace, self.dest) or []) + list(values[:k]))
        namespace.set_tail = list(getattr(namespace, "set_tail", None) or []) + list(values[k:])


def _parser() -> argparse.ArgumentParser:
    # -v after the subcommand too; SUPPRESS keeps a subcommand from resetting a top-level -v to False
    common = argparse.ArgumentParser(add_help=False)
    quiet_help = ("warnings and errors only: no progress (progress lines come every $GENLAB_PROGRESS_SECONDS, "
                  "default 5, when stderr is not a terminal; 0 turns them off)")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="debug logging (before or after the command)")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=quiet_help)
    p = _Parser(prog="genlab", description="Train, measure and use generative models.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging (before or after the command)")
    p.add_argument("-q", "--quiet", action="store_true", help=quiet_help)
    p.add_argument("--version", action="version", version=f"genlab {__version__}", help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, parents=[common])

    t = command("train", "train a preset or YAML config, or resume a run")
    t.add_argument("config", nargs="?", help="preset name (see `genlab presets`) or FILE.yaml")
    t.add_argument("--set", dest="overrides", nargs="+", action=_SetAction, default=[], metavar="SECTION.KEY=VALUE",
                   help="override config values, e.g. --set train.lr=3e-4 model.beta=4 (repeatable; the preset "
                        "may come after: --set train.lr=3e-4 vae-mnist)")
    t.set_defaults(set_tail=[])
    t.add_argument("--out", help="run directory (default: runs/PRESET-TIMESTAMP)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its newest valid checkpoint")
    t.add_argument("--init-from", metavar="RUN_DIR", help="start from another run's weights (or demo:NAME): every "
                   "tensor whose name and shape match is loaded, the rest reported in RUN/init.json "
                   "(= --set train.init_from=RUN_DIR)")
    t.add_argument("--steps", type=int, help="total training-step budget of the run")
    t.add_argument("--minutes", type=float, help="total training-time budget of the run, in minutes")
    t.add_argument("--seed", type=int, help="random seed (default: the config's train.seed, 0)")
    t.add_argument("--device", choices=["auto", "cpu", "cuda"], help=DEVICE_HELP + " (default: the config's)")
    t.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    t.add_argument("--data-root", help="folder holding the datasets (default: $GENLAB_DATA, ../shared/data)")
    t.add_argument("--download", action="store_true", help="download MNIST/Fashion-MNIST if missing (online only)")

    s = command("sample", "draw samples from a trained run")
    s.add_argument("run_dir", help=RUN_DIR_HELP)
    s.add_argument("--n", type=int, help="samples to draw (default 64); with --interpolate: interpolation rows "
                                         "(default 8), each of --frames images")
    s.add_argument("--out", help="FILE.png (grid), FILE.npz (images, labels) or DIR/ (one PNG each); "
                                 "default RUN_DIR/samples/sample-seedS.png. Audio runs: FILE.wav (the clips "
                                 "in a row), FILE.npz (audio, sample_rate, labels) or DIR/ (one WAV each), "
                                 "with a spectrogram grid PNG beside; default RUN_DIR/samples/sample-seedS.wav")
    s.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    s.add_argument("--label", type=int, help="class to sample (conditional models)")
    s.add_argument("--condition", metavar="VALUE", help="molecule runs trained with data.condition: ask for the "
                   "property bin holding VALUE (e.g. 0.9 for qed) or bin:K")
    s.add_argument("--smiles-syntax", action="store_true", help="SMILES runs: draw only tokens that keep each "
                   "molecule syntactically complete (balanced branches, closed rings); a Kekule run "
                   "(data.kekulize) keeps every atom within its valence too")
    s.add_argument("--interpolate", action="store_true",
                   help="write a latent interpolation grid (--n rows of --frames images) instead of samples")
    s.add_argument("--frames", type=int, help="--interpolate: images per interpolation row, endpoints included "
                                              "(default 10)")
    s.add_argument("--steps", type=int, help=argparse.SUPPRESS)  # the old name of --frames: refused with a hint
    s.add_argument("--checkpoint", default="last", help=CHECKPOINT_HELP)
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help=DEVICE_HELP)
    s.add_argument("--prompt", help="text runs: the text to continue (streamed to stdout; default a newline)")
    s.add_argument("--max-tokens", type=int, default=500, help="text runs: tokens to generate")
    s.add_argument("--temperature", type=float, default=1.0, help="text runs: 0 = greedy")
    s.add_argument("--top-k", type=int, help="text runs: sample among the k most likely tokens")
    s.add_argument("--top-p", type=float, help="text runs: nucleus sampling mass (0-1]")
    s.add_argument("--repetition-penalty", type=float, default=1.0, help="text runs: > 1 discourages repeats")
    s.add_argument("--stop", help="text runs: end the text before this string")
    s.add_argument("--no-cache", action="store_true", help="text runs: recompute the context for every token")
    _diffusion_flags(s)
    s.add_argument("--compile", action="store_true", help="diffusion and GPT runs: torch.compile the UNet / the "
                                                          "one-token step and chunks of 8 (a wait for the "
                                                          "compiler, then faster steps: for many samples or "
                                                          "long texts)")
    s.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch",
                   help="evaluate the network with PyTorch (default) or with onnxruntime from the model "
                        "`genlab export` wrote (diffusion, VAE, GAN, GPT; needs the export extra)")

    e = command("evaluate", "metrics for a run's model family -> report.json + report.html")
    e.add_argument("run_dir", help=RUN_DIR_HELP)
    e.add_argument("--n", type=int, help="samples to draw (images: default 10,000)")
    e.add_argument("--metrics", nargs="+", help="subset of metrics (default: all that apply, except tstr, which "
                                                "trains classifiers and runs only when named), e.g. fid kid tstr")
    e.add_argument("--out", help="report path (default RUN_DIR/report.json; the HTML goes beside it)")
    e.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    e.add_argument("--extractor", help="feature extractor: lenet-mnist, lenet-fashion or inception "
                                       "(default: the dataset's offline LeNet)")
    e.add_argument("--inception-weights", help="local file of torch-fidelity's Inception weights")
    e.add_argument("--download", action="store_true", help="download the Inception weights if missing (online)")
    e.add_argument("--iw-k", type=int, help="importance samples for likelihood bounds (default 100)")
    e.add_argument("--probe-labels", type=int, help="labelled training images (class-balanced) the linear probe "
                   "is fitted on (--metrics probe probe_random; default 100)")
    e.add_argument("--data-root", help="folder holding the datasets (default: the run's)")
    e.add_argument("--temperature", type=float, help="molecule runs: sampling temperature (default 1, as MOSES; "
                                                     "lower trades diversity for validity)")
    e.add_argument("--smiles-syntax", action="store_true", help="SMILES runs: sample under SMILES's grammar "
                   "(balanced branches, closed rings; valences too for a Kekule run), recorded with every metric")
    e.add_argument("--checkpoint", default="last", help=CHECKPOINT_HELP)
    e.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help=DEVICE_HELP)
    e.add_argument("--no-html", action="store_true", help="write report.json only")

    au = command("audit", "privacy audit of an image run: membership inference and memorisation "
                          "-> audit.json + audit.html")
    au.add_argument("run_dir", help=RUN_DIR_HELP)
    au.add_argument("--reference", metavar="REF_RUN", help="a run of the same model trained on the test split "
                                                          "(--set data.train_on=test): adds the calibrated attack")
    au.add_argument("--members", type=int, default=1000, help="training images (members) and as many held-out "
                                                              "images (non-members) to attack (default 1000)")
    au.add_argument("--samples", type=int, default=1000, help="generated samples for the distance attack and the "
                                                              "memorisation figures (default 1000)")
    au.add_argument("--draws", type=int, default=8, help="random draws (latent, noise level) averaged per "
                                                         "example loss (default 8)")
    au.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    au.add_argument("--out", help="folder for audit.json and audit.html (default RUN_DIR)")
    au.add_argument("--data-root", help="folder holding the datasets (default: the run's)")
    au.add_argument("--checkpoint", default="last", help=CHECKPOINT_HELP)
    au.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help=DEVICE_HELP)

    xp = command("explain", "interpretability figures of a run: latent traversals, attributions (needs the "
                            "explain extra), attention maps, nearest training images -> explain.json + "
                            "explain.html, and a section of report.html")
    xp.add_argument("run_dir", help=RUN_DIR_HELP)
    xp.add_argument("--what", nargs="+", choices=["latents", "attribution", "attention", "neighbours"],
                    help="which figures (default: every view that applies to the run): latents (VAE/GAN "
                         "traversals), attribution (heat maps of the domain classifier, GAN discriminator, "
                         "label evidence, audio judge), attention (GPT), neighbours (nearest training images)")
    xp.add_argument("--out", help="folder for explain.json, explain.html and the PNGs (default RUN_DIR/explain, "
                                  "whose figures also join RUN_DIR/report.html)")
    xp.add_argument("--n", type=int, default=8, help="samples to explain (attribution, neighbours; default 8)")
    xp.add_argument("--input", help="attribution: explain these images (.npz with images uint8 N x C x H x W and "
                                    "optional labels, or a .png) instead of the run's samples")
    xp.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    xp.add_argument("--label", type=int, help="conditional models: the class of the samples and traversals")
    xp.add_argument("--prompt", help="attention: the text to continue (default a newline)")
    xp.add_argument("--max-tokens", type=int, default=48, help="attention: tokens generated after the prompt "
                                                               "(default 48)")
    xp.add_argument("--data-root", help="folder holding the datasets (default: the run's)")
    xp.add_argument("--checkpoint", default="last", help=CHECKPOINT_HELP)
    xp.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help=DEVICE_HELP)

    c = command("compare", "one table of several runs' metrics, throughput and time")
    c.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="runs to compare, one row each")
    c.add_argument("--metrics", nargs="+", metavar="NAME", help="metric columns to show (default: the ones that "
                                                                "matter for the families compared), e.g. fid kid")
    c.add_argument("--out", help="also write the table as FILE.html")

    pl = command("pipeline", "train -> evaluate -> retrain until a quality target passes")
    pl.add_argument("config", help="pipeline FILE.yaml (see examples/pipeline-mnist.yaml)")
    pl.add_argument("--out", help="pipeline directory (default runs/NAME of the file)")
    pl.add_argument("--resume", action="store_true", help="continue a killed pipeline, re-using finished rounds")
    pl.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    pl.add_argument("--data-root", help="folder holding the datasets (default: $GENLAB_DATA, ../shared/data)")

    fd = command("federate", "federated training with Flower: K clients train a preset on their own shards, a "
                             "server aggregates (FedAvg/FedProx/FedAdam, SecAgg+, client-level DP); rerun to resume")
    fd.add_argument("config", help="federation FILE.yaml (see examples/federated-mnist.yaml)")
    fd.add_argument("--out", help="run directory (default runs/federated-NAME-TIMESTAMP); an existing federation "
                                  "there is resumed from its last round")
    fd.add_argument("--mode", choices=["simulation", "processes"], default="simulation",
                    help="simulation: Flower's simulation engine in this process (default); processes: a Flower "
                         "SuperLink and one SuperNode per client, each its own process, on loopback")
    fd.add_argument("--data-root", help="folder holding the datasets (default: $GENLAB_DATA, ../shared/data)")

    ap = command("apply", "use a trained model: inpaint, denoise, upscale, interpolate, edit, translate (images); "
                          "denoise, inpaint (audio); interpolate (SMILES VAE molecules); style transfer with a "
                          "style-transfer run, or without "
                          "a run: `genlab apply style --content PHOTO --style IMAGE --out OUT.png`")
    ap.add_argument("run_dir", help=RUN_DIR_HELP + "; or `style` alone (no TASK): style transfer by optimisation, "
                                                   "no run needed")
    ap.add_argument("task", nargs="?", choices=["inpaint", "denoise", "upscale", "interpolate", "edit", "style",
                                                "translate"],
                    help="what to do")
    ap.add_argument("--input", "--content", help="FILE.npz (images uint8 N x C x H x W) or FILE.png; audio runs: "
                                                 "FILE.wav (mono) or FILE.npz (audio float32 N x T, sample_rate); "
                                                 "style: --content PHOTO, a colour image of any format up to 640 "
                                                 "pixels a side, or sample:china.jpg / sample:flower.jpg; "
                                                 "SMILES VAE runs: FILE.smi of 2 molecules, one a line")
    ap.add_argument("--out", required=True, help="FILE.npz (same layout as the input) or FILE.png; audio runs: "
                                                 "FILE.wav or FILE.npz; SMILES VAE runs: FILE.smi or FILE.txt "
                                                 "(one SMILES a frame) or FILE.png (the frames drawn)")
    ap.add_argument("--mask", help="inpaint: center | left-half | bottom-half | boxes | MASK.png "
                                   "(white = fill; default center); edit: the region to edit (default: all)")
    ap.add_argument("--sigma", type=float, help="denoise: noise std on the [0, 1] pixel scale (pixel / 255); "
                                                "audio runs: in waveform units (full scale 1)")
    ap.add_argument("--snr", type=float, help="denoise, audio runs: the input's SNR in dB, which sets the noise level "
                                              "(default: estimated from the quietest frames)")
    ap.add_argument("--gap", help="inpaint, audio runs: the samples to fill, START:END in seconds (0.20:0.35), "
                                  "milliseconds (200ms:350ms) or sample indices (1600n:2800n)")
    ap.add_argument("--method", choices=["diffusion", "spectral", "wiener", "linear", "zeros"],
                    help="audio runs: diffusion (default; needs a diffwave run) or a classical baseline: "
                         "denoise spectral|wiener, inpaint linear|zeros")
    ap.add_argument("--seed", type=int, default=0, help=SEED_HELP + " (not used by interpolate)")
    ap.add_argument("--seeds", type=int, nargs=2, metavar=("A", "B"), help="interpolate: two seeds instead of --input")
    ap.add_argument("--frames", type=int, help="interpolate: frames per row, endpoints included (default 8)")
    ap.add_argument("--steps", type=int, help=argparse.SUPPRESS)  # the old name of --frames: refused with a hint
    ap.add_argument("--label", type=int, help="interpolate, edit, and audio denoise/inpaint, conditional models: "
                                              "the class")
    ap.add_argument("--resample", type=int, help="inpaint, diffusion: RePaint passes per step (default 1)")
    ap.add_argument("--zeta", type=float, help="inpaint, diffusion: reconstruction guidance strength (default 3; "
                                               "0 = plain RePaint)")
    ap.add_argument("--average", type=int, help="inpaint, diffusion: return the mean of this many fills (an "
                                                "estimate of the posterior mean: higher PSNR, blurrier; default 1)")
    ap.add_argument("--iters", type=int, help="inpaint, VAE: latent optimisation steps (default 200); style "
                                              "without a run: L-BFGS iterations (default 200)")
    ap.add_argument("--strength", type=float, help="edit (SDEdit): how far into the noise the guide goes, 0..1 "
                                                   "(0: the guide itself, 1: ignore it; default 0.5); with --mask "
                                                   "(white = edit) only that region changes")
    ap.add_argument("--direction", choices=["AtoB", "BtoA"], help="translate: AtoB (default) or, CycleGAN runs, "
                                                                 "BtoA")
    ap.add_argument("--style", help="style without a run: the style image (any format and size, or "
                                    "sample:flower.jpg)")
    ap.add_argument("--style-weight", type=float, help="style without a run: weight of the style loss against the "
                                                       "content loss (default 100)")
    _diffusion_flags(ap)
    ap.add_argument("--checkpoint", default="last", help=CHECKPOINT_HELP)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help=DEVICE_HELP)

    sv = command("serve", "HTTP API and web page over trained runs (needs the serve extra)")
    sv.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="runs to serve; a model's id is its folder name")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000; 0 = any free port)")
    sv.add_argument("--api-key", help="require this key on /v1 routes (Authorization: Bearer KEY or X-API-Key); "
                                      "default $GENLAB_API_KEY, else no key")
    sv.add_argument("--max-batch", type=int, default=16, help="images per forward pass of grouped requests")
    sv.add_argument("--queue", type=int, default=64, help="requests waiting per model before answering 503")
    sv.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    sv.add_argument("--timeout", type=float, default=60.0, help="seconds a request may take before 504")

    ex = command("export", "export a run's network for deployment (ONNX; an int8 run's Linear weights stay int8; "
                           "needs the export extra)")
    ex.add_argument("run_dir", help=RUN_DIR_HELP)
    ex.add_argument("--format", choices=["onnx"], default="onnx", help="onnx (the only format so far)")
    ex.add_argument("--out", help="FILE.onnx (default RUN_DIR/export/model.onnx; a model.json describing it "
                                  "goes beside)")
    ex.add_argument("--checkpoint", default="last", help=CHECKPOINT_HELP)

    cp = command("compress", "write a smaller or faster copy of a run as a new run directory")
    cp.add_argument("run_dir", help=RUN_DIR_HELP)
    cp.add_argument("--method", required=True, choices=["quantize", "prune", "distill", "merge"],
                    help="quantize (int8/bf16/fp16 weights), prune (magnitude sparsity, optional fine-tuning), "
                         "distill (a smaller student trained on the run's soft targets; diffusion runs: a student "
                         "sampler taking a few DDIM steps, by progressive distillation) or merge (a LoRA run's "
                         "adapters folded into its base: a standalone run that no longer needs the base)")
    cp.add_argument("--out", required=True, help="the new run directory (must not exist)")
    cp.add_argument("--dtype", choices=["int8", "bf16", "fp16"], help="quantize: weight type (default int8)")
    cp.add_argument("--scheme", choices=["auto", "dynamic", "weight-only"],
                    help="quantize int8: dynamic (Linear/LSTM compute in int8) or weight-only (conv models: "
                         "smaller on disk, float compute); auto picks by model (default)")
    cp.add_argument("--amount", type=float, help="prune: fraction of weights set to zero (default 0.5)")
    cp.add_argument("--structured", choices=["true", "false", "shrink"],
                    help="prune: true zeroes whole output channels in place; shrink removes whole heads / units / "
                         "channels and rebuilds the model narrower, smaller and faster (gpt, gan, vae; --amount: "
                         "the fraction of each layer's units); default false")
    cp.add_argument("--scope", choices=["layer", "global"], help="prune: the amount per layer or over all layers")
    cp.add_argument("--finetune-steps", type=int, help="prune: training steps to recover quality, masks kept "
                                                       "(default 0)")
    cp.add_argument("--n-layer", type=int, help="distill: the student GPT's layers")
    cp.add_argument("--n-embd", type=int, help="distill: the student GPT's width")
    cp.add_argument("--n-head", type=int, help="distill: the student GPT's attention heads")
    cp.add_argument("--steps", type=int, help="distill: the student's training steps (diffusion: per stage, "
                                              "default 2800)")
    cp.add_argument("--temperature", type=float, help="distill: softmax temperature of the soft targets (default 2)")
    cp.add_argument("--alpha", type=float, help="distill: weight of the soft-target loss against the hard "
                                                "next-token loss (default 0.5)")
    cp.add_argument("--sampling-steps", type=int, help="distill, diffusion: the student's DDIM steps (default 4)")
    cp.add_argument("--stages", type=int, help="distill, diffusion: how many times the steps are divided by "
                                               "--substeps (the first teacher takes sampling-steps x substeps^stages; "
                                               "default 1)")
    cp.add_argument("--substeps", type=int, help="distill, diffusion: teacher DDIM steps one student step matches "
                                                 "(default 4; 2: the paper's halving)")
    cp.add_argument("--lr", type=float, help="distill, diffusion: the student's learning rate (default 2e-4)")
    cp.add_argument("--batch-size", type=int, help="distill, diffusion: training images per step (default 16)")
    cp.add_argument("--guidance", type=float, help="distill, diffusion, conditional: the guidance weight distilled "
                                                   "into the student (default the run's)")
    cp.add_argument("--checkpoint", default="last", help=CHECKPOINT_HELP)
    cp.add_argument("--data-root", help="prune fine-tuning, distill: folder holding the datasets (default: the run's)")

    pr = command("presets", "list presets, or print one as YAML to copy and edit")
    pr.add_argument("--show", metavar="NAME", help="print preset NAME's full config as YAML (save it as FILE.yaml, "
                                                   "edit, then `genlab train FILE.yaml`)")
    i = command("info", "a short summary of a run: what, how long on what, key metrics, where the files are")
    i.add_argument("run_dir", help=RUN_DIR_HELP)
    i.add_argument("--json", action="store_true", help="print the full record (config, manifest, report, "
                                                       "progress) as JSON")
    co = command("completion", "print a shell completion script: eval \"$(genlab completion bash)\"")
    co.add_argument("shell", choices=["bash", "zsh"], help="the shell to complete in")
    return p


def _diffusion_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sampler", choices=["ddpm", "ddim", "dpmpp"],
                   help="diffusion runs: sampler (default: the run's, dpmpp)")
    p.add_argument("--sampling-steps", type=int, help="diffusion runs: model evaluations (default 20; ddpm: 1000)")
    p.add_argument("--guidance", type=float, help="diffusion and WaveNet runs, conditional: classifier-free guidance weight w "
                                                  "(u + w (c - u) of the unconditional and conditional predictions; "
                                                  "1 = conditional, 0 = unconditional)")
    p.add_argument("--eta", type=float, help="diffusion runs, ddim and dpmpp: fresh noise per step (0 deterministic; "
                   "ddim 1 = ddpm, dpmpp 1 = its SDE form)")


def diffusion_options(run, a: argparse.Namespace) -> dict:
    """The diffusion sampling flags that were given, as keyword arguments of Diffusion.sample;
    a ConfigError when they are given for another family."""
    from genlab.sampling import check_diffusion_options

    opts = {k: v for k, v in (("sampler", a.sampler), ("steps", a.sampling_steps), ("guidance", a.guidance),
                              ("eta", a.eta)) if v is not None}
    check_diffusion_options(run, ["--" + {"steps": "sampling-steps"}.get(k, k) for k in opts], a.run_dir,
                            sampling=True)
    return opts


def _train_config(a: argparse.Namespace) -> None:
    """Take the config from the words without '=' that ended a --set group (`train --set
    train.lr=1e-3 vae-mnist`); one config only. Sets a.config."""
    from genlab.config import close_matches
    from genlab.presets import PRESETS

    for w in a.set_tail:
        if w not in PRESETS and not w.endswith((".yaml", ".yml")):
            hint = close_matches(w, PRESETS)
            raise ConfigError(f"--set expects section.key=value, got {w!r}"
                              + (f"; it is not a preset either{hint}" if hint else ""))
    configs = ([a.config] if a.config else []) + a.set_tail
    if len(configs) > 1:
        raise ConfigError(f"two configs given ({configs[0]!r} and {configs[1]!r}); train takes one preset or "
                          "FILE.yaml")
    a.config = configs[0] if configs else None


def _written(run_dir: Path) -> str:
    """What a finished run left to look at: the final samples (final.png, .txt, .wav) when its
    model draws them, else where its checkpoints and report are (link predictors draw nothing)."""
    finals = sorted((run_dir / "samples").glob("final.*"))
    if finals:
        return "samples in " + ", ".join(map(str, finals))
    report = run_dir / "report.json"
    return (f"this model draws no samples; checkpoints in {run_dir / 'checkpoints'}"
            + (f", test figures in {report}" if report.is_file() else ""))


def cmd_train(a: argparse.Namespace) -> int:
    from genlab.engine.run import check_budgets, check_resumable, is_finished, run_status, train

    _train_config(a)
    check_budgets(a.steps, a.minutes)
    if a.resume:
        if a.config:
            raise GenlabError("--resume takes its config from the run directory; drop the preset/config argument")
        if a.overrides or a.init_from:
            raise GenlabError(f"{'--set' if a.overrides else '--init-from'} cannot change a run being resumed; "
                              "start a new run instead")
        check_resumable(a.resume)
        cfg, state = run_status(Path(a.resume))
        total = a.steps if a.steps is not None else cfg.train.steps
        minutes = a.minutes if a.minutes is not None else cfg.train.minutes
        cfg.train.steps, cfg.train.minutes = total, minutes
        if is_finished(cfg, state):
            print(f"{a.resume} is already finished (step {state['state']['step']} of {total}); "
                  "pass --steps N to extend it", file=sys.stderr)
            return 0
    elif not a.config:
        raise GenlabError("give a preset or FILE.yaml (see `genlab presets`), or --resume RUN_DIR")
    if a.init_from:
        a.overrides = [*a.overrides, f"train.init_from={a.init_from}"]
    res = train(a.config, a.out, overrides=a.overrides, resume=a.resume, steps=a.steps, minutes=a.minutes,
                seed=a.seed, device=a.device, threads=a.threads, data_root=a.data_root,
                download=a.download, argv=sys.argv)
    if not res.finished:
        log.info("interrupted at step %d; checkpoint saved; continue with `genlab train --resume %s`",
                 res.state.step, res.run_dir)
        return 130
    log.info("done: step %d (%s); %s", res.state.step, res.state.stop_reason, _written(Path(res.run_dir)))
    return 0


def cmd_sample(a: argparse.Namespace) -> int:
    from genlab.data.molecules import is_molecule_config
    from genlab.engine.run import load
    from genlab.images import write_images
    from genlab.options import check_memory, check_number, check_output

    if a.steps is not None:
        raise ConfigError("--steps is the training budget of `genlab train`; for interpolation frames use --frames")
    if a.frames is not None and not a.interpolate:
        raise ConfigError("--frames is the length of --interpolate rows; add --interpolate or drop --frames")
    check_number("--n", a.n, lo=1, integer=True)
    check_number("--frames", a.frames, lo=2, integer=True)
    a.n = a.n if a.n is not None else (8 if a.interpolate else 64)
    frames = a.frames or 10
    run = load(a.run_dir, a.checkpoint, a.device)
    if a.condition is not None and run.family != "text":
        raise ConfigError(f"--condition is for molecule runs trained with data.condition; {a.run_dir} is a "
                          f"{run.cfg.model_name} {run.family} run (drop --condition)")
    if a.smiles_syntax and not is_molecule_config(run.cfg.data):
        raise ConfigError(f"--smiles-syntax is for SMILES runs; {a.run_dir} is a {run.cfg.model_name} run on "
                          f"{run.cfg.data.dataset} (drop --smiles-syntax)")
    options = diffusion_options(run, a)
    if a.backend == "onnxruntime":
        from genlab.compress.onnx_backend import load_onnx_backend

        load_onnx_backend(run)
    if run.family == "text" or a.prompt is not None:
        return _sample_text(run, a)
    if run.family == "graph":
        return _sample_graphs(run, a)
    if run.family == "audio":
        return _sample_audio(run, a, options)
    out = a.out or _in_run(a, "samples", f"{'interp' if a.interpolate else 'sample'}-seed{a.seed}.png")
    check_output(out, (".png", ".npz"), folder=True)
    n = a.n * frames if a.interpolate else a.n  # --interpolate: --n rows of --frames images
    what = f"--n {a.n} x --frames {frames}" if a.interpolate else f"--n {a.n}"
    if out.endswith(".png") and n > MAX_GRID:
        raise ConfigError(f"{what}: a PNG grid holds at most {MAX_GRID:,} images; write FILE.npz or DIR/")
    per_image = run.meta["channels"] * run.meta["native_size"][0] * run.meta["native_size"][1]
    # the images, plus the compressed .npz (at most as large) built in memory before the write
    check_memory(2 * n * per_image, what, "draw fewer, or several batches with different --seed")
    if a.compile:
        run.compile()
    if a.interpolate:
        from genlab.sampling import interpolation_grid

        images, labels = interpolation_grid(run, rows=a.n, steps=frames, seed=a.seed, label=a.label)
        nrow = frames
    else:
        images, labels = run.sample(a.n, seed=a.seed, label=a.label, **options)
        nrow = None
    path = write_images(out, images, labels, nrow=nrow)
    log.info("wrote %d images to %s", len(images), path)
    return 0


def _sample_graphs(run, a: argparse.Namespace) -> int:
    """Graph runs: --out FILE.npz (adjacency, num_nodes) or DIR/ (one edge-list CSV per graph),
    plus a PNG drawing of the first 16 beside it."""
    from genlab.data.graphs import draw_graphs, write_graphs
    from genlab.data.molecules import is_molecule_config
    from genlab.errors import ConfigError
    from genlab.options import check_memory, check_output
    from genlab.seed import make_generator

    if a.label is not None or a.interpolate:
        raise ConfigError("--label and --interpolate are image options; graph runs take --n, --seed and --out")
    if is_molecule_config(run.cfg.data):  # molecule graphs: SMILES, one a line, as SMILES runs write them
        return _sample_molecules(run, a)
    if getattr(run.model, "task", None) != "generate":
        raise ConfigError(f"{a.run_dir} is a link-prediction run ({run.cfg.model_name}); it draws no graphs: "
                          "use `genlab evaluate` for its test AUC/AP")
    out = a.out or _in_run(a, "samples", f"graphs-seed{a.seed}.npz")
    check_output(out, (".npz",), folder=True)
    nmax = run.model.cfg.max_nodes
    check_memory(2 * a.n * nmax * nmax, f"--n {a.n} graphs", "draw fewer, or several batches with different --seed")
    graphs = run.model.sample_graphs(a.n, generator=make_generator(a.seed))
    path = write_graphs(out, graphs)
    png = draw_graphs(graphs[:16], path / "drawing.png" if path.is_dir() else path.with_suffix(".png"))
    log.info("wrote %d graphs to %s and a drawing of %d to %s", len(graphs), path, min(16, len(graphs)), png)
    return 0


def _sample_audio(run, a: argparse.Namespace, options: dict) -> int:
    """Audio runs: --out FILE.wav (the clips one after another), FILE.npz (audio float32 N x T,
    sample_rate, labels) or DIR/ (one WAV each), with a PNG grid of their spectrograms beside."""
    import time

    from genlab.audio import write_audio
    from genlab.options import check_memory, check_output

    if a.interpolate or a.compile:
        raise ConfigError("--interpolate and --compile are image options; audio runs take --n, --label, --seed "
                          "and the diffusion sampling flags")
    out = a.out or _in_run(a, "samples", f"sample-seed{a.seed}.wav")
    check_output(out, (".wav", ".npz"), folder=True)
    check_memory(3 * a.n * run.meta["audio_length"] * 4, f"--n {a.n}",
                 "draw fewer, or several batches with different --seed")
    t0 = time.perf_counter()
    clips, labels = run.sample(a.n, seed=a.seed, label=a.label, **options)
    seconds = time.perf_counter() - t0
    sr = run.meta["sample_rate"]
    path, png = write_audio(out, clips, labels, sr)
    log.info("wrote %d clips (%.1f s of audio, generated %.1fx real time) to %s and their spectrograms to %s",
             len(clips), clips.numel() / sr, clips.numel() / sr / max(seconds, 1e-9), path, png)
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from genlab.evaluation import evaluate

    opts = {k: v for k, v in (("extractor", a.extractor), ("inception_weights", a.inception_weights),
                              ("iw_k", a.iw_k), ("probe_labels", a.probe_labels), ("data_root", a.data_root),
                              ("download", a.download or None), ("temperature", a.temperature),
                              ("smiles_syntax", a.smiles_syntax or None))
            if v is not None}
    report = evaluate(a.run_dir, n=a.n, metrics=a.metrics, out=a.out, seed=a.seed, checkpoint=a.checkpoint,
                      device=a.device, html=not a.no_html, **opts)
    out = Path(a.out) if a.out else Path(a.run_dir) / "report.json"
    for name, m in report["metrics"].items():
        ext = f" ({m['extractor']})" if m.get("extractor") else ""
        print(f"{name + ext:<32} {m['value']:.6g}")
    log.info("wrote %s%s in %.1f s", out, "" if a.no_html else f" and {out.with_suffix('.html')}",
             report["seconds_with_report"])
    return 0


def cmd_audit(a: argparse.Namespace) -> int:
    from genlab.evaluation.privacy import run_audit, summary_lines

    report = run_audit(a.run_dir, reference=a.reference, out=a.out, members=a.members, samples=a.samples,
                       draws=a.draws, seed=a.seed, checkpoint=a.checkpoint, device=a.device, data_root=a.data_root)
    for line in summary_lines(report):
        print(line)
    log.info("audit done in %.1f s", report["seconds"])
    return 0


def cmd_explain(a: argparse.Namespace) -> int:
    from genlab.explain import explain

    record = explain(a.run_dir, what=a.what, out=a.out, n=a.n, seed=a.seed, label=a.label, prompt=a.prompt,
                     max_tokens=a.max_tokens, checkpoint=a.checkpoint, device=a.device, data_root=a.data_root,
                     input=a.input)
    for line in record["summary"]:
        print(line)
    for note in record["notes"]:
        log.warning("%s", note)
    out = Path(a.out) if a.out else Path(a.run_dir) / "explain"
    log.info("wrote %s, %s and %d figure(s) in %.1f s", out / "explain.json", out / "explain.html",
             len(record["figures"]), record["seconds"])
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    from genlab.evaluation.compare import collect, format_table, write_compare_html

    header, rows = collect(a.run_dirs, metrics=a.metrics)
    print(format_table(header, rows))
    if a.out:
        log.info("wrote %s", write_compare_html(header, rows, Path(a.out), a.run_dirs))
    return 0


def _sample_molecules(run, a: argparse.Namespace) -> int:
    """--n molecules of a SMILES/SELFIES run, one SMILES a line (invalid ones as generated, an
    unfinished one as an empty line), to stdout and to --out FILE.smi/.txt."""
    from genlab.data.molecules import sample_molecules
    from genlab.engine.checkpoint import atomic_write_text
    from genlab.options import check_number, check_output

    if a.out:
        check_output(a.out, (".smi", ".txt"))
    n = 64 if a.n is None else a.n
    check_number("--n", n, lo=1, integer=True)
    token = None
    if a.condition is not None:  # the property bin to ask for (genlab.data.molecule_condition)
        from genlab.data.molecule_condition import run_condition

        cond = run_condition(run.meta)
        if cond is None:
            raise ConfigError(f"{a.run_dir} was trained without data.condition, so it has no property bins for "
                              "--condition; drop --condition, or train with --set data.condition=qed")
        k = cond.resolve(a.condition)
        token = cond.tokens[k]
        lo, hi = cond.bounds(k)
        log.info("sampling bin %d of %s, [%.4g, %.4g) (%.1f%% of the training molecules)", k, cond.prop, lo, hi,
                 100 * cond.base_rate(k))
    mols = sample_molecules(run.model, run.tokenizer, n, seed=a.seed, temperature=a.temperature, condition=token,
                            smiles_syntax=a.smiles_syntax)
    text = "".join(m + "\n" for m in mols)
    sys.stdout.write(text)
    if a.out:
        atomic_write_text(Path(a.out), text)
        log.info("wrote %d molecules to %s", n, a.out)
    return 0


def _sample_text(run, a: argparse.Namespace) -> int:
    """Stream a continuation to stdout as it is generated; --out also writes prompt + text,
    also when the generation is interrupted (Ctrl-C): what was generated is kept."""
    import time

    from genlab.engine.checkpoint import atomic_write_text
    from genlab.options import check_output

    if a.label is not None or a.interpolate:
        raise ConfigError("--label and --interpolate are image options; text runs take --prompt")
    if a.compile:
        run.compile()
    from genlab.data.molecules import is_molecule_config

    if a.prompt is None and is_molecule_config(run.cfg.data):
        return _sample_molecules(run, a)
    if hasattr(run.model, "sample_smiles"):  # the SMILES VAE decodes from its latent space, not from a prompt
        raise ConfigError(f"{a.run_dir} is a {run.cfg.model_name} run: it samples whole molecules (--n N), "
                          "not continuations of a prompt; drop --prompt")
    if a.condition is not None:
        raise ConfigError("--condition is for molecule runs trained with data.condition, sampled without --prompt; "
                          "drop --condition")
    if a.out:
        check_output(a.out, (".txt",))
    prompt = "\n" if a.prompt is None else a.prompt
    pieces = run.generate(prompt, a.max_tokens, temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
                          repetition_penalty=a.repetition_penalty, stop=a.stop, seed=a.seed,
                          use_cache=not a.no_cache)
    t0, out = time.perf_counter(), []
    try:
        for piece in pieces:  # bad input raises at the first piece, before anything is written
            if not out:
                sys.stdout.write(prompt)
            out.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        if a.out and out:
            atomic_write_text(Path(a.out), prompt + "".join(out))
            log.info("interrupted; wrote the %d pieces generated so far to %s", len(out), a.out)
        raise
    if not out:
        sys.stdout.write(prompt)
    sys.stdout.write("\n")
    text = prompt + "".join(out)
    if a.out:
        atomic_write_text(Path(a.out), text)
        log.info("wrote %s", a.out)
    log.info("%d characters in %.2f s", len(text), time.perf_counter() - t0)
    return 0


def cmd_apply(a: argparse.Namespace) -> int:
    import time

    from genlab.apply import apply
    from genlab.options import check_number

    if a.task is None:  # `genlab apply style ...`: the pseudo-run `style`, the task that needs no run
        if a.run_dir != "style":
            raise ConfigError(f"give a task after {a.run_dir}: inpaint, denoise, upscale, interpolate, edit or "
                              "style (only `genlab apply style ...` needs no run)")
        a.run_dir, a.task = None, "style"
    if a.steps is not None:
        raise ConfigError("--steps is the training budget of `genlab train`; for interpolation frames use --frames")
    if a.frames is not None and a.task != "interpolate":
        raise ConfigError(f"--frames is an option of interpolate, not of {a.task}")
    check_number("--frames", a.frames, lo=2, integer=True)
    options = {"mask": a.mask, "sigma": a.sigma, "seeds": a.seeds, "steps": a.frames, "label": a.label,
               "resample": a.resample, "zeta": a.zeta, "average": a.average, "iters": a.iters, "sampler": a.sampler,
               "sampling_steps": a.sampling_steps, "eta": a.eta, "guidance": a.guidance, "snr": a.snr,
               "gap": a.gap, "method": a.method, "strength": a.strength, "style": a.style,
               "style_weight": a.style_weight, "direction": a.direction}
    if a.task not in ("interpolate", "translate"):  # deterministic: given endpoints, a translation network
        options["seed"] = a.seed
    t0 = time.perf_counter()
    out = apply(a.run_dir, a.task, input=a.input, out=a.out, checkpoint=a.checkpoint, device=a.device, **options)
    log.info("%s: wrote %s in %.1f s", a.task, out, time.perf_counter() - t0)
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    import socket

    from genlab.options import check_number

    check_number("--port", a.port, lo=0, hi=65535, integer=True)
    check_number("--max-batch", a.max_batch, lo=1, hi=1024, integer=True)
    check_number("--queue", a.queue, lo=1, hi=100_000, integer=True)
    check_number("--threads", a.threads, lo=1, integer=True)
    check_number("--timeout", a.timeout, lo=0, lo_open=True)
    from genlab.extras import require

    uvicorn = require("uvicorn", "serve", "genlab serve")
    from genlab.serve import create_app

    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    key = a.api_key or os.environ.get("GENLAB_API_KEY") or None
    if key is not None and not key.isascii():
        raise ConfigError("--api-key must be ASCII (HTTP headers carry bytes; clients could never send it)")
    # bind first, so that a taken port is a one-line error before the runs are loaded
    sock = socket.socket(socket.AF_INET6 if ":" in a.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((a.host, a.port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"--host {a.host} --port {a.port}: cannot listen there ({e.strerror or e}); "
                          "choose another --port") from None
    app = create_app(a.run_dirs, api_key=key, max_batch=a.max_batch, queue=a.queue, timeout=a.timeout)
    host, port = sock.getsockname()[:2]
    if key is None and a.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without an API key: anyone who can reach it can use the models "
                    "(set --api-key or $GENLAB_API_KEY)", a.host)
    log.info("serving %d model(s) (%s) at http://%s:%d/ (API docs at /docs); Ctrl-C stops",
             len(app.state.served), ", ".join(app.state.served), f"[{host}]" if ":" in host else host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level="info" if a.verbose else "warning",
                                           access_log=a.verbose, timeout_graceful_shutdown=5))
    logging.getLogger("genlab.progress").setLevel(logging.WARNING)  # requests are short: a log without progress
    server.run(sockets=[sock])
    return 0


def cmd_pipeline(a: argparse.Namespace) -> int:
    from genlab.engine.lock import RunLock
    from genlab.options import check_run_dir_path
    from genlab.pipeline import Pipeline, load_pipeline

    cfg = load_pipeline(a.config)
    out = check_run_dir_path(a.out) if a.out else Path("runs") / Path(a.config).stem
    p = Pipeline(cfg, out, data_root=a.data_root)
    if a.dry_run:
        print(p.plan())
        return 0
    with RunLock(out):  # one pipeline per folder (each round's run is locked by train as well)
        outcome = p.run(resume=a.resume)
    if outcome is None:
        log.info("interrupted; continue with `genlab pipeline %s --out %s --resume`", a.config, out)
        return 130
    print(outcome.summary)
    return 0 if outcome.passed else 1


def cmd_federate(a: argparse.Namespace) -> int:
    from genlab.federated import federate

    run_dir = federate(a.config, a.out, mode=a.mode, data_root=a.data_root, argv=sys.argv)
    log.info("done: %s; %s", run_dir, _written(run_dir))
    return 0


def cmd_presets(a: argparse.Namespace) -> int:
    from genlab.presets import PRESETS, preset_yaml

    if a.show:
        sys.stdout.write(preset_yaml(a.show))
        return 0
    width = max(len(n) for n in PRESETS)
    for name, p in PRESETS.items():
        print(f"{name:<{width}}  {p.description}")
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    from genlab.evaluation.summary import run_record, summary_text

    run_dir = Path(a.run_dir)
    if a.json:
        print(json.dumps(run_record(run_dir), indent=2))
    else:
        print(summary_text(run_dir).rstrip("\n"))
    return 0


def cmd_completion(a: argparse.Namespace) -> int:
    from genlab.completion import completion_script

    sys.stdout.write(completion_script(_parser(), a.shell))
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from genlab.compress.export import export_onnx

    print(export_onnx(a.run_dir, a.out, checkpoint=a.checkpoint))
    return 0


def cmd_compress(a: argparse.Namespace) -> int:
    from genlab.compress import compress

    flags = {"dtype": a.dtype, "scheme": a.scheme, "amount": a.amount,
             "structured": a.structured, "scope": a.scope,
             "finetune_steps": a.finetune_steps, "n_layer": a.n_layer, "n_embd": a.n_embd, "n_head": a.n_head,
             "steps": a.steps, "temperature": a.temperature, "alpha": a.alpha, "data_root": a.data_root,
             "sampling_steps": a.sampling_steps, "stages": a.stages, "substeps": a.substeps, "lr": a.lr,
             "batch_size": a.batch_size, "guidance": a.guidance}
    options = {k: v for k, v in flags.items() if v is not None}
    out = compress(a.run_dir, a.method, a.out, checkpoint=a.checkpoint, **options)
    print(out)
    return 0


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "evaluate": cmd_evaluate, "compare": cmd_compare,
            "pipeline": cmd_pipeline, "federate": cmd_federate, "apply": cmd_apply, "serve": cmd_serve,
            "presets": cmd_presets, "info": cmd_info, "audit": cmd_audit, "completion": cmd_completion,
            "export": cmd_export, "compress": cmd_compress, "explain": cmd_explain}


def _in_run(a: argparse.Namespace, *parts: str) -> str:
    """A default output path inside the run directory; shipped demos are read-only (--out needed)."""
    from genlab import demos

    demos.refuse_write(a.run_dir, "give --out")
    return str(Path(a.run_dir).joinpath(*parts))


def _resolve_demos(a: argparse.Namespace) -> None:
    """`demo:NAME` run arguments -> the shipped demo's folder (genlab.demos), for every command."""
    from genlab import demos

    if getattr(a, "run_dir", None):
        a.run_dir = str(demos.resolve(a.run_dir))
    if getattr(a, "run_dirs", None):
        a.run_dirs = [str(demos.resolve(d)) for d in a.run_dirs]


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    _setup_logging(a.verbose, a.quiet)
    try:
        _resolve_demos(a)
        return COMMANDS[a.command](a)
    except GenlabError as e:
        print(f"genlab: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("genlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `genlab info RUN | head`: the reader left; nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except OSError as e:  # the system refused (permissions, a full disk): say which file and why
        where = f" ({e.filename})" if e.filename else ""
        print(f"genlab: error: {e.strerror or e}{where}; check the path's permissions and free space",
              file=sys.stderr)
        return 2
    except MemoryError:
        print("genlab: error: out of memory; use smaller --n / batch sizes", file=sys.stderr)
        return 2
