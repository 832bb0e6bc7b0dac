"""Decoding TIFFs through tifffile: any dtype, any number of bands, band-last or band-first.

tifffile is imported lazily (most uploads are PNG or JPEG); Pillow reads what tifffile cannot
decode without the optional ``imagecodecs`` package.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from . import guards
from .guards import _TIFF_MAX_RATIO, raised_by_decoder, InputError, _check_size, _corrupt, _human_bytes, _Raw, _short, _Source
from .pillow import _cmyk_to_rgb, _decode_pillow

if TYPE_CHECKING:
    import tifffile

# A first (or last) axis at most this long, and at most half the others, is taken for bands.
_MAX_GUESSED_BANDS: int = 16

# TIFF tag values (TIFF 6.0 spec), spelled out so the checks below read as prose.
_PHOTOMETRIC_MINISWHITE = 0
_PHOTOMETRIC_PALETTE = 3
_PHOTOMETRIC_SEPARATED = 5  # CMYK when there are 4 samples
_EXTRASAMPLE_ALPHA = (1, 2)  # associated, unassociated
_TAG_GDAL_NODATA = 42113


@dataclass(frozen=True)
class _TiffPlan:
    """How to turn a tifffile series array into H x W x C: ``arr[index].transpose(order)``.

    Worked out from the header alone so sizes can be checked, and bands counted, before any
    strip is read. ``alpha`` lists channel positions (after the transpose) that are alpha.
    """

    index: tuple[int | slice, ...]
    order: tuple[int, ...]
    height: int
    width: int
    channels: int
    alpha: tuple[int, ...]
    notices: tuple[str, ...]


def _decode_tiff(src: _Source, for_mask: bool) -> _Raw:
    """TIFF via tifffile; Pillow reads what tifffile cannot (LZW/JPEG without imagecodecs),
    saying so in a notice. Only tifffile's own failures fall back: a bug of ours stays a bug."""
    try:
        return _decode_tifffile(src, for_mask)
    except InputError:
        raise
    except MemoryError:
        raise
    except Exception as exc:
        if not raised_by_decoder(exc):
            raise
        try:
            raw = _decode_pillow(src, for_mask)
        except InputError as pil_error:
            if "imagecodecs" in str(exc):
                raise InputError(
                    f"this TIFF uses a compression that needs the optional 'imagecodecs' package "
                    f"(pip install imagecodecs): {_short(exc)}"
                ) from exc
            if "truncated" in str(pil_error):
                raise _corrupt("TIFF", exc) from exc
            raise InputError(f"could not read the TIFF: {_short(exc)}") from exc
        raw.notices.insert(0, f"read with Pillow, as tifffile could not ({_short(exc)})")
        return raw


def _open_tifffile(src: _Source) -> tifffile.TiffFile:
    import tifffile

    tif = tifffile.TiffFile(io.BytesIO(src.data))
    if not tif.series or tif.series[0].keyframe is None:
        tif.close()
        raise _corrupt("TIFF", ValueError("the file holds no image"))
    return tif


def _describe_tiff(src: _Source) -> tuple[int, str]:
    with _open_tifffile(src) as tif:
        series = tif.series[0]
        plan = _plan_tiff(series, series.keyframe)
        _check_size(plan.width, plan.height)
        return _tiff_bands(series.keyframe, plan), np.dtype(series.dtype).name


def _tiff_bands(page: tifffile.TiffPage, plan: _TiffPlan) -> int:
    """Selectable bands: colour-mapped and CMYK images become 3 RGB bands, alpha never counts."""
    if int(page.photometric) == _PHOTOMETRIC_PALETTE and plan.channels == 1 and page.colormap is not None:
        return 3
    if _is_cmyk(page, plan):
        return 3
    return plan.channels - len(plan.alpha)


# What reading malformed tags raises in our interpretation of them (a tuple where the TIFF
# spec has one number, a missing tag, axes that contradict the shape). Caught only around that
# interpretation, where the cause is known: the file's header.
_MALFORMED_TAGS = (TypeError, ValueError, IndexError, KeyError, AttributeError, OverflowError)


