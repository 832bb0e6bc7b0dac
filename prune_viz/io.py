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
"""

from __future__ import annotations

import io
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
from PIL import Image, ImageOps

if TYPE_CHECKING:  # tifffile is imported lazily: most uploads are PNG or JPEG
    import tifffile

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


class InputError(ValueError):
    """Bad user input; the message is shown to the user as is.

    (``gr.Error`` in the app, ``error: ...`` and exit status 2 in the CLI.)
    """


MAX_PIXELS: int = 4096 * 4096  # larger images are downscaled (with a notice), not refused
MAX_DECODE_PIXELS: int = 20000 * 20000  # header claims above this are refused before decoding (decompression bombs)
MAX_FILE_BYTES: int = 50 * 1024 * 1024
SMALL_SIDE: int = 16  # below this a ViT sees less than one patch: we still run, but say so

# A 50 MB deflate-compressed TIFF can expand a thousandfold; bound what the decoder may allocate
# (bands and bytes per sample included), not just the pixel count. 1.6 GB = 4 bytes at the limit.
_MAX_DECODE_BYTES: int = 4 * MAX_DECODE_PIXELS
# Percentiles from a regular subsample of at most this many values per band: exact enough for
# a display stretch, and keeps a 400-megapixel band from being copied and sorted whole.
_PERCENTILE_SAMPLES: int = 1 << 22
# Rows are stretched in chunks of about this many values so float temporaries stay small.
_STRETCH_CHUNK: int = 1 << 20
# Longer side / shorter side above which we warn that the models will squash or pad the image.
_ELONGATED: float = 8.0
# A first (or last) axis at most this long, and at most half the others, is taken for bands.
_MAX_GUESSED_BANDS: int = 16
_MASK_ASPECT_TOLERANCE: float = 0.01
# Most bytes one stored byte can decode to. Deflate's format caps it near 1032:1; LZW and
# PackBits stay well below 5000:1. A header promising more pixels than the stored bytes can
# hold is a truncated file or a bomb, and is refused before the decoder allocates the image
# (Pillow, OpenCV and tifffile all allocate the declared size first, then zero-fill or fail).
_DEFLATE_MAX_RATIO: float = 1100.0
_TIFF_MAX_RATIO: dict[int, float] = {1: 1.0, 5: 5000.0, 8: _DEFLATE_MAX_RATIO, 32773: 5000.0, 32946: _DEFLATE_MAX_RATIO}
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by IHDR colour type

_FORMATS_TEXT = "PNG, JPEG, TIFF, GIF, BMP, WebP"
_NOT_AN_IMAGE = f"not an image we can read ({_FORMATS_TEXT})"

# TIFF tag values (TIFF 6.0 spec), spelled out so the checks below read as prose.
_PHOTOMETRIC_MINISWHITE = 0
_PHOTOMETRIC_PALETTE = 3
_PHOTOMETRIC_SEPARATED = 5  # CMYK when there are 4 samples
_EXTRASAMPLE_ALPHA = (1, 2)  # associated, unassociated
_TAG_GDAL_NODATA = 42113


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


@dataclass(frozen=True)
class _Source:
    """Raw bytes of an input file and the format its magic number names."""

    data: bytes
    fmt: str  # "PNG" | "JPEG" | "TIFF" | "GIF" | "BMP" | "WEBP"


@dataclass
class _Raw:
    """Decoded pixels before band choice and stretch.

    ``array`` is H x W x C band-last in the source dtype with alpha removed; it can be smaller
    than the source when the decoder downscaled on the fly (JPEG draft mode). ``full_hw`` is
    the source's (H, W) at full resolution, in display orientation.
    """

    array: np.ndarray
    full_hw: tuple[int, int]
    source_shape: tuple[int, ...]
    source_dtype: str
    fmt: str
    notices: list[str] = field(default_factory=list)
    nodata: float | None = None


# --------------------------------------------------------------------------- public API


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
            except Exception:
                pass  # tifffile could not parse it; Pillow's reader may
        im = _open_pillow(src)
        return _pillow_bands_dtype(im, src)


# --------------------------------------------------------------------------- reading bytes


def _check_input_type(path_or_bytes: object) -> None:
    """A wrong argument type is the caller's bug, not bad input: TypeError, outside the boundary."""
    if not isinstance(path_or_bytes, (bytes, bytearray, memoryview, str, os.PathLike)):
        raise TypeError(f"expected a path or bytes, got {type(path_or_bytes).__name__}")


