"""Where a backbone's weights came from, in one vocabulary for every report.

``weights`` in report.json, the API answer and the app's readout is one of
``pretrained`` (the library's official weights, e.g. timm's), ``file <sha256 first 12>`` (a
checkpoint on disk: the demo, SAM, a registered model) or ``random`` (nothing learnt: the
segmentation means nothing and the token decisions show the mechanics only). A sentence says
the same in words. The sha256 is computed lazily, once per file version (SAM ViT-H's 2.5 GB take
seconds, so never at start-up).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from ..checkpoints import sha256_of
from .base import Backbone

KINDS = ("pretrained", "file", "random")


@dataclass(frozen=True)
class Provenance:
    """kind: pretrained | file | random; label: what reports print (``file 1a2b3c4d5e6f``);
    sentence: the same for people."""

    kind: str
    label: str
    sentence: str

    @property
    def random(self) -> bool:
        return self.kind == "random"


@functools.lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return sha256_of(path)


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of ``path``, computed once per (path, size, mtime)."""
    st = Path(path).stat()
    return _sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def weights_kind(backbone: Backbone) -> str:
    """pretrained | file | random, from the adapter's ``weights_kind`` or, for adapters that
    only set ``weights`` in words, from those words (no file and no word: random)."""
    kind = getattr(backbone, "weights_kind", "") or ""
    if kind in KINDS:
        return kind
    words = (backbone.weights or "").lower()
    if getattr(backbone, "weights_file", None):
        return "file"
    if "pretrained" in words:
        return "pretrained"
    return "random" if "random" in words or not words else "file"


def random_sentence(name: str) -> str:
    """The plain-words warning every view shows for a random model."""
    return (f"{name} runs on RANDOM weights: segmentations mean nothing; "
            "token decisions only show the mechanics.")


def provenance(backbone: Backbone) -> Provenance:
    """The backbone's weights provenance (hashes its weights file on the first call)."""
    kind = weights_kind(backbone)
    path = getattr(backbone, "weights_file", None)
    sha = ""
    if path and Path(path).is_file():
        sha = file_sha256(path)[:12]
    if kind == "random":
        return Provenance("random", "random", random_sentence(backbone.name))
    where = f" ({Path(path).name}, sha256 {sha}…)" if sha else ""
    if kind == "pretrained":
        return Provenance("pretrained", "pretrained", f"{backbone.name} runs on the library's pretrained weights{where}.")
    label = f"file {sha}" if sha else f"file {backbone.weights or 'unknown'}"
    return Provenance("file", label, f"{backbone.name} runs on the weights in {Path(path).name if path else backbone.weights}"
                      f"{f' (sha256 {sha}…)' if sha else ''}.")
