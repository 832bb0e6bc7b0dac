"""From decoded pixels to what the models see: band choice, display stretch, size cap."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from . import guards
from .guards import SMALL_SIDE, InputError, _downscaled_size, _Raw

# Percentiles from a regular subsample of at most this many values per band: exact enough for
# a display stretch, and keeps a 400-megapixel band from being copied and sorted whole.
_PERCENTILE_SAMPLES: int = 1 << 22
# Rows are stretched in chunks of about this many values so float temporaries stay small.
_STRETCH_CHUNK: int = 1 << 20
# Longer side / shorter side above which we warn that the models will squash or pad the image.
_ELONGATED: float = 8.0


@dataclass
class LoadedImage:
    """An input image ready for a backbone.

    ``rgb`` is H x W x 3 uint8, at most :data:`MAX_PIXELS` pixels: what the models see.
    ``notices`` are human-readable notes on everything that was changed or guessed.
    ``source_shape`` is (H, W[, channels]) of the image as stored, band-last, at full
    resolution, alpha included. ``bands`` is how many bands the user can choose from
    (alpha excluded), the same number :func:`describe_bands` reports.
    """

    rgb: np.ndarray
    notices: list[str]
    source_shape: tuple[int, ...]
    source_dtype: str
    bands: int



def stretch_to_uint8(a: np.ndarray, lo_pct: float, hi_pct: float) -> np.ndarray:
    """Percentile-stretch each band of ``a`` (H x W or H x W x B, any real dtype) to uint8.

    Values at or below the ``lo_pct`` percentile become 0, at or above ``hi_pct`` become 255.
    NaN and inf are left out of the percentiles and shown as 0. A band whose percentiles
    coincide falls back to its min..max; a constant band becomes 0 (there is nothing to show,
    and dividing by a zero range would fill it with NaN).
    """
    lo_pct, hi_pct = _check_stretch((lo_pct, hi_pct))
    a = np.asarray(a)
    if a.dtype.kind not in "biuf":
        raise InputError(f"cannot display {a.dtype} data: only integer and real-valued images are supported")
    if a.ndim == 2:
        return _stretch_band(a, lo_pct, hi_pct)
    if a.ndim != 3:
        raise ValueError(f"expected H x W or H x W x B, got shape {a.shape}")
    out = np.empty(a.shape, np.uint8)
    for b in range(a.shape[2]):
        out[..., b] = _stretch_band(a[..., b], lo_pct, hi_pct)
    return out


def _to_loaded(raw: _Raw, bands: tuple[int, int, int] | None, lo_pct: float, hi_pct: float) -> LoadedImage:
    """Choose bands, stretch non-uint8 data, cap the size: H x W x C source -> H' x W' x 3 uint8.

    Only the distinct chosen bands are stretched (grey is stretched once, then repeated).
    """
    arr = raw.array
    n_bands = arr.shape[2]
    chosen, notice = _choose_bands(n_bands, bands)
    notices = list(raw.notices)
    if notice:
        notices.append(notice)
    unique = sorted(set(chosen))
    # The common case (an RGB file, its three bands in order) takes the array as it is: each
    # fancy-indexed copy of a 16-megapixel image is 50 MB, and large uploads share the server.
    sel = arr if unique == list(range(n_bands)) else arr[..., unique]
    if sel.dtype == bool:
        sel = sel.astype(np.uint8) * np.uint8(255)
    elif sel.dtype != np.uint8:
        sel, more = _stretch_for_display(sel, raw, lo_pct, hi_pct)
        notices += more
    order = [unique.index(b) for b in chosen]
    rgb = np.ascontiguousarray(sel if order == list(range(sel.shape[2])) else sel[..., order])
    rgb, more = _limit_pixels(rgb, raw.full_hw)
    notices += more
    notices += _shape_notices(raw.full_hw)
    return LoadedImage(rgb, notices, tuple(raw.source_shape), raw.source_dtype, n_bands)


def _choose_bands(n: int, bands: tuple[int, int, int] | None) -> tuple[list[int], str | None]:
    """0-based band indices for R, G, B, and a notice when the choice was ours."""
    if bands is not None:
        try:
            bands = tuple(bands)
        except TypeError:
            raise InputError(f"bands must be three band numbers (red, green, blue); got {bands!r}") from None
        if len(bands) != 3:
            raise InputError(f"choose exactly 3 bands (red, green, blue); got {len(bands)}")
        for b in bands:
            if isinstance(b, bool) or not isinstance(b, (int, np.integer)):
                raise InputError(f"band numbers must be whole numbers from 1; got {b!r}")
            if b < 1:
                raise InputError(f"band {b} requested but bands are numbered from 1")
            if b > n:
                raise InputError(f"band {b} requested but the image has {n} band{'s' if n != 1 else ''}")
        return [int(b) - 1 for b in bands], None
    if n == 1:
        return [0, 0, 0], None
    if n == 2:
        return [0, 0, 0], "2 bands: showing band 1 as grey"
    if n == 3:
        return [0, 1, 2], None
    return [0, 1, 2], f"{n} bands: using bands 1,2,3"


def _stretch_for_display(sel: np.ndarray, raw: _Raw, lo_pct: float, hi_pct: float) -> tuple[np.ndarray, list[str]]:
    notices: list[str] = []
    if raw.nodata is not None:
        is_nodata = sel == raw.nodata
        if is_nodata.any():
            sel = np.where(is_nodata, np.float32(np.nan), sel.astype(np.float32))
            notices.append(f"no-data value {raw.nodata:g}: shown as black")
    if sel.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(sel)))
        if bad and raw.nodata is None:
            notices.append(f"{bad} NaN/inf values: shown as black")
    notices.append(f"{_dtype_label(np.dtype(raw.source_dtype))}: stretched ({lo_pct:g}-{hi_pct:g}th percentile)")
    return stretch_to_uint8(sel, lo_pct, hi_pct), notices


def _dtype_label(dtype: np.dtype) -> str:
    bits = dtype.itemsize * 8
    if dtype.kind == "u":
        return f"{bits}-bit"
    if dtype.kind == "i":
        return f"{bits}-bit signed"
    return dtype.name


def _check_stretch(stretch: tuple[float, float]) -> tuple[float, float]:
    try:
        lo_pct, hi_pct = (float(v) for v in stretch)
    except (TypeError, ValueError):
        raise InputError(f"stretch must be two percentiles (low, high); got {stretch!r}") from None
    if not (0.0 <= lo_pct < hi_pct <= 100.0):
        raise InputError(f"stretch percentiles must satisfy 0 <= low < high <= 100; got {lo_pct:g}, {hi_pct:g}")
    return lo_pct, hi_pct


def _stretch_band(band: np.ndarray, lo_pct: float, hi_pct: float) -> np.ndarray:
    """One H x W band to uint8, in row chunks so float temporaries stay small."""
    if band.dtype == bool:
        band = band.astype(np.uint8)
    lo, hi = _band_range(band, lo_pct, hi_pct)
    out = np.zeros(band.shape, np.uint8)
    if hi <= lo:
        return out
    scale = 255.0 / (hi - lo)
    rows = max(1, _STRETCH_CHUNK // max(1, band.shape[1]))
    for r in range(0, band.shape[0], rows):
        chunk = band[r:r + rows].astype(np.float64)
        chunk -= lo
        chunk *= scale
        if band.dtype.kind == "f":
            # NaN survives clip and +inf would clip to 255: both mean "no value", shown as 0.
            chunk[~np.isfinite(chunk)] = 0.0
        np.clip(chunk, 0.0, 255.0, out=chunk)
        out[r:r + rows] = np.rint(chunk).astype(np.uint8)
    return out


def _band_range(band: np.ndarray, lo_pct: float, hi_pct: float) -> tuple[float, float]:
    """(low, high) display range of one band from a regular subsample of its finite values."""
    step = max(1, math.ceil(math.sqrt(band.size / _PERCENTILE_SAMPLES)))
    sample = band[::step, ::step].astype(np.float64).ravel()
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 0.0
    lo, hi = (float(v) for v in np.percentile(sample, [lo_pct, hi_pct]))
    if hi <= lo:  # e.g. 99 % zeros: fall back to the full range rather than a blank image
        lo, hi = float(sample.min()), float(sample.max())
    return lo, hi



def _limit_pixels(rgb: np.ndarray, full_hw: tuple[int, int]) -> tuple[np.ndarray, list[str]]:
    """Downscale to at most MAX_PIXELS; the notice names the full-resolution source size."""
    height, width = full_hw
    if width * height <= guards.MAX_PIXELS:
        return rgb, []
    w, h = _downscaled_size(width, height)
    if rgb.shape[:2] != (h, w):  # JPEG draft mode may already have done part of the work
        rgb = np.asarray(Image.fromarray(rgb).resize((w, h), Image.Resampling.LANCZOS, reducing_gap=3.0))
    return rgb, [f"downscaled from {width}x{height} to {w}x{h} (limit {guards.MAX_PIXELS / 1e6:.1f} megapixels)"]


def _shape_notices(full_hw: tuple[int, int]) -> list[str]:
    height, width = full_hw
    notices = []
    if min(height, width) < SMALL_SIDE:
        notices.append(f"very small image ({width}x{height}): results will be meaningless")
    if max(height, width) / min(height, width) > _ELONGATED:
        notices.append(
            f"very elongated image ({width}x{height}): the models resize it to their input size, "
            f"so it will be squashed or padded"
        )
    return notices
