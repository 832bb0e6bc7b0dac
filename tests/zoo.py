"""A zoo of hard input files, generated on demand into a temporary folder (no binaries in git).

Each ``ZOO[name](folder)`` writes one file and returns its path. ``EXPECT[name]`` is "ok" when
the loader must return a result, "error" when it must refuse with one clear InputError.
``KEYWORD[name]`` is a word that must appear in the error message (error cases) or in one of
the notices (ok cases; "" when no notice is required), so CLI and app tests can check that the
user is told the right thing.

Cases whose name starts with ``mask_`` are for ``load_mask(path, **MASK_ARGS[name])``; all
others are for ``load_image(path)``. ``MASK_IMAGE`` names the image those masks belong to.
The encoders (:func:`png_bytes`, :func:`tiff_bytes`) are shared with the property tests.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import tifffile
from PIL import Image, features

MAX_FILE_BYTES = 50 * 1024 * 1024  # mirrors prune_viz.io.MAX_FILE_BYTES; the zoo must not import the code under test

# --------------------------------------------------------------------------- encoders


def png_bytes(arr: np.ndarray) -> bytes:
    """PNG of an H x W[, C] uint8 (C = 1, 2, 3, 4) or uint16 (C = 1, 3, 4) array.

    16-bit colour goes through OpenCV: Pillow cannot write it (and reads only its high byte).
    """
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.dtype == np.uint16 and arr.ndim == 3:
        import cv2

        order = [2, 1, 0] if arr.shape[2] == 3 else [2, 1, 0, 3]
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr[..., order]))
        if not ok:
            raise RuntimeError("cv2 could not encode the 16-bit PNG")
        return buf.tobytes()
    if arr.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"PNG holds uint8 or uint16, not {arr.dtype}")
    out = io.BytesIO()
    Image.fromarray(arr).save(out, "PNG")
    return out.getvalue()


TiffLayout = Literal["last", "first", "pages", "unlabelled"]


def tiff_bytes(arr: np.ndarray, layout: TiffLayout = "last", **kwargs: object) -> bytes:
    """TIFF of an H x W[, B] array of any dtype, bands stored as ``layout`` says.

    last: interleaved samples (tifffile axes 'YXS'); first: planar samples ('SYX'); pages: one
    page per band ('QYX'); unlabelled: H pages of W x B with no shape metadata ('IYX'), which
    is how a band-last array written without photometric tags looks to a reader.
    """
    arr = np.asarray(arr)
    out = io.BytesIO()
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 1):
        tifffile.imwrite(out, arr.reshape(arr.shape[:2]), photometric="minisblack", **kwargs)
    elif layout == "last":
        tifffile.imwrite(out, arr, photometric="minisblack", planarconfig="contig", **kwargs)
    elif layout == "first":
        tifffile.imwrite(out, np.moveaxis(arr, -1, 0), photometric="minisblack", planarconfig="separate", **kwargs)
    elif layout == "pages":
        tifffile.imwrite(out, np.moveaxis(arr, -1, 0), photometric="minisblack", **kwargs)
    elif layout == "unlabelled":
        tifffile.imwrite(out, arr, photometric="minisblack", metadata=None, **kwargs)
    else:
        raise ValueError(f"unknown layout {layout!r}")
    return out.getvalue()


def _noise(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Random uint8 pixels: they do not compress, so truncation cuts real image data."""
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = Path(folder) / name
    path.write_bytes(data)
    return path


def _pil_bytes(im: Image.Image, fmt: str, **kwargs: object) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **kwargs)
    return out.getvalue()


def _png_chunk(tag: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload) & 0xFFFFFFFF)


# --------------------------------------------------------------------------- shared constants

#: Image that the mask cases belong to: 64 wide, 48 tall.
MASK_IMAGE = "png_rgb"
MASK_SHAPE = (48, 64)
MASK_CLASSES = 4
#: Class colours for colour-coded masks: background black, then red, green, blue.
PALETTE = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
MASK_ARGS: dict[str, dict[str, object]] = {}

