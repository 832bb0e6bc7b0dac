"""One analysis = baseline forward + pruned forward + metrics + report; shared by CLI and app.

The report's MAC fields cover the whole forward that produces the segmentation (embedding,
blocks, auxiliary heads where used, the method's own decision arithmetic, decoding).
``measured_*`` come from ``torch.utils.flop_counter`` on the same forwards (FLOPs / 2), run
from scratch; OpenCV work (LVTP's Sobel) is invisible to the counter and timed only.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .backbones.base import Backbone
from .engine import Baseline, Plan, Trace, image_key, run_baseline, run_pruned
from .flops import MACS_NOTE, measure_macs
from .metrics import agreement_miou, boundary_f1, gamma, miou
from .viz import colorize_labels, image_to_uint8, token_status_map, write_png


@dataclass
class Analysis:
    baseline: Baseline
    trace: Trace
    report: dict[str, Any]

    @property
    def model_image(self) -> np.ndarray:
        """H x W x 3 uint8: the image as the model saw it (resized, padding cropped)."""
        prep = self.baseline.prep
        return image_to_uint8(prep.image01, prep.valid_hw)


def mask_refusal(backbone: Backbone) -> str | None:
    """Why a ground-truth mask cannot be scored on this backbone (None: it can)."""
    if backbone.num_classes == 0:
        return f"ground-truth masks need a backbone with semantic classes; {backbone.name} outputs anonymous segments"
    return None


def attention_layers(plan: Plan) -> tuple[int, ...]:
    """Layers whose attention statistics the baseline should cache for this plan."""
    return plan.layers[:1] if plan.method.needs_attention else ()


def median_ms(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(statistics.median(times))


def analyze(
    backbone: Backbone,
    image: np.ndarray,
    plan: Plan,
    gt: np.ndarray | None = None,
    repeat: int = 0,
    measure: bool = False,
    baseline: Baseline | None = None,
) -> Analysis:
    """Run baseline (or reuse the cached one) and the pruned forward, then score and report.

    repeat > 0 times both forwards from scratch (median of ``repeat`` after a warm-up);
    measure=True cross-checks MACs with the FLOP counter on from-scratch forwards.
    """
    if baseline is None or baseline.key != image_key(backbone, image):
        baseline = run_baseline(backbone, image, attn_layers=attention_layers(plan))
    trace = run_pruned(backbone, image, plan, baseline=baseline, count_decisions=True)
    report = build_report(backbone, plan, baseline, trace, gt)
    if measure:
        measured_base, _ = measure_macs(lambda: run_baseline(backbone, image))
        measured_pruned, _ = measure_macs(lambda: run_pruned(backbone, image, plan))
        report["macs"]["measured_baseline"] = int(measured_base)
        report["macs"]["measured_pruned"] = int(measured_pruned)
    if repeat > 0:
        report["latency_ms"] = {
            "baseline": median_ms(lambda: run_baseline(backbone, image), repeat),
            "pruned": median_ms(lambda: run_pruned(backbone, image, plan), repeat),
            "repeat": repeat,
        }
    return Analysis(baseline, trace, report)


def build_report(backbone: Backbone, plan: Plan, baseline: Baseline, trace: Trace, gt: np.ndarray | None) -> dict[str, Any]:
    seg_b, seg_p = baseline.seg, trace.seg
    k = backbone.num_classes
    agree = agreement_miou(seg_p.labels, seg_b.labels, seg_p.kind, k)
    metrics: dict[str, Any] = {
        "agreement_miou": agree,
        "boundary_f1_vs_unpruned": boundary_f1(seg_p.labels, seg_b.labels),
        "miou": None,
        "miou_baseline": None,
        "gamma": None,
    }
    delta_macs_pct = 100.0 * (trace.macs["total"] - baseline.macs) / baseline.macs
    if gt is not None and seg_p.kind == "semantic":
        m_b, m_p = miou(seg_b.labels, gt, k), miou(seg_p.labels, gt, k)
        metrics.update(miou=m_p, miou_baseline=m_b, boundary_f1=boundary_f1(seg_p.labels, gt))
        metrics["gamma"] = gamma(delta_macs_pct, 100.0 * (m_p - m_b))
    return {
        "backbone": backbone.name,
        "weights": backbone.weights,  # "random weights" in words when so: a random model's output means nothing
        "method": plan.method.name,
        "params": trace.params,
        "layers_pruned": list(plan.layers),
        "seed": plan.seed,
        "grid": list(trace.grid),
        "layers": [
            {"layer": r.layer, "kind": r.kind, "tokens": r.tokens, "macs": r.macs, "macs_baseline": r.macs_baseline}
            for r in trace.layers
        ],
        "steps": [
            {"layer": s.layer, "tokens_in": s.tokens_in, "tokens_kept": s.tokens_kept, "decide_ms": round(s.decide_ms, 2)}
            for s in trace.steps
        ],
        "macs": {
            "baseline": int(baseline.macs),
            "pruned": int(trace.macs["total"]),
            "pruned_parts": {k_: int(v) for k_, v in trace.macs.items()},
            "delta_pct": delta_macs_pct,
            "convention": MACS_NOTE,
        },
        "latency_ms": None,
        "metrics": metrics,
        # Decisions overruled by hand (the token inspector's "what if"): layer, forced in, forced out.
        "overrides": [{"layer": at, "keep": list(keep), "prune": list(prune)} for at, keep, prune in plan.overrides],
        "digest": {
            "input": baseline.key,
            "status_grids": [_digest(s.status_grid) for s in trace.steps],
            "seg_before": _digest(seg_b.labels),
            "seg_after": _digest(seg_p.labels),
        },
    }


def _digest(array: np.ndarray) -> str:
    """sha256 (first 16 hex digits) of an array's shape, dtype and bytes: two reports describe
    the same decisions and segmentations exactly when their digests match."""
    a = np.ascontiguousarray(array)
    h = hashlib.sha256(f"{a.shape}{a.dtype}".encode())
    h.update(a.tobytes())
    return h.hexdigest()[:16]


def save_outputs(analysis: Analysis, out: Path, image: np.ndarray, patch: int) -> list[Path]:
    """report.json, one token map per pruning layer, segmentation before / after."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    path = out / "report.json"
    path.write_text(json.dumps(analysis.report, indent=2, default=_json_default))
    written.append(path)
    model_img = analysis.model_image
    for step in analysis.trace.steps:
        p = out / f"token_map_L{step.layer}.png"
        write_png(p, token_status_map(model_img, step.status_grid, patch))
        written.append(p)
    for name, seg in (("seg_before", analysis.baseline.seg), ("seg_after", analysis.trace.seg)):
        p = out / f"{name}.png"
        write_png(p, colorize_labels(seg.labels, seg.palette))
        written.append(p)
    return written


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")
