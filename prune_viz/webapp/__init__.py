"""The Gradio web app: the only package that imports gradio.

``layout`` creates the components, ``events`` says which event calls which handler,
``handlers`` (one per page event) and ``api`` (the gradio_client endpoints) turn component
values into calls to :mod:`prune_viz.ui`; ``glue`` holds what both share (errors, the upload
guard, images and figures as Gradio sends them). ``app.py`` at the repository root is the entry point.
"""

from __future__ import annotations

import os

import gradio as gr

from .events import wire
from .layout import build_layout
from .quick import warm_start


def build_demo(warm: bool = False) -> gr.Blocks:
    """The whole page with its listeners and API endpoints (not yet queued or launched).
    Nothing touches the network; the default backbone is built (from the shared cache).
    ``warm``: also analyse the first example now, as a first visit will (:func:`.quick.warm_start`)."""
    with gr.Blocks(title="prune_viz", delete_cache=(3600, 3600)) as demo:
        components = build_layout()
        wire(demo, components)
    if warm:
        warm_start(components)
    return demo


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas (as ``MALLOC_ARENA_MAX`` would) unless that is set already.

    Gradio runs handlers on a pool of threads; glibc gives each thread its own arena, and the
    multi-megabyte numpy / torch buffers of a run leave every arena fragmented, and the server's
    RSS grows round after round of ``bench/bench_load.py`` (compare a run with
    ``MALLOC_ARENA_MAX=16``, glibc's default on 2 cores), at no gain in latency.
    Call before worker threads exist. Returns whether the cap was applied (False off glibc)."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-8, int(arenas)))  # -8 = M_ARENA_MAX
    except (OSError, AttributeError):
        return False


__all__ = ["build_demo", "limit_malloc_arenas"]
