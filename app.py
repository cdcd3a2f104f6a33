"""Tórax: the Streamlit entry point. A router only: each page is a thin script under pages/ (named by its URL
path), and what pages share lives in pages/lib/."""
from pathlib import Path

import streamlit as st

from pages.lib.common import sidebar, tr
from pages.lib.reruns import keep_keras_session
from pages.lib.router import take_over

take_over()  # the first run of a fresh server may come here through Streamlit's legacy pages/ mode
keep_keras_session()  # Streamlit would clear Keras' session after every run (pages/lib/reruns.py)
st.set_page_config(page_title="Tórax", page_icon=str(Path(__file__).parent / "assets" / "icon.png"), layout="wide")
t = tr("common")
navigation = st.navigation([
    st.Page("pages/diagnose.py", title=t("nav_diagnose"), icon=":material/radiology:", default=True,
            url_path="diagnose"),
    st.Page("pages/worklist.py", title=t("nav_worklist"), icon=":material/checklist:", url_path="worklist"),
    st.Page("pages/monitoring.py", title=t("nav_monitoring"), icon=":material/query_stats:", url_path="monitoring"),
    st.Page("pages/dataset.py", title=t("nav_dataset"), icon=":material/bar_chart:", url_path="dataset"),
    st.Page("pages/evaluation.py", title=t("nav_evaluation"), icon=":material/monitoring:", url_path="evaluation"),
    st.Page("pages/model-card.py", title=t("nav_model_card"), icon=":material/description:", url_path="model-card"),
])
sidebar()
navigation.run()
