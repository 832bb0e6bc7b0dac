"""ToMe-style token merging: bipartite soft matching at the chosen layers.

Bolya et al., "Token Merging: Your ViT But Faster" (ICLR 2023), reference code
facebookresearch/ToMe ``tome/merge.py``. Here the merge happens once per chosen layer (like every
other method in this project), not inside every block; every reading is written down in
``docs/methods/tome.md``.

One decision, after block L, on the Nk alive tokens (each standing for ``size`` grid tokens):

1. Alternate the alive tokens (row-major order) into sets A (even) and B (odd); score every
   A-B pair by the cosine of their features (:func:`bipartite_soft_matching`).
2. Each A token proposes its most similar B token; the ``r`` A tokens with the most similar
   proposals merge into them; the other A tokens and every B token go on.
3. A merged group's feature is the size-weighted mean of its members (:func:`merge_features`),
   and its size is the sum of theirs.
4. One round removes at most |A| ~ Nk / 2 tokens; a larger ``rate`` runs further rounds on the
   survivors, in the same decision, until ``rate`` of the alive tokens are gone.

Merged tokens are PRUNED for the blocks (they are not computed) and are decoded with their
group's final feature (the engine's unmerge, ``Decision.merge_into``). Everything is a pure
function over tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import KEPT, PRUNED, Decision, MethodSpec, PruneContext, num_to_keep, validate_params


@dataclass(frozen=True)
class ToMeParams:
    """rate: fraction of the tokens *entering* the step that are merged away, in [0, 1) (the same
    meaning as random's and EViT's rate, so the three are compared at equal token counts)."""

    rate: float = 0.5

    def __post_init__(self) -> None:
        validate_params(self, {"rate": (0.0, None)})
        if not self.rate < 1.0:
            raise ValueError(f"rate must be in [0, 1): the fraction of tokens merged away, got {self.rate}")


def bipartite_soft_matching(metric: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """One round of ToMe's matching.

    metric: M x C features of the current tokens. r: merges wanted, clamped to [0, M // 2].
    Returns (merge_into M long: index of the token each one is represented by, itself when it
    is not merged; sim M float: each A token's best cosine to B, NaN for B tokens).
    Ties are broken by token order (stable sort), so the result is deterministic.
    """
    m = metric.shape[0]
    merge_into = torch.arange(m)
    sim_out = torch.full((m,), float("nan"))
    a_idx, b_idx = torch.arange(0, m, 2), torch.arange(1, m, 2)
    r = max(0, min(int(r), b_idx.numel()))
    if r == 0:
        return merge_into, sim_out
    unit = F.normalize(metric.float(), dim=-1)
    scores = unit[a_idx] @ unit[b_idx].T  # |A| x |B|: the one matrix product of the matching
    best, best_b = scores.max(dim=-1)
    sim_out[a_idx] = best
    src = torch.sort(best, descending=True, stable=True).indices[:r]
    merge_into[a_idx[src]] = b_idx[best_b[src]]
    return merge_into, sim_out


def window_soft_matching(metric: Tensor, r: int, groups: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`bipartite_soft_matching` with every pair inside one group (an attention window).

    metric: M x C; groups: M long, the window of each token. Within each window the tokens
    alternate (in their order) into A and B; an A token's partner is its most similar B token
    **of the same window**; the ``r`` best pairs over all windows merge (a window with a single
    token has no pair). One batched product of W x |A_w| x |B_w| (windows padded to the fullest
    one), not the M/2 x M/2 of a global matching. Returns (merge_into M, sim M) as there.
    """
    m = metric.shape[0]
    merge_into = torch.arange(m)
    sim_out = torch.full((m,), float("nan"))
    if m < 2 or r <= 0:
        return merge_into, sim_out
    _, gid = torch.unique(groups, return_inverse=True)
    order = torch.sort(gid, stable=True).indices  # by window, original order within
    starts = torch.ones(m, dtype=torch.bool)
    starts[1:] = gid[order][1:] != gid[order][:-1]
    position = torch.arange(m)
    rank = torch.empty(m, dtype=torch.long)
    rank[order] = position - torch.cummax(torch.where(starts, position, torch.zeros_like(position)), 0).values
    a_idx, b_idx = torch.nonzero(rank % 2 == 0).flatten(), torch.nonzero(rank % 2 == 1).flatten()
    if b_idx.numel() == 0:
        return merge_into, sim_out
    w, na, nb = int(gid.max()) + 1, int(rank[a_idx].max()) // 2 + 1, int(rank[b_idx].max()) // 2 + 1
    unit = F.normalize(metric.float(), dim=-1)
    a_slots = torch.zeros(w, na, unit.shape[1])
    b_slots = torch.zeros(w, nb, unit.shape[1])
    a_slots[gid[a_idx], rank[a_idx] // 2] = unit[a_idx]
    b_slots[gid[b_idx], rank[b_idx] // 2] = unit[b_idx]
    b_token = torch.full((w, nb), -1, dtype=torch.long)
    b_token[gid[b_idx], rank[b_idx] // 2] = b_idx
    scores = (a_slots @ b_slots.transpose(1, 2)).masked_fill((b_token < 0)[:, None, :], float("-inf"))
    best, best_b = scores.max(dim=-1)  # W x |A_w|
    best_a = best[gid[a_idx], rank[a_idx] // 2]
    partner = b_token[gid[a_idx], best_b[gid[a_idx], rank[a_idx] // 2]]
    has = torch.isfinite(best_a)
    sim_out[a_idx[has]] = best_a[has]
    r = min(int(r), int(has.sum()))
    src = torch.sort(torch.where(has, best_a, torch.tensor(float("-inf"))), descending=True, stable=True).indices[:r]
    merge_into[a_idx[src]] = partner[src]
    return merge_into, sim_out


def matching_macs(m: int) -> int:
    """MACs of one :func:`bipartite_soft_matching` round on M tokens of C channels, per channel:
    |A| x |B| (the similarity product); multiply by C. Element-wise work (normalisation, the
    weighted sums) is not counted, the project's convention (``flops.py``)."""
    return ((m + 1) // 2) * (m // 2)


def merge_features(x: Tensor, sizes: Tensor, merge_into: Tensor) -> tuple[Tensor, Tensor]:
    """Size-weighted averages of each group.

    x: M x C, sizes: M float, merge_into: M long (a representative maps to itself). Returns
    (M x C features, M sizes) where each representative holds its group's mean and summed size;
    rows of merged tokens are left as they were. A representative nobody merged into keeps its
    exact feature (no x * s / s round trip), so rate 0 is bit-exact.
    """
    out, new_sizes = x.clone(), sizes.clone()
    moved = merge_into != torch.arange(x.shape[0])
    if not moved.any():
        return out, new_sizes
    dst = torch.unique(merge_into[moved])
    weighted = torch.zeros_like(x, dtype=torch.float32).index_add_(0, merge_into, x.float() * sizes[:, None])
    total = torch.zeros(x.shape[0]).index_add_(0, merge_into, sizes.float())
    out[dst] = (weighted[dst] / total[dst, None]).to(x.dtype)
    new_sizes[dst] = total[dst]
    return out, new_sizes


def merge_rounds(
    x: Tensor, sizes: Tensor, n_remove: int, groups: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor, list[int]]:
    """Repeat matching rounds on the survivors until ``n_remove`` tokens are merged away (or,
    with ``groups`` (Nk long windows), until no window has two tokens left).

    x: Nk x C, sizes: Nk. Returns (keep: sorted local indices of the survivors, features
    len(keep) x C, merge_into Nk long local representative, sim Nk best cosine in the round a
    token was merged (NaN for survivors and unmatched), round_sizes: tokens entering each round).
    """
    nk = x.shape[0]
    alive = torch.arange(nk)  # local indices of the current tokens
    feats, sz = x, sizes.float()
    merge_into = torch.arange(nk)
    sim = torch.full((nk,), float("nan"))
    round_sizes: list[int] = []
    remaining = n_remove
    while remaining > 0 and alive.numel() > 1:
        round_sizes.append(alive.numel())
        if groups is None:
            into, best = bipartite_soft_matching(feats, remaining)
        else:
            into, best = window_soft_matching(feats, remaining, groups[alive])
        feats, sz = merge_features(feats, sz, into)
        moved = into != torch.arange(alive.numel())
        # Tokens that pointed at a now-merged token follow it to its representative.
        local_into = alive[into]
        step = torch.arange(nk)
        step[alive] = local_into
        merge_into = step[merge_into]
        sim[alive[moved]] = best[moved]
        if not moved.any():  # windows of one token each: nothing left to pair
            break
        remaining -= int(moved.sum())
        stay = ~moved
        alive, feats, sz = alive[stay], feats[stay], sz[stay]
    return alive, feats, merge_into, sim, round_sizes


def window_of(kept_idx: Tensor, grid: tuple[int, int], window: tuple[int, int]) -> Tensor:
    """Nk row-major positions on ``grid`` -> Nk long ids of the (unshifted) ``window`` tiles
    that hold them."""
    r, c = kept_idx // grid[1], kept_idx % grid[1]
    return (r // window[0]) * (-(-grid[1] // window[1])) + c // window[1]


def decide(ctx: PruneContext, params: ToMeParams) -> Decision:
    """ToMe decision on the Nk tokens alive after block ``ctx.layer``.

    Status: KEPT (a group's representative, possibly with others merged in) or PRUNED (merged
    away). Diagnostics: merge_similarity (Nk, best cosine when merged, NaN otherwise), group_size
    (Nk, grid tokens each survivor now stands for; 0 for merged ones), rounds (0-d).
    """
    x = ctx.tokens.detach()
    nk = x.shape[0]
    sizes = ctx.sizes if ctx.sizes is not None else torch.ones(nk)
    n_remove = nk - num_to_keep(nk, params.rate) if nk else 0
    groups = window_of(ctx.kept_idx, ctx.grid, ctx.window) if ctx.window is not None else None
    keep, feats, merge_into, sim, rounds = merge_rounds(x, sizes, n_remove, groups)
    status = torch.full((nk,), PRUNED, dtype=torch.long)
    status[keep] = KEPT
    group = torch.zeros(nk).index_add_(0, merge_into, sizes.float())
    diagnostics = {
        "merge_similarity": sim,
        "group_size": torch.where(status == KEPT, group, torch.zeros(nk)),
        "rounds": torch.tensor(float(len(rounds))),
    }
    return Decision(keep=keep, status=status, diagnostics=diagnostics, features=feats, merge_into=merge_into)


SPEC = MethodSpec(
    name="tome",
    params_cls=ToMeParams,
    decide=decide,
    description=(
        "ToMe merges instead of dropping: tokens are paired with their most similar partner and the most "
        "similar pairs are averaged into one token, so later blocks see fewer tokens but nothing is thrown "
        "away; at the end every merged token takes its group's result."
    ),
    merges=True,
)
