"""The first request to a freshly started server, at any page's URL, runs the real navigation (issue 19).

Each URL gets its own fresh `streamlit run app.py`: what a reconnecting tab, a bookmark or a shared link meets after
a restart. The sidebar must list exactly the six pages with the language, model and site controls, no "Page not
found" dialog may appear, and no helper module under pages/ may answer as a page.
(The language's survival of a reload, and Spanish for a browser that prefers it: tests/test_browser.py.)
"""

import pytest

from helpers.browser import open_page, sidebar_state
from helpers.servers import streamlit_server

pytestmark = pytest.mark.browser

URLS = ["", "diagnose", "worklist", "monitoring", "dataset", "evaluation", "model-card"]
TITLES = {"": "Diagnose", "diagnose": "Diagnose", "worklist": "Worklist", "monitoring": "Monitoring",
          "dataset": "Training data", "evaluation": "How well the model performs",
          "model-card": "Model card"}  # each page's own title


@pytest.mark.parametrize("path", URLS)
def test_first_request_runs_the_navigation(two_bundles, chromium, tmp_path, path):
    with streamlit_server(two_bundles, tmp_path) as (url, _):
        context, page = open_page(chromium, f"{url}/{path}")
        try:
            sidebar_state(page)
            from playwright.sync_api import expect
            expect(page.get_by_role("heading", name=TITLES[path]).first).to_be_visible()
            if path in ("", "diagnose", "worklist"):  # pages that predict load the members after drawing the page
                expect(page.locator("[data-testid=stFileUploaderDropzone]").first).to_be_visible()
                expect(page.get_by_text("Loading the model")).to_have_count(0)
                expect(page.get_by_text("was not loaded")).to_have_count(0)
            if path == "model-card":  # the same server, now warm: a helper module is not a page
                page.goto(f"{url}/common")
                expect(page.get_by_text("Page not found")).to_be_visible()
                assert "common" not in page.locator("[data-testid=stSidebarNav]").inner_text().lower()
        finally:
            context.close()
