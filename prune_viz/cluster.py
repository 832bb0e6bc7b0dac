"""Cosine k-means on token features, deterministic and with a fixed amount of work.

Used by LVTP (Eq. 7-8, on entropy-weighted features) and by the training-free segmentation of
plain timm ViTs (clustering final patch features, as people do with DINO features). A fixed
number of iterations (no early stop) keeps the cost exactly countable: each iteration is one
N x K similarity matmul, one K x N assignment matmul and a K x N x 2 member tally,
``N * K * (2 * C + 2)`` MACs.
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
    src = x if w is None else x * w[:, None]  # weighted features (Eq. 6), fixed across iterations
    # Per token: 1 (its count) and whether it weighs anything. One matmul with the one-hot gives
    # both per cluster, exactly (sums of 0/1); a cluster can hold its centre only if a member
    # weighs > 0 (a zero total weight would give a zero centre, no direction).
    tally = torch.ones(n, 2, dtype=x.dtype)
    if w is not None:
        tally[:, 1] = (w > 0).to(x.dtype)
    classes = torch.arange(k)
    labels = torch.zeros(n, dtype=torch.long)
    # Few, whole-tensor operations per iteration (this loop runs iters times per decision and
    # each operation costs dispatch time): the same arithmetic as F.normalize, F.one_hot and
    # a boolean-indexed update, in fewer calls.
    for _ in range(iters):
        check_time("while clustering")
        unit = centres / centres.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # F.normalize
        labels = (xn @ unit.T).argmax(dim=1)  # N x k similarities -> N
        one_hot = (labels[:, None] == classes).to(x.dtype)  # N x k
        counts = one_hot.T @ tally  # k x 2: members, members with weight > 0
        nonempty = counts[:, 1:] > 0
        centres = torch.where(nonempty, (one_hot.T @ src) / counts[:, :1].clamp_min(1), centres)
    return labels, centres


def kmeans_macs(n: int, k: int, c: int, iters: int = 10) -> int:
    """MACs of :func:`cosine_kmeans`: per iteration the similarity and centre-sum matmuls
    (N x k x C each) and the member tally (N x k x 2)."""
    k = max(1, min(k, n))
    return iters * n * k * (2 * c + 2)