def _read_source(path_or_bytes: str | os.PathLike | bytes) -> _Source:
    """Bytes of the input plus its sniffed format; size limits are checked before reading."""
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        data = bytes(path_or_bytes)
        _check_file_size(len(data))
    else:
        data = _read_file(Path(os.fspath(path_or_bytes)))
    fmt = _sniff(data[:16])
    if fmt is None:
        raise InputError(_NOT_AN_IMAGE)
    return _Source(data, fmt)


def _read_file(path: Path) -> bytes:
    """File contents; the size is checked from stat() so a 5 GB upload is never read."""
    try:
        if not path.exists():
            raise InputError(f"file not found: {path}")
        if path.is_dir():
            raise InputError(f"{path} is a folder, not an image file")
        size = path.stat().st_size
        _check_file_size(size)
        with path.open("rb") as fh:
            # One byte past the stated size, so a file that grew after stat() is still caught;
            # not read(MAX_FILE_BYTES + 1), which would reserve 50 MB for every upload.
            data = fh.read(size + 1)
    except OSError as exc:
        raise InputError(f"could not read the file {path.name}: {exc.strerror or exc}") from exc
    _check_file_size(len(data))
    return data


def _check_file_size(n: int) -> None:
    if n == 0:
        raise InputError("the file is empty")
    if n > MAX_FILE_BYTES:
        size_mb = math.ceil(n / 2**20 * 10) / 10  # round up: 50 MB + 1 byte must not read "50.0 MB"
        raise InputError(f"the file is too large ({size_mb:.1f} MB); the limit is {MAX_FILE_BYTES / 2**20:g} MB")


def _sniff(head: bytes) -> str | None:
    """Format named by the file's magic number; the file name's extension is never trusted."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # classic and BigTIFF
        return "TIFF"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head.startswith(b"BM"):
        return "BMP"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


@contextmanager
def _user_errors(what: str) -> Iterator[None]:
    """Turn any exception escaping a decoder into an InputError with a one-line reason.

    The cause stays chained (``from exc``) for logs; the user sees only the message.
    """
    try:
        yield
    except InputError:
        raise
    except MemoryError as exc:
        raise InputError(f"not enough memory to read this {what}; try a smaller file") from exc
    except Exception as exc:  # the boundary: whatever a decoder throws, the user gets one line
        raise InputError(f"could not read the {what}: {_short(exc)}") from exc


def _short(exc: BaseException) -> str:
    """First line of an exception's message, at most 200 characters, for user messages."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _corrupt(fmt: str, exc: BaseException | None = None) -> InputError:
    reason = f" ({fmt}: {_short(exc)})" if exc is not None else f" ({fmt})"
    return InputError(f"the image file is truncated or corrupt{reason}")


def _check_size(width: int, height: int) -> None:
    """Refuse header-declared sizes over MAX_DECODE_PIXELS before any pixel is decoded."""
    if width < 1 or height < 1:
        raise InputError(f"the image header declares an empty image ({width}x{height} pixels)")
    if width * height > MAX_DECODE_PIXELS:
        raise InputError(
            f"the image is {width}x{height} pixels ({width * height / 1e6:,.0f} megapixels); "
            f"the limit is {MAX_DECODE_PIXELS / 1e6:,.0f} megapixels "
            f"({math.isqrt(MAX_DECODE_PIXELS)}x{math.isqrt(MAX_DECODE_PIXELS)}). Crop or downscale it first."
        )


