"""The server's warm start: the analysis a first visit shows, computed once before anyone asks.

Every first visit analyses the same example with the same default settings; its result is the
same each time (seeded). :func:`remember` keeps that analysis server-wide (one entry, read-only
afterwards; sessions hold references, never copies), :func:`recall` hands it to a session whose
image, ground truth, model and plan are exactly those, so the first numbers need no forward.
"Run again" never recalls: it always runs.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

import numpy as np

from ..analysis import Analysis
from ..records import Plan

_LOCK = threading.Lock()
_HELD: dict[str, tuple[tuple, Analysis]] = {}  # "first" -> (what it belongs to, the analysis)


def _digest(array: np.ndarray | None) -> str | None:
    if array is None:
        return None
    a = np.ascontiguousarray(array)
    return f"{a.shape}:{a.dtype}:" + hashlib.sha1(memoryview(a).cast("B")).hexdigest()


def _identity(image: np.ndarray, gt: np.ndarray | None, key: Any, plan: Plan) -> tuple:
    return _digest(image), _digest(gt), key, repr(plan)


def remember(image: np.ndarray, gt: np.ndarray | None, key: Any, plan: Plan, analysis: Analysis) -> None:
    """Keep ``analysis`` (of ``image`` with ground truth ``gt`` on model ``key`` under ``plan``)."""
    with _LOCK:
        _HELD["first"] = (_identity(image, gt, key, plan), analysis)


def recall(image: np.ndarray, gt: np.ndarray | None, key: Any, plan: Plan) -> Analysis | None:
    """The kept analysis when it is of exactly this image, ground truth, model and plan; else None."""
    with _LOCK:
        held = _HELD.get("first")
    if held is None or held[0] != _identity(image, gt, key, plan):
        return None
    return held[1]


def forget() -> None:
    with _LOCK:
        _HELD.clear()
