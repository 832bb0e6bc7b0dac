"""Safe checkpoint loading, the local cache folder, and verified downloads.

Rules: state dicts only (safetensors, or ``torch.load(weights_only=True)``); a pickle that
carries code is refused without being run; downloads happen only when a user asks for a model
that is not on disk, show progress, and must match a known sha256.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import urllib.request
from pathlib import Path
from typing import Callable

import torch


class CheckpointError(ValueError):
    """A checkpoint could not be used; the message says why and what to do."""


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
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint is empty (0 bytes): {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"corrupt safetensors file {path.name}: {exc}") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refused {path.name}: it is not a plain state dict (it carries pickled code or objects, "
            f"which are never run). Convert it to safetensors or a tensors-only state dict. ({str(exc).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"corrupt or unreadable checkpoint {path.name}: {str(exc).splitlines()[0]}") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path.name} does not hold a state dict of tensors")
    return obj


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
            f"could not download {url} ({exc}). Offline? Put the file at {dest} or pass --checkpoint PATH."
        ) from None
    if sha256 is not None:
        got = sha256_of(part)
        if got != sha256:
            part.unlink(missing_ok=True)
            raise CheckpointError(f"sha256 mismatch for {url}: expected {sha256}, got {got}; file removed")
    part.replace(dest)
    return dest