# --------------------------------------------------------------------------- decoding


def _decode(src: _Source, for_mask: bool) -> _Raw:
    """Decode to band-last pixels. ``for_mask`` keeps palette indices instead of colours."""
    if src.fmt == "TIFF":
        return _decode_tiff(src, for_mask)
    return _decode_pillow(src, for_mask)


def _pillow_opener(fmt: str) -> Callable[..., Image.Image]:
    """The format's own Pillow opener: parses the header only, without Image.open's global limit."""
    try:
        if fmt == "PNG":
            from PIL import PngImagePlugin

            return PngImagePlugin.PngImageFile
        if fmt == "JPEG":
            from PIL import JpegImagePlugin

            return JpegImagePlugin.jpeg_factory
        if fmt == "GIF":
            from PIL import GifImagePlugin

            return GifImagePlugin.GifImageFile
        if fmt == "BMP":
            from PIL import BmpImagePlugin

            return BmpImagePlugin.BmpImageFile
        if fmt == "TIFF":
            from PIL import TiffImagePlugin

            return TiffImagePlugin.TiffImageFile
        if fmt == "WEBP":
            from PIL import WebPImagePlugin

            return WebPImagePlugin.WebPImageFile
    except ImportError as exc:  # e.g. Pillow built without libwebp
        raise InputError(f"{fmt} images are not supported by this installation's Pillow ({_short(exc)})") from exc
    raise InputError(_NOT_AN_IMAGE)


def _open_pillow(src: _Source) -> Image.Image:
    """Header-only open; the declared size is checked here, before anything is decoded."""
    opener = _pillow_opener(src.fmt)
    try:
        im = opener(io.BytesIO(src.data))
    except Exception as exc:
        raise _corrupt(src.fmt, exc) from exc
    _check_size(*im.size)
    if src.fmt == "PNG":
        _check_png_expansion(src.data, *im.size)
    return im


def _check_png_expansion(data: bytes, width: int, height: int) -> None:
    """Refuse a PNG whose declared pixels could not fit in its bytes even at deflate's best."""
    depth, channels = data[24], _PNG_CHANNELS.get(data[25], 4)
    declared = height * (1 + math.ceil(width * channels * depth / 8))  # +1: filter byte per row
    if declared > _DEFLATE_MAX_RATIO * len(data):
        raise _corrupt("PNG", ValueError(
            f"the header declares {width}x{height} pixels but the file holds only {_human_bytes(len(data))}"
        ))


def _human_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    return f"{n / 1024:.1f} KB" if n < 2**20 else f"{n / 2**20:.1f} MB"


def _png_is_16bit_colour(data: bytes) -> bool:
    """True for 16-bit RGB or RGBA PNGs (IHDR bit depth 16, colour type 2 or 6).

    IHDR must be the first chunk, so its fields sit at fixed offsets 24 and 25.
    """
    return len(data) > 25 and data[24] == 16 and data[25] in (2, 6)


def _decode_pillow(src: _Source, for_mask: bool) -> _Raw:
    im = _open_pillow(src)
    width, height = im.size
    notices: list[str] = []
    if src.fmt == "PNG" and _png_is_16bit_colour(src.data):
        return _decode_png16_colour(src, (height, width))
    if getattr(im, "is_animated", False):
        if src.fmt == "TIFF":
            notices.append("multi-page TIFF: first page")
        else:
            notices.append(f"animated {_format_label(src.fmt)}: first frame")
        im.seek(0)
    if src.fmt == "JPEG" and not for_mask and width * height > MAX_PIXELS:
        # libjpeg can decode at 1/2, 1/4, 1/8 scale: never materialise the full-size pixels.
        target = _downscaled_size(width, height)
        im.draft(None, target)
    try:
        im.load()
    except Exception as exc:
        raise _corrupt(src.fmt, exc) from exc
    im, orientation = _apply_exif_orientation(im)
    if orientation != 1:
        notices.append("rotated according to the file's EXIF orientation tag")
        if orientation in _EXIF_SWAPS_AXES:
            width, height = height, width
    source_shape = _pillow_source_shape(im, (height, width))
    if not for_mask and width * height > MAX_PIXELS and im.mode in _RESIZE_BEFORE_ARRAY:
        # Shrink while still a Pillow image: converting first would add two or three
        # full-size copies (a 400-megapixel RGB is 1.2 GB each) only to throw them away.
        im = im.resize(_downscaled_size(width, height), Image.Resampling.LANCZOS, reducing_gap=3.0)
    array, dtype, more = _pillow_pixels(im, for_mask)
    return _Raw(array, (height, width), source_shape, dtype, src.fmt, notices + more)


