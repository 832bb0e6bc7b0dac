"""MATP: multi-faceted adaptive token pruning (with lightweight auxiliary heads).

Zhang and Yao, "Multi-Faceted Adaptive Token Pruning for Efficient Remote Sensing Image
Segmentation", Remote Sensing 17(14) 2508 (2025). Only the section headings, the contribution
bullets and the tables of the paper survive in ``shared/seeds``; the body text (and with it every
equation) is missing. The rules below are a reconstruction tied to those bullets and tables, each
reading written down with its reason in ``docs/methods/matp.md``.

One decision, after block L (a layer with a lightweight auxiliary head), on the Nk alive tokens:

1. Facets per token from the auxiliary head at this layer and the token's feature
   (:func:`token_facets`): confidence (top-class probability), normalised prediction entropy,
   and relation (cosine of the feature to the mean feature of its predicted class).
2. Multi-faceted pruning score (:func:`multi_faceted_score`): a weighted sum of entropy,
   1 - confidence and atypicality (1 - relation) / 2, in [0, 1]; higher = harder = kept.
3. Criterion (:func:`criterion_mask`): "adaptive" (default) prunes tokens whose score is below
   ``alpha`` times this input's mean score *and* whose entropy is below ``beta`` bits; "fixed"
   prunes below one absolute score threshold; "topk" prunes a fixed fraction of lowest scores.
4. Relation-based retained tokens (:func:`relation_retained`): the ``k`` tokens of each
   predicted class closest to the class's mean feature stay, as context for later blocks.

Dropped tokens are PRUNED (their features freeze and the main head decodes them at the end), not
EXITED. The same :func:`matp_masks` drives the train-time emulation in ``prune_viz/train_matp.py``,
so the criterion the model is fine-tuned with is the one the engine applies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import echo
from ..threads import single_threaded
from .base import KEPT, MAX_KEEP_PER_CLASS, PRUNED, Decision, MethodSpec, PruneContext, num_to_keep, validate_params
from .dtop import MAX_KEEP_PER_CLASS, confidence_and_entropy, rank_within_class

Criterion = Literal["adaptive", "fixed", "topk"]
CRITERIA: tuple[str, ...] = ("adaptive", "fixed", "topk")

# The paper prunes after blocks 3, 6, 8 of a 12-block ViT-B (its training-config table and the
# pruning-layer ablation); the demo segmenter has auxiliary heads there.
DEFAULT_LAYERS: tuple[int, ...] = (3, 6, 8)


@dataclass(frozen=True)
class MATPParams:
    """MATP hyper-parameters (alpha, beta: the paper's best pair from its threshold table).

    alpha:           adaptive threshold factor, > 0: prune tokens whose score is below alpha x the
                     mean score of this input's alive tokens. Larger prunes more (table: 0.3-1.2).
    beta:            entropy cap in bits, > 0: the adaptive criterion never prunes a token whose
                     prediction entropy is beta bits or more. Larger prunes more, saturating at
                     log2(K) (table: 0.5-2.0).
    k:               relation-based retained tokens per predicted class, integer >= 0.
    criterion:       "adaptive" (the paper's), or the ablation's "fixed" threshold / "topk" rate.
    fixed_threshold: the "fixed" criterion's absolute score threshold, in [0, 1].
    topk_rate:       the "topk" criterion's pruned fraction of the alive tokens, in [0, 1).
    weights:         facet weights (entropy, 1 - confidence, atypicality), >= 0, not all 0;
                     normalised to sum 1. (1, 0, 0) is entropy alone (the ablation without
                     multi-faceted scores).
    """

    alpha: float = 1.2
    beta: float = 2.0
    k: int = 2
    criterion: Criterion = "adaptive"
    fixed_threshold: float = 0.25
    topk_rate: float = 0.6
    weights: tuple[float, float, float] = (0.5, 0.25, 0.25)

    def __post_init__(self) -> None:
        validate_params(
            self,
            {"alpha": (None, 100.0), "beta": (None, 100.0), "fixed_threshold": (0.0, 1.0), "topk_rate": (0.0, None)},
        )
        for name in ("alpha", "beta"):
            if not getattr(self, name) > 0.0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.topk_rate < 1.0:
            raise ValueError(f"topk_rate must be in [0, 1): the fraction of alive tokens pruned, got {self.topk_rate}")
        if not isinstance(self.k, (int, np.integer)) or isinstance(self.k, bool):
            raise ValueError(f"k must be an integer (retained tokens per class), got {echo(self.k)}")
        if not 0 <= self.k <= MAX_KEEP_PER_CLASS:
            raise ValueError(f"k must be in [0, {MAX_KEEP_PER_CLASS}] (retained tokens per class), got {echo(self.k)}")
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {self.criterion!r}")
        try:
            w = tuple(self.weights)
        except TypeError:
            raise ValueError(f"weights must be 3 numbers (entropy, 1 - confidence, atypicality), got {self.weights!r}") from None
        object.__setattr__(self, "weights", w)  # a list from a caller would make the params unhashable
        if len(w) != 3 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in w
        ):
            raise ValueError(f"weights must be 3 finite numbers >= 0 (entropy, 1 - confidence, atypicality), got {w!r}")
        if sum(w) <= 0:
            raise ValueError("weights must not all be 0")


# ------------------------------------------------------------------------------- the facets


def class_relation(tokens: Tensor, pred: Tensor) -> Tensor:
    """Cosine of each token's feature to the mean feature of its predicted class.

    tokens: Nk x C, pred: Nk long. Returns Nk in [-1, 1] (1 for a token alone in its class).
    Features are LayerNorm-ed (no affine) first: plain ViT features carry a few huge channels
    shared by all tokens that would push every cosine towards 1; centring and scaling each token
    leaves the pattern that tells tokens apart, the same view the auxiliary heads' own LayerNorm
    takes. The class mean is of unit vectors, so no single high-norm token dominates it.
    """
    if tokens.shape[0] == 0:
        return torch.zeros(0)
    x = tokens.detach().float()
    unit = F.normalize(F.layer_norm(x, x.shape[-1:], eps=1e-6), dim=-1)
    n, k = pred.shape[0], int(pred.max()) + 1
    # A one-hot matmul, not index_add_: the same sums (up to summation order), but index_add_
    # measured ~1000x slower with 2 threads than with 1 (26 ms vs 0.03 ms for 1024 x 192).
    # The one-hot by index_put_: F.one_hot's values in one call, without its range checks.
    one_hot = torch.zeros(n, k, dtype=unit.dtype).index_put_((torch.arange(n), pred), torch.ones((), dtype=unit.dtype))
    protos = F.normalize(one_hot.T @ unit, dim=-1)
    # index_select: protos[pred]'s rows without advanced indexing's overhead (5x on N x C).
    return (unit * protos.index_select(0, pred)).sum(-1).clamp(-1.0, 1.0)


def token_facets(logits: Tensor, tokens: Tensor) -> dict[str, Tensor]:
    """The three facets of every alive token, from the auxiliary head and the features.

    logits: Nk x K auxiliary logits, tokens: Nk x C features after this block. Returns Nk tensors:
    confidence (top-class probability), entropy (normalised to [0, 1]), entropy_bits (the same in
    bits, what the entropy cap ``beta`` reads), predicted_class (long), relation ([-1, 1]).
    """
    conf, pred, entropy = confidence_and_entropy(logits)
    bits = entropy * math.log2(logits.shape[-1]) if logits.shape[-1] > 1 else entropy
    return {
        "confidence": conf,
        "entropy": entropy,
        "entropy_bits": bits,
        "predicted_class": pred,
        "relation": class_relation(tokens, pred),
    }


def multi_faceted_score(entropy: Tensor, confidence: Tensor, relation: Tensor, weights: tuple[float, float, float]) -> Tensor:
    """Multi-faceted pruning score, Nk in [0, 1]: higher = harder = more worth keeping.

    ``w_H * entropy + w_C * (1 - confidence) + w_R * (1 - relation) / 2`` with the weights
    normalised to sum 1. Every term is in [0, 1]: an uncertain, unconfident or atypical token
    scores high; a confident, certain token typical of its class scores near 0 (redundant).
    """
    w = torch.tensor(weights, dtype=torch.float32)
    w0, w1, w2 = (w / w.sum()).tolist()  # float32 values, exact as Python floats
    # Tensor x Python float computes in float32 with the same float32 weight: the products of
    # ``w[i] * facet`` (0-d float32 tensors), bit for bit, in fewer calls.
    return entropy * w0 + (1.0 - confidence) * w1 + (1.0 - relation) * w2 / 2.0


# ---------------------------------------------------------------------------- the criteria


def adaptive_threshold(score: Tensor, alpha: float) -> float:
    """``alpha x mean(score)`` over this input's alive tokens (0 when there are none)."""
    return float(alpha * score.mean()) if score.numel() else 0.0


def criterion_mask(score: Tensor, entropy_bits: Tensor, params: MATPParams) -> tuple[Tensor, float]:
    """Tokens the criterion would prune, before relation-based retention.

    score, entropy_bits: Nk. Returns (prune Nk bool, threshold), the threshold being the score
    bound actually applied (for "topk": the lowest score that stays).
    adaptive: score < alpha * mean(score) and entropy_bits < beta.
    fixed:    score < fixed_threshold.
    topk:     the round(topk_rate * Nk) lowest scores (ties broken by token order).
    """
    n = score.numel()
    if params.criterion == "adaptive":
        tau = adaptive_threshold(score, params.alpha)
        return (score < tau) & (entropy_bits < params.beta), tau
    if params.criterion == "fixed":
        return score < params.fixed_threshold, float(params.fixed_threshold)
    prune = torch.zeros(n, dtype=torch.bool)
    if n == 0:
        return prune, 0.0
    order = torch.sort(score, stable=True).indices
    n_prune = n - num_to_keep(n, params.topk_rate)  # at least one token always stays
    prune[order[:n_prune]] = True
    return prune, float(score[order[n_prune]])


def relation_retained(relation: Tensor, pred: Tensor, k: int) -> Tensor:
    """The ``k`` tokens of each predicted class with the highest relation, Nk bool."""
    if k == 0 or relation.numel() == 0:
        return torch.zeros(relation.numel(), dtype=torch.bool)
    return rank_within_class(relation, pred) < k


def matp_masks(
    logits: Tensor, tokens: Tensor, params: MATPParams, want_diagnostics: bool = True
) -> tuple[Tensor, dict[str, Tensor]]:
    """The whole MATP rule on one input's alive tokens.

    logits: Nk x K auxiliary logits, tokens: Nk x C. Returns (prune Nk bool, diagnostics) where
    diagnostics holds the Nk facets, score, retained (1 = the criterion chose it, relation kept
    it), and the 0-d adaptive_threshold and n_retained_by_relation ({} when not
    ``want_diagnostics``).
    """
    facets = token_facets(logits, tokens)
    score = multi_faceted_score(facets["entropy"], facets["confidence"], facets["relation"], params.weights)
    candidate, tau = criterion_mask(score, facets["entropy_bits"], params)
    retained = candidate & relation_retained(facets["relation"], facets["predicted_class"], params.k)
    if not want_diagnostics:
        return candidate & ~retained, {}
    diag = {
        "confidence": facets["confidence"],
        "entropy": facets["entropy"],
        "relation": facets["relation"],
        "score": score,
        "predicted_class": facets["predicted_class"].float(),
        "retained": retained.float(),
        "adaptive_threshold": torch.tensor(tau),
        "n_retained_by_relation": torch.tensor(int(retained.sum())),
    }
    return candidate & ~retained, diag


@single_threaded  # many small operations: one thread is faster (prune_viz/threads.py)
def decide(ctx: PruneContext, params: MATPParams) -> Decision:
    """MATP decision on the Nk tokens alive after block ``ctx.layer``.

    Status: PRUNED (features freeze here; the main head decodes them at the end) or KEPT.
    Diagnostics: see :func:`matp_masks`.
    """
    if ctx.aux_logits is None:
        raise ValueError("matp needs the auxiliary head's logits at this layer (a backbone with aux heads)")
    if ctx.tokens.shape[0] == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return Decision(keep=empty, status=empty.clone(), diagnostics={})
    prune, diag = matp_masks(ctx.aux_logits, ctx.tokens, params, ctx.want_diagnostics)
    status = torch.where(prune, PRUNED, KEPT)  # int64
    return Decision(keep=torch.nonzero(~prune).flatten(), status=status, diagnostics=diag)


def default_layers(num_blocks: int) -> tuple[int, ...]:
    """The paper's pruning layers (3, 6, 8), those that fit a model with ``num_blocks`` blocks."""
    return tuple(layer for layer in DEFAULT_LAYERS if layer < num_blocks)


SPEC = MethodSpec(
    name="matp",
    params_cls=MATPParams,
    decide=decide,
    description=(
        "MATP scores every token with a small auxiliary head: how uncertain its class prediction is, how "
        "confident it is, and how typical its features are of that class, and prunes the tokens that are "
        "clearly easier than this image's average. A few of the most typical tokens of each class are kept "
        "as context, and the model is fine-tuned with the pruning in place so that it learns to live with it."
    ),
    needs_aux=True,
    default_layers=default_layers,
)
