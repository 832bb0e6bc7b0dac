"""Image and mask loading: validate, decode, choose bands, and hand the models plain RGB.

Every file a user gives us passes through here first, so this module is where hostile or odd
input stops: empty, oversized, truncated or mislabelled files, decompression bombs (a tiny file
whose header claims 40000 x 40000 pixels), 16-bit and float rasters, multi-band GeoTIFFs in
either band order, CMYK JPEGs, animated GIFs. Whatever goes wrong becomes an :class:`InputError`
whose message is shown to the user as it is (``gr.Error`` in the app, ``error: ...`` and exit
status 2 in the CLI); no decoder exception or traceback escapes.

Decoding: PNG, JPEG, GIF, BMP and WebP through Pillow; TIFF through tifffile (any dtype, any
number of bands, band-last or band-first), with Pillow as a fallback for TIFF compressions that
tifffile cannot decode without the optional ``imagecodecs`` package (LZW, JPEG); 16-bit RGB PNG
through OpenCV, because Pillow silently keeps only the high byte of each sample there.

Pillow's process-wide settings are never touched: ``LOAD_TRUNCATED_IMAGES`` stays False and
``Image.MAX_IMAGE_PIXELS`` keeps its value. Instead of ``Image.open`` (which applies that global
limit and warns above it) we call the format's own Pillow opener, which reads only the header,
and compare the declared size against :data:`MAX_DECODE_PIXELS` before any pixel is decoded.

The package, one seam per module: ``guards`` (limits, InputError, reading bytes), ``pillow``
and ``tiff`` (decoders), ``bands`` (band choice, stretch, size cap), ``mask`` (class ids).
"""

from __future__ import annotations

import math
import os

import numpy as np

from . import guards

from .bands import LoadedImage, _check_stretch, _to_loaded, stretch_to_uint8
from .guards import (
    MAX_DECODE_PIXELS,
    MAX_FILE_BYTES,
    MAX_PIXELS,
    SMALL_SIDE,
    InputError,
    _check_input_type,
    _corrupt,
    _Raw,
    _read_source,
    _Source,
    _user_errors,
    raised_by_decoder,
)
from .mask import _check_palette, _fit_mask, _mask_to_ids
from .pillow import _PILLOW_BYTES_PER_PIXEL, _decode_pillow, _open_pillow, _pillow_bands_dtype
from .tiff import _decode_tiff, _describe_tiff, _open_tifffile

__all__ = [
    "InputError",
    "LoadedImage",
    "MAX_DECODE_PIXELS",
    "MAX_FILE_BYTES",
    "MAX_PIXELS",
    "SMALL_SIDE",
    "describe_bands",
    "load_image",
    "load_mask",
    "stretch_to_uint8",
]


def load_image(
    path_or_bytes: str | os.PathLike | bytes,
    bands: tuple[int, int, int] | None = None,
    stretch: tuple[float, float] = (2.0, 98.0),
) -> LoadedImage:
    """Read, validate and convert an image file to H x W x 3 uint8 RGB.

    ``bands`` are 1-based band numbers shown as red, green, blue; by default bands 1, 2, 3
    (or band 1 as grey for 1- and 2-band images). Non-uint8 data are stretched per band
    between the ``stretch`` percentiles. Images over :data:`MAX_PIXELS` are downscaled.
    Raises :class:`InputError`, and nothing else, for anything wrong with the file.
    """
    lo_pct, hi_pct = _check_stretch(stretch)
    _check_input_type(path_or_bytes)
    with _user_errors("image"):
        src = _read_source(path_or_bytes)
        # A large image holds the process-wide slot through decoding *and* conversion: the
        # conversion's full-size temporaries would otherwise overlap the next upload's decode.
        declared, what = _declared_bytes(src)
        if src.fmt not in ("TIFF", "JPEG"):  # no reduced decoding: refuse now, without queueing for the slot
            guards.check_decode_budget(declared, what)
        with guards.decode_slot(declared):
            raw = _decode(src, for_mask=False)
            return _to_loaded(raw, bands, lo_pct, hi_pct)


def load_mask(
    path_or_bytes: str | os.PathLike | bytes,
    shape: tuple[int, int],
    num_classes: int,
    palette: np.ndarray | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Read a ground-truth mask as H x W int32 class ids matching an image of ``shape`` (H, W).

    Accepts a single-channel label image (values 0..num_classes-1; 255 = ignore, kept as 255;
    palette-mode PNGs give their indices) or an RGB colour-coded mask whose colours must equal
    rows of ``palette`` (num_classes x 3 uint8) exactly. A mask of another size is resized with
    nearest neighbour when its aspect ratio matches within 1 %, refused otherwise.
    Returns (class ids, notices).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    height, width = (int(v) for v in shape)
    if height < 1 or width < 1:
        raise ValueError(f"shape must be positive (H, W), got {shape}")
    pal = _check_palette(palette, num_classes)
    _check_input_type(path_or_bytes)
    with _user_errors("mask"):
        try:
            src = _read_source(path_or_bytes)
            raw = _decode(src, for_mask=True)
        except InputError as exc:
            raise InputError(f"mask: {exc}") from exc
        notices = list(raw.notices)
        ids = _mask_to_ids(raw, num_classes, pal, notices)
        ids = _fit_mask(ids, (height, width), notices)
        return ids, notices


def describe_bands(path_or_bytes: str | os.PathLike | bytes) -> tuple[int, str]:
    """(number of bands, dtype name) of an image, from its header where the format allows.

    Used by the app's band chooser before a full load; alpha is not counted as a band, so
    the number equals :attr:`LoadedImage.bands`.
    """
    _check_input_type(path_or_bytes)
    with _user_errors("image"):
        src = _read_source(path_or_bytes)
        if src.fmt == "TIFF":
            try:
                return _describe_tiff(src)
            except InputError:
                raise
            except Exception as exc:
                if not raised_by_decoder(exc):
                    raise
                # tifffile could not parse it; Pillow's reader may
        im = _open_pillow(src)
        return _pillow_bands_dtype(im, src)


def _declared_bytes(src: _Source) -> tuple[int, str]:
    """(bytes the header says the decoded pixels take, the image in words); 0 when the header
    cannot be read: the decoder will then say what is wrong."""
    try:
        if src.fmt == "TIFF":
            with _open_tifffile(src) as tif:
                series = tif.series[0]
                return int(math.prod(series.shape)) * np.dtype(series.dtype).itemsize, "TIFF"
        im = _open_pillow(src)
        return im.size[0] * im.size[1] * _PILLOW_BYTES_PER_PIXEL.get(im.mode, 4), f"{im.size[0]}x{im.size[1]} {im.mode} {src.fmt}"
    except InputError:
        return 0, src.fmt
    except Exception as exc:
        if not raised_by_decoder(exc):
            raise
        return 0, src.fmt


def _decode(src: _Source, for_mask: bool) -> _Raw:
    """Decode to band-last pixels. ``for_mask`` keeps palette indices instead of colours."""
    raw = _decode_tiff(src, for_mask) if src.fmt == "TIFF" else _decode_pillow(src, for_mask)
    if raw.array.ndim != 3 or 0 in raw.array.shape:  # e.g. a TIFF that declares 0 samples per pixel
        raise _corrupt(src.fmt, ValueError(f"the decoder returned no pixels (shape {raw.array.shape})"))
    return raw
