"""prune_viz — see token pruning inside a Vision Transformer that segments images.

Gradio UI only: layout, one handler per event, no tensor maths. Everything shown is computed by
``prune_viz.ui_logic`` (views, tables, zip) on top of the library (engine, analysis, params).
Per-session data live in ``gr.State`` (a ``ui_logic.Session``); built models are shared
read-only by ``build_backbone``'s cache. Nothing touches the network at import or start-up.

Run: ``python app.py`` (honours GRADIO_SERVER_NAME / GRADIO_SERVER_PORT). API: ``docs/api.md``.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, Callable

import gradio as gr
import numpy as np
from gradio.components.plot import PlotData

from prune_viz import ui_logic as L
from prune_viz.backbones import SAM_SIZES, describe, input_size_for, download_weights
from prune_viz.checkpoints import CheckpointError
from prune_viz.io import InputError
from prune_viz.methods import METHODS
from prune_viz.params import DEFAULT_METHOD, make_plan

# ----------------------------------------------------------------------------- constants

L.limit_malloc_arenas()  # before Gradio starts its worker threads: keeps the server's memory flat
ROOT = Path(__file__).resolve().parent
EXAMPLES = L.find_examples(os.environ.get("PRUNE_VIZ_EXAMPLES", ROOT / "examples"))
CONTROLS = L.param_controls()
PARAM_KEYS = [f"p:{c.method}:{c.name}" for c in CONTROLS]
MODEL = "model"  # one concurrency group for everything that runs a network
TITLE = "prune_viz — token pruning in ViT segmenters, made visible"

MAIN_IN = ["state", "backbone", "sam_size", "method", "layers", "seed", "view_layer", *PARAM_KEYS]
LAYER_OUT = [
    "token_map", "token_caption", "panel_note",
    "img_entropy", "img_edges", "img_clusters", "img_exits", "img_facets", "img_signals", "hist_exits", "hist_facets",
]
TAB_KEYS = [f"tab_{t}" for t in L.VIEW_TABS]
VIEW_OUT = [
    "state", "readout", "view_layer", "depth", *LAYER_OUT, *TAB_KEYS,
    "seg_slider", "seg_change", "seg_legend", "seg_caption", "metrics", "scalars",
    "chart_tokens", "chart_macs", "chart_cum", "sam_image",
]
SETUP_OUT = [
    "method", "layers", "backbone_note", "missing_help", "download_btn", "sam_size", "view_layer", "method_info",
    "sam_note", "compare_methods", *[f"grp:{m}" for m in METHODS],
]
INPUT_OUT = ["state", "notices", "band_row", "band_r", "band_g", "band_b", "readout"]

C: dict[str, Any] = {}  # name -> component, filled while the layout is built
# Files are opened only from here: where Gradio puts what a browser or gradio_client uploaded.
UPLOAD_ROOTS: tuple[str, ...] = (gr.utils.get_upload_folder(),)


# ----------------------------------------------------------------------------- helpers


def _user_errors(fn: Callable) -> Callable:
    """Anything the user can fix becomes a gr.Error with our message, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (InputError, CheckpointError, ValueError) as exc:
            raise gr.Error(str(exc), print_exception=False) from None

    return wrapper


def _packed(names: list[str]) -> Callable:
    """Handlers return {name: value}; Gradio gets a tuple in ``names`` order (gr.skip() for the rest)."""

    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            result = fn(*args, **kwargs)
            return tuple(result.get(n, gr.skip()) for n in names)

        return wrapper

    return deco


def _plot(fig: dict | None):
    """A plotly figure built as a dict (see ui_logic.charts) -> what gr.Plot sends."""
    return None if fig is None else PlotData(type="plotly", plot=json.dumps(fig))


def _png(rgb):
    """Maps go out as PNG files written fast (Gradio's own PNG encoding is the slowest part of a run)."""
    return L.write_png(rgb)


def _as_files(out: dict[str, Any]) -> dict[str, Any]:
    """Every image (or pair of images) in a handler's result -> PNG files, encoded in parallel."""
    slots = [(k, i) for k, v in out.items() for i, im in enumerate(v if isinstance(v, tuple) else (v,))
             if isinstance(im, np.ndarray)]
    paths = L.write_pngs([out[k][i] if isinstance(out[k], tuple) else out[k] for k, i in slots])
    done = dict(out)
    for (k, i), path in zip(slots, paths):
        if isinstance(out[k], tuple):
            pair = list(done[k])
            pair[i] = path
            done[k] = tuple(pair)
        else:
            done[k] = path
    return done


def _sentences(head: str, notices: list[str]) -> str:
    """'Loaded x.' + ['stretched (2-98th percentile)', ...] -> one readable line."""
    return " ".join(p for p in (head, "; ".join(notices) + "." if notices else "") if p)


def _uploaded(path: Any) -> str:
    """``path`` if it is a file Gradio received as an upload; anything else (a server path sent
    in a crafted request, e.g. ``{"path": "/etc/..."}``, which Gradio passes through) is refused
    before it is opened."""
    real = os.path.realpath(str(path))
    for root in map(os.path.realpath, UPLOAD_ROOTS):
        if real.startswith(root.rstrip(os.sep) + os.sep):
            return str(path)
    raise gr.Error("files must be uploaded (from Python: gradio_client.handle_file(path)); "
                   "the server does not open paths it is sent", print_exception=False)


def _comps(names: list[str]) -> list:
    return [C[n] for n in names]


