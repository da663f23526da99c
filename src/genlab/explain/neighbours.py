"""Nearest training images of generated samples: does a sample look like one training image in
particular, or like none? The distances and the near-copy rule are those of `genlab audit`'s
memorisation check (genlab.metrics.privacy: exhaustive L2 nearest neighbours, nearest over
second-nearest distance below NEAR_COPY_RATIO = a near copy), in pixel space and, for 28x28 grey
images, in the shipped LeNet's feature space.
"""

from __future__ import annotations

import torch

from genlab.explain.common import ExplainOptions, Part

K = 3  # training images shown per sample


def reason(run) -> str | None:
    """None for image runs that draw samples, else why nearest neighbours do not apply."""
    if run.family == "image" and getattr(run.model, "draws_samples", True):
        return None
    return "nearest training images need an image run that draws samples"


def neighbour_rows(samples: torch.Tensor, train: torch.Tensor, distances: torch.Tensor, index: torch.Tensor,
                   unit: str = "") -> list[tuple[str, torch.Tensor]]:
    """(label, images) rows for `labelled_rows`: each sample beside its nearest training images,
    labelled with the nearest distance and, when the ratio to the second is below the near-copy
    threshold, 'near copy'."""
    from genlab.metrics.privacy import NEAR_COPY_RATIO, distance_ratio

    ratio = distance_ratio(distances) if distances.shape[1] >= 2 else None
    rows = []
    for j in range(len(samples)):
        flag = " near copy" if ratio is not None and ratio[j] < NEAR_COPY_RATIO else ""
        rows.append((f"#{j} d {float(distances[j, 0]):.3g}{unit}{flag}",
                     torch.cat([samples[j:j + 1], train[index[j]]])))
    return rows


def _space(distances: torch.Tensor, index: torch.Tensor) -> dict:
    """explain.json's figures of one space from (Q, k) ascending distances and their indices."""
    from genlab.metrics.privacy import NEAR_COPY_RATIO, distance_ratio

    out = {"train_index": index.tolist(), "distance": [[round(v, 6) for v in r] for r in distances.tolist()]}
    if distances.shape[1] >= 2:
        ratio = distance_ratio(distances)
        out["ratio"] = [round(v, 6) for v in ratio.tolist()]
        out["near_copies"] = int((ratio < NEAR_COPY_RATIO).sum())
    return out


def explain_neighbours(run, o: ExplainOptions) -> Part:
    """o.n samples (seed o.seed) beside their K nearest training images, in pixel space (L2 on
    pixels scaled to [0, 1]) and in the LeNet's feature space when one fits the images."""
    from genlab.apply.io import labelled_rows
    from genlab.images import png_bytes, resize_uint8
    from genlab.metrics.features import default_extractor, get_extractor
    from genlab.metrics.privacy import NEAR_COPY_RATIO, nearest_neighbours

    native = tuple(run.meta["native_size"])
    samples, labels = run.sample(o.n, seed=o.seed, label=o.label)
    data = run.data(o.data_root)
    train = resize_uint8(data.train_x, native)
    k = min(K, len(train))
    d_pix, i_pix = nearest_neighbours(samples, train, k)
    d_pix = d_pix / 255.0
    part = Part()
    part.record = {"samples": len(samples), "seed": o.seed, "train_images": len(train), "k": k,
                   "labels": None if labels is None else labels.tolist(), "near_copy_ratio": round(NEAR_COPY_RATIO, 6),
                   "spaces": {"pixel": _space(d_pix, i_pix)}}
    part.figures.append(("neighbours-pixel.png",
                         f"{len(samples)} samples (seed {o.seed}; first column) beside their {k} nearest of the "
                         f"{len(train)} training images in pixel space (L2, pixels scaled to [0, 1]); 'near copy': "
                         f"nearest / second-nearest distance below {NEAR_COPY_RATIO:.2f}",
                         png_bytes(labelled_rows(neighbour_rows(samples, train, d_pix, i_pix), ncol=1 + k))))
    ext = default_extractor(run.meta.get("dataset", run.cfg.data.dataset), (samples.shape[1], *native))
    if ext and ext.startswith("lenet") and tuple(samples.shape[1:]) == (1, 28, 28):
        from genlab.evaluation.images import reference_features

        extractor = get_extractor(ext, run.device)
        train_feats = reference_features(extractor, train, f"{data.source}-train")[0]  # shared with the audit's cache
        d_f, i_f = nearest_neighbours(extractor(samples)[0], train_feats, k)
        part.record["spaces"][ext] = _space(d_f, i_f)
        part.figures.append((f"neighbours-{ext}.png",
                             f"the same samples beside their {k} nearest training images in {ext}'s feature space",
                             png_bytes(labelled_rows(neighbour_rows(samples, train, d_f, i_f), ncol=1 + k))))
    for space, f in part.record["spaces"].items():
        d = torch.tensor(f["distance"])[:, 0]
        copies = f"; {f['near_copies']} near copies" if "near_copies" in f else ""
        part.summary.append(f"neighbours ({space}): nearest training image at distance {d.min():.3g}-{d.max():.3g} "
                            f"(median {d.median():.3g}) for {len(d)} samples{copies}")
    return part
