"""One browser test: the real app in headless Chromium (Debian's, driven by Playwright).

Starts `python app.py` on a free loopback port, uploads an example scene, waits for the
analysis, reads the MAC readout, visits every tab and takes a screenshot of each. Screenshots
go to a temporary folder, or to ``$PRUNE_VIZ_SCREENSHOTS`` (``docs/screenshots`` when the
README's screenshots are refreshed). Skipped, with the reason, only where Chromium or Playwright
is not installed (.ci/run installs both).
"""

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from bench import bench_load as load

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TABS = ["Tokens", "Why? · method signals", "Segmentation", "Metrics", "MACs per layer", "Compare", "SAM prompts", "Export"]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
if not os.path.exists(CHROMIUM):
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)


SERVER_LOG: list[Path] = []  # the running server's log, for failure messages


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """``python app.py`` as a user starts it (shipped demo model), on a free local port."""
    SERVER_LOG[:] = [tmp_path_factory.mktemp("browser") / "server.log"]
    proc, url = load.start_server(queue_size=32, workers=2, log=SERVER_LOG[0])
    yield url
    load.stop_server(proc)


def _launch(playwright):
    """Debian's Chromium, headless, without the network features a test machine lacks."""
    args = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"]
    return playwright.chromium.launch(executable_path=CHROMIUM, args=args)


def screenshot_dir(tmp_path: Path) -> Path:
    """Where a browser test's screenshots go: ``$PRUNE_VIZ_SCREENSHOTS`` or the test's tmp folder."""
    out = Path(os.environ.get("PRUNE_VIZ_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def wait_for_numbers(page, timeout: int = 120_000) -> None:
    """Until the readout shows a finished run's numbers (its analytic-count line)."""
    page.locator("#readout").get_by_text("analytic count for this run").wait_for(timeout=timeout)


def test_upload_run_switch_tabs_read_a_number(app_url, tmp_path):
    out = screenshot_dir(tmp_path)
    with sync_api.sync_playwright() as p:
        browser = _launch(p)
        page = browser.new_page(viewport={"width": 2000, "height": 1300})
        page.goto(app_url, timeout=120_000)
        # First the example a first visit shows, as a person would; then a scene uploaded through
        # the file input (our own loader reads it server-side).
        wait_for_numbers(page)
        page.locator("input[type=file]").first.set_input_files(str(ROOT / "examples" / "parking.png"))
        try:  # the upload's own output resets the readout, so this waits for the new image's numbers
            page.get_by_text("Loaded parking.png").first.wait_for(timeout=120_000)
            wait_for_numbers(page)
        except sync_api.TimeoutError:
            page.screenshot(path=str(out / "timeout.png"), full_page=True)
            pytest.fail(f"the upload was not answered; page text: {page.locator('body').inner_text()[:1500]!r}; "
                        f"server log: {SERVER_LOG[0].read_text(errors='replace')[-1500:]!r}; screenshot {out / 'timeout.png'}")
        readout = page.locator("#readout").inner_text()
        gmacs = [float(v) for v in re.findall(r"([0-9]+(?:\.[0-9]+)?) GMACs", readout)]
        assert gmacs and 0 < gmacs[0] < 10.5, readout  # pruned total below the unpruned 10.46 GMACs
        # "Run again" updates the views on show; a hidden tab's views are drawn when it is opened.
        before = page.locator("#token_map img").get_attribute("src")
        page.get_by_role("button", name="Run again").click()
        page.wait_for_function("(old) => { const im = document.querySelector('#token_map img');"
                               " return im && im.src !== old && im.complete && im.naturalWidth > 0; }", arg=before,
                               timeout=120_000)
        page.get_by_role("tab", name="Why? · method signals").first.click()
        page.wait_for_function("() => { const im = document.querySelector('#img_entropy img');"
                               " return im && im.complete && im.naturalWidth > 0; }", timeout=120_000)
        for tab in TABS:
            page.get_by_role("tab", name=tab).first.click()
            time.sleep(1.5)
            name = re.sub(r"[^a-z0-9]+", "_", tab.lower()).strip("_")
            page.screenshot(path=str(out / f"{name}.png"), full_page=True)
            assert (out / f"{name}.png").stat().st_size > 10_000
        browser.close()


def _png_at(page, selector: str):
    """The PNG an image component shows, decoded (exact pixels, not a screenshot)."""
    import io

    import numpy as np
    from PIL import Image

    src = page.locator(f"{selector} img").first.get_attribute("src")
    body = page.request.get(src).body()
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))


def _wait_for_change(page, selector: str, before: str, timeout_s: float = 120.0) -> str:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        now = page.locator(selector).first.inner_text()
        if now != before and "running" not in now.lower():
            return now
        time.sleep(0.5)
    pytest.fail(f"{selector} did not change from {before[:200]!r}; server log: {SERVER_LOG[0].read_text(errors='replace')[-1500:]!r}")


def open_tab(page, name: str) -> None:
    """Click a view tab, through Gradio's "More tabs" menu when the tab bar overflows (1366 px)."""
    tab = page.get_by_role("tab", name=name).first
    if tab.count() and tab.is_visible():
        tab.click()
        return
    page.get_by_label("More tabs").first.click()
    page.locator(".overflow-dropdown button", has_text=name).first.click()


