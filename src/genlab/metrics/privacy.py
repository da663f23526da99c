"""Privacy figures as pure functions: how well a membership-inference score separates training
members from held-out non-members, and nearest neighbours for memorisation checks.

Scores follow one convention: higher = "more likely a member". An attack is summarised by
  roc_auc         the area under the ROC curve (0.5: the score says nothing about membership)
  tpr_at_fpr      the true-positive rate at a low false-positive rate, which Carlini et al. 2022
                  ("Membership Inference Attacks From First Principles") argue is what matters:
                  an attack that confidently identifies a few members is a privacy failure even
                  when its AUC is near 0.5
Memorisation uses the distances from generated samples to their nearest and second-nearest
training items; a sample whose ratio nearest / second-nearest is below NEAR_COPY_RATIO is counted
as a near copy (see there for the source of the threshold).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from genlab.errors import ShapeError

# A sample is a near copy of its nearest training item when d(nearest) / d(second nearest) < 1/3:
# the criterion of Yoon et al. 2023 ("Diffusion probabilistic models generalize when they fail to
# memorize", ICML SPIGM workshop), also used by Gu et al. 2023 ("On memorization in diffusion
# models", TMLR) and Favero et al. 2025 ("Bigger isn't always memorizing"). The ratio is scale-free:
# a sample is a copy when it is far closer to one training item than to any other.
NEAR_COPY_RATIO = 1 / 3


def _scores(values, name: str) -> np.ndarray:
    """Scores as a float64 vector; a ShapeError for an empty, multi-dimensional or NaN input."""
    a = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ShapeError(f"{name} must be a non-empty vector of scores, got shape {a.shape}")
    if np.isnan(a).any():
        raise ShapeError(f"{name} contains NaN scores")
    return a


def roc_auc(member_scores, nonmember_scores) -> float:
    """Area under the ROC curve of a membership score, ties counted half.

    Equals P(s_member > s_nonmember) + P(s_member = s_nonmember) / 2 over all member/non-member
    pairs (the Mann-Whitney U statistic divided by M * N), computed by sorting in O((M + N) log N).

    Args:
        member_scores: (M,) scores of training members (higher = more likely a member).
        nonmember_scores: (N,) scores of held-out non-members.
    Returns:
        AUC in [0, 1]; 0.5 means the score carries no membership information.
    """
    m = _scores(member_scores, "member_scores")
    n = np.sort(_scores(nonmember_scores, "nonmember_scores"))
    below = np.searchsorted(n, m, side="left")  # (M,) non-members strictly below each member
    tied = np.searchsorted(n, m, side="right") - below  # (M,) non-members equal to it
    return float((below.sum() + 0.5 * tied.sum()) / (len(m) * len(n)))


def auc_standard_error(auc: float, n_members: int, n_nonmembers: int) -> float:
    """Standard error of an AUC estimated from n_members and n_nonmembers scores (Hanley and
    McNeil 1982, exponential approximation): how far an AUC of 0.53 on 100 + 100 images may be
    from 0.5 by chance alone."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_members - 1) * (q1 - auc * auc)
           + (n_nonmembers - 1) * (q2 - auc * auc)) / (n_members * n_nonmembers)
    return math.sqrt(max(var, 0.0))


def tpr_at_fpr(member_scores, nonmember_scores, fpr: float) -> float:
    """The largest true-positive rate of a threshold rule "member if score >= t" whose
    false-positive rate is at most `fpr` (the low-FPR figure of Carlini et al. 2022).

    With N non-members the attainable false-positive rates are multiples of 1/N, so `fpr`
    below 1/N asks for zero false positives: the share of members scoring above every non-member.

    Args:
        member_scores: (M,) scores of members.
        nonmember_scores: (N,) scores of non-members.
        fpr: the largest false-positive rate allowed, in [0, 1].
    Returns:
        TPR in [0, 1].
    """
    if not 0 <= fpr <= 1:
        raise ValueError(f"fpr must be in [0, 1], got {fpr}")
    m = _scores(member_scores, "member_scores")
    n = np.sort(_scores(nonmember_scores, "nonmember_scores"))[::-1]  # descending
    # k = the most false positives allowed: the largest count c with c / N <= fpr, computed as
    # the FPR itself is (c / N), so that fpr = 0.29 with N = 100 allows 29 despite rounding.
    k = min(len(n), math.floor(fpr * len(n)))
    while k + 1 <= len(n) and (k + 1) / len(n) <= fpr:
        k += 1
    while k > 0 and k / len(n) > fpr:
        k -= 1
    if k >= len(n):
        return 1.0  # every non-member may be a false positive: flag everything
    # A threshold just above the (k+1)-th highest non-member score lets through at most k of them
    # (fewer when it ties with higher ones); any lower threshold lets through k + 1 or more.
    return float((m > n[k]).mean())


