"""Issue #7: the input zoo (tests/zoo.py) and the bad-parameter set, through the app as well as the CLI.

* Every image case through the upload handler, in-process: a readable file becomes an
  H x W x 3 uint8 session image and the user is told what was done to it (the zoo's KEYWORD
  in the notices); an unreadable one becomes a ``gr.Error`` naming the problem, never another
  exception. A few loaded images then go through a full analysis.
* Every mask case through the mask handler, on the zoo's MASK_IMAGE.
* A handful of cases through the HTTP API (``/analyze``), where the upload layer is real too.
* The parameter set (q1 <= 1, q2 >= 1, rate outside [0, 1) or NaN, layers that are no layers or
  out of range, k < 2, unknown method / backbone, a method the backbone cannot run) through
  ``/estimate``, ``on_estimate`` (inline "cannot run" text) and ``on_analyze`` (``gr.Error``).

The fixtures ``scene``, ``app_module`` and ``client`` are in conftest.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from prune_viz.ui.session import Session
from prune_viz.webapp import api
from prune_viz.webapp import handlers

from tests import zoo

IMAGE_CASES = sorted(name for name in zoo.ZOO if not name.startswith("mask_"))
MASK_CASES = sorted(name for name in zoo.ZOO if name.startswith("mask_"))
STRETCH = (2.0, 98.0)

# The app reads masks with the backbone's classes and palette (demo: 7 classes, synthetic.PALETTE),
# not with the zoo's MASK_ARGS (4 classes, zoo.PALETTE); cases that depend on the zoo's palette
# being *the* palette cannot be expressed through the app.
APP_CANNOT_EXPRESS = {
    "mask_rgb_ok": "the app matches colours against the backbone's palette, not zoo.PALETTE "
                   "(see test_colour_mask_in_the_backbone_palette for the app's version)",
}


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("zoo")


def _upload(app, session, path: Path) -> dict:
    return dict(zip(handlers.UPLOAD_OUT, handlers.on_upload(session, str(path), 1, 2, 3, *STRETCH)))


def _default_params(app) -> list:
    return [c.default for c in handlers.CONTROLS]


def _params_with(app, method: str, values: dict) -> list:
    """The UI's parameter controls at their defaults, with ``values`` set on ``method``'s controls."""
    params = _default_params(app)
    for i, control in enumerate(handlers.CONTROLS):
        if control.method == method and control.name in values:
            params[i] = values[control.name]
    return params


# ----------------------------------------------------------------------------- images, in-process


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_image_zoo_through_upload(app_module, zoo_dir, case):
    import gradio as gr

    app = app_module
    path = zoo.ZOO[case](zoo_dir)
    session = Session()
    if zoo.EXPECT[case] == "ok":
        out = _upload(app, session, path)
        image = session.image
        assert isinstance(image, np.ndarray) and image.dtype == np.uint8
        assert image.ndim == 3 and image.shape[2] == 3 and min(image.shape[:2]) >= 1
        h, w = image.shape[:2]
        notices = out["notices"]
        assert f"Loaded **{path.name}**: {w} x {h} px" in notices  # what the user is told is what is held
        assert zoo.KEYWORD[case] in notices
        assert session.image_path == str(path)
    else:
        with pytest.raises(gr.Error) as err:  # any other exception type fails the test
            _upload(app, session, path)
        msg = str(err.value.message)
        assert zoo.KEYWORD[case] in msg and "Traceback" not in msg
        assert session.image is None


@pytest.mark.parametrize("case", ["png16_rgb", "tiff4_u16_last", "png_9000x50"])
def test_loaded_zoo_image_runs_through_an_analysis(app_module, zoo_dir, case):
    """An odd upload is not only loaded: the run and every view work from it."""
    import cv2

    app = app_module
    session = Session()
    _upload(app, session, zoo.ZOO[case](zoo_dir))
    h, w = session.image.shape[:2]
    out = dict(zip(handlers.VIEW_OUT, handlers.on_analyze(session, "demo", 1024, "random", [6], 0, 6, *_default_params(app))))
    assert "GMACs" in out["readout"]
    assert session.analysis is not None and session.analysis.report["layers_pruned"] == [6]
    import gradio as gr

    for tab in handlers.LAZY_TABS:  # hidden tabs are drawn when opened
        out.update({k: v for k, v in zip(handlers.TAB_OUT, handlers.on_tab(
            session, "demo", 1024, 6, gr.SelectData(None, {"value": tab, "index": 0}))) if not isinstance(v, type(gr.skip()))})
    assert out["chart_macs"] is not None
    before, after = out["seg_slider"]
    for png in (before, after):
        seg = cv2.imread(png)
        assert seg is not None and seg.ndim == 3
        assert abs(seg.shape[1] / seg.shape[0] - w / h) <= 0.05 * w / h  # the image's aspect, not squashed
    assert cv2.imread(out["token_map"]) is not None


# ----------------------------------------------------------------------------- masks, in-process


def _mask_params():
    out = []
    for case in MASK_CASES:
        if case in APP_CANNOT_EXPRESS:
            out.append(pytest.param(case, id=f"{case}-skipped-app-uses-backbone-palette",
                                    marks=pytest.mark.skip(reason=APP_CANNOT_EXPRESS[case])))
        else:
            out.append(pytest.param(case, id=case))
    return out


@pytest.fixture()
def mask_session(app_module, zoo_dir):
    session = Session()
    _upload(app_module, session, zoo.ZOO[zoo.MASK_IMAGE](zoo_dir))
    assert session.image.shape[:2] == zoo.MASK_SHAPE
    return session


@pytest.mark.parametrize("case", _mask_params())
def test_mask_zoo_through_mask_handler(app_module, zoo_dir, mask_session, case):
    app = app_module
    path = zoo.ZOO[case](zoo_dir)
    if zoo.EXPECT[case] == "ok":
        session, note, _ = handlers.on_mask(mask_session, str(path), "demo", 1024)
        assert session.gt is not None and session.gt.shape == session.image.shape[:2]
        assert f"Ground truth: **{path.name}**" in note and zoo.KEYWORD[case] in note
    else:  # refused: the file leaves the slot, the reason stays in the mask notice
        session, note, slot = handlers.on_mask(mask_session, str(path), "demo", 1024)
        assert zoo.KEYWORD[case] in note and "refused" in note and "Traceback" not in note
        assert slot is None and mask_session.gt is None


def test_colour_mask_in_the_backbone_palette(app_module, zoo_dir, mask_session):
    """mask_rgb_ok as the app can express it: the zoo's labels coloured with the demo palette."""
    from prune_viz.data.synthetic import PALETTE

    ids = zoo._labels()
    ids[ids == 255] = 0
    path = zoo_dir / "mask_rgb_demo_palette.png"
    path.write_bytes(zoo.png_bytes(PALETTE[ids]))
    session, _, _ = handlers.on_mask(mask_session, str(path), "demo", 1024)
    assert np.array_equal(session.gt, ids)