def _info(backbone: str, sam_size: Any):
    return L.backbone_info(backbone, input_size_for((backbone or "").strip(), sam_size))


def _session(session: L.Session | None) -> L.Session:
    return session if isinstance(session, L.Session) else L.Session()


def _plan(bb, method: str, layers: Any, seed: Any, params: tuple) -> Any:
    return make_plan(bb, method, layers, seed, L.values_for(method, CONTROLS, list(params)))


def _layer_updates(views: dict[str, Any]) -> dict[str, Any]:
    out = {
        "token_map": views["token_map"], "token_caption": views["token_caption"], "panel_note": views["panel_note"],
        "hist_exits": _plot(views["histogram"]) if views["tabs"].get("exits") else None,
        "hist_facets": _plot(views["histogram"]) if views["tabs"].get("facets") else None,
    }
    for tab in L.VIEW_TABS:
        out[f"img_{tab}"] = views[tab]
    return out


def _bands(n: int, r: Any, g: Any, b: Any) -> tuple[int, int, int] | None:
    if n <= 3:
        return None
    chosen = tuple(int(v) for v in (r, g, b) if v is not None)
    return chosen if len(chosen) == 3 else None


def _load(session: L.Session, path: str, name: str, bands=None, stretch=(2.0, 98.0), keep_gt: bool = False) -> dict[str, Any]:
    """Read an image into the session (its cached forward and prompts are dropped; the mask too,
    unless the same file is only re-read with other bands or stretch)."""
    n = L.band_count(path)
    loaded = L.load_input(path, bands if n > 3 else None, stretch)
    session.image, session.image_path, session.image_name = loaded.rgb, path, name
    session.read_as = (bands if n > 3 else None, tuple(stretch))
    session.bands, session.notices = loaded.bands, list(loaded.notices)
    session.baseline = session.analysis = session.baseline_for = None
    if not keep_gt:
        session.gt = None
    session.clear_prompts()
    many = loaded.bands > 3
    h, w = loaded.rgb.shape[:2]
    head = f"Loaded **{name}**: {w} x {h} px, {loaded.bands} band(s), {loaded.source_dtype}."
    return {
        "state": session,
        "notices": _sentences(head, session.notices),
        "band_row": gr.Row(visible=many),
        "band_r": gr.Number(maximum=loaded.bands) if many else gr.skip(),
        "band_g": gr.Number(maximum=loaded.bands) if many else gr.skip(),
        "band_b": gr.Number(maximum=loaded.bands) if many else gr.skip(),
        # The previous image's numbers must not stand next to this one (e.g. if its run is
        # refused because the server is busy).
        "readout": f"**{name}** loaded: running the analysis…",
    }


def _api_prepare(image: str | None, backbone: str, method: str, layers: str, params: str, seed: Any, mask: str | None):
    """One stateless API call: a fresh Session with the image (and mask) loaded, and a plan."""
    if not image:
        raise ValueError("give an image file")
    info, bb = L.backbone_info(backbone or L.DEFAULT_BACKBONE)
    if bb is None:
        raise CheckpointError(L.missing_weights_message(info.name))
    image, mask = _uploaded(image), (_uploaded(mask) if mask else None)
    session = L.Session()
    loaded = L.load_input(image)
    session.image, session.image_name, session.notices = loaded.rgb, Path(image).name, list(loaded.notices)
    if mask:
        session.gt, mask_notices = L.load_gt(mask, session, bb)
        session.notices += [f"mask: {n}" for n in mask_notices]
    method = (method or DEFAULT_METHOD).strip()
    plan = make_plan(bb, method, layers or None, seed, L.parse_params_json(params), strict=True)
    return session, bb, info, plan


# ----------------------------------------------------------------------------- handlers


@_user_errors
@_packed(VIEW_OUT)
def on_analyze(session, backbone, sam_size, method, layers, seed, view_layer, *params):
    """Full run (reusing the session's cached unpruned forward) and every view."""
    session = _session(session)
    if session.image is None:
        return {"readout": L.readout_markdown(None)}
    info, bb = _info(backbone, sam_size)
    if bb is None:
        return {"readout": f"**{info.name}: weights missing** — see the note under *Backbone* for how to get them."}
    previous = session.analysis.trace.plan_layers if session.analysis is not None else None
    plan = _plan(bb, method, layers, seed, params)
    session.runs += 1
    mine = session.runs
    analysis = L.run_analysis(session, bb, info.key, plan, current=lambda: session.runs == mine)
    if session.runs != mine:
        return {}  # settings changed while this ran: the newer run draws the page
    keep_view = previous == plan.layers and view_layer and 1 <= int(view_layer) <= bb.num_blocks
    layer = int(view_layer) if keep_view else plan.layers[0]
    views = L.full_views(analysis, session.image, layer, bb.num_blocks, bb.patch_size)
    seg = views["seg"]
    out = {
        "state": session,
        "readout": views["readout"],
        "view_layer": gr.Slider(minimum=1, maximum=bb.num_blocks, value=layer),
        "depth": views["depth"],
        "seg_slider": seg["pair"],
        "seg_change": seg["change"],
        "seg_legend": seg["legend"],
        "seg_caption": seg["caption"],
        "metrics": views["metrics"],
        "scalars": views["scalars"],
        "chart_tokens": _plot(views["charts"][0]),
        "chart_macs": _plot(views["charts"][1]),
        "chart_cum": _plot(views["charts"][2]),
    }
    if bb.supports_prompts:  # the prompt tab shows this image (SAM runs take seconds anyway)
        out["sam_image"] = L.prompt_image(session)
    out.update(_layer_updates(views))
    out.update({f"tab_{t}": gr.Column(visible=views["tabs"][t]) for t in L.VIEW_TABS})
    return _as_files(out)


