"""The Gradio app, driven in-process through gradio_client: every named endpoint, user errors
that must come back as our message (never a traceback), and the non-UI logic behind the views.

The demo backbone uses ``assets/demo_segmenter.safetensors`` when it exists, otherwise a tiny
model trained for one step here (same architecture; the numbers are meaningless, the plumbing
is not).
The ``scene``, ``app_module`` and ``client`` fixtures live in conftest.py (shared with
test_app_inputs.py).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from prune_viz.ui.session import Session
from prune_viz.webapp import handlers


def _call(client, *args, api_name):
    from gradio_client import handle_file

    args = [handle_file(str(a)) if isinstance(a, Path) else a for a in args]
    return client.predict(*args, api_name=api_name)


def test_endpoints_are_named(client):
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/analyze", "/estimate", "/compare", "/export"} <= names


def test_analyze_reports_macs_and_metrics(client, scene):
    report = _call(client, scene / "scene.png", "demo", "lvtp", "6", '{"rate": 0.5}', 0, scene / "scene_mask.png",
                   api_name="/analyze")
    assert report["method"] == "lvtp" and report["layers_pruned"] == [6]
    assert report["params"]["rate"] == 0.5
    macs = report["macs"]
    assert 0 < macs["pruned"] <= macs["baseline"] and "1 multiply-add = 1 MAC" in macs["convention"]
    assert len(report["layers"]) == 12 and report["layers"][6]["tokens"] <= report["layers"][5]["tokens"]
    assert 0.0 <= report["metrics"]["agreement_miou"] <= 1.0
    assert report["metrics"]["miou"] is not None  # the mask was used


def test_estimate_is_the_live_readout(client, scene):
    est = _call(client, scene / "scene.png", "demo", "random", "4", '{"rate": 0.5}', 1, api_name="/estimate")
    assert est["exact"] is True and est["flops"] == 2 * est["macs"]
    assert est["tokens_per_block"][4] == est["tokens_total"] // 2
    assert 0 < est["saved_pct"] < 100


def test_compare_at_a_matched_budget(client, scene):
    out = _call(client, scene / "scene.png", "demo", "random,evit", "", 20, 0, api_name="/compare")
    assert [row[0] for row in out["rows"]] == ["random", "evit"]
    saved = out["columns"].index("% MACs saved")
    assert abs(float(out["rows"][0][saved]) - 20.0) < 3.0  # random: no decision arithmetic, estimate = run
    assert set(out["reports"]) == {"random", "evit"}


def test_export_zip_reproduces_with_the_cli(client, scene):
    from prune_viz.cli import build_parser

    path = _call(client, scene / "scene.png", "demo", "lvtp", "6", '{"q1": 2.0}', 3, scene / "scene_mask.png",
                 api_name="/export")
    with zipfile.ZipFile(path) as z:
        names = {Path(n).name for n in z.namelist()}
        assert {"report.json", "command.txt", "input.png", "mask.png", "seg_before.png", "seg_after.png",
                "token_map_L6.png", "token_depth.png", "change_map.png", "entropy_L6.png",
                "figure.png", "figure.svg", "figure.pdf"} <= names
        report = json.loads(z.read("prune_viz_run/report.json"))
        command = z.read("prune_viz_run/command.txt").decode()
    line = next(x for x in command.splitlines() if x.startswith("python -m prune_viz analyze"))
    args = build_parser().parse_args(line.split()[3:])
    assert (args.method, args.layers, args.q1, args.seed, str(args.mask)) == ("lvtp", "6", 2.0, 3, "mask.png")
    assert report["params"]["q1"] == 2.0


def test_bad_image_gives_our_message(client, tmp_path):
    from gradio_client.exceptions import AppError

    fake = tmp_path / "photo.png"
    fake.write_text("this is not a picture")
    with pytest.raises(AppError) as err:
        _call(client, fake, "demo", "lvtp", "", "", 0, None, api_name="/analyze")
    msg = str(err.value)
    assert "not an image we can read" in msg and "Traceback" not in msg


@pytest.mark.parametrize(
    ("backbone", "method", "params", "expected"),
    [
        ("demo", "lvtp", '{"q1": 0.5}', "q1 must be > 1"),
        ("demo", "lvtp", '{"speed": 9}', "lvtp has no parameter speed"),
        ("demo", "lvtp", "{rate: 0.5", "params must be a JSON object"),
        ("sam_vit_b", "lvtp", "", "PRUNE_VIZ_CHECKPOINTS"),
    ],
)
def test_user_errors_are_clear(client, scene, backbone, method, params, expected, monkeypatch, tmp_path):
    from gradio_client.exceptions import AppError

    monkeypatch.setenv("PRUNE_VIZ_CHECKPOINTS", str(tmp_path))  # no SAM weights there
    with pytest.raises(AppError) as err:
        _call(client, scene / "scene.png", backbone, method, "", params, 0, api_name="/estimate")
    assert expected in str(err.value)


def test_method_unavailable_on_backbone(client, scene):
    """A method that needs auxiliary heads, on a backbone without them: a clear reason."""
    from gradio_client.exceptions import AppError
    from prune_viz.methods import METHODS

    aux = [name for name, spec in METHODS.items() if spec.needs_aux]
    if not aux:
        pytest.skip("no registered method needs auxiliary heads")
    with pytest.raises(AppError) as err:
        _call(client, scene / "scene.png", "timm:vit_tiny_patch16_224", aux[0], "", "", 0, api_name="/estimate")
    assert "auxiliary heads" in str(err.value) and aux[0] in str(err.value)


def test_ui_handlers_render_every_view(app_module, scene, monkeypatch):
    """The handlers behind the page (what bench/bench_app.py times), in-process."""
    from prune_viz.ui import session as session_mod

    monkeypatch.setattr(session_mod, "TIMING_BUDGET_MS", 1e9)  # a loaded test machine must not skip the timing
    session = Session()
    first = dict(zip(handlers.EXAMPLE_OUT, handlers.on_first_visit(session, "demo", 1024)))
    assert first["state"].image is not None and first["state"].gt is not None
    params = [c.default for c in handlers.CONTROLS]
    out = dict(zip(handlers.VIEW_OUT, handlers.on_analyze(session, "demo", 1024, "lvtp", [3, 6], 0, 6, *params)))
    token_map = cv2.imread(out["token_map"])  # maps go out as PNG files
    assert token_map.shape == (512, 512, 3) and "GMACs" in out["readout"] and Path(out["depth"]).is_file()
    # Hidden tabs are drawn when opened (and emptied meanwhile, never left showing an older run).
    assert out["img_entropy"] is None and out["seg_slider"] is None and out["chart_macs"] is None
    import gradio as gr

    def opened(tab):
        return dict(zip(handlers.TAB_OUT, handlers.on_tab(session, "demo", 1024, 6, gr.SelectData(None, {"value": tab, "index": 0}))))

    why = opened(handlers.WHY_TAB)
    assert Path(why["img_entropy"]).is_file() and Path(why["img_edges"]).is_file()
    assert why["img_exits"] is None and why["tab_entropy"].visible and not why["tab_exits"].visible
    assert len(opened(handlers.SEG_TAB)["seg_slider"]) == 2 and opened(handlers.MACS_TAB)["chart_macs"] is not None
    again = dict(zip(handlers.TAB_OUT, handlers.on_tab(session, "demo", 1024, 6, gr.SelectData(None, {"value": handlers.WHY_TAB, "index": 1}))))
    assert all(isinstance(v, type(gr.skip())) for v in again.values())  # drawn already: nothing sent
    rerun = dict(zip(handlers.VIEW_OUT, handlers.on_analyze(session, "demo", 1024, "lvtp", [3, 6], 0, 6, *params)))
    assert Path(rerun["img_entropy"]).is_file() and rerun["seg_slider"] is None  # the open tab is drawn with the run
    assert any(row[1] == "timing…" for row in out["metrics"])  # times come after the views, from on_timing
    timed = {row[0]: row for row in handlers.on_timing(session, "demo", 1024)}
    assert "Wall time, unpruned (measured)" in timed, timed.get("Wall time (measured)")
    both = timed["Wall time, unpruned (measured)"], timed["Wall time, pruned (measured)"]
    assert all(row[1].endswith("]") and " ms [" in row[1] for row in both), both  # median [IQR]
    assert "timed in this request" in both[0][2] and "median of 3" in both[0][2]
    live = handlers.on_estimate(session, "demo", 1024, "lvtp", [3, 6], 0, 6, *params)
    assert "estimate" in live and "extrapolated" in live  # two pruning layers: not exact
    # A non-pruning layer: tokens removed at layer 3 show as gone, nothing is "pruned here".
    grid = session.analysis.trace.status_at(4)
    assert not (grid == 2).any() and (grid == -1).sum() == (session.analysis.trace.steps[0].status_grid == 2).sum()
    bad = handlers.on_estimate(session, "demo", 1024, "lvtp", [], 0, 6, *params)
    assert "cannot run" in bad and "at least one pruning layer" in bad


def test_param_controls_cover_every_method_field():
    import dataclasses

    from prune_viz.methods import METHODS
    from prune_viz.ui.controls import param_controls, values_for

    controls = {(c.method, c.name): c for c in param_controls()}
    for name, spec in METHODS.items():
        for f in dataclasses.fields(spec.params_cls):
            assert (name, f.name) in controls
    if "lvtp" in METHODS:
        assert controls[("lvtp", "entropy")].kind == "choice" and controls[("lvtp", "rate")].kind == "slider"
        values = values_for("lvtp", list(controls.values()), [c.default for c in controls.values()])
        assert values["k"] == 8 and isinstance(values["k"], int)


def test_sam_prompts_answered_before_and_after_pruning():
    """Clicks become prompts in original pixels; the same prompt is answered from the unpruned and
    the pruned image embedding (a small random-weight SAM ViT-B at 256 px)."""
    from prune_viz.backbones import facts_of
    from prune_viz.backbones.sam import build_sam
    from prune_viz.params import make_plan
    from prune_viz.ui.choices import layer_choices
    from prune_viz.ui.prompts import add_click, sam_predict

    bb = build_sam("sam_vit_b", img_size=256, random_weights=True, points_per_side=2)
    rng = np.random.default_rng(0)
    session = Session(image=(rng.random((200, 300, 3)) * 255).astype(np.uint8))
    plan = make_plan(bb, "random", "6", 0, {"rate": 0.5})
    session.run(bb, ("sam_vit_b", 256), plan)
    labels = [label for label, _ in layer_choices(facts_of(bb))]
    assert labels[:3] == ["1", "2", "3 (global)"] and "6 (global)" in labels and len(labels) == 11
    assert add_click(session, (150, 100), "foreground point") == "1 point(s) set."
    add_click(session, (10, 10), "box (two clicks)")
    add_click(session, (120, 90), "box (two clicks)")
    assert session.box == (10.0, 10.0, 120.0, 90.0)
    with pytest.raises(ValueError, match="at 1024 px first"):
        sam_predict(session, bb, ("sam_vit_b", 1024))  # the analysis was made at 256 px
    before, after, text = sam_predict(session, bb, ("sam_vit_b", 256))
    assert before.shape == after.shape == (200, 300, 3) and "IoU between the two masks" in text


def test_multiband_upload_offers_band_choice(app_module, tmp_path):
    """A 5-band 16-bit GeoTIFF-like file: three band numbers appear; choosing others re-reads it."""
    import tifffile

    app = app_module
    rng = np.random.default_rng(1)
    bands = (rng.random((64, 80, 5)) * 4000).astype(np.uint16)
    bands[..., 4] = 0  # a dark band: choosing it must change the picture
    path = tmp_path / "five.tif"
    tifffile.imwrite(path, bands, photometric="minisblack", planarconfig="contig")
    session = Session()
    out = dict(zip(handlers.UPLOAD_OUT, handlers.on_upload(session, str(path), 1, 2, 3, 2.0, 98.0)))
    assert session.bands == 5 and out["band_row"].visible is True and "5 band(s)" in out["notices"]
    first = session.image.copy()
    handlers.on_bands(session, 5, 2, 3, 2.0, 98.0)
    assert session.image.shape == first.shape and (session.image[..., 0] == 0).all() and not (first[..., 0] == 0).all()


def test_page_shows_the_first_example_in_a_browser(client):
    """A first-time visitor sees an example analysed: readout with units, token map caption."""
    import shutil

    pw = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed")
    args = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"]
    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=args)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(client.src, timeout=60_000)
            page.get_by_text("go on into block").first.wait_for(timeout=120_000)
            readout = page.locator("#readout").inner_text()
            assert "GMACs" in readout and "1 multiply-add = 1 MAC" in readout
            assert page.get_by_text("What am I looking at?").count() == 1
        finally:
            browser.close()
