"""Diagnose's hand-offs to the hospital: a PDF report for any upload; for a DICOM upload, the structured report and
the Grad-CAM Secondary Capture as DICOM downloads, and "Send result to PACS" when one is configured (TORAX_PACS_URL,
TORAX_PACS_USER, TORAX_PACS_PASSWORD).

Patient and study attributes go from the uploaded bytes into the DICOM outputs only: nothing here shows them. Nothing
is written to disk.
"""
from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from model.channels.pacs import Pacs, PacsError
from model.core.explain import overlay
from model.core.types import Result
from model.outputs.dicom_results import (
    SC_SERIES_NUMBER,
    SR_SERIES_NUMBER,
    NotDicom,
    build_outputs,
    dicom_bytes,
    read_source,
)
from model.outputs.pdf_report import pdf_report
from pages.lib.common import get_explainer

STRINGS = Path(__file__).resolve().parents[2] / "assets" / "strings" / "outputs.json"


def t(key: str, **kwargs) -> str:
    strings = json.loads(STRINGS.read_text(encoding="utf-8"))
    text = strings.get(st.session_state.get("lang", "en"), {}).get(key) or strings["en"].get(key) or key
    return text.format(**kwargs) if kwargs else text


@st.cache_data(max_entries=16, ttl=3600, show_spinner=False)
def gradcam_overlay(digest: str, bundle_name: str, _pixels):
    """The ensemble Grad-CAM overlay at upload size (what the PDF and the Secondary Capture show)."""
    return overlay(_pixels, get_explainer(bundle_name).cams(_pixels, "gradcam")["ensemble"])


def has_study(upload: dict, decoded) -> bool:
    """A DICOM upload with a study to file results into."""
    if str((decoded.meta or {}).get("format", "")).lower() != "dicom":
        return False
    try:
        read_source(upload["data"])
    except NotDicom:
        return False
    return True


def _outputs(upload: dict, result: Result, bundle, digest: str, picture):
    """The SR and SC for this upload at this decision, made once (so a download and a send carry the same UIDs)."""
    key = (digest, bundle.name, json.dumps(result.threshold, sort_keys=True), result.label and str(result.label))
    made = st.session_state.setdefault("dx_dicom_outputs", {})
    if key not in made:
        made.clear()
        made[key] = build_outputs(upload["data"], result, bundle, picture())
    return made[key]


def draw_outputs(upload: dict, result: Result, bundle, decoded, digest: str) -> None:
    """The PDF download; for a DICOM upload, the SR / SC downloads and the PACS button."""
    picture = lambda: gradcam_overlay(digest, bundle.name, decoded.pixels)  # noqa: E731
    st.download_button(t("download_pdf"), lambda: pdf_report(result, bundle, decoded.pixels, picture()),
                       file_name="torax-report.pdf", mime="application/pdf", icon=":material/picture_as_pdf:",
                       on_click="ignore", key="dx_pdf")
    if not has_study(upload, decoded):
        return
    outputs = lambda: _outputs(upload, result, bundle, digest, picture)  # noqa: E731
    st.download_button(t("download_sr"), lambda: dicom_bytes(outputs().sr), file_name="torax-sr.dcm",
                       mime="application/dicom", icon=":material/description:", on_click="ignore", key="dx_sr")
    st.download_button(t("download_sc"), lambda: dicom_bytes(outputs().sc), file_name="torax-overlay-sc.dcm",
                       mime="application/dicom", icon=":material/image:", on_click="ignore", key="dx_sc")
    pacs = Pacs.from_env()
    if pacs is None:
        st.caption(t("no_pacs"))
        return
    if st.button(t("send_to_pacs"), key="dx_send_pacs", icon=":material/send:", help=t("send_help")):
        try:
            with st.spinner(t("sending")):
                pacs.store(outputs())
        except PacsError as e:
            st.error(t("not_sent", message=str(e)), icon=":material/error:")
        else:
            st.success(t("sent", where=pacs.where(), sr_series=SR_SERIES_NUMBER, sc_series=SC_SERIES_NUMBER),
                       icon=":material/check_circle:")
