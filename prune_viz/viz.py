"""Drawing: token maps, heatmaps, segmentations as RGB arrays (never imports gradio).

Colours are colour-blind safe: token statuses use Okabe-Ito hues, heatmaps use viridis /
cividis, segment ids use a fixed Tol-like qualitative table.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from .methods.base import EXITED, KEPT, PENDING_KEPT, PRUNED

GONE = -1
# Okabe-Ito: blue (kept), orange (pending then kept), grey (pruned), reddish purple (exited).
STATUS_COLOURS: dict[int, tuple[int, int, int]] = {
    KEPT: (0, 114, 178),
    PENDING_KEPT: (230, 159, 0),
    PRUNED: (90, 90, 90),
    EXITED: (204, 121, 167),
    GONE: (40, 40, 40),
}
STATUS_LABELS = {KEPT: "kept", PENDING_KEPT: "pending → kept", PRUNED: "pruned here", EXITED: "exited (final)", GONE: "gone earlier"}

SEGMENT_TABLE = np.array(
    [
        (0, 0, 0), (68, 119, 170), (238, 102, 119), (34, 136, 51), (204, 187, 68), (102, 204, 238),
        (170, 51, 119), (187, 187, 187), (238, 119, 51), (0, 153, 136), (51, 34, 136), (136, 204, 238),
        (221, 204, 119), (17, 119, 51), (136, 34, 85), (68, 170, 153),
    ],
    dtype=np.uint8,
)


def image_to_uint8(image01: torch.Tensor, valid_hw: tuple[int, int] | None = None) -> np.ndarray:
    """3 x H x W float [0, 1] -> H x W x 3 uint8, cropped to the valid (unpadded) region."""
    arr = (image01.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    if valid_hw is not None:
        arr = arr[: valid_hw[0], : valid_hw[1]]
    return np.ascontiguousarray(arr)


def colorize_labels(labels: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """H x W int labels -> H x W x 3 uint8. Semantic maps use ``palette``; anonymous segments a
    fixed qualitative table (id 0 black = no segment)."""
    table = palette if palette is not None else SEGMENT_TABLE
    return table[np.mod(labels, len(table))]


def blend(image: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Alpha-blend two H x W x 3 uint8 arrays."""
    return cv2.addWeighted(image, 1.0 - alpha, colours, alpha, 0.0)


def upsample_grid(grid: np.ndarray, hw: tuple[int, int], valid_hw: tuple[int, int] | None = None) -> np.ndarray:
    """gh x gw map -> H x W by nearest neighbour (each token covers its patch); cropped to the
    valid region when the model input was padded."""
    h, w = hw
    up = cv2.resize(grid, (w, h), interpolation=cv2.INTER_NEAREST)
    if valid_hw is not None:
        up = up[: valid_hw[0], : valid_hw[1]]
    return up


def token_status_map(image: np.ndarray, status_grid: np.ndarray, patch: int, draw_grid: bool = True) -> np.ndarray:
    """Draw token statuses over the model-input image (H x W x 3 uint8, H = gh * patch or less
    when cropped). Kept tokens stay visible with a light tint, pruned / gone tokens are dimmed."""
    gh, gw = status_grid.shape
    h, w = gh * patch, gw * patch
    canvas = np.zeros((h, w, 3), np.uint8)
    canvas[: image.shape[0], : image.shape[1]] = image[:h, :w]
    status_px = upsample_grid(status_grid.astype(np.int16), (h, w))
    out = canvas.copy()
    for status, colour in STATUS_COLOURS.items():
        mask = status_px == status
        if not mask.any():
            continue
        alpha = {KEPT: 0.25, PENDING_KEPT: 0.55, PRUNED: 0.75, EXITED: 0.6, GONE: 0.85}[status]
        out[mask] = (canvas[mask] * (1 - alpha) + np.array(colour) * alpha).astype(np.uint8)
    if draw_grid and patch >= 6:
        out[::patch, :] = (out[::patch, :] * 0.6).astype(np.uint8)
        out[:, ::patch] = (out[:, ::patch] * 0.6).astype(np.uint8)
    return out[: image.shape[0], : image.shape[1]]


def heatmap(values: np.ndarray, cmap: str = "viridis", vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """2-D float map (NaN = no value) -> RGB uint8 through a matplotlib colormap; NaN drawn dark grey."""
    from matplotlib import colormaps

    v = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(v)
    lo = np.nanmin(v) if vmin is None and finite.any() else (vmin or 0.0)
    hi = np.nanmax(v) if vmax is None and finite.any() else (vmax if vmax is not None else 1.0)
    scaled = np.clip((v - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    rgb = (colormaps[cmap](np.where(finite, scaled, 0))[..., :3] * 255).astype(np.uint8)
    rgb[~finite] = (40, 40, 40)
    return rgb


def grid_heatmap_over(image: np.ndarray, grid_values: np.ndarray, patch: int, cmap: str = "viridis", alpha: float = 0.6) -> np.ndarray:
    """Per-token values drawn over the image (each token fills its patch)."""
    gh, gw = grid_values.shape
    up = upsample_grid(grid_values.astype(np.float32), (gh * patch, gw * patch))[: image.shape[0], : image.shape[1]]
    return blend(image, heatmap(up, cmap), alpha)


def change_map(image: np.ndarray, before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Pixels whose label changed, in vermillion over a dimmed image."""
    out = (image * 0.45).astype(np.uint8)
    changed = before != after
    out[changed] = (213, 94, 0)
    return out
