"""What each metric genlab reports measures, and which way is better.

One table, `CATALOG`: name -> (one-line description, better), better being "lower", "higher"
or None (neither: a speed or a count to read, not to optimise). Names built from parts are
described by rules in `describe`:
- `test_<term>`, `val_<term>`, `train_<term>`: a loss term of the model (`LOSS_TERMS`, lower is
  better) or a catalogued metric on that split (`val_auc`), as the trainer's test report and the
  graph evaluator write them;
- `mia_<attack>_auc`, `mia_<attack>_tpr_at_fpr_<f>`, `near_copies_<space>`: the privacy audit;
- `<metric>_ab`, `<metric>_ba`: a catalogued metric of one direction of a two-way translation
  model (CycleGAN: `fid_ab`, `acceptance_ba`), as genlab.evaluation.translation writes them.
Reports, `genlab compare` and `genlab info` all read it, so a number never appears without
the direction it should move in.
"""

from __future__ import annotations

import re

CATALOG: dict[str, tuple[str, str | None]] = {
    # images: sample quality in a feature space (the extractor is named beside the value)
    "fid": ("Fréchet distance between feature statistics of samples (or translations) and real test images",
            "lower"),
    "kid": ("kernel (MMD) distance between sample and real test-image features; unbiased at small n", "lower"),
    "precision": ("fraction of samples inside the real images' feature manifold (fidelity)", "higher"),
    "recall": ("fraction of real images inside the samples' feature manifold (diversity)", "higher"),
    "inception_score": ("exp E KL(p(y|x) || p(y)): confident and varied class predictions on samples", "higher"),
    "class_coverage": ("fraction of the classes that the classifier finds among the samples", "higher"),
    "label_accuracy": ("fraction of conditional samples a classifier assigns to the class asked for", "higher"),
    "tstr": ("test accuracy of a classifier trained on samples (train on synthetic, test on real)", "higher"),
    # images: the model's own classifier q(y|x) (semi-supervised models) on the whole test split
    "classifier_accuracy": ("fraction of test images the model's own classifier q(y|x) labels correctly", "higher"),
    "classifier_error": ("fraction of test images the model's own classifier q(y|x) labels wrongly", "lower"),
    # image encoders (pretext and VAE runs): a linear probe on frozen features, few labels
    "probe": ("test accuracy of a logistic regression on the frozen encoder's features of a few labelled "
              "images (n of them)", "higher"),
    "probe_random": ("the probe on a randomly initialised encoder of the same architecture (the baseline "
                     "without training)", "higher"),
    "accuracy": ("fraction of correct predictions of the model's own task (pretext: the rotation; semivae: the labels)", "higher"),
    # images: reconstructions of test images (or translations against their targets, pix2pix)
    "mse": ("mean squared pixel error of test-image reconstructions or translations", "lower"),
    "psnr": ("peak signal-to-noise ratio of test-image reconstructions or translations, dB", "higher"),
    "ssim": ("structural similarity of reconstructions or translations to their targets (1 = identical)", "higher"),
    "feature_distance": ("distance between features of test images and of their reconstructions", "lower"),
    # image-to-image translation (pix2pix, CycleGAN); two-way models suffix _ab / _ba (see describe)
    "class_agreement": ("share of translations a classifier gives the class it gives their real targets", "higher"),
    "acceptance": ("share of translations the target domain's classifier accepts as its own "
                   "(beside the shares for real targets and untranslated sources)", "higher"),
    "cycle_l1_aba": ("mean |F(G(a)) - a| of round trips from domain A, on the [0, 1] pixel scale", "lower"),
    "cycle_l1_bab": ("mean |G(F(b)) - b| of round trips from domain B, on the [0, 1] pixel scale", "lower"),
    # likelihood
    "nll_nats": ("negative log-likelihood of a test image, nats (bound or exact, see the entry)", "lower"),
    "bits_per_dim": ("negative log-likelihood per pixel value, bits", "lower"),
    # text
    "val_loss": ("cross-entropy on held-out data, nats per token (text) or per example", "lower"),
    "perplexity": ("exp(val_loss): how many tokens the model hesitates between, on average", "lower"),
    "bits_per_char": ("held-out negative log-likelihood per character, bits", "lower"),
    "bleu": ("n-gram overlap of generated continuations with the true text (0-1)", "higher"),
    "rouge_l": ("longest-common-subsequence F-measure of continuations against the true text (0-1)", "higher"),
    "distinct_2": ("distinct word bigrams over all word bigrams of the continuations (variety)", "higher"),
    # molecules (MOSES's metrics, genlab.metrics.molecules): generated SMILES, valid ones canonical;
    # the reference is the MOSES test set (`*_tsf`: its scaffold test set) or the run's val molecules
    "validity": ("fraction of generated SMILES that RDKit parses into a molecule", "higher"),
    "unique_1k": ("fraction of distinct molecules among the first 1,000 valid ones", "higher"),
    "unique_10k": ("fraction of distinct molecules among the first 10,000 valid ones", "higher"),
    "novelty": ("fraction of distinct valid molecules not in the training set", "higher"),
    "intdiv": ("internal diversity: 1 - mean Tanimoto similarity (Morgan r2, 1024 bits) over pairs of "
               "generated molecules", "higher"),
    "intdiv2": ("internal diversity with p=2: 1 - sqrt(mean squared Tanimoto similarity) over pairs", "higher"),
    "filters": ("fraction of valid molecules passing MOSES's MCF, PAINS, ring, charge and atom filters", "higher"),
    "fcd": ("Fréchet ChemNet Distance between generated and reference molecules", "lower"),
    "snn": ("mean Tanimoto similarity of each generated molecule to its nearest reference molecule", "higher"),
    "frag": ("cosine similarity of BRICS fragment counts, generated vs reference", "higher"),
    "scaf": ("cosine similarity of Bemis-Murcko scaffold counts, generated vs reference", "higher"),
    "wd_logp": ("Wasserstein distance of the logP distributions, generated vs reference", "lower"),
    "wd_qed": ("Wasserstein distance of the QED (drug-likeness) distributions, generated vs reference", "lower"),
    "wd_sa": ("Wasserstein distance of the synthetic-accessibility score distributions", "lower"),
    "wd_weight": ("Wasserstein distance of the molecular-weight distributions (daltons)", "lower"),
    "fcd_tsf": ("Fréchet ChemNet Distance to the MOSES scaffold test set (unseen scaffolds)", "lower"),
    "snn_tsf": ("nearest-neighbour Tanimoto similarity to the MOSES scaffold test set", "higher"),
    # goal-directed generation of data.condition runs (genlab.evaluation.molecule_condition)
    "condition_success": ("share of molecules sampled for the top property bin that are valid and in that bin "
                          "(base rate beside it)", "higher"),
    "condition_success_bins": ("mean over the property bins of the share of molecules sampled for a bin that are "
                               "valid and in it", "higher"),
    "frag_tsf": ("BRICS fragment cosine similarity to the MOSES scaffold test set", "higher"),
    "scaf_tsf": ("scaffold cosine similarity to the MOSES scaffold test set (low: new scaffolds)", None),
    # graphs
    "auc": ("link prediction: ROC AUC of held-out edges against non-edges", "higher"),
    "ap": ("link prediction: average precision of held-out edges against non-edges", "higher"),
    "mmd_degree": ("MMD between degree distributions of generated and test graphs", "lower"),
    "mmd_clustering": ("MMD between clustering-coefficient distributions of generated and test graphs", "lower"),
    "mmd_spectral": ("MMD between Laplacian spectra of generated and test graphs", "lower"),
    "graphs_per_s": ("generation speed, graphs per second", "higher"),
    # audio
    "audio_is": ("Inception-style score of the judge classifier on generated clips", "higher"),
    "fad": ("Fréchet distance between judge features of generated and real clips", "lower"),
    "nll_bits_per_sample": ("negative log-likelihood of test audio, bits per audio sample", "lower"),
    "generation_rtf": ("real-time factor: seconds of audio generated per second of wall time", "higher"),
    # privacy
    "epsilon": ("differential-privacy loss bound (at the run's delta)", "lower"),
}

