"""Diagnose: one radiograph in; the ensemble's probability and decision at a threshold the reader chooses, what
that threshold means on the evaluation data, where the models looked, and a report to take away.

A thin page: read state, call model/, draw. Inference runs once per image (cached by the sha256 of its bytes) and
CAMs once per (image, bundle, method, class); moving a slider only re-reads them. Uploads never touch the disk.
"""
from __future__ import annotations

import hashlib
import time

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from model.core.analysis import analyse, apply_site, decide, disagree
from model.core.explain import overlay
from model.core.guard import for_bundle
from model.core.metrics import confusion, rates, roc_curve
from model.core.preprocess import shrink
from model.core.types import CamMethod, Result, Task
from model.outputs.downloads import png_bytes, report_html, report_json
from model.outputs.safe_text import md_escape
from model.store.recorder import Channel
from pages.lib.common import current_bundle, get_ensemble, get_explainer, ready_to_predict, threshold_for
from pages.lib.outputs import draw_outputs
from pages.lib.record_view import confirm_section, keep, record_caption
from pages.lib.router import take_over
from pages.lib.sites_view import active_site, evidence_choice, site_caption
from pages.lib.ui import UPLOAD_TYPES, tr

take_over()  # a deep link on a fresh server: hand over to app.py's navigation (pages.lib.router)

DISPLAY_SIDE = 1024  # longest side sent to the browser; downloads keep the full resolution
POINT_ORDER = ("screening", "balanced", "confirmatory")
POSITIVE, NEGATIVE = "#c0392b", "#2e6da4"

t = tr("diagnose")


# ---------------------------------------------------------------------------------------------------------------
# Cached work (keyed by the content hash; the bytes themselves are not hashed again: leading underscore)
# ---------------------------------------------------------------------------------------------------------------
@st.cache_data(max_entries=16, ttl=3600, show_spinner=False)
def analysed(digest: str, bundle_name: str, name: str, _data: bytes):
    """(result, Decoded or None, milliseconds the analysis took) for one upload; thresholds are applied later,
    without inference."""
    ensemble = get_ensemble(bundle_name)
    start = time.perf_counter()
    result, decoded = analyse(_data, name, ensemble, guard=for_bundle(ensemble.bundle))
    return result, decoded, (time.perf_counter() - start) * 1000


@st.cache_data(max_entries=32, ttl=3600, show_spinner=False)
def cams(digest: str, bundle_name: str, method: str, class_name: str, _pixels: np.ndarray) -> dict:
    """{member: CAM, "ensemble": CAM} at model-input resolution."""
    return get_explainer(bundle_name).cams(_pixels, method, class_name)


# ---------------------------------------------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------------------------------------------
def _take_upload():
    upload = st.session_state.get("dx_upload")
    if upload is None:
        st.session_state.pop("current_upload", None)
    else:
        st.session_state["current_upload"] = {"name": upload.name, "data": upload.getvalue()}


def _keep_threshold():
    st.session_state["threshold"] = float(st.session_state["dx_threshold"])


def _use_threshold(value: float):
    st.session_state["threshold"] = st.session_state["dx_threshold"] = float(value)


def _keep_prevalence():
    st.session_state["prevalence"] = float(st.session_state["dx_prevalence"]) / 100.0


# ---------------------------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------------------------
def draw_meta(meta: dict):
    size = f"{meta.get('width')} × {meta.get('height')} px"
    rows = {t("meta_format"): str(meta.get("format", "")).upper(), t("meta_size"): size}
    for key, value in meta.items():
        if key in ("format", "width", "height"):
            continue
        if isinstance(value, (list, tuple)):
            value = " / ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
        rows[t(f"meta_{key}", default=key)] = str(value)
    with st.expander(t("image_details")):
        st.markdown("\n".join(f"- **{k}:** {md_escape(v)}" for k, v in rows.items()))  # values come from the file


def draw_decision(result: Result, bundle):
    classes = bundle.classes
    st.caption(t("decision_heading_multiclass" if bundle.task == Task.MULTICLASS else "decision_heading"))
    if not result.assessed:  # the guard says this is not a chest radiograph: no decision, probability for reference
        ts = tr("sites")
        st.markdown(f"## :gray[{ts('not_assessed_decision')}]")
        st.caption(ts("not_assessed_note"))
        if result.probability is not None:
            st.markdown(f":gray[{t.class_label(classes[-1])}: {result.probability:.1%} — "
                        f"{ts('not_assessed')}]")
    elif bundle.task == Task.BINARY:
        positive = result.label == classes[-1]
        st.markdown(f"## :{'red' if positive else 'blue'}[{t.class_label(result.label)}]")
        point = result.operating_point
        st.markdown(t("decision_binary", cls=t.class_label(classes[-1]), p=result.probability,
                      cmp=t("at_or_above") if positive else t("below"), t=result.threshold,
                      point=t(f"op_{point}") if point else t("custom_point")))
    elif bundle.task == Task.MULTICLASS:
        label = result.label
        st.markdown(f"## {t.class_label(label)}")
        st.markdown(t("decision_multiclass", cls=t.class_label(label), p=result.probabilities[label]))
    else:
        found = ", ".join(t.class_label(c) for c in result.label) or t("none_found")
        st.markdown(f"## {found}")
        st.markdown(t("decision_multilabel", found=found))
    if disagree(result):
        st.warning(t("disagree", spread=result.spread), icon=":material/warning:")
    elif result.spread is not None:
        st.caption(t("agree", spread=result.spread))


