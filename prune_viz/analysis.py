"""One analysis = baseline forward + pruned forward + metrics + report; shared by CLI and app.

The report's MAC fields cover the whole forward that produces the segmentation (embedding,
blocks, auxiliary heads where used, the method's own decision arithmetic, decoding).
``delta_pct`` is against the stock model; on SAM part of it is the engine's, not pruning's
(``engine_delta_pct``: pad queries of windowed blocks skipped), and ``pruning_delta_pct`` is
measured against the subset code path at rate 0 (``subset_rate0``).
``measured_*`` come from ``torch.utils.flop_counter`` on the same forwards (FLOPs / 2), run
from scratch; OpenCV work (LVTP's Sobel) is invisible to the counter and timed only.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .backbones.base import Backbone
from .backbones.provenance import provenance
from .engine import Baseline, Plan, Trace, image_key, pad_query_saving, run_baseline, run_pruned
from .stages import downsample_full, stage_outputs
from .flops import MACS_NOTE, measure_macs
from .metrics import agreement_miou, boundary_f1, gamma, miou
from .ood import ood_fields
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


def spread(values: list[float]) -> dict[str, Any]:
    """Median, quartiles (IQR), min and max of some timings (ms) or ratios, and the runs."""
    v = sorted(values)
    q1, _, q3 = statistics.quantiles(v, n=4, method="inclusive") if len(v) > 1 else (v[0], v[0], v[0])
    return {"median": float(statistics.median(v)), "q1": float(q1), "q3": float(q3),
            "min": float(v[0]), "max": float(v[-1]), "runs": [round(x, 3) for x in values]}


def time_forwards(
    backbone: Backbone, image: np.ndarray, plan: Plan, repeat: int, baseline: Baseline | None = None,
    warmup: bool = True,
) -> dict[str, Any]:
    """Wall time of the unpruned and the pruned forward, **interleaved**: round i runs both (the
    order alternating between rounds), so drift on a shared machine hits both alike; after one
    warm-up of each (``warmup``). The speedup is taken per round (unpruned / pruned of the same round).

    Timed, both from the image: prepare, embed, every block, decode; the pruned forward also its
    decisions (with their inputs: attention statistics, auxiliary heads), the gathers and the
    scatter-back. Not timed: view-only diagnostics (the pruned runs pass ``diagnostics=False``).
    ``baseline`` (a cached unpruned forward of this image): both forwards then start from its
    output after the first pruning layer, so only the part pruning changes is timed.
    Returns {"baseline", "pruned", "speedup"}: :func:`spread` dicts (ms, ms, ratio), "repeat",
    "interleaved", "from_cache", "threads", "load_average" (1 min, None where unknown).
    """
    if baseline is not None:
        def unpruned() -> Any:
            return run_suffix_unpruned(backbone, baseline, plan.layers[0])

        def pruned() -> Any:
            return run_pruned(backbone, image, plan, baseline=baseline, diagnostics=False)
    else:
        def unpruned() -> Any:
            return run_baseline(backbone, image)

        def pruned() -> Any:
            return run_pruned(backbone, image, plan, diagnostics=False)

    if warmup:
        unpruned(), pruned()
    times: dict[str, list[float]] = {"baseline": [], "pruned": []}
    for i in range(max(1, repeat)):
        order = [("baseline", unpruned), ("pruned", pruned)]
        for name, fn in order if i % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    speedups = [b / p for b, p in zip(times["baseline"], times["pruned"]) if p > 0]
    try:
        load: float | None = round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        load = None
    return {
        "baseline": spread(times["baseline"]),
        "pruned": spread(times["pruned"]),
        "speedup": spread(speedups),
        "repeat": max(1, repeat),
        "interleaved": True,
        "from_cache": baseline is not None,
        "threads": torch.get_num_threads(),
        "load_average": load,
    }


@torch.no_grad()
def run_suffix_unpruned(backbone: Backbone, baseline: Baseline, first: int) -> Any:
    """The unpruned forward from the cached output of block ``first`` on: the remaining blocks
    on the full grid and the decode (the counterpart of a pruned run that reuses the cache)."""
    x = baseline.x_after[first]
    grid = backbone.grid_at(first, baseline.prep.grid)
    skips = stage_outputs(backbone, baseline.x_after, before=first)
    if first in backbone.stage_ends:
        skips.append(backbone.split_prefix(x)[1])
        x, grid = downsample_full(backbone, first, x, grid)
    for layer in range(first + 1, backbone.num_blocks + 1):
        x = backbone.run_block(layer, x, None, grid).x
        if layer in backbone.stage_ends:
            skips.append(backbone.split_prefix(x)[1])
            x, grid = downsample_full(backbone, layer, x, grid)
    prefix, patches = backbone.split_prefix(x)
    extra = {"stage_outputs": skips} if backbone.stage_ends else {}
    return backbone.decode(patches.clone(), prefix, baseline.prep, **extra)


def latency_report(timing: dict[str, Any], macs: dict[str, Any]) -> dict[str, Any]:
    """The report's ``latency_ms``: medians (``baseline``, ``pruned``, ms), their spread, the
    speedup and the efficiency = wall speedup / MAC ratio (1.0: every MAC saved is time saved)."""
    ratio = macs["baseline"] / macs["pruned"] if macs["pruned"] else float("nan")
    speedup = timing["speedup"]["median"]
    return {
        "baseline": timing["baseline"]["median"],
        "pruned": timing["pruned"]["median"],
        "speedup": speedup,
        "mac_ratio": ratio,
        "efficiency": speedup / ratio if ratio == ratio and ratio > 0 else None,
        **{k: timing[k] for k in ("repeat", "interleaved", "threads", "load_average")},
        "spread": {k: timing[k] for k in ("baseline", "pruned", "speedup")},
    }


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

    repeat > 0 times both forwards from scratch, interleaved (:func:`time_forwards`);
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
        report["latency_ms"] = latency_report(time_forwards(backbone, image, plan, repeat), report["macs"])
    return Analysis(baseline, trace, report)


def build_report(backbone: Backbone, plan: Plan, baseline: Baseline, trace: Trace, gt: np.ndarray | None) -> dict[str, Any]:
    seg_b, seg_p = baseline.seg, trace.seg
    k = backbone.num_classes
    weights = provenance(backbone)
    agree = agreement_miou(seg_p.labels, seg_b.labels, seg_p.kind, k)
    metrics: dict[str, Any] = {
        "agreement_miou": agree,
        "boundary_f1_vs_unpruned": boundary_f1(seg_p.labels, seg_b.labels),
        "miou": None,
        "miou_baseline": None,
        "gamma": None,
    }
    delta_macs_pct = 100.0 * (trace.macs["total"] - baseline.macs) / baseline.macs
    subset0 = baseline.macs - pad_query_saving(backbone, plan, trace.grid)
    if gt is not None and seg_p.kind == "semantic":
        m_b, m_p = miou(seg_b.labels, gt, k), miou(seg_p.labels, gt, k)
        metrics.update(miou=m_p, miou_baseline=m_b, boundary_f1=boundary_f1(seg_p.labels, gt))
        metrics["gamma"] = gamma(delta_macs_pct, 100.0 * (m_p - m_b))
    return {
        "backbone": backbone.name,
        # pretrained | file <sha256 first 12> | random, and the same in words (a random model's output means nothing)
        "weights": weights.label,
        "weights_note": weights.sentence,
        "method": plan.method.name,
        "params": trace.params,
        "layers_pruned": list(plan.layers),
        "seed": plan.seed,
        "grid": list(trace.grid),
        "layers": [
            {"layer": r.layer, "kind": r.kind, "tokens": r.tokens, "macs": r.macs, "macs_baseline": r.macs_baseline,
             **({"grid": list(r.grid)} if r.grid else {})}
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
            # The subset code path at rate 0 (SAM: pad queries skipped, not pruning) and the
            # pruning saving measured against it; delta_pct (against the stock model) is both.
            "subset_rate0": int(subset0),
            "engine_delta_pct": 100.0 * (subset0 - baseline.macs) / baseline.macs,
            "pruning_delta_pct": 100.0 * (trace.macs["total"] - subset0) / subset0,
            "convention": MACS_NOTE,
        },
        **({"stages": trace.stage_macs()} if trace.stage_ends else {}),
        "latency_ms": None,
        "metrics": metrics,
        # How unsure the unpruned model is (ood.py): out of its domain, a failure is the model's.
        "ood": ood_fields(backbone, baseline),
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
        stride = analysis.trace.grid[0] // step.status_grid.shape[0]  # coarser stages of a hierarchical backbone
        write_png(p, token_status_map(model_img, step.status_grid, patch * stride))
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
