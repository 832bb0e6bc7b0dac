"""DToP: dynamic token pruning by early exit through auxiliary heads.

Tang et al., "Dynamic Token Pruning in Plain Vision Transformers for Semantic Segmentation"
(ICCV 2023). Only the abstract is in ``shared/seeds``; every reading made here is written down in
``docs/methods/dtop.md``.

The auxiliary heads split the ViT into stages. At a stage boundary (a pruning layer with an
auxiliary head) the head grades every alive token:

1. ``softmax`` of its logits gives each token a top-class confidence and a predicted class
   (:func:`confidence_and_entropy`).
2. Tokens whose confidence reaches ``threshold`` are *easy*: they EXIT, and the auxiliary
   prediction at this layer becomes their final prediction (the engine writes it in).
3. Except the ``k`` most confident tokens of each predicted class, which stay so that later
   blocks still see representative context for every category (:func:`exit_mask`).

Everything is a pure function over tensors; nothing is kept between calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import echo
from ..threads import single_threaded
from .base import EXITED, KEPT, MAX_KEEP_PER_CLASS, Decision, MethodSpec, PruneContext, validate_params

# The demo segmenter's stage boundaries: its auxiliary heads after blocks 3, 6, 9 of 12 (it also
# has one after 8, which MATP uses). DToP prunes at every stage boundary.
DEFAULT_LAYERS: tuple[int, ...] = (3, 6, 9)


@dataclass(frozen=True)
class DToPParams:
    """DToP hyper-parameters (defaults: the paper's main setting).

    threshold: confidence at or above which a token exits, in (0, 1]. 1.0 exits only tokens whose
               top-class probability is exactly 1 (numerically saturated).
    k:         most-confident tokens kept per predicted class for context, integer >= 0
               (0: every confident token exits).
    """

    threshold: float = 0.99  # tuned on the demo model's val split, confirmed on test (docs/methods/dtop.md)
    k: int = 5

    def __post_init__(self) -> None:
        validate_params(self, {"threshold": (None, 1.0)})
        if not self.threshold > 0.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}: it is a softmax confidence")
        if not isinstance(self.k, (int, np.integer)) or isinstance(self.k, bool):
            raise ValueError(f"k must be an integer (tokens kept per class), got {echo(self.k)}")
        if not 0 <= self.k <= MAX_KEEP_PER_CLASS:
            raise ValueError(f"k must be in [0, {MAX_KEEP_PER_CLASS}] (tokens kept per class), got {echo(self.k)}")


def confidence(logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token top-class confidence and predicted class, and the log-probabilities they come
    from. logits: Nk x K. Returns (conf Nk float in [1/K, 1], pred Nk long, logp Nk x K)."""
    logp = torch.log_softmax(logits.detach().float(), dim=-1)
    conf, pred = logp.exp().max(dim=-1)
    return conf, pred, logp


def confidence_and_entropy(logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token confidence, predicted class and normalised prediction entropy.

    logits: Nk x K. Returns (conf Nk float in [1/K, 1], pred Nk long, entropy Nk float in [0, 1]).
    The entropy is divided by ``log K`` (its value for a uniform prediction) so that maps from
    models with different class counts share one scale; with K = 1 it is 0.
    """
    logp = torch.log_softmax(logits.detach().float(), dim=-1)
    p = logp.exp()  # once for both: confidence() and prediction_entropy() each took it
    conf, pred = p.max(dim=-1)
    return conf, pred, prediction_entropy(logp, p)


def prediction_entropy(logp: Tensor, p: Tensor | None = None) -> Tensor:
    """Nk x K log-probabilities (and their exp, when at hand) -> Nk entropies divided by log K,
    in [0, 1] (0 when K = 1)."""
    p = logp.exp() if p is None else p
    k = logp.shape[-1]
    # p * logp with p -> 0 is 0; log_softmax keeps logp finite so the product is never NaN.
    entropy = -(p * logp).sum(-1)
    entropy = entropy / math.log(k) if k > 1 else torch.zeros_like(entropy)
    return entropy.clamp(0.0, 1.0)


def rank_within_class(value: Tensor, pred: Tensor) -> Tensor:
    """Rank of each token among the tokens of its predicted class, highest ``value`` first.

    value: Nk float, pred: Nk long. Returns Nk long (0 = the class's top token). Ties keep the
    token order (stable sorts), so the ranking is deterministic.
    """
    n = value.numel()
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    by_value = torch.sort(value, descending=True, stable=True).indices
    grouped = torch.sort(pred.index_select(0, by_value), stable=True)  # values: the classes in order
    order = by_value.index_select(0, grouped.indices)  # grouped by class, best first
    # Position of each class's first token in ``order``: in the sorted classes, the leftmost
    # place each one could be inserted, one call.
    group_start = torch.searchsorted(grouped.values, grouped.values, side="left")
    return torch.empty(n, dtype=torch.long).scatter_(0, order, torch.arange(n) - group_start)


def exit_mask(conf: Tensor, pred: Tensor, threshold: float, k: int) -> Tensor:
    """Which tokens exit: confident ones, except the ``k`` most confident of each class.

    conf: Nk float, pred: Nk long (among the tokens alive at this step). Returns Nk bool.
    The top-k are taken among *all* alive tokens of the class; since exiting tokens are the most
    confident ones, this is the same as protecting the k most confident exit candidates, and a
    class whose best tokens are below the threshold simply has nothing to protect.
    """
    confident = conf >= threshold
    if k == 0:
        return confident
    return confident & (rank_within_class(conf, pred) >= k)


@single_threaded  # many small operations: one thread is faster (prune_viz/threads.py)
def decide(ctx: PruneContext, params: DToPParams) -> Decision:
    """DToP decision on the Nk tokens alive after block ``ctx.layer`` (a stage boundary).

    Status: EXITED (confident, final prediction = this layer's auxiliary logits) or KEPT.
    Diagnostics (Nk per alive token unless noted): confidence, entropy (normalised), predicted_class,
    retained (1 where a confident token stayed only as one of its class's top-k), threshold (0-d).
    """
    if ctx.aux_logits is None:
        raise ValueError("dtop needs the auxiliary head's logits at this layer (a backbone with aux heads)")
    nk = ctx.aux_logits.shape[0]
    if nk == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return Decision(keep=empty, status=empty.clone(), diagnostics={"threshold": torch.tensor(params.threshold)})
    conf, pred, logp = confidence(ctx.aux_logits)
    exits = exit_mask(conf, pred, params.threshold, params.k)
    status = torch.where(exits, torch.tensor(EXITED), torch.tensor(KEPT)).long()
    diagnostics = {}
    if ctx.want_diagnostics:  # the entropy is drawn, never used to decide
        diagnostics = {
            "confidence": conf,
            "entropy": prediction_entropy(logp),
            "predicted_class": pred.float(),
            "retained": ((conf >= params.threshold) & ~exits).float(),
            "threshold": torch.tensor(float(params.threshold)),
        }
    return Decision(keep=torch.nonzero(~exits).flatten(), status=status, diagnostics=diagnostics)


def default_layers(num_blocks: int) -> tuple[int, ...]:
    """The demo's stage boundaries (3, 6, 9), those that fit a model with ``num_blocks`` blocks."""
    return tuple(layer for layer in DEFAULT_LAYERS if layer < num_blocks)


SPEC = MethodSpec(
    name="dtop",
    params_cls=DToPParams,
    decide=decide,
    description=(
        "DToP lets easy tokens leave early: an auxiliary head after a stage predicts every token's class, "
        "and tokens predicted with confidence above the threshold stop there with that prediction as final. "
        "The k most confident tokens of each class stay in the network so the remaining hard tokens still "
        "see context from every category."
    ),
    needs_aux=True,
    exits=True,
    default_layers=default_layers,
)
