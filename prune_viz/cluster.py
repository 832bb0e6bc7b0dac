"""Cosine k-means on token features, deterministic and with a fixed amount of work.

Used by LVTP (Eq. 7-8, on entropy-weighted features) and by the training-free segmentation of
plain timm ViTs (clustering final patch features, as people do with DINO features). A fixed
number of iterations (no early stop) keeps the cost exactly countable: each iteration is one
N x K similarity matmul and one K x N assignment matmul, ``2 * N * K * C`` MACs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .budget import check_time


def cosine_kmeans(
    x: Tensor, k: int, iters: int = 10, seed: int = 0, weights: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Cluster N x C features by cosine distance ``d = 1 - cos(v, c)`` (LVTP Eq. 7).

    Centres are the plain mean of their members (Eq. 8), compared by direction. Initial centres
    are k distinct tokens drawn with a seeded generator, so the result depends only on
    (x, k, iters, seed, weights). Empty clusters keep their previous centre.

    weights: optional N non-negative per-token weights. Centres then become
    ``sum(w_i * x_i) / |C_j|`` (LVTP Eq. 6 + 8: the mean of the entropy-weighted features).
    Assignments still use the cosine of the *unweighted* x (Eq. 7): a per-token scalar cannot
    change a token's own direction, so the weights act only by pulling each centre towards its
    heavy members. A cluster whose members all have weight 0 keeps its previous centre.
    ``weights=None`` is exactly the unweighted algorithm.
    Returns (labels N long in 0..k-1, centres k x C).
    """
    n = x.shape[0]
    k = max(1, min(int(k), n))
    g = torch.Generator().manual_seed(int(seed))
    centres = x[torch.randperm(n, generator=g)[:k]].clone()
    xn = F.normalize(x, dim=-1)
    w = None if weights is None else weights.to(x.dtype).reshape(n)
    xw = None if w is None else x * w[:, None]  # weighted features (Eq. 6), fixed across iterations
    labels = torch.zeros(n, dtype=torch.long)
    for _ in range(iters):
        check_time("while clustering")
        sim = xn @ F.normalize(centres, dim=-1).T  # N x k
        labels = sim.argmax(dim=1)
        one_hot = F.one_hot(labels, k).to(x.dtype)  # N x k
        counts = one_hot.sum(0)
        if weights is None:
            sums = one_hot.T @ x  # k x C
            nonempty = counts > 0
        else:
            sums = one_hot.T @ xw
            # counts > 0 but zero total weight would give a zero centre (no direction).
            nonempty = (counts > 0) & ((one_hot.T @ w) > 0)
        # torch.where, not a boolean-indexed assignment: the same values in one op instead of
        # four (nonzero, two gathers, a scatter), in a loop that runs iters times per decision.
        centres = torch.where(nonempty[:, None], sums / counts.clamp_min(1)[:, None], centres)
    return labels, centres


def kmeans_macs(n: int, k: int, c: int, iters: int = 10) -> int:
    """MACs of :func:`cosine_kmeans` (the two matmuls per iteration)."""
    k = max(1, min(k, n))
    return iters * 2 * n * k * c
