"""Drawing: token maps, heatmaps, segmentations as RGB arrays, and PNG files (never imports gradio).

Colours are colour-blind safe: token statuses use Okabe-Ito hues, heatmaps use viridis /
cividis, segment ids use a fixed Tol-like qualitative table.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import torch

from .methods.base import EXITED, GONE, KEPT, PENDING_KEPT, PRUNED

# Okabe-Ito: blue (kept), orange (pending then kept), grey (pruned), reddish purple (exited).
STATUS_COLOURS: dict[int, tuple[int, int, int]] = {
    KEPT: (0, 114, 178),
    PENDING_KEPT: (230, 159, 0),
    PRUNED: (90, 90, 90),
    EXITED: (204, 121, 167),
    GONE: (40, 40, 40),
}

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


# How each status is drawn over the image: fill strength and pattern. Kept tokens leave the
# image clear (a tint merged with water and blue roofs); the others are filled and patterned, so
# they read over any image and in grey print. Without the image every status is a flat colour.
STATUS_STYLE: dict[int, tuple[float, str]] = {
    KEPT: (0.0, "outline"),
    PENDING_KEPT: (0.35, "outline"),
    PRUNED: (0.7, "hatch"),
    EXITED: (0.6, "cross"),
    GONE: (0.85, "hatch"),
}


@lru_cache(maxsize=16)
def _pattern(kind: str, h: int, w: int, patch: int) -> np.ndarray:
    """H x W bool: where a status's pattern goes (hatching, cross-hatching, a 1-2 px outline); cached, read-only."""
    yy, xx = np.mgrid[0:h, 0:w]
    step, t = max(4, patch // 3), 2 if patch >= 12 else 1
    if kind in ("hatch", "cross"):
        out = ((xx + yy) % step == 0) | (((xx - yy) % step == 0) if kind == "cross" else False)
    else:
        inner_y, inner_x = yy % patch, xx % patch
        out = (inner_y < t) | (inner_y >= patch - t) | (inner_x < t) | (inner_x >= patch - t)
    out.flags.writeable = False
    return out


def token_status_map(image: np.ndarray, status_grid: np.ndarray, patch: int, draw_grid: bool = True,
                     show_image: bool = True) -> np.ndarray:
    """Draw token statuses (colours: :data:`STATUS_COLOURS`, the same in every method and run)
    over the model-input image (H x W x 3 uint8, H = gh * patch or less when cropped).

    With the image: kept tokens stay clear inside a blue outline, pending-then-kept ones get an
    orange outline and tint, pruned / gone ones a grey fill with diagonal hatching, exited ones a
    purple fill with cross-hatching. ``show_image=False``: flat status colours only (the token
    grid in white), which is what a pixel read-out compares across methods."""
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
        col = np.array(colour, dtype=np.float32)
        if not show_image:
            out[mask] = colour
            continue
        alpha, kind = STATUS_STYLE[status]
        out[mask] = (canvas[mask] * (1 - alpha) + col * alpha).astype(np.uint8)
        pattern = mask & _pattern(kind, h, w, patch)
        out[pattern] = colour if kind == "outline" else ((120, 120, 120) if status == GONE else (255, 255, 255))
    if not show_image:
        if patch >= 6:
            out[::patch, :] = 255
            out[:, ::patch] = 255
    elif draw_grid and patch >= 6:
        out[::patch, :] = (out[::patch, :] * 0.6).astype(np.uint8)
        out[:, ::patch] = (out[:, ::patch] * 0.6).astype(np.uint8)
    return out[: image.shape[0], : image.shape[1]]


# Exit depth: one fixed colour per "last block a token went through", as a fraction of the
# network's depth, so "all 12 blocks" has the same colour in every method and run (it was the
# last colour of whichever depths happened to occur).
DEPTH_CMAP = "cividis"


def depth_colour(layer: int, num_blocks: int) -> tuple[int, int, int]:
    """Colour of tokens whose last block was ``layer`` (``num_blocks`` = never left)."""
    from matplotlib import colormaps

    rgba = colormaps[DEPTH_CMAP](min(1.0, max(0.0, layer / max(1, num_blocks))))
    return tuple(int(round(c * 255)) for c in rgba[:3])


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


# --------------------------------------------------------------------------- panels for the app
# Small composable drawings for the interactive views: a map with a title and a colour bar,
# tiled into one image. Drawn with Pillow (a few ms) rather than matplotlib (a few hundred ms per
# figure on two cores), so every view can be redrawn when a slider moves.

_FONT_CACHE: dict[int, object] = {}


def _font(size: int):
    """DejaVu Sans (shipped with matplotlib) at ``size`` px; Pillow's default font otherwise."""
    from PIL import ImageFont

    if size not in _FONT_CACHE:
        try:
            import matplotlib
            from pathlib import Path

            path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
            _FONT_CACHE[size] = ImageFont.truetype(str(path), size)
        except (ImportError, OSError):
            _FONT_CACHE[size] = ImageFont.load_default(size=size)
    return _FONT_CACHE[size]


def _fmt_tick(v: float) -> str:
    if v == 0 or 1e-2 <= abs(v) < 1e4:
        return f"{v:.3g}"
    return f"{v:.1e}"


def colorbar(
    width: int,
    cmap: str = "viridis",
    vmin: float = 0.0,
    vmax: float = 1.0,
    label: str = "",
    categories: list[tuple[str, tuple[int, int, int]]] | None = None,
    font_size: int = 12,
) -> np.ndarray:
    """A horizontal colour bar (H x width x 3 uint8, white background) with min / mid / max ticks,
    or, with ``categories`` (name, colour), a row of swatches for a categorical map."""
    from PIL import Image, ImageDraw

    font = _font(font_size)
    bar_h, pad = 12, 4
    x0, x1 = 6, width - 6
    rows: list[list[tuple[int, str, tuple[int, int, int]]]] = []
    if categories:  # swatches, wrapped onto as many rows as they need
        measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        x, row = x0, []
        for name, colour in categories:
            step = 16 + int(measure.textlength(name, font=font)) + 10
            if row and x + step - 10 > x1:
                rows.append(row)
                x, row = x0, []
            row.append((x, name, colour))
            x += step
        rows.append(row)
        body_h = len(rows) * (font_size + 6)
    else:
        body_h = bar_h + font_size + 2 * pad
    label_lines = _wrap(label, font, width - 8) if label else []  # a long unit wraps, never runs off
    height = body_h + 2 * pad + len(label_lines) * (font_size + 3) + (pad if label_lines else 0)
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    if categories:
        for r, row in enumerate(rows):
            y = pad + r * (font_size + 6)
            for x, name, colour in row:
                draw.rectangle([x, y, x + 12, y + 12], fill=tuple(int(c) for c in colour), outline=(0, 0, 0))
                draw.text((x + 16, y - 1), name, fill=(0, 0, 0), font=font)
    else:
        from matplotlib import colormaps

        ramp = (colormaps[cmap](np.linspace(0, 1, max(2, x1 - x0)))[:, :3] * 255).astype(np.uint8)
        arr = np.asarray(img).copy()
        arr[pad : pad + bar_h, x0:x1] = ramp[None]
        img = Image.fromarray(arr)
        draw = ImageDraw.Draw(img)
        draw.rectangle([x0, pad, x1 - 1, pad + bar_h], outline=(0, 0, 0))
        ty = pad + bar_h + 2
        for frac, anchor in ((0.0, "la"), (0.5, "ma"), (1.0, "ra")):
            value = vmin + frac * (vmax - vmin)
            x = x0 + frac * (x1 - x0 - 1)
            draw.line([x, pad + bar_h, x, pad + bar_h + 2], fill=(0, 0, 0))
            draw.text((x, ty), _fmt_tick(value), fill=(0, 0, 0), font=font, anchor=anchor)
    for i, line in enumerate(label_lines):
        y = height - pad - (len(label_lines) - 1 - i) * (font_size + 3)
        draw.text((width / 2, y), line, fill=(60, 60, 60), font=font, anchor="md")
    return np.asarray(img)


def titled_panel(rgb: np.ndarray, title: str, footer: np.ndarray | None = None, width: int = 320, font_size: int = 13) -> np.ndarray:
    """Scale ``rgb`` to ``width`` px wide, put ``title`` above (wrapped) and ``footer`` (e.g. a
    colour bar of the same width) below; white background."""
    from PIL import Image, ImageDraw

    h = max(1, int(round(rgb.shape[0] * width / rgb.shape[1])))
    body = cv2.resize(rgb, (width, h), interpolation=cv2.INTER_NEAREST if width >= rgb.shape[1] else cv2.INTER_AREA)
    font = _font(font_size)
    lines = _wrap(title, font, width - 8)
    title_h = len(lines) * (font_size + 3) + 6
    parts = [np.full((title_h, width, 3), 255, np.uint8), body]
    if footer is not None:
        parts.append(footer if footer.shape[1] == width else cv2.resize(footer, (width, footer.shape[0])))
    out = Image.fromarray(np.concatenate(parts, axis=0))
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        draw.text((4, 3 + i * (font_size + 3)), line, fill=(0, 0, 0), font=font)
    return np.asarray(out)


def _wrap(text: str, font, width: int) -> list[str]:
    from PIL import Image, ImageDraw

    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            trial = f"{line} {word}".strip()
            if line and draw.textlength(trial, font=font) > width:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return lines


def tile(panels: list[np.ndarray], ncols: int = 2, gap: int = 8) -> np.ndarray:
    """Panels (H_i x W_i x 3 uint8) in rows of ``ncols``, top-aligned, on white."""
    if not panels:
        return np.full((8, 8, 3), 255, np.uint8)
    ncols = max(1, min(ncols, len(panels)))
    rows = [panels[i : i + ncols] for i in range(0, len(panels), ncols)]
    col_w = [max(p.shape[1] for p in panels[c::ncols]) for c in range(ncols)]
    row_h = [max(p.shape[0] for p in row) for row in rows]
    out = np.full((sum(row_h) + gap * (len(rows) - 1), sum(col_w) + gap * (ncols - 1), 3), 255, np.uint8)
    y = 0
    for r, row in enumerate(rows):
        x = 0
        for c, p in enumerate(row):
            out[y : y + p.shape[0], x : x + p.shape[1]] = p
            x += col_w[c] + gap
        y += row_h[r] + gap
    return out


def _grid_to_pixels(grid: np.ndarray, patch: float, hw: tuple[int, int]) -> np.ndarray:
    """gh x gw (x C) -> nearest-neighbour image where each token covers ``patch`` px (a float
    when the image was scaled), cropped to ``hw`` (the unpadded part)."""
    gh, gw = grid.shape[:2]
    up = cv2.resize(grid, (max(1, round(gw * patch)), max(1, round(gh * patch))), interpolation=cv2.INTER_NEAREST)
    return up[: hw[0], : hw[1]]


def _grey(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


def value_overlay(
    image: np.ndarray,
    values: np.ndarray,
    patch: float | None = None,
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    alpha: float = 0.75,
) -> tuple[np.ndarray, float, float]:
    """Per-token (gh x gw, ``patch`` px each, a float when the image was scaled) or per-pixel
    (``patch`` None) values over a grey copy of the image. NaN (tokens no longer alive) leaves
    the grey image visible. Colours are looked up per token, then enlarged, so drawing costs
    little. Returns (H x W x 3 uint8, vmin, vmax) so a colour bar can show the same range."""
    v = np.asarray(values, dtype=np.float32)
    finite = np.isfinite(v)
    lo = float(np.nanmin(v)) if vmin is None and finite.any() else float(vmin if vmin is not None else 0.0)
    hi = float(np.nanmax(v)) if vmax is None and finite.any() else float(vmax if vmax is not None else 1.0)
    h, w = image.shape[:2]
    if patch is None and v.shape != (h, w):
        v = cv2.resize(v, (w, h), interpolation=cv2.INTER_AREA)
        finite = np.isfinite(v)
    colours = heatmap(v, cmap, lo, hi)
    if patch is not None:
        colours = _grid_to_pixels(colours, patch, (h, w))
        finite = _grid_to_pixels(finite.astype(np.uint8), patch, (h, w)).astype(bool)
    grey = _grey(image)
    mixed = cv2.addWeighted(grey, 1.0 - alpha, colours, alpha, 0.0)
    return np.where(finite[..., None], mixed, cv2.convertScaleAbs(grey, alpha=0.55)), lo, hi


def discrete_colours(n: int, cmap: str = "viridis") -> list[tuple[int, int, int]]:
    """``n`` evenly spaced colours of a (colour-blind safe) colormap."""
    from matplotlib import colormaps

    if n <= 0:
        return []
    pts = np.linspace(0, 1, n) if n > 1 else np.array([0.5])
    rgba = np.asarray(colormaps[cmap](pts))
    return [tuple(int(c) for c in row) for row in (rgba[:, :3] * 255).round()]


def category_overlay(
    image: np.ndarray, grid_ids: np.ndarray, patch: float, colours: dict[int, tuple[int, int, int]], alpha: float = 0.7
) -> np.ndarray:
    """Integer ids per token (gh x gw, ``patch`` px each; ids missing from ``colours``, e.g. -1,
    stay grey), with the token grid drawn."""
    h, w = image.shape[:2]
    gh, gw = grid_ids.shape
    table = np.zeros((gh, gw, 3), np.uint8)
    has = np.zeros((gh, gw), np.uint8)
    for cid, colour in colours.items():
        m = grid_ids == cid
        table[m] = colour
        has[m] = 1
    col = _grid_to_pixels(table, patch, (h, w))
    m = _grid_to_pixels(has, patch, (h, w)).astype(bool)
    grey = _grey(image)
    out = np.where(m[..., None], cv2.addWeighted(grey, 1.0 - alpha, col, alpha, 0.0), cv2.convertScaleAbs(grey, alpha=0.55))
    if patch >= 6:
        rows = np.round(np.arange(1, gh) * patch).astype(int)
        cols = np.round(np.arange(1, gw) * patch).astype(int)
        rows, cols = rows[rows < h], cols[cols < w]
        out[rows, :] = (out[rows, :] * 0.7).astype(np.uint8)
        out[:, cols] = (out[:, cols] * 0.7).astype(np.uint8)
    return out


def mask_overlay(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = (0, 114, 178), alpha: float = 0.55) -> np.ndarray:
    """A binary H x W mask over the image, with its outline drawn solid."""
    out = image.copy()
    m = mask.astype(bool)
    out[m] = (image[m] * (1 - alpha) + np.array(colour) * alpha).astype(np.uint8)
    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, tuple(int(c) for c in colour), max(1, image.shape[0] // 300))
    return out


def draw_prompts(
    image: np.ndarray,
    points: list[tuple[float, float, int]],
    box: tuple[float, float, float, float] | None = None,
    corner: tuple[float, float] | None = None,
) -> np.ndarray:
    """SAM prompts on a copy of the image: foreground points (label 1) as blue discs, background
    points (0) as vermillion crosses, the box as a rectangle, a first box corner as a small ring."""
    out = image.copy()
    r = max(4, image.shape[0] // 80)
    t = max(2, image.shape[0] // 300)
    for x, y, label in points:
        c = (int(round(x)), int(round(y)))
        if label:
            cv2.circle(out, c, r, (0, 114, 178), -1)
            cv2.circle(out, c, r, (255, 255, 255), t)
        else:
            cv2.drawMarker(out, c, (213, 94, 0), cv2.MARKER_TILTED_CROSS, 2 * r, t + 1)
    if box is not None:
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x0, y0), (x1, y1), (240, 228, 66), t + 1)
    if corner is not None:
        cv2.circle(out, (int(round(corner[0])), int(round(corner[1]))), r, (240, 228, 66), t)
    return out


def write_png(path: str | Path, image: np.ndarray, fast: bool = False) -> Path:
    """H x W x 3 uint8 RGB (or H x W uint8 grey, e.g. a label mask) -> a PNG file at ``path``.

    ``fast``: zlib level 1 with run-length strategy, several times quicker than the default
    for the app's maps (which are mostly flat colours) at a slightly larger file."""
    image = np.ascontiguousarray(image)
    pixels = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    flags = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE] if fast else []
    ok, buf = cv2.imencode(".png", pixels, flags)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    path = Path(path)
    path.write_bytes(buf.tobytes())
    return path
