"""Browser test of the "Inspect a set" tab (Debian's Chromium driven by Playwright, as in
test_browser.py): the bundled example set runs, and the worst ranked case opens in the main view
(the image input, the readout and every tab then show it). Skipped, with the reason, only where
Chromium or Playwright is not installed."""

import os
import re
import shutil
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
if not os.path.exists(CHROMIUM):
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)


def test_worst_case_of_a_set_opens_in_the_main_view(served, tmp_path):
    from tests import test_browser

    url, log = served
    out = test_browser.screenshot_dir(tmp_path)
    with sync_api.sync_playwright() as p:
        browser = test_browser._launch(p)
        page = browser.new_page(viewport={"width": 1600, "height": 1200})
        page.goto(url, timeout=120_000)
        test_browser.wait_for_numbers(page)
        test_browser.open_tab(page, "Inspect a set")
        page.locator("#set_run").click()
        try:
            page.locator("#set_summary").get_by_text("Ranked worst first").wait_for(timeout=240_000)
        except sync_api.TimeoutError:
            page.screenshot(path=str(out / "inspect_timeout.png"), full_page=True)
            pytest.fail(f"the set did not finish; server log: {log.read_text(errors='replace')[-1500:]!r}")
        table = page.locator("#set_table").inner_text()
        gallery = page.locator("#set_gallery").inner_text()
        found = re.search(r"#1 (\S+\.png) ·", gallery)
        assert found, gallery
        worst = found.group(1)
        assert table.index(worst) < min(table.index(e.name) for e in (ROOT / "examples").glob("*.png")
                                        if not e.stem.endswith("_mask") and e.name != worst), table  # first row
        page.screenshot(path=str(out / "inspect_set.png"), full_page=True)
        if f"Loaded {worst}" in page.locator("body").inner_text():  # the first visit's example: show another first
            page.locator("#examples img").nth(1 if worst.startswith("dense") else 0).click()
            page.get_by_text("Loaded ").filter(has_not_text=worst).first.wait_for(timeout=120_000)
        assert f"Loaded {worst}" not in page.locator("body").inner_text()
        page.locator("#set_gallery .thumbnail-item, #set_gallery button:has(img)").first.click()
        page.get_by_text(f"Loaded {worst}").first.wait_for(timeout=120_000)
        test_browser.wait_for_numbers(page)
        # The attribution for the case now on show.
        page.locator("#attr_btn").click()
        page.locator("#attr_text").get_by_text("Pruning changed").first.wait_for(timeout=120_000)
        page.screenshot(path=str(out / "inspect_case_opened.png"), full_page=True)
        browser.close()
