from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Results are recorded by default (model/store/): every test session records into a state folder of its own, never
# into the developer's ~/.local/state/torax or a department database named by TORAX_DB_URL.
_STATE = tempfile.mkdtemp(prefix="torax-test-state-")
atexit.register(shutil.rmtree, _STATE, True)
os.environ["TORAX_STATE"] = _STATE
for _name in ("TORAX_DB_URL", "TORAX_RECORD", "TORAX_RETAIN_DAYS"):
    os.environ.pop(_name, None)


@pytest.fixture(scope="session")
def tiny_bundles(tmp_path_factory) -> Path:
    """A bundles folder with one real (tiny, barely trained) binary bundle, built once per test session."""
    from helpers.bundles import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("tiny"))


# ---------------------------------------------------------------------------------------------------------------------
# Pointing the in-process app (AppTest) at a bundles folder
# ---------------------------------------------------------------------------------------------------------------------
_UNSET = object()
_cached_from = {"folder": _UNSET}  # the bundles folder Streamlit's caches were filled from, in this process


@contextlib.contextmanager
def _app_bundles(folder: Path | None):
    """Set TORAX_BUNDLES to `folder` (None: the repo's own model/bundles) for AppTest runs, and restore it after.
    Streamlit's caches (the loaded bundles and models, cached results) are emptied only when the folder changes, so
    modules sharing the session's `tiny_bundles` load its models once. Every AppTest module points the app through
    here: the record of which folder the caches hold is only right if nothing else changes it."""
    import streamlit as st

    before = os.environ.pop("TORAX_BUNDLES", None)
    if folder is not None:
        os.environ["TORAX_BUNDLES"] = str(folder)
    key = None if folder is None else str(folder)
    if _cached_from["folder"] != key:
        st.cache_resource.clear()
        st.cache_data.clear()
        _cached_from["folder"] = key
    try:
        yield folder
    finally:
        os.environ.pop("TORAX_BUNDLES", None)
        if before is not None:
            os.environ["TORAX_BUNDLES"] = before


@pytest.fixture(scope="module")
def app_on_tiny_bundles(tiny_bundles):
    """The app serves the session's tiny bundle for the whole module (`pytest.mark.usefixtures`)."""
    with _app_bundles(tiny_bundles):
        yield tiny_bundles


@pytest.fixture(scope="module")
def app_on_committed_bundles():
    """The app serves the repository's own model/bundles for the whole module."""
    with _app_bundles(None):
        yield


@pytest.fixture
def point_app_at():
    """`point_app_at(folder)` points the app at `folder` for the rest of this test; returns `folder`."""
    with contextlib.ExitStack() as stack:
        yield lambda folder: stack.enter_context(_app_bundles(folder))


@pytest.fixture(autouse=True)
def router_runs_every_time(monkeypatch):
    """Run app.py (the st.navigation router) on every AppTest run, as a live server does once its first request has
    left Streamlit's legacy `pages/` mode (pages.lib.router.take_over; the browser tests cover that first request).
    AppTest 1.67 re-detects the legacy folder before each run: without this, every run would go through
    take_over's rerun, which drops a clicked button's trigger."""
    from streamlit.runtime.pages_manager import PagesManager

    original = PagesManager.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", init)


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the whole session (helpers.postgres), or a skip where Debian's `postgresql`
    is not installed (.ci/run installs it)."""
    from helpers.postgres import Postgres, pg_bin

    if pg_bin() is None:
        pytest.skip("PostgreSQL server binaries are not installed (apt-get install postgresql)")
    server = Postgres(Path(tempfile.mkdtemp(prefix="torax-pg-")))  # not under pytest's 0700 folder: `nobody` runs it
    try:
        yield server.start()
    finally:
        server.close()