def _format_label(fmt: str) -> str:
    return {"WEBP": "WebP"}.get(fmt, fmt)


_EXIF_ORIENTATION = 0x0112
_EXIF_SWAPS_AXES = (5, 6, 7, 8)  # the orientations that include a 90-degree turn


def _apply_exif_orientation(im: Image.Image) -> tuple[Image.Image, int]:
    """Phone photos are stored sideways with an orientation tag; show them upright.

    Returns (image, orientation applied; 1 = none). A broken EXIF block is not worth refusing
    an otherwise readable image for: it is ignored.
    """
    try:
        orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
        if orientation not in range(2, 9):
            return im, 1
        return ImageOps.exif_transpose(im), orientation
    except Exception:
        return im, 1


# 8-bit modes whose meaning survives resampling (palette indices and 16-bit data do not, or
# are stretched first); _limit_pixels notices the smaller array and only adds the notice.
# Not RGBA/LA: Pillow resamples those premultiplied, which would blacken transparent areas
# that the full-size path shows with their stored colours.
_RESIZE_BEFORE_ARRAY = frozenset({"L", "RGB", "RGBX", "CMYK", "YCbCr"})

_PILLOW_CHANNELS = {"1": 1, "L": 1, "P": 1, "I": 1, "F": 1, "LA": 2, "La": 2, "PA": 2, "RGB": 3,
                    "YCbCr": 3, "LAB": 3, "HSV": 3, "RGBA": 4, "RGBa": 4, "RGBX": 4, "CMYK": 4}


def _pillow_source_shape(im: Image.Image, hw: tuple[int, int]) -> tuple[int, ...]:
    channels = _PILLOW_CHANNELS.get(im.mode, 1)  # I;16 variants are single channel
    return hw if channels == 1 else (*hw, channels)


def _pillow_bands_dtype(im: Image.Image, src: _Source) -> tuple[int, str]:
    """(selectable bands, dtype) from a Pillow image's mode, without decoding it."""
    if src.fmt == "PNG" and _png_is_16bit_colour(src.data):
        return 3, "uint16"
    mode = im.mode
    if mode.startswith("I;16"):
        return 1, "uint16"
    dtype = {"1": "bool", "I": "int32", "F": "float32"}.get(mode, "uint8")
    bands = 1 if mode in ("1", "L", "LA", "La", "I", "F") else 3
    return bands, dtype


