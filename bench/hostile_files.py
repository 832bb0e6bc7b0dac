"""Small files that declare huge images: the decompression-amplification cases of issue #13.

Each maker writes a file of a few hundred KB whose header promises ``side`` x ``side`` pixels,
without ever holding that many pixels in this process (except the GIF, which Pillow can only
write from a full image: ``side``² bytes). Used by ``bench/bench_hostile.py`` at full size
(20000) and by the tests at small sizes with lowered limits.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np


def zstd_tiff(path: Path, side: int = 20000, tile: int = 1024, bands: int = 4) -> Path:
    """A tiled, ZSTD-compressed uint8 TIFF of zeros (20000² x 4: 1.6 GB decoded, ~60 KB stored)."""
    import tifffile

    zeros = np.zeros((tile, tile, bands), np.uint8)
    n_tiles = (-(-side // tile)) ** 2
    tifffile.imwrite(
        path, data=(zeros for _ in range(n_tiles)), shape=(side, side, bands), dtype=np.uint8,
        tile=(tile, tile), compression="zstd", photometric="rgb" if bands in (3, 4) else "minisblack",
        extrasamples=("unassalpha",) if bands == 4 else None,
    )
    return path


def rgba_png(path: Path, side: int = 20000) -> Path:
    """An 8-bit RGBA PNG of zeros (20000²: 1.6 GB decoded, ~1.5 MB stored), written row by row."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    row = b"\x00" * (1 + 4 * side)  # filter byte + pixels
    comp = zlib.compressobj(9)
    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n")
        fh.write(chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 6, 0, 0, 0)))
        for _ in range(side):
            data = comp.compress(row)
            if data:
                fh.write(chunk(b"IDAT", data))
        fh.write(chunk(b"IDAT", comp.flush()))
        fh.write(chunk(b"IEND", b""))
    return path


def big_gif(path: Path, side: int = 20000) -> Path:
    """A one-colour palette GIF (20000²: 400 MB decoded as palette indices, ~300 KB stored)."""
    from PIL import Image

    im = Image.new("P", (side, side), 0)
    im.putpalette([40, 90, 160] + [0, 0, 0] * 255)
    im.save(path, format="GIF")
    return path


MAKERS = {"zstd_tiff": (zstd_tiff, "z.tif"), "rgba_png": (rgba_png, "rgba.png"), "gif": (big_gif, "big.gif")}