def _decode_tifffile(src: _Source, for_mask: bool) -> _Raw:
    with _open_tifffile(src) as tif:
        series = tif.series[0]
        page = series.keyframe
        try:
            for tag in ("photometric", "bitspersample", "compression", "samplesperpixel", "imagedepth"):
                int(getattr(page, tag))  # one number each, as the spec says; read as such below
            plan = _plan_tiff(series, page)
            _check_size(plan.width, plan.height)
            dtype = np.dtype(series.dtype)
            _check_tiff_complete(series, len(src.data))
            _check_tiff_expansion(series, page, plan)
        except InputError:
            raise
        except _MALFORMED_TAGS as exc:
            raise _corrupt("TIFF", exc) from exc
        notices = list(plan.notices)
        if len(tif.series) > 1:
            notices.append(f"the TIFF holds {len(tif.series)} images: using the first")
        arr, more = _read_tiff_pixels(series, page, plan, for_mask)
        notices += more
        if arr.ndim == 2:
            arr = arr[..., None]
        source_shape = (plan.height, plan.width) if plan.channels == 1 else (plan.height, plan.width, plan.channels)
        if plan.alpha:
            keep = [c for c in range(arr.shape[2]) if c not in plan.alpha]
            arr = arr[..., keep]
            notices.append(("RGBA" if len(keep) == 3 else f"{plan.channels}-channel") + ": alpha dropped")
        arr, more = _tiff_photometric(arr, page, plan, for_mask)
        notices += more
        return _Raw(arr, (plan.height, plan.width), source_shape, dtype.name, "TIFF", notices, _gdal_nodata(page))


def _read_tiff_pixels(
    series: tifffile.TiffPageSeries, page: tifffile.TiffPage, plan: _TiffPlan, for_mask: bool
) -> tuple[np.ndarray, list[str]]:
    """The series' pixels as planned (H x W [x C]), within the decode budget: in full when
    they fit, else tile by tile (or strip by strip) at 1/f resolution. Returns (array, notices)."""
    dtype = np.dtype(series.dtype)
    nbytes = math.prod(series.shape) * dtype.itemsize  # what series.asarray() allocates
    what = f"{plan.width}x{plan.height} {plan.channels}-band {dtype.name} TIFF"
    if nbytes <= guards.DECODE_BUDGET_BYTES:
        with guards.decode_slot(nbytes):
            arr = series.asarray()
        if arr.shape != tuple(series.shape):  # the tags contradict each other
            raise _corrupt("TIFF", ValueError(f"decoded shape {arr.shape} is not the declared {tuple(series.shape)}"))
        return arr[plan.index].transpose(plan.order), []
    if for_mask or not _can_read_reduced(series, page):
        guards.check_decode_budget(nbytes, what)  # raises: over budget, and no reduced read
    factor = max(2, math.ceil(math.sqrt(plan.height * plan.width / guards.MAX_PIXELS)))
    while math.ceil(plan.height / factor) * math.ceil(plan.width / factor) * plan.channels * dtype.itemsize > guards.DECODE_BUDGET_BYTES // 2:
        factor += 1
    with guards.decode_slot(guards.LARGE_DECODE_BYTES + 1):
        arr = _read_tiff_reduced(page, plan, factor)
    return arr, [f"large TIFF read at 1/{factor} resolution (every {factor}th pixel, tile by tile) to stay within memory"]


def _can_read_reduced(series: tifffile.TiffPageSeries, page: tifffile.TiffPage) -> bool:
    """One plain page (Y, X and interleaved samples) whose every tile or strip fits the budget."""
    if len(series.pages) != 1 or str(series.axes) not in ("YX", "YXS") or int(page.imagedepth) != 1:
        return False
    separate, _, length, width, contig = page.shaped
    if separate != 1:
        return False
    seg_rows = int(page.tilelength) if page.is_tiled else int(page.rowsperstrip or length)
    seg_cols = int(page.tilewidth) if page.is_tiled else width
    return seg_rows * seg_cols * contig * np.dtype(series.dtype).itemsize <= guards.DECODE_BUDGET_BYTES // 8


def _read_tiff_reduced(page: tifffile.TiffPage, plan: _TiffPlan, factor: int) -> np.ndarray:
    """Every ``factor``-th row and column of a one-page TIFF, decoding one segment at a time:
    ceil(H/f) x ceil(W/f) x C. Nearest-neighbour (no averaging): the caller downscales the
    result properly once it is small."""
    height, width = plan.height, plan.width
    contig = page.shaped[4]
    out = np.zeros((math.ceil(height / factor), math.ceil(width / factor), contig), dtype=page.dtype)
    for data, index, _shape in page.segments(maxworkers=1):
        if data is None:  # an empty segment: tifffile leaves it to the fill value
            continue
        y0, x0 = int(index[2]), int(index[3])
        seg = data[0]  # length x width x contig samples
        r0, c0 = (-y0) % factor, (-x0) % factor
        rows = min(seg.shape[0], height - y0)
        cols = min(seg.shape[1], width - x0)
        if r0 >= rows or c0 >= cols:
            continue
        part = seg[r0:rows:factor, c0:cols:factor]
        oy, ox = (y0 + r0) // factor, (x0 + c0) // factor
        out[oy : oy + part.shape[0], ox : ox + part.shape[1]] = part
    return out if str(page.axes).endswith("S") or contig > 1 else out[..., 0]


