from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One TensorFlow thread per process (tests, and the servers and Ray workers they start, which inherit it): the suite
# runs two workers on two cores, so TensorFlow's own thread pools only compete (and spin) for cores already taken.
# Measured alone, the recipe test used 9% less CPU and finished sooner with one thread; the models here are tiny.
for _name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

# Results are recorded by default (model/store/): every test session records into a state folder of its own, never
# into the developer's ~/.local/state/torax or a department database named by TORAX_DB_URL.
_STATE = tempfile.mkdtemp(prefix="torax-test-state-")
atexit.register(shutil.rmtree, _STATE, True)
os.environ["TORAX_STATE"] = _STATE
for _name in ("TORAX_DB_URL", "TORAX_RECORD", "TORAX_RETAIN_DAYS"):
    os.environ.pop(_name, None)


@pytest.fixture(scope="session")
def tiny_bundles(tmp_path_factory) -> Path:
    """A bundles folder with one real (tiny, barely trained) binary bundle, built once per test run: the parallel
    workers (pytest-xdist) share the first one's, waiting on a lock while it is built."""
    import fcntl

    from helpers.bundles import make_tiny_bundle

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's folder, above each worker's own
    folder = base / "tiny-shared"
    with open(base / "tiny-shared.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "built").exists():  # built here (its paths are recorded), marked only when whole
            shutil.rmtree(folder, ignore_errors=True)
            make_tiny_bundle(folder)
            (folder / "built").touch()
    return folder / "bundles"


@pytest.fixture(scope="session")
def two_bundles(tiny_bundles, tmp_path_factory) -> Path:
    """The tiny bundle twice under two names (the default and "pneumonia-copy"), so the sidebar's model selector is
    drawn."""
    root = tmp_path_factory.mktemp("two") / "bundles"
    shutil.copytree(tiny_bundles, root)
    other = root / "pneumonia-copy"
    shutil.copytree(root / "pneumonia-kermany", other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "name": "pneumonia-copy", "title": "A copy"}))
    return root


# ---------------------------------------------------------------------------------------------------------------------
# One live app and one Chromium for the browser and load tests
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def app_server(two_bundles, tmp_path_factory):
    """One `streamlit run app.py` on `two_bundles` for this session's browser and load tests: each test opens its
    own browser context, so it is its own Streamlit session, as two readers are. Site profiles saved in it land in
    `.sites`. (The deep-link tests start their own fresh servers: a first request is what they test.)"""
    from helpers.servers import require_chromium, streamlit_server

    require_chromium()
    folder = tmp_path_factory.mktemp("app-server")
    with streamlit_server(two_bundles, folder, env={"TORAX_SITES": str(folder / "sites")}) as (url, pid):
        yield SimpleNamespace(url=url, pid=pid, sites=folder / "sites")


@pytest.fixture(scope="session")
def chromium():
    """Debian's Chromium under Playwright, one per session (a test opens its own context); never `playwright
    install`. Skips where /usr/bin/chromium is missing."""
    from helpers.servers import CHROMIUM, CHROMIUM_ARGS, require_chromium

    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


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


# ---------------------------------------------------------------------------------------------------------------------
# One local Ray cluster for the Ray tests (tests/test_archive_ray.py), shut down when its module ends
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray with 2 CPUs, started once for the module and shut down after it, so it never idles beside the
    rest of the suite (skips without Ray: it is in requirements-scale.txt, not requirements.txt)."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -r requirements-scale.txt)")
    import logging

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


# ---------------------------------------------------------------------------------------------------------------------
# Parallel workers (pytest.ini: -n 2 --dist loadgroup): whole files per worker, as --dist loadfile, so a module's
# Orthanc or server starts once; files marked xdist_group("name") go to one worker together (the live-app files share
# the session's app_server there); the files in EACH_TEST_ALONE share nothing between their tests (each deep-link test
# starts its own fresh server), so their tests are spread over both workers.
# ---------------------------------------------------------------------------------------------------------------------
EACH_TEST_ALONE = ("tests/test_browser_deeplinks.py",)


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class FilesAndGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if "@" in nodeid:  # loadgroup appends "@group" to a marked test's id
                return nodeid.rsplit("@", 1)[1]
            file = nodeid.split("::", 1)[0]
            return nodeid if file in EACH_TEST_ALONE else file

    return FilesAndGroups(config, log)


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
