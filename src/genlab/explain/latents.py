"""Latent traversals of VAEs and GANs: each latent dimension swept over the prior's range while
the others stay fixed, the dimensions ranked by their effect.

VAEs are ranked by their KL per dimension measured on test images, KL_j = mean over images of
0.5 (mu_j^2 + sigma_j^2 - log sigma_j^2 - 1): a dimension the encoder leaves at the prior
(KL ~ 0) carries no information about the image, however the decoder reacts to it. GANs have no
encoder; their dimensions are ranked by how much the image changes when one is swept: the mean
absolute change of the generated pixels (data space), over a few prior anchors and the sweep.
"""

from __future__ import annotations

import torch

from genlab.errors import ConfigError, DataError
from genlab.explain.common import ExplainOptions, Part, bar_png
from genlab.seed import derive_seed, make_generator

SPAN = 3.0  # the sweep covers [-SPAN, SPAN]: 99.7% of the N(0, 1) prior
VALUES = 9  # images per traversal row
TOP = 10  # dimensions drawn, the highest ranked first
ANCHORS = 4  # prior draws the GAN effect is averaged over
KL_IMAGES = 2000  # test images the VAE KL is measured on


def reason(run) -> str | None:
    """None when the run has latents to traverse, else why not."""
    from genlab.models.base import LatentVariableModel

    if run.family == "image" and isinstance(run.model, LatentVariableModel) and len(run.model.latent_shape()) == 1:
        return None
    return "latent traversals need a VAE or GAN run (a latent vector to sweep)"


def traversal_codes(z0: torch.Tensor, dims: list[int], values: torch.Tensor) -> torch.Tensor:
    """Latent codes that sweep one dimension at a time.

    Args:
        z0: (D,) the anchor code.
        dims: the R dimensions to sweep.
        values: (S,) the values each takes.
    Returns:
        (R, S, D): row r is z0 with dimension dims[r] set to each of `values`, all else as z0.
    """
    R, S, D = len(dims), len(values), z0.shape[0]
    codes = z0.expand(R, S, D).clone()  # (R, S, D)
    for r, d in enumerate(dims):
        codes[r, :, d] = values.to(codes)
    return codes


@torch.no_grad()
def traverse(model, z0: torch.Tensor, dims: list[int], values: torch.Tensor,
             label: int | None = None) -> torch.Tensor:
    """Decode `traversal_codes(z0, dims, values)` -> images (R, S, C, H, W) in data space
    (conditional models: all of class `label`)."""
    codes = traversal_codes(z0, dims, values)
    R, S, D = codes.shape
    dev = next(model.parameters()).device
    y = None if label is None else torch.full((R * S,), label, dtype=torch.long, device=dev)
    x = model.decode_latent(codes.reshape(R * S, D).to(dev), y)  # (R*S, C, H, W)
    return x.reshape(R, S, *x.shape[1:])


@torch.no_grad()
def kl_per_dimension(model, x: torch.Tensor, y: torch.Tensor | None = None, batch_size: int = 500) -> torch.Tensor:
    """A VAE's KL(q(z_j | x) || N(0, 1)) per latent dimension, averaged over images.

    Args:
        model: a VAE (has `encode(x, y) -> (mu, logvar)`).
        x: (N, C, H, W) images in the model's data space.
        y: (N,) labels for a conditional VAE.
    Returns:
        float64 (D,) nats; their sum is the mean KL term of the ELBO.
    """
    total = None
    for i in range(0, len(x), batch_size):
        mu, logvar = (t.double() for t in model.encode(x[i:i + batch_size], None if y is None else y[i:i + batch_size]))
        kl = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum(0)  # (D,)
        total = kl if total is None else total + kl
    return (total / len(x)).cpu()


@torch.no_grad()
def effect_per_dimension(model, anchors: torch.Tensor, values: torch.Tensor,
                         labels: torch.Tensor | None = None) -> torch.Tensor:
    """How much the decoded image changes when each dimension alone is swept.

    Args:
        model: a latent-variable model (`decode_latent(z, labels)`).
        anchors: (A, D) codes the sweeps start from.
        values: (S,) the values each dimension takes.
        labels: (A,) classes of the anchors for conditional models.
    Returns:
        float64 (D,): the mean |x(swept) - x(anchor)| over pixels, values and anchors, data space.
    """
    A, D = anchors.shape
    S = len(values)
    dev = next(model.parameters()).device
    base = model.decode_latent(anchors.to(dev), None if labels is None else labels.to(dev))  # (A, C, H, W)
    y = None if labels is None else labels.repeat_interleave(S).to(dev)  # (A*S,)
    out = torch.empty(D, dtype=torch.float64)
    for d in range(D):
        codes = anchors[:, None, :].expand(A, S, D).clone()  # (A, S, D)
        codes[:, :, d] = values
        x = model.decode_latent(codes.reshape(A * S, D).to(dev), y).reshape(A, S, *base.shape[1:])
        out[d] = (x - base[:, None]).abs().double().mean().item()
    return out


