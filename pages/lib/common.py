"""What every page shares: cached models and bundle reports, the selected bundle, and cross-page state. (The UI
strings and drawing helpers are in pages/lib/ui.py.)

Session-state keys (the only cross-page state):
- "lang": "en" | "es"                         UI language (mirrored in the URL's ?lang= so a reload keeps it)
- "bundle": str                               name of the selected model bundle
- "threshold": float                          decision threshold of the selected binary bundle (shared by
                                              Diagnose and Evaluation)
- "prevalence": float                         prevalence used for PPV/NPV
- "current_upload": {"name": str, "data": bytes}  image opened from the worklist into Diagnose
- "data_dir": str                             the dataset folder on this computer (Dataset and Evaluation)
- "site": str | None                          the active site profile (sidebar); pages/lib/sites_view.py has the rest
- "record": bool                              keep results in the department's record (sidebar);
                                              pages/lib/record_view.py has the rest
Nothing here writes uploads to disk.
"""
from __future__ import annotations

import streamlit as st

from pages.lib.reruns import settle_heap
from pages.lib.ui import LANGUAGES, lang, tr


@st.cache_resource(show_spinner=False)
def load_bundles():
    """({name: Bundle}, {folder: error message}); every bundle's manifest, signature and files checksum-verified
    once per process. The Keras members are loaded by `with_members`, for the pages that predict: the sidebar,
    Dataset, Evaluation, Model card and Monitoring open without importing TensorFlow (a fresh server answers a
    link to them in a few seconds)."""
    from model.core.bundle import load_all

    loaded = load_all(models=False)
    settle_heap()
    return loaded


def with_members(name: str):
    """The bundle `name` with its Keras members loaded (once per process; each file's sha256 is checked again
    just before it is read). Raises model.core.bundle.BundleError."""
    from model.core.bundle import load_members

    bundle = load_bundles()[0][name]
    if bundle.members_loaded:
        return bundle
    load_members(bundle)
    settle_heap()  # TensorFlow and the members stay for the life of the server
    return bundle


@st.cache_resource(show_spinner=False)
def get_ensemble(name: str):
    from model.core.ensemble import Ensemble

    return Ensemble(with_members(name))


@st.cache_resource(show_spinner=False)
def get_explainer(name: str):
    from model.core.explain import Explainer

    return Explainer(with_members(name))


@st.cache_data(show_spinner=False)
def bundle_report(bundle_name: str, report_name: str) -> dict | None:
    """A bundle report (reports/<name>.json), read once."""
    return load_bundles()[0][bundle_name].read_report(report_name)


def current_bundle():
    """The selected Bundle, or None (with an explanation drawn) when no bundle could be loaded."""
    from model.core.bundle import configured_default, default_bundle_name
    from model.outputs.safe_text import md_escape

    bundles, errors = load_bundles()
    t = tr("common")
    for folder, message in errors.items():
        _show_refused(folder, message)
    if not bundles:
        st.error(t("no_bundles"))
        return None
    if st.session_state.get("bundle") not in bundles:
        default = default_bundle_name(bundles)
        if default is None:  # fail closed: no other task answers in the refused default's place by surprise
            st.error(t("default_unavailable", name=md_escape(configured_default())))
            return None
        st.session_state["bundle"] = default
    return bundles[st.session_state["bundle"]]


def ready_to_predict(bundle) -> bool:
    """Load the bundle's Keras members for a page that predicts (behind a spinner, the first time in this process);
    False, with the reason drawn as for a refused bundle, when they cannot be loaded."""
    from model.core.bundle import BundleError

    if bundle.members_loaded:  # every later rerun (a slider moved): nothing to load, no spinner
        return True
    try:
        with st.spinner(tr("common")("loading_models")):
            with_members(bundle.name)
    except BundleError as e:
        _show_refused(bundle.path.name, e.message)
        return False
    return True


def _show_refused(folder: str, message: str) -> None:
    """Why a bundle (named by its folder) cannot be used, as text."""
    from model.outputs.safe_text import md_escape

    st.error(tr("common")("bundle_refused", folder=md_escape(folder), message=md_escape(message)))


def threshold_for(bundle, site=None):
    """The threshold this bundle's results are decided at. Binary: the shared slider value, reset to the default
    (model.core.analysis.default_threshold) when the bundle or the site profile changes (a profile's probabilities
    are on its own scale). Other tasks have no slider: their default (per-class thresholds, or None)."""
    from model.core.analysis import default_threshold
    from model.core.types import Task

    if bundle.task != Task.BINARY:
        return default_threshold(bundle, site)
    site_name = site.name if site is not None else None
    if (st.session_state.get("threshold_bundle") != bundle.name or "threshold" not in st.session_state
            or st.session_state.get("threshold_site") != site_name):
        st.session_state["threshold"] = default_threshold(bundle, site)
        st.session_state["threshold_bundle"] = bundle.name
        st.session_state["threshold_site"] = site_name
    return float(st.session_state["threshold"])


def sidebar():
    """Language toggle and bundle selector, drawn on every page by app.py."""
    t = tr("common")
    lang()
    st.sidebar.radio(t("language"), list(LANGUAGES), format_func=LANGUAGES.get, key="lang", horizontal=True)
    if st.query_params.get("lang") != st.session_state["lang"]:
        st.query_params["lang"] = st.session_state["lang"]  # in the URL, so a reload keeps it
    bundles, _ = load_bundles()
    if len(bundles) > 1:
        names = list(bundles)
        current_bundle()
        from model.core.bundle import default_bundle_name as _default

        # No preselection when the default bundle is unavailable: the user names another model explicitly.
        st.sidebar.selectbox(t("model"), names, key="bundle", format_func=lambda n: bundles[n].title,
                             index=0 if _default(bundles) else None, placeholder=t("choose_model"))
    from model.core.bundle import default_bundle_name
    from pages.lib.sites_view import sidebar_site

    name = st.session_state.get("bundle") if st.session_state.get("bundle") in bundles else \
        default_bundle_name(bundles)
    sidebar_site(bundles.get(name) if name else None)
    from pages.lib.record_view import sidebar_record

    sidebar_record()
    st.sidebar.caption(t("disclaimer"))
