"""Error bars and curve summaries for the benchmark: bootstrap over scenes, budgets, AUC.

The unit of resampling is the **scene**: a bootstrap replicate draws the split's scenes with
replacement and recomputes the split-level mIoU from the drawn scenes' confusion matrices (the
same accumulated mIoU the point estimate uses, not a mean of per-scene mIoUs). One table of
draws (:func:`resample_counts`) is shared by every configuration of a run, so replicates are
paired: a difference between two methods, or a value interpolated between two points of one
curve, is computed replicate by replicate and its percentile interval is honest about the
correlation. Several seeds of a stochastic method are averaged inside each replicate (the
scenes, not the seeds, are the population we generalise over).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def resample_counts(n_scenes: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """B x S int: how often each scene is drawn in each bootstrap replicate (rows sum to S)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_scenes, np.full(n_scenes, 1.0 / n_scenes), size=n_boot)


def miou_of_cms(cm: np.ndarray) -> np.ndarray:
    """[..., K, K] confusion matrices (rows = ground truth) -> [...] mIoU over the classes present
    in prediction or ground truth (as :meth:`prune_viz.metrics.ConfusionMatrix.miou`)."""
    cm = cm.astype(np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    union = cm.sum(-2) + cm.sum(-1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        return np.nanmean(iou, axis=-1)


def point_and_samples(cms: np.ndarray, counts: np.ndarray) -> tuple[float, np.ndarray]:
    """Split mIoU and its bootstrap replicates.

    cms: R x S x K x K (R seeds, S scenes) per-scene confusion matrices; counts: B x S from
    :func:`resample_counts`. Returns (mean over seeds of the split mIoU, B replicates of it).
    """
    r, s, k, _ = cms.shape
    point = float(np.mean(miou_of_cms(cms.sum(axis=1))))
    flat = cms.reshape(r, s, k * k).astype(np.float64)
    summed = np.einsum("bs,rsk->rbk", counts.astype(np.float64), flat).reshape(r, -1, k, k)
    return point, miou_of_cms(summed).mean(axis=0)


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates (NaN replicates ignored)."""
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.nanpercentile(samples, [tail, 100.0 - tail])
    return float(lo), float(hi)


def bootstrap_ci(values: np.ndarray, stat=np.mean, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Generic percentile bootstrap of ``stat`` over the first axis of ``values`` (S samples).
    Returns (stat(values), ci_low, ci_high)."""
    values = np.asarray(values)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    reps = np.array([stat(values[i]) for i in idx])
    lo, hi = percentile_ci(reps, level)
    return float(stat(values)), lo, hi


def median_iqr(times_ms: list[float]) -> tuple[float, float]:
    """(median, interquartile range) of timed runs; (NaN, NaN) when there are none."""
    if not times_ms:
        return float("nan"), float("nan")
    q1, med, q3 = np.percentile(np.asarray(times_ms, dtype=np.float64), [25, 50, 75])
    return float(med), float(q3 - q1)


@dataclass
class CurvePoint:
    """One measured operating point of a method: MAC reduction in % (positive = fewer MACs than
    the unpruned reference), split mIoU, its bootstrap replicates, median latency."""

    reduction: float
    miou: float
    samples: np.ndarray
    latency_ms: float = float("nan")
    label: str = ""


@dataclass
class BudgetValue:
    """A method at a MAC budget (``budget`` % fewer MACs than the reference).

    reached: some measured point spends at most the budget. how: "interpolated" between the two
    points that bracket the budget (linear in MAC reduction; a time-shared mix of the two
    configurations realises it), "cheaper point" when every point that fits saves *more* than
    asked (the value of the least-saving one that fits: a lower bound of what the method can do
    at this budget), or "unreachable".
    """

    budget: float
    reached: bool
    miou: float = float("nan")
    ci_low: float = float("nan")
    ci_high: float = float("nan")
    latency_ms: float = float("nan")
    how: str = "unreachable"
    samples: np.ndarray | None = None


def at_budget(points: list[CurvePoint], budget: float, level: float = 0.95) -> BudgetValue:
    """Interpolate a curve at ``budget`` % fewer MACs (see :class:`BudgetValue`). Points are
    sorted by reduction; among several brackets the tightest (adjacent in that order) is used."""
    pts = sorted(points, key=lambda p: p.reduction)
    fits = [p for p in pts if p.reduction >= budget]
    if not fits:
        return BudgetValue(budget, False)
    above = fits[0]
    below = [p for p in pts if p.reduction <= budget]
    if below and above.reduction > budget:
        lo_pt = below[-1]
        w = (budget - lo_pt.reduction) / (above.reduction - lo_pt.reduction)
        samples = (1.0 - w) * lo_pt.samples + w * above.samples
        miou = (1.0 - w) * lo_pt.miou + w * above.miou
        latency = (1.0 - w) * lo_pt.latency_ms + w * above.latency_ms
        how = f"interpolated {lo_pt.label} .. {above.label}"
    else:
        samples, miou, latency = above.samples, above.miou, above.latency_ms
        how = f"point {above.label}" if above.reduction == budget else f"cheaper point {above.label} ({above.reduction:.1f}%)"
    lo, hi = percentile_ci(samples, level)
    return BudgetValue(budget, True, float(miou), lo, hi, float(latency), how, samples)


def area_under_curve(points: list[CurvePoint], lo: float = 10.0, hi: float = 70.0) -> float | None:
    """Mean mIoU over MAC reductions lo..hi % (trapezoid area of mIoU vs reduction, divided by
    the width), on the method's interpolated curve. None unless the curve covers lo..hi: an
    area over a partial range would not compare with the others'."""
    pts = sorted(points, key=lambda p: p.reduction)
    if len(pts) < 2 or pts[0].reduction > lo or pts[-1].reduction < hi:
        return None
    xs = np.array([p.reduction for p in pts])
    ys = np.array([p.miou for p in pts])
    grid = np.concatenate([[lo], xs[(xs > lo) & (xs < hi)], [hi]])
    vals = np.interp(grid, xs, ys)
    area = float(np.sum((vals[1:] + vals[:-1]) / 2.0 * np.diff(grid)))
    return area / (hi - lo)