def _choose(page, label: str, option: str) -> None:
    page.get_by_label(label).first.click()
    page.get_by_role("option", name=option, exact=False).first.click()


def test_teaching_view_at_1366x768(app_url, tmp_path):
    """At a projector's 1366 x 768: the token map is in view, every example is visible; a status
    keeps its colour across methods (pixels read from the PNG); a clicked token shows its rule,
    forcing it to stay changes the readout; play advances the layers; MATP runs on its weights."""
    import numpy as np

    from prune_viz.methods.base import KEPT, PRUNED
    from prune_viz.viz import STATUS_COLOURS

    out = screenshot_dir(tmp_path)
    with sync_api.sync_playwright() as p:
        browser = _launch(p)
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        page.goto(app_url, timeout=120_000)
        wait_for_numbers(page)
        box = page.locator("#token_map img").bounding_box()
        assert box is not None and box["y"] + 100 < 768, box  # the first map is in view without scrolling
        gallery = page.locator("#examples").bounding_box()
        for thumb in page.locator("#examples img").all():
            b = thumb.bounding_box()
            assert b["y"] + b["height"] <= gallery["y"] + gallery["height"] + 1, (b, gallery)

        # Ask a token why (LVTP, the first example's default), then make it stay.
        readout = page.locator("#readout").inner_text()
        page.locator("#token_map img").click(position={"x": 40, "y": 40})
        page.locator("#inspector").get_by_text("Token (").wait_for(timeout=60_000)
        rule = page.locator("#inspector").inner_text()
        assert "cluster" in rule and "entropy rank" in rule, rule
        time.sleep(1)
        page.evaluate("document.querySelector('#token_map').scrollIntoView()")
        page.screenshot(path=str(out / "inspector.png"), full_page=False)
        # A pruned token is forced to stay, a kept one to go: either way the MACs change.
        page.locator("#force_keep" if "pruned at layer" in rule else "#force_prune").click()
        page.locator("#inspector").get_by_text("What if token").wait_for(timeout=120_000)
        after = _wait_for_change(page, "#readout", readout) if page.locator("#readout").inner_text() == readout else \
            page.locator("#readout").inner_text()
        assert after != readout
        time.sleep(2)  # the maps finish redrawing
        page.evaluate("document.querySelector('#token_map').scrollIntoView()")
        page.screenshot(path=str(out / "inspector_what_if.png"), full_page=False)
        page.evaluate("window.scrollTo(0, 0)")

        # One colour per status, whatever the method: flat colours without the image.
        page.get_by_label("show the image under the tokens").uncheck()
        time.sleep(2)
        colours = {}
        for method in ("lvtp", "random"):
            if method != "lvtp":
                before = page.locator("#readout").inner_text()
                _choose(page, "3 · Pruning method", method)
                _wait_for_change(page, "#readout", before)
                time.sleep(1.5)
            rgb = _png_at(page, "#token_map")
            centre = rgb[8::16, 8::16].reshape(-1, 3)  # one pixel per token (16 px tokens at 512 px)
            colours[method] = {tuple(int(v) for v in c) for c in np.unique(centre, axis=0)}
        for method, seen in colours.items():
            assert STATUS_COLOURS[PRUNED] in seen and STATUS_COLOURS[KEPT] in seen, (method, seen)
            assert seen <= set(STATUS_COLOURS.values()), (method, seen)
        page.get_by_label("show the image under the tokens").check()
        time.sleep(2)
        page.locator("#token_map img").click(position={"x": 200, "y": 200})
        page.locator("#inspector").get_by_text("by chance").wait_for(timeout=60_000)  # random's one-line rule

        # Play the layers.
        page.locator("#play_btn").click()
        page.locator("#token_caption").get_by_text("Block 3 of 12").wait_for(timeout=60_000)
        page.screenshot(path=str(out / "play.png"), full_page=False)
        page.locator("#token_caption").get_by_text("Block 12 of 12").wait_for(timeout=60_000)
        with page.expect_download(timeout=120_000) as gif:
            page.get_by_role("button", name="GIF for slides").click()
            page.locator("#gif_file a").first.click(timeout=120_000)
        gif.value.save_as(str(out / "layers.gif"))
        assert (out / "layers.gif").read_bytes()[:3] == b"GIF"

        # MATP brings its own fine-tuned weights.
        before = page.locator("#readout").inner_text()
        _choose(page, "3 · Pruning method", "matp")
        page.get_by_text("Switched the backbone to").first.wait_for(timeout=60_000)
        _wait_for_change(page, "#readout", before)
        wait_for_numbers(page)
        assert page.get_by_label("2 · Backbone").first.input_value().startswith("demo_matp")
        page.locator("#glossary").click()
        time.sleep(1)
        page.screenshot(path=str(out / "glossary_matp.png"), full_page=False)

        # The lecture composite, from the export zip.
        import zipfile

        open_tab(page, "Export")
        with page.expect_download(timeout=180_000) as zipped:
            page.get_by_role("button", name="Build zip").click()
            page.locator("#export_file a").first.click(timeout=180_000)
        zipped.value.save_as(str(tmp_path / "run.zip"))
        with zipfile.ZipFile(tmp_path / "run.zip") as z:
            (out / "lecture_figure.png").write_bytes(z.read("prune_viz_run/figure.png"))
        browser.close()