def _pillow_pixels(im: Image.Image, for_mask: bool) -> tuple[np.ndarray, str, list[str]]:
    """H x W x C array of a loaded Pillow image, alpha dropped; returns (array, dtype, notices)."""
    mode = im.mode
    notices: list[str] = []
    if mode in ("P", "PA"):
        if for_mask:  # label PNGs in palette mode store the class id as the index
            arr = np.asarray(im)
            return (arr[..., :1] if arr.ndim == 3 else arr[..., None]), "uint8", notices
        if mode == "PA" or "transparency" in im.info:
            notices.append("transparency dropped")
        # Via RGBA: Pillow warns when converting a palette with transparency straight to RGB.
        return np.asarray(im.convert("RGBA"))[..., :3], "uint8", notices
    if mode == "1":
        return np.asarray(im)[..., None], "bool", notices
    if mode.startswith("I;16") or mode in ("L", "I", "F"):
        arr = np.asarray(im)
        arr = arr.astype(arr.dtype.newbyteorder("="), copy=False)  # I;16B arrives big-endian
        return arr[..., None], arr.dtype.name, notices
    if mode in ("LA", "La"):
        notices.append(f"{'gray+alpha' if mode == 'LA' else mode}: alpha dropped")
        return np.asarray(im.convert("LA"))[..., :1], "uint8", notices
    if mode in ("RGBA", "RGBa"):
        notices.append("RGBA: alpha dropped")
        return np.asarray(im.convert("RGBA"))[..., :3], "uint8", notices
    if mode == "CMYK":
        notices.append("CMYK: converted to RGB (no colour profile applied)")
        return _cmyk_to_rgb(np.asarray(im)), "uint8", notices
    return np.asarray(im.convert("RGB")), "uint8", notices


def _cmyk_to_rgb(cmyk: np.ndarray) -> np.ndarray:
    """H x W x 4 uint8 CMYK -> H x W x 3 uint8 RGB, R = (1 - C)(1 - K), the usual uncalibrated rule.

    Pillow's own conversion subtracts (R = 1 - C - K), which turns mid tones black.
    """
    c = cmyk.astype(np.uint32)
    white = 255 - c[..., 3:4]
    rgb = ((255 - c[..., :3]) * white + 127) // 255
    return rgb.astype(np.uint8)


def _decode_png16_colour(src: _Source, hw: tuple[int, int]) -> _Raw:
    """16-bit RGB(A) PNG via OpenCV, which keeps all 16 bits (Pillow keeps the high byte only)."""
    import cv2

    _check_png_chunks(src.data)
    buf = np.frombuffer(src.data, np.uint8)
    bgr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if bgr is None or bgr.ndim != 3 or bgr.shape[:2] != hw:
        raise _corrupt("PNG")
    notices: list[str] = []
    channels = bgr.shape[2]
    rgb = bgr[..., [2, 1, 0]]
    if channels == 4:
        notices.append("RGBA: alpha dropped")
    return _Raw(rgb, hw, bgr.shape, bgr.dtype.name, "PNG", notices)


def _check_png_chunks(data: bytes) -> None:
    """Walk the chunk list to IEND; a chunk running past the end of the file means truncation.

    Done before handing the bytes to OpenCV, whose libpng reader can spend seconds on a
    chunk that claims gigabytes before it gives up.
    """
    pos = 8
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        tag = data[pos + 4:pos + 8]
        pos += 12 + length
        if pos > len(data):
            break
        if tag == b"IEND":
            return
    raise _corrupt("PNG", EOFError("the file ends inside the image data"))


# ---- TIFF


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
    """TIFF via tifffile; Pillow reads what tifffile cannot (LZW/JPEG without imagecodecs)."""
    try:
        return _decode_tifffile(src, for_mask)
    except InputError:
        raise
    except Exception as exc:
        try:
            return _decode_pillow(src, for_mask)
        except InputError as pil_error:
            if "imagecodecs" in str(exc):
                raise InputError(
                    f"this TIFF uses a compression that needs the optional 'imagecodecs' package "
                    f"(pip install imagecodecs): {_short(exc)}"
                ) from exc
            if "truncated" in str(pil_error):
                raise _corrupt("TIFF", exc) from exc
            raise InputError(f"could not read the TIFF: {_short(exc)}") from exc


def _open_tifffile(src: _Source) -> tifffile.TiffFile:
    import tifffile

    return tifffile.TiffFile(io.BytesIO(src.data))


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