def on_estimate(session, backbone, sam_size, method, layers, seed, view_layer, *params) -> str:
    """Live MAC readout from the cached unpruned forward (no block runs); inline message on bad input."""
    session = _session(session)
    if session.image is None:
        return L.readout_markdown(None)
    try:
        info, bb = _info(backbone, sam_size)
        if bb is None:
            return f"**{info.name}: weights missing** — see the note under *Backbone*."
        summary = L.live_estimate(session, bb, info.key, _plan(bb, method, layers, seed, params))
    except (ValueError, InputError, CheckpointError) as exc:
        return f"**These settings cannot run:** {exc}"
    if summary is None:
        return "*Running the unpruned model once; the live estimate works from then on.*"
    return L.readout_markdown(summary, "estimate", f" · {summary['estimate_ms']:.0f} ms")


@_user_errors
@_packed(LAYER_OUT)
def on_view_layer(session, backbone, sam_size, view_layer):
    """Redraw the layer-dependent views from the stored run (no model)."""
    session = _session(session)
    if session.analysis is None:
        return {}
    info, bb = _info(backbone, sam_size)
    if bb is None or session.backbone_key != info.key:
        return {}
    return _as_files(_layer_updates(L.layer_views(session.analysis, int(view_layer), bb.num_blocks, bb.patch_size)))


@_user_errors
@_packed(SETUP_OUT)
def on_backbone(session, backbone, sam_size, method):
    """New backbone: its methods (unavailable ones labelled), layers, notes; weights help when missing."""
    backbone = (backbone or "").strip()
    info, bb = _info(backbone, sam_size)
    usable = [m for m in METHODS if not info.availability.get(m)]
    if method not in usable:
        method = DEFAULT_METHOD if DEFAULT_METHOD in usable else usable[0]
    _session(session).method = method
    layers = L.default_layers_for(method, info)
    facts = describe(backbone, sam_size)
    is_sam = facts.supports_prompts
    out = {
        "method": gr.Dropdown(choices=L.method_choices(info), value=method),
        "layers": gr.CheckboxGroup(choices=L.layer_choices(info), value=layers),
        "backbone_note": info.note,
        "missing_help": gr.Markdown(info.missing_help, visible=bool(info.missing_help)),
        "download_btn": gr.Button(f"Download {backbone}", visible=facts.downloadable and not info.loaded),
        "sam_size": gr.Dropdown(visible=bool(facts.input_sizes)),
        "view_layer": gr.Slider(minimum=1, maximum=info.num_blocks, value=layers[0]),
        "method_info": L.method_explanation(method),
        "sam_note": ("Click on the image to add prompts, then **Predict masks**: the same prompt is answered "
                     "from the unpruned and from the pruned image embedding." if is_sam else
                     "*Prompts need a SAM backbone (choose sam_vit_b / l / h above). The SAM backbones also show "
                     "their everything-mode masks in the Segmentation tab.*"),
        "compare_methods": gr.CheckboxGroup(choices=L.method_choices(info),
                                            value=[m for m in ("random", "lvtp", "dtop", "matp") if m in usable]),
    }
    out.update({f"grp:{m}": gr.Group(visible=m == method) for m in METHODS})
    return out


def on_check_method(backbone, sam_size, method) -> None:
    """Gradio cannot disable one dropdown choice: an unavailable one is answered with the reason."""
    info, _ = _info(backbone, sam_size)
    reason = info.availability.get(method)
    if reason:
        raise gr.Error(f"{method} is not available on {info.name}: it {reason}.", print_exception=False)


def on_revert_method(session):
    """After a refused choice, show the method that is really in use again."""
    session = _session(session)
    return gr.Dropdown(value=session.method or DEFAULT_METHOD)


@_user_errors
@_packed(SETUP_OUT)
def on_method(session, backbone, sam_size, method):
    """Its controls, default layers and explanation."""
    info, _ = _info(backbone, sam_size)
    _session(session).method = method
    layers = L.default_layers_for(method, info)
    out = {
        "layers": gr.CheckboxGroup(value=layers),
        "method_info": L.method_explanation(method),
        "view_layer": gr.Slider(value=layers[0]),
    }
    out.update({f"grp:{m}": gr.Group(visible=m == method) for m in METHODS})
    return out


UPLOAD_OUT = [*INPUT_OUT, "mask_file", "mask_notices"]


@_user_errors
@_packed(UPLOAD_OUT)
def on_upload(session, file, r, g, b, lo, hi):
    session = _session(session)
    if not file:
        return {}
    path = _uploaded(file)
    out = _load(session, path, Path(path).name, None, (lo, hi))
    out.update(mask_file=None, mask_notices="")
    if session.bands > 3:
        out.update(band_r=gr.Number(value=1, maximum=session.bands), band_g=gr.Number(value=2, maximum=session.bands),
                   band_b=gr.Number(value=3, maximum=session.bands))
    return out


