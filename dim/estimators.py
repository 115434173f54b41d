"""MI lower-bound estimators on a batch of pair scores (paper eqs. 2, 4, 5; App. A.2).

Score layout, shared by every critic and estimator:

    scores[i, j, l] = T(global vector of image i, local feature l of image j)

a tensor [N, N, L] (N images in the batch, L = h*w locations, l = row * w + col).
Positive pairs (samples of the joint) are the N*L entries with i == j; negative pairs
(samples of the product of marginals) are the N*(N-1)*L entries with i != j: every
location of every *other* image. Positives are excluded from the negatives, as A.2
prescribes for JSD and the official code does for all three. Global DIM is the case
L = 1; a 2-d [N, N] tensor is accepted as that case.

Each estimator returns the MI *estimate*, a number to maximize: the objective's loss is
-estimate. Scores are promoted to float32 so half-precision critics stay stable; no
Python loop runs over the batch.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange

from arena.registry import Registry

ESTIMATORS: Registry = Registry("MI estimator")


def _as_nnl(scores: torch.Tensor) -> torch.Tensor:
    if scores.dim() == 2:
        scores = scores.unsqueeze(-1)
    if scores.dim() != 3 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"scores must be [N, N, L] (or [N, N]), got {list(scores.shape)}")
    if scores.shape[0] < 2:
        raise ValueError("MI estimators need at least 2 images in the batch (negatives are other images)")
    return scores.float()


def positive_mask(n: int, l: int = 1, device: torch.device | str | None = None) -> torch.Tensor:
    """Bool [n, n, l], True on the positive pairs (i == j, every location)."""
    eye = torch.eye(n, dtype=torch.bool, device=device)
    return eye.unsqueeze(-1).expand(n, n, l)


def negative_mask(n: int, l: int = 1, device: torch.device | str | None = None) -> torch.Tensor:
    """Bool [n, n, l], True on the negative pairs (i != j, every location)."""
    return ~positive_mask(n, l, device)


def positives(scores: torch.Tensor) -> torch.Tensor:
    """The positive scores as [N, L]: entry (i, l) = scores[i, i, l]."""
    return torch.diagonal(scores, dim1=0, dim2=1).transpose(0, 1)


@ESTIMATORS.register("jsd")
def jsd_mi(scores: torch.Tensor, max_negatives: int | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Jensen-Shannon MI estimate (eq. 4) in the official code's log2-shifted form.

    E_P[log 2 - sp(-T)] - E_{PxP~}[sp(T) - log 2]
      = E_pos[-sp(-T)] - E_neg[sp(T)] + 2 log 2          (sp = softplus)
    With D = sigmoid(T), -sp(-T) = log D and -sp(T) = log(1 - D), so this is
    E_pos[log D] + E_neg[log(1 - D)] + 2 log 2 = 2 * JSD lower bound: it tends to 2 log 2
    for perfectly separated scores (pos -> +inf, neg -> -inf) and is 0 when all scores are 0.
    The shift is a constant: it changes the reported value, not the gradients.
    Softplus is evaluated stably for any |T|.

    max_negatives: E_neg over only that many negative images per image i (all their
    locations), chosen as nce_mi chooses them (_negative_images): the N * m * L negatives
    s[i, j, l'] for the m images j of row i, the study of Fig. 8.
    """
    s = _as_nnl(scores)
    n, _, l = s.shape
    pos = positives(s)
    e_pos = (math.log(2.0) - F.softplus(-pos)).mean()
    idx = _negative_images(n, max_negatives, generator, s.device)
    if idx is None:
        sp_neg = F.softplus(s).masked_fill(positive_mask(n, l, s.device), 0.0)  # zero out i == j
        e_neg = sp_neg.sum() / (n * (n - 1) * l) - math.log(2.0)
    else:
        neg = torch.gather(s, 1, idx.unsqueeze(-1).expand(-1, -1, l))  # [N, m, L]
        e_neg = F.softplus(neg).mean() - math.log(2.0)
    return e_pos - e_neg


def _negative_images(n: int, max_negatives: int | None, generator: torch.Generator | None,
                     device: torch.device) -> torch.Tensor | None:
    """Index [n, m] of the m negative images used for each i, or None for all n-1."""
    if max_negatives is None or max_negatives >= n - 1:
        return None
    if max_negatives < 1:
        raise ValueError(f"max_negatives must be >= 1, got {max_negatives}")
    if generator is None:
        # Deterministic: the next m images in batch order, cyclically (i+1, ..., i+m mod n).
        offsets = torch.arange(1, max_negatives + 1, device=device).expand(n, -1)
    else:
        # Random: m distinct offsets in 1..n-1 per image (the first m of a random permutation).
        order = torch.rand(n, n - 1, generator=generator, device=generator.device).argsort(dim=1)
        offsets = order[:, :max_negatives].to(device) + 1
    i = torch.arange(n, device=device).unsqueeze(1)
    return ((i + offsets) % n).to(device)


@ESTIMATORS.register("nce")
def nce_mi(scores: torch.Tensor, max_negatives: int | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """InfoNCE MI estimate (eq. 5), plus log K so that it is a bound on MI.

    For each positive (i, l) the candidates are the positive s[i, i, l] and the negatives
    s[i, j, l'] for every other image j != i and every location l' (as in the official
    code, but with same-image pairs removed exactly instead of by subtracting 10), so
    K = 1 + (N-1) L candidates, and

        estimate = log K + mean_{i,l} [ s[i,i,l] - logsumexp(s[i,i,l], {s[i,j,l']}_{j!=i, l'}) ]

    which is log K for perfectly separated scores and 0 when all scores are equal
    (log K is a constant: no effect on gradients). The negatives' logsumexp is shared by
    all l of image i, so the cost is one logsumexp over [N, N*L].

    max_negatives: use only that many negative images per image i (all their locations):
    K = 1 + max_negatives * L (the study of Fig. 8). Which images: with no generator, the
    next max_negatives images in batch order, cyclically (deterministic; batches are
    shuffled anyway); with a generator, a uniformly random subset per i drawn from it.
    """
    s = _as_nnl(scores)
    n, _, l = s.shape
    pos = positives(s)  # [N, L]
    idx = _negative_images(n, max_negatives, generator, s.device)
    if idx is None:
        neg = s.masked_fill(positive_mask(n, l, s.device), float("-inf"))  # [N, N, L]
        m = n - 1
    else:
        neg = torch.gather(s, 1, idx.unsqueeze(-1).expand(-1, -1, l))  # [N, m, L]
        m = idx.shape[1]
    neg_lse = torch.logsumexp(rearrange(neg, "i j l -> i (j l)"), dim=1, keepdim=True)  # [N, 1]
    log_softmax_pos = pos - torch.logaddexp(pos, neg_lse)  # [N, L]
    return math.log(1 + m * l) + log_softmax_pos.mean()


@ESTIMATORS.register("dv")
def dv_mi(scores: torch.Tensor) -> torch.Tensor:
    """Donsker-Varadhan MI estimate (eq. 2): E_pos[T] - log E_neg[e^T].

    log E_neg[e^T] = logsumexp over the N(N-1)L negatives - log(N(N-1)L), stable for
    any score size. Unbounded: perfectly separated scores (+a / -a) give 2a; all-equal
    scores give 0.
    """
    s = _as_nnl(scores)
    n, _, l = s.shape
    e_pos = positives(s).mean()
    neg = s.masked_fill(positive_mask(n, l, s.device), float("-inf"))
    log_e_neg = torch.logsumexp(neg.flatten(), dim=0) - math.log(n * (n - 1) * l)
    return e_pos - log_e_neg