# Colour patches of the CMYK JPEG, (C, M, Y, K) -> the sRGB we expect back. The 50 % cyan on
# 50 % black patch tells the multiplicative rule (R = 63) from Pillow's subtractive one (R = 0).
CMYK_PATCHES: list[tuple[tuple[int, int, int, int], tuple[int, int, int]]] = [
    ((0, 255, 255, 0), (255, 0, 0)),
    ((255, 0, 255, 0), (0, 255, 0)),
    ((255, 255, 0, 0), (0, 0, 255)),
    ((0, 0, 0, 0), (255, 255, 255)),
    ((0, 0, 0, 128), (127, 127, 127)),
    ((128, 0, 0, 128), (63, 127, 127)),
]
GIF_FRAME_COLOURS = [(255, 0, 0), (0, 0, 255)]  # first frame red, second blue

# --------------------------------------------------------------------------- image cases


def png_rgb(folder: Path) -> Path:
    """Plain 64 x 48 RGB: the baseline, and the image the mask cases belong to."""
    return _write(folder, "png_rgb.png", png_bytes(_noise((*MASK_SHAPE, 3))))


def png16_gray(folder: Path) -> Path:
    """12-bit data in a 16-bit grey PNG (values 1000..4999): must be stretched, not truncated."""
    ramp = (1000 + np.arange(40 * 50) % 4000).astype(np.uint16).reshape(40, 50)
    return _write(folder, "png16_gray.png", png_bytes(ramp))


def png16_rgb(folder: Path) -> Path:
    """16-bit RGB, 12-bit values: Pillow alone would show it nearly black (high byte only)."""
    rgb = np.zeros((20, 30, 3), np.uint16)
    rgb[..., 0] = np.linspace(3000, 4000, 20, dtype=np.uint16)[:, None]  # red grows downwards
    rgb[..., 1] = np.linspace(0, 100, 30, dtype=np.uint16)[None, :]  # green grows rightwards
    rgb[..., 2] = np.linspace(3000, 1000, 30, dtype=np.uint16)[None, :]  # blue shrinks rightwards
    return _write(folder, "png16_rgb.png", png_bytes(rgb))


def png_rgba(folder: Path) -> Path:
    """RGBA with a half-transparent half: alpha is dropped, colours kept as stored."""
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 1] = 200
    rgba[..., 3] = 255
    rgba[:, 16:, 3] = 0
    return _write(folder, "png_rgba.png", png_bytes(rgba))


def png_gray_alpha(folder: Path) -> Path:
    la = np.stack([np.full((20, 20), 90, np.uint8), np.full((20, 20), 128, np.uint8)], axis=-1)
    return _write(folder, "png_gray_alpha.png", _pil_bytes(Image.fromarray(la, "LA"), "PNG"))


def png_palette(folder: Path) -> Path:
    """Palette (P mode) image: index 0 = orange, index 1 = teal."""
    im = Image.new("P", (24, 16))
    im.putpalette([255, 128, 0, 0, 128, 128] + [0] * (256 * 3 - 6))
    px = np.zeros((16, 24), np.uint8)
    px[:, 12:] = 1
    im.frombytes(px.tobytes())
    return _write(folder, "png_palette.png", _pil_bytes(im, "PNG"))


def png_1x1(folder: Path) -> Path:
    return _write(folder, "png_1x1.png", png_bytes(np.array([[[10, 20, 30]]], np.uint8)))


def png_9000x50(folder: Path) -> Path:
    """9000 wide, 50 tall: under the pixel limit, so kept at full size, with a notice."""
    strip = np.zeros((50, 9000, 3), np.uint8)
    strip[..., 0] = (np.arange(9000) % 256).astype(np.uint8)
    return _write(folder, "png_9000x50.png", png_bytes(strip))


