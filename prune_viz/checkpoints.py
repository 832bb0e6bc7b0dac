"""Safe checkpoint loading, the local cache folder, and verified downloads.

Rules: state dicts only (safetensors, or ``torch.load(weights_only=True)``); a pickle that
carries code is refused without being run; downloads happen only when a user asks for a model
that is not on disk, show progress, and must match a known sha256.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import struct
import urllib.request
import warnings
from pathlib import Path
from typing import Callable

import torch

from .errors import UserError


class CheckpointError(UserError):
    """A checkpoint could not be used; the message says why and what to do."""


def sniff_checkpoint(head: bytes, size: int) -> str | None:
    """The checkpoint format named by a file's first bytes ("safetensors", "torch-zip",
    "torch-legacy") or None. The file name's extension is never trusted: a safetensors file
    saved as ``.pth`` must not be handed to the unpickler, nor a pickle to safetensors.

    head: at least the first 9 bytes; size: the file's length in bytes."""
    if head[:4] == b"PK\x03\x04":  # torch.save's default since 1.6: a zip archive
        return "torch-zip"
    if len(head) >= 3 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle PROTO opcode: legacy torch.save
        return "torch-legacy"
    if len(head) >= 9:
        # safetensors: little-endian u64 length of a JSON header that starts with '{'
        (header_len,) = struct.unpack("<Q", head[:8])
        if 2 <= header_len <= size - 8 and head[8:9] == b"{":
            return "safetensors"
    return None


def cache_dir() -> Path:
    """``$PRUNE_VIZ_CHECKPOINTS`` or ``~/.cache/prune_viz/checkpoints``."""
    env = os.environ.get("PRUNE_VIZ_CHECKPOINTS")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "prune_viz" / "checkpoints"


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``path`` on the CPU without running any code from the file."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give the checkpoint file itself")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint is empty (0 bytes): {path}")
    try:
        with path.open("rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise CheckpointError(f"could not read {path.name}: {exc.strerror or exc}") from None
    kind = sniff_checkpoint(head, size)
    if kind is None:
        raise CheckpointError(
            f"{path.name} is neither a safetensors file nor a PyTorch checkpoint (judged by its first bytes, "
            "not its name)"
        )
    if kind == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except SafetensorError as exc:
            raise CheckpointError(f"corrupt safetensors file {path.name}: {_first_line(exc)}") from None
    try:
        # A file object, not the path: recent torch picks a loader by the path's extension.
        with warnings.catch_warnings(), path.open("rb") as fh:
            warnings.simplefilter("ignore")  # torch's own warnings repeat what our message says
            obj = torch.load(fh, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message ends with advice to retry with weights_only=False, which would run the
        # file's code: name what was refused, never relay that advice.
        found = re.search(r"GLOBAL ([\w.]+) was not an allowed global", str(exc))
        what = f" (it names {found.group(1)})" if found else ""
        raise CheckpointError(
            f"refused {path.name}: it is not a plain state dict{what}; it carries pickled code or objects, "
            "which are never run. Convert it to safetensors or a tensors-only state dict."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"corrupt or unreadable checkpoint {path.name}: {_first_line(exc)}") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path.name} does not hold a state dict of tensors")
    return obj


def _first_line(exc: BaseException, limit: int = 200) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download(
    url: str,
    dest: Path,
    sha256: str | None,
    progress: Callable[[int, int], None] | None = None,
    timeout: float = 30.0,
) -> Path:
    """Download ``url`` to ``dest`` (via a .part file), reporting (done, total) bytes, then
    check the sha256 when one is known. Raises CheckpointError when offline or on a mismatch."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0)
            done = 0
            while block := resp.read(1 << 20):
                out.write(block)
                done += len(block)
                if progress:
                    progress(done, total)
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise CheckpointError(
            # URLError's str() is "<urlopen error ...>", which a browser reads as a tag and hides.
            f"could not download {url} ({getattr(exc, 'reason', None) or exc}). Offline? Put the file at {dest} or pass --checkpoint PATH."
        ) from None
    if sha256 is not None:
        got = sha256_of(part)
        if got != sha256:
            part.unlink(missing_ok=True)
            raise CheckpointError(f"sha256 mismatch for {url}: expected {sha256}, got {got}; file removed")
    part.replace(dest)
    return dest