def _plan_tiff(series: tifffile.TiffPageSeries, page: tifffile.TiffPage) -> _TiffPlan:
    """Find the Y, X and band axes of a TIFF series from its axes letters and shape.

    tifffile names sample axes 'S' from the TIFF tags (reliable: band-last 'YXS' for
    interleaved, band-first 'SYX' for planar) and ImageJ/OME channels 'C'. Without either,
    a 3-D stack of pages ('IYX', 'QYX') is ambiguous: a first axis of at most 16 and much
    smaller than the others is bands-first; likewise a last such axis is band-last (what a
    band-last array written without photometric tags looks like, pages of W x bands); anything
    else is read as pages, the first used. Other axes (time, z, pages) are reduced to index 0.
    """
    shape, axes = tuple(int(n) for n in series.shape), str(series.axes)
    notices: list[str] = []
    index: list[int | slice] = [slice(None)] * len(shape)
    # Singleton axes (except Y, X) carry nothing: drop them.
    for i, (ax, n) in enumerate(zip(axes, shape)):
        if n == 1 and ax not in "YX":
            index[i] = 0
    kept = [i for i in range(len(shape)) if isinstance(index[i], slice)]
    kept_axes = "".join(axes[i] for i in kept)
    if "Y" not in kept_axes or "X" not in kept_axes:
        raise InputError(f"unsupported TIFF layout (axes {axes!r}, shape {shape})")
    band_ax = next((c for c in "SC" if c in kept_axes), None)
    extras = [i for i in kept if axes[i] not in "YX" + (band_ax or "")]
    if band_ax is None and len(extras) == 1 and len(kept) == 3:
        d = [shape[i] for i in kept]
        order = _guess_band_order(d)
        if order is None:  # a long stack of pages: use the first page
            index[kept[0]] = 0
            notices.append(f"the TIFF holds {d[0]} pages: using the first")
            return _finish_plan(index, (0, 1), shape, kept[1:], None, page, notices)
        y, x, c = (kept[j] for j in order)
        return _finish_plan(index, order, shape, [y, x], c, page, notices)
    for i in extras:
        index[i] = 0
    if extras:
        extra_text = ", ".join(f"{axes[i]}={shape[i]}" for i in extras)
        notices.append(f"the TIFF has extra dimensions ({extra_text}): using the first of each")
    remaining = [i for i in kept if i not in extras]  # Y, X and maybe the band axis, in file order
    y, x = axes.index("Y"), axes.index("X")
    c = axes.index(band_ax) if band_ax else None
    want = [y, x] + ([c] if c is not None else [])
    order = tuple(remaining.index(i) for i in want)
    return _finish_plan(index, order, shape, [y, x], c, page, notices)


def _guess_band_order(d: list[int]) -> tuple[int, int, int] | None:
    """Positions (y, x, band) in a 3-D shape ``d`` whose band axis is unknown, or None for pages."""
    def small(n: int, others: list[int]) -> bool:
        return n <= _MAX_GUESSED_BANDS and all(2 * n <= o for o in others)

    if small(d[0], [d[1], d[2]]):
        return (1, 2, 0)
    if small(d[2], [d[0], d[1]]):
        return (0, 1, 2)
    if d[0] <= _MAX_GUESSED_BANDS:  # a few pages, as stored: bands-first
        return (1, 2, 0)
    return None


def _finish_plan(
    index: list[int | slice],
    order: tuple[int, ...],
    shape: tuple[int, ...],
    yx: list[int],
    c: int | None,
    page: tifffile.TiffPage,
    notices: list[str],
) -> _TiffPlan:
    height, width = shape[yx[0]], shape[yx[1]]
    channels = shape[c] if c is not None else 1
    return _TiffPlan(tuple(index), tuple(order), height, width, channels,
                     _tiff_alpha(page, channels), tuple(notices))


