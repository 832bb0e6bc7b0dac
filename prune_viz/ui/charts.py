"""Plotly figures built as plain JSON-ready dicts: plotly's Figure objects validate every
property in Python, which costs more than the pruned forward on this app's budget."""

from __future__ import annotations

import numpy as np

from ..analysis import Analysis
from ..engine import StepRecord
from .texts import diag_info

# Distribution plot per method: (diagnostic, scalar drawn as the cut-off line).


HISTOGRAMS: dict[str, tuple[str, str]] = {"dtop": ("confidence", "threshold"), "matp": ("score", "adaptive_threshold")}


BLUE, ORANGE, GREY, VERMILLION = "rgb(0,114,178)", "rgb(230,159,0)", "rgb(150,150,150)", "rgb(213,94,0)"


def _vline(x: float, colour: str, dash: str = "dot", width: int = 2) -> dict:
    return {"type": "line", "x0": x, "x1": x, "y0": 0, "y1": 1, "xref": "x", "yref": "paper",
            "line": {"color": colour, "dash": dash, "width": width}}


def _figure(traces: list[dict], title: str, ytitle: str, xtitle: str = "block (layer, 1-based)", height: int = 340) -> dict:
    return {
        "data": traces,
        "layout": {
            "title": {"text": title}, "xaxis": {"title": {"text": xtitle}}, "yaxis": {"title": {"text": ytitle}},
            "height": height, "margin": {"l": 60, "r": 20, "t": 50, "b": 80}, "barmode": "group", "hovermode": "x unified",
            "legend": {"orientation": "h", "x": 1, "y": -0.22, "xanchor": "right", "yanchor": "top"},
        },
    }


def charts(analysis: Analysis) -> tuple[dict, dict, dict]:
    """Plotly figures (JSON-ready dicts): tokens per block, MACs per block (unpruned vs pruned),
    cumulative MACs through the forward."""
    trace = analysis.trace
    layers = [r.layer for r in trace.layers]
    n = trace.grid[0] * trace.grid[1]
    f1 = _figure(
        [{"type": "bar", "x": layers, "y": [r.tokens for r in trace.layers], "name": "pruned run", "marker": {"color": BLUE}},
         {"type": "scatter", "x": layers, "y": [r.grid[0] * r.grid[1] if r.grid else n for r in trace.layers],
          "name": "unpruned", "mode": "lines",
          "line": {"color": GREY, "dash": "dash"}}],
        "Patch tokens entering each block (dotted: pruning after that layer)", "tokens")
    f1["layout"]["shapes"] = [_vline(layer + 0.5, ORANGE) for layer in trace.plan_layers]

    base = [round(r.macs_baseline / 1e9, 5) for r in trace.layers]
    pruned = [round(r.macs / 1e9, 5) for r in trace.layers]
    f2 = _figure(
        [{"type": "bar", "x": layers, "y": base, "name": "unpruned", "marker": {"color": GREY}},
         {"type": "bar", "x": layers, "y": pruned, "name": "pruned", "marker": {"color": BLUE}}],
        "MACs per block", "GMACs (1 multiply-add = 1 MAC)")

    parts = analysis.report["macs"]["pruned_parts"]
    embed = parts["embed"] / 1e9
    decode = (parts["decode"] + parts.get("downsample", 0)) / 1e9  # hierarchical: patch merging, on the full grid
    xs = ["embed"] + [str(layer) for layer in layers] + ["decode"]
    cb = np.cumsum([embed] + base + [decode]).round(4).tolist()
    cp = np.cumsum([embed] + pruned + [decode + (parts["aux_heads"] + parts["decision"]) / 1e9]).round(4).tolist()
    f3 = _figure(
        [{"type": "scatter", "x": xs, "y": cb, "name": f"unpruned: {analysis.baseline.macs / 1e9:.2f} GMACs",
          "mode": "lines+markers", "line": {"color": GREY}},
         {"type": "scatter", "x": xs, "y": cp, "name": f"pruned: {parts['total'] / 1e9:.2f} GMACs",
          "mode": "lines+markers", "line": {"color": BLUE}}],
        "Cumulative MACs through the forward (pruned total includes aux heads and the decision)", "GMACs, cumulative",
        xtitle="stage")
    return f1, f2, f3


def histogram_figure(step: StepRecord, method: str) -> dict | None:
    """Plotly figure (as a JSON-ready dict) of the score a method thresholds, with its cut-off line."""
    if method not in HISTOGRAMS:
        return None
    name, line = HISTOGRAMS[method]
    values = step.diagnostics.get(name)
    if not isinstance(values, np.ndarray):
        return None
    v = values[np.isfinite(values)].ravel()
    title, unit = diag_info(method, name)
    fig = {
        "data": [{"type": "histogram", "x": v.round(5).tolist(), "nbinsx": 40, "marker": {"color": BLUE}, "name": name}],
        "layout": {
            "title": {"text": f"{title} — tokens alive at layer {step.layer}"},
            "xaxis": {"title": {"text": unit or name}}, "yaxis": {"title": {"text": "tokens"}},
            "height": 300, "margin": {"l": 50, "r": 20, "t": 50, "b": 40}, "showlegend": False,
        },
    }
    cut = step.diagnostics.get(line)
    if isinstance(cut, (float, int)):
        fig["layout"]["shapes"] = [_vline(float(cut), VERMILLION, "solid", 3)]
        fig["layout"]["annotations"] = [{"x": float(cut), "y": 1, "xref": "x", "yref": "paper", "yanchor": "bottom",
                                         "text": f"{line} = {float(cut):.3g}", "showarrow": False}]
    return fig
