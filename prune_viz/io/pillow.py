"""Decoding through Pillow (PNG, JPEG, GIF, BMP, WebP, and TIFFs tifffile cannot read).

Never ``Image.open``: the format's own opener reads only the header, so the declared size is
checked before any pixel is decoded, and Pillow's process-wide limits stay untouched.
16-bit RGB PNGs go through OpenCV, which keeps all 16 bits.
"""

from __future__ import annotations

import importlib
import io
import math
from typing import Callable

import numpy as np
from PIL import Image, ImageOps

from . import guards
from .guards import _DEFLATE_MAX_RATIO, raised_by_decoder, _NOT_AN_IMAGE, InputError, _check_size, _corrupt, _downscaled_size, _human_bytes, _Raw, _short, _Source

_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by IHDR colour type


# Sniffed format -> (Pillow plugin module, its header-only opener).
_PILLOW_OPENERS = {
    "PNG": ("PngImagePlugin", "PngImageFile"),
    "JPEG": ("JpegImagePlugin", "jpeg_factory"),
    "GIF": ("GifImagePlugin", "GifImageFile"),
    "BMP": ("BmpImagePlugin", "BmpImageFile"),
    "TIFF": ("TiffImagePlugin", "TiffImageFile"),
    "WEBP": ("WebPImagePlugin", "WebPImageFile"),
}


def _pillow_opener(fmt: str) -> Callable[..., Image.Image]:
    """The format's own Pillow opener: parses the header only, without Image.open's global limit."""
    if fmt not in _PILLOW_OPENERS:
        raise InputError(_NOT_AN_IMAGE)
    module, opener = _PILLOW_OPENERS[fmt]
    try:
        return getattr(importlib.import_module(f"PIL.{module}"), opener)
    except ImportError as exc:  # e.g. Pillow built without libwebp
        raise InputError(f"{fmt} images are not supported by this installation's Pillow ({_short(exc)})") from exc


def _open_pillow(src: _Source) -> Image.Image:
    """Header-only open; the declared size is checked here, before anything is decoded."""
    opener = _pillow_opener(src.fmt)
    try:
        im = opener(io.BytesIO(src.data))
    except MemoryError:
        raise  # the server's condition, not the file's: _user_errors says so
    except Exception as exc:
        if not raised_by_decoder(exc):
            raise
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
    if src.fmt == "JPEG" and not for_mask and width * height > guards.MAX_PIXELS:
        # libjpeg can decode at 1/2, 1/4, 1/8 scale: never materialise the full-size pixels.
        target = _downscaled_size(width, height)
        im.draft(None, target)
    nbytes = im.size[0] * im.size[1] * _PILLOW_BYTES_PER_PIXEL.get(im.mode, 4)
    guards.check_decode_budget(nbytes, f"{width}x{height} {im.mode} {_format_label(src.fmt)}")
    with guards.decode_slot(nbytes):
        try:
            im.load()
        except MemoryError:
            raise
        except Exception as exc:
            if not raised_by_decoder(exc):
                raise
            raise _corrupt(src.fmt, exc) from exc
        im, orientation = _apply_exif_orientation(im)
        if orientation != 1:
            notices.append("rotated according to the file's EXIF orientation tag")
            if orientation in _EXIF_SWAPS_AXES:
                width, height = height, width
        source_shape = _pillow_source_shape(im, (height, width))
        if not for_mask and width * height > guards.MAX_PIXELS:
            im, more = _shrink_before_array(im, _downscaled_size(width, height))
            notices += more
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
_RESIZE_BEFORE_ARRAY = frozenset({"L", "RGB", "RGBX", "CMYK", "YCbCr"})
# Bytes Pillow allocates per pixel for a mode's decoded image (RGB is stored padded to 4).
_PILLOW_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "LA": 4, "La": 4, "PA": 4, "I;16": 2, "I;16B": 2,
                           "I;16L": 2, "I;16N": 2, "I": 4, "F": 4, "RGB": 4, "RGBA": 4, "RGBa": 4,
                           "RGBX": 4, "CMYK": 4, "YCbCr": 4, "LAB": 4, "HSV": 4}


def _shrink_before_array(im: Image.Image, size: tuple[int, int]) -> tuple[Image.Image, list[str]]:
    """Downscale a large decoded image while it is still a Pillow image, making at most one
    more full-size copy: converting to an array first would add two or three (a 400-megapixel
    RGB is 1.2 GB each) only to throw them away. Returns (image, notices)."""
    notices: list[str] = []
    if im.mode in ("RGBA", "LA"):
        # Alpha goes first, keeping the stored colours as the full-size path does: resampling
        # with alpha premultiplies, which would blacken transparent areas.
        notices.append(f"{'RGBA' if im.mode == 'RGBA' else 'gray+alpha'}: alpha dropped")
        im = im.convert("RGB" if im.mode == "RGBA" else "L")
    if im.mode in ("P", "PA"):
        return im.resize(size, Image.Resampling.NEAREST), notices  # indices cannot be averaged
    if im.mode in _RESIZE_BEFORE_ARRAY:
        return im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0), notices
    return im, notices

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
    nbytes = hw[0] * hw[1] * (4 if src.data[25] == 6 else 3) * 2
    guards.check_decode_budget(nbytes, f"{hw[1]}x{hw[0]} 16-bit PNG")
    buf = np.frombuffer(src.data, np.uint8)
    with guards.decode_slot(nbytes):
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
