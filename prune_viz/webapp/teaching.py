"""Handlers of the teaching view: the token inspector (click a token, read its rule, force it in
or out), the image toggle, play the layers, the GIF, and the ``/inspect_token`` and ``/animate``
endpoints. Same habits as :mod:`.handlers`: no tensor maths, the session changes through its
own methods."""

from __future__ import annotations

import time
from typing import Any

import gradio as gr

from ..ui import animate, compare, inspect, texts
from ..ui.choices import backbone_info
from ..ui.views import layer_views, token_map_geometry, token_map_view
from .api import _prepare, _run
from .glue import as_files, packed, user_errors
from .handlers import LAYER_OUT, VIEW_OUT, _gt_for, _layer_updates, _plan, analysis_updates, session_of

INSPECT_OUT = ["insp_row", "insp_col", "inspector"]
FORCE_OUT = [*VIEW_OUT, "inspector"]
PLAY_OUT = ["view_layer", "token_map", "token_caption"]
PLAY_SECONDS = 1.0  # per block: long enough to read the narration aloud


def _shown(session, backbone, sam_size):
    """The session's analysis and model when the page shows them (else None, None)."""
    session = session_of(session)
    if session.analysis is None:
        return None, None
    facts, model = backbone_info(backbone, sam_size)
    if model is None or session.backbone_key != facts.key:
        return None, None
    return session.analysis, model


@user_errors
@packed(LAYER_OUT)
def on_show_image(session, backbone, sam_size, view_layer, show):
    """Token maps over the image, or flat status colours only."""
    session = session_of(session)
    session.set_show_image(show)
    analysis, model = _shown(session, backbone, sam_size)
    if analysis is None:
        return {}
    views = layer_views(analysis, int(view_layer), model.num_blocks, model.patch_size, show, _gt_for(session, analysis))
    return as_files(_layer_updates(views))


@user_errors
@packed(INSPECT_OUT)
def on_token_click(session, backbone, sam_size, evt: gr.SelectData):
    """A click on the token map: which token, and why it went where it went."""
    analysis, _ = _shown(session, backbone, sam_size)
    if analysis is None:
        return {"inspector": "Run an analysis first, then click a token."}
    shown_hw, valid = token_map_geometry(analysis)
    row, col = inspect.token_at(evt.index[0], evt.index[1], shown_hw, analysis.trace.grid, valid)
    return {"insp_row": row, "insp_col": col,
            "inspector": inspect.inspection_markdown(inspect.inspect_token(analysis, row, col))}


@user_errors
def on_inspect(session, backbone, sam_size, row, col) -> str:
    """The token typed into the row / col fields."""
    analysis, _ = _shown(session, backbone, sam_size)
    if analysis is None:
        return "Run an analysis first, then pick a token."
    return inspect.inspection_markdown(inspect.inspect_token(analysis, row, col))


def _force(keep: bool, session, backbone, sam_size, method, layers, seed, view_layer, row, col, *params) -> dict[str, Any]:
    session = session_of(session)
    facts, model = backbone_info(backbone, sam_size)
    if model is None or session.analysis is None:
        return {"inspector": "Run an analysis first, then pick a token."}
    plan = _plan(model, method, layers, seed, params)
    step = session.analysis.trace.step_at(int(view_layer or plan.layers[0]))
    analysis, summary = inspect.what_if(session, model, facts.key, plan, row, col, keep, step.layer if step else None)
    out = analysis_updates(session, model, analysis, int(view_layer or plan.layers[0]))
    out["inspector"] = summary + "\n\n" + inspect.inspection_markdown(inspect.inspect_token(analysis, row, col))
    return out


@user_errors
@packed(FORCE_OUT)
def on_force_keep(session, backbone, sam_size, method, layers, seed, view_layer, row, col, *params):
    """What if this token had stayed? Re-run from the prefix cache with it kept at every pruning layer."""
    return _force(True, session, backbone, sam_size, method, layers, seed, view_layer, row, col, *params)


@user_errors
@packed(FORCE_OUT)
def on_force_prune(session, backbone, sam_size, method, layers, seed, view_layer, row, col, *params):
    """What if this token had gone? Re-run with it pruned at the pruning layer on show."""
    return _force(False, session, backbone, sam_size, method, layers, seed, view_layer, row, col, *params)


def on_play(session, backbone, sam_size):
    """Step the token map through blocks 1..N with one line of narration each (a generator:
    Gradio shows every frame as it is yielded)."""
    analysis, model = _shown(session, backbone, sam_size)
    if analysis is None:
        yield gr.skip(), gr.skip(), "Run an analysis first."
        return
    show = session_of(session).show_image
    for layer in range(1, model.num_blocks + 1):
        t0 = time.perf_counter()
        rgb, _ = token_map_view(analysis, layer, model.num_blocks, model.patch_size, show)
        frame = as_files({"token_map": rgb})["token_map"]
        yield gr.Slider(value=layer), frame, "▶ " + animate.narration(analysis, layer, model.num_blocks)
        time.sleep(max(0.0, PLAY_SECONDS - (time.perf_counter() - t0)))


@user_errors
def on_gif(session, backbone, sam_size):
    """The layer sequence as a GIF file for slides."""
    analysis, model = _shown(session, backbone, sam_size)
    if analysis is None:
        raise gr.Error("run an analysis first", print_exception=False)
    return gr.File(value=str(animate.write_gif(analysis, model.num_blocks, model.patch_size)), visible=True)


@user_errors
def on_compare_gif(session, backbone, sam_size, seed, methods, mode, target):
    """The compared methods played in sync, block by block side by side, as a GIF (each method
    re-run from the cached unpruned forward with the Compare tab's settings)."""
    session = session_of(session)
    facts, model = backbone_info(backbone, sam_size)
    if model is None:
        raise gr.Error(texts.weights_missing(facts.name), print_exception=False)
    budget = float(target) if str(mode).startswith("matched") else None
    rows = compare.compare_methods(session, model, facts.key, list(methods or []), None, seed, budget)
    analyses = [r.analysis for r in rows if r.analysis is not None]
    return gr.File(value=str(animate.write_gif(analyses, model.num_blocks, model.patch_size)), visible=True)


# ------------------------------------------------------------------------------ API endpoints


@user_errors
def api_inspect_token(image, backbone, method, layers, params, seed, mask=None, row=0, col=0) -> dict:
    """One token's status, the layer that decided it, the rule in one sentence and its signals
    per pruning layer (row, col: 0-based on the token grid)."""
    session, model, facts, plan, notices = _prepare(image, backbone, method, layers, params, seed, mask)
    analysis = _run(session, model, facts.key, plan)
    return {**inspect.inspect_token(analysis, row, col).as_json(), "grid": list(analysis.trace.grid),
            "input_notices": notices}


@user_errors
def api_animate(image, backbone, method, layers, params, seed, mask=None) -> str:
    """A GIF stepping through blocks 1..N, one narrated token map per block."""
    session, model, facts, plan, _ = _prepare(image, backbone, method, layers, params, seed, mask)
    analysis = _run(session, model, facts.key, plan)
    return str(animate.write_gif(analysis, model.num_blocks, model.patch_size))
