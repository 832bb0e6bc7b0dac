"""SAM prompts: clicks on the displayed image become points or a box in original pixels, and
the same prompt is answered from the unpruned and from the pruned image embedding."""

from __future__ import annotations

import math

import numpy as np

from .. import viz
from ..backbones.base import Backbone
from ..errors import UserError
from .session import ModelKey, Session
from .views import resize


def display_scale(image: np.ndarray, max_side: int = 1024) -> float:
    return min(1.0, max_side / max(image.shape[:2]))


def prompt_image(session: Session, max_side: int = 1024) -> np.ndarray | None:
    """The image (at most ``max_side`` px) with the session's prompts drawn on it."""
    if session.image is None:
        return None
    s = display_scale(session.image, max_side)
    img = session.image if s == 1.0 else resize(session.image, (round(session.image.shape[0] * s), round(session.image.shape[1] * s)))
    pts = [(x * s, y * s, lab) for x, y, lab in session.points]
    box = tuple(v * s for v in session.box) if session.box else None
    corner = (session.corner[0] * s, session.corner[1] * s) if session.corner else None
    return viz.draw_prompts(img, pts, box, corner)


def add_click(session: Session, xy: tuple[float, float], mode: str, max_side: int = 1024) -> str:
    """A click on the displayed image (display pixels) -> a prompt in original pixels."""
    if session.image is None:
        raise UserError("load an image first")
    s = display_scale(session.image, max_side)
    x, y = float(xy[0]) / s, float(xy[1]) / s
    if mode.startswith("box"):
        if not session.add_corner(x, y):
            return "First box corner set: click the opposite corner."
        return f"Box set: ({session.box[0]:.0f}, {session.box[1]:.0f}) – ({session.box[2]:.0f}, {session.box[3]:.0f})."
    label = 0 if mode.startswith("background") else 1
    session.add_point(x, y, label)
    return f"{len(session.points)} point(s) set."


def set_box(session: Session, x0: float, y0: float, x1: float, y1: float) -> None:
    if session.image is None:
        raise UserError("load an image first")
    h, w = session.image.shape[:2]
    vals = [float(v) for v in (x0, y0, x1, y1)]
    if not all(math.isfinite(v) for v in vals):
        raise UserError("box corners must be numbers")
    x0, y0, x1, y1 = vals
    box = (max(0.0, min(x0, x1)), max(0.0, min(y0, y1)), min(float(w), max(x0, x1)), min(float(h), max(y0, y1)))
    if box[2] - box[0] < 1 or box[3] - box[1] < 1:
        raise UserError(f"the box is empty inside the {w} x {h} image")
    session.set_box(box)


def sam_predict(session: Session, backbone: Backbone, model_key: ModelKey) -> tuple[np.ndarray, np.ndarray, str]:
    """Prompted masks from the unpruned and the pruned image embeddings of the last analysis,
    which must come from this backbone at this input size (``model_key``)."""
    if not backbone.supports_prompts:
        raise UserError("prompts need a SAM backbone: choose sam_vit_b, sam_vit_l or sam_vit_h")
    a = session.analysis
    if a is None or session.image is None or session.backbone_key != model_key:
        raise UserError(f"run the analysis with {model_key[0]} at {model_key[1]} px first (or wait until it has finished)")
    if not session.points and session.box is None:
        raise UserError("click on the image to add a point (or draw a box) first")
    pts = np.array([(x, y) for x, y, _ in session.points], dtype=np.float64) if session.points else None
    labels = np.array([lab for _, _, lab in session.points]) if session.points else None
    box = np.array(session.box) if session.box is not None else None
    m0, s0 = backbone.predict_masks(a.baseline.seg, a.baseline.prep, pts, labels, box)
    m1, s1 = backbone.predict_masks(a.trace.seg, a.baseline.prep, pts, labels, box)
    inter, union = np.logical_and(m0, m1).sum(), np.logical_or(m0, m1).sum()
    iou = float(inter / union) if union else 1.0
    base = viz.draw_prompts(session.image, session.points, session.box)
    before = viz.mask_overlay(base, m0, (0, 114, 178))
    after = viz.mask_overlay(base, m1, (230, 159, 0))
    text = (f"Unpruned mask: {int(m0.sum())} px (SAM's predicted IoU {s0:.2f}); pruned: {int(m1.sum())} px (predicted IoU "
            f"{s1:.2f}). **IoU between the two masks: {iou:.3f}** (1 = pruning did not change the answer).")
    return before, after, text