def _decode_tifffile(src: _Source, for_mask: bool) -> _Raw:
    with _open_tifffile(src) as tif:
        series = tif.series[0]
        page = series.keyframe
        plan = _plan_tiff(series, page)
        _check_size(plan.width, plan.height)
        dtype = np.dtype(series.dtype)
        if math.prod(series.shape) * dtype.itemsize > _MAX_DECODE_BYTES:
            raise InputError(
                f"the TIFF would decode to {math.prod(series.shape) * dtype.itemsize / 2**30:.1f} GB "
                f"(shape {tuple(series.shape)}, {dtype.name}); the limit is {_MAX_DECODE_BYTES / 2**30:.1f} GB"
            )
        _check_tiff_complete(series, len(src.data))
        _check_tiff_expansion(series, page, plan)
        notices = list(plan.notices)
        if len(tif.series) > 1:
            notices.append(f"the TIFF holds {len(tif.series)} images: using the first")
        arr = series.asarray()
        arr = arr[plan.index].transpose(plan.order)
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


# --------------------------------------------------------------------------- to RGB


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
    sel = arr[..., unique]
    if sel.dtype == bool:
        sel = sel.astype(np.uint8) * np.uint8(255)
    elif sel.dtype != np.uint8:
        sel, more = _stretch_for_display(sel, raw, lo_pct, hi_pct)
        notices += more
    rgb = np.ascontiguousarray(sel[..., [unique.index(b) for b in chosen]])
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


def _downscaled_size(width: int, height: int) -> tuple[int, int]:
    """(W, H) scaled by one factor so W * H <= MAX_PIXELS, each side at least 1."""
    scale = math.sqrt(MAX_PIXELS / (width * height))
    w, h = max(1, int(width * scale)), max(1, int(height * scale))
    while w * h > MAX_PIXELS:  # float rounding at the boundary
        w, h = max(1, w - 1), max(1, h - 1)
    return w, h


def _limit_pixels(rgb: np.ndarray, full_hw: tuple[int, int]) -> tuple[np.ndarray, list[str]]:
    """Downscale to at most MAX_PIXELS; the notice names the full-resolution source size."""
    height, width = full_hw
    if width * height <= MAX_PIXELS:
        return rgb, []
    w, h = _downscaled_size(width, height)
    if rgb.shape[:2] != (h, w):  # JPEG draft mode may already have done part of the work
        rgb = np.asarray(Image.fromarray(rgb).resize((w, h), Image.Resampling.LANCZOS, reducing_gap=3.0))
    return rgb, [f"downscaled from {width}x{height} to {w}x{h} (limit {MAX_PIXELS / 1e6:.1f} megapixels)"]


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


# --------------------------------------------------------------------------- masks


def _check_palette(palette: np.ndarray | None, num_classes: int) -> np.ndarray | None:
    if palette is None:
        return None
    pal = np.asarray(palette)
    if pal.shape != (num_classes, 3):
        raise ValueError(f"palette must be num_classes x 3 = {num_classes} x 3, got {pal.shape}")
    if pal.min() < 0 or pal.max() > 255:
        raise ValueError("palette values must be 0..255")
    pal = pal.astype(np.uint8)
    if len({tuple(c) for c in pal.tolist()}) != num_classes:
        raise ValueError("palette colours must be distinct")
    return pal


def _mask_to_ids(raw: _Raw, num_classes: int, palette: np.ndarray | None, notices: list[str]) -> np.ndarray:
    arr = raw.array
    channels = arr.shape[2]
    if channels == 1:
        return _ids_from_labels(arr[..., 0], num_classes, notices)
    if channels != 3:
        raise InputError(
            f"the mask has {channels} channels; expected a single-channel label image "
            f"or an RGB colour-coded mask"
        )
    if arr.dtype != np.uint8:
        raise InputError(f"colour-coded masks must be 8-bit RGB; this one is {arr.dtype}")
    return _ids_from_colours(arr, num_classes, palette, raw.fmt, notices)


