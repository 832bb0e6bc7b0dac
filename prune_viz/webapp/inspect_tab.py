"""The "Inspect a set" tab: its components, its handlers and its listener rows (wired by
:mod:`.events`). A set runs one at a time per server (its own queue), with a progress bar; a
gallery case opens in the main view like an example does; the attribution works on whatever
image the main view shows."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import gradio as gr

from ..budget import default_budget_s
from ..params import make_plan
from ..ui import set_view
from ..ui.choices import backbone_info
from ..ui.controls import values_for
from ..ui.files import write_png
from . import handlers as h
from .glue import packed, uploaded, user_errors

RUN_IN = ["set_state", "set_bundled", "set_zip", "backbone", "sam_size", "method", "layers", "seed", *h.PARAM_KEYS]
RUN_OUT = ["set_state", "set_summary", "set_gallery", "set_table", "set_report"]
ATTR_OUT = ["attr_map", "attr_text", "attr_table"]
QUEUE = dict(concurrency_id="inspect_set", concurrency_limit=1, api_visibility="private")


def build(c: dict[str, Any]) -> None:
    """The tab (inside the view tabs)."""
    with gr.Tab("Inspect a set"):
        gr.Markdown("Run a whole set unpruned and pruned with the **backbone, method, layers and parameters chosen on "
                    "the left**, and rank the images worst first by agreement mIoU with the unpruned model. "
                    + set_view.CAPS_TEXT)
        c["set_state"] = gr.State(None, time_to_live=3600)
        with gr.Row():
            c["set_bundled"] = gr.Radio([(text, key) for key, text in set_view.BUNDLED.items()], value="examples",
                                        label="A bundled set", elem_id="set_bundled")
            c["set_zip"] = gr.File(label="… or your own zip (used when given)", file_types=[".zip"], type="filepath",
                                   height=80, elem_id="set_zip")
        c["set_run_btn"] = gr.Button("Inspect the set", variant="primary", elem_id="set_run")
        c["set_summary"] = gr.Markdown("", elem_id="set_summary")
        c["set_gallery"] = gr.Gallery(label="Worst cases, worst first (token maps at the last pruning layer): click one "
                                      "to open it in the main view", columns=6, height=260, allow_preview=False,
                                      elem_id="set_gallery")
        c["set_table"] = gr.Dataframe(headers=set_view.TABLE_HEADERS, interactive=False, wrap=True, max_height=360,
                                      elem_id="set_table")
        c["set_report"] = gr.File(label="Report: inspect.csv + index.html + the gallery's maps (zip)", interactive=False)
        gr.Markdown("#### Where does the damage come from?\nFor the image on show in the main view: groups of pruned "
                    "tokens near the changed pixels are restored one group at a time (re-run from the cached "
                    "unpruned forward with those tokens forced to stay) and ranked by the share of the changed "
                    "pixels each brings back; the best are then restored together and measured.")
        c["attr_btn"] = gr.Button("Attribute the changed pixels", elem_id="attr_btn")
        c["attr_text"] = gr.Markdown("", elem_id="attr_text")
        with gr.Row():
            c["attr_map"] = gr.Image(label="Changed pixels (vermillion) and the tokens they come from", format="png",
                                     interactive=False, elem_id="attr_map")
            c["attr_table"] = gr.Dataframe(headers=set_view.RANKED_HEADERS, interactive=False, wrap=True)


@user_errors
@packed(RUN_OUT)
def on_run_set(set_state, bundled, zip_file, backbone, sam_size, method, layers, seed, *params, progress=gr.Progress()):
    facts, model = backbone_info(backbone, sam_size)
    if model is None:
        raise gr.Error(f"{facts.name}: {facts.missing}", print_exception=False)
    plan = make_plan(model, method, layers, seed, values_for(method, h.CONTROLS, list(params)))
    source = set_view.set_source(bundled, uploaded(zip_file) if zip_file else None, Path(os.environ.get("PRUNE_VIZ_EXAMPLES", h.ROOT / "examples")))
    progress(0, desc="reading the set")

    def step(done: int, total: int, name: str) -> None:
        progress(done / max(total, 1), desc=f"{done} / {total}: {name}")

    budget = default_budget_s()
    run = set_view.run_set(model, plan, source, step, stop_after_s=None if budget is None else max(10.0, budget - 30.0))
    return {"set_state": run, "set_summary": set_view.summary(run), "set_gallery": run.cases,
            "set_table": set_view.table_rows(run.report), "set_report": str(run.zip_path)}


@user_errors
@packed(h.EXAMPLE_OUT)
def on_open_case(session, set_state, backbone, sam_size, evt: gr.SelectData):
    """A gallery case opens in the main view (and the normal analysis runs after this)."""
    if not isinstance(set_state, set_view.SetRun):
        return {}
    session = h.session_of(session)
    image, mask, name = set_view.open_case(set_state, int(evt.index))
    out = h._load(session, image, name)
    note = "No ground-truth mask for this case."
    if mask is not None:
        _, model = backbone_info(backbone, sam_size)
        notices = session.set_mask(mask, model)
        note = h.sentences(f"Ground truth: **{Path(mask).name}**." if session.gt is not None else "", notices)
    out.update(mask_notices=note, image_file=None, mask_file=None)
    return out


@user_errors
@packed(ATTR_OUT)
def on_attribute(session, backbone, sam_size):
    session = h.session_of(session)
    facts, model = backbone_info(backbone, sam_size)
    if model is None:
        raise gr.Error(f"{facts.name}: {facts.missing}", print_exception=False)
    if session.analysis is not None and session.backbone_key != facts.key:
        raise gr.Error("the backbone changed since the last run; run again first", print_exception=False)
    image, text, rows = set_view.attribution_views(session, model)
    return {"attr_map": write_png(image), "attr_text": text, "attr_table": rows}


def rows() -> list[tuple]:
    """Listener rows for :func:`.events.table` (queue names from ``events.QUEUES``)."""
    return [
        (["set_run_btn.click"], on_run_set, RUN_IN, RUN_OUT, "inspect_set", False),
        (["set_gallery.select"], on_open_case, ["state", "set_state", "backbone", "sam_size"], h.EXAMPLE_OUT, "latest", True),
        (["attr_btn.click"], on_attribute, ["state", "backbone", "sam_size"], ATTR_OUT, "model", False),
    ]
