"""LVTP: low-level visual features guided progressive token pruning (training-free).

Ouyang et al., "Back to Fundamentals: Low-Level Visual Features Guided Progressive Token
Pruning" (2025). No public code exists; every place where the paper is silent or ambiguous is
decided here and written down in ``docs/methods/lvtp.md`` (equation -> function, with reasons).

One decision, after block L, on the Nk tokens alive then:

1. Each token becomes a probability vector over its channels (:func:`token_distribution`) and
   gets a multi-scale Tsallis entropy ``S = a*S_q1 + (1-a)*S_q2`` (Eq. 2-4,
   :func:`multiscale_tsallis`).
2. Entropy-weighted cosine k-means (Eq. 5-8, :func:`entropy_weighted_kmeans`) splits the tokens
   into k clusters; the clusters with the highest mean entropy are KEPT, the others are
   *pending* (:func:`first_pass`).
3. A second clustering of the pending tokens, guided by Sobel edge energy (Eq. 9-10,
   :func:`sobel_magnitude`, :func:`token_edge_energy`, :func:`second_pass`), orders them from
   weakest to strongest edges; a fraction ``rate`` of them is PRUNED, the rest PENDING_KEPT.

Everything is a pure function over tensors; nothing is kept between calls, so the progressive
schedule (one call per pruning layer, on the survivors of the previous call) needs no state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..cluster import cosine_kmeans
from ..errors import echo
from ..threads import side_task, single_threaded
from .base import KEPT, PENDING_KEPT, PRUNED, Decision, MethodSpec, PruneContext, validate_params

EntropyMode = Literal["mtsallis", "shannon", "none"]
SecondMode = Literal["sobel", "simple", "none"]
AlphaMode = Literal["rescaled", "literal"]
ENTROPY_MODES: tuple[str, ...] = ("mtsallis", "shannon", "none")
SECOND_MODES: tuple[str, ...] = ("sobel", "simple", "none")
ALPHA_MODES: tuple[str, ...] = ("rescaled", "literal")

# Weight of the edge-energy channel appended to the unit-norm feature in the Sobel-guided second
# clustering. At 1.0 a token on the strongest edge and a flat token with the same feature
# direction have cosine 1/sqrt(2), i.e. the edge gap counts like a 45 degree feature gap: strong
# enough to keep edge tokens out of flat clusters, not so strong that semantics are ignored.
EDGE_FEATURE_WEIGHT = 1.0

# ITU-R BT.601 luma, the same weights as cv2.COLOR_RGB2GRAY.
_GRAY_WEIGHTS = (0.299, 0.587, 0.114)


MAX_CLUSTERS = 64  # k and k2: more clusters than this say nothing a map can show
MAX_ITERS = 50  # k-means iterations; the defaults converge well before 10
MAX_Q1 = 10.0  # p ** q1 underflows to 0 for every p < 1 far below this


@dataclass(frozen=True)
class LVTPParams:
    """LVTP hyper-parameters (defaults: the paper's main setting where it gives one).

    q1:      feature-saliency Tsallis index, > 1 (emphasises high-probability channels).
    q2:      detail-sensitivity Tsallis index, in (0, 1) (emphasises low-probability channels).
             q = 1 is the Shannon limit: choose it with ``entropy="shannon"``.
    k:       clusters in the first (entropy-weighted) clustering, >= 2.
    rate:    fraction of the *pending* tokens removed by the second pass, in [0, 1). 0 keeps
             every pending token; close to 1 keeps only the first-pass clusters. The paper's
             default is 0.5 (Table 5, best average gamma); ours, 0.6, comes from the sweep on
             the demo model (docs/methods/lvtp.md, "Defaults on the demo model").
    drop:    fraction of the first-pass clusters, lowest entropy first, removed outright, in
             [0, 0.5]: Fig. 1's third state ("x", removed) next to "keep" and "pending". The paper's
             Table 5 implies it (rate 0 still saves 36% GFLOPs), without saying how many; 0 gives
             the two-state reading (everything not kept is pending).
    k2:      clusters in the second clustering of the pending tokens, >= 2.
    iters:   k-means iterations, >= 1 (the result of all of them; the loop stops early only at
             a fixed point, where the rest would change nothing: ``cluster.cosine_kmeans``).
    entropy: "mtsallis" (Eq. 3-4), "shannon" (Eq. 1) or "none" (plain features), Table 3.
    second:  "sobel" (Sobel-guided), "simple" (same as the first clustering) or "none" (prune
             every pending token), Table 4.
    alpha_mode: Eq. 4's weight: "rescaled" (ours, ``r / (1 + r)`` with r = RMS / median RMS) or
             "literal" (the paper's ``||F||_2 / sqrt(D)``, clamped to [0, 1]), for the ablation.
    """

    q1: float = 1.5
    q2: float = 0.5
    k: int = 8
    rate: float = 0.6  # chosen on the demo model (docs/methods/lvtp.md); the paper's is 0.5
    drop: float = 0.125  # likewise; 0 is the two-state reading
    k2: int = 4
    iters: int = 10
    entropy: EntropyMode = "mtsallis"
    second: SecondMode = "sobel"
    alpha_mode: AlphaMode = "rescaled"

    def __post_init__(self) -> None:
        validate_params(self, {"q1": (None, MAX_Q1), "q2": (None, None), "rate": (0.0, None), "drop": (0.0, 0.5)})
        if not self.q1 > 1.0:
            raise ValueError(
                f"q1 must be > 1 (feature-saliency scale), got {self.q1}; "
                'q = 1 is the Shannon limit: use entropy="shannon" for it'
            )
        if not 0.0 < self.q2 < 1.0:
            raise ValueError(
                f"q2 must be in (0, 1) (detail-sensitivity scale), got {self.q2}; "
                'q = 1 is the Shannon limit: use entropy="shannon" for it'
            )
        if not self.rate < 1.0:
            raise ValueError(
                f"rate must be in [0, 1), got {self.rate}: it is the fraction of pending tokens "
                'removed; to remove all of them use second="none"'
            )
        # Upper bounds too: the clustering's work is linear in k, k2 and iters, and the app is
        # shared (an iters of 20000 once held both workers for minutes).
        for name, lo, hi in (("k", 2, MAX_CLUSTERS), ("k2", 2, MAX_CLUSTERS), ("iters", 1, MAX_ITERS)):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise ValueError(f"{name} must be an integer, got {echo(value)}")
            if value < lo:
                raise ValueError(f"{name} must be >= {lo}, got {value}")
            if value > hi:
                raise ValueError(f"{name} must be <= {hi}, got {echo(value)}")
        if self.entropy not in ENTROPY_MODES:
            raise ValueError(f"entropy must be one of {ENTROPY_MODES}, got {self.entropy!r}")
        if self.second not in SECOND_MODES:
            raise ValueError(f"second must be one of {SECOND_MODES}, got {self.second!r}")
        if self.alpha_mode not in ALPHA_MODES:
            raise ValueError(f"alpha_mode must be one of {ALPHA_MODES}, got {self.alpha_mode!r}")


# --------------------------------------------------------------------------- Eq. 1-2: entropy


def shannon_entropy(p: Tensor, dim: int = -1) -> Tensor:
    """Shannon entropy ``-sum p log p`` in nats (Eq. 1), with ``0 log 0 = 0``.

    p: ... x n probabilities along ``dim`` (summing to 1). Returns p's shape without ``dim``.
    """
    return -torch.special.xlogy(p, p).sum(dim)


def tsallis_entropy(p: Tensor, q: float, dim: int = -1) -> Tensor:
    """Tsallis entropy ``S_q = (1 - sum p^q) / (q - 1)`` (Eq. 2); q = 1 gives Shannon.

    p: ... x n probabilities along ``dim`` (summing to 1, as Eq. 2 assumes); q > 0.
    Returns p's shape without ``dim``. Terms with p_i = 0 contribute 0 (0^q = 0 for q > 0).

    Computed as ``-sum(p * expm1((q - 1) log p)) / (q - 1)``, equal to Eq. 2 when sum p = 1.
    Why: the literal ``1 - sum p^q`` cancels catastrophically near q = 1 and the rounding error
    is then divided by a tiny q - 1. ``expm1`` of a small argument is accurate to full relative
    precision, so each term tends smoothly to ``p log p`` and S_q to Shannon's entropy as q -> 1
    (relative error O((q - 1) log p), no switch needed); only q == 1 exactly takes the Shannon
    formula, which is the limit itself, so the function is continuous across q = 1.
    """
    if not (isinstance(q, (int, float)) and math.isfinite(q) and q > 0):
        raise ValueError(f"Tsallis index q must be a finite number > 0, got {q!r}")
    if not p.is_floating_point() or p.dtype in (torch.float16, torch.bfloat16):
        p = p.float()
    # Clamp: log 0 = -inf would make 0 * expm1(...) a NaN; a finite log keeps the term at 0.
    return _tsallis_from_log(p, torch.log(p.clamp_min(torch.finfo(p.dtype).tiny)), q, dim)


def _tsallis_from_log(p: Tensor, logp: Tensor, q: float, dim: int = -1, logp_max: Tensor | None = None) -> Tensor:
    """:func:`tsallis_entropy` given ``log p`` (shared between the two scales of Eq. 3).
    logp_max: ``logp.max()`` when known (0-d), to skip a search over every entry."""
    if q == 1:
        return -(p * logp).sum(dim)
    d = q - 1.0
    x = d * logp
    if logp_max is None or float(logp_max) > 0:
        small: Tensor | None = x.abs() < 0.5
    elif not bool((d * logp_max).abs() < 0.5):
        # |d * log p| is smallest where log p (<= 0) is largest, and rounding keeps that order,
        # so the one product d * max(log p) tells that no entry needs expm1: the same answer as
        # searching x, without passes over Nk x C. (A NaN max lands here too, as it always has.)
        small = None
    else:
        # Every log p <= 0 (the max is, and is not NaN), so x = d * log p has the sign of -d or
        # is +-0: |x| < 0.5 is one comparison instead of abs, then compare.
        small = x > -0.5 if d > 0 else x < 0.5
    return -_expm1(x, small).mul_(p).sum(dim) / d  # p * y: the same products as y * p


def _expm1(x: Tensor, small: Tensor | None) -> Tensor:
    """``expm1(x)``, with ``exp(x) - 1`` where |x| >= 0.5 (no cancellation there: the two agree
    to ~2 ulp). Why: torch's CPU expm1 is not vectorised and measured 5x slower than exp, and
    it was half of LVTP's decision time; most entries of ``(q - 1) log p`` are far from 0.
    small: x's shape, True where |x| < 0.5 (None: nowhere)."""
    y = torch.exp(x).sub_(1.0)
    if small is None:
        return y
    where = small.nonzero(as_tuple=True)  # one pass; the few entries it finds are then cheap
    if where[0].numel():
        y[where] = torch.expm1(x[where])
    return y


def tsallis_max(n: int, q: float) -> float:
    """Largest S_q over n outcomes (the uniform distribution): ``(1 - n^(1-q)) / (q - 1)``.

    Written as ``log n * expm1(x)/x`` with ``x = (1 - q) log n`` for the same reason as
    :func:`tsallis_entropy` (continuous at q = 1, where it is ``log n``).
    """
    if n <= 1:
        return 0.0
    x = (1.0 - q) * math.log(n)
    return math.log(n) * (1.0 if x == 0 else math.expm1(x) / x)


# --------------------------------------------------------------------- Eq. 3-4: multi-scale


def token_distribution(tokens: Tensor) -> Tensor:
    """One probability vector per token over its channels: ``softmax(LayerNorm(F))``.

    tokens: Nk x C features. Returns Nk x C, rows summing to 1, every entry > 0.

    Why this form: the paper never says how a feature vector becomes the ``p`` of Eq. 2.
    LayerNorm (no affine) removes the token's mean and scale, so ``p`` describes only the *shape*
    of the activation pattern (a few dominant channels -> low entropy; spread -> high), while
    the token's magnitude is left to alpha (Eq. 4): the two factors of Eq. 3 then carry
    different information instead of the same one twice. Softmax keeps every p_i > 0 (p^q2 with
    q2 < 1 stays well behaved) and fixes the temperature, because LayerNorm output has unit RMS.
    """
    return token_log_distribution(tokens).exp()


def token_log_distribution(tokens: Tensor) -> Tensor:
    """``log`` of :func:`token_distribution` (log-softmax), Nk x C -> Nk x C."""
    x = tokens.float()
    return torch.log_softmax(F.layer_norm(x, x.shape[-1:], eps=1e-6), dim=-1)


def token_rms(tokens: Tensor) -> Tensor:
    """``||F||_2 / sqrt(D)`` per token (Eq. 4's raw alpha, the feature RMS). Nk x C -> Nk."""
    x = tokens.float()
    return x.norm(dim=-1) / math.sqrt(x.shape[-1])


def token_alpha_literal(tokens: Tensor) -> Tensor:
    """alpha of Eq. 4 as printed: ``||F||_2 / sqrt(D)`` clamped to [0, 1]. Nk x C -> Nk.

    Kept beside :func:`token_alpha` for the ablation (``alpha_mode="literal"``): on ViT features
    the RMS is mostly above 1, so this saturates at alpha = 1 (S = S_q1 alone) for most tokens;
    the bench reports how many (``alpha_sat``).
    """
    return token_rms(tokens).clamp(0.0, 1.0)


def token_alpha(tokens: Tensor) -> Tensor:
    """alpha of Eq. 4, bounded to [0, 1): ``r / (1 + r)`` with ``r = rms / median(rms)``.

    tokens: Nk x C. Returns Nk in [0, 1); beta = 1 - alpha.

    ``||F||_2 / sqrt(D)`` is the feature RMS, which is not bounded by 1 (SAM / ViT features
    have RMS well above 1 in mid layers, and a few "high-norm" outlier tokens far above the
    rest). Clamping would saturate alpha to 1 for every token; dividing by the max would let
    one outlier push every other alpha towards 0. Dividing by the median makes alpha
    scale-free (the same for any layer's feature scale) and robust to outliers, and the
    squashing ``r / (1 + r)`` maps it into [0, 1) monotonically: the median token gets
    alpha = beta = 0.5, higher-norm tokens lean to the saliency scale q1, weaker ones to the
    detail scale q2, as Eq. 4 intends.
    """
    rms = token_rms(tokens)
    r = rms / rms.median().clamp_min(torch.finfo(rms.dtype).tiny)
    return r / (1.0 + r)


def multiscale_tsallis(
    tokens: Tensor, q1: float, q2: float, alpha_mode: str = "rescaled"
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Multi-scale Tsallis entropy (Eq. 3) with the dynamic weight of Eq. 4.

    tokens: Nk x C. Returns (S, S_q1, S_q2, alpha), each Nk, all in [0, 1];
    ``S = alpha * S_q1 + (1 - alpha) * S_q2`` holds exactly for the returned values.

    Each S_q is divided by its maximum over C channels (:func:`tsallis_max`, the uniform
    distribution). Why: the raw scales differ by an order of magnitude (C = 768: S_1.5 <= 1.93
    but S_0.5 <= 53.4), so the literal sum would be ~(1 - alpha) * S_q2 and alpha would act
    backwards, making high-norm tokens look *less* informative. Normalised, alpha really blends
    two comparable views of the same token, which is what Eq. 3 describes.
    """
    logp = token_log_distribution(tokens)  # log-softmax: exact logs even for tiny p
    p = logp.exp()
    c = p.shape[-1]
    top = logp.max() if logp.numel() else None
    s1 = _tsallis_from_log(p, logp, q1, logp_max=top) / max(tsallis_max(c, q1), 1e-12)
    s2 = _tsallis_from_log(p, logp, q2, logp_max=top) / max(tsallis_max(c, q2), 1e-12)
    alpha = token_alpha_literal(tokens) if alpha_mode == "literal" else token_alpha(tokens)
    return alpha * s1 + (1.0 - alpha) * s2, s1, s2, alpha


# ------------------------------------------------------------------ Eq. 5-8: first clustering


def minmax_weights(w: Tensor) -> Tensor:
    """Eq. 5: ``(w - min) / (max - min)``, Nk -> Nk in [0, 1].

    All-equal input carries no information, so every token gets weight 1 (the weighted
    k-means then is the plain one) instead of a 0/0.
    """
    lo, hi = w.min(), w.max()
    span = hi - lo
    if not span > 0:
        return torch.ones_like(w)
    return (w - lo) / span


def entropy_weighted_kmeans(
    v: Tensor, weights: Tensor | None, k: int, iters: int, seed: int
) -> Tensor:
    """Eq. 6-8: cosine k-means whose centres are means of ``v_i * W_i`` (entropy-weighted).

    v: N x C features, weights: N in [0, 1] (Eq. 5) or None (unweighted). Returns N long labels.

    ``v_i (.) W`` with a per-token scalar cannot change a token's cosine to anything, so the
    weighting acts where Eq. 8 puts it: the centre update. High-entropy members pull their
    centre towards themselves ("strong attraction to semantic focusing regions"), low-entropy
    ones barely move it; assignments use the cosine of the plain v (Eq. 7).
    """
    labels, _ = cosine_kmeans(v, k, iters=iters, seed=seed, weights=weights, until_fixed=True)
    return labels


def cluster_means(labels: Tensor, values: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per-cluster mean of ``values`` (N float) over ``labels`` (N long in 0..k-1).

    Returns (means k, counts k); empty clusters have mean NaN.
    """
    counts = torch.bincount(labels, minlength=k)
    # bincount with weights, not index_add_: the same sums, but index_add_ measured ~1000x
    # slower with 2 threads than with 1 (26 ms vs 0.03 ms for 1024 rows) on this machine.
    sums = torch.bincount(labels, weights=values, minlength=k).to(values.dtype)
    means = sums / counts.clamp_min(1).to(values.dtype)
    return torch.where(counts > 0, means, torch.full_like(means, float("nan"))), counts


def rank_clusters(means: Tensor, descending: bool) -> Tensor:
    """Rank of each cluster (k long, 0 = first) by its mean; empty (NaN) clusters rank last.

    Ties keep the cluster-id order (stable sort), so the ranking is deterministic.
    """
    fill = float("-inf") if descending else float("inf")
    key = torch.where(torch.isnan(means), torch.full_like(means, fill), means)
    order = torch.sort(key, descending=descending, stable=True).indices
    rank = torch.empty_like(order)
    return rank.scatter_(0, order, torch.arange(order.numel()))  # rank[order] = 0, 1, 2, ...


def first_pass(
    v: Tensor, score: Tensor, weights: Tensor | None, k: int, iters: int, seed: int, drop: float = 0.0
) -> tuple[Tensor, Tensor, Tensor]:
    """Entropy-weighted clustering, then keep the high-entropy half of the clusters, remove the
    lowest-entropy ``drop`` fraction outright, and leave the rest pending.

    v: Nk x C, score: Nk (what "semantic entropy" means in this mode), weights: Nk or None.
    Returns (keep Nk bool, removed Nk bool, cluster1 Nk long = cluster rank, 0 = highest score).

    "High semantic entropy" = the top ceil(m / 2) of the m non-empty clusters by mean score.
    Half of the clusters, not a score threshold: the split then follows the cluster structure
    (which the paper clusters for), and at least one cluster, so at least one token, is kept.
    Removed = the bottom round(drop * m) clusters (never one of the kept half).
    """
    labels = entropy_weighted_kmeans(v, weights, k, iters, seed)
    means, counts = cluster_means(labels, score, max(1, min(k, v.shape[0])))
    rank = rank_clusters(means, descending=True)
    m = int((counts > 0).sum())
    n_keep_clusters = math.ceil(m / 2)
    n_drop_clusters = min(int(round(drop * m)), m - n_keep_clusters)
    token_rank = rank.index_select(0, labels)  # rank[labels], without advanced indexing's overhead
    return token_rank < n_keep_clusters, token_rank >= m - n_drop_clusters, token_rank


# --------------------------------------------------------------------- Eq. 9-10: Sobel edges


def to_gray(image: Tensor) -> Tensor:
    """3 x H x W (or 1 x H x W) float in [0, 1] -> H x W luma (BT.601, as cv2's RGB2GRAY)."""
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image must be 3 x H x W (or 1 x H x W), got shape {tuple(image.shape)}")
    img = image.detach().float()
    if img.shape[0] == 1:
        return img[0]
    w = torch.tensor(_GRAY_WEIGHTS, dtype=img.dtype)
    return torch.tensordot(w, img, dims=1)  # the einsum "c,chw->hw", bit for bit, in fewer calls


def sobel_magnitude(image: Tensor) -> Tensor:
    """Eq. 9-10: ``G = Gx^2 + Gy^2`` from 3x3 Sobel kernels on the grayscale image.

    image: 3 x H x W float in [0, 1]. Returns H x W float32 (0 on flat areas; a 0 -> 1 step
    gives Gx = 4, so G <= 32 on [0, 1] images).

    Squared, without the square root, exactly as Eq. 10 writes it: G is then the gradient
    *energy*, and the per-token mean of it (:func:`token_edge_energy`) favours patches with a
    few strong edges over patches with widespread weak texture or noise. Ranking pixels is the
    same with or without the root; only the patch means differ. Borders use OpenCV's default
    reflect-101, so the image frame itself is not an edge.
    """
    gray = np.ascontiguousarray(to_gray(image).numpy(), dtype=np.float32)
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    return torch.from_numpy(cv2.add(cv2.multiply(gx, gx), cv2.multiply(gy, gy)))


def token_edge_energy(sobel: Tensor, grid: tuple[int, int], patch: int, kept_idx: Tensor) -> Tensor:
    """Mean of the Sobel map over each token's patch.

    sobel: H x W, grid: (gh, gw), kept_idx: Nk row-major grid positions. Returns Nk.
    With H = gh * patch and W = gw * patch (the engine's contract) this is the exact patch mean;
    other sizes fall back to adaptive average pooling onto the grid (the same cells, rounded).
    """
    gh, gw = grid
    h, w = sobel.shape
    if h == gh * patch and w == gw * patch:
        per_cell = sobel.reshape(gh, patch, gw, patch).mean(dim=(1, 3))
    else:
        per_cell = F.adaptive_avg_pool2d(sobel[None, None], (gh, gw))[0, 0]
    return per_cell.reshape(-1)[kept_idx]


# ------------------------------------------------------------- second clustering and the rate


def prune_order(cluster_rank: Tensor, value: Tensor) -> Tensor:
    """Order in which pending tokens are pruned: by cluster rank, then by the token's own value.

    cluster_rank: P long (0 = pruned first), value: P float (weaker first). Returns P long
    indices. Pruning the first n of this order removes whole clusters weakest-first and splits
    the last, partly pruned cluster by per-token strength, so any ``rate`` is hit exactly.
    """
    by_value = torch.sort(value, stable=True).indices
    return by_value.index_select(0, torch.sort(cluster_rank.index_select(0, by_value), stable=True).indices)


def second_pass(
    v: Tensor,
    guide: Tensor,
    mode: SecondMode,
    rate: float,
    k2: int,
    iters: int,
    seed: int,
    weights: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Second clustering of the P pending tokens and the ``rate`` cut.

    v: P x C pending features; guide: P (edge energy for "sobel", entropy score for "simple");
    weights: P entropy weights for "simple" (None = unweighted). Returns
    (saved P bool, cluster2 P long = cluster rank, 0 = pruned first; -1 everywhere for "none").

    "sobel":  cosine k-means on ``[v / |v|, EDGE_FEATURE_WEIGHT * minmax(edge)]``: clusters are
              coherent in meaning *and* in edge strength, so removing whole clusters in order
              of mean edge energy removes flat regions first and rarely a strong edge.
    "simple": the first pass's own method again (entropy-weighted clustering of v, clusters
              ordered by mean entropy, lowest removed first).
    "none":   no second clustering: every pending token is removed (``rate`` is ignored).
    The cut removes ``round(rate * P)`` tokens along :func:`prune_order`. The clustering does
    not depend on ``rate``, so the kept sets are nested: a higher rate only removes more.
    """
    p = v.shape[0]
    if mode == "none" or p == 0:
        return torch.zeros(p, dtype=torch.bool), torch.full((p,), -1, dtype=torch.long)
    if mode == "sobel":
        x = torch.cat([F.normalize(v, dim=-1), EDGE_FEATURE_WEIGHT * minmax_weights(guide)[:, None]], dim=-1)
        labels, _ = cosine_kmeans(x, k2, iters=iters, seed=seed, until_fixed=True)
    elif mode == "simple":
        labels = entropy_weighted_kmeans(v, weights, k2, iters, seed)
    else:
        raise ValueError(f"second must be one of {SECOND_MODES}, got {mode!r}")
    means, _ = cluster_means(labels, guide, max(1, min(k2, p)))
    token_rank = rank_clusters(means, descending=False).index_select(0, labels)
    n_prune = int(round(rate * p))
    saved = torch.ones(p, dtype=torch.bool)
    saved[prune_order(token_rank, guide)[:n_prune]] = False
    return saved, token_rank


# ---------------------------------------------------------------------------------- decide


def _score_and_weights(x: Tensor, p: LVTPParams, want_diagnostics: bool = True) -> tuple[dict[str, Tensor], Tensor, Tensor | None]:
    """Entropy diagnostics, the per-token score that ranks clusters, and the Eq. 5 weights.
    The two Tsallis scales are computed for the other modes only when they are to be drawn."""
    diag: dict[str, Tensor] = {}
    if p.entropy == "mtsallis" or want_diagnostics:
        s, s1, s2, alpha = multiscale_tsallis(x, p.q1, p.q2, p.alpha_mode)
        diag = {"entropy_q1": s1, "entropy_q2": s2, "entropy": s, "alpha": alpha}
    if p.entropy == "mtsallis":
        score = diag["entropy"]
    elif p.entropy == "shannon":
        score = shannon_entropy(token_distribution(x)) / max(math.log(x.shape[-1]), 1e-12)
    else:
        # No entropy at all (Table 3, "-"): plain features cluster unweighted, and clusters are
        # ranked by activation strength, the only per-token signal the features alone give.
        return diag, token_rms(x), None
    return diag, score, minmax_weights(score)


def _edges(ctx: PruneContext) -> tuple[Tensor, Tensor]:
    """(Sobel map H x W, edge energy Nk of the alive tokens) of the context's image."""
    sobel = sobel_magnitude(ctx.image)
    return sobel, token_edge_energy(sobel, ctx.grid, ctx.patch_size, ctx.kept_idx)


@single_threaded  # hundreds of small operations: one thread is faster (prune_viz/threads.py)
def decide(ctx: PruneContext, params: LVTPParams) -> Decision:
    """LVTP decision on the Nk tokens alive after block ``ctx.layer``.

    Status: KEPT (first-pass high-entropy clusters), PENDING_KEPT (pending, saved by the second
    pass), PRUNED (the rest). Diagnostics, Nk per alive token unless noted: entropy_q1,
    entropy_q2, entropy (fused, Eq. 3), alpha, score (what ranked the first-pass clusters),
    weight (Eq. 5, all 1 for entropy="none"), cluster1 (rank, 0 = highest score), cluster2
    (rank in the second clustering, 0 = pruned first; -1 for non-pending), edge_energy,
    sobel (H x W pixel map, Eq. 10) and n_pending (0-d).
    """
    x = ctx.tokens.detach().float()
    nk = x.shape[0]
    if nk == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return Decision(keep=empty, status=empty.clone(), diagnostics={})
    want = ctx.want_diagnostics
    # The Sobel map steers the decision only in "sobel" mode; otherwise it is drawn, not used.
    # It depends on the image alone: with a second core lent, it is made there meanwhile.
    edges = side_task(_edges, ctx) if params.second == "sobel" or want else None
    diag, score, weights = _score_and_weights(x, params, want)

    keep1, removed1, cluster1 = first_pass(x, score, weights, params.k, params.iters, ctx.seed, params.drop)
    pending = ~keep1 & ~removed1
    pend_idx = torch.nonzero(pending).flatten()

    sobel, edge = edges() if edges is not None else (None, None)
    guide = edge if params.second == "sobel" else score
    # "simple" re-applies Eq. 5 to the pending tokens alone, as the first clustering would (the
    # other modes do not use weights here).
    pend_w = None
    if params.second == "simple" and weights is not None and pend_idx.numel():
        pend_w = minmax_weights(score.index_select(0, pend_idx))
    saved, rank2 = second_pass(
        x.index_select(0, pend_idx), guide.index_select(0, pend_idx), params.second, params.rate, params.k2,
        params.iters, ctx.seed + 1, pend_w,
    )

    status = torch.full((nk,), KEPT, dtype=torch.long)
    status.masked_fill_(removed1, PRUNED)
    status.index_copy_(0, pend_idx, torch.where(saved, PENDING_KEPT, PRUNED))
    keep = torch.nonzero(status != PRUNED).flatten()
    if not want:
        return Decision(keep=keep, status=status, diagnostics={})
    cluster2 = torch.full((nk,), -1, dtype=torch.long)
    cluster2[pend_idx] = rank2
    diag.update(
        score=score,
        weight=weights if weights is not None else torch.ones(nk),
        cluster1=cluster1,
        cluster2=cluster2,
        edge_energy=edge,
        sobel=sobel,
        n_pending=torch.tensor(int(pend_idx.numel())),
    )
    return Decision(keep=keep, status=status, diagnostics=diag)


SPEC = MethodSpec(
    name="lvtp",
    params_cls=LVTPParams,
    decide=decide,
    description=(
        "LVTP groups the image tokens into clusters and keeps the clusters whose features carry "
        "the most information, measured by a two-scale Tsallis entropy. The remaining tokens get "
        "a second chance: tokens on strong image edges (found with a Sobel filter) are kept, and "
        "a chosen fraction of the weakest-edge ones is removed, with no training needed."
    ),
    needs_attention=False,
    needs_aux=False,
)
