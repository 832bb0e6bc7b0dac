"""Play the layers: one narrated frame per block (1 -> N), and the sequence as a GIF for slides.
Numpy images, strings and a file path; no gradio."""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

import numpy as np

from .. import viz
from ..analysis import Analysis
from ..methods.base import EXITED, GONE, KEPT, PENDING_KEPT, PRUNED
from .views import token_map_view

GIF_DIR = Path(tempfile.gettempdir()) / "prune_viz_gifs"


def narration(analysis: Analysis, layer: int, num_blocks: int) -> str:
    """One line saying what happens after block ``layer`` (plain text, for captions and GIFs)."""
    trace = analysis.trace
    grid = trace.status_at(layer)
    n = grid.size
    alive = int(np.isin(grid, (KEPT, PENDING_KEPT)).sum())
    step = next((s for s in trace.steps if s.layer == layer), None)
    method = trace.method
    if step is not None:
        pruned = int((grid == PRUNED).sum())
        exited = int((grid == EXITED).sum() - (trace.exited & (trace.drop_layer < layer)).sum())
        what = []
        if pruned:
            what.append(f"prunes {pruned}")
        if exited > 0:
            what.append(f"lets {exited} exit with their prediction")
        did = " and ".join(what) or "removes none"
        return f"Block {layer} of {num_blocks} — pruning layer: {method} {did}; {alive} of {n} tokens ({100 * alive / n:.0f} %) go on."
    if layer < trace.plan_layers[0]:
        return f"Block {layer} of {num_blocks} computes all {n} tokens; nothing is pruned before layer {trace.plan_layers[0]}."
    gone = int(np.isin(grid, (GONE, EXITED)).sum())
    if layer >= num_blocks:
        return f"Block {layer} of {num_blocks} (the last): {alive} tokens arrive with fresh features; {gone} kept the features they had when removed."
    return f"Block {layer} of {num_blocks} computes only {alive} of {n} tokens ({100 * alive / n:.0f} %); {gone} are no longer computed."


def frames(analysis: Analysis, num_blocks: int, patch: int, width: int = 480) -> list[np.ndarray]:
    """One titled token map per block 1..num_blocks (H x W x 3 uint8 each, equal sizes)."""
    out = []
    for layer in range(1, num_blocks + 1):
        rgb, _ = token_map_view(analysis, layer, num_blocks, patch)
        out.append(viz.titled_panel(rgb, narration(analysis, layer, num_blocks), width=width))
    h = max(f.shape[0] for f in out)
    return [np.pad(f, ((0, h - f.shape[0]), (0, 0), (0, 0)), constant_values=255) for f in out]


def frames_in_sync(analyses: list[Analysis], num_blocks: int, patch: int, width: int = 300) -> list[np.ndarray]:
    """Several methods on the same image, block by block side by side (up to 4 per row): one
    frame per block, each map titled with its method and what it did there."""
    out = []
    for layer in range(1, num_blocks + 1):
        panels = []
        for a in analyses:
            rgb, _ = token_map_view(a, layer, num_blocks, patch)
            method = a.trace.method
            line = narration(a, layer, num_blocks).replace(f"Block {layer} of {num_blocks}", "", 1).lstrip(" —:").replace("(the last): ", "", 1)
            line = line.replace("pruning layer: ", "pruning layer, ", 1).replace(f", {method} ", ": ", 1)
            panels.append(viz.titled_panel(rgb, f"{method} — {line}", width=width))
        tiled = viz.tile(panels, ncols=min(4, len(panels)))
        out.append(viz.titled_panel(tiled, f"Block {layer} of {num_blocks}", width=tiled.shape[1], font_size=16))
    h = max(f.shape[0] for f in out)
    return [np.pad(f, ((0, h - f.shape[0]), (0, 0), (0, 0)), constant_values=255) for f in out]


def write_gif(analysis: Analysis | list[Analysis], num_blocks: int, patch: int, ms_per_frame: int = 900,
              folder: Path = GIF_DIR) -> Path:
    """The layer sequence as an endlessly looping GIF (Pillow), the last frame held longer; a
    list of analyses (one image, several methods) plays them in sync, side by side."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    _clean_old(folder, 3600)
    many = isinstance(analysis, list)
    drawn = frames_in_sync(analysis, num_blocks, patch) if many else frames(analysis, num_blocks, patch)
    images = [Image.fromarray(f) for f in drawn]
    name = "_".join(a.trace.method for a in analysis) if many else analysis.trace.method
    path = folder / f"prune_viz_{name}_{uuid.uuid4().hex[:8]}.gif"
    durations = [ms_per_frame] * (len(images) - 1) + [3 * ms_per_frame]
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0, optimize=False)
    return path


def _clean_old(folder: Path, max_age_s: float) -> None:
    """GIFs older than ``max_age_s`` go (Gradio has copied them into its cache long before)."""
    import time

    for p in folder.glob("*.gif"):
        try:
            if time.time() - p.stat().st_mtime > max_age_s:
                p.unlink()
        except OSError:
            pass
