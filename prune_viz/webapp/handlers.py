"""One handler per event of the page: read the controls, call ``prune_viz.ui``, return updates.

Handlers never do tensor maths and never write ``Session`` fields: the session changes only
through its own methods (``set_image``, ``set_mask``, ``run``, ...). Handlers that update many
components return ``{name: value}``; :func:`.glue.packed` turns that into Gradio's tuple.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import gradio as gr

from ..backbones import BackboneFacts, download_weights
from ..backbones.base import Backbone
from ..engine import Plan
from ..errors import UserError
from ..methods import METHODS, get_method
from ..params import DEFAULT_METHOD, default_layers, make_plan, method_availability
from ..ui import compare, prompts, texts
from ..ui.choices import (Example, backbone_for, backbone_info, find_examples, layer_choices, layer_slider_info,
                          method_choices)
from ..ui.controls import param_controls, values_for
from ..ui.export import export_zip
from ..ui.files import write_png
from ..ui.robustness import ood_banner
from ..ui.session import Session
from ..ui.tables import changed_fraction, metrics_rows, readout_markdown
from ..ui.charts import charts
from ..ui.tables import report_summary, scalar_rows
from ..ui.views import VIEW_TABS, depth_view, layer_views, segmentation_views
from .glue import as_files, cut, packed, plot, uploaded, user_errors

ROOT = Path(__file__).resolve().parents[2]
CONTROLS = param_controls()
PARAM_KEYS = [f"p:{c.method}:{c.name}" for c in CONTROLS]

# Component names each handler reads or updates (the layout registers components by name).
MAIN_IN = ["state", "backbone", "sam_size", "method", "layers", "seed", "view_layer", *PARAM_KEYS]
LAYER_OUT = [
    "token_map", "token_caption", "panel_note",
    "img_entropy", "img_edges", "img_clusters", "img_exits", "img_facets", "img_signals", "hist_exits", "hist_facets",
]
TAB_KEYS = [f"tab_{t}" for t in VIEW_TABS]
VIEW_OUT = [
    "state", "ood_banner", "readout", "view_layer", "depth", *LAYER_OUT, *TAB_KEYS,
    "seg_slider", "seg_change", "seg_legend", "seg_caption", "metrics", "scalars",
    "chart_tokens", "chart_macs", "chart_cum", "sam_image",
]
# Tabs whose views are drawn only while on show (Gradio's Tabs.select reports the label): a run
# draws the open tab's views and clears the hidden ones; opening a tab draws what it missed.
WHY_TAB, SEG_TAB, MACS_TAB = "Why? · method signals", "Segmentation", "MACs per layer"
LAZY_TABS = (WHY_TAB, SEG_TAB, MACS_TAB)
SEG_OUT = ["seg_slider", "seg_change", "seg_legend", "seg_caption"]
CHART_OUT = ["chart_tokens", "chart_macs", "chart_cum"]
WHY_OUT = [k for k in LAYER_OUT if k.startswith(("img_", "hist_"))]
TAB_OUT = [*WHY_OUT, *TAB_KEYS, *SEG_OUT, *CHART_OUT]
SETUP_OUT = [
    "backbone", "method", "layers", "backbone_note", "missing_help", "download_btn", "sam_size", "view_layer", "method_info",
    "sam_note", "compare_methods", *[f"grp:{m}" for m in METHODS],
]
INPUT_OUT = ["state", "notices", "band_row", "band_r", "band_g", "band_b", "readout"]
UPLOAD_OUT = [*INPUT_OUT, "mask_file", "mask_notices"]
EXAMPLE_OUT = [*INPUT_OUT, "mask_notices", "image_file", "mask_file"]


# ----------------------------------------------------------------------------- helpers


def examples() -> list[Example]:
    """The example scenes (``$PRUNE_VIZ_EXAMPLES``, default ``examples/``)."""
    return find_examples(os.environ.get("PRUNE_VIZ_EXAMPLES", ROOT / "examples"))


def sentences(head: str, notices: list[str]) -> str:
    """'Loaded x.' + ['stretched (2-98th percentile)', ...] -> one readable line."""
    return " ".join(p for p in (head, "; ".join(notices) + "." if notices else "") if p)


def session_of(session: Session | None) -> Session:
    return session if isinstance(session, Session) else Session()


def _plan(backbone: Backbone, method: str, layers: Any, seed: Any, params: tuple) -> Plan:
    return make_plan(backbone, method, layers, seed, values_for(method, CONTROLS, list(params)))


def _layer_updates(views: dict[str, Any]) -> dict[str, Any]:
    out = {
        "token_map": views["token_map"], "token_caption": views["token_caption"], "panel_note": views["panel_note"],
        "hist_exits": plot(views["histogram"]) if views["tabs"].get("exits") else None,
        "hist_facets": plot(views["histogram"]) if views["tabs"].get("facets") else None,
    }
    for tab in VIEW_TABS:
        out[f"img_{tab}"] = views[tab]
    return out


def _bands(n: int, red: Any, green: Any, blue: Any) -> tuple[int, int, int] | None:
    if n <= 3:
        return None
    chosen = tuple(int(v) for v in (red, green, blue) if v is not None)
    return chosen if len(chosen) == 3 else None


def _load(session: Session, path: str, name: str, bands=None, stretch=(2.0, 98.0), keep_gt: bool = False) -> dict[str, Any]:
    """Read an image into the session and say what was read."""
    loaded = session.set_image(path, name, bands, stretch, keep_gt)
    many = loaded.bands > 3
    h, w = loaded.rgb.shape[:2]
    head = f"Loaded **{name}**: {w} x {h} px, {loaded.bands} band(s), {loaded.source_dtype}."
    return {
        "state": session,
        "notices": sentences(head, session.notices),
        "band_row": gr.Row(visible=many),
        "band_r": gr.Number(maximum=loaded.bands) if many else gr.skip(),
        "band_g": gr.Number(maximum=loaded.bands) if many else gr.skip(),
        "band_b": gr.Number(maximum=loaded.bands) if many else gr.skip(),
        # The previous image's numbers must not stand next to this one (e.g. if its run is
        # refused because the server is busy).
        "readout": f"**{name}** loaded: running the analysis…",
    }


def _gt_for(session: Session, analysis) -> Any:
    """The session's ground-truth mask when it belongs to the analysed image (per-class lines)."""
    gt = session.gt
    return gt if gt is not None and gt.shape == analysis.baseline.seg.labels.shape else None