def jpeg_cmyk(folder: Path) -> Path:
    """CMYK JPEG (Adobe marker, as Photoshop writes) with the CMYK_PATCHES in a row, 16 px each."""
    im = Image.new("CMYK", (16 * len(CMYK_PATCHES), 16))
    for i, (cmyk, _) in enumerate(CMYK_PATCHES):
        im.paste(cmyk, (16 * i, 0, 16 * (i + 1), 16))
    return _write(folder, "jpeg_cmyk.jpg", _pil_bytes(im, "JPEG", quality=95))


def jpeg_exif_rotated(folder: Path) -> Path:
    """Stored 32 wide x 16 tall, left red / right blue, EXIF orientation 6 (turn 90 deg clockwise).

    Shown upright it is 16 wide x 32 tall, red on top.
    """
    arr = np.zeros((16, 32, 3), np.uint8)
    arr[:, :16, 0] = 255
    arr[:, 16:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    return _write(folder, "jpeg_exif_rotated.jpg", _pil_bytes(Image.fromarray(arr), "JPEG", quality=95, exif=exif))


def gif_animated(folder: Path) -> Path:
    frames = [Image.new("RGB", (20, 20), colour) for colour in GIF_FRAME_COLOURS]
    path = Path(folder) / "gif_animated.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


def bmp_rgb(folder: Path) -> Path:
    return _write(folder, "bmp_rgb.bmp", _pil_bytes(Image.fromarray(_noise((10, 12, 3), 3)), "BMP"))


def webp_rgb(folder: Path) -> Path:
    return _write(folder, "webp_rgb.webp", _pil_bytes(Image.fromarray(_noise((10, 12, 3), 4)), "WEBP", lossless=True))


def four_band_u16() -> np.ndarray:
    """40 x 60 x 4 uint16 whose bands survive a per-band stretch distinguishably.

    Band 1 grows left to right, band 2 top to bottom, band 3 right to left, band 4 bottom to
    top, so the band order (and a transposed read) shows in the RGB result.
    """
    rows = np.arange(40, dtype=np.uint16)[:, None] * np.ones((1, 60), np.uint16)
    cols = np.ones((40, 1), np.uint16) * np.arange(60, dtype=np.uint16)[None, :]
    return np.stack([1000 + cols, 2000 + rows, 3000 + (59 - cols), 4000 + (39 - rows)], axis=-1)


def tiff4_u16_last(folder: Path) -> Path:
    return _write(folder, "tiff4_u16_last.tif", tiff_bytes(four_band_u16(), "last"))


def tiff4_u16_first(folder: Path) -> Path:
    return _write(folder, "tiff4_u16_first.tif", tiff_bytes(four_band_u16(), "first"))


def tiff4_u16_pages(folder: Path) -> Path:
    return _write(folder, "tiff4_u16_pages.tif", tiff_bytes(four_band_u16(), "pages"))


def tiff4_u16_unlabelled(folder: Path) -> Path:
    return _write(folder, "tiff4_u16_unlabelled.tif", tiff_bytes(four_band_u16(), "unlabelled"))


def tiff_f32_nan(folder: Path) -> Path:
    arr = np.linspace(-1.0, 1.0, 30 * 40, dtype=np.float32).reshape(30, 40)
    arr[0, 0] = np.nan
    arr[5, 5] = np.inf
    return _write(folder, "tiff_f32_nan.tif", tiff_bytes(arr))


def tiff_i16(folder: Path) -> Path:
    """Signed 16-bit with negative values (e.g. a DEM below sea level)."""
    arr = np.linspace(-500, 300, 24 * 24).astype(np.int16).reshape(24, 24)
    return _write(folder, "tiff_i16.tif", tiff_bytes(arr))


def tiff_f64_2band(folder: Path) -> Path:
    arr = np.random.default_rng(5).normal(size=(20, 20, 2))
    return _write(folder, "tiff_f64_2band.tif", tiff_bytes(arr, "last"))


def tiff_constant_u16(folder: Path) -> Path:
    """Every pixel 1234: the stretch range is empty and must not divide by zero."""
    return _write(folder, "tiff_constant_u16.tif", tiff_bytes(np.full((16, 16, 3), 1234, np.uint16), "last"))


def tiff_nodata(folder: Path) -> Path:
    """Float GeoTIFF-style raster with a wide -9999 no-data border (GDAL_NODATA tag 42113)."""
    arr = np.full((40, 40), -9999.0, np.float32)
    arr[10:30, 10:30] = np.linspace(0.0, 1.0, 400, dtype=np.float32).reshape(20, 20)
    data = tiff_bytes(arr, extratags=[(42113, "s", 0, "-9999", True)])
    return _write(folder, "tiff_nodata.tif", data)


def tiff_rgba_u8(folder: Path) -> Path:
    """RGB + unassociated alpha as tifffile writes an H x W x 4 array by default."""
    rgba = _noise((16, 16, 4), 6)
    return _write(folder, "tiff_rgba_u8.tif", _tifffile_bytes(rgba, photometric="rgb"))


def tiff_lzw_rgb(folder: Path) -> Path:
    """LZW (GDAL's favourite): tifffile needs imagecodecs for it, Pillow's libtiff does not."""
    data = _pil_bytes(Image.fromarray(_noise((16, 20, 3), 7)), "TIFF", compression="tiff_lzw")
    return _write(folder, "tiff_lzw_rgb.tif", data)


def tiff_palette(folder: Path) -> Path:
    """Colour-mapped TIFF (index 0 = red, 1 = green), as land-cover rasters often are."""
    idx = np.zeros((10, 10), np.uint8)
    idx[:, 5:] = 1
    cmap = np.zeros((3, 256), np.uint16)
    cmap[0, 0] = 65535
    cmap[1, 1] = 65535
    return _write(folder, "tiff_palette.tif", _tifffile_bytes(idx, photometric="palette", colormap=cmap))


def _tifffile_bytes(arr: np.ndarray, **kwargs: object) -> bytes:
    out = io.BytesIO()
    tifffile.imwrite(out, arr, **kwargs)
    return out.getvalue()


# --------------------------------------------------------------------------- refused images


def empty(folder: Path) -> Path:
    return _write(folder, "empty.png", b"")


def text_as_png(folder: Path) -> Path:
    return _write(folder, "text_as_png.png", b"this is not an image, only text saved with a .png name\n" * 4)


def png_truncated(folder: Path) -> Path:
    data = png_bytes(_noise((64, 64, 3), 1))
    return _write(folder, "png_truncated.png", data[: len(data) * 6 // 10])


def jpeg_truncated(folder: Path) -> Path:
    data = _pil_bytes(Image.fromarray(_noise((64, 64, 3), 2)), "JPEG", quality=90)
    return _write(folder, "jpeg_truncated.jpg", data[: len(data) * 6 // 10])


def tiff_truncated(folder: Path) -> Path:
    data = tiff_bytes(_noise((64, 64, 3), 8), "last")
    return _write(folder, "tiff_truncated.tif", data[: len(data) * 6 // 10])


def png_bomb_header(folder: Path) -> Path:
    """A few hundred bytes whose IHDR claims 40000 x 40000 RGB (4.8 GB decoded)."""
    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    data = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 256)) + _png_chunk(b"IEND", b""))
    return _write(folder, "png_bomb_header.png", data)


def tiff_bomb_header(folder: Path) -> Path:
    """A tiny uncompressed TIFF whose tags claim 40000 x 40000 8-bit grey in one strip."""
    entries = [  # (tag, type: 3 = SHORT, 4 = LONG, value)
        (256, 4, 40000), (257, 4, 40000), (258, 3, 8), (259, 3, 1), (262, 3, 1),
        (273, 4, 0), (277, 3, 1), (278, 4, 40000), (279, 4, 16),
    ]
    strip_offset = 8 + 2 + 12 * len(entries) + 4
    ifd = struct.pack("<H", len(entries))
    for tag, typ, value in entries:
        value = strip_offset if tag == 273 else value
        packed = struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, typ, 1) + packed
    data = b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + b"\x00" * 16
    return _write(folder, "tiff_bomb_header.tif", data)


def oversize_file(folder: Path) -> Path:
    """A real PNG padded (sparsely: no disk used) to one byte over the 50 MB limit."""
    path = _write(folder, "oversize_file.png", png_bytes(_noise((*MASK_SHAPE, 3))))
    with path.open("r+b") as fh:
        fh.truncate(MAX_FILE_BYTES + 1)
    return path


# --------------------------------------------------------------------------- masks


def _labels() -> np.ndarray:
    """48 x 64 class ids 0..3 in four vertical stripes, plus a 255 (ignore) square."""
    ids = np.repeat(np.arange(4, dtype=np.uint8), 16)[None, :].repeat(48, axis=0)
    ids[:8, :8] = 255
    return ids


def mask_labels_ok(folder: Path) -> Path:
    return _write(folder, "mask_labels_ok.png", png_bytes(_labels()))


def mask_palette_png(folder: Path) -> Path:
    """Label mask in palette mode (VOC style): the indices are the class ids, not the colours."""
    im = Image.fromarray(_labels(), "L").convert("P")
    im.frombytes(_labels().tobytes())
    im.putpalette(PALETTE.ravel().tolist() + [0] * (256 * 3 - PALETTE.size))
    return _write(folder, "mask_palette_png.png", _pil_bytes(im, "PNG"))


def mask_rgb_ok(folder: Path) -> Path:
    ids = _labels()
    ids[ids == 255] = 0
    return _write(folder, "mask_rgb_ok.png", png_bytes(PALETTE[ids]))


def mask_same_aspect(folder: Path) -> Path:
    """Twice the image size, same aspect ratio: resized with nearest neighbour, with a notice."""
    return _write(folder, "mask_same_aspect.png", png_bytes(np.repeat(np.repeat(_labels(), 2, 0), 2, 1)))


def mask_wrong_size(folder: Path) -> Path:
    """50 x 50 for a 64 x 48 image: different aspect ratio, refused."""
    return _write(folder, "mask_wrong_size.png", png_bytes(np.zeros((50, 50), np.uint8)))


def mask_unknown_labels(folder: Path) -> Path:
    ids = _labels()
    ids[40:, 40:] = 7
    ids[0, 63] = 9
    return _write(folder, "mask_unknown_labels.png", png_bytes(ids))


def mask_rgb_unknown_colour(folder: Path) -> Path:
    rgb = PALETTE[np.zeros(MASK_SHAPE, np.uint8)].copy()
    rgb[10:20, 10:20] = (255, 0, 255)
    return _write(folder, "mask_rgb_unknown_colour.png", png_bytes(rgb))


def mask_jpeg_colour(folder: Path) -> Path:
    """A colour mask saved as JPEG: compression invents colours at every edge."""
    ids = _labels()
    ids[ids == 255] = 0
    return _write(folder, "mask_jpeg_colour.jpg", _pil_bytes(Image.fromarray(PALETTE[ids]), "JPEG", quality=75))


for _name in ("mask_labels_ok", "mask_palette_png", "mask_same_aspect", "mask_wrong_size", "mask_unknown_labels"):
    MASK_ARGS[_name] = {"shape": MASK_SHAPE, "num_classes": MASK_CLASSES}
for _name in ("mask_rgb_ok", "mask_rgb_unknown_colour", "mask_jpeg_colour"):
    MASK_ARGS[_name] = {"shape": MASK_SHAPE, "num_classes": MASK_CLASSES, "palette": PALETTE}

# --------------------------------------------------------------------------- the registry

# name: (writer, "ok" | "error", keyword in the error message or in a notice)
_CASES: dict[str, tuple[Callable[[Path], Path], str, str]] = {
    "png_rgb": (png_rgb, "ok", ""),
    "png16_gray": (png16_gray, "ok", "16-bit"),
    "png16_rgb": (png16_rgb, "ok", "16-bit"),
    "png_rgba": (png_rgba, "ok", "alpha dropped"),
    "png_gray_alpha": (png_gray_alpha, "ok", "alpha dropped"),
    "png_palette": (png_palette, "ok", ""),
    "png_1x1": (png_1x1, "ok", "very small image (1x1)"),
    "png_9000x50": (png_9000x50, "ok", "9000x50"),
    "jpeg_cmyk": (jpeg_cmyk, "ok", "CMYK"),
    "jpeg_exif_rotated": (jpeg_exif_rotated, "ok", "EXIF"),
    "gif_animated": (gif_animated, "ok", "first frame"),
    "bmp_rgb": (bmp_rgb, "ok", ""),
    "tiff4_u16_last": (tiff4_u16_last, "ok", "4 bands"),
    "tiff4_u16_first": (tiff4_u16_first, "ok", "4 bands"),
    "tiff4_u16_pages": (tiff4_u16_pages, "ok", "4 bands"),
    "tiff4_u16_unlabelled": (tiff4_u16_unlabelled, "ok", "4 bands"),
    "tiff_f32_nan": (tiff_f32_nan, "ok", "NaN"),
    "tiff_i16": (tiff_i16, "ok", "stretched"),
    "tiff_f64_2band": (tiff_f64_2band, "ok", "2 bands"),
    "tiff_constant_u16": (tiff_constant_u16, "ok", "stretched"),
    "tiff_nodata": (tiff_nodata, "ok", "no-data"),
    "tiff_rgba_u8": (tiff_rgba_u8, "ok", "alpha dropped"),
    "tiff_lzw_rgb": (tiff_lzw_rgb, "ok", ""),
    "tiff_palette": (tiff_palette, "ok", ""),
    "empty": (empty, "error", "empty"),
    "text_as_png": (text_as_png, "error", "not an image"),
    "png_truncated": (png_truncated, "error", "truncated"),
    "jpeg_truncated": (jpeg_truncated, "error", "truncated"),
    "tiff_truncated": (tiff_truncated, "error", "truncated"),
    "png_bomb_header": (png_bomb_header, "error", "40000x40000"),
    "tiff_bomb_header": (tiff_bomb_header, "error", "40000x40000"),
    "oversize_file": (oversize_file, "error", "too large"),
    "mask_labels_ok": (mask_labels_ok, "ok", ""),
    "mask_palette_png": (mask_palette_png, "ok", ""),
    "mask_rgb_ok": (mask_rgb_ok, "ok", ""),
    "mask_same_aspect": (mask_same_aspect, "ok", "resized"),
    "mask_wrong_size": (mask_wrong_size, "error", "50x50"),
    "mask_unknown_labels": (mask_unknown_labels, "error", "7, 9"),
    "mask_rgb_unknown_colour": (mask_rgb_unknown_colour, "error", "(255, 0, 255)"),
    "mask_jpeg_colour": (mask_jpeg_colour, "error", "JPEG"),
}
if features.check("webp"):  # Pillow wheels ship libwebp, but a system Pillow may not
    _CASES["webp_rgb"] = (webp_rgb, "ok", "")

ZOO: dict[str, Callable[[Path], Path]] = {name: case[0] for name, case in _CASES.items()}
EXPECT: dict[str, str] = {name: case[1] for name, case in _CASES.items()}
KEYWORD: dict[str, str] = {name: case[2] for name, case in _CASES.items()}
