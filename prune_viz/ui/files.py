"""PNG transport: maps go to the browser as PNG files written fast (Gradio's own PNG encoding
of returned arrays is the slowest part of a run)."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from .. import viz


PNG_DIR = Path(tempfile.gettempdir()) / "prune_viz_png"


_PNG_MAX_AGE_S = 600.0


def write_png(rgb: np.ndarray | None, folder: Path = PNG_DIR) -> str | None:
    """H x W x 3 uint8 -> a PNG file (fast zlib level 1), its path returned.

    Gradio encodes returned arrays as PNG at zlib level 6, which costs several times the whole
    pruned forward for the page's ~10 maps; a file written here is only hashed and copied into
    Gradio's cache. Files older than ten minutes are removed as new ones are written (Gradio
    has copied them by then)."""
    import uuid

    if rgb is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    path = viz.write_png(folder / f"{uuid.uuid4().hex}.png", rgb, fast=True)
    if uuid.uuid4().int % 50 == 0:  # now and then, not on every call
        now = time.time()
        for old in folder.glob("*.png"):
            try:
                if now - old.stat().st_mtime > _PNG_MAX_AGE_S:
                    os.unlink(old)
            except OSError:
                pass
    return str(path)


_ENCODER = None  # a small thread pool shared by all sessions (OpenCV releases the GIL while encoding)


def write_pngs(images: list[np.ndarray | None]) -> list[str | None]:
    """:func:`write_png` for several images, two at a time."""
    global _ENCODER
    if len(images) < 2:
        return [write_png(im) for im in images]
    if _ENCODER is None:
        from concurrent.futures import ThreadPoolExecutor

        _ENCODER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="png")
    return list(_ENCODER.map(write_png, images))


THUMB_DIR = Path(tempfile.gettempdir()) / "prune_viz_thumbs"


def thumbnail(path: str | Path, px: int = 192, folder: Path = THUMB_DIR) -> str:
    """A small JPEG of the image at ``path`` (longest side ``px``), written once per file version:
    the example gallery shows tiles ~80 px wide, and sending the 0.4-0.6 MB example PNGs themselves
    made every first page load fetch and decode ~4 MB. The path itself when it cannot be read."""
    from PIL import Image

    path = Path(path)
    try:
        stat = path.stat()
        out = folder / f"{path.stem}_{stat.st_size}_{int(stat.st_mtime)}_{px}.jpg"
        if not out.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            with Image.open(path) as im:
                im = im.convert("RGB")
                im.thumbnail((px, px))
                tmp = out.with_suffix(f".{os.getpid()}.tmp")
                im.save(tmp, "JPEG", quality=85)
                os.replace(tmp, out)
        return str(out)
    except OSError:
        return str(path)