def _method_groups(method: str) -> dict[str, Any]:
    return {f"grp:{m}": gr.Group(visible=m == method) for m in METHODS}


def _layers_for(method: str, facts: BackboneFacts) -> list[int]:
    return list(default_layers(get_method(method), facts))


# ----------------------------------------------------------------------------- handlers


@user_errors
@packed(VIEW_OUT)
def on_analyze(session, backbone, sam_size, method, layers, seed, view_layer, *params):
    """Full run (reusing the session's cached unpruned forward) and every view."""
    session = session_of(session)
    if session.image is None:
        return {"readout": readout_markdown(None)}
    facts, model = backbone_info(backbone, sam_size)
    if model is None:
        return {"readout": texts.weights_missing(facts.name)}
    previous = session.analysis.trace.plan_layers if session.analysis is not None else None
    plan = _plan(model, method, layers, seed, params)
    analysis = session.run(model, facts.key, plan)
    if analysis is None:
        return {}  # settings changed while this ran: the newer run draws the page
    keep_view = previous == plan.layers and view_layer and 1 <= int(view_layer) <= model.num_blocks
    return analysis_updates(session, model, analysis, int(view_layer) if keep_view else plan.layers[0])


def analysis_updates(session: Session, model: Backbone, analysis, layer: int) -> dict[str, Any]:
    """Every view of ``analysis`` as component updates (after a run, or a forced re-run). Only the
    open view tab is drawn; the others are emptied and drawn when opened."""
    open_tab = session.open_tab
    views = layer_views(analysis, layer, model.num_blocks, model.patch_size, session.show_image,
                        _gt_for(session, analysis), panels=open_tab == WHY_TAB)
    out = {
        "state": session,
        "readout": readout_markdown(report_summary(analysis), "exact"),
        "ood_banner": gr.Markdown(ood_banner(analysis.report), visible=bool(ood_banner(analysis.report))),
        "view_layer": gr.Slider(minimum=1, maximum=model.num_blocks, value=layer),
        "depth": depth_view(analysis, model.num_blocks, model.patch_size),
        "metrics": metrics_rows(analysis, changed_fraction(analysis)),
        "scalars": scalar_rows(analysis.trace),
        "token_map": views["token_map"], "token_caption": views["token_caption"], "panel_note": views["panel_note"],
    }
    if model.supports_prompts:  # the prompt tab shows this image (such runs take seconds anyway)
        out["sam_image"] = prompts.prompt_image(session)
    for tab in LAZY_TABS:
        out.update(_tab_views(analysis, session.image, model, tab, layer, views) if tab == open_tab else _cleared(tab))
    session.views_drawn({t for t in LAZY_TABS if t != open_tab})
    return as_files(out)


