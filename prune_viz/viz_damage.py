"""Drawings of pruning damage (no gradio): the error map against ground truth, the attribution
map (which pruned tokens the changed pixels come from), and small thumbnails for galleries.

Colours are the Okabe-Ito set the other maps use: vermillion = made worse by pruning, bluish
green = made better, blue = wrong before and after.
"""

from __future__ import annotations

import cv2
import numpy as np

from .viz import upsample_grid

WORSE = (213, 94, 0)  # right before pruning, wrong after
BETTER = (0, 158, 115)  # wrong before, right after
BOTH = (0, 114, 178)  # wrong before and after (the model's error, not pruning's)
IGNORE = (40, 40, 40)  # ground truth 255 = not labelled


def error_map(image: np.ndarray, gt: np.ndarray, before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8: the image dimmed, with the pixels whose correctness against ``gt``
    (H x W class ids, 255 = ignore) pruning changed (``before`` / ``after``: the unpruned and
    pruned labels) and those wrong in both."""
    out = (image * 0.45).astype(np.uint8)
    valid = gt != 255
    ok_b, ok_a = (before == gt) & valid, (after == gt) & valid
    out[valid & ~ok_b & ~ok_a] = BOTH
    out[ok_b & ~ok_a] = WORSE
    out[~ok_b & ok_a] = BETTER
    out[~valid] = IGNORE
    return out


def thumbnail(rgb: np.ndarray, max_side: int = 256, labels: bool = False) -> np.ndarray:
    """Downscale so the longer side is at most ``max_side`` (area averaging; nearest neighbour
    for ``labels`` drawings, whose colours must stay exact)."""
    h, w = rgb.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return rgb
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_NEAREST if labels else cv2.INTER_AREA)


def png_bytes(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def attribution_map(
    image: np.ndarray,
    changed: np.ndarray,
    share: np.ndarray,
    chosen: np.ndarray,
    patch_px: tuple[float, float],
) -> np.ndarray:
    """Where the damage comes from, over the image (H x W x 3 uint8, the original size).

    changed: H x W bool, pixels whose class pruning changed (drawn in vermillion).
    share:   gh x gw float, the share of the changed pixels restoring that token's group
             recovers (NaN: not tested); drawn as a yellow fill, stronger for a larger share.
    chosen:  gh x gw bool, the tokens named in the statement: a white outline around each.
    patch_px: (height, width) of one token in image pixels.
    """
    h, w = image.shape[:2]
    out = (image * 0.5).astype(np.float32)
    gh, gw = share.shape
    full = (max(h, round(gh * patch_px[0])), max(w, round(gw * patch_px[1])))
    s = upsample_grid(np.nan_to_num(share, nan=0.0).clip(0, 1).astype(np.float32), full)[:h, :w]
    tested = upsample_grid(np.isfinite(share).astype(np.uint8), full)[:h, :w].astype(bool)
    alpha = np.where(tested, 0.15 + 0.55 * s, 0.0)[..., None]
    out = out * (1 - alpha) + np.array((240, 228, 66), np.float32) * alpha
    out = out.clip(0, 255).astype(np.uint8)
    out[changed] = WORSE
    for r, c in zip(*np.nonzero(chosen)):
        y0, x0 = int(r * patch_px[0]), int(c * patch_px[1])
        y1, x1 = int((r + 1) * patch_px[0]) - 1, int((c + 1) * patch_px[1]) - 1
        cv2.rectangle(out, (x0, y0), (min(x1, w - 1), min(y1, h - 1)), (255, 255, 255), 1)
    return out
