"""Numbers as text: the MAC readout line, the metrics and method-value tables, JSON for the API.
Every number states its unit (1 multiply-add = 1 MAC; FLOPs = 2 x MACs; 1 GMAC = 1e9 MACs)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..analysis import Analysis
from ..engine import Trace
from ..flops import MACS_NOTE
from ..metrics import match_segments
from .texts import SCALAR_INFO


def _engine_split(macs: int, base: int, subset0: int) -> dict[str, float]:
    """The saving split into the engine's (SAM's pad queries skipped even at rate 0) and the
    pruning's, measured against the subset path at rate 0 (percent, positive = saved)."""
    return {
        "engine_saved_pct": 100.0 * (base - subset0) / base if base else 0.0,
        "pruning_saved_pct": 100.0 * (subset0 - macs) / subset0 if subset0 else 0.0,
        "subset_rate0_macs": subset0,
    }


def estimate_summary(est: dict[str, Any], ms: float | None = None) -> dict[str, Any]:
    macs, base = int(est["macs"]), int(est["baseline"])
    n = est["tokens"][0] if est["tokens"] else 0
    return {
        **_engine_split(macs, base, int(est.get("subset_rate0", base))),
        "macs": macs,
        "flops": 2 * macs,
        "baseline_macs": base,
        "baseline_flops": 2 * base,
        "saved_pct": 100.0 * (base - macs) / base if base else 0.0,
        "exact": bool(est["exact"]),
        "tokens_per_block": list(est["tokens"]),
        "tokens_last_block": est["tokens"][-1] if est["tokens"] else 0,
        "tokens_total": n,
        "estimate_ms": ms,
        "convention": MACS_NOTE,
    }


def gmacs(macs: float) -> str:
    """MACs as GMACs with two decimals (also used for FLOPs as GFLOPs)."""
    return f"{macs / 1e9:.2f}"


def readout_markdown(summary: dict[str, Any] | None, kind: str = "estimate", extra: str = "") -> str:
    """The MAC / FLOP line above the tabs."""
    if summary is None:
        return "**MACs:** load an image to see the cost of a forward pass."
    how = {
        "estimate": "live estimate" + (" (block MACs exact for one pruning layer; the run adds the method's own arithmetic)"
                                       if summary["exact"] else " (later pruning steps extrapolated until the run finishes)"),
        "exact": "analytic count for this run (the token sets it kept; the FLOP counter agrees)",
    }[kind]
    saved = summary["saved_pct"]
    word = "fewer" if saved >= 0 else "more"
    return (
        f"{random_weights_line(summary)}"
        f"**{gmacs(summary['macs'])} GMACs** = {gmacs(summary['flops'])} GFLOPs per image · **{abs(saved):.1f} % {word}** than the "
        f"unpruned {gmacs(summary['baseline_macs'])} GMACs · last block computes {summary['tokens_last_block']} of "
        f"{summary['tokens_total']} tokens · *{how}*{extra}\n\n"
        f"{engine_line(summary)}"
        f"<small>1 multiply-add = 1 MAC; FLOPs = 2 x MACs; 1 GMAC = 10^9 MACs.</small>"
    )


def random_weights_line(summary: dict[str, Any]) -> str:
    """A plain-words warning first thing in the readout when the model's weights are random."""
    if summary.get("weights") != "random":
        return ""
    return f"⚠️ **{summary.get('weights_note') or 'This model runs on RANDOM weights.'}**\n\n"


def engine_line(summary: dict[str, Any]) -> str:
    """SAM: what the engine saves at rate 0 (not pruning) and the pruning saving on its own."""
    engine = summary.get("engine_saved_pct", 0.0)
    if engine <= 0:
        return ""
    return (f"engine: pad queries skipped, **−{engine:.1f} %** (not pruning: the subset path at rate 0) · "
            f"pruning: **{0.0 - summary['pruning_saved_pct'] + 0.0:+.1f} %** against {gmacs(summary['subset_rate0_macs'])} GMACs "
            f"(the subset path at rate 0) · stock encoder {gmacs(summary['baseline_macs'])} GMACs\n\n")


