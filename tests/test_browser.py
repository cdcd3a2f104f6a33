"""Tórax in a real browser: `streamlit run app.py` in a subprocess, Debian's Chromium driven by Playwright.

Uploads a phantom through the page's own file input, moves the threshold with the keyboard across the image's
probability and watches the decision flip, turns the Grad-CAM overlay on, and saves a screenshot.
Never runs `playwright install`: it uses /usr/bin/chromium, and skips when that is missing.
"""
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import pytest

from synthetic import phantom

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.browser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tiny_bundles, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed")
    pytest.importorskip("playwright.sync_api")
    port = free_port()
    env = {**os.environ, "TORAX_BUNDLES": str(tiny_bundles), "TF_CPP_MIN_LOG_LEVEL": "2"}
    log = open(tmp_path / "streamlit.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 45
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if process.poll() is not None or time.time() > deadline:
                pytest.fail("streamlit did not start:\n" + (tmp_path / "streamlit.log").read_text(errors="replace"))
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def test_upload_threshold_and_overlay_in_chromium(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=60_000)  # the first inference compiles the ensemble
    image = tmp_path / "phantom.png"
    cv2.imwrite(str(image), phantom((320, 280), pneumonia=True, seed=11))
    started = time.time()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.set_default_timeout(60_000)
            page.goto(server)  # the router's own address: it runs app.py and its st.navigation
            expect(page.get_by_role("heading", name="Diagnose")).to_be_visible()

            page.locator("input[type=file]").first.set_input_files(str(image))
            reason = page.get_by_text("Probability of PNEUMONIA")
            expect(reason).to_be_visible()
            decision = page.locator("h2").filter(has_text="PNEUMONIA").or_(page.locator("h2").filter(
                has_text="NORMAL"))
            expect(decision).to_be_visible()
            expect(page.get_by_text("As decoded · 280 × 320 px")).to_be_visible()

            slider = page.get_by_role("slider").first  # the decision threshold (the only slider so far)
            slider.focus()
            slider.press("Home")
            expect(page.get_by_text("at or above threshold 0.000")).to_be_visible()
            expect(page.locator("h2").filter(has_text="PNEUMONIA")).to_be_visible()
            slider.focus()
            slider.press("End")
            expect(page.get_by_text("below threshold 1.000")).to_be_visible()
            expect(page.locator("h2").filter(has_text="NORMAL")).to_be_visible()

            page.get_by_text("Show Grad-CAM", exact=True).click()
            expect(page.get_by_text("Grad-CAM · Ensemble · PNEUMONIA")).to_be_visible()
            expect(page.locator("[data-testid=stImage] img")).to_have_count(2)
            page.wait_for_timeout(500)
            page.screenshot(path=str(tmp_path / "diagnose.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "diagnose.png").stat().st_size > 10_000
    assert time.time() - started < 90
