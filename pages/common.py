"""What every page shares: cached models and reports, the UI strings, and cross-page state.

Session-state keys (the only cross-page state):
- "lang": "en" | "es"                         UI language
- "bundle": str                               name of the selected model bundle
- "threshold": float                          decision threshold of the selected binary bundle (shared by
                                              Diagnose and Evaluation)
- "prevalence": float                         prevalence used for PPV/NPV
- "current_upload": {"name": str, "data": bytes}  image opened from the worklist into Diagnose
Nothing here writes uploads to disk.
"""
from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

ASSETS = Path(__file__).resolve().parent.parent / "assets"
LANGUAGES = {"en": "English", "es": "Español"}


@st.cache_resource(show_spinner=False)
def load_bundles():
    """({name: Bundle}, {folder: error message}); loaded and checksum-verified once per process."""
    from model.bundle import load_all

    return load_all()


@st.cache_resource(show_spinner=False)
def get_ensemble(name: str):
    from model.ensemble import Ensemble

    return Ensemble(load_bundles()[0][name])


@st.cache_resource(show_spinner=False)
def get_explainer(name: str):
    from model.explain import Explainer

    return Explainer(load_bundles()[0][name])


@st.cache_data(show_spinner=False)
def report(bundle_name: str, report_name: str) -> dict | None:
    """A bundle report (reports/<name>.json), read once."""
    return load_bundles()[0][bundle_name].report(report_name)


@st.cache_data(show_spinner=False)
def _strings(page: str) -> dict:
    return json.loads((ASSETS / "strings" / f"{page}.json").read_text(encoding="utf-8"))


def tr(page: str):
    """A translator for one page's strings file: `t = tr("diagnose"); t("title", n=3)`. Falls back to English,
    then to the key itself, so a missing translation never breaks a page."""
    strings = _strings(page)
    lang = st.session_state.get("lang", "en")

    def t(key: str, **kwargs) -> str:
        text = strings.get(lang, {}).get(key) or strings.get("en", {}).get(key) or key
        return text.format(**kwargs) if kwargs else text

    return t


def current_bundle():
    """The selected Bundle, or None (with an explanation drawn) when no bundle could be loaded."""
    from model.bundle import default_bundle_name

    bundles, errors = load_bundles()
    t = tr("common")
    for folder, message in errors.items():
        st.error(t("bundle_refused", folder=folder, message=message))
    if not bundles:
        st.error(t("no_bundles"))
        return None
    if st.session_state.get("bundle") not in bundles:
        st.session_state["bundle"] = default_bundle_name(bundles)
    return bundles[st.session_state["bundle"]]


def default_threshold(bundle) -> float:
    point = next((p for p in bundle.operating_points if p["name"] == bundle.manifest.get("default_operating_point")),
                 None)
    return float(point["threshold"]) if point and "threshold" in point else 0.5


def threshold_for(bundle) -> float:
    """The shared threshold for this bundle, reset to its default operating point when the bundle changes."""
    if st.session_state.get("threshold_bundle") != bundle.name or "threshold" not in st.session_state:
        st.session_state["threshold"] = default_threshold(bundle)
        st.session_state["threshold_bundle"] = bundle.name
    return float(st.session_state["threshold"])


def sidebar():
    """Language toggle and bundle selector, drawn on every page by app.py."""
    t = tr("common")
    st.session_state.setdefault("lang", "en")
    st.sidebar.radio(t("language"), list(LANGUAGES), format_func=LANGUAGES.get, key="lang", horizontal=True)
    bundles, _ = load_bundles()
    if len(bundles) > 1:
        names = list(bundles)
        current_bundle()
        st.sidebar.selectbox(t("model"), names, key="bundle", format_func=lambda n: bundles[n].title)
    st.sidebar.caption(t("disclaimer"))
