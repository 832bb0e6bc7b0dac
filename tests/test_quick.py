"""One event per action (prune_viz.webapp.quick): a method switch and a first visit each send
their updates from one generator event, and a first visit takes the warm start's analysis only
when everything it depends on is the same. In-process, on the app's own handlers."""

from __future__ import annotations

from pathlib import Path

import pytest

from prune_viz.ui import warm
from prune_viz.ui.session import Session
from prune_viz.webapp import handlers, quick


@pytest.fixture()
def page(app_module):
    """The initial values of the page's run inputs (what a first visit sends), by name."""
    import gradio as gr

    with gr.Blocks():
        from prune_viz.webapp.layout import build_layout

        c = build_layout()
    warm.forget()
    yield c, {n: c[n].value for n in handlers.MAIN_IN[1:]}
    warm.forget()


def _steps(gen, names):
    return [{n: v for n, v in zip(names, out) if not (isinstance(v, dict) and v == quick.SKIP)} for out in gen]


def test_first_visit_is_one_event_and_takes_the_warm_start(page, monkeypatch):
    c, values = page
    args = list(values.values())
    cold = _steps(quick.on_first_visit_run(Session(), *args), quick.FIRST_OUT)
    assert len(cold) == 2 and "running the analysis" in cold[0]["readout"]  # loaded first, then the views
    assert "analytic count for this run" in cold[1]["readout"] and Path(cold[1]["token_map"]).is_file()

    assert quick.warm_start(c)
    ran, run = [], Session.run
    monkeypatch.setattr(Session, "run", lambda self, *a, **k: ran.append(k.get("ready")) or run(self, *a, **k))
    session = Session()
    hot = _steps(quick.on_first_visit_run(session, *args), quick.FIRST_OUT)
    assert len(hot) == 1 and ran and ran[0] is not None  # the kept analysis, no forward
    assert hot[0]["readout"] == cold[1]["readout"] and Path(hot[0]["token_map"]).is_file()
    assert session.analysis is ran[0] and session.image is not None

    # Other settings than the page's initial ones: no warm analysis, a real run.
    ran.clear()
    seed = handlers.MAIN_IN.index("seed") - 1
    other = _steps(quick.on_first_visit_run(Session(), *args[:seed], 7, *args[seed + 1:]), quick.FIRST_OUT)
    assert len(other) == 2 and ran == [None]
    # "Run again" always runs, even on the warm start's example and settings.
    ran.clear()
    handlers.on_analyze(session, *args)
    assert ran == [None]


def test_switch_method_sends_controls_then_the_run(page, monkeypatch):
    _, values = page
    session = Session()
    args = list(values.values())
    list(quick.on_first_visit_run(session, *args))
    names = handlers.MAIN_IN[1:]
    switched = dict(zip(names, args), method="random")
    (only,) = _steps(quick.on_switch_method(session, *switched.values()), quick.SWITCH_OUT)  # the demo: one update
    assert only["grp:random"].visible and not only["grp:lvtp"].visible  # the method's controls
    assert "analytic count for this run" in only["readout"] and Path(only["token_map"]).is_file()
    assert session.analysis.trace.plan_layers == tuple(only["layers"].value)
    assert session.plan.method.name == "random"
    # A big model (over ESTIMATE_FIRST_GMACS): controls and the live estimate first, then the run.
    monkeypatch.setattr(quick, "ESTIMATE_FIRST_GMACS", 0.0)
    first, second = _steps(quick.on_switch_method(session, *dict(switched, method="lvtp").values()), quick.SWITCH_OUT)
    assert "estimate" in first["readout"] and first["grp:lvtp"].visible and "token_map" not in first
    assert "analytic count for this run" in second["readout"] and session.plan.method.name == "lvtp"


def test_gallery_sends_small_thumbnails(page, tmp_path):
    """The example gallery shows JPEG thumbnails (longest side 192 px), not the example PNGs;
    a file that cannot be read is shown as it is."""
    from PIL import Image

    from prune_viz.ui.files import thumbnail

    c, _ = page
    shown = [Path(item["image"]["path"]) for item in c["gallery"].value]
    assert shown and all(p.suffix == ".jpg" and p.stat().st_size < 60_000 for p in shown)
    with Image.open(shown[0]) as im:
        assert max(im.size) == 192
    assert thumbnail(tmp_path / "missing.png") == str(tmp_path / "missing.png")


def test_switch_to_a_method_that_cannot_run_turns_the_dropdown_back(page):
    """A method that needs auxiliary heads, chosen on a backbone without them: a warning with
    the reason, the dropdown back to the method in use, and no run."""
    from prune_viz.methods import METHODS

    aux = [name for name, spec in METHODS.items() if spec.needs_aux]
    if not aux:
        pytest.skip("no registered method needs auxiliary heads")
    _, values = page
    session = Session()
    session.choose_method("random")
    switched = dict(values, backbone="timm:vit_tiny_patch16_224", method=aux[0])
    with pytest.warns(UserWarning, match="auxiliary heads"):
        steps = _steps(quick.on_switch_method(session, *switched.values()), quick.SWITCH_OUT)
    assert len(steps) == 1 and steps[0]["method"].value == "random" and session.analysis is None


def test_a_generator_event_keeps_the_error_boundary(caplog):
    """Each step of a one-event handler: values packed by name (the rest skipped), our message
    for a UserError, "internal error" (logged under the handler's name) for a bug."""
    import gradio as gr

    from prune_viz.errors import UserError

    @quick.steps(["a", "b"])
    def handler(fail: Exception | None):
        yield {"a": 1}
        if fail is not None:
            raise fail
        yield {"b": 2}

    assert list(handler(None)) == [(1, quick.SKIP), (quick.SKIP, 2)]
    told = handler(UserError("that file is not an image"))
    assert next(told) == (1, quick.SKIP)
    with pytest.raises(gr.Error, match="that file is not an image"):
        next(told)
    broken = handler(ZeroDivisionError("bug"))
    next(broken)
    with pytest.raises(gr.Error, match="internal error") as caught:
        next(broken)
    assert "bug" not in str(caught.value) and "in handler" in caplog.text