# ----------------------------------------------------------------------------- images, over HTTP

API_CASES = ["tiff4_u16_last", "text_as_png", "png_bomb_header", "jpeg_truncated", "empty"]


def _analyze(client, image: Path, mask: Path | None = None, layers: str = "6"):
    from gradio_client import handle_file

    return client.predict(handle_file(str(image)), "demo", "random", layers, "", 0,
                          handle_file(str(mask)) if mask is not None else None, api_name="/analyze")


@pytest.mark.parametrize("case", API_CASES)
def test_image_zoo_through_api(client, zoo_dir, case):
    from gradio_client.exceptions import AppError

    path = zoo.ZOO[case](zoo_dir)
    if zoo.EXPECT[case] == "ok":
        report = _analyze(client, path)
        assert report["method"] == "random" and report["layers_pruned"] == [6]
        assert 0 < report["macs"]["pruned"] < report["macs"]["baseline"]
    else:
        with pytest.raises(AppError) as err:
            _analyze(client, path)
        msg = str(err.value)
        assert zoo.KEYWORD[case] in msg and "Traceback" not in msg


def test_api_report_tells_what_was_done_to_the_input(client, zoo_dir):
    report = _analyze(client, zoo.ZOO["tiff4_u16_last"](zoo_dir))
    assert any(zoo.KEYWORD["tiff4_u16_last"] in n for n in report["input_notices"])


def test_mask_of_the_wrong_size_through_api(client, zoo_dir):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as err:
        _analyze(client, zoo.ZOO[zoo.MASK_IMAGE](zoo_dir), zoo.ZOO["mask_wrong_size"](zoo_dir))
    assert zoo.KEYWORD["mask_wrong_size"] in str(err.value) and "Traceback" not in str(err.value)


# ----------------------------------------------------------------------------- the parameter set

TIMM = "timm:vit_tiny_patch16_224"

