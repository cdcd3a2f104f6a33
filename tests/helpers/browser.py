"""What the browser tests share: a page opened in its own context (its own Streamlit session), and the sidebar as
the navigation must draw it (exactly the six pages, the three controls, no "Page not found")."""
from __future__ import annotations

PAGES = ["Diagnose", "Worklist", "Monitoring", "Dataset", "Evaluation", "Model card"]


def open_page(chromium, url: str, locale: str = "en-US"):
    """A new browser context (its own Streamlit session) at `url`."""
    from playwright.sync_api import expect
    expect.set_options(timeout=60_000)  # a fresh server imports TensorFlow and loads the bundles first
    context = chromium.new_context(viewport={"width": 1300, "height": 900}, locale=locale)
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(url)
    return context, page


def sidebar_state(page, pages=PAGES, language="Language", model="Model", site="Site profile"):
    from playwright.sync_api import expect
    nav = page.locator("[data-testid=stSidebarNav] a")
    expect(nav).to_have_count(len(pages))
    assert [n.strip().split("\n")[-1] for n in nav.all_inner_texts()] == pages  # after the icon's name
    sidebar = page.locator("[data-testid=stSidebar]")
    for label in (language, model, site):
        expect(sidebar.get_by_text(label, exact=True).first).to_be_visible()
    expect(page.get_by_text("Page not found")).to_have_count(0)
