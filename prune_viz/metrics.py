"""Segmentation metrics: mIoU, per-class IoU, boundary-region IoU, boundary F, agreement, gamma.

All functions take H x W integer label maps (numpy). ``IGNORE`` pixels (255) are skipped.
mIoU is in [0, 1] and averages over classes present in the prediction or the ground truth
(classes absent from both are not counted), per image or accumulated over a split through
:class:`ConfusionMatrix`.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

IGNORE = 255


class ConfusionMatrix:
    """Accumulates a K x K confusion matrix (rows = ground truth, columns = prediction)."""

    def __init__(self, num_classes: int):
        self.k = num_classes
        self.mat = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray, region: np.ndarray | None = None) -> None:
        valid = (gt != IGNORE) & (gt < self.k) & (pred >= 0) & (pred < self.k)
        if region is not None:
            valid &= region
        idx = gt[valid].astype(np.int64) * self.k + pred[valid].astype(np.int64)
        self.mat += np.bincount(idx, minlength=self.k * self.k).reshape(self.k, self.k)

    def iou(self) -> np.ndarray:
        """Per-class IoU (NaN for classes absent from both prediction and ground truth)."""
        tp = np.diag(self.mat).astype(np.float64)
        union = self.mat.sum(0) + self.mat.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / union, np.nan)

    def miou(self) -> float:
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def miou(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> float:
    cm = ConfusionMatrix(num_classes)
    cm.update(pred, gt)
    return cm.miou()


def boundary_region(gt: np.ndarray, width: int = 3) -> np.ndarray:
    """Pixels within ``width`` px of a ground-truth label edge (H x W bool)."""
    g = gt.astype(np.int32)
    edge = np.zeros(g.shape, dtype=bool)
    edge[:, 1:] |= g[:, 1:] != g[:, :-1]
    edge[:, :-1] |= g[:, 1:] != g[:, :-1]
    edge[1:, :] |= g[1:, :] != g[:-1, :]
    edge[:-1, :] |= g[1:, :] != g[:-1, :]
    kernel = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    return cv2.dilate(edge.astype(np.uint8), kernel) > 0


def boundary_f1(pred: np.ndarray, ref: np.ndarray, tolerance: int = 2) -> float:
    """Boundary F-score: precision/recall of predicted label edges within ``tolerance`` px of the
    reference's edges. 1.0 when neither map has an edge."""
    pe, re_ = boundary_region(pred, 0), boundary_region(ref, 0)
    if not pe.any() and not re_.any():
        return 1.0
    if not pe.any() or not re_.any():
        return 0.0
    kernel = np.ones((2 * tolerance + 1, 2 * tolerance + 1), np.uint8)
    near_ref = cv2.dilate(re_.astype(np.uint8), kernel) > 0
    near_pred = cv2.dilate(pe.astype(np.uint8), kernel) > 0
    precision = (pe & near_ref).sum() / pe.sum()
    recall = (re_ & near_pred).sum() / re_.sum()
    return float(0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))


def match_segments(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Relabel anonymous segments in ``pred`` to the ``ref`` segments they overlap most
    (Hungarian assignment on the overlap counts); unmatched segments get fresh ids."""
    p_ids, p_inv = np.unique(pred, return_inverse=True)
    r_ids, r_inv = np.unique(ref, return_inverse=True)
    overlap = np.zeros((len(p_ids), len(r_ids)), dtype=np.int64)
    np.add.at(overlap, (p_inv.ravel(), r_inv.ravel()), 1)
    rows, cols = linear_sum_assignment(-overlap)
    mapping = np.full(len(p_ids), -1, dtype=np.int64)
    mapping[rows] = r_ids[cols]
    fresh = r_ids.max() + 1 if len(r_ids) else 0
    for i in np.flatnonzero(mapping < 0):
        mapping[i] = fresh
        fresh += 1
    return mapping[p_inv].reshape(pred.shape).astype(np.int32)


def agreement_miou(pred: np.ndarray, ref: np.ndarray, kind: str, num_classes: int = 0) -> float:
    """mIoU of a pruned prediction against the unpruned one (``ref`` taken as ground truth).
    Anonymous segments are matched (Hungarian) first."""
    if kind == "segments":
        pred = match_segments(pred, ref)
        num_classes = int(max(pred.max(), ref.max())) + 1
    return miou(pred, ref, num_classes)


def gamma(delta_macs_pct: float, delta_miou_points: float) -> float | None:
    """LVTP Eq. 11: gamma = (MAC reduction, %) / (mIoU reduction, points).

    Both deltas are signed changes (pruned - baseline): negative means fewer MACs / lower mIoU.
    gamma = (-delta_macs_pct) / (-delta_miou_points). Undefined (None) when mIoU did not drop
    (delta >= 0): the trade-off is then free, and a ratio would be meaningless or infinite.
    """
    if not np.isfinite(delta_macs_pct) or not np.isfinite(delta_miou_points) or delta_miou_points >= 0:
        return None
    return float(delta_macs_pct / delta_miou_points)