def _present_values(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values; a histogram for 8/16-bit labels is much faster than np.unique."""
    if values.dtype.kind in "ub" and values.dtype.itemsize <= 2:
        counts = np.bincount(values.ravel(), minlength=1)
        return np.flatnonzero(counts)
    return np.unique(values)


def _ids_from_labels(values: np.ndarray, num_classes: int, notices: list[str]) -> np.ndarray:
    """Validate class ids in a single-channel mask; 255 (ignore) is kept as it is."""
    if values.dtype.kind == "f":
        finite = np.isfinite(values)
        if not finite.all() or not np.array_equal(values, np.round(values)):
            raise InputError(f"the mask has non-integer values; expected class ids 0..{num_classes - 1} (255 = ignore)")
    present = _present_values(values)
    bad = [v for v in present.tolist() if (v < 0 or v >= num_classes) and v != 255]
    if bad:
        shown = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in bad[:8])
        more = f" (and {len(bad) - 8} more)" if len(bad) > 8 else ""
        raise InputError(
            f"the mask has label values {shown}{more} that are not classes 0..{num_classes - 1} "
            f"(255 = ignore)"
        )
    if num_classes == 2 and 255 in present.tolist() and 1 not in present.tolist():
        notices.append(
            "the mask has only values 0 and 255: 255 is read as 'ignore'; if it marks the "
            "foreground, save the mask with values 0 and 1"
        )
    return values.astype(np.int32)


def _ids_from_colours(
    rgb: np.ndarray, num_classes: int, palette: np.ndarray | None, fmt: str, notices: list[str]
) -> np.ndarray:
    """Match every pixel's colour exactly against ``palette`` (row i = colour of class i)."""
    grey = bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
    if palette is None:
        if grey:
            notices.append("the mask is grey stored as RGB: using its values as class ids")
            return _ids_from_labels(rgb[..., 0], num_classes, notices)
        raise InputError(
            "the mask is a colour image but no colour palette is known for these classes; "
            f"give a single-channel label mask (values 0..{num_classes - 1})"
        )
    keys = _colour_keys(rgb)
    pal_keys = _colour_keys(palette[None])[0]
    order = np.argsort(pal_keys)
    sorted_keys = pal_keys[order]
    pos = np.clip(np.searchsorted(sorted_keys, keys), 0, num_classes - 1)
    matched = sorted_keys[pos] == keys
    if matched.all():
        return order[pos].astype(np.int32)
    if grey:
        notices.append("the mask is grey stored as RGB: using its values as class ids")
        return _ids_from_labels(rgb[..., 0], num_classes, notices)
    unknown, counts = np.unique(keys[~matched], return_counts=True)
    top = unknown[np.argsort(-counts, kind="stable")[:3]]
    shown = ", ".join(str(((k >> 16) & 255, (k >> 8) & 255, k & 255)) for k in top.tolist())
    hint = " (JPEG compression changes colours: save masks as PNG)" if fmt == "JPEG" else ""
    raise InputError(
        f"the mask has {unknown.size} colour{'s' if unknown.size != 1 else ''} that "
        f"{'are' if unknown.size != 1 else 'is'} not in the class palette, e.g. {shown}{hint}"
    )


def _colour_keys(rgb: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 -> H x W int32 key 0xRRGGBB, so colours compare as single numbers."""
    c = rgb.astype(np.int32)
    return (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]


def _fit_mask(ids: np.ndarray, shape: tuple[int, int], notices: list[str]) -> np.ndarray:
    """Resize a same-aspect mask with nearest neighbour (class ids must never be blended)."""
    h, w = ids.shape
    height, width = shape
    if (h, w) == (height, width):
        return ids
    if abs((w / h) / (width / height) - 1.0) > _MASK_ASPECT_TOLERANCE:
        raise InputError(
            f"the mask is {w}x{h} but the image is {width}x{height}; they must be the same size "
            f"(or at least the same aspect ratio)"
        )
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.intp), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.intp), w - 1)
    notices.append(f"mask resized from {w}x{h} to {width}x{height} (nearest neighbour)")
    return np.ascontiguousarray(ids[rows[:, None], cols[None, :]])
