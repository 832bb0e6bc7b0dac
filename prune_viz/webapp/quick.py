"""One event per action, where a chain of events used to carry it (felt latency, issue #12).

Every event a browser sends costs a round trip through Gradio's queue and a redraw of the page
before the next event of a chain is sent: in Chromium on 2 busy cores that was 100-450 ms per
link. Switching method was four links (check, setup, live estimate, run), a first visit three
(load the example, estimate, run). Here each is one generator event: it sends what is ready
first (the method's controls and the live estimate; the loaded example) and then the views.
A first visit also finds its analysis ready: ``python app.py`` analyses the first example with
the page's initial settings before it serves anyone (:func:`warm_start`, :mod:`prune_viz.ui.warm`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterator

import gradio as gr

from ..errors import UserError
from ..ui import warm
from ..ui.choices import backbone_for, backbone_info
from ..ui.session import Session
from . import handlers as h
from .glue import user_errors


def _union(*lists: list[str]) -> list[str]:
    return list(dict.fromkeys(n for names in lists for n in names))


# Only what each event can change: Gradio rebuilds a component for every output a step skips.
SWITCH_OUT = _union(["method", "backbone", "backbone_note", "layers", "method_info", "view_layer"],
                    [n for n in h.SETUP_OUT if n.startswith("grp:")], h.VIEW_OUT)
FIRST_OUT = _union(h.EXAMPLE_OUT, h.VIEW_OUT)
SKIP = gr.skip()
# A switch sends the live MAC estimate ahead of the run only on models bigger than this
# (unpruned forward, analytic GMACs; SAM, ViT-B: 90-3000): the demo (10.5) runs in ~0.3 s, and
# LVTP's estimate (its decision on the cached forward) delayed those numbers by 30-150 ms.
ESTIMATE_FIRST_GMACS = 40.0


def _named(names: list[str], values: tuple) -> dict[str, Any]:
    """A packed handler's tuple back to {name: value}, the skipped ones left out."""
    return {n: v for n, v in zip(names, values) if not (isinstance(v, dict) and v == SKIP)}


def steps(names: list[str]) -> Callable:
    """A generator handler's error boundary and packing: each step (one ``next``) runs inside
    ``glue.user_errors`` (our messages, the per-request time budget), and each yielded
    {name: value} goes out as Gradio's tuple."""

    def deco(fn: Callable[..., Iterator[dict[str, Any]]]) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            gen = fn(*args, **kwargs)

            def step() -> dict[str, Any] | None:
                return next(gen, None)  # None: the generator is done (it only yields dicts)

            step.__name__ = fn.__name__  # the name an internal error is logged under
            guarded = user_errors(step)
            while (out := guarded()) is not None:
                yield tuple(out.get(n, SKIP) for n in names)

        return wrapper

    return deco


@steps(SWITCH_OUT)
def on_switch_method(session, backbone, sam_size, method, layers, seed, view_layer, *params):
    """A method chosen in the dropdown: its controls, layers and run in one update (on a big
    model the controls and the live estimate go first). A method that cannot run here is
    refused with the reason, and the dropdown turns back."""
    session = h.session_of(session)
    try:
        h.on_check_method(backbone, sam_size, method)
    except gr.Error as refused:
        gr.Warning(refused.message)
        yield {"method": h.on_revert_method(session)}
        return
    setup = _named(h.SETUP_OUT, h.on_method(session, backbone, sam_size, method))
    backbone, _ = backbone_for(method, backbone)  # MATP on the demo runs on its own weights
    layers = h._layers_for(method, backbone_info(backbone, sam_size)[0])
    args = (session, backbone, sam_size, method, layers, seed, layers[0], *params)
    shown = session.analysis
    if shown is None or shown.baseline.macs > ESTIMATE_FIRST_GMACS * 1e9:  # a slow run: controls and estimate first
        yield {**setup, "readout": h.on_estimate(*args)}
        setup = {}
    yield {**setup, **_named(h.VIEW_OUT, h.on_analyze(*args))}


@steps(FIRST_OUT)
def on_first_visit_run(session, backbone, sam_size, method, layers, seed, view_layer, *params):
    """A first visit: the first example loaded and analysed in one event (the analysis the
    warm start kept, when the settings are still the page's initial ones)."""
    session = h.session_of(session)
    loaded = _named(h.EXAMPLE_OUT, h.on_first_visit(session, backbone, sam_size))
    if not loaded:
        return  # no examples, or the visitor uploaded an image already: its own run draws the page
    facts, model = backbone_info(backbone, sam_size)
    ready = None
    if model is not None:
        try:
            plan = h._plan(model, method, layers, seed, params)
            ready = warm.recall(session.image, session.gt, facts.key, plan)
        except UserError:
            ready = None  # on_analyze below says what is wrong
    if ready is not None:
        analysis = session.run(model, facts.key, plan, ready=ready)
        yield {**loaded, **(h.analysis_updates(session, model, analysis, plan.layers[0]) if analysis else {})}
        return
    yield loaded
    yield _named(h.VIEW_OUT, h.on_analyze(session, backbone, sam_size, method, layers, seed, view_layer, *params))


def warm_start(c: dict[str, Any]) -> bool:
    """Before the first request: run the first visit once with the page's initial values
    (components ``c``) and keep its analysis for the visitors to come (which also loads the
    model and warms its kernels, the view drawing and the PNG encoder). False when there is
    no example or the model cannot be loaded."""
    import matplotlib

    # Gradio asks matplotlib for its backend around every request, and the first ask imports
    # pyplot (0.6-3 s on 2 busy cores, measured in bench/trace_browser.py): ask it here.
    matplotlib.get_backend()
    if "gallery" not in c:
        return False
    values = [c[n].value for n in h.MAIN_IN[1:]]
    try:
        for _ in range(2):  # the second with warm kernels: its layer times feed the Metrics timing's budget
            session = Session()
            for _ in on_first_visit_run(session, *values):
                pass
    except gr.Error:
        return False
    if session.analysis is None or session.plan is None or session.image is None:
        return False
    warm.remember(session.image, session.gt, session.backbone_key, session.plan, session.analysis)
    return True
