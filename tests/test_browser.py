"""Tórax in a real browser: `streamlit run app.py` in a subprocess, Debian's Chromium driven by Playwright.

Uploads a phantom through the page's own file input, moves the threshold with the keyboard across the image's
probability and watches the decision flip, turns the Grad-CAM overlay on, and saves a screenshot. The language
survives a page reload, and a browser that prefers Spanish gets Spanish first.
Never runs `playwright install`: it uses /usr/bin/chromium, and skips when that is missing.
"""
import re

import cv2
import pytest

from helpers.browser import open_page, sidebar_state
from helpers.images import radiograph

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("live-app")]  # one worker starts the session's app


def test_upload_threshold_and_overlay_in_chromium(app_server, chromium, tmp_path):
    from playwright.sync_api import expect

    expect.set_options(timeout=60_000)  # the first inference compiles the ensemble
    image = tmp_path / "phantom.png"
    cv2.imwrite(str(image), radiograph((320, 280), pneumonia=True, seed=11))
    context = chromium.new_context(viewport={"width": 1400, "height": 1800})
    try:
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(app_server.url)  # the router's own address: it runs app.py and its st.navigation
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
        context.close()
    assert (tmp_path / "diagnose.png").stat().st_size > 10_000


def test_language_survives_reload_and_follows_the_browser(app_server, chromium):
    # A warm server is enough here (the first request is the test above's): the session's shared app.
    from playwright.sync_api import expect
    context, page = open_page(chromium, f"{app_server.url}/worklist", locale="es-ES")
    try:  # a browser that prefers Spanish gets Spanish first
        sidebar_state(page, ["Diagnóstico", "Lista de trabajo", "Seguimiento", "Datos", "Evaluación",
                             "Ficha del modelo"],
                       "Idioma", "Modelo", "Perfil de centro")
        page.locator("[data-testid=stSidebar]").get_by_text("English", exact=True).click()
        expect(page.locator("[data-testid=stSidebarNav] a").first).to_have_text(re.compile("Diagnose$"))
        page.wait_for_url(re.compile(r"lang=en"))  # the choice reaches the address, then the reader reloads
        page.reload()
        expect(page.locator("[data-testid=stSidebarNav] a").first).to_have_text(re.compile("Diagnose$"))
        assert "lang=en" in page.url and "/worklist" in page.url
    finally:
        context.close()