# Named terms of the models' `loss(batch)` dicts, which the trainer reports per split.
LOSS_TERMS: dict[str, str] = {
    "loss": "the training objective",
    "recon": "reconstruction term of the VAE objective",
    "kl": "KL divergence of the posterior from the prior (VAE)",
    "neg_elbo": "negative ELBO, a bound on the NLL (VAE)",
    "neg_elbo_labelled": "negative ELBO of the labelled images given their labels (semivae)",
    "neg_elbo_unlabelled": "negative ELBO of the unlabelled images, the label a latent (semivae)",
    "classification": "cross-entropy of the classifier q(y|x) on the labelled images (semivae)",
    "mse": "unweighted denoising error (diffusion)",
    "masked_mse": "squared error of the reconstruction on the masked pixels (masked-patch pretext task)",
    "nll": "negative log-likelihood, nats",
    "bits_per_dim": "negative log-likelihood per pixel value, bits",
    "nll_per_graph": "negative log-likelihood per graph, nats",
    "bits_per_sample": "negative log-likelihood per audio sample, bits",
    "g_loss": "generator loss",
    "d_loss": "discriminator loss",
}

SPLITS = ("test", "val", "train")
_SPLIT = re.compile(rf"^({'|'.join(SPLITS)})_(.+)$")
_MIA_AUC = re.compile(r"^mia_(.+)_auc$")
_MIA_TPR = re.compile(r"^mia_(.+)_tpr_at_fpr_(.+)$")
_NEAR = re.compile(r"^near_copies_(.+)$")
_DIRECTION = re.compile(r"^(.+)_(ab|ba)$")
ARROWS = {"lower": "↓", "higher": "↑", None: ""}


