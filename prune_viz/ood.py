"""Out-of-domain signal: how unsure the *unpruned* model is about an image.

A real photo shown to the demo segmenter (trained on synthetic aerial scenes only) still gets a
label for every pixel; what goes wrong after pruning then reads like a pruning failure when it
is a model failure. The signal here is the decoder's own confidence, measured on the unpruned
forward (the prefix cache), so it costs nothing extra:

    score = mean over grid tokens of  H(softmax(token_logits)) / log K      in [0, 1]

(normalised Shannon entropy of the per-token class probabilities; ``Segmentation.token_logits``
is N x K, the decoder's logits averaged over each token's pixels). 0 = every token certain,
1 = every token uniform over the K classes. Backbones without class scores (SAM segments,
timm cluster maps) have no such signal: ``None``.

:data:`OOD_THRESHOLD` is calibrated on the shipped demo segmenter (``bench/bench_ood.py``
prints the rates on val, shift and offline real photos; README "Out-of-domain warning"). It is
a statement about that model: another checkpoint needs its own calibration.
"""

from __future__ import annotations

import math

import torch

from .backbones.base import Backbone
from .records import Baseline

# Mean normalised entropy above which the demo model is "out of its domain". Calibrated with
# bench/bench_ood.py on 200 val scenes (max 0.195 of 200), 200 shift scenes and the photos that
# ship with matplotlib (grace_hopper.jpg 0.307): see docs/bench/ood.md.
OOD_THRESHOLD: float = 0.22

# The backbones the threshold was calibrated on. Any other model (demo_matp's fine-tune, the Swin
# demo, a registered checkpoint) has a different entropy scale: demo_swin scores 0.22 on the
# shipped examples/mixed.png, in domain. Without its own calibration it gets no score, so never
# a warning that would be a guess.
CALIBRATED_ON: tuple[str, ...] = ("demo",)

OOD_WARNING = (
    "**Out of domain?** The demo model does not know images like this; what you see may be "
    "model failure, not pruning failure."
)


def token_entropy(token_logits: torch.Tensor) -> torch.Tensor:
    """N x K logits -> N normalised entropies in [0, 1] (K >= 2)."""
    logp = token_logits.float().log_softmax(-1)
    k = token_logits.shape[-1]
    return -(logp.exp() * logp).sum(-1) / math.log(k)


def ood_score(backbone: Backbone, baseline: Baseline) -> float | None:
    """Mean normalised entropy of the unpruned decoder's per-token class probabilities, or None
    when the backbone gives no class scores (segments, or fewer than two classes) or the
    threshold was not calibrated on it (:data:`CALIBRATED_ON`)."""
    if backbone.name not in CALIBRATED_ON:
        return None
    seg = baseline.seg
    logits = seg.token_logits
    if seg.kind != "semantic" or logits is None or logits.ndim != 2 or logits.shape[-1] < 2:
        return None
    return float(token_entropy(logits).mean())


def is_out_of_domain(score: float | None, threshold: float = OOD_THRESHOLD) -> bool:
    """True when a score exists and exceeds the threshold (None: no signal, no warning)."""
    return score is not None and score > threshold


def ood_fields(backbone: Backbone, baseline: Baseline) -> dict[str, object]:
    """The report's ``ood`` block: score, threshold, flag and what the score is."""
    score = ood_score(backbone, baseline)
    return {
        "score": None if score is None else round(score, 4),
        "threshold": OOD_THRESHOLD,
        "out_of_domain": is_out_of_domain(score),
        "signal": "mean normalised entropy of the unpruned decoder's per-token class probabilities"
        if score is not None else _why_none(backbone),
    }


def _why_none(backbone: Backbone) -> str:
    if backbone.name not in CALIBRATED_ON:
        return f"none: the threshold is calibrated on {', '.join(CALIBRATED_ON)} only, not on {backbone.name}"
    return "none: this backbone gives no class scores"


def ood_line(fields: dict[str, object]) -> str:
    """One plain-text line for the CLI from :func:`ood_fields`."""
    score, thr = fields["score"], fields["threshold"]
    if score is None:
        return f"out-of-domain score: {fields['signal']}"
    if fields["out_of_domain"]:
        return (f"WARNING: out-of-domain score {score:.3f} > {thr}: the demo model does not know images like this; "
                "what you see may be model failure, not pruning failure")
    return f"out-of-domain score {score:.3f} (<= {thr}: like the scenes the demo model was trained on)"
