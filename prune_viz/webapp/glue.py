"""Gradio glue shared by the handlers and the API: user errors as ``gr.Error``, dict results
as Gradio's tuples, figures and images as what Gradio sends, and the upload guard."""

from __future__ import annotations

import functools
import json
import os
import re
from typing import Any, Callable

import gradio as gr
import numpy as np
from gradio.components.plot import PlotData

from ..budget import default_budget_s, time_budget
from ..errors import UserError, internal_error_message
from ..ui.files import write_pngs

# Files are opened only from here: where Gradio puts what a browser or gradio_client uploaded.
UPLOAD_ROOTS: tuple[str, ...] = (gr.utils.get_upload_folder(),)


def user_errors(fn: Callable) -> Callable:
    """The error boundary of every handler and API endpoint: a :class:`UserError` (raised where
    its cause is known) becomes a gr.Error with our message; anything else is logged with its
    traceback under an id and shown as "internal error (id ...)", never as the user's fault.
    Nothing reaches Gradio's own handler, whose bare "Error" says nothing. Each call runs under
    the server's per-request time budget."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with time_budget(default_budget_s()):
                return fn(*args, **kwargs)
        except gr.Error:
            raise
        except UserError as exc:
            raise gr.Error(cut(str(exc)), print_exception=False) from None
        except Exception as exc:  # noqa: BLE001 - the boundary: a bug is logged, the user told so
            raise gr.Error(internal_error_message(exc, fn.__name__), print_exception=False) from None

    return wrapper


def cut(message: str, limit: int = 600) -> str:
    """Our messages quote at most 200 characters of input; this bounds what is left whole. Text
    that looks like an HTML tag ("<urlopen error ...>") gets angle quotes: the browser renders
    error toasts as HTML and would hide it."""
    message = re.sub(r"<(/?[A-Za-z][^<>]*)>", r"‹\1›", message)
    return message if len(message) <= limit else message[: limit - 1] + "…"


def packed(names: list[str]) -> Callable:
    """Handlers return {name: value}; Gradio gets a tuple in ``names`` order (gr.skip() for the rest)."""

    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            result = fn(*args, **kwargs)
            return tuple(result.get(n, gr.skip()) for n in names)

        return wrapper

    return deco


def plot(fig: dict | None):
    """A plotly figure built as a dict (see ui.charts) -> what gr.Plot sends."""
    return None if fig is None else PlotData(type="plotly", plot=json.dumps(fig))


def as_files(out: dict[str, Any]) -> dict[str, Any]:
    """Every image (or pair of images) in a handler's result -> PNG files, encoded in parallel."""
    slots = [(k, i) for k, v in out.items() for i, im in enumerate(v if isinstance(v, tuple) else (v,))
             if isinstance(im, np.ndarray)]
    paths = write_pngs([out[k][i] if isinstance(out[k], tuple) else out[k] for k, i in slots])
    done = dict(out)
    for (k, i), path in zip(slots, paths):
        if isinstance(out[k], tuple):
            pair = list(done[k])
            pair[i] = path
            done[k] = tuple(pair)
        else:
            done[k] = path
    return done


def uploaded(path: Any) -> str:
    """``path`` if it is a file Gradio received as an upload; anything else (a server path sent
    in a crafted request, e.g. ``{"path": "/etc/..."}``, which Gradio passes through) is refused
    before it is opened."""
    real = os.path.realpath(str(path))
    for root in map(os.path.realpath, UPLOAD_ROOTS):
        if real.startswith(root.rstrip(os.sep) + os.sep):
            return str(path)
    raise gr.Error("files must be uploaded (from Python: gradio_client.handle_file(path)); "
                   "the server does not open paths it is sent", print_exception=False)
