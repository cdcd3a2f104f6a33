"""The first request to a freshly started server, at any page's URL, runs the real navigation (issue 19).

Each URL gets its own fresh `streamlit run app.py`: what a reconnecting tab, a bookmark or a shared link meets after
a restart. The sidebar must list exactly the six pages with the language, model and site controls, no "Page not
found" dialog may appear, and no helper module under pages/ may answer as a page. The language survives a reload,
and a browser that prefers Spanish gets Spanish first.
"""
import json
import re
import shutil

import pytest

from helpers.servers import CHROMIUM, CHROMIUM_ARGS, require_chromium, streamlit_server

pytestmark = pytest.mark.browser

PAGES = ["Diagnose", "Worklist", "Monitoring", "Dataset", "Evaluation", "Model card"]
URLS = ["", "diagnose", "worklist", "dataset", "evaluation", "model-card"]
TITLES = {"": "Diagnose", "diagnose": "Diagnose", "worklist": "Worklist", "dataset": "Training data",
          "evaluation": "How well the model performs", "model-card": "Model card"}  # each page's own title


@pytest.fixture(scope="module")
def two_bundles(tiny_bundles, tmp_path_factory):
    """The tiny bundle twice under two names, so the sidebar's model selector is drawn."""
    root = tmp_path_factory.mktemp("two") / "bundles"
    shutil.copytree(tiny_bundles, root)
    other = root / "pneumonia-copy"
    shutil.copytree(root / "pneumonia-kermany", other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "name": "pneumonia-copy", "title": "A copy"}))
    return root


def _open(url: str, tmp_path, locale: str = "en-US"):
    from playwright.sync_api import expect, sync_playwright
    expect.set_options(timeout=60_000)  # a fresh server imports TensorFlow and loads the bundles first
    p = sync_playwright().start()
    browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": 1300, "height": 900}, locale=locale)
    page.set_default_timeout(60_000)
    page.goto(url)
    return p, browser, page


def _sidebar_state(page, pages=PAGES, language="Language", model="Model", site="Site profile"):
    from playwright.sync_api import expect
    nav = page.locator("[data-testid=stSidebarNav] a")
    expect(nav).to_have_count(len(pages))
    assert [n.strip().split("\n")[-1] for n in nav.all_inner_texts()] == pages  # after the icon's name
    sidebar = page.locator("[data-testid=stSidebar]")
    for label in (language, model, site):
        expect(sidebar.get_by_text(label, exact=True).first).to_be_visible()
    expect(page.get_by_text("Page not found")).to_have_count(0)


@pytest.mark.parametrize("path", URLS)
def test_first_request_runs_the_navigation(two_bundles, tmp_path, path):
    require_chromium()
    with streamlit_server(two_bundles, tmp_path) as (url, _):
        p, browser, page = _open(f"{url}/{path}", tmp_path)
        try:
            _sidebar_state(page)
            from playwright.sync_api import expect
            expect(page.get_by_role("heading", name=TITLES[path]).first).to_be_visible()
            if path == "model-card":  # the same server, now warm: a helper module is not a page
                page.goto(f"{url}/common")
                expect(page.get_by_text("Page not found")).to_be_visible()
                assert "common" not in page.locator("[data-testid=stSidebarNav]").inner_text().lower()
        finally:
            browser.close()
            p.stop()


def test_language_survives_reload_and_follows_the_browser(two_bundles, tmp_path):
    require_chromium()
    from playwright.sync_api import expect
    with streamlit_server(two_bundles, tmp_path) as (url, _):
        p, browser, page = _open(f"{url}/worklist", tmp_path, locale="es-ES")
        try:  # a browser that prefers Spanish gets Spanish first
            _sidebar_state(page, ["Diagnóstico", "Lista de trabajo", "Seguimiento", "Datos", "Evaluación",
                                  "Ficha del modelo"],
                           "Idioma", "Modelo", "Perfil de centro")
            page.locator("[data-testid=stSidebar]").get_by_text("English", exact=True).click()
            expect(page.locator("[data-testid=stSidebarNav] a").first).to_have_text(re.compile("Diagnose$"))
            page.wait_for_url(re.compile(r"lang=en"))  # the choice reaches the address, then the reader reloads
            page.reload()
            expect(page.locator("[data-testid=stSidebarNav] a").first).to_have_text(re.compile("Diagnose$"))
            assert "lang=en" in page.url and "/worklist" in page.url
        finally:
            browser.close()
            p.stop()
