"""A lecture-ready composite of one run (matplotlib): the token map at every pruning layer, the
status legend, the segmentation before / after, the change map and the key numbers, with a
title. Written as PNG (raster, for slides) and SVG / PDF (vector text and legend)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from .. import viz
from ..analysis import Analysis
from ..methods.base import STATUSES
from .lesson import kept_by_class_line
from .views import segmentation_views, token_map_view

FORMATS = ("png", "svg", "pdf")


def key_numbers(analysis: Analysis) -> str:
    """Three short lines: MACs, agreement / mIoU, tokens at the end (units stated)."""
    rep = analysis.report
    m, met = rep["macs"], rep["metrics"]
    lines = [f"{m['baseline'] / 1e9:.2f} → {m['pruned'] / 1e9:.2f} GMACs ({round(-m['delta_pct'], 1) + 0.0:.1f} % saved; "
             "1 MAC = 1 multiply-add, FLOPs = 2 x MACs)"]
    quality = f"agreement with the unpruned model: mIoU {met['agreement_miou']:.3f}"
    if met.get("miou") is not None:
        quality += f"; vs ground truth: mIoU {met['miou_baseline']:.3f} → {met['miou']:.3f}"
    lines.append(quality)
    trace = analysis.trace
    lines.append(f"last block computes {trace.final_tokens} of {trace.grid[0] * trace.grid[1]} tokens")
    return "\n".join(lines)


def lecture_figure(analysis: Analysis, image: np.ndarray, num_blocks: int, patch: int, title: str | None = None,
                   width_in: float = 13.0):
    """The composite as a matplotlib Figure (the caller saves or closes it)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    trace = analysis.trace
    layers = list(trace.plan_layers) + ([num_blocks] if trace.plan_layers[-1] != num_blocks else [])
    seg = segmentation_views(analysis, image)
    panels = [(token_map_view(analysis, layer, num_blocks, patch)[0],
               f"after block {layer}" + (" (pruning)" if layer in trace.plan_layers else " (last)")) for layer in layers]
    panels += [(seg["pair"][0], "segmentation, unpruned"), (seg["pair"][1], "segmentation, pruned"),
               (seg["change"], f"changed pixels ({100 * seg['changed_fraction']:.2f} %)")]
    ncols = min(4, len(panels))
    nrows = -(-len(panels) // ncols)
    panel_h = width_in / ncols + 0.4  # square maps plus their titles, in inches
    fig_h = nrows * panel_h + 0.8 + 1.9  # + the title band + the legend / numbers band
    fig = plt.figure(figsize=(width_in, fig_h))
    gs = fig.add_gridspec(nrows + 1, ncols, height_ratios=[panel_h] * nrows + [1.9], top=1 - 0.8 / fig_h,
                          bottom=0.01, left=0.01, right=0.99, hspace=0.2, wspace=0.05)
    for i, (rgb, name) in enumerate(panels):
        ax = fig.add_subplot(gs[i // ncols, i % ncols])
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(name, fontsize=11)
        ax.axis("off")
    rep = analysis.report
    params = ", ".join(f"{k}={v}" for k, v in trace.params.items() if not isinstance(v, (list, tuple)))
    head = (title or f"{rep['method']} on {rep['backbone']}, pruning after layer(s) {', '.join(map(str, trace.plan_layers))}"
            + (f"\n{params}" if params else ""))
    fig.suptitle(head, fontsize=13, y=1 - 0.08 / fig_h, va="top")
    handles = [Patch(facecolor=np.array(viz.STATUS_COLOURS[s.code]) / 255, edgecolor="black",
                     label=f"{s.label}: {s.meaning}") for s in STATUSES]
    half = max(1, ncols // 2)
    legend_ax = fig.add_subplot(gs[nrows, :half])
    legend_ax.axis("off")
    legend_ax.legend(handles=handles, loc="upper left", fontsize=9, frameon=False, title="token status (same colours everywhere)",
                     title_fontsize=9)
    text_ax = fig.add_subplot(gs[nrows, half:])
    text_ax.axis("off")
    per_class = kept_by_class_line(analysis).replace("**", "")
    body = key_numbers(analysis) + ("\n" + per_class if per_class else "")
    wrapped = "\n".join(textwrap.fill(line, 95) for line in body.split("\n"))
    text_ax.text(0.0, 1.0, wrapped, ha="left", va="top", fontsize=9, transform=text_ax.transAxes)
    return fig


def write_figure(analysis: Analysis, image: np.ndarray, num_blocks: int, patch: int, stem: Path,
                 formats: tuple[str, ...] = FORMATS, dpi: int = 120) -> list[Path]:
    """``stem``.png / .svg / .pdf; returns the paths written."""
    import matplotlib.pyplot as plt

    fig = lecture_figure(analysis, image, num_blocks, patch)
    paths = []
    try:
        for fmt in formats:
            path = stem.with_suffix(f".{fmt}")
            fig.savefig(path, dpi=dpi, format=fmt)
            paths.append(path)
    finally:
        plt.close(fig)
    return paths
