"""The "Robustness" tab: a noise type, a strength slider, and the token map of the noisy image
next to the clean one with the tokens whose decision flipped (``ui/robustness.py`` computes and
draws; this module only builds the components and answers their events).

Drawn lazily: when the tab is opened and when its controls change, never with the main run.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from ..ui.choices import backbone_info
from ..ui.robustness import MAX_STRENGTH, NOISE_CHOICES, noise_views, run_noisy
from .glue import as_files, packed, user_errors

TAB = "Robustness"
NOISE_IN = ["state", "backbone", "sam_size", "noise_kind", "noise_strength"]
NOISE_OUT = ["noise_clean", "noise_noisy", "noise_flips", "noise_caption"]


def build_tab(c: dict[str, Any]) -> None:
    """The tab's components (inside an open ``gr.Tab``), registered in ``c``."""
    gr.Markdown("How stable is the pruning decision when the image gets worse? The same method and settings run on a "
                "corrupted copy of the image; the flip map marks tokens kept on one and not on the other "
                "(kept = reaches the last block). `python -m prune_viz bench --noise ...` measures this over a split.")
    with gr.Row():
        c["noise_kind"] = gr.Dropdown(choices=NOISE_CHOICES, value=NOISE_CHOICES[0][1], label="Noise type")
        c["noise_strength"] = gr.Slider(0, MAX_STRENGTH, value=2, step=1, label="Strength (0 = clean)",
                                        info="the four levels of bench --noise (docs/methods/matp.md)")
    c["noise_caption"] = gr.Markdown("*Run an image first, then open this tab.*", elem_id="noise_caption")
    with gr.Row():
        c["noise_clean"] = gr.Image(format="png", show_label=False, interactive=False)
        c["noise_noisy"] = gr.Image(format="png", show_label=False, interactive=False)
        c["noise_flips"] = gr.Image(format="png", show_label=False, interactive=False, elem_id="noise_flips")


@user_errors
@packed(NOISE_OUT)
def on_noise(session, backbone, sam_size, kind, strength):
    """Run the plan on show on the corrupted image and draw the comparison."""
    if session is None or session.analysis is None or session.plan is None or session.image is None:
        return {"noise_caption": "*Run an image first (pick an example or upload one).*"}
    facts, model = backbone_info(backbone, sam_size)
    if model is None or session.backbone_key != facts.key:
        return {"noise_caption": "*The run on show belongs to another backbone: run again first.*"}
    result = run_noisy(model, session.image, session.analysis, session.plan, str(kind), int(strength or 0))
    views = noise_views(result, session.analysis.model_image, model.patch_size, str(kind), int(strength or 0))
    return as_files({"noise_clean": views["clean"], "noise_noisy": views["noisy"], "noise_flips": views["flips"],
                     "noise_caption": views["caption"]})
