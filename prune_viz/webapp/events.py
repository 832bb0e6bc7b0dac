"""Which event calls which handler: a table, one row per listener, wired by :func:`wire`.

A row is ``(triggers, handler, inputs, outputs, queue, then_run)``: ``triggers`` are
``"component.event"`` names (``"demo.load"`` for a page load), ``inputs`` / ``outputs``
component names, ``queue`` one of the option sets in :data:`QUEUES`, and ``then_run`` adds
the two steps every input change takes: the live MAC estimate right away, then the full run.
"""

from __future__ import annotations

from typing import Any, Callable

import gradio as gr

from . import api, handlers as h, inspect_tab, noise_view as nv, quick, sam_prompts as sp, teaching as t

MODEL = "model"  # one concurrency group for everything that runs a network
LATEST = dict(trigger_mode="always_last")  # a choice made while a run is going is run afterwards, not dropped
QUEUES: dict[str, dict[str, Any]] = {
    "private": dict(api_visibility="private"),
    "latest": dict(api_visibility="private", **LATEST),
    "model": dict(concurrency_id=MODEL, api_visibility="private"),
    "model_latest": dict(concurrency_id=MODEL, api_visibility="private", **LATEST),
    "live": dict(show_progress="hidden", api_visibility="private", **LATEST),
    "estimate": dict(show_progress="hidden", concurrency_id="estimate", concurrency_limit=4, api_visibility="private",
                     **LATEST),
    "clicks": dict(trigger_mode="multiple", api_visibility="private"),
    "inspect_set": inspect_tab.QUEUE,  # one set at a time per server
}

STATE_MODEL = ["state", "backbone", "sam_size"]
BANDS = ["band_r", "band_g", "band_b"]
FORCE_IN = [*h.MAIN_IN[:7], "insp_row", "insp_col", *h.MAIN_IN[7:]]  # the run's inputs plus the token
Row = tuple[list[str], Callable, "list[str] | None", "list[str] | None", str, bool]


def table(c: dict[str, Any]) -> list[Row]:
    """The listeners of the page with components ``c`` (some rows depend on what exists)."""
    sliders = [k for k, ctl in zip(h.PARAM_KEYS, h.CONTROLS) if ctl.kind == "slider"]
    discrete = [k for k, ctl in zip(h.PARAM_KEYS, h.CONTROLS) if ctl.kind != "slider"] + ["seed"]
    typed = [f"{k}.{e}" for k in discrete if isinstance(c[k], (gr.Number, gr.Textbox)) for e in ("submit", "blur")]
    picked = [f"{k}.input" for k in discrete if not isinstance(c[k], (gr.Number, gr.Textbox))]
    rows: list[Row] = [
        (["image_file.upload"], h.on_upload, ["state", "image_file", *BANDS, "stretch_lo", "stretch_hi"], h.UPLOAD_OUT,
         "latest", True),
        ([f"{b}.{e}" for e in ("submit", "blur") for b in BANDS] + ["stretch_lo.release", "stretch_hi.release"],
         h.on_bands, ["state", *BANDS, "stretch_lo", "stretch_hi"], h.INPUT_OUT, "latest", True),
        (["mask_file.upload", "mask_file.clear"], h.on_mask, ["state", "mask_file", "backbone", "sam_size"],
         ["state", "mask_notices", "mask_file"], "latest", True),
        (["backbone.input", "sam_size.input"], h.on_backbone, [*STATE_MODEL, "method"], h.SETUP_OUT, "latest", True),
        # Sliders update the live readout while they move and re-run on release; discrete
        # controls do both at once.
        ([f"{k}.input" for k in sliders], h.on_estimate, h.MAIN_IN, ["readout"], "estimate", False),
        ([f"{k}.release" for k in sliders] + ["run_btn.click"], h.on_analyze, h.MAIN_IN, h.VIEW_OUT, "model_latest", False),
        (["layers.input", *typed, *picked], lambda: None, None, None, "latest", True),
        (["view_layer.input"], h.on_view_layer, [*STATE_MODEL, "view_layer"], h.LAYER_OUT, "live", False),
        (["compare_btn.click"], h.on_compare, [*STATE_MODEL, "seed", "compare_methods", "compare_mode", "compare_target"],
         ["state", "compare_image", "compare_table", "compare_note"], "model", False),
        (["sam_tab.select"], sp.on_sam_tab, ["state"], ["sam_image"], "private", False),
        (["robust_tab.select", "noise_kind.input", "noise_strength.release"], nv.on_noise, nv.NOISE_IN, nv.NOISE_OUT,
         "model_latest", False),
        (["view_tabs.select"], h.on_tab, [*STATE_MODEL, "view_layer"], h.TAB_OUT, "private", False),
        (["sam_image.select"], sp.on_prompt_click, ["state", "prompt_mode"], ["state", "sam_image", "prompt_status"],
         "clicks", False),
        (["box_btn.click"], sp.on_box, ["state", "box_x0", "box_y0", "box_x1", "box_y1"],
         ["state", "sam_image", "prompt_status"], "private", False),
        (["clear_btn.click"], sp.on_clear_prompts, ["state"],
         ["state", "sam_image", "prompt_status", "mask_before", "mask_after"], "private", False),
        (["predict_btn.click"], sp.on_predict, STATE_MODEL, ["mask_before", "mask_after", "predict_text"], "model", False),
        (["export_btn.click"], h.on_export, STATE_MODEL, ["export_file", "export_command"], "model", False),
        # The teaching view: image toggle, token inspector, what-if re-runs, play, GIF.
        (["show_image.input"], t.on_show_image, [*STATE_MODEL, "view_layer", "show_image"], h.LAYER_OUT, "live", False),
        (["token_map.select"], t.on_token_click, STATE_MODEL, t.INSPECT_OUT, "private", False),
        (["inspect_btn.click", "insp_row.submit", "insp_col.submit"], t.on_inspect,
         [*STATE_MODEL, "insp_row", "insp_col"], ["inspector"], "private", False),
        (["force_keep_btn.click"], t.on_force_keep, FORCE_IN, t.FORCE_OUT, "model", False),
        (["force_prune_btn.click"], t.on_force_prune, FORCE_IN, t.FORCE_OUT, "model", False),
        (["play_btn.click"], t.on_play, STATE_MODEL, t.PLAY_OUT, "private", False),
        (["gif_btn.click"], t.on_gif, STATE_MODEL, ["gif_file"], "model", False),
        (["compare_gif_btn.click"], t.on_compare_gif,
         [*STATE_MODEL, "seed", "compare_methods", "compare_mode", "compare_target"], ["compare_gif"], "model", False),
    ]
    rows.extend(inspect_tab.rows())
    if "gallery" in c:  # first visit: show an example right away (no examples: a page that says what to do)
        rows.append((["gallery.select"], h.on_example, STATE_MODEL, h.EXAMPLE_OUT, "latest", True))
        rows.append((["demo.load"], quick.on_first_visit_run, h.MAIN_IN, quick.FIRST_OUT, "model", False))
    return rows