# id: (backbone, method, layers as the API gets them, layers as the UI's checkboxes give them,
#      params, substring of the message). Messages come from params.py, engine.validate_plan and
#      the methods' params dataclasses.
PARAM_SET = {
    "lvtp-q1=1": ("demo", "lvtp", "", None, {"q1": 1.0}, "q1 must be > 1"),
    "lvtp-q1=0.5": ("demo", "lvtp", "", None, {"q1": 0.5}, "q1 must be > 1"),
    "lvtp-q2=1": ("demo", "lvtp", "", None, {"q2": 1.0}, "q2 must be in (0, 1)"),
    "lvtp-q2=1.5": ("demo", "lvtp", "", None, {"q2": 1.5}, "q2 must be in (0, 1)"),
    "lvtp-rate=1": ("demo", "lvtp", "", None, {"rate": 1.0}, "rate must be in [0, 1)"),
    "lvtp-rate=-0.1": ("demo", "lvtp", "", None, {"rate": -0.1}, "rate must be >= 0"),
    "lvtp-rate=nan": ("demo", "lvtp", "", None, {"rate": float("nan")}, "rate must be a finite number"),
    "random-rate=1": ("demo", "random", "", None, {"rate": 1.0}, "rate must be in [0, 1)"),
    "random-rate=nan": ("demo", "random", "", None, {"rate": float("nan")}, "rate must be a finite number"),
    "lvtp-k=1": ("demo", "lvtp", "", None, {"k": 1}, "k must be >= 2"),
    "layers=,": ("demo", "random", ",", [], {}, None),  # API: "layers must be integers"; UI: nothing ticked
    "layers=0": ("demo", "random", "0", [0], {}, "pruning layer 0 is out of range"),
    "layers=12": ("demo", "random", "12", [12], {}, "pruning layer 12 is out of range"),
    "layers=13": ("demo", "random", "13", [13], {}, "pruning layer 13 is out of range"),
    "layers=-1": ("demo", "random", "-1", [-1], {}, "pruning layer -1 is out of range"),
    "layers=abc": ("demo", "random", "abc", ["abc"], {}, "layers must be integers"),
    "method=nope": ("demo", "nope", "", None, {}, "unknown method 'nope'"),
    "backbone=resnet": ("resnet", "random", "", None, {}, "unknown backbone 'resnet'"),
    "dtop-on-timm": (TIMM, "dtop", "", None, {}, "dtop cannot run on timm:vit_tiny_patch16_224: it needs auxiliary heads"),
}
API_NEEDLE = {"layers=,": "layers must be integers like 3,6,8, got ','"}
UI_NEEDLE = {"layers=,": "choose at least one pruning layer"}
IDS = list(PARAM_SET)


def _needle(case: str, override: dict) -> str:
    return override.get(case) or PARAM_SET[case][5]


@pytest.mark.parametrize("case", IDS)
def test_parameter_set_through_api(client, scene, case):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    backbone, method, layers, _, values, _ = PARAM_SET[case]
    params = json.dumps(values)  # a NaN goes as the NaN literal, which the server's json.loads reads
    with pytest.raises(AppError) as err:
        client.predict(handle_file(str(scene / "scene.png")), backbone, method, layers, params, 0, api_name="/estimate")
    msg = str(err.value)
    assert _needle(case, API_NEEDLE) in msg and "Traceback" not in msg


@pytest.fixture(scope="module")
def loaded_session(app_module, scene):
    session = Session()
    _upload(app_module, session, scene / "scene.png")
    return session


def _ui_args(app, case: str) -> list:
    backbone, method, _, ui_layers, values, _ = PARAM_SET[case]
    return [backbone, 1024, method, [3] if ui_layers is None else ui_layers, 0, 3, *_params_with(app, method, values)]


@pytest.mark.parametrize("case", IDS)
def test_parameter_set_through_live_estimate(app_module, loaded_session, case):
    text = handlers.on_estimate(loaded_session, *_ui_args(app_module, case))
    assert text.startswith("**These settings cannot run:**")
    assert _needle(case, UI_NEEDLE) in text and "Traceback" not in text


@pytest.mark.parametrize("case", IDS)
def test_parameter_set_through_analyze_handler(app_module, loaded_session, case):
    import gradio as gr

    runs = loaded_session.runs
    with pytest.raises(gr.Error) as err:
        handlers.on_analyze(loaded_session, *_ui_args(app_module, case))
    msg = str(err.value.message)
    assert _needle(case, UI_NEEDLE) in msg and "Traceback" not in msg
    assert loaded_session.runs == runs  # refused before anything ran


def test_a_server_path_sent_instead_of_a_file_is_not_opened(client, app_module):
    """A raw request naming a file on the server (instead of uploading one) gets no result from
    it: Gradio refuses it, and behind Gradio the handlers open only files in its upload folder.
    (gradio_client would upload a local path itself, so the request is made by hand here.)"""
    import gradio as gr
    import httpx

    real_image = Path(handlers.ROOT) / "examples" / "mixed.png"  # a valid image the server can read
    for path in (str(real_image), "/etc/passwd"):
        data = [{"path": path, "meta": {"_type": "gradio.FileData"}}, "demo", "random", "6", "", 0, None]
        event = httpx.post(client.src.rstrip("/") + "/gradio_api/call/analyze", json={"data": data}).json()["event_id"]
        with httpx.stream("GET", client.src.rstrip("/") + f"/gradio_api/call/analyze/{event}", timeout=60) as stream:
            body = "".join(stream.iter_text())
        assert "event: error" in body and "macs" not in body
        with pytest.raises(gr.Error, match="must be uploaded"):  # the handlers' own check
            api.api_analyze(path, "demo", "random", "6", "", 0)
