"""The contract between the engine and a pruning method.

A method is a pure function ``decide(ctx, params) -> Decision`` over tensors. The engine calls
it right after block ``ctx.layer`` (1-based) has run on the tokens that are still alive; the
method returns which of those tokens go on into block ``ctx.layer + 1``. It never touches the
model: everything it may look at is in the context.

Token bookkeeping: the engine only ever hands a method *patch* tokens. Prefix tokens (class,
register tokens) are never pruned and are not part of ``ctx.tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

# Per-token status codes, used by the Trace and the token-map views.
KEPT = 0  # kept by the method's main criterion
PENDING_KEPT = 1  # undecided after a first pass, kept by a second one (LVTP's second clustering)
PRUNED = 2  # removed: later blocks do not compute it; its features freeze at this layer
EXITED = 3  # removed with a final prediction (DToP early exit)
GONE = -1  # only in status grids: removed at an earlier pruning step (never a method's answer)
STATUS_NAMES = {KEPT: "kept", PENDING_KEPT: "pending-then-kept", PRUNED: "pruned", EXITED: "exited"}


@dataclass(frozen=True)
class Status:
    """How one status is shown: a short label (legends, captions) and what it means."""

    code: int
    label: str
    meaning: str


# The one status table, in legend order; viz adds the colours, the UI the legend.
STATUSES: tuple[Status, ...] = (
    Status(KEPT, "kept", "computed by the next blocks"),
    Status(PENDING_KEPT, "pending → kept", "undecided after the first test, kept by the second"),
    Status(PRUNED, "pruned here", "removed here: later blocks skip it, its features freeze"),
    Status(EXITED, "exited (final)", "left early with its final prediction"),
    Status(GONE, "gone earlier", "removed at an earlier pruning layer"),
)
STATUS_LABELS: dict[int, str] = {s.code: s.label for s in STATUSES}


@dataclass(frozen=True)
class PruneContext:
    """What a method sees after block ``layer``.

    Shapes (Nk = tokens alive entering this decision, C = channels, K = classes):
      tokens:     Nk x C, features after block ``layer`` (patch tokens only, prefix excluded)
      kept_idx:   Nk, long, row-major positions of those tokens on the gh x gw grid (sorted)
      image:      3 x H x W float in [0, 1], the model-input image (H = gh * patch, W = gw * patch)
                  before normalisation; what low-level guidance (Sobel) looks at
      received:   Nk float or None: mean attention each patch token received in this block
                  (over heads and queries, windowed blocks included). Filled when
                  ``needs_attention`` is set and the model has no class token (SAM); with a
                  class token only ``cls_attn`` is computed (the full map would cost a quarter
                  of a block again).
      cls_attn:   Nk float or None: attention from the first prefix token (class token) to each
                  patch token, averaged over heads; None when the model has no class token.
      aux_logits: Nk x K float or None: the auxiliary head attached after this block, evaluated
                  on the alive tokens (only on backbones that have aux heads).
      sizes:      Nk float or None: how many grid tokens each alive token stands for (> 1 only
                  after a merging method, ToMe, folded tokens into it); None = all 1.
    """

    layer: int
    step: int  # 0-based index of this layer in the method's schedule
    num_steps: int
    tokens: Tensor
    kept_idx: Tensor
    grid: tuple[int, int]
    patch_size: int
    image: Tensor
    seed: int = 0
    received: Tensor | None = None
    cls_attn: Tensor | None = None
    aux_logits: Tensor | None = None
    num_tokens_total: int = 0  # gh * gw, for rates stated against the full grid
    sizes: Tensor | None = None
    # Hierarchical backbones (Swin): the attention window (rows, cols of grid tokens) of this
    # layer's stage; merging methods keep every group inside one (unshifted) window. None: no windows.
    window: tuple[int, int] | None = None
    # False on the timed path (``analyze --repeat``, the Metrics timing): compute only what the
    # decision needs and skip view-only diagnostics (maps, histograms), which are not part of
    # the cost of pruning. The decision itself must not depend on this flag.
    want_diagnostics: bool = True


@dataclass
class Decision:
    """What a method returns.

    keep:        long, sorted local indices (into ``ctx.tokens``) of the tokens that go on.
    status:      Nk long, one of KEPT / PENDING_KEPT / PRUNED / EXITED per alive token.
    An EXITED token's final prediction is the auxiliary head's logits at this layer
    (``ctx.aux_logits``); the engine writes them into the final prediction.
    diagnostics: name -> Nk tensor (per alive token; drawn on the grid) or a 0-d tensor /
                 float (a scalar such as an adaptive threshold) or an H x W map (pixel level,
                 e.g. a Sobel magnitude). Everything here is for drawing, never for control;
                 methods leave out what costs time when ``ctx.want_diagnostics`` is False.
    Merging methods (ToMe) also fill, both or neither:
    features:    len(keep) x C, the features the kept tokens go on with (group averages)
                 instead of their own.
    merge_into:  Nk long, local index (into ``ctx.tokens``) of the kept token that represents
                 each alive token from now on (itself for kept tokens). At decoding, a merged
                 token takes its representative's final feature.
    """

    keep: Tensor
    status: Tensor
    diagnostics: dict[str, Any] = field(default_factory=dict)
    features: Tensor | None = None
    merge_into: Tensor | None = None


DecideFn = Callable[[PruneContext, Any], Decision]


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its parameter dataclass, its decision function, its needs."""

    name: str
    params_cls: type
    decide: DecideFn
    description: str
    needs_attention: bool = False
    needs_aux: bool = False
    default_layers: Callable[[int], tuple[int, ...]] | None = None  # num_blocks -> layers
    exits: bool = False  # may answer EXITED (a token leaves with its aux prediction as final)
    merges: bool = False  # answers merge_into (groups decoded as one token)

    def unmet_need(self, backbone_name: str, aux_layers: tuple[int, ...]) -> str | None:
        """Why this method cannot run on a backbone with these auxiliary heads (None: it can)."""
        if self.needs_aux and not aux_layers:
            return f"needs auxiliary heads, which {backbone_name} does not have (use the demo backbone)"
        return None


# Tokens kept per class for context (DToP, MATP): a SAM grid at 1024 px has 64 x 64 tokens, so
# a larger k keeps them all, and an unbounded one once ran to the end and failed in the reply.
MAX_KEEP_PER_CLASS = 4096


def keep_all(ctx: PruneContext) -> Decision:
    n = ctx.tokens.shape[0]
    return Decision(keep=torch.arange(n), status=torch.full((n,), KEPT, dtype=torch.long))


def decision_from_keep_mask(keep_mask: Tensor, status_if_dropped: int = PRUNED) -> Decision:
    """Turn a boolean Nk mask into a Decision (kept -> KEPT, others -> ``status_if_dropped``)."""
    status = torch.where(keep_mask, torch.tensor(KEPT), torch.tensor(status_if_dropped))
    return Decision(keep=torch.nonzero(keep_mask).flatten(), status=status.long())


def num_to_keep(n: int, rate: float) -> int:
    """Tokens kept when a fraction ``rate`` of ``n`` is removed (rounded, at least 1 kept)."""
    return max(1, min(n, n - int(round(rate * n))))


def validate_params(params: Any, fields: Mapping[str, tuple[float | None, float | None]]) -> None:
    """Shared numeric checks: each named field must be finite and within [lo, hi]."""
    import math

    for name, (lo, hi) in fields.items():
        value = getattr(params, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        if lo is not None and value < lo:
            raise ValueError(f"{name} must be >= {lo}, got {value}")
        if hi is not None and value > hi:
            raise ValueError(f"{name} must be <= {hi}, got {value}")
