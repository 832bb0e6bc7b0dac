"""One analysis turned into pictures and captions: the token map after any block, token depth,
the method's signals per tab, the segmentation before / after. Numpy images and strings only."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from .. import viz
from ..analysis import Analysis
from ..engine import StepRecord
from ..methods.base import EXITED, GONE, KEPT, PENDING_KEPT, PRUNED, STATUS_LABELS, STATUSES
from ..metrics import match_segments
from .charts import charts, histogram_figure
from .tables import metrics_rows, readout_markdown, report_summary, scalar_rows
from .lesson import kept_by_class_line
from .texts import NO_SIGNALS, diag_info


CATEGORICAL = {"cluster1", "cluster2", "predicted_class", "retained"}


ROBUST = {"sobel", "edge_energy"}  # a few strong edges would flatten the colour scale: clip at the 99th percentile

# Signals with a natural range are drawn on it, so maps compare across methods, layers and runs;
# the others on their 2nd-98th percentile (one outlier, e.g. an attention sink, would otherwise
# set a linear scale and leave the map uniform), and the bar says so.
FIXED_RANGE: dict[str, tuple[float, float]] = {
    "confidence": (0.0, 1.0), "alpha": (0.0, 1.0), "weight": (0.0, 1.0), "relation": (-1.0, 1.0),
}


# Which diagnostics each method-specific tab shows (in this order); anything a method returns
# that no tab lists goes to the generic "signals" tab.
METHOD_TABS: dict[str, dict[str, list[str]]] = {
    "lvtp": {
        "entropy": ["entropy_q1", "entropy_q2", "entropy", "alpha"],
        "edges": ["sobel", "edge_energy"],
        "clusters": ["cluster1", "cluster2", "score", "weight"],
    },
    "dtop": {"exits": ["confidence", "entropy", "predicted_class", "retained"]},
    "matp": {"facets": ["confidence", "entropy", "relation", "score", "predicted_class", "retained"]},
}


VIEW_TABS = ("entropy", "edges", "clusters", "exits", "facets", "signals")


STATUS_ORDER = tuple(s.code for s in STATUSES)


def _swatch_css(code: int) -> str:
    """A legend swatch drawn the way the map draws the status over an image (outline, tint,
    hatching), in the same colour."""
    r, g_, b = viz.STATUS_COLOURS[code]
    c = f"rgb({r},{g_},{b})"
    _, kind = viz.STATUS_STYLE[code]
    if kind == "outline":
        fill = f"rgba({r},{g_},{b},{viz.STATUS_STYLE[code][0]})"
        return f"background:{fill};border:3px solid {c}"
    line = "#787878" if code == GONE else "#fff"
    hatch = f"repeating-linear-gradient(45deg,{line} 0 1px,{c} 1px 5px)"
    if kind == "cross":
        hatch = f"repeating-linear-gradient(-45deg,{line} 0 1px,transparent 1px 5px),{hatch}"
    return f"background:{hatch};border:1px solid #333"


def legend_html() -> str:
    """Token-status legend drawn like the maps (Okabe-Ito colours, colour-blind safe; outline,
    tint or hatching over the image, flat colours when the image is hidden)."""
    items = []
    for status in STATUSES:
        items.append(
            f"<span style='display:inline-flex;align-items:center;margin-right:14px;white-space:nowrap'>"
            f"<span style='width:16px;height:16px;{_swatch_css(status.code)};box-sizing:border-box;"
            f"display:inline-block;margin-right:5px'></span><b>{status.label}</b>"
            f"&nbsp;<span style='opacity:.75'>— {status.meaning}</span></span>"
        )
    return "<div style='line-height:1.9'>" + " ".join(items) + "</div>"


def class_legend_html(seg) -> str:
    if seg.kind != "semantic" or seg.palette is None:
        return ("<small>Colours are anonymous segments (SAM masks or feature clusters): the same colour in "
                "the two images need not be the same segment.</small>")
    items = []
    for name, (r, g_, b) in zip(seg.class_names, seg.palette):
        items.append(f"<span style='display:inline-flex;align-items:center;margin-right:12px'>"
                     f"<span style='width:14px;height:14px;background:rgb({r},{g_},{b});border:1px solid #333;"
                     f"display:inline-block;margin-right:4px'></span>{name}</span>")
    return "<div>" + " ".join(items) + "</div>"


def resize_note(analysis: Analysis) -> str:
    """'The model saw it resized 720 x 480 → 512 x 512 px' when it did ('' otherwise)."""
    prep = analysis.baseline.prep
    (oh, ow), (vh, vw) = prep.orig_hw, prep.valid_hw
    if (oh, ow) == (vh, vw):
        return ""
    how = "squashed" if abs(ow / oh - vw / vh) > 0.01 else "scaled"
    return (f" The model saw the image {how}: {ow} x {oh} → {vw} x {vh} px; the maps are drawn back at "
            f"the image's {ow}:{oh} shape.")


def at_image_aspect(rgb: np.ndarray, orig_hw: tuple[int, int]) -> np.ndarray:
    """A map of the model input (any aspect) stretched back to the original image's aspect,
    keeping its width (nearest neighbour: token edges stay sharp)."""
    h, w = rgb.shape[:2]
    target_h = max(1, round(w * orig_hw[0] / orig_hw[1]))
    if abs(target_h - h) <= 1:
        return rgb
    return cv2.resize(rgb, (w, target_h), interpolation=cv2.INTER_NEAREST)


def token_map_geometry(analysis: Analysis) -> tuple[tuple[int, int], tuple[float, float]]:
    """(H, W) of the token map as drawn, and the share of the token grid it covers (height,
    width; below 1 where the model input was padded): what a click is mapped back with."""
    img = analysis.model_image
    k = map_scale(img)
    w = img.shape[1] * k
    h = img.shape[0] * k
    oh, ow = analysis.baseline.prep.orig_hw
    target_h = max(1, round(w * oh / ow))
    gh, gw = analysis.trace.grid
    patch = analysis.baseline.prep.image01.shape[1] / gh
    valid = (img.shape[0] / (gh * patch), img.shape[1] / (gw * patch))
    return (h if abs(target_h - h) <= 1 else target_h, w), valid


def map_scale(img: np.ndarray) -> int:
    """Small model inputs (timm at 224 px) are drawn larger, token for token."""
    return max(1, -(-480 // img.shape[1]))


def token_map_view(analysis: Analysis, layer: int, num_blocks: int, patch: int, show_image: bool = True) -> tuple[np.ndarray, str]:
    """Token map after block ``layer`` (at the image's aspect) and a caption counting each status."""
    trace = analysis.trace
    img = analysis.model_image
    grid = trace.status_at(layer)
    n = grid.size
    counts = {s: int((grid == s).sum()) for s in STATUS_ORDER}
    going_on = counts[KEPT] + counts[PENDING_KEPT]
    step = next((s for s in trace.steps if s.layer == layer), None)
    where = trace.layer_label(layer) if trace.stage_ends else f"block {layer}"
    on_grid = f" of its {grid.shape[0]} x {grid.shape[1]} grid" if trace.stage_ends else ""
    if layer >= num_blocks:
        head = f"**After the last block ({where})**: {going_on} of {n} tokens{on_grid} reach the decoder with fresh features"
    else:
        head = f"**After {where}**: {going_on} of {n} tokens{on_grid} ({100 * going_on / n:.0f} %) go on into block {layer + 1}"
    if step is not None:
        parts = [f"{counts[s]} {STATUS_LABELS[s]}" for s in STATUS_ORDER if counts[s]]
        tail = f" — pruning layer: {', '.join(parts)}."
    elif layer < trace.plan_layers[0]:
        tail = f" — no pruning yet (first pruning layer: {trace.plan_layers[0]})."
    else:
        tail = " — no decision at this layer; grey tokens were removed earlier."
    k = map_scale(img)
    if k > 1:
        img = np.repeat(np.repeat(img, k, axis=0), k, axis=1)
    stride = trace.grid[0] // grid.shape[0]  # > 1 at the coarser stages of a hierarchical backbone
    drawn = viz.token_status_map(img, grid, patch * k * stride, show_image=show_image)
    return at_image_aspect(drawn, analysis.baseline.prep.orig_hw), head + tail + resize_note(analysis)


def depth_view(analysis: Analysis, num_blocks: int, patch: int, width: int = 420) -> np.ndarray:
    """Token depth / exit stages: the last block each token went through (one fixed colour per
    depth, :func:`viz.depth_colour`, the same in every method and run)."""
    trace = analysis.trace
    img, patch = scaled_model_image(analysis, width, patch)
    layers = sorted({int(v) for v in np.unique(trace.drop_layer)})
    colours = {layer: viz.depth_colour(layer, num_blocks) for layer in layers}
    cats = []
    for layer in layers:
        if layer >= num_blocks:
            name = f"all {num_blocks} blocks"
        else:
            exited = bool(trace.exited[trace.drop_layer == layer].any())
            name = f"{'exited' if exited else 'left'} after {layer}"
        cats.append((name, colours[layer]))
    body = viz.category_overlay(img, trace.drop_layer.astype(np.int32), patch, colours)
    title = ("Exit stages: where each token left (its prediction was fixed there)" if trace.exited.any()
             else "Token depth: the last block each token went through")
    body = at_image_aspect(body, analysis.baseline.prep.orig_hw)
    return viz.titled_panel(body, title, viz.colorbar(width, categories=cats), width=width)


def scaled_model_image(analysis: Analysis, width: int, patch: int) -> tuple[np.ndarray, float]:
    """The model-input image scaled to ``width`` px and the token size at that scale."""
    img = analysis.model_image
    scale = width / img.shape[1]
    return resize(img, (max(1, round(img.shape[0] * scale)), width)), patch * scale


def cluster_fates(ids: np.ndarray, status_grid: np.ndarray) -> dict[int, str]:
    """Cluster id -> what became of its tokens at this step ("kept", "pruned", "mixed": some of
    each, e.g. pending tokens split by the second pass), for the legend's cut-offs."""
    out = {}
    for c in np.unique(ids[ids >= 0]):
        st = status_grid[ids == c]
        gone = np.isin(st, (PRUNED, EXITED))
        out[int(c)] = "kept" if not gone.any() else ("pruned" if gone.all() else "mixed")
    return out


def _diag_panel(name: str, value: np.ndarray, img: np.ndarray, patch: float, grid: tuple[int, int], seg_classes, width: int,
                method: str = "", status_grid: np.ndarray | None = None,
                orig_hw: tuple[int, int] | None = None) -> np.ndarray:
    title, unit = diag_info(method, name)
    fates = None
    if name in ("cluster1", "cluster2") and status_grid is not None:
        fates = cluster_fates(np.where(np.isfinite(value), value, -1).astype(np.int32), status_grid)
        unit = "cluster rank: what became of its tokens here"
    if value.shape == grid:
        if name in CATEGORICAL:
            ids = np.where(np.isfinite(value), value, -1).astype(np.int32)
            present = sorted(int(v) for v in np.unique(ids) if v >= 0)
            if name == "predicted_class" and seg_classes is not None:
                names, palette = seg_classes
                colours = {c: tuple(int(x) for x in palette[c % len(palette)]) for c in present}
                cats = [(names[c] if c < len(names) else str(c), colours[c]) for c in present]
            elif name == "retained":
                colours = {0: (90, 90, 90), 1: (230, 159, 0)}
                cats = [("no", colours[0]), ("yes: kept for context", colours[1])]
            else:
                cols = viz.discrete_colours(len(present), "viridis")
                colours = dict(zip(present, cols))
                cats = [(f"{c}{(' ' + fates[c]) if fates and c in fates else ''}", colours[c]) for c in present]
            body = viz.category_overlay(img, ids, patch, colours)
            body = at_image_aspect(body, orig_hw) if orig_hw else body
            return viz.titled_panel(body, title, viz.colorbar(width, categories=cats, label=unit), width=width)
        if name in FIXED_RANGE:
            lo, hi = FIXED_RANGE[name]
            unit += " (fixed scale)"
        elif name in ROBUST:
            lo, hi = float(np.nanmin(value)), float(np.nanpercentile(value, 99))
            unit += " (top 1 % clipped)"
        else:
            lo, hi = (float(v) for v in np.nanpercentile(value, (2, 98)))
            unit += " · colour scale: 2nd-98th percentile of this layer's tokens"
        body, lo, hi = viz.value_overlay(img, value, patch, "viridis", vmin=lo, vmax=hi)
    else:  # pixel-level map (e.g. Sobel) over the model input (padding cropped), scaled like the image
        full_h, full_w = round(grid[0] * patch), round(grid[1] * patch)
        v = resize(value.astype(np.float32), (full_h, full_w))[: img.shape[0], : img.shape[1]]
        body, lo, hi = viz.value_overlay(img, v, None, "cividis", vmax=float(np.percentile(v, 99)), alpha=0.9)
        unit += " (top 1 % clipped)"
    bar = viz.colorbar(width, "cividis" if value.shape != grid else "viridis", lo, hi, unit)
    body = at_image_aspect(body, orig_hw) if orig_hw else body
    return viz.titled_panel(body, title, bar, width=width)


def diagnostics_panels(
    analysis: Analysis, step: StepRecord, names: list[str], patch: int, ncols: int = 2, width: int = 340
) -> np.ndarray | None:
    """One tiled image of the named per-token / per-pixel diagnostics of one pruning step."""
    img, patch = scaled_model_image(analysis, width, patch)
    seg = analysis.baseline.seg
    classes = (seg.class_names, seg.palette) if seg.kind == "semantic" and seg.palette is not None else None
    panels = []
    for name in names:
        value = step.diagnostics.get(name)
        if not isinstance(value, np.ndarray) or value.ndim != 2 or not np.isfinite(value).any():
            continue
        stride = analysis.trace.grid[0] // step.status_grid.shape[0]  # the step's stage (hierarchical backbones)
        panels.append(_diag_panel(name, value, img, patch * stride, step.status_grid.shape, classes, width, analysis.trace.method,
                                  step.status_grid, analysis.baseline.prep.orig_hw))
    if not panels:
        return None
    return viz.tile(panels, ncols)


def tabs_for(method: str, diagnostics: dict[str, Any] | None = None) -> dict[str, list[str]]:
    """Tab id -> diagnostics to draw; a method without its own tabs gets "signals" (all maps)."""
    tabs = {k: list(v) for k, v in METHOD_TABS.get(method, {}).items()}
    if diagnostics is not None:
        listed = {n for names in tabs.values() for n in names}
        rest = [n for n, v in diagnostics.items() if isinstance(v, np.ndarray) and v.ndim == 2 and n not in listed]
        if rest:
            tabs["signals"] = rest
    elif method not in METHOD_TABS:
        tabs["signals"] = []
    return tabs


def layer_views(analysis: Analysis, layer: int, num_blocks: int, patch: int, show_image: bool = True,
                gt: np.ndarray | None = None, panels: bool = True) -> dict[str, Any]:
    """Everything that follows the layer slider: token map, caption (with the share of each
    class's tokens kept: by ``gt`` when given, else by the unpruned prediction), method tabs,
    histogram. ``panels=False``: the method tabs and the histogram are left out (None), for a
    page where they are hidden; they are drawn when their tab is opened."""
    trace = analysis.trace
    token_img, caption = token_map_view(analysis, int(layer), num_blocks, patch, show_image)
    per_class = kept_by_class_line(analysis, gt)
    out: dict[str, Any] = {"token_map": token_img, "token_caption": caption + (f"\n\n{per_class}" if per_class else "")}
    step = trace.step_at(int(layer))
    tabs = tabs_for(trace.method, step.diagnostics if step is not None else {})
    for tab in VIEW_TABS:
        names = tabs.get(tab)
        out[tab] = diagnostics_panels(analysis, step, names, patch) if panels and names and step is not None else None
    out["tabs"] = {tab: tab in tabs for tab in VIEW_TABS}
    out["histogram"] = histogram_figure(step, trace.method) if panels and step is not None else None
    if step is not None and step.layer > int(layer):
        out["panel_note"] = (f"Nothing is pruned before layer {step.layer}: the method signals shown are those of the "
                             f"first pruning layer, {step.layer}.")
    elif step is not None and step.layer != int(layer):
        out["panel_note"] = f"Method signals shown for pruning layer {step.layer} (the last one at or before layer {layer})."
    else:
        out["panel_note"] = f"Method signals at pruning layer {layer}." if step is not None else "This method has no per-token signals."
    if not tabs or all(out[t] is None for t in VIEW_TABS):
        out["panel_note"] = NO_SIGNALS.get(trace.method, out["panel_note"])
    return out


def segmentation_views(analysis: Analysis, image: np.ndarray) -> dict[str, Any]:
    """Before / after colour maps, change map over the image, caption."""
    before, after = analysis.baseline.seg, analysis.trace.seg
    a_labels = after.labels
    if after.kind == "segments":
        a_labels = match_segments(after.labels, before.labels)
    img = image if image.shape[:2] == before.labels.shape else resize(image, before.labels.shape)
    cb = viz.colorize_labels(before.labels, before.palette)
    ca = viz.colorize_labels(a_labels, after.palette if after.kind == "semantic" else before.palette)
    changed = before.labels != a_labels
    frac = float(changed.mean())
    cap = (f"**{100 * frac:.2f} %** of the pixels changed class after pruning (vermillion on the right-hand map)."
           if after.kind == "semantic" else
           f"**{100 * frac:.2f} %** of the pixels changed segment after pruning (segments matched first).")
    return {
        "pair": (viz.blend(img, cb, 0.6), viz.blend(img, ca, 0.6)),
        "change": viz.change_map(img, before.labels, a_labels),
        "legend": class_legend_html(before),
        "caption": cap,
        "changed_fraction": frac,
    }


def resize(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """H x W (x C) -> hw[0] x hw[1] (x C), area interpolation (for shrinking)."""
    return cv2.resize(image, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)


def full_views(analysis: Analysis, image: np.ndarray, layer: int, num_blocks: int, patch: int,
               show_image: bool = True, gt: np.ndarray | None = None) -> dict[str, Any]:
    """Every view of one analysis (what the first run and each re-run draw)."""
    out = layer_views(analysis, layer, num_blocks, patch, show_image, gt)
    seg = segmentation_views(analysis, image)
    out["seg"] = seg
    out["depth"] = depth_view(analysis, num_blocks, patch)
    out["metrics"] = metrics_rows(analysis, seg["changed_fraction"])
    out["scalars"] = scalar_rows(analysis.trace)
    out["charts"] = charts(analysis)
    out["readout"] = readout_markdown(report_summary(analysis), "exact")
    return out
