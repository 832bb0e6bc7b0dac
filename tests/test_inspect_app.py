"""The "Inspect a set" tab in-process: a zip set runs, its worst case opens in the main view,
and the attribution answers for the image on show (handlers called as Gradio calls them)."""

import zipfile

import cv2
import gradio as gr

from prune_viz.data.synthetic import make_scene


def _zip(tmp_path, n=3):
    path = tmp_path / "mine.zip"
    with zipfile.ZipFile(path, "w") as z:
        for i in range(n):
            image, labels = make_scene(40 + i, 128, "mixed")
            z.writestr(f"s{i}.png", cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes())
            if i == 0:
                z.writestr(f"s{i}_mask.png", cv2.imencode(".png", labels)[1].tobytes())
        z.writestr("readme.txt", "hello")
    return path


def test_set_tab_runs_opens_the_worst_case_and_attributes(app_module, tmp_path):
    from prune_viz.ui.session import Session
    from prune_viz.webapp import handlers, inspect_tab

    params = [c.default for c in handlers.CONTROLS]
    out = dict(zip(inspect_tab.RUN_OUT, inspect_tab.on_run_set(
        None, "examples", str(_zip(tmp_path)), "demo", 1024, "lvtp", [6], 0, *params, progress=lambda *a, **k: None)))
    run = out["set_state"]
    table = out["set_table"]
    assert [r[0] for r in table[:3]] == [1, 2, 3] and "not an image" in table[3][-1]
    assert [r[3] for r in table[:3]] == sorted(r[3] for r in table[:3])
    assert out["set_gallery"][0][1].startswith("#1 ") and zipfile.is_zipfile(out["set_report"])
    worst = table[0][1]
    session = Session()
    opened = dict(zip(handlers.EXAMPLE_OUT, inspect_tab.on_open_case(session, run, "demo", 1024,
                                                                     gr.SelectData(None, {"value": None, "index": 0}))))
    assert f"Loaded **{worst}**" in opened["notices"] and (session.gt is not None) == (worst == "s0.png")
    handlers.on_analyze(session, "demo", 1024, "lvtp", [6], 0, 6, *params)
    assert session.analysis is not None
    attr = dict(zip(inspect_tab.ATTR_OUT, inspect_tab.on_attribute(session, "demo", 1024)))
    assert "changed the class of" in attr["attr_text"] or "changed no pixel" in attr["attr_text"]
    assert attr["attr_map"].endswith(".png")


def test_set_caps_are_enforced(app_module, tmp_path, monkeypatch):
    import pytest

    from prune_viz.errors import UserError
    from prune_viz.ui import set_view

    monkeypatch.setattr(set_view, "MAX_SET_UPLOAD_BYTES", 100)
    with pytest.raises(UserError, match="at most"):
        set_view.set_source(None, str(_zip(tmp_path, 1)), tmp_path)
    monkeypatch.setattr(set_view, "MAX_SET_UPLOAD_BYTES", 2**30)
    monkeypatch.setattr(set_view, "MAX_SET_IMAGES", 1)
    with pytest.raises(UserError, match="at most 1"):
        set_view.run_set(None, None, _zip(tmp_path, 2))


def test_old_report_folders_are_removed(tmp_path):
    import os
    import time

    from prune_viz.ui import set_view

    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir(), new.mkdir()
    (old / "inspect.csv").write_text("x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    set_view._clean_old_runs(tmp_path)
    assert not old.exists() and new.exists()