def report_summary(analysis: Analysis) -> dict[str, Any]:
    m = analysis.report["macs"]
    tokens = [r.tokens for r in analysis.trace.layers]
    return {
        **_engine_split(m["pruned"], m["baseline"], m.get("subset_rate0", m["baseline"])),
        "macs": m["pruned"], "flops": 2 * m["pruned"], "baseline_macs": m["baseline"], "baseline_flops": 2 * m["baseline"],
        "saved_pct": -m["delta_pct"], "exact": True, "tokens_per_block": tokens,
        "tokens_last_block": tokens[-1] if tokens else 0, "tokens_total": analysis.trace.grid[0] * analysis.trace.grid[1],
        "convention": MACS_NOTE, "weights": analysis.report.get("weights"), "weights_note": analysis.report.get("weights_note"),
    }


def json_ready(obj: Any) -> Any:
    """Report dicts -> plain JSON types (numpy scalars, tuples, NaN -> None)."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist())
    return obj


def metrics_rows(analysis: Analysis, changed_fraction: float | None = None,
                 timing: dict[str, Any] | None = None) -> list[list[str]]:
    """[quantity, value, meaning] rows; every number states its unit. MACs are analytic counts;
    times are measured, and only as ``timing`` (:meth:`Session.time_last_run`) gives them:
    unpruned and pruned timed together in one request. None: not timed yet."""
    r = analysis.report
    m, met = r["macs"], r["metrics"]
    parts = m["pruned_parts"]
    trace = analysis.trace
    n = trace.grid[0] * trace.grid[1]
    if trace.stage_ends:  # the last block's tokens are counted on the last stage's grid
        n = trace.grid_at(trace.num_blocks)[0] * trace.grid_at(trace.num_blocks)[1]
    last = trace.layers[-1].tokens if trace.layers else n

    def num(v, fmt="{:.3f}"):
        return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)

    rows = [
        ["MACs, unpruned (analytic)", f"{gmacs(m['baseline'])} GMACs ({gmacs(2 * m['baseline'])} GFLOPs)",
         "counted by formula; 1 multiply-add = 1 MAC; FLOPs = 2 x MACs"],
        ["MACs, pruned (analytic)", f"{gmacs(m['pruned'])} GMACs ({gmacs(2 * m['pruned'])} GFLOPs)",
         "whole forward: embedding, blocks, aux heads, decision, decoder; counted by formula for the tokens kept"],
        ["MAC change", f"{round(m['delta_pct'], 1) + 0.0:+.1f} %", "negative = saved; against the stock model"],
        *([["  engine: pad queries skipped", f"{m['engine_delta_pct']:+.1f} %",
             "not pruning: the subset code path skips SAM's pad-cell queries even at rate 0"],
           ["  pruning", f"{m['pruning_delta_pct']:+.1f} %", "against the subset code path at rate 0 "
            f"({gmacs(m['subset_rate0'])} GMACs)"]] if m.get("engine_delta_pct", 0.0) < 0 else []),
        ["  of which blocks", f"{gmacs(parts['blocks'])} GMACs", "transformer blocks on the tokens still alive"],
        ["  of which method", f"{parts['decision'] / 1e6:.1f} MMACs",
         "the pruning decision's own arithmetic (entropy, clustering, attention statistics)"],
        ["  of which aux heads", f"{parts['aux_heads'] / 1e6:.1f} MMACs", "auxiliary classifiers (DToP / MATP)"],
        *stage_rows(trace),
        ["Tokens in the last block", f"{last} of {n} ({100 * last / n:.0f} %)", "16 x 16 px patches still computed at the end"],
        ["Agreement with unpruned (mIoU)", num(met.get("agreement_miou")), "1 = same segmentation as without pruning"],
        ["Boundary F vs unpruned", num(met.get("boundary_f1_vs_unpruned")), "1 = same borders (2 px tolerance)"],
        ["Weights", str(r.get("weights", "—")), r.get("weights_note") or "where the model's weights came from"],
    ]
    if changed_fraction is not None:
        rows.append(["Pixels changed", f"{100 * changed_fraction:.2f} %", "pixels whose label differs from the unpruned run"])
    if met.get("miou") is not None:
        d = 100 * (met["miou"] - met["miou_baseline"])
        rows += [
            ["mIoU vs ground truth, pruned", num(met["miou"]), "0..1, higher is better"],
            ["mIoU vs ground truth, unpruned", num(met["miou_baseline"]), "0..1"],
            ["mIoU change", f"{d:+.2f} points", "points = percentage points of mIoU"],
            ["Boundary F vs ground truth", num(met.get("boundary_f1")), "0..1, borders within 2 px"],
            ["gamma (LVTP Eq. 11)", num(met.get("gamma"), "{:.2f}"),
             "% MACs saved per mIoU point lost (higher = better trade; — when mIoU did not drop)"],
        ]
    else:
        rows.append(["mIoU vs ground truth", "—", "give a ground-truth mask to get mIoU and gamma"])
    return rows + timing_rows(timing, m)


def stage_rows(trace: Trace) -> list[list[str]]:
    """MACs per stage of a hierarchical backbone (Swin), and its patch merging; [] otherwise."""
    rows = []
    for st in trace.stage_macs():
        d = 100.0 * (st["macs"] - st["macs_baseline"]) / st["macs_baseline"] if st["macs_baseline"] else 0.0
        rows.append([f"  stage {st['stage']} (blocks {st['blocks'][0]}-{st['blocks'][1]}, {st['grid'][0]} x {st['grid'][1]} grid)",
                     f"{gmacs(st['macs'])} of {gmacs(st['macs_baseline'])} GMACs ({d:+.1f} %)",
                     f"blocks of this stage; {st['tokens_last_block']} tokens enter its last block; "
                     f"{100 * st['frozen_share']:.0f} % of its output (the decoder's skip) is frozen features"])
    if trace.stage_ends:
        rows.append(["  patch merging", f"{gmacs(trace.macs.get('downsample', 0))} GMACs",
                     "2 x 2 merges between stages, on the full grid (pruned tokens keep frozen features)"])
    return rows


def timing_rows(timing: dict[str, Any] | None, macs: dict[str, Any]) -> list[list[str]]:
    """Measured wall times: unpruned and pruned timed in the same request (median, IQR), or why
    there is no time."""
    if timing is None:
        return [["Wall time (measured)", "timing…", "unpruned and pruned are timed together right after the views are drawn"]]
    if timing.get("skipped"):
        return [["Wall time (measured)", "not measured", timing["skipped"]]]
    where = (f"from block {timing['first_layer']} on (the blocks before it are the same in both)"
             if timing.get("from_cache") else "whole forward")
    how = (f"median of {timing['repeat']}, IQR in brackets; unpruned and pruned timed in this request, interleaved; "
           f"{where}; {timing['threads']} thread(s)"
           + (f", server load average {timing['load_average']:.1f}" if timing.get("load_average") is not None else ""))

    def ms(d: dict[str, Any]) -> str:
        return f"{d['median']:.0f} ms [{d['q1']:.0f}–{d['q3']:.0f}]"

    sp = timing["speedup"]
    ratio = macs["baseline"] / macs["pruned"] if macs["pruned"] else float("nan")
    return [
        ["Wall time, unpruned (measured)", ms(timing["baseline"]), how],
        ["Wall time, pruned (measured)", ms(timing["pruned"]), "the same rounds; decisions included, view-only diagnostics not"],
        ["Speedup (measured)", f"{sp['median']:.2f}x [{sp['q1']:.2f}–{sp['q3']:.2f}]",
         f"unpruned / pruned time, round by round; the MAC ratio (analytic, whole forward) is {ratio:.2f}x"],
    ]


def changed_fraction(analysis: Analysis) -> float:
    """Fraction of pixels whose label differs from the unpruned run (segments matched first)."""
    before, after = analysis.baseline.seg, analysis.trace.seg
    labels = match_segments(after.labels, before.labels) if after.kind == "segments" else after.labels
    return float((before.labels != labels).mean())


def scalar_rows(trace: Trace) -> list[list[Any]]:
    rows = []
    for s in trace.steps:
        for name, value in s.diagnostics.items():
            if isinstance(value, (int, float, np.floating, np.integer)) or (isinstance(value, np.ndarray) and value.ndim == 0):
                rows.append([s.layer, name, round(float(value), 4), SCALAR_INFO.get(name, "")])
        rows.append([s.layer, "decision time", round(s.decide_ms, 1), "ms spent choosing the tokens"])
    return rows