def members_figure(result: Result, bundle) -> go.Figure:
    """Each member's probability beside the ensemble's, with the threshold drawn across (binary), or grouped by
    class (multiclass / multilabel)."""
    fig = go.Figure()
    if bundle.task == Task.BINARY:
        names = list(result.members) + [f"<b>{t('ensemble')}</b>"]
        values = list(result.members.values()) + [result.probability]
        colours = [POSITIVE if v >= result.threshold else NEGATIVE for v in values]
        fig.add_bar(y=names, x=values, orientation="h", marker_color=colours, text=[f"{v:.1%}" for v in values],
                    marker_opacity=[0.55] * (len(names) - 1) + [1.0],
                    textposition="outside", cliponaxis=False, hovertemplate="%{y}: %{x:.3f}<extra></extra>")
        fig.add_vline(x=result.threshold, line_dash="dash", line_color="#444")
        fig.update_yaxes(autorange="reversed")
        fig.update_xaxes(range=[0, 1], tickformat=".0%", title=t("member_axis"))
        height = 80 + 32 * len(names)
    else:
        for member, probs in list(result.members.items()) + [(t("ensemble"), result.probabilities)]:
            fig.add_bar(name=member, x=[t.class_label(c) for c in bundle.classes],
                        y=[probs[c] for c in bundle.classes], hovertemplate="%{x}: %{y:.3f}<extra></extra>")
        fig.update_layout(barmode="group")
        fig.update_yaxes(range=[0, 1], tickformat=".0%", title=t("member_axis"))
        height = 300
    fig.update_layout(height=height, margin=dict(l=0, r=45, t=10, b=0), showlegend=bundle.task != Task.BINARY)
    return fig


def draw_threshold(bundle, threshold: float, site=None):
    """The slider and the operating-point presets (binary bundles; a site profile's own presets when active)."""
    cls = t.class_label(bundle.classes[-1])
    st.session_state["dx_threshold"] = threshold  # mirror the shared value into this page's widget
    st.slider(t("threshold"), 0.0, 1.0, step=0.001, format="%.3f", key="dx_threshold",
              on_change=_keep_threshold, help=t("threshold_help", cls=cls))
    points = sorted((p for p in (site.operating_points if site else bundle.operating_points) if "threshold" in p),
                    key=lambda p: POINT_ORDER.index(p["name"]) if p["name"] in POINT_ORDER else len(POINT_ORDER))
    if points:
        st.caption(t("presets"))
        for column, point in zip(st.columns(len(points), gap="small"), points):
            column.button(t.name("op", point["name"]), key=f"op_{point['name']}",
                          on_click=_use_threshold, args=(point["threshold"],), width="stretch",
                          type="primary" if abs(point["threshold"] - threshold) < 1e-9 else "secondary",
                          help=t("op_help", t=point["threshold"],
                                 sens=point.get("val_sensitivity", point.get("site_sensitivity", float("nan"))),
                                 spec=point.get("val_specificity", point.get("site_specificity", float("nan")))))


def evaluation_at(evidence: dict | None, threshold: float) -> dict | None:
    """Confusion counts and rates at this threshold on the chosen evidence set (pages.lib.sites_view.evidence_choice:
    internal test, external, or the site profile's cross-validated scores); None without scores."""
    if evidence is None:
        return None
    counts = confusion(evidence["y"], evidence["score"], threshold)
    pos, neg = counts["tp"] + counts["fn"], counts["tn"] + counts["fp"]
    sample = pos / max(pos + neg, 1)
    if "prevalence" not in st.session_state:
        st.session_state["prevalence"] = sample
    name = tr("sites")(f"set_{evidence['key']}")
    if evidence["key"] == "external":
        name += f" ({evidence['dataset']})"
    return {"counts": counts, "pos": pos, "neg": neg, "sample": sample, "split": name,
            "roc": roc_curve(evidence["y"], evidence["score"])[:2], "rates": rates(counts),
            "at_prevalence": rates(counts, float(st.session_state["prevalence"]))}