@_user_errors
@_packed(INPUT_OUT)
def on_bands(session, r, g, b, lo, hi):
    """Other bands or stretch: re-read the same upload (the unpruned forward is redone)."""
    session = _session(session)
    if not session.image_path:
        return {}
    choice = (_bands(session.bands, r, g, b), (lo, hi))
    if choice == session.read_as:
        return {}  # e.g. a field lost focus without a change: nothing to re-read
    out = _load(session, session.image_path, session.image_name, *choice, keep_gt=True)
    out.pop("band_r"), out.pop("band_g"), out.pop("band_b")
    return out


EXAMPLE_OUT = [*INPUT_OUT, "mask_notices", "image_file", "mask_file"]


def _example(session, backbone, sam_size, index: int) -> dict[str, Any]:
    session = _session(session)
    ex = EXAMPLES[index]
    out = _load(session, str(ex.image), ex.image.name)
    note = "No ground-truth mask for this example."
    if ex.mask is not None:
        _, bb = _info(backbone, sam_size)
        session.gt, notices = L.load_gt(str(ex.mask), session, bb)
        note = _sentences(f"Ground truth: **{ex.mask.name}**." if session.gt is not None else "", notices)
    out.update(mask_notices=note, image_file=None, mask_file=None)
    return out


@_user_errors
@_packed(EXAMPLE_OUT)
def on_example(session, backbone, sam_size, evt: gr.SelectData):
    return _example(session, backbone, sam_size, evt.index)


@_user_errors
@_packed(EXAMPLE_OUT)
def on_first_visit(session, backbone, sam_size):
    """A first-time visitor sees the first example analysed, not an empty page (unless they
    were quicker and uploaded an image of their own already)."""
    session = _session(session)
    if not EXAMPLES or session.image is not None:
        return {}
    out = _example(session, backbone, sam_size, 0)
    out.pop("image_file"), out.pop("mask_file")  # nothing to clear: never empty a file the visitor is uploading
    return out


@_user_errors
def on_mask(session, file, backbone, sam_size):
    session = _session(session)
    if not file:
        session.gt = None
        return session, "No ground-truth mask: mIoU and gamma are not shown."
    _, bb = _info(backbone, sam_size)
    session.gt, notices = L.load_gt(_uploaded(file), session, bb)
    head = f"Ground truth: **{Path(str(file)).name}**." if session.gt is not None else ""
    return session, _sentences(head, notices)


@_user_errors
def on_download(backbone, sam_size, progress=gr.Progress()):
    """Fetch official SAM weights into the checkpoint folder (only works online)."""
    progress(0, desc=f"Downloading the {backbone} weights")
    return download_weights(backbone, lambda done, total: progress(done / total if total else 0, desc=f"{done / 1e6:.0f} MB"))


@_user_errors
def on_compare(session, backbone, sam_size, seed, methods, mode, target):
    session = _session(session)
    info, bb = _info(backbone, sam_size)
    if bb is None:
        raise gr.Error(f"{info.name}: weights missing — see the note under Backbone.", print_exception=False)
    budget = float(target) if mode.startswith("matched") else None
    rows = L.compare_methods(session, bb, info.key, list(methods or []), None, seed, budget)
    image, table = L.compare_views(rows, session.image, bb.num_blocks, bb.patch_size)
    note = ("Each method at its default settings and layers." if budget is None else
            f"Rate-based methods tuned to save about {budget:.0f} % of the MACs (estimated, then run); the others at their defaults.")
    return session, _png(image), table, note


def on_sam_tab(session):
    """The prompt image is drawn when the SAM tab is opened (most visitors never do)."""
    return _png(L.prompt_image(_session(session)))


@_user_errors
def on_prompt_click(session, mode, evt: gr.SelectData):
    session = _session(session)
    text = L.add_click(session, tuple(evt.index), mode)
    return session, _png(L.prompt_image(session)), text


@_user_errors
def on_box(session, x0, y0, x1, y1):
    session = _session(session)
    L.set_box(session, x0, y0, x1, y1)
    return session, _png(L.prompt_image(session)), "Box set from the numbers."


def on_clear_prompts(session):
    session = _session(session)
    session.clear_prompts()
    return session, _png(L.prompt_image(session)), "Prompts cleared.", None, None


@_user_errors
def on_predict(session, backbone, sam_size):
    session = _session(session)
    info, bb = _info(backbone, sam_size)
    if bb is None:
        raise gr.Error("the SAM weights are missing — see the note under Backbone", print_exception=False)
    before, after, text = L.sam_predict(session, bb, info.key)
    return _png(before), _png(after), text


@_user_errors
def on_export(session, backbone, sam_size):
    session = _session(session)
    info, bb = _info(backbone, sam_size)
    if bb is None or session.analysis is None:
        raise gr.Error("run an analysis first", print_exception=False)
    path = L.export_zip(session, bb, info)
    import zipfile

    with zipfile.ZipFile(path) as z:
        command = z.read("prune_viz_run/command.txt").decode()
    return str(path), command


@_user_errors
def api_analyze(image, backbone, method, layers, params, seed, mask=None) -> dict:
    """Report JSON of one analysis (MACs: 1 multiply-add = 1 MAC; FLOPs = 2 x MACs)."""
    session, bb, info, plan = _api_prepare(image, backbone, method, layers, params, seed, mask)
    report = L.run_analysis(session, bb, info.key, plan).report
    return L.json_ready({**report, "input_notices": session.notices})


@_user_errors
def api_estimate(image, backbone, method, layers, params, seed) -> dict:
    """MAC readout (what the live counter shows) for these settings."""
    session, bb, info, plan = _api_prepare(image, backbone, method, layers, params, seed, None)
    return L.json_ready({**L.estimate_from_scratch(session, bb, info.key, plan), "input_notices": session.notices})