@torch.no_grad()
def nearest_neighbours(queries: torch.Tensor, reference: torch.Tensor, k: int = 2, *,
                       query_chunk: int = 1024, reference_chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest reference rows of every query row in Euclidean distance, exhaustively.

    Works through (query_chunk x reference_chunk) blocks of squared distances, keeping a running
    top-k, so 10,000 queries against 55,000 MNIST images need about 35 MB beyond the inputs.
    Candidates are found with the |q|^2 + |r|^2 - 2 q.r expansion in float64, and the k distances
    returned are then recomputed directly, so an exact copy is at distance exactly 0.

    Args:
        queries: (Q, ...) any real dtype; each row is flattened.
        reference: (R, ...) with the same number of values per row; R >= k.
        k: neighbours per query.
    Returns:
        (distances float64 (Q, k), ascending; indices int64 (Q, k) into `reference`), on the CPU.
    """
    Q, R = len(queries), len(reference)
    q_all = queries.reshape(Q, -1)
    r_all = reference.reshape(R, -1)
    if q_all.shape[1] != r_all.shape[1]:
        raise ShapeError(f"queries have {q_all.shape[1]} values per row, the reference {r_all.shape[1]}")
    if not 1 <= k <= R:
        raise ShapeError(f"cannot find {k} nearest neighbours among {R} reference rows")
    out_d = torch.empty(Q, k, dtype=torch.float64)
    out_i = torch.empty(Q, k, dtype=torch.long)
    for q0 in range(0, Q, query_chunk):
        qb = q_all[q0:q0 + query_chunk].cpu().double()  # (Qc, D)
        q_norm = qb.pow(2).sum(1, keepdim=True)  # (Qc, 1)
        best_d = torch.full((len(qb), k), math.inf, dtype=torch.float64)  # running squared distances
        best_i = torch.zeros((len(qb), k), dtype=torch.long)
        for r0 in range(0, R, reference_chunk):
            rb = r_all[r0:r0 + reference_chunk].cpu().double()  # (Rc, D)
            d2 = (q_norm + rb.pow(2).sum(1)[None] - 2 * qb @ rb.T).clamp_(min=0)  # (Qc, Rc)
            kb = min(k, len(rb))
            d_blk, i_blk = d2.topk(kb, dim=1, largest=False)  # (Qc, kb)
            cand_d = torch.cat([best_d, d_blk], 1)  # (Qc, k + kb)
            cand_i = torch.cat([best_i, i_blk + r0], 1)
            best_d, pos = cand_d.topk(k, dim=1, largest=False)
            best_i = cand_i.gather(1, pos)
        # Exact distances of the chosen neighbours (the expansion loses digits to cancellation).
        diff = qb[:, None, :] - r_all[best_i].cpu().double()  # (Qc, k, D)
        exact = diff.pow(2).sum(2).sqrt()  # (Qc, k)
        exact, order = exact.sort(dim=1)
        out_d[q0:q0 + len(qb)] = exact
        out_i[q0:q0 + len(qb)] = best_i.gather(1, order)
    return out_d, out_i


def distance_ratio(distances: torch.Tensor) -> torch.Tensor:
    """Nearest over second-nearest distance per row of (Q, >= 2) ascending distances -> (Q,)
    float64 in [0, 1]. 0 / 0 (a copy of an item that the reference holds twice) counts as 0."""
    if distances.dim() != 2 or distances.shape[1] < 2:
        raise ShapeError(f"distance_ratio needs (Q, 2+) distances, got {tuple(distances.shape)}")
    d1, d2 = distances[:, 0].double(), distances[:, 1].double()
    return torch.where(d2 > 0, d1 / d2.clamp(min=1e-300), torch.zeros_like(d1))
