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
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TABS = ["Tokens", "Why? · method signals", "Segmentation", "Metrics", "MACs per layer", "Compare", "SAM prompts", "Export"]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
if not os.path.exists(CHROMIUM):
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url():
    port = free_port()
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False")
    env.pop("PRUNE_VIZ_DEMO_WEIGHTS", None)  # the shipped model, as a user gets it
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stdout.read().decode(errors="replace")[-2000:])
            time.sleep(1)
    else:
        proc.kill()
        raise RuntimeError("app did not start within 180 s")
    yield url
    proc.terminate()
    proc.wait(timeout=20)


def test_upload_run_switch_tabs_read_a_number(app_url, tmp_path):
    out = Path(os.environ.get("PRUNE_VIZ_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    args = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        page = browser.new_page(viewport={"width": 2000, "height": 1300})
        page.goto(app_url, timeout=120_000)
        # Upload a scene through the file input (our own loader reads it server-side).
        page.locator("input[type=file]").first.set_input_files(str(ROOT / "examples" / "parking.png"))
        page.get_by_text("Loaded parking.png").first.wait_for(timeout=120_000)
        page.get_by_text("go on into block").first.wait_for(timeout=120_000)
        readout = page.locator("#readout").inner_text()
        gmacs = [float(v) for v in re.findall(r"([0-9]+(?:\.[0-9]+)?) GMACs", readout)]
        assert gmacs and 0 < gmacs[0] < 10.5, readout  # pruned total below the unpruned 10.46 GMACs
        for tab in TABS:
            page.get_by_role("tab", name=tab).first.click()
            time.sleep(1.5)
            name = re.sub(r"[^a-z0-9]+", "_", tab.lower()).strip("_")
            page.screenshot(path=str(out / f"{name}.png"), full_page=True)
            assert (out / f"{name}.png").stat().st_size > 10_000
        browser.close()
