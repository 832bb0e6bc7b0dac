"""Cosine k-means on token features, deterministic.

Used by LVTP (Eq. 7-8, on entropy-weighted features) and by the training-free segmentation of
plain timm ViTs (clustering final patch features, as people do with DINO features). The result
is that of exactly ``iters`` iterations. With ``until_fixed`` (LVTP) the loop leaves early at a
fixed point, where every later iteration would repeat the last one bit for bit (see
:func:`cosine_kmeans`), so the result does not depend on stopping. Each iteration is one N x K
similarity matmul, one K x N assignment matmul and a K x N x 2 member tally,
``N * K * (2 * C + 2)`` MACs; :func:`kmeans_macs` counts all ``iters`` of them (exact without
``until_fixed``, an upper bound with it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .budget import check_time

_ONE = torch.tensor(1.0)


def cosine_kmeans(
    x: Tensor, k: int, iters: int = 10, seed: int = 0, weights: Tensor | None = None, until_fixed: bool = False
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
    until_fixed: leave the loop once the labels repeat (a fixed point: the result is the same,
    bit for bit, see below). Off by default, where the cost must be exactly :func:`kmeans_macs`
    (the timm / Swin segmentation heads count it analytically).
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
    index = torch.arange(n)
    labels = torch.zeros(n, dtype=torch.long)
    previous: Tensor | None = None
    # Few, whole-tensor operations per iteration (this loop runs up to iters times per decision
    # and each operation costs dispatch time): the same arithmetic as F.normalize, F.one_hot and
    # a boolean-indexed update, in fewer calls.
    for _ in range(iters):
        check_time("while clustering")
        unit = centres / centres.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # F.normalize
        # max(dim).indices is argmax(dim) (the first maximum, NaN counting as the maximum), faster.
        labels = torch.max(xn @ unit.T, dim=1).indices  # N x k similarities -> N
        # Fixed point. Write l_t for these labels and c_t for the centres they came from. The
        # update below is c_{t+1}[j] = M(l_t)[j] where cluster j can hold a centre by l_t
        # (a member, one weighing > 0) and c_t[j] otherwise, M(l) being the weighted member mean;
        # M and "can hold" depend on the labels alone (x and w are fixed). If l_t == l_{t-1}, then
        # c_t = c_{t+1} for every j (held: M(l_{t-1}) = M(l_t); not held: kept as it is), so
        # l_{t+1} = l_t and every later iteration repeats this one: (l_t, c_t) is exactly what
        # the remaining iterations would return, ties and empty clusters included.
        if until_fixed and previous is not None and torch.equal(labels, previous):
            break
        previous = labels
        # One-hot by scatter: the same 0/1 matrix as (labels[:, None] == arange(k)), in one call.
        one_hot = torch.zeros(n, k, dtype=x.dtype).index_put_((index, labels), _ONE)  # N x k
        counts = one_hot.T @ tally  # k x 2: members, members with weight > 0
        nonempty = counts[:, 1:] > 0
        centres = torch.where(nonempty, (one_hot.T @ src) / counts[:, :1].clamp_min(1), centres)
    return labels, centres


def kmeans_macs(n: int, k: int, c: int, iters: int = 10) -> int:
    """MACs of :func:`cosine_kmeans`: per iteration the similarity and centre-sum matmuls
    (N x k x C each) and the member tally (N x k x 2)."""
    k = max(1, min(k, n))
    return iters * n * k * (2 * c + 2)
