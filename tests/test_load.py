"""Many readers at once: one `streamlit run app.py`, several Chromium sessions uploading at the same time, then
one session uploading many images in a row while the server's resident memory is watched.

    TORAX_LOAD_SESSIONS=8 TORAX_LOAD_UPLOADS=200 python -m pytest -m load -s tests/test_load.py

Defaults (2 sessions, 4 uploads) keep CI short. Every session gets an image of its own size, and must see its
own size on the page: results never cross between sessions. Traffic stays on 127.0.0.1; every loop is bounded.
Never runs `playwright install`: it uses /usr/bin/chromium, and skips when that is missing.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import cv2
import pytest

from helpers.images import radiograph

SESSIONS = int(os.environ.get("TORAX_LOAD_SESSIONS", "2"))
UPLOADS = int(os.environ.get("TORAX_LOAD_UPLOADS", "4"))
WARM_UP = 3
RSS_GROWTH_LIMIT_MB = 150
RESULT = re.compile(r"Probability of \S+: (\d+(?:\.\d+)?)%")

pytestmark = [pytest.mark.load, pytest.mark.xdist_group("live-app")]  # shares the session's app


def rss_mb(pid: int) -> float:
    """Resident memory of one process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@pytest.fixture(scope="module")
def server(app_server):
    return app_server.url, app_server.pid


@pytest.fixture(scope="module")
def browser(chromium):
    return chromium


def payload(i: int) -> tuple[dict, str]:
    """A distinct drawn radiograph per upload (its own size, so its own result and cache entry), and its caption."""
    h, w = 300 + (i % 97), 260 + (i * 7) % 113
    data = cv2.imencode(".png", radiograph((h, w), pneumonia=bool(i % 2), seed=i))[1].tobytes()
    return {"name": f"load-{i}.png", "mimeType": "image/png", "buffer": data}, f"As decoded · {w} × {h} px"


def open_diagnose(browser, url):
    context = browser.new_context(viewport={"width": 1300, "height": 1400})
    page = context.new_page()
    page.set_default_timeout(180_000)
    page.goto(url)
    page.get_by_role("heading", name="Diagnose").wait_for()
    return context, page


def upload_and_read(page, i: int) -> float:
    file, caption = payload(i)
    page.locator("input[type=file]").first.set_input_files(file)
    page.get_by_text(caption).wait_for()
    text = page.get_by_text(RESULT).first.inner_text()
    return float(RESULT.search(text).group(1))


def test_concurrent_sessions_each_get_their_own_result(server, browser):
    url, _ = server
    started = time.time()
    sessions = [open_diagnose(browser, url) for _ in range(SESSIONS)]
    opened = time.time() - started
    try:
        expected = {}
        for i, (_, page) in enumerate(sessions):  # every upload is in flight before any result is awaited
            file, caption = payload(1000 + i)
            page.locator("input[type=file]").first.set_input_files(file)
            expected[i] = caption
        for i, (_, page) in enumerate(sessions):
            page.get_by_text(expected[i]).wait_for()
            assert RESULT.search(page.get_by_text(RESULT).first.inner_text())
            for j, caption in expected.items():  # nobody else's image shows up here
                if j != i:
                    assert page.get_by_text(caption).count() == 0
    finally:
        for context, _ in sessions:
            context.close()
    elapsed = time.time() - started
    print(f"\nload: {SESSIONS} concurrent sessions: pages open in {opened:.1f} s, all results in {elapsed:.1f} s")


def test_memory_stays_flat_over_many_uploads(server, browser):
    url, pid = server
    context, page = open_diagnose(browser, url)
    try:
        for i in range(WARM_UP):
            upload_and_read(page, i)
        before = rss_mb(pid)
        every = max(1, UPLOADS // 10)
        trace = []
        started = time.time()
        for n, i in enumerate(range(WARM_UP, WARM_UP + UPLOADS), start=1):
            assert 0.0 <= upload_and_read(page, i) <= 100.0
            if n % every == 0:
                trace.append(round(rss_mb(pid)))
        elapsed = time.time() - started
        after = rss_mb(pid)
    finally:
        context.close()
    print(f"\nload: {UPLOADS} sequential uploads in {elapsed:.1f} s ({elapsed / UPLOADS:.2f} s each); server RSS "
          f"{before:.0f} MB after {WARM_UP} warm-up uploads, {after:.0f} MB at the end ({after - before:+.0f} MB); "
          f"every {every} uploads: {trace}")
    assert after - before < RSS_GROWTH_LIMIT_MB