# Named endpoints for gradio_client (documented in docs/api.md): name -> (handler, inputs, output).
API: dict[str, tuple[Callable, list[str], str]] = {
    "analyze": (api.api_analyze, ["image", "backbone", "method", "layers", "params", "seed", "mask"], "json"),
    "estimate": (api.api_estimate, ["image", "backbone", "method", "layers", "params", "seed"], "json"),
    "compare": (api.api_compare, ["image", "backbone", "methods", "layers", "target", "seed"], "json"),
    "export": (api.api_export, ["image", "backbone", "method", "layers", "params", "seed", "mask"], "file"),
    "inspect_token": (t.api_inspect_token, ["image", "backbone", "method", "layers", "params", "seed", "mask", "row", "col"],
                      "json"),
    "animate": (t.api_animate, ["image", "backbone", "method", "layers", "params", "seed", "mask"], "file"),
}


def wire(demo: gr.Blocks, c: dict[str, Any]) -> None:
    """Attach every listener of :func:`table`, the method check and the download chain, and
    the API endpoints (inside ``demo``'s context)."""

    def comps(names: list[str] | None):
        return None if names is None else [c[n] for n in names]

    def trigger(name: str):
        component, event = name.split(".")
        return getattr(demo if component == "demo" else c[component], event)

    def then_time(dep):
        """After the views are drawn, the Metrics tab's wall times (unpruned and pruned timed
        together); the views never wait for them."""
        return dep.success(h.on_timing, comps(STATE_MODEL), c["metrics"], **QUEUES["model"])

    def then_run(dep):
        """Estimate right away, then the full run (the readout moves before the heavy work). A
        trigger that arrives while the run is still going runs again afterwards with the newest
        settings (Gradio's default would drop it)."""
        return then_time(dep.success(h.on_estimate, comps(h.MAIN_IN), c["readout"], **QUEUES["live"]).then(
            h.on_analyze, comps(h.MAIN_IN), comps(h.VIEW_OUT), **QUEUES["model_latest"]))

    for triggers, handler, inputs, outputs, queue, run_after in table(c):
        events = [trigger(t) for t in triggers]
        if len(events) == 1:
            dep = events[0](handler, comps(inputs), comps(outputs), **QUEUES[queue])
        else:
            dep = gr.on(events, handler, comps(inputs), comps(outputs), **QUEUES[queue])
        if handler in (h.on_analyze, quick.on_first_visit_run):
            then_time(dep)
        if run_after:
            then_run(dep)

    # One event: the method's controls and live estimate, then its run (or the refusal, and the
    # dropdown turned back, for a method that cannot run here).
    then_time(c["method"].select(quick.on_switch_method, comps(h.MAIN_IN), comps(quick.SWITCH_OUT),
                                 **QUEUES["model_latest"]))
    c["download_btn"].click(h.on_download, comps(["backbone", "sam_size"]), c["backbone_note"], **QUEUES["model"]).success(
        h.on_backbone, comps([*STATE_MODEL, "method"]), comps(h.SETUP_OUT), **QUEUES["private"]).then(
        h.on_analyze, comps(h.MAIN_IN), comps(h.VIEW_OUT), **QUEUES["model"]).success(
        h.on_timing, comps(STATE_MODEL), c["metrics"], **QUEUES["model"])

    for name, (handler, inputs, output) in API.items():
        c[f"api_btn:{name}"].click(handler, [c[f"api:{k}"] for k in inputs], c[f"api:{output}"], api_name=name,
                                   concurrency_id=MODEL)
