"""The page: every component, registered by name, inside the caller's ``gr.Blocks``.

No listener is attached here (see :mod:`.events`); the initial values come from the default
backbone's facts, so the page is right before the first event.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from ..backbones import SAM_SIZES, BackboneFacts
from ..errors import UserError
from ..methods import METHODS, get_method
from ..params import DEFAULT_METHOD, default_layers, method_availability
from ..ui import texts
from ..ui.choices import (DEFAULT_BACKBONE, backbone_choices, backbone_info, layer_choices, layer_slider_info,
                          method_choices)
from ..ui.compare import COMPARE_HEADERS
from ..ui.glossary import glossary_markdown
from ..ui.controls import ParamControl
from ..ui.files import thumbnail
from ..ui.session import Session
from ..ui.tables import readout_markdown
from ..ui.views import legend_html, tabs_for
from . import inspect_tab, noise_view
from .handlers import CONTROLS, PARAM_KEYS, examples

TITLE = "prune_viz — token pruning in ViT segmenters, made visible"

# Method-signal tabs: (heading, what it shows).
SECTIONS = {
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


def initial_facts() -> tuple[BackboneFacts, str]:
    """The default backbone's facts and note; a plain fallback if its weights cannot be read,
    so the app still starts (the note and the readout then say what is wrong)."""
    try:
        facts = backbone_info(DEFAULT_BACKBONE)[0]
        return facts, texts.backbone_note(facts.name, facts)
    except UserError as exc:  # CheckpointError, a bad PRUNE_VIZ_DEMO_WEIGHTS: still start, and say why
        facts = BackboneFacts(DEFAULT_BACKBONE, None, 12, (), (), (6,), 0, False, "", missing=str(exc))
        return facts, f"**Cannot load the demo model:** {exc}"


def _param_control(c: ParamControl):
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


def build_layout() -> dict[str, Any]:
    """Create the page's components (inside an open ``gr.Blocks``); returns them by name.
    API-only components are named ``api:<argument>``, their buttons ``api_btn:<endpoint>``."""
    facts0, note0 = initial_facts()
    method0 = DEFAULT_METHOD if not method_availability(facts0).get(DEFAULT_METHOD) else "random"
    layers0 = list(default_layers(get_method(method0), facts0))
    shown = examples()
    c: dict[str, Any] = {}
    c["state"] = gr.State(Session(), time_to_live=3600)  # a SAM prefix cache is large
    gr.Markdown(f"## {TITLE}")
    with gr.Accordion("What am I looking at? · Glossary (token, MAC, FLOP, mIoU, γ, Tsallis entropy, Sobel, …)",
                      open=False, elem_id="glossary"):
        gr.Markdown(texts.WHAT_AM_I_LOOKING_AT)
        gr.Markdown(glossary_markdown())

    # Two columns: the choices on the left, the maps on the right, so the first map is in view
    # on a 1366 x 768 projector without scrolling.
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=320):
            if shown:
                c["gallery"] = gr.Gallery(value=[(thumbnail(e.image), e.name) for e in shown], label="Examples: click one",
                                          columns=4, height=250, allow_preview=False, elem_id="examples")
            c["image_file"] = gr.File(label="1 · Or your own image: PNG, JPEG, TIFF (16-bit, multi-band GeoTIFF)",
                                      file_types=[".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp", ".webp"],
                                      type="filepath", height=80)
            with gr.Row(visible=False) as band_row:
                c["band_r"] = gr.Number(label="band → red", value=1, precision=0, minimum=1, min_width=60)
                c["band_g"] = gr.Number(label="band → green", value=2, precision=0, minimum=1, min_width=60)
                c["band_b"] = gr.Number(label="band → blue", value=3, precision=0, minimum=1, min_width=60)
            c["band_row"] = band_row
            with gr.Accordion("Display stretch (16-bit / float images)", open=False):
                c["stretch_lo"] = gr.Slider(0, 20, value=2, step=0.5, label="low percentile → black")
                c["stretch_hi"] = gr.Slider(80, 100, value=98, step=0.5, label="high percentile → white")
            c["mask_file"] = gr.File(label="Optional ground-truth mask (class ids or the demo palette)",
                                     file_types=[".png", ".tif", ".tiff", ".bmp", ".gif"], type="filepath", height=80)
            c["notices"] = gr.Markdown("")
            c["mask_notices"] = gr.Markdown("")
            c["backbone"] = gr.Dropdown(choices=backbone_choices(), value=DEFAULT_BACKBONE, label="2 · Backbone",
                                        allow_custom_value=True, info="or type timm:<model name>")
            # 512 px first: choosing a SAM backbone starts a run at once, before a size can be picked
            # (at 1024 px that run took ~90 s on 2 cores).
            c["sam_size"] = gr.Dropdown(choices=list(SAM_SIZES), value=min(SAM_SIZES), label="SAM input size (px)",
                                        info="512 px is about 4x faster; 1024 = the official size", visible=False)
            c["backbone_note"] = gr.Markdown(note0)
            c["missing_help"] = gr.Markdown("", visible=False)  # filled when a backbone's weights are missing
            c["download_btn"] = gr.Button("Download", visible=False, variant="secondary")
            c["method"] = gr.Dropdown(choices=method_choices(facts0), value=method0, label="3 · Pruning method")
            with gr.Accordion("How this method decides", open=True):
                c["method_info"] = gr.Markdown(texts.method_explanation(method0))
            _pruning_controls(c, facts0, method0, layers0)
        with gr.Column(scale=3, min_width=480):
            c["ood_banner"] = gr.Markdown("", visible=False, elem_id="ood_banner")  # ood.py: out of the model's domain
            c["readout"] = gr.Markdown(readout_markdown(None), elem_id="readout", container=True)
            c["view_layer"] = gr.Slider(1, facts0.num_blocks, value=layers0[0], step=1, label="Show the tokens after block…",
                                        info=layer_slider_info(facts0))
            c["panel_note"] = gr.Markdown("")
            with gr.Tabs() as view_tabs:  # its select event draws a lazily drawn tab when opened
                _view_tabs(c, method0, facts0)
            c["view_tabs"] = view_tabs

    with gr.Group(visible=False):  # API-only components
        c.update({
            "api:image": gr.File(type="filepath"), "api:mask": gr.File(type="filepath"), "api:backbone": gr.Textbox("demo"),
            "api:method": gr.Textbox(DEFAULT_METHOD), "api:methods": gr.Textbox(""), "api:layers": gr.Textbox(""),
            "api:params": gr.Textbox("{}"), "api:seed": _lenient(gr.Number(0, precision=0)), "api:target": _lenient(gr.Number(0)),
            "api:json": gr.JSON(), "api:file": gr.File(),
            "api:row": gr.Number(0, precision=0), "api:col": gr.Number(0, precision=0),
        })
        c.update({f"api_btn:{name}": gr.Button(visible=False)
                  for name in ("analyze", "estimate", "compare", "export", "inspect_token", "animate")})
    return c


def _lenient(number: gr.Number) -> gr.Number:
    """An API number input that passes a value it cannot read (a seed of "abc") on as it is,
    so the one validation path answers with its own message: Gradio's refusal would be a bare
    "Error" for the client and a traceback in the server log."""
    strict = number.preprocess

    def preprocess(payload: Any) -> Any:
        try:
            return strict(payload)
        except (TypeError, ValueError, OverflowError):
            return payload

    number.preprocess = preprocess  # type: ignore[method-assign]
    return number


def _pruning_controls(c: dict[str, Any], facts0: BackboneFacts, method0: str, layers0: list[int]) -> None:
    gr.Markdown("**4 · Where and how much**")
    c["layers"] = gr.CheckboxGroup(choices=layer_choices(facts0), value=layers0,
                                   label="Prune after layers (1-based: block L runs in full, L+1.. skip the removed tokens)")
    for method_name in METHODS:
        own = [(k, ctl) for k, ctl in zip(PARAM_KEYS, CONTROLS) if ctl.method == method_name]
        with gr.Group(visible=method_name == method0) as group:
            if not own:
                gr.Markdown(f"*{method_name} has no parameters.*")
            for key, ctl in own:
                if not ctl.advanced:
                    c[key] = _param_control(ctl)
            advanced = [(k, ctl) for k, ctl in own if ctl.advanced]
            if advanced:
                with gr.Accordion(f"More {method_name} settings", open=False):
                    for key, ctl in advanced:
                        c[key] = _param_control(ctl)
        c[f"grp:{method_name}"] = group
    c["seed"] = gr.Number(value=0, precision=0, minimum=0, label="seed (random choices, k-means start)")
    c["run_btn"] = gr.Button("Run again", variant="primary")


def _view_tabs(c: dict[str, Any], method0: str, facts0: BackboneFacts) -> None:
    with gr.Tab("Tokens"):
        with gr.Row():
            c["token_map"] = gr.Image(label="Token map — click a token to ask why", format="png", interactive=False,
                                      elem_id="token_map")
            with gr.Column():
                c["token_caption"] = gr.Markdown("", elem_id="token_caption")
                with gr.Row():
                    c["show_image"] = gr.Checkbox(value=True, label="show the image under the tokens", min_width=120)
                    c["play_btn"] = gr.Button("▶ Play blocks 1→N", elem_id="play_btn", min_width=120)
                    c["gif_btn"] = gr.Button("GIF for slides", min_width=100)
                c["gif_file"] = gr.File(label="layers.gif", interactive=False, visible=False, elem_id="gif_file")
                gr.HTML(legend_html())
        with gr.Row():
            c["insp_row"] = gr.Number(label="token row (0-based)", precision=0, minimum=0, value=0, min_width=80)
            c["insp_col"] = gr.Number(label="token col (0-based)", precision=0, minimum=0, value=0, min_width=80)
            c["inspect_btn"] = gr.Button("Why?", min_width=80)
            c["force_keep_btn"] = gr.Button("What if it had stayed? (force keep)", elem_id="force_keep", min_width=120)
            c["force_prune_btn"] = gr.Button("What if it had gone? (force prune)", elem_id="force_prune", min_width=120)
        c["inspector"] = gr.Markdown("*Click a token on the map to see its signals and the rule that decided it.*",
                                     elem_id="inspector", container=True)
        c["depth"] = gr.Image(format="png", show_label=False, interactive=False, elem_id="depth_map")
    with gr.Tab("Why? · method signals"):
        gr.Markdown("What the method looked at when it decided, at the pruning layer named above "
                    "(grey: tokens no longer computed). Move the layer slider to see other pruning layers.")
        shown0 = tabs_for(method0)
        for key, (head, text) in SECTIONS.items():
            with gr.Column(visible=key in shown0) as col:
                gr.Markdown(f"#### {head}\n{text}")
                c[f"img_{key}"] = gr.Image(format="png", show_label=False, interactive=False, elem_id=f"img_{key}")
                if key in ("exits", "facets"):
                    c[f"hist_{key}"] = gr.Plot(show_label=False)
            c[f"tab_{key}"] = col
    with gr.Tab("Segmentation"):
        c["seg_caption"] = gr.Markdown("")
        c["seg_legend"] = gr.HTML("")
        with gr.Row():
            c["seg_slider"] = gr.ImageSlider(label="Unpruned (left) vs pruned (right) — drag the handle",
                                             format="png", interactive=False)
            c["seg_change"] = gr.Image(label="Pixels whose class changed (vermillion)", format="png", interactive=False)
    with gr.Tab("Metrics"):
        c["metrics"] = gr.Dataframe(headers=["quantity", "value", "meaning / unit"], interactive=False, wrap=True,
                                    column_widths=["28%", "24%", "48%"], max_height=900)
        gr.Markdown("Method values at each pruning layer:")
        c["scalars"] = gr.Dataframe(headers=["layer", "name", "value", "meaning"], interactive=False, wrap=True)
    with gr.Tab("MACs per layer"):
        c["chart_tokens"] = gr.Plot(show_label=False)
        c["chart_macs"] = gr.Plot(show_label=False)
        c["chart_cum"] = gr.Plot(show_label=False)
    with gr.Tab("Compare"):
        gr.Markdown("Run several methods on the same image, side by side. *Matched budget*: the rate of "
                    "rate-based methods is bisected until the estimated MAC saving hits the target.")
        c["compare_methods"] = gr.CheckboxGroup(choices=method_choices(facts0), label="Methods",
                                                value=[m for m in ("random", "evit", "lvtp") if m in METHODS])
        with gr.Row():
            c["compare_mode"] = gr.Radio(["each at its defaults", "matched MAC budget"], value="each at its defaults",
                                         label="Settings")
            c["compare_target"] = gr.Slider(5, 60, value=25, step=1, label="target MAC reduction (%)")
        with gr.Row():
            c["compare_btn"] = gr.Button("Compare", variant="primary")
            c["compare_gif_btn"] = gr.Button("Play them in sync (GIF for slides)")
        c["compare_gif"] = gr.File(label="methods_in_sync.gif", interactive=False, visible=False)
        c["compare_note"] = gr.Markdown("")
        c["compare_table"] = gr.Dataframe(headers=COMPARE_HEADERS, interactive=False, wrap=True)
        gr.Markdown("Top row: how deep each token went, per method. Bottom row: the segmentation after pruning.")
        c["compare_image"] = gr.Image(show_label=False, format="png", interactive=False)
    with gr.Tab("SAM prompts") as sam_tab:
        c["sam_note"] = gr.Markdown("*Prompts need a SAM backbone (choose sam_vit_b / l / h above).*")
        with gr.Row():
            c["prompt_mode"] = gr.Radio(["foreground point", "background point", "box (two clicks)"],
                                        value="foreground point", label="A click adds")
            c["prompt_status"] = gr.Markdown("")
        c["sam_image"] = gr.Image(label="Click to prompt", format="png", interactive=False)
        with gr.Row():
            c["box_x0"] = gr.Number(label="box x0", precision=0)
            c["box_y0"] = gr.Number(label="y0", precision=0)
            c["box_x1"] = gr.Number(label="x1", precision=0)
            c["box_y1"] = gr.Number(label="y1", precision=0)
        with gr.Row():
            c["box_btn"] = gr.Button("Set box from numbers")
            c["clear_btn"] = gr.Button("Clear prompts")
            c["predict_btn"] = gr.Button("Predict masks", variant="primary")
        c["predict_text"] = gr.Markdown("")
        with gr.Row():
            c["mask_before"] = gr.Image(label="Mask from the unpruned encoder", format="png", interactive=False)
            c["mask_after"] = gr.Image(label="Mask from the pruned encoder", format="png", interactive=False)
    c["sam_tab"] = sam_tab
    with gr.Tab(noise_view.TAB) as robust_tab:
        noise_view.build_tab(c)
    c["robust_tab"] = robust_tab
    with gr.Tab("Export"):
        gr.Markdown("A zip with `report.json`, the token maps and segmentations as PNG, the input the model saw "
                    "(`input.png`, plus `mask.png`), `command.txt`: the command line that reproduces the run, and "
                    "`figure.png` / `.svg` / `.pdf`: one lecture-ready composite (token maps at every pruning layer, "
                    "legend, before / after, change map, key numbers, title). The GIF of the layers is on the Tokens tab.")
        c["export_btn"] = gr.Button("Build zip", variant="primary")
        c["export_file"] = gr.File(label="Download", interactive=False, elem_id="export_file")
        c["export_command"] = gr.Textbox(label="command.txt", lines=3, interactive=False)
    inspect_tab.build(c)
