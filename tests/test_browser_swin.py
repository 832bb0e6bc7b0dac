"""Browser test of the Swin demo (Debian's Chromium driven by Playwright, as in test_browser.py):
choosing ``demo_swin`` runs it, the layer choices name each block's stage, and moving the layer
slider into a later stage draws that stage's coarser token map (its caption names the stage and
its grid). Skipped, with the reason, only where Chromium or Playwright is not installed."""

import os
import re
import shutil
import time
from pathlib import Path

import pytest


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
if not os.path.exists(CHROMIUM):
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)


def _unpruned_gmacs(readout: str) -> float:
    found = re.search(r"unpruned ([0-9]+(?:\.[0-9]+)?) GMACs", readout)
    assert found, readout
    return float(found.group(1))


def _wait_for_text(page, selector: str, pattern: str, log: Path, out: Path, timeout_s: float = 120.0) -> str:
    """Wait until ``selector``'s text matches ``pattern`` (a regex); returns the text."""
    deadline = time.time() + timeout_s
    text = ""
    while time.time() < deadline:
        text = page.locator(selector).first.inner_text()
        if re.search(pattern, text) and "running" not in text.lower():
            return text
        time.sleep(0.3)
    page.screenshot(path=str(out / "swin_timeout.png"), full_page=True)
    pytest.fail(f"{selector} never matched {pattern!r}; it shows {text[:600]!r}; "
                f"server log: {log.read_text(errors='replace')[-1500:]!r}")


def _matches_within(page, selector: str, pattern: str, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        text = page.locator(selector).first.inner_text()
        if re.search(pattern, text) and "running" not in text.lower():
            return True
        time.sleep(0.3)
    return False


def _set_slider(page, label: str, value: int) -> None:
    """Move a Gradio slider as a drag would: the range input's value, then its input event
    (the live redraw) and the pointer release."""
    page.get_by_label(f"range slider for {label}").first.evaluate(
        "(el, v) => { el.value = String(v);"
        " el.dispatchEvent(new Event('input', {bubbles: true}));"
        " el.dispatchEvent(new Event('change', {bubbles: true}));"
        " el.dispatchEvent(new PointerEvent('pointerup', {bubbles: true})); }", value)


def test_swin_demo_shows_per_stage_token_maps(served, tmp_path):
    from tests import test_browser

    url, log = served
    out = test_browser.screenshot_dir(tmp_path)
    with sync_api.sync_playwright() as p:
        browser = test_browser._launch(p)
        page = browser.new_page(viewport={"width": 1600, "height": 1200})
        page.goto(url, timeout=120_000)
        test_browser.wait_for_numbers(page)
        first = page.locator("#readout").inner_text()
        vit_gmacs = _unpruned_gmacs(first)

        # Choose the Swin demo: its own run follows, with its own unpruned cost.
        page.get_by_label("2 · Backbone").first.click()
        page.get_by_role("option", name="demo_swin", exact=False).first.click()
        assert page.get_by_label("2 · Backbone").first.input_value().startswith("demo_swin")
        deadline = time.time() + 120
        readout = first
        while time.time() < deadline:
            readout = page.locator("#readout").inner_text()
            if ("analytic count for this run" in readout and "running" not in readout.lower()
                    and _unpruned_gmacs(readout) != vit_gmacs):
                break
            time.sleep(0.3)
        else:
            page.screenshot(path=str(out / "swin_timeout.png"), full_page=True)
            pytest.fail(f"no demo_swin run; readout {readout[:600]!r}; server log {log.read_text(errors='replace')[-1500:]!r}")

        # The layer choices name each block's stage (depths 2, 2, 4, 2: block 4 is stage 2's second).
        page.get_by_text("(stage 2, block 2").first.wait_for(timeout=60_000)
        info = page.get_by_text("Blocks by stage").first.inner_text()
        stages = dict((int(s), (int(a), int(b))) for s, a, b in re.findall(r"stage (\d+): (\d+)-(\d+)", info))
        assert len(stages) >= 3, info

        # The first map, at the first pruning layer's stage.
        caption = _wait_for_text(page, "#token_caption", r"of its \d+ x \d+ grid", log, out)
        grid0 = int(re.search(r"of its (\d+) x \d+ grid", caption).group(1))
        before = page.locator("#token_map img").first.get_attribute("src")

        # Into the last stage: the caption names it and its coarser grid, and the map is redrawn.
        last = max(stages)
        block = stages[last][0]
        want = rf"block {block} \(stage {last}, block 1\)"
        for _ in range(4):  # a slider moved while the run's last views are still landing can be overwritten
            _set_slider(page, "Show the tokens after block…", block)
            if _matches_within(page, "#token_caption", want, 15):
                break
        caption = _wait_for_text(page, "#token_caption", want, log, out, 15)
        grid = int(re.search(r"of its (\d+) x (\d+) grid", caption).group(1))
        assert grid < grid0 and grid0 % grid == 0, caption  # the grid halves at each stage
        assert re.search(rf"of {grid * grid} tokens of its {grid} x {grid} grid", caption), caption
        page.wait_for_function("(old) => { const im = document.querySelector('#token_map img');"
                               " return im && im.src !== old && im.complete && im.naturalWidth > 0; }", arg=before,
                               timeout=60_000)
        page.screenshot(path=str(out / "swin_last_stage.png"), full_page=True)
        browser.close()
