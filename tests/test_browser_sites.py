"""The site check in a real browser: `streamlit run app.py`, Debian's Chromium via Playwright. On the Evaluation
page a reader uploads a ZIP of class folders, reads the report and saves it as a site profile (the file appears in
$TORAX_SITES). Skips without /usr/bin/chromium; never runs `playwright install`."""
import json

import pytest

from helpers.images import sample_zip

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("live-app")]  # shares the session's app


def test_check_and_save_a_site_profile_in_chromium(app_server, chromium, tmp_path):
    from playwright.sync_api import expect

    expect.set_options(timeout=120_000)  # the first inference compiles the ensemble
    archive = tmp_path / "my-site.zip"
    archive.write_bytes(sample_zip())
    context = chromium.new_context(viewport={"width": 1400, "height": 2000})
    try:
        page = context.new_page()
        page.set_default_timeout(120_000)
        page.goto(app_server.url)
        expect(page.get_by_role("heading", name="Diagnose")).to_be_visible()
        page.get_by_role("link", name="Evaluation").click()
        expect(page.get_by_text("Check the model on your own images")).to_be_visible()

        page.locator("input[type=file]").first.set_input_files(str(archive))
        page.get_by_role("button", name="Check").click()
        expect(page.get_by_text("on 12 of your images (NORMAL 6, PNEUMONIA 6)")).to_be_visible()
        expect(page.get_by_text("not_chest_xray ×1")).to_be_visible()

        name = page.get_by_label("Site name")
        name.fill("clinic-e2e")
        name.press("Enter")
        page.get_by_role("button", name="Save as site profile").click()
        expect(page.get_by_text("Saved site profile clinic-e2e")).to_be_visible()
        page.screenshot(path=str(tmp_path / "site-check.png"), full_page=True)
    finally:
        context.close()
    saved = json.loads((app_server.sites / "clinic-e2e.json").read_text())
    assert saved["site"] == "clinic-e2e" and saved["sample"]["n"] == 12
    assert (tmp_path / "site-check.png").stat().st_size > 10_000