@_user_errors
def api_compare(image, backbone, methods, layers, target_reduction_pct, seed) -> dict:
    """Several methods on one image: at their defaults, or at a matched MAC reduction (%)."""
    names = [m.strip() for m in str(methods or "").replace(";", ",").split(",") if m.strip()]
    session, bb, info, _ = _api_prepare(image, backbone, "none", "", "", seed, None)
    budget = None if target_reduction_pct in (None, "", 0) else float(target_reduction_pct)
    rows = L.compare_methods(session, bb, info.key, names, layers or None, int(seed or 0), budget)
    _, table = L.compare_views(rows, session.image, bb.num_blocks, bb.patch_size)
    return {
        "columns": L.COMPARE_HEADERS,
        "rows": table,
        "reports": {r.method: L.json_ready(r.analysis.report) for r in rows if r.analysis is not None},
    }


@_user_errors
def api_export(image, backbone, method, layers, params, seed, mask=None) -> str:
    """Zip: report.json, PNGs, input.png (+ mask.png) and command.txt (the CLI line)."""
    session, bb, info, plan = _api_prepare(image, backbone, method, layers, params, seed, mask)
    L.run_analysis(session, bb, info.key, plan)
    return str(L.export_zip(session, bb, info))


# ----------------------------------------------------------------------------- layout


def _initial_info() -> L.BackboneInfo:
    """The default backbone's description; a plain fallback if its weights cannot be read, so
    the app still starts (the readout then says what is wrong)."""
    try:
        return L.backbone_info(L.DEFAULT_BACKBONE)[0]
    except (CheckpointError, ValueError) as exc:
        return L.BackboneInfo(L.DEFAULT_BACKBONE, None, 12, (), (), (6,), 0, False, f"**Cannot load the demo model:** {exc}",
                              "", {m: None for m in METHODS})


def _param_control(c: L.ParamControl):
    kw = dict(label=c.label, value=c.default, info=c.info or None)
    if c.kind == "slider":
        return gr.Slider(minimum=c.minimum, maximum=c.maximum, step=c.step, **kw)
    if c.kind in ("int", "float"):
        return gr.Number(precision=0 if c.kind == "int" else None, minimum=c.minimum, maximum=c.maximum, **kw)
    if c.kind == "choice":
        return gr.Dropdown(choices=list(c.choices), **kw)
    if c.kind == "bool":
        return gr.Checkbox(**kw)
    return gr.Textbox(**kw)


INFO0 = _initial_info()
METHOD0 = DEFAULT_METHOD if not INFO0.availability.get(DEFAULT_METHOD) else "random"
LAYERS0 = L.default_layers_for(METHOD0, INFO0)