def _tiff_alpha(page: tifffile.TiffPage, channels: int) -> tuple[int, ...]:
    """Channel positions that the ExtraSamples tag marks as alpha (not GeoTIFF's 'unspecified')."""
    extras = tuple(int(e) for e in (getattr(page, "extrasamples", ()) or ()))
    if not extras or channels != int(page.samplesperpixel):
        return ()
    first_extra = channels - len(extras)
    return tuple(first_extra + i for i, e in enumerate(extras) if e in _EXTRASAMPLE_ALPHA)


def _is_cmyk(page: tifffile.TiffPage, plan: _TiffPlan) -> bool:
    """8-bit CMYK, the only separated (ink) layout we convert; others stay plain bands."""
    return (int(page.photometric) == _PHOTOMETRIC_SEPARATED and plan.channels - len(plan.alpha) == 4
            and int(page.bitspersample) == 8)


def _tiff_photometric(
    arr: np.ndarray, page: tifffile.TiffPage, plan: _TiffPlan, for_mask: bool
) -> tuple[np.ndarray, list[str]]:
    """Apply what the Photometric tag says the samples mean (palette, CMYK, white-is-zero)."""
    photometric = int(page.photometric)
    if for_mask:
        return arr, []  # masks want the stored values (palette indices are class ids)
    if photometric == _PHOTOMETRIC_PALETTE and page.colormap is not None and arr.shape[2] == 1:
        cmap = np.asarray(page.colormap)  # 3 x 2**bits, 16-bit colour values
        if cmap.ndim != 2 or cmap.shape[0] != 3 or cmap.shape[1] < 1:
            raise _corrupt("TIFF", ValueError(f"the colour map has shape {cmap.shape}, not 3 x N"))
        idx = np.clip(arr[..., 0].astype(np.intp), 0, cmap.shape[1] - 1)
        rgb = (cmap[:, idx] >> 8 if cmap.max() > 255 else cmap[:, idx]).astype(np.uint8)
        return np.moveaxis(rgb, 0, -1), []
    if _is_cmyk(page, plan):
        return _cmyk_to_rgb(arr), ["CMYK: converted to RGB (no colour profile applied)"]
    if photometric == _PHOTOMETRIC_MINISWHITE and arr.dtype.kind in "ub":
        top = True if arr.dtype == bool else np.iinfo(arr.dtype).max
        return (np.logical_not(arr) if arr.dtype == bool else top - arr), ["white-is-zero TIFF: inverted"]
    return arr, []


def _check_tiff_complete(series: tifffile.TiffPageSeries, size: int) -> None:
    """Strips or tiles that end past the end of the file mean a truncated download.

    tifffile would otherwise hand back zeros for the missing part without complaint.
    """
    for page in series.pages:
        if page is None:
            continue
        for offset, count in zip(page.dataoffsets, page.databytecounts):
            if count and offset + count > size:
                raise _corrupt("TIFF", EOFError(f"image data ends at byte {offset + count}, the file has {size}"))


def _check_tiff_expansion(series: tifffile.TiffPageSeries, page: tifffile.TiffPage, plan: _TiffPlan) -> None:
    """Refuse a TIFF whose strips hold fewer bytes than its tags promise (uncompressed:
    exactly; LZW, PackBits, deflate: at their best ratio). Other codecs are not bounded here.
    """
    ratio = _TIFF_MAX_RATIO.get(int(page.compression))
    if ratio is None or any(p is None for p in series.pages):
        return
    stored = sum(int(c) for p in series.pages for c in p.databytecounts)
    declared = math.prod(series.shape) * int(page.bitspersample) / 8
    if declared > ratio * stored:
        raise _corrupt("TIFF", ValueError(
            f"the tags declare {plan.width}x{plan.height} pixels but the file holds only "
            f"{_human_bytes(stored)} of image data"
        ))


def _gdal_nodata(page: tifffile.TiffPage) -> float | None:
    """GeoTIFF no-data value (GDAL tag 42113, stored as text), so it can be kept out of the stretch."""
    try:
        tag = page.tags.get(_TAG_GDAL_NODATA)
        if tag is None:
            return None
        value = tag.value
        text = value.decode("ascii", "ignore") if isinstance(value, bytes) else str(value)
        number = float(text.strip().strip("\x00"))
        return number if math.isfinite(number) else None
    except (ValueError, AttributeError):
        return None