def _tab_views(analysis, image, model: Backbone, tab: str, layer: int, views: dict | None = None) -> dict[str, Any]:
    """The views of one lazily drawn tab (``views``: layer views with panels, if already drawn)."""
    if tab == WHY_TAB:
        views = views or layer_views(analysis, layer, model.num_blocks, model.patch_size)
        out = {k: v for k, v in _layer_updates(views).items() if k in WHY_OUT}
        out.update({f"tab_{t}": gr.Column(visible=views["tabs"][t]) for t in VIEW_TABS})
        return out
    if tab == SEG_TAB:
        seg = segmentation_views(analysis, image)
        return {"seg_slider": seg["pair"], "seg_change": seg["change"], "seg_legend": seg["legend"], "seg_caption": seg["caption"]}
    figures = charts(analysis)
    return {"chart_tokens": plot(figures[0]), "chart_macs": plot(figures[1]), "chart_cum": plot(figures[2])}


def _cleared(tab: str) -> dict[str, Any]:
    """A hidden tab's views emptied, so that opening it never shows the previous run's."""
    if tab == WHY_TAB:
        return dict.fromkeys(WHY_OUT)
    if tab == SEG_TAB:
        return {"seg_slider": None, "seg_change": None, "seg_legend": "", "seg_caption": "*Drawing…*"}
    return dict.fromkeys(CHART_OUT)


@user_errors
@packed(TAB_OUT)
def on_tab(session, backbone, sam_size, view_layer, evt: gr.SelectData):
    """A view tab was opened: draw its views if the last run left them for now."""
    session = session_of(session)
    if not session.show_tab(str(evt.value)) or session.analysis is None:
        return {}
    facts, model = backbone_info(backbone, sam_size)
    if model is None or session.backbone_key != facts.key:
        return {}
    return as_files(_tab_views(session.analysis, session.image, model, str(evt.value), int(view_layer)))


@user_errors
def on_timing(session, backbone, sam_size):
    """Right after a run's views are drawn: time its unpruned and pruned forward together (median
    of 3 each, interleaved) and fill the Metrics table's wall-time rows."""
    session = session_of(session)
    if session.analysis is None:
        return gr.skip()
    facts, model = backbone_info(backbone, sam_size)
    analysis = session.analysis
    timing = session.time_last_run(model, facts.key) if model is not None else {"skipped": "the model is not loaded"}
    if session.analysis is not analysis:
        return gr.skip()  # a newer run replaced it meanwhile; its own timing follows
    return metrics_rows(analysis, changed_fraction(analysis), timing)


def on_estimate(session, backbone, sam_size, method, layers, seed, view_layer, *params) -> str:
    """Live MAC readout from the cached unpruned forward (no block runs); inline message on bad input."""
    session = session_of(session)
    if session.image is None:
        return readout_markdown(None)
    try:
        facts, model = backbone_info(backbone, sam_size)
        if model is None:
            return texts.weights_missing(facts.name)
        summary = session.estimate(model, facts.key, _plan(model, method, layers, seed, params))
    except UserError as exc:
        return f"**These settings cannot run:** {cut(str(exc))}"
    if summary is None:
        return "*Running the unpruned model once; the live estimate works from then on.*"
    return readout_markdown(summary, "estimate", f" · {summary['estimate_ms']:.0f} ms")


