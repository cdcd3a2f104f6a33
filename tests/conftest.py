import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def tiny_bundles(tmp_path_factory) -> Path:
    """A bundles folder with one real (tiny, barely trained) binary bundle, built once per test session."""
    from synthetic import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("tiny"))


def serve_bundles(bundles):
    """Generator body for a fixture that points the app at `bundles` (None: the repo's own model/bundles) with
    fresh Streamlit caches, and restores the environment afterwards."""
    import streamlit as st

    before = os.environ.pop("TORAX_BUNDLES", None)
    if bundles is not None:
        os.environ["TORAX_BUNDLES"] = str(bundles)
    st.cache_resource.clear()
    st.cache_data.clear()
    yield
    st.cache_resource.clear()
    st.cache_data.clear()
    os.environ.pop("TORAX_BUNDLES", None)
    if before is not None:
        os.environ["TORAX_BUNDLES"] = before


@pytest.fixture
def router_runs_every_time(monkeypatch):
    """Run app.py (the st.navigation router) on every AppTest run, as a live server does. AppTest 1.67 re-detects
    the legacy `pages/` folder before each run and, finding one, runs the page script alone from the second run on
    (no router, so no sidebar and no language radio)."""
    from streamlit.runtime.pages_manager import PagesManager

    original = PagesManager.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", init)
