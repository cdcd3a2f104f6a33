"""Make the first request to any URL run the real navigation (app.py's `st.navigation`).

Streamlit decides once per server process, at the first session, whether the app uses the legacy `pages/`
folder: the folder exists, so the first script run of a fresh server goes through that legacy mode. Opened at `/`
that run is app.py itself; opened at a deep link such as `/worklist` (a reconnecting tab after a restart, a bookmark)
it is `pages/worklist.py` alone: no router, so no language, model or site controls, and a sidebar of whatever
`pages/*.py` holds. `st.navigation` turns the legacy mode off, but only once app.py runs.

`take_over()`, first thing in app.py and in every page script, turns the legacy mode off and reruns: the rerun
keeps the requested page (a legacy page and an `st.Page` with the same URL path share their page hash, which is
why each page file is named by its URL path) and runs app.py, which draws the sidebar and runs the page. Under
the router it costs one attribute read.
"""
from __future__ import annotations

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager


def take_over() -> None:
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()