with gr.Blocks(title="prune_viz", delete_cache=(3600, 3600)) as demo:
    C["state"] = gr.State(L.Session(), time_to_live=3600)  # a SAM prefix cache is large
    gr.Markdown(f"# {TITLE}")
    gr.Markdown(L.WHAT_AM_I_LOOKING_AT)

    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            gr.Markdown("### 1 · Image")
            C["image_file"] = gr.File(label="Image: PNG, JPEG, TIFF (16-bit, multi-band GeoTIFF)",
                                      file_types=[".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp", ".webp"],
                                      type="filepath", height=80)
            C["notices"] = gr.Markdown("")
            with gr.Row(visible=False) as band_row:
                C["band_r"] = gr.Number(label="band → red", value=1, precision=0, minimum=1, min_width=60)
                C["band_g"] = gr.Number(label="band → green", value=2, precision=0, minimum=1, min_width=60)
                C["band_b"] = gr.Number(label="band → blue", value=3, precision=0, minimum=1, min_width=60)
            C["band_row"] = band_row
            with gr.Accordion("Display stretch (16-bit / float images)", open=False):
                C["stretch_lo"] = gr.Slider(0, 20, value=2, step=0.5, label="low percentile → black")
                C["stretch_hi"] = gr.Slider(80, 100, value=98, step=0.5, label="high percentile → white")
            C["mask_file"] = gr.File(label="Optional ground-truth mask (class ids or the demo palette)",
                                     file_types=[".png", ".tif", ".tiff", ".bmp", ".gif"], type="filepath", height=80)
            C["mask_notices"] = gr.Markdown("")
        with gr.Column(scale=1, min_width=300):
            if EXAMPLES:
                C["gallery"] = gr.Gallery(value=[(str(e.image), e.name) for e in EXAMPLES], label="Examples: click one",
                                          columns=4, height=150, allow_preview=False)
            gr.Markdown("### 2 · Model")
            C["backbone"] = gr.Dropdown(choices=L.BACKBONE_CHOICES, value=L.DEFAULT_BACKBONE, label="Backbone",
                                        allow_custom_value=True, info="or type timm:<model name>")
            C["sam_size"] = gr.Dropdown(choices=list(SAM_SIZES), value=1024, label="SAM input size (px)",
                                        info="1024 = the official size; 512 is about 4x faster", visible=False)
            C["backbone_note"] = gr.Markdown(INFO0.note)
            C["missing_help"] = gr.Markdown(INFO0.missing_help, visible=bool(INFO0.missing_help))
            C["download_btn"] = gr.Button("Download", visible=False, variant="secondary")
        with gr.Column(scale=1, min_width=300):
            gr.Markdown("### 3 · Pruning method")
            C["method"] = gr.Dropdown(choices=L.method_choices(INFO0), value=METHOD0, label="Method")
            C["method_info"] = gr.Markdown(L.method_explanation(METHOD0))

    with gr.Row(equal_height=False):
        # ------------------------------------------------------------------ pruning controls
        with gr.Column(scale=1, min_width=300):
            gr.Markdown("### 4 · Where and how much")
            C["layers"] = gr.CheckboxGroup(choices=L.layer_choices(INFO0), value=LAYERS0,
                                           label="Prune after layers (1-based: block L runs in full, L+1.. skip the removed tokens)")
            for method_name in METHODS:
                mine = [(k, c) for k, c in zip(PARAM_KEYS, CONTROLS) if c.method == method_name]
                with gr.Group(visible=method_name == METHOD0) as grp:
                    if not mine:
                        gr.Markdown(f"*{method_name} has no parameters.*")
                    for key, c in mine:
                        if not c.advanced:
                            C[key] = _param_control(c)
                    advanced = [(k, c) for k, c in mine if c.advanced]
                    if advanced:
                        with gr.Accordion(f"More {method_name} settings", open=False):
                            for key, c in advanced:
                                C[key] = _param_control(c)
                C[f"grp:{method_name}"] = grp
            C["seed"] = gr.Number(value=0, precision=0, minimum=0, label="seed (random choices, k-means start)")
            C["run_btn"] = gr.Button("Run again", variant="primary")

        # ------------------------------------------------------------------ views
        with gr.Column(scale=3, min_width=480):
            C["readout"] = gr.Markdown(L.readout_markdown(None), elem_id="readout", container=True)
            C["view_layer"] = gr.Slider(1, INFO0.num_blocks, value=LAYERS0[0], step=1, label="Show the tokens after block…",
                                        info="Move through the network: pruning layers show the decision, "
                                        "the others who is still computed.")
            C["panel_note"] = gr.Markdown("")
            with gr.Tabs():
                with gr.Tab("Tokens"):
                    gr.HTML(L.legend_html())
                    C["token_caption"] = gr.Markdown("")
                    with gr.Row():
                        C["token_map"] = gr.Image(label="Token map (16 x 16 px per token)", format="png", interactive=False)
                        C["depth"] = gr.Image(format="png", show_label=False, interactive=False)
                with gr.Tab("Why? · method signals"):
                    gr.Markdown("What the method looked at when it decided, at the pruning layer named above "
                                "(grey: tokens no longer computed). Move the layer slider to see other pruning layers.")
                    sections = {
                        "entropy": ("Entropy (LVTP)", "LVTP's information measure per token. The fused entropy mixes the "
                                    "two Tsallis scales with the per-token weight alpha; low-entropy clusters go first."),
                        "edges": ("Edges (LVTP)", "The Sobel filter finds image edges; a token's edge energy is the mean "
                                  "edge strength inside its patch. Pending tokens with the weakest edges are pruned first."),
                        "clusters": ("Clusters (LVTP)", "First pass: entropy-weighted k-means; the most informative clusters "
                                     "are kept, the rest are pending. Second pass: the pending tokens are clustered again "
                                     "together with their edge energy."),
                        "exits": ("Exits (DToP)", "The auxiliary head's confidence decides who exits; the histogram's "
                                  "line marks the threshold."),
                        "facets": ("Facets (MATP)", "MATP's facets and the score they combine; the histogram's line marks "
                                   "this image's adaptive threshold."),
                        "signals": ("Signals", "Every per-token signal the method returned at this layer."),
                    }
                    shown0 = L.tabs_for(METHOD0)
                    for key, (head, text) in sections.items():
                        with gr.Column(visible=key in shown0) as col:
                            gr.Markdown(f"#### {head}\n{text}")
                            C[f"img_{key}"] = gr.Image(format="png", show_label=False, interactive=False)
                            if key in ("exits", "facets"):
                                C[f"hist_{key}"] = gr.Plot(show_label=False)
                        C[f"tab_{key}"] = col
                with gr.Tab("Segmentation"):
                    C["seg_caption"] = gr.Markdown("")
                    C["seg_legend"] = gr.HTML("")
                    with gr.Row():
                        C["seg_slider"] = gr.ImageSlider(label="Unpruned (left) vs pruned (right) — drag the handle",
                                                         format="png", interactive=False)
                        C["seg_change"] = gr.Image(label="Pixels whose class changed (vermillion)", format="png",
                                                   interactive=False)
                with gr.Tab("Metrics"):
                    C["metrics"] = gr.Dataframe(headers=["quantity", "value", "meaning / unit"], interactive=False, wrap=True,
                                                column_widths=["28%", "24%", "48%"], max_height=900)
                    gr.Markdown("Method values at each pruning layer:")
                    C["scalars"] = gr.Dataframe(headers=["layer", "name", "value", "meaning"], interactive=False, wrap=True)
                with gr.Tab("MACs per layer"):
                    C["chart_tokens"] = gr.Plot(show_label=False)
                    C["chart_macs"] = gr.Plot(show_label=False)
                    C["chart_cum"] = gr.Plot(show_label=False)
                with gr.Tab("Compare"):
                    gr.Markdown("Run several methods on the same image, side by side. *Matched budget*: the rate of "
                                "rate-based methods is bisected until the estimated MAC saving hits the target.")
                    C["compare_methods"] = gr.CheckboxGroup(choices=L.method_choices(INFO0), label="Methods",
                                                            value=[m for m in ("random", "evit", "lvtp") if m in METHODS])
                    with gr.Row():
                        C["compare_mode"] = gr.Radio(["each at its defaults", "matched MAC budget"], value="each at its defaults",
                                                     label="Settings")
                        C["compare_target"] = gr.Slider(5, 60, value=25, step=1, label="target MAC reduction (%)")
                    C["compare_btn"] = gr.Button("Compare", variant="primary")
                    C["compare_note"] = gr.Markdown("")
                    C["compare_table"] = gr.Dataframe(headers=L.COMPARE_HEADERS, interactive=False, wrap=True)
                    gr.Markdown("Top row: how deep each token went, per method. Bottom row: the segmentation after pruning.")
                    C["compare_image"] = gr.Image(show_label=False, format="png", interactive=False)
                with gr.Tab("SAM prompts") as sam_tab:
                    C["sam_note"] = gr.Markdown("*Prompts need a SAM backbone (choose sam_vit_b / l / h above).*")
                    with gr.Row():
                        C["prompt_mode"] = gr.Radio(["foreground point", "background point", "box (two clicks)"],
                                                    value="foreground point", label="A click adds")
                        C["prompt_status"] = gr.Markdown("")
                    C["sam_image"] = gr.Image(label="Click to prompt", format="png", interactive=False)
                    with gr.Row():
                        C["box_x0"] = gr.Number(label="box x0", precision=0)
                        C["box_y0"] = gr.Number(label="y0", precision=0)
                        C["box_x1"] = gr.Number(label="x1", precision=0)
                        C["box_y1"] = gr.Number(label="y1", precision=0)
                    with gr.Row():
                        C["box_btn"] = gr.Button("Set box from numbers")
                        C["clear_btn"] = gr.Button("Clear prompts")
                        C["predict_btn"] = gr.Button("Predict masks", variant="primary")
                    C["predict_text"] = gr.Markdown("")
                    with gr.Row():
                        C["mask_before"] = gr.Image(label="Mask from the unpruned encoder", format="png", interactive=False)
                        C["mask_after"] = gr.Image(label="Mask from the pruned encoder", format="png", interactive=False)
                with gr.Tab("Export"):
                    gr.Markdown("A zip with `report.json`, the token maps and segmentations as PNG, the input the model saw "
                                "(`input.png`, plus `mask.png`) and `command.txt`: the command line that reproduces the run.")
                    C["export_btn"] = gr.Button("Build zip", variant="primary")
                    C["export_file"] = gr.File(label="Download", interactive=False)
                    C["export_command"] = gr.Textbox(label="command.txt", lines=3, interactive=False)

    # ---------------------------------------------------------------------- API-only components
    with gr.Group(visible=False):
        api_in = {
            "image": gr.File(type="filepath"), "mask": gr.File(type="filepath"), "backbone": gr.Textbox("demo"),
            "method": gr.Textbox(DEFAULT_METHOD), "methods": gr.Textbox(""), "layers": gr.Textbox(""),
            "params": gr.Textbox("{}"), "seed": gr.Number(0, precision=0), "target": gr.Number(0),
        }
        api_json, api_file = gr.JSON(), gr.File()
        api_buttons = {name: gr.Button(visible=False) for name in ("analyze", "estimate", "compare", "export")}

    # ---------------------------------------------------------------------- events
    main_in = _comps(MAIN_IN)
    view_out = _comps(VIEW_OUT)
    setup_out = _comps(SETUP_OUT)
    input_out = _comps(INPUT_OUT)
    private = dict(api_visibility="private")
    latest = dict(trigger_mode="always_last")  # a choice made while a run is going is run afterwards, not dropped
    model = dict(concurrency_id=MODEL, api_visibility="private")

    def _then_run(dep):
        """Estimate right away, then the full run (the readout moves before the heavy work). A
        trigger that arrives while the run is still going runs again afterwards with the newest
        settings (Gradio's default would drop it)."""
        return dep.success(on_estimate, main_in, C["readout"], show_progress="hidden", **private, **latest).then(
            on_analyze, main_in, view_out, **model, **latest)

    _then_run(C["image_file"].upload(on_upload, [C["state"], C["image_file"], C["band_r"], C["band_g"], C["band_b"],
                                                 C["stretch_lo"], C["stretch_hi"]], _comps(UPLOAD_OUT), **private, **latest))
    band_inputs = [C["state"], C["band_r"], C["band_g"], C["band_b"], C["stretch_lo"], C["stretch_hi"]]
    _then_run(gr.on([C["band_r"].submit, C["band_g"].submit, C["band_b"].submit, C["band_r"].blur, C["band_g"].blur,
                     C["band_b"].blur, C["stretch_lo"].release, C["stretch_hi"].release],
                    on_bands, band_inputs, input_out, trigger_mode="always_last", **private))
    if "gallery" in C:
        _then_run(C["gallery"].select(on_example, [C["state"], C["backbone"], C["sam_size"]], _comps(EXAMPLE_OUT),
                                      **private, **latest))
    _then_run(gr.on([C["mask_file"].upload, C["mask_file"].clear], on_mask,
                    [C["state"], C["mask_file"], C["backbone"], C["sam_size"]], [C["state"], C["mask_notices"]], **private, **latest))

    backbone_in = [C["state"], C["backbone"], C["sam_size"], C["method"]]
    _then_run(gr.on([C["backbone"].input, C["sam_size"].input], on_backbone, backbone_in, setup_out, **private, **latest))
    check = C["method"].select(on_check_method, [C["backbone"], C["sam_size"], C["method"]], None, **private, **latest)
    check.failure(on_revert_method, C["state"], C["method"], **private)
    _then_run(check.success(on_method, [C["state"], C["backbone"], C["sam_size"], C["method"]], setup_out, **private))
    C["download_btn"].click(on_download, [C["backbone"], C["sam_size"]], C["backbone_note"], **model).success(
        on_backbone, backbone_in, setup_out, **private).then(on_analyze, main_in, view_out, **model)

    # Pruning controls: sliders update the live MAC readout while they move and re-run on release;
    # discrete controls do both at once.
    sliders = [C[k] for k, c in zip(PARAM_KEYS, CONTROLS) if c.kind == "slider"]
    discrete = [C[k] for k, c in zip(PARAM_KEYS, CONTROLS) if c.kind != "slider"]
    gr.on([s.input for s in sliders], on_estimate, main_in, C["readout"], show_progress="hidden",
          trigger_mode="always_last", concurrency_id="estimate", concurrency_limit=4, api_visibility="private")
    gr.on([s.release for s in sliders] + [C["run_btn"].click], on_analyze, main_in, view_out,
          trigger_mode="always_last", **model)
    typed = [t for d in discrete + [C["seed"]] if isinstance(d, (gr.Number, gr.Textbox)) for t in (d.submit, d.blur)]
    picked = [d.input for d in discrete if not isinstance(d, (gr.Number, gr.Textbox))]
    _then_run(gr.on([C["layers"].input, *typed, *picked], lambda: None, None, None, trigger_mode="always_last", **private))
    C["view_layer"].input(on_view_layer, [C["state"], C["backbone"], C["sam_size"], C["view_layer"]],
                          _comps(LAYER_OUT), show_progress="hidden", trigger_mode="always_last", **private)

    C["compare_btn"].click(on_compare, [C["state"], C["backbone"], C["sam_size"], C["seed"], C["compare_methods"],
                                        C["compare_mode"], C["compare_target"]],
                           [C["state"], C["compare_image"], C["compare_table"], C["compare_note"]], **model)
    sam_tab.select(on_sam_tab, C["state"], C["sam_image"], **private)
    C["sam_image"].select(on_prompt_click, [C["state"], C["prompt_mode"]],
                          [C["state"], C["sam_image"], C["prompt_status"]], trigger_mode="multiple", **private)
    C["box_btn"].click(on_box, [C["state"], C["box_x0"], C["box_y0"], C["box_x1"], C["box_y1"]],
                       [C["state"], C["sam_image"], C["prompt_status"]], **private)
    C["clear_btn"].click(on_clear_prompts, C["state"], [C["state"], C["sam_image"], C["prompt_status"],
                                                        C["mask_before"], C["mask_after"]], **private)
    C["predict_btn"].click(on_predict, [C["state"], C["backbone"], C["sam_size"]],
                           [C["mask_before"], C["mask_after"], C["predict_text"]], **model)
    C["export_btn"].click(on_export, [C["state"], C["backbone"], C["sam_size"]],
                          [C["export_file"], C["export_command"]], **model)

    # First visit: show an example right away (no examples: an empty page that says what to do).
    if EXAMPLES:
        _then_run(demo.load(on_first_visit, [C["state"], C["backbone"], C["sam_size"]], _comps(EXAMPLE_OUT), **private))

    # Named endpoints for gradio_client (documented in docs/api.md).
    a = api_in
    api_buttons["analyze"].click(api_analyze, [a["image"], a["backbone"], a["method"], a["layers"], a["params"], a["seed"],
                                               a["mask"]], api_json, api_name="analyze", concurrency_id=MODEL)
    api_buttons["estimate"].click(api_estimate, [a["image"], a["backbone"], a["method"], a["layers"], a["params"], a["seed"]],
                                  api_json, api_name="estimate", concurrency_id=MODEL)
    api_buttons["compare"].click(api_compare, [a["image"], a["backbone"], a["methods"], a["layers"], a["target"], a["seed"]],
                                 api_json, api_name="compare", concurrency_id=MODEL)
    api_buttons["export"].click(api_export, [a["image"], a["backbone"], a["method"], a["layers"], a["params"], a["seed"],
                                             a["mask"]], api_file, api_name="export", concurrency_id=MODEL)

# Requests beyond QUEUE_SIZE waiting ones are refused at once ("Queue is full, try again")
# instead of piling up; at most MODEL_WORKERS networks run at the same time (they share the
# CPU cores). Both can be changed per deployment; README "Limits" has the measured figures.
QUEUE_SIZE = int(os.environ.get("PRUNE_VIZ_QUEUE_SIZE", "32"))
MODEL_WORKERS = int(os.environ.get("PRUNE_VIZ_WORKERS", "2"))
MAX_FILE_SIZE = "50mb"  # prune_viz.io refuses larger files too (CLI, API)
# Gradio keeps a copy of this page's configuration per browser / API session (the RSS growth
# bench/bench_load.py sees from round to round) for up to 10 000 sessions by default; the
# oldest beyond this many are forgotten (that visitor's next event starts from a fresh Session).
SESSION_CAPACITY = int(os.environ.get("PRUNE_VIZ_SESSIONS", "200"))
demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=MODEL_WORKERS)

if __name__ == "__main__":
    demo.launch(max_file_size=MAX_FILE_SIZE, state_session_capacity=SESSION_CAPACITY)