def _test_images(run, o: ExplainOptions) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Up to KL_IMAGES images of the run's test split (validation when it has none), in a seeded
    order: (uint8 (N, C, H, W), labels or None, their indices in the split)."""
    data = run.data(o.data_root)
    x, y = (data.test_x, data.test_y) if len(data.test_x) else (data.val_x, data.val_y)
    if len(x) == 0:
        raise ConfigError(f"{run.run_dir}'s data has no test or validation images to measure the KL on")
    idx = torch.randperm(len(x), generator=make_generator(derive_seed(o.seed, "explain-latents")))[:KL_IMAGES]
    return x[idx], None if y is None else y[idx], idx


def explain_latents(run, o: ExplainOptions) -> Part:
    """Traversals of the TOP highest-ranked dimensions from one anchor, and the ranking's chart.
    VAE: the anchor is the posterior mean of a test image (ranking by KL on KL_IMAGES test
    images); GAN: a prior draw (ranking by the image change over ANCHORS draws)."""
    from genlab.apply.io import labelled_rows, to_model_space
    from genlab.images import png_bytes
    from genlab.sampling import sample_labels

    model = run.model
    (D,) = model.latent_shape()
    conditional = bool(getattr(model, "conditional", False))
    sample_labels(model, 1, o.label)  # refuses a label the model cannot take
    values = torch.linspace(-SPAN, SPAN, VALUES)
    g = make_generator(derive_seed(o.seed, "explain-latents"))
    anchors = torch.randn(ANCHORS, D, generator=g)
    part = Part()
    if hasattr(model, "encode"):  # a VAE: rank by KL on data
        images, labels, idx = _test_images(run, o)
        if conditional and o.label is not None:
            keep = labels == o.label
            if not bool(keep.any()):
                raise DataError(f"--label {o.label}: none of the {len(labels)} test images drawn has that class; "
                                "give a class the run's test split holds")
            images, labels, idx = images[keep], labels[keep], idx[keep]
        x = to_model_space(run, images)
        y = labels.to(run.device) if conditional else None
        score = kl_per_dimension(model, x, y)
        label = int(labels[0]) if conditional else None
        with torch.no_grad():
            z0 = model.encode(x[:1], None if y is None else y[:1])[0][0].cpu()
        how, unit = f"KL on {len(x)} test images", "KL"
        anchor = f"the posterior mean of test image #{int(idx[0])}" + (f" (class {label})" if conditional else "")
        part.record["kl_per_dim"] = [round(v, 6) for v in score.tolist()]
        part.record["kl_images"] = len(x)
        effect_labels = None if label is None else torch.full((ANCHORS,), label)
    else:  # a GAN: rank by the change in the image
        label = (o.label if o.label is not None else 0) if conditional else None
        effect_labels = None if label is None else torch.full((ANCHORS,), label)
        z0 = anchors[0]
        how, unit = f"mean |change| of the pixels over {ANCHORS} prior draws", "effect"
        anchor = f"a prior draw (seed {o.seed})" + (f", class {label}" if conditional else "")
        score = None
    effect = effect_per_dimension(model, anchors, values, effect_labels)
    score = effect if score is None else score
    ranking = sorted(range(D), key=lambda d: -float(score[d]))
    top = ranking[:min(TOP, D)]
    images = traverse(model, z0.to(run.device), top, values, label)  # (R, S, C, H, W)
    R, S = images.shape[:2]
    pics = run.pipeline.to_uint8(images.reshape(R * S, *images.shape[2:]).cpu()).reshape(R, S, *images.shape[2:])
    rows = [(f"z{d}  {unit} {float(score[d]):.3g}", pics[r]) for r, d in enumerate(top)]
    kind = "VAE" if hasattr(model, "encode") else "GAN"
    part.figures.append((
        "latents-traversals.png",
        f"latent traversals ({kind}): each row sweeps one dimension from {-SPAN:g} to {SPAN:g} "
        f"({VALUES} values) with the others fixed at {anchor}; rows are the {len(top)} dimensions with the "
        f"largest {how}, largest first", png_bytes(labelled_rows(rows, ncol=S))))
    part.figures.append((
        "latents-ranking.png", f"{how} per latent dimension ({kind})",
        bar_png(score.numpy(), title=f"{unit} per latent dimension", ylabel="nats" if unit == "KL" else "mean |change|")))
    part.record.update({
        "kind": kind, "latent_dim": D, "ranked_by": how, "ranking": ranking,
        "effect_per_dim": [round(v, 6) for v in effect.tolist()], "values": [round(v, 4) for v in values.tolist()],
        "anchor": anchor, "label": label})
    shown = ", ".join(f"z{d} {float(score[d]):.3g}" for d in ranking[:5])
    part.summary.append(f"latents ({kind}, {D} dimensions), ranked by {how}: {shown}" + (" ..." if D > 5 else ""))
    if unit == "KL":
        active = int((score > 0.01).sum())
        part.summary.append(f"latents: {active} of {D} dimensions carry more than 0.01 nats (the rest follow the prior)")
        part.record["active_dims"] = active
    return part