def draw_meaning(bundle, ev: dict | None):
    """Sensitivity, specificity, PPV and NPV at the current threshold, and the prevalence they assume."""
    cls, neg = t.class_label(bundle.classes[-1]), t.class_label(bundle.classes[0])
    st.markdown(f"**{t('meaning_heading')}**")
    if ev is None:
        st.info(t("no_scores"))
        return
    r, rp, c = ev["rates"], ev["at_prevalence"], ev["counts"]
    m = [column for _ in range(2) for column in st.columns(2, gap="small")]
    m[0].metric(t("sensitivity"), _pct(r["sensitivity"]), help=t("sensitivity_help", cls=cls))
    m[1].metric(t("specificity"), _pct(r["specificity"]), help=t("specificity_help", cls=cls, neg=neg))
    m[2].metric(t("ppv"), _pct(rp["ppv"]), help=t("ppv_help", cls=cls))
    m[3].metric(t("npv"), _pct(rp["npv"]), help=t("npv_help", cls=cls, neg=neg))
    st.caption(t("meaning_caption", split=t.name("split", ev["split"]),
                 n=ev["pos"] + ev["neg"], pos=ev["pos"], cls=cls, tp=c["tp"], fp=c["fp"], neg=ev["neg"]))
    st.session_state["dx_prevalence"] = round(100.0 * float(st.session_state["prevalence"]), 2)
    st.number_input(t("prevalence"), min_value=0.1, max_value=99.9, step=0.5, format="%.1f", key="dx_prevalence",
                    on_change=_keep_prevalence, help=t("prevalence_help", cls=cls, sample=ev["sample"]))


def roc_figure(bundle, threshold: float, ev: dict) -> go.Figure:
    """The ensemble's ROC on the chosen evidence set with the current threshold marked."""
    fpr, tpr = ev["roc"]
    roc = {"fpr": fpr, "tpr": tpr}
    r = ev["rates"]
    fig = go.Figure()
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="#aaa"), hoverinfo="skip",
                    showlegend=False)
    if roc:
        fig.add_scatter(x=roc["fpr"], y=roc["tpr"], mode="lines", name=t("roc_curve"), line=dict(color=NEGATIVE),
                        hovertemplate="%{x:.2f}, %{y:.2f}<extra></extra>")
    fig.add_scatter(x=[1 - r["specificity"]], y=[r["sensitivity"]], mode="markers", name=t("roc_here"),
                    marker=dict(size=14, color=POSITIVE, line=dict(width=2, color="white")),
                    hovertemplate=f"{threshold:.3f}: %{{x:.2f}}, %{{y:.2f}}<extra></extra>")
    fig.update_layout(title=dict(text=t("roc_title"), font=dict(size=14)), height=380,
                      margin=dict(l=0, r=10, t=40, b=0), legend=dict(orientation="h", y=-0.22, x=0),
                      xaxis=dict(title=t("roc_x"), range=[0, 1], constrain="domain"),
                      yaxis=dict(title=t("roc_y"), range=[0, 1.02], scaleanchor="x", scaleratio=1,
                                 constrain="domain"))
    return fig


def _pct(value: float) -> str:
    return "—" if value != value else f"{value:.1%}"


def draw_cam(digest: str, bundle, decoded, shown: np.ndarray):
    """Original and overlay side by side, with the CAM controls above. Returns a maker of the full-resolution
    overlay PNG, or None while the CAM is off."""
    members = ["ensemble"] + [m.name for m in bundle.members]
    row = st.columns([1.3, 2.4, 1.1, 1.1, 1.4] if bundle.task != Task.BINARY else [1.3, 2.4, 1.1, 1.4], gap="medium",
                     vertical_alignment="bottom")
    on = row[0].toggle(t("show_cam"), key="dx_cam", help=t("show_cam_help"))
    images = st.columns(2, gap="medium")
    images[0].image(shown, width="stretch", caption=t("original", size=f"{decoded.meta.get('width')} × "
                                                                         f"{decoded.meta.get('height')} px"))
    if not on:
        images[1].info(t("cam_off"), icon=":material/visibility:")
        return None
    methods = [m.value for m in CamMethod]  # plain strings: they key the CAM cache
    method = row[1].segmented_control(t("cam_method"), methods, format_func=lambda m: CamMethod(m).label,
                                      default=methods[0], required=True, key="dx_cam_method")
    member = row[2].selectbox(t("cam_member"), members, key="dx_cam_member",
                              format_func=lambda m: t("ensemble") if m == "ensemble" else m)
    class_name = (row[3].selectbox(t("cam_class"), bundle.classes, format_func=t.class_label, key="dx_cam_class")
                  if bundle.task != Task.BINARY else bundle.classes[-1])
    opacity = row[-1].slider(t("cam_opacity"), 0.0, 1.0, 0.4, 0.05, key="dx_cam_opacity")
    with images[1], st.spinner(t("cam_running", method=CamMethod(method).label)):
        maps = cams(digest, bundle.name, method, class_name, decoded.pixels)
    cam = maps[member]
    images[1].image(overlay(shown, cam, opacity), width="stretch",
                    caption=t("cam_caption", method=CamMethod(method).label,
                              member=t("ensemble") if member == "ensemble" else member, cls=t.class_label(class_name)))
    st.caption(t("cam_note", cls=t.class_label(class_name)))
    return lambda: png_bytes(overlay(decoded.pixels, cam, opacity))


