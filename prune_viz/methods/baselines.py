"""Baseline methods that exercise the engine: ``none``, ``random`` and ``evit``.

``rate`` is always the fraction of the tokens *entering* the pruning step that is removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Decision, MethodSpec, PruneContext, decision_from_keep_mask, keep_all, num_to_keep, validate_params


@dataclass(frozen=True)
class NoParams:
    """``none`` has no knobs."""


@dataclass(frozen=True)
class RateParams:
    rate: float = 0.5

    def __post_init__(self) -> None:
        validate_params(self, {"rate": (0.0, None)})
        if self.rate >= 1.0:
            raise ValueError(f"rate must be in [0, 1): the fraction of tokens removed, got {self.rate}")


def decide_none(ctx: PruneContext, params: NoParams) -> Decision:
    """Keep everything (the unpruned model, run through the pruned code path)."""
    return keep_all(ctx)


def decide_random(ctx: PruneContext, params: RateParams) -> Decision:
    """Remove a uniformly random ``rate`` of the tokens; seeded by (seed, layer)."""
    n = ctx.tokens.shape[0]
    g = torch.Generator().manual_seed(int(ctx.seed) * 1000 + ctx.layer)
    chosen = torch.randperm(n, generator=g)[: num_to_keep(n, params.rate)]
    mask = torch.zeros(n, dtype=torch.bool)
    mask[chosen] = True
    return decision_from_keep_mask(mask)


def decide_evit(ctx: PruneContext, params: RateParams) -> Decision:
    """EViT-style attention top-k: keep the tokens the class token attends to most, or, without a
    class token (SAM), the tokens that receive the most attention on average."""
    score = ctx.cls_attn if ctx.cls_attn is not None else ctx.received
    if score is None:
        raise ValueError("evit needs attention scores from the block; none were provided")
    n = score.shape[0]
    top = torch.topk(score, num_to_keep(n, params.rate)).indices
    mask = torch.zeros(n, dtype=torch.bool)
    mask[top] = True
    decision = decision_from_keep_mask(mask)
    if ctx.want_diagnostics:
        decision.diagnostics["attention_score"] = score
    return decision


NONE = MethodSpec("none", NoParams, decide_none, "No pruning: every token goes through every block.")
RANDOM = MethodSpec(
    "random",
    RateParams,
    decide_random,
    "Removes a random fraction of the tokens after each chosen layer. A floor any real method should beat.",
)
EVIT = MethodSpec(
    "evit",
    RateParams,
    decide_evit,
    "Keeps the tokens that receive the most attention (from the class token when there is one). "
    "Cheap, but blind to edges and small objects.",
    needs_attention=True,
)
