"""Per-run teaching lines: which classes' tokens a method kept ("kept 94 % of water tokens,
10 % of low-vegetation tokens"), by the unpruned model's prediction or the ground-truth mask."""

from __future__ import annotations

import cv2
import numpy as np

from ..analysis import Analysis


def token_classes(labels: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """H x W class ids -> gh x gw: the class at each token's centre (nearest neighbour)."""
    gh, gw = grid
    return cv2.resize(labels.astype(np.int32), (gw, gh), interpolation=cv2.INTER_NEAREST)


def kept_by_class(analysis: Analysis, gt: np.ndarray | None = None) -> dict[str, tuple[float, int]]:
    """Class name -> (share of its tokens that went through every block, its token count).

    Tokens are labelled by ``gt`` when given (same size as the image), else by the unpruned
    model's prediction; {} for anonymous segments (SAM, timm)."""
    seg = analysis.baseline.seg
    if seg.kind != "semantic" or not seg.class_names:
        return {}
    labels = token_classes(gt if gt is not None else seg.labels, analysis.trace.grid)
    kept = analysis.trace.drop_layer >= analysis.trace.num_blocks
    out = {}
    for c in np.unique(labels):
        if 0 <= c < len(seg.class_names):
            m = labels == c
            out[seg.class_names[c]] = (float(kept[m].mean()), int(m.sum()))
    return out


def kept_by_class_line(analysis: Analysis, gt: np.ndarray | None = None, min_tokens: int = 10) -> str:
    """'Kept 94 % of water tokens, 10 % of low vegetation tokens, ...' (largest classes first;
    classes with fewer than ``min_tokens`` tokens left out); '' without semantic classes."""
    shares = kept_by_class(analysis, gt)
    items = sorted(((n, s) for n, s in shares.items() if s[1] >= min_tokens), key=lambda x: -x[1][1])
    if not items:
        return ""
    by = "the ground-truth mask" if gt is not None else "the unpruned model's prediction"
    parts = [f"**{100 * share:.0f} %** of {name.replace('_', ' ')} tokens ({count})" for name, (share, count) in items]
    return f"Went through every block: {', '.join(parts)} (classes by {by})."