@user_errors
@packed(LAYER_OUT)
def on_view_layer(session, backbone, sam_size, view_layer):
    """Redraw the layer-dependent views from the stored run (no model)."""
    session = session_of(session)
    if session.analysis is None:
        return {}
    facts, model = backbone_info(backbone, sam_size)
    if model is None or session.backbone_key != facts.key:
        return {}
    panels = session.open_tab == WHY_TAB
    views = layer_views(session.analysis, int(view_layer), model.num_blocks, model.patch_size, session.show_image,
                        _gt_for(session, session.analysis), panels=panels)
    out = _layer_updates(views)
    if not panels:
        session.views_drawn(session.stale_tabs | {WHY_TAB})
    return as_files(out)


@user_errors
@packed(SETUP_OUT)
def on_backbone(session, backbone, sam_size, method):
    """New backbone: its methods (unavailable ones labelled), layers, notes; weights help when missing."""
    facts, _ = backbone_info(backbone, sam_size)
    availability = method_availability(facts)
    usable = [m for m in METHODS if not availability[m]]
    if method not in usable:
        method = DEFAULT_METHOD if DEFAULT_METHOD in usable else usable[0]
    session_of(session).choose_method(method)
    layers = _layers_for(method, facts)
    help_text = texts.missing_weights_help(facts)
    label, offer = texts.download_button(facts)
    out = {
        "method": gr.Dropdown(choices=method_choices(facts), value=method),
        "layers": gr.CheckboxGroup(choices=layer_choices(facts), value=layers),
        "backbone_note": texts.backbone_note(facts.name, facts),
        "missing_help": gr.Markdown(help_text, visible=bool(help_text)),
        "download_btn": gr.Button(label, visible=offer),
        "sam_size": gr.Dropdown(visible=bool(facts.input_sizes), **texts.input_size_control(facts)),
        "view_layer": gr.Slider(minimum=1, maximum=facts.num_blocks, value=layers[0], info=layer_slider_info(facts)),
        "method_info": texts.method_explanation(method),
        "sam_note": texts.PROMPTS_HOW if facts.supports_prompts else texts.PROMPTS_NEED,
        "compare_methods": gr.CheckboxGroup(choices=method_choices(facts),
                                            value=[m for m in ("random", "lvtp", "dtop", "matp") if m in usable]),
    }
    out.update(_method_groups(method))
    return out


def on_check_method(backbone, sam_size, method) -> None:
    """Gradio cannot disable one dropdown choice: an unavailable one is answered with the reason."""
    facts, _ = backbone_info(backbone, sam_size)
    reason = method_availability(facts).get(method)
    if reason:
        raise gr.Error(f"{method} is not available on {facts.name}: it {reason}.", print_exception=False)


def on_revert_method(session):
    """After a refused choice, show the method that is really in use again."""
    return gr.Dropdown(value=session_of(session).method or DEFAULT_METHOD)


@user_errors
@packed(SETUP_OUT)
def on_method(session, backbone, sam_size, method):
    """Its controls, default layers and explanation; a method that needs weights trained with it
    (MATP on the demo) switches to them, and says so."""
    backbone, notice = backbone_for(method, backbone)
    facts, _ = backbone_info(backbone, sam_size)
    session_of(session).choose_method(method)
    layers = _layers_for(method, facts)
    out = {
        "layers": gr.CheckboxGroup(value=layers),
        "method_info": (f"{notice}\n\n" if notice else "") + texts.method_explanation(method),
        "view_layer": gr.Slider(value=layers[0]),
    }
    if notice:
        out.update(backbone=gr.Dropdown(value=backbone, allow_custom_value=True), backbone_note=texts.backbone_note(backbone))
    out.update(_method_groups(method))
    return out


@user_errors
@packed(UPLOAD_OUT)
def on_upload(session, file, red, green, blue, lo, hi):
    session = session_of(session)
    if not file:
        return {}
    path = uploaded(file)
    out = _load(session, path, Path(path).name, None, (lo, hi))
    out.update(mask_file=None, mask_notices="")
    if session.bands > 3:
        out.update(band_r=gr.Number(value=1, maximum=session.bands), band_g=gr.Number(value=2, maximum=session.bands),
                   band_b=gr.Number(value=3, maximum=session.bands))
    return out


