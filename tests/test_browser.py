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


def test_upload_run_switch_tabs_read_a_number(app_url, tmp_path):
    out = Path(os.environ.get("PRUNE_VIZ_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    args = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        page = browser.new_page(viewport={"width": 2000, "height": 1300})
        page.goto(app_url, timeout=120_000)
        # First the example a first visit shows, as a person would; then a scene uploaded through
        # the file input (our own loader reads it server-side).
        page.locator("#readout").get_by_text("analytic count for this run").wait_for(timeout=120_000)
        page.locator("input[type=file]").first.set_input_files(str(ROOT / "examples" / "parking.png"))
        try:  # the upload's own output resets the readout, so this waits for the new image's numbers
            page.get_by_text("Loaded parking.png").first.wait_for(timeout=120_000)
            page.locator("#readout").get_by_text("analytic count for this run").wait_for(timeout=120_000)
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
