"""The SAM prompt tab's handlers: points and boxes on the image, then the mask decoder on the
cached image embedding (before and after pruning)."""

from __future__ import annotations

import gradio as gr

from ..ui import prompts, texts
from ..ui.choices import backbone_info
from ..ui.files import write_png
from .glue import user_errors
from .handlers import session_of


def on_sam_tab(session):
    """The prompt image is drawn when the SAM tab is opened (most visitors never do)."""
    return write_png(prompts.prompt_image(session_of(session)))


@user_errors
def on_prompt_click(session, mode, evt: gr.SelectData):
    session = session_of(session)
    text = prompts.add_click(session, tuple(evt.index), mode)
    return session, write_png(prompts.prompt_image(session)), text


@user_errors
def on_box(session, x0, y0, x1, y1):
    session = session_of(session)
    prompts.set_box(session, x0, y0, x1, y1)
    return session, write_png(prompts.prompt_image(session)), "Box set from the numbers."


def on_clear_prompts(session):
    session = session_of(session)
    session.clear_prompts()
    return session, write_png(prompts.prompt_image(session)), "Prompts cleared.", None, None


@user_errors
def on_predict(session, backbone, sam_size):
    session = session_of(session)
    facts, model = backbone_info(backbone, sam_size)
    if model is None:
        raise gr.Error(texts.weights_missing(facts.name), print_exception=False)
    before, after, text = prompts.sam_predict(session, model, facts.key)
    return write_png(before), write_png(after), text
