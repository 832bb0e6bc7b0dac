"""Image sets from a zip or a folder, read one member at a time behind the same guards as a
single upload.

A zip is hostile input like any file: it may hold a million members, declare terabytes once
inflated (a zip bomb), lie about its members' sizes, or hold things that are not images. So
:class:`SafeZip` checks the member count and the declared total before anything is inflated,
refuses a member whose declared size or compression ratio is out of bounds, reads each member
with a hard cap (a member that inflates past its declared size stops there), and never holds
more than one member's bytes. Non-images are not errors of the whole set: they come back with
the reason they were skipped, for the report.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from . import guards
from .guards import InputError

MAX_SET_MEMBERS: int = 2000  # zip members / folder files looked at; more is refused, not truncated
MAX_SET_BYTES: int = 2 * 2**30  # declared uncompressed total of a zip's members
MAX_ZIP_RATIO: float = 200.0  # images are compressed already; a member that deflates 200:1 (over 1 MB) is a bomb

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp", ".webp")


@dataclass(frozen=True)
class SetEntry:
    """One image of a set: its name, where its bytes are (a path, or a member of the open zip),
    its mask if one matched, or why it is skipped (``skipped`` set, nothing to read)."""

    name: str
    source: Path | str | None
    mask: Path | str | None = None
    skipped: str | None = None


def is_mask_name(name: str) -> bool:
    return PurePosixPath(name).stem.endswith("_mask")


def _mask_key(name: str) -> str:
    """'a/b/x_mask.png' -> 'a/b/x' (the image's stem path it belongs to)."""
    p = PurePosixPath(name)
    return str(p.with_name(p.stem[: -len("_mask")]))


def match_masks(names: list[str], masks_dir: Path | None) -> dict[str, Path | str]:
    """image name -> its mask: ``<stem>_mask.<any ext>`` next to it (in the same folder or zip),
    else in ``masks_dir`` the same stem + ``_mask`` or the same file name."""
    beside = {_mask_key(n): n for n in names if is_mask_name(n)}
    out: dict[str, Path | str] = {}
    extra: dict[str, Path] = {}
    if masks_dir is not None:
        for p in sorted(masks_dir.iterdir()):
            if p.is_file():
                extra.setdefault(p.stem, p)
                extra.setdefault(p.name, p)
    for n in names:
        if is_mask_name(n):
            continue
        p = PurePosixPath(n)
        key = str(p.with_suffix(""))
        if key in beside:
            out[n] = beside[key]
        elif f"{p.stem}_mask" in extra:
            out[n] = extra[f"{p.stem}_mask"]
        elif p.name in extra:
            out[n] = extra[p.name]
    return out


class SafeZip:
    """A zip opened for reading images one member at a time (use as a context manager)."""

    def __init__(self, path: str | os.PathLike) -> None:
        path = Path(path)
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise InputError(f"{path.name} is not a zip archive we can read ({exc})") from None
        infos = [i for i in self._zip.infolist() if not i.is_dir()]
        if len(infos) > MAX_SET_MEMBERS:
            self._zip.close()
            raise InputError(f"the zip holds {len(infos)} files; the limit is {MAX_SET_MEMBERS}. Split it into smaller sets")
        total = sum(i.file_size for i in infos)
        if total > MAX_SET_BYTES:
            self._zip.close()
            raise InputError(f"the zip's files would take {total / 2**30:.1f} GB once unpacked; the limit is "
                             f"{MAX_SET_BYTES / 2**30:g} GB")
        self._infos = {i.filename: i for i in infos}

    def __enter__(self) -> "SafeZip":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._zip.close()

    @property
    def names(self) -> list[str]:
        """Member file names, sorted; hidden files and macOS resource forks left out."""
        return sorted(n for n in self._infos if not any(part.startswith((".", "__MACOSX")) for part in PurePosixPath(n).parts))

    def read(self, name: str) -> bytes:
        """One member's bytes, inflated under :data:`guards.MAX_FILE_BYTES` and the ratio cap."""
        info = self._infos[name]
        if info.file_size > guards.MAX_FILE_BYTES:
            raise InputError(f"{info.file_size / 2**20:.1f} MB unpacked; the limit is {guards.MAX_FILE_BYTES / 2**20:g} MB")
        if info.file_size > 2**20 and info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1):
            raise InputError(f"compressed {info.file_size / max(info.compress_size, 1):,.0f}:1 (over "
                             f"{MAX_ZIP_RATIO:g}:1 is refused as a possible zip bomb; save it as PNG or JPEG first)")
        try:
            with self._zip.open(info) as fh:
                data = fh.read(guards.MAX_FILE_BYTES + 1)
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError) as exc:
            raise InputError(f"cannot unpack it ({exc})") from None
        if len(data) > guards.MAX_FILE_BYTES:  # the header lied about the size
            raise InputError(f"inflates past {guards.MAX_FILE_BYTES / 2**20:g} MB, a zip bomb")
        return data

    def entries(self, masks_dir: Path | None = None) -> list[SetEntry]:
        """The images (non-images skipped, with the reason), each with its mask if one matched."""
        names = self.names
        masks = match_masks(names, masks_dir)
        return [_entry(n, n, masks.get(n)) for n in names if not is_mask_name(n)]


def _entry(name: str, source: Path | str, mask: Path | str | None) -> SetEntry:
    if PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES:
        return SetEntry(name, None, skipped=f"not an image ({PurePosixPath(name).suffix or 'no extension'}); "
                        f"sets take {', '.join(IMAGE_SUFFIXES)}")
    return SetEntry(name, source, mask)


def folder_entries(folder: Path, masks_dir: Path | None = None, quiet: bool = False) -> list[SetEntry]:
    """A folder's images (not recursive, sorted by name), each with its mask if one matched;
    ``quiet``: files that are no images are left out instead of listed as skipped."""
    files = []
    with os.scandir(folder) as it:
        for e in it:
            if e.is_file() and not e.name.startswith("."):
                files.append(e.name)
                if len(files) > MAX_SET_MEMBERS:
                    raise InputError(f"{folder} holds more than {MAX_SET_MEMBERS} files; give a smaller set")
    files.sort()
    masks = match_masks(files, masks_dir)
    out = [_entry(n, folder / n, (folder / m) if isinstance(m, str) else m)
           for n in files if not is_mask_name(n) for m in [masks.get(n)]]
    return [e for e in out if not (quiet and e.skipped)]


def read_entry(source: Path | str, zf: SafeZip | None) -> bytes | Path:
    """What :func:`prune_viz.io.load_image` / ``load_mask`` take for an entry's source."""
    if isinstance(source, str) and zf is not None:
        return zf.read(source)
    return Path(source)