# ---------------------------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------------------------
st.title(t("title"))
st.caption(t("intro"))
bundle = current_bundle()
st.file_uploader(t("upload"), type=UPLOAD_TYPES, key="dx_upload", on_change=_take_upload, help=t("upload_help"))
upload = st.session_state.get("current_upload")
if bundle is None or not ready_to_predict(bundle):  # the members load while a first image is being chosen
    st.stop()
if not upload:
    st.info(t("empty"), icon=":material/radiology:")
    st.stop()
if st.session_state.get("dx_upload") is None:
    note, back = st.columns([4, 1], vertical_alignment="center")
    note.caption(t("from_worklist", name=md_escape(upload["name"])))  # the uploader's text, shown as text
    if st.session_state.get("worklist_entries"):
        back.page_link("pages/worklist.py", label=t("back_to_worklist"), icon=":material/arrow_back:")

digest = hashlib.sha256(upload["data"]).hexdigest()
with st.spinner(t("analysing")):
    base, decoded, latency_ms = analysed(digest, bundle.name, upload["name"], upload["data"])
site = active_site(bundle)
threshold = threshold_for(bundle, site)
result = decide(apply_site(base, site), bundle, threshold, site)
# Kept once per image, bundle and site profile in this session: the decision at the threshold first shown.
recorded = keep(Channel.APP_DIAGNOSE, digest, result, bundle, site, data=upload["data"], raw=base.probability,
                latency_ms=latency_ms)
if base.error:
    st.error(t("decode_error", message=t.message(base.error)), icon=":material/error:")
    record_caption(recorded)
    st.stop()
if base.warnings:
    st.warning(t("warnings_heading") + "\n" + "\n".join(f"- {t.message(w)}" for w in base.warnings),
               icon=":material/warning:")

ev = None

# 1. The answer, and the threshold that makes it.
answer, tuning = st.columns([5, 6], gap="large")
with answer, st.container(border=True):
    draw_decision(result, bundle)
    site_caption(site)
    st.markdown(f"**{t('members_heading')}**")
    st.plotly_chart(members_figure(result, bundle), key="dx_members", config={"displayModeBar": False})
    record_caption(recorded)
    confirm_section(recorded, bundle)
with tuning:
    if bundle.task == Task.BINARY:
        draw_threshold(bundle, threshold, site)
        ev = evaluation_at(evidence_choice(bundle, site, key="dx_evidence"), threshold)
        draw_meaning(bundle, ev)
    elif bundle.task == Task.MULTILABEL and isinstance(threshold, dict):
        st.markdown(f"**{t('class_thresholds')}**")
        st.markdown("\n".join(f"- {t.class_label(c)}: {v:.3f}" for c, v in threshold.items()))

# 2. The image, and where the models looked.
st.subheader(t("cam_heading"), divider="gray")
overlay_png = draw_cam(digest, bundle, decoded, shrink(decoded.pixels, DISPLAY_SIDE))

# 3. The ROC curve and the image's own details.
st.divider()
roc, details = st.columns([1, 1], gap="large")
if ev is not None:
    roc.plotly_chart(roc_figure(bundle, threshold, ev), key="dx_roc", config={"displayModeBar": False})
with details:
    draw_meta(decoded.meta)
    st.markdown(f"**{t('downloads')}**")
    if overlay_png:
        st.download_button(t("download_overlay"), overlay_png, file_name="torax-overlay.png", mime="image/png",
                           icon=":material/image:", on_click="ignore")
    st.download_button(t("download_json"), lambda: report_json(result, bundle, site=site),
                       file_name="torax-report.json", mime="application/json", icon=":material/data_object:",
                       on_click="ignore")
    st.download_button(t("download_html"),
                       lambda: report_html(t.localised(result), bundle, overlay_png() if overlay_png else None, t.lang,
                                           site=site),
                       file_name="torax-report.html", mime="text/html", icon=":material/print:", on_click="ignore")
    draw_outputs(upload, result, bundle, decoded, digest)  # PDF; for DICOM also SR / SC and the PACS