@user_errors
@packed(INPUT_OUT)
def on_bands(session, red, green, blue, lo, hi):
    """Other bands or stretch: re-read the same upload (the unpruned forward is redone)."""
    session = session_of(session)
    if not session.image_path:
        return {}
    choice = (_bands(session.bands, red, green, blue), (lo, hi))
    if choice == session.read_as:
        return {}  # e.g. a field lost focus without a change: nothing to re-read
    out = _load(session, session.image_path, session.image_name, *choice, keep_gt=True)
    out.pop("band_r"), out.pop("band_g"), out.pop("band_b")
    return out


def _example(session, backbone, sam_size, index: int) -> dict[str, Any]:
    session = session_of(session)
    example = examples()[index]
    out = _load(session, str(example.image), example.image.name)
    note = "No ground-truth mask for this example."
    if example.mask is not None:
        _, model = backbone_info(backbone, sam_size)
        notices = session.set_mask(str(example.mask), model)
        note = sentences(f"Ground truth: **{example.mask.name}**." if session.gt is not None else "", notices)
    out.update(mask_notices=note, image_file=None, mask_file=None)
    return out


@user_errors
@packed(EXAMPLE_OUT)
def on_example(session, backbone, sam_size, evt: gr.SelectData):
    return _example(session, backbone, sam_size, evt.index)


@user_errors
@packed(EXAMPLE_OUT)
def on_first_visit(session, backbone, sam_size):
    """A first-time visitor sees the first example analysed, not an empty page (unless they
    were quicker and uploaded an image of their own already)."""
    session = session_of(session)
    if not examples() or session.image is not None:
        return {}
    out = _example(session, backbone, sam_size, 0)
    out.pop("image_file"), out.pop("mask_file")  # nothing to clear: never empty a file the visitor is uploading
    return out


@user_errors
def on_mask(session, file, backbone, sam_size):
    session = session_of(session)
    if not file:
        session.set_mask(None, None)
        return session, "No ground-truth mask: mIoU and gamma are not shown.", gr.skip()
    _, model = backbone_info(backbone, sam_size)
    try:
        notices = session.set_mask(uploaded(file), model)
    except UserError as exc:  # the refused file leaves the slot; the reason stays in the notice
        session.set_mask(None, None)
        return session, f"**Mask {Path(str(file)).name} refused:** {cut(str(exc))} No mask is in use.", None
    head = f"Ground truth: **{Path(str(file)).name}**." if session.gt is not None else ""
    return session, sentences(head, notices), gr.skip()


@user_errors
def on_download(backbone, sam_size, progress=gr.Progress()):
    """Fetch the official weights into the checkpoint folder (only works online)."""
    progress(0, desc=f"Downloading the {backbone} weights")
    return download_weights(backbone, lambda done, total: progress(done / total if total else 0, desc=f"{done / 1e6:.0f} MB"))


@user_errors
def on_compare(session, backbone, sam_size, seed, methods, mode, target):
    session = session_of(session)
    facts, model = backbone_info(backbone, sam_size)
    if model is None:
        raise gr.Error(texts.weights_missing(facts.name), print_exception=False)
    budget = float(target) if mode.startswith("matched") else None
    rows = compare.compare_methods(session, model, facts.key, list(methods or []), None, seed, budget)
    image, table = compare.compare_views(rows, session.image, model.num_blocks, model.patch_size)
    note = ("Each method at its default settings and layers." if budget is None else
            f"Each method's knob (rate, DToP's threshold, MATP's alpha) tuned to save about {budget:.0f} % of the MACs (estimated, then run); the others at their defaults.")
    return session, write_png(image), table, note


@user_errors
def on_export(session, backbone, sam_size):
    import zipfile

    session = session_of(session)
    facts, model = backbone_info(backbone, sam_size)
    if model is None or session.analysis is None:
        raise gr.Error("run an analysis first", print_exception=False)
    path = export_zip(session, model, facts)
    with zipfile.ZipFile(path) as z:
        command = z.read("prune_viz_run/command.txt").decode()
    return str(path), command
