"""Guards at the door: limits, the error users see, reading bytes, sniffing the format.

Every size limit lives here as a module attribute (tests lower them with ``monkeypatch``), so
the decoders read them as ``guards.MAX_PIXELS`` rather than copying the value at import.
"""

from __future__ import annotations

import math
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import UserError


class InputError(UserError):
    """Bad user input; the message is shown to the user as is.

    (``gr.Error`` in the app, ``error: ...`` and exit status 2 in the CLI.)
    """


MAX_PIXELS: int = 4096 * 4096  # larger images are downscaled (with a notice), not refused
MAX_DECODE_PIXELS: int = 20000 * 20000  # header claims above this are refused before decoding (decompression bombs)
MAX_FILE_BYTES: int = 50 * 1024 * 1024
SMALL_SIDE: int = 16  # below this a ViT sees less than one patch: we still run, but say so

# A 60 KB ZSTD TIFF or a 300 KB GIF can declare gigabytes of pixels, and the ratio checks below
# cover only some codecs: so every decoder's allocation is bounded from the header, bands and
# bytes per sample included. Above the budget only decoders that can read at reduced size
# (JPEG draft, tiled or striped TIFF) go on; everything else is refused before decoding.
DECODE_BUDGET_BYTES: int = 512 * 2**20
# Decodes above this size take a process-wide slot, one at a time, so two large uploads at once
# cannot add their peaks (the app serves many browsers from one process).
LARGE_DECODE_BYTES: int = 64 * 2**20
_LARGE_DECODE_SLOT = threading.RLock()  # re-entrant: load_image holds it around the decoders that take it
# Most bytes one stored byte can decode to. Deflate's format caps it near 1032:1; LZW and
# PackBits stay well below 5000:1. A header promising more pixels than the stored bytes can
# hold is a truncated file or a bomb, and is refused before the decoder allocates the image
# (Pillow, OpenCV and tifffile all allocate the declared size first, then zero-fill or fail).
_DEFLATE_MAX_RATIO: float = 1100.0
_TIFF_MAX_RATIO: dict[int, float] = {1: 1.0, 5: 5000.0, 8: _DEFLATE_MAX_RATIO, 32773: 5000.0, 32946: _DEFLATE_MAX_RATIO}

_FORMATS_TEXT = "PNG, JPEG, TIFF, GIF, BMP, WebP"
_NOT_AN_IMAGE = f"not an image we can read ({_FORMATS_TEXT})"


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


# The decoder libraries, by the folder their code lives in (a Cython frame of imagecodecs
# names a relative "imagecodecs/_imcd.pyx"): exceptions raised there are the file's fault.
_DECODER_DIRS = frozenset({"PIL", "tifffile", "imagecodecs", "cv2"})
_NUMPY_PART = f"{os.sep}numpy{os.sep}"


def raised_by_decoder(exc: BaseException) -> bool:
    """True when ``exc`` was raised inside a decoder library (Pillow, tifffile, imagecodecs,
    OpenCV) while it parsed a user's bytes.

    Judged by the innermost frame of the traceback that is not numpy's (numpy only does what
    its caller asked). Anything else, our own code above all, is a bug: it must not be
    disguised as the user's fault, and goes on as an internal error."""
    tb = exc.__traceback__
    last_file = ""
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if _NUMPY_PART not in filename:
            last_file = filename
        tb = tb.tb_next
    return not _DECODER_DIRS.isdisjoint(last_file.replace("\\", "/").split("/"))


@contextmanager
def _user_errors(what: str) -> Iterator[None]:
    """Turn what a decoder library throws into an InputError with a one-line reason; our own
    exceptions pass through untouched (bugs must show as bugs).

    The cause stays chained (``from exc``) for logs; the user sees only the message.
    """
    try:
        yield
    except InputError:
        raise
    except MemoryError as exc:
        raise InputError(f"the server ran out of memory reading this {what}; try a smaller file") from exc
    except Exception as exc:
        if not raised_by_decoder(exc):
            raise
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


def check_decode_budget(nbytes: int, what: str) -> None:
    """Refuse a decode that would allocate more than DECODE_BUDGET_BYTES (``what`` names the
    image, e.g. "20000x20000 RGBA PNG")."""
    if nbytes > DECODE_BUDGET_BYTES:
        raise InputError(
            f"the {what} would take {nbytes / 2**20:,.0f} MB of memory once decoded; the limit is "
            f"{DECODE_BUDGET_BYTES / 2**20:,.0f} MB. Downscale it first, or save it as JPEG or as a tiled "
            "TIFF, which are read at reduced size"
        )


@contextmanager
def decode_slot(nbytes: int) -> Iterator[None]:
    """Hold the process-wide large-decode slot while decoding more than LARGE_DECODE_BYTES."""
    if nbytes <= LARGE_DECODE_BYTES:
        yield
        return
    with _LARGE_DECODE_SLOT:
        yield


def _human_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    return f"{n / 1024:.1f} KB" if n < 2**20 else f"{n / 2**20:.1f} MB"



def _downscaled_size(width: int, height: int) -> tuple[int, int]:
    """(W, H) scaled by one factor so W * H <= MAX_PIXELS, each side at least 1."""
    scale = math.sqrt(MAX_PIXELS / (width * height))
    w, h = max(1, int(width * scale)), max(1, int(height * scale))
    while w * h > MAX_PIXELS:  # float rounding at the boundary
        w, h = max(1, w - 1), max(1, h - 1)
    return w, h

