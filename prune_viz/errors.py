"""The errors a user can fix, how what they typed is echoed back, and how the rest is reported.

Two kinds of failure reach a boundary (the app's handlers, its API, the CLI):

- :class:`UserError` and its subclasses: raised *where the cause is known* (a parameter out of
  range, an unreadable file, a missing checkpoint). The message is shown as it is.
- anything else is a bug or an environment fault. It is logged server-side with its traceback
  under a short id, and the user sees only ``internal error (id ...)``: never a traceback, and
  never a message that blames their input for our fault.

``UserError`` subclasses ``ValueError`` so callers that only know "bad value" still work.
"""

from __future__ import annotations

import logging
import uuid

__all__ = ["UserError", "ParamError", "echo", "shorten", "internal_error_message", "ECHO_LIMIT"]

ECHO_LIMIT: int = 200  # characters of a user's own value quoted back in a message

log = logging.getLogger("prune_viz")


class UserError(ValueError):
    """Something the user can fix; the message says what and is shown as it is."""


class ParamError(UserError):
    """A parameter, layer list, seed, method or model name that is not allowed."""


def shorten(text: str, limit: int = ECHO_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was."""
    return text if len(text) <= limit else f"{text[: limit - 1]}… ({len(text):,} characters)"


def echo(value: object, limit: int = ECHO_LIMIT) -> str:
    """``repr``-like quote of a user's value, cut to ``limit`` characters (a 1 MB string typed
    into a box must not come back as a 1 MB error)."""
    text = shorten(value if isinstance(value, str) else repr(value), limit)
    return f"'{text}'" if isinstance(value, str) else text


def internal_error_message(exc: BaseException, where: str = "") -> str:
    """Log ``exc`` with its traceback under a fresh id; return the line a user may see."""
    error_id = uuid.uuid4().hex[:8]
    log.error("internal error %s%s", error_id, f" in {where}" if where else "", exc_info=(type(exc), exc, exc.__traceback__))
    return f"internal error (id {error_id}): this is a fault of the server, not of your input; the server log has the details"