def describe(name: str) -> tuple[str, str | None]:
    """(one-line description, "lower" | "higher" | None) of a report metric; ("", None) for a
    name genlab does not know."""
    if name in CATALOG:
        return CATALOG[name]
    if m := _MIA_AUC.match(name):
        return f"membership inference ({m[1]} attack): ROC AUC of telling training images apart (0.5: no leak)", \
            "lower"
    if m := _MIA_TPR.match(name):
        return f"membership inference ({m[1]} attack): true-positive rate at {m[2]} false positives", "lower"
    if m := _NEAR.match(name):
        return f"fraction of samples that are near copies of training images ({m[1]} distance)", "lower"
    if (m := _DIRECTION.match(name)) and m[1] in CATALOG:
        text, better = CATALOG[m[1]]
        source, target = m[2].upper()
        return f"{text}, translating domain {source} to {target}", better
    if m := _SPLIT.match(name):
        split, term = m[1], m[2]
        if term in LOSS_TERMS:
            return f"{LOSS_TERMS[term]}, on the {split} split", "lower"
        if term in CATALOG:
            text, better = CATALOG[term]
            return f"{text} (on the {split} split)", better
        return f"the model's {term} loss term, on the {split} split", "lower"
    return "", None


def known(name: str) -> bool:
    """Whether `name` has its own entry or rule (not the catch-all for unknown loss terms)."""
    m = _SPLIT.match(name)
    if m and name not in CATALOG:
        return m[2] in LOSS_TERMS or m[2] in CATALOG
    return bool(describe(name)[0])


def arrow(name: str) -> str:
    """"↓" (lower is better), "↑" (higher) or "" for a metric name."""
    return ARROWS[describe(name)[1]]


# The figures that matter most per model family, most telling first: `genlab compare`'s
# default columns and `genlab info`'s key metrics (those a run's report has).
KEY_METRICS: dict[str, tuple[str, ...]] = {
    "image": ("fid", "kid", "precision", "recall", "label_accuracy", "test_loss", "probe"),
    "text": ("val_loss", "perplexity", "bits_per_char", "bleu", "rouge_l", "distinct_2"),
    "molecules": ("validity", "unique_10k", "novelty", "fcd", "snn", "frag", "scaf", "intdiv", "filters"),
    "graph": ("auc", "ap", "mmd_degree", "mmd_clustering", "mmd_spectral", "test_loss"),
    "audio": ("fad", "audio_is", "label_accuracy", "nll_bits_per_sample", "generation_rtf", "test_loss"),
}


def key_metrics(family: str) -> tuple[str, ...]:
    """The key metric names of a model family ("image", "text", "graph", "audio")."""
    return KEY_METRICS.get(family, ())
