"""Tórax in a real browser: `streamlit run app.py` in a subprocess, Debian's Chromium driven by Playwright.

Uploads a phantom through the page's own file input, moves the threshold with the keyboard across the image's
probability and watches the decision flip, turns the Grad-CAM overlay on, and saves a screenshot.
Never runs `playwright install`: it uses /usr/bin/chromium, and skips when that is missing.
"""
import cv2
import pytest

from helpers.images import radiograph

pytestmark = pytest.mark.browser


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
