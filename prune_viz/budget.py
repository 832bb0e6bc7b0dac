"""A per-request time budget: a run that outlasts it stops with a clear message.

Parameters are bounded (``params.py``), so a run's work is bounded too; the budget is the last
line for what bounds cannot see (a huge SAM at 1024 px on a busy 2-core server). The deadline
lives in a ``ContextVar``: each request (a Gradio worker thread, a CLI run) has its own, and
code far below (the engine's block loop, k-means) checks it without being handed anything.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

from .errors import UserError

__all__ = ["RunTooLong", "time_budget", "check_time", "default_budget_s"]

_DEADLINE: ContextVar[tuple[float, float] | None] = ContextVar("prune_viz_deadline", default=None)


class RunTooLong(UserError):
    """The run outlasted the server's per-request time budget."""


def default_budget_s() -> float | None:
    """``PRUNE_VIZ_TIME_BUDGET_S`` (default 300; 0 or empty: no budget)."""
    value = os.environ.get("PRUNE_VIZ_TIME_BUDGET_S", "300").strip()
    seconds = float(value) if value else 0.0
    return seconds if seconds > 0 else None


@contextmanager
def time_budget(seconds: float | None) -> Iterator[None]:
    """Within this block, :func:`check_time` raises once ``seconds`` have passed (None: never)."""
    token = _DEADLINE.set(None if seconds is None else (time.monotonic() + seconds, seconds))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def check_time(where: str) -> None:
    """Raise :class:`RunTooLong` when the current request's budget is spent."""
    deadline = _DEADLINE.get()
    if deadline is not None and time.monotonic() > deadline[0]:
        raise RunTooLong(
            f"stopped {where}: this run took longer than the server's limit of {deadline[1]:g} s per request. "
            "Try a smaller input size, fewer clustering iterations, or a smaller model"
        )
