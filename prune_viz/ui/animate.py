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


def write_gif(analysis: Analysis, num_blocks: int, patch: int, ms_per_frame: int = 900, folder: Path = GIF_DIR) -> Path:
    """The layer sequence as an endlessly looping GIF (Pillow), the last frame held longer."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    _clean_old(folder, 3600)
    images = [Image.fromarray(f) for f in frames(analysis, num_blocks, patch)]
    path = folder / f"prune_viz_{analysis.trace.method}_{uuid.uuid4().hex[:8]}.gif"
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
