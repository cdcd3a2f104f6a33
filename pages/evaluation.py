"""Evaluation page: how well the selected model did on its internal test split, from reports/evaluation.json and
the per-image scores in reports/scores.json; the threshold views use model.metrics on those stored scores.
Grad-CAM of the mistakes runs only on a button press."""
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from model import reports as R
from model.metrics import rates
from pages.common import current_bundle, get_explainer, report, threshold_for, tr

PALETTE = ["#4C78A8", "#E45756", "#54A24B", "#F58518", "#B279A2", "#72B7B2", "#EECA3B", "#9D755D"]
METRIC_COLOURS = {"sensitivity": "#E45756", "specificity": "#4C78A8", "ppv": "#F58518", "npv": "#54A24B"}
ENSEMBLE_COLOUR = "#1f1f1f"
GALLERY_SIZE = 6

t = tr("evaluation")


def fmt_int(x) -> str:
    return R.fmt_int(x, st.session_state.get("lang", "en"))


def name(prefix: str, value) -> str:
    """A translated display name (operating point, subtype, metric), or the value itself when there is none."""
    text = t(f"{prefix}_{value}")
    return str(value) if text == f"{prefix}_{value}" else text


def model_name(model: str) -> str:
    return t("ensemble") if model == "ensemble" else model


def style(fig: go.Figure, title: str, height: int = 400) -> go.Figure:
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=60, b=10), legend_title_text="",
                      hovermode="closest")
    return fig


def auc_text(r: dict) -> str:
    return f"{R.fmt_num(r.get('auc'))} ({R.fmt_ci(r.get('auc_ci95'))})"


@st.cache_data(show_spinner=False)
def test_scores(bundle_name: str):
    """(y, ensemble probability) of the test images, from the bundle's scores.json."""
    return R.binary_scores(report(bundle_name, "scores"))


@st.cache_data(show_spinner=False)
def sweep(bundle_name: str) -> pd.DataFrame:
    return R.threshold_sweep(*test_scores(bundle_name))


@st.cache_data(show_spinner=False)
def histories(bundle_name: str, reports_dir: str) -> pd.DataFrame:
    return R.read_histories(reports_dir)


def data_dir_input() -> str:
    """The dataset folder (shared with the Dataset page under session key "data_dir")."""
    st.session_state.setdefault("data_dir", R.default_data_dir())
    st.session_state["evaluation_data_dir"] = st.session_state["data_dir"]
    st.text_input(t("data_dir"), key="evaluation_data_dir", help=t("data_dir_help"),
                  on_change=lambda: st.session_state.update(data_dir=st.session_state["evaluation_data_dir"].strip()))
    return st.session_state["data_dir"]


def set_threshold(value: float):
    st.session_state["threshold"] = float(value)


# --- binary ---------------------------------------------------------------------------------------------------------

def headline(evaluation: dict, manifest: dict):
    e = evaluation["ensemble"]
    cols = st.columns(5)
    cols[0].metric(t("m_auc"), R.fmt_num(e.get("auc")), help=t("m_auc_help"))
    cols[1].metric(t("m_auc_ci"), R.fmt_ci(e.get("auc_ci95")), help=t("m_auc_ci_help"))
    cols[2].metric(t("m_ap"), R.fmt_num(e.get("average_precision")), help=t("m_ap_help"))
    cal = e.get("calibration") or {}
    cols[3].metric(t("m_ece"), R.fmt_num(cal.get("ece_after")), help=t("m_ece_help"))
    cols[4].metric(t("m_n"), fmt_int(evaluation.get("n")),
                   help=t("m_n_help", positives=fmt_int(e.get("positives")), cls=bundle.classes[-1]))
    best = evaluation.get("best_member")
    if best in evaluation.get("members", {}):
        key = "ensemble_beats" if evaluation.get("ensemble_beats_best_member") else "ensemble_not_better"
        st.caption(t(key, best=best, auc=R.fmt_num(evaluation["members"][best]["auc"]),
                     ens=R.fmt_num(e.get("auc"))))


def curves(evaluation: dict, manifest: dict, point: dict):
    st.header(t("h_curves"))
    st.caption(t("curves_caption"))
    left, right = st.columns(2)
    members = [m for m, _ in R.scorers(evaluation)]
    colours = {m: ENSEMBLE_COLOUR if m == "ensemble" else PALETTE[i % len(PALETTE)] for i, m in enumerate(members)}
    reports = dict(R.scorers(evaluation))

    roc = go.Figure()
    roc.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#bbbbbb", dash="dot"),
                             name=t("chance"), hoverinfo="skip"))
    pr = go.Figure()
    prevalence = evaluation["ensemble"].get("positives", 0) / max(evaluation["ensemble"].get("n", 1), 1)
    pr.add_trace(go.Scatter(x=[0, 1], y=[prevalence, prevalence], mode="lines", name=t("chance"),
                            line=dict(color="#bbbbbb", dash="dot"), hoverinfo="skip"))
    for model in reversed(members):  # the ensemble drawn last, on top
        r, ens = reports[model], model == "ensemble"
        line = dict(color=colours[model], width=3 if ens else 1.5, dash=None if ens else "dash")
        roc.add_trace(go.Scatter(
            x=r["roc"]["fpr"], y=r["roc"]["tpr"], mode="lines", line=line, customdata=r["roc"].get("threshold"),
            name=f"{model_name(model)} — AUC {auc_text(r)}",
            hovertemplate=t("hover_roc") + "<extra></extra>"))
        pr.add_trace(go.Scatter(
            x=r["pr"]["recall"], y=r["pr"]["precision"], mode="lines", line=line,
            customdata=r["pr"].get("threshold"),
            name=f"{model_name(model)} — AP {R.fmt_num(r.get('average_precision'))}",
            hovertemplate=t("hover_pr") + "<extra></extra>"))
    roc.add_trace(go.Scatter(x=[1 - point["specificity"]], y=[point["sensitivity"]], mode="markers",
                             marker=dict(size=13, color="#F58518", line=dict(color="black", width=1)),
                             name=t("your_threshold", threshold=R.fmt_num(point["threshold"]))))
    pr.add_trace(go.Scatter(x=[point["sensitivity"]], y=[point["ppv"]], mode="markers",
                            marker=dict(size=13, color="#F58518", line=dict(color="black", width=1)),
                            name=t("your_threshold", threshold=R.fmt_num(point["threshold"]))))
    for fig, title, xt, yt in ((roc, t("fig_roc"), t("x_fpr"), t("y_tpr")),
                               (pr, t("fig_pr"), t("x_recall"), t("y_precision"))):
        fig.update_xaxes(title=xt, range=[0, 1], constrain="domain")
        fig.update_yaxes(title=yt, range=[0, 1.02])
        fig.update_layout(legend=dict(yanchor="bottom", y=0.02, xanchor="right", x=0.99, traceorder="reversed",
                                      bgcolor="rgba(255,255,255,0.8)"))
    left.plotly_chart(style(roc, t("fig_roc"), 470), key="roc_chart")
    right.plotly_chart(style(pr, t("fig_pr"), 470), key="pr_chart")

    table = R.member_table(evaluation, manifest)
    table["model"] = table["model"].map(model_name)
    table["ci"] = [R.fmt_ci([lo, hi]) for lo, hi in zip(table["ci_low"], table["ci_high"])]
    columns = ["model", "auc", "ci", "average_precision", "val_auc", "temperature"]
    if table["bias"].notna().any():
        columns.append("bias")
    for column in ("auc", "average_precision", "val_auc", "temperature", "bias"):
        table[column] = table[column].map(R.fmt_num)
    table = table[columns].rename(columns={
        "model": t("col_model"), "auc": t("col_auc"), "ci": t("col_ci"), "average_precision": t("col_ap"),
        "val_auc": t("col_val_auc"), "temperature": t("col_temperature"), "bias": t("col_bias")})
    st.dataframe(table, hide_index=True, key="member_table")
    st.caption(t("member_table_caption"))


def threshold_controls(manifest: dict) -> float:
    threshold = threshold_for(bundle)
    st.header(t("h_threshold"))
    st.caption(t("threshold_caption"))
    st.session_state["evaluation_threshold"] = threshold
    st.slider(t("threshold"), 0.0, 1.0, step=0.001, format="%.3f", key="evaluation_threshold",
              help=t("threshold_help"),
              on_change=lambda: set_threshold(st.session_state["evaluation_threshold"]))
    points = [p for p in manifest.get("operating_points", []) if "threshold" in p]
    if points:
        cols = st.columns(len(points) + 1)
        cols[0].markdown(f"**{t('jump_to')}**")
        for col, p in zip(cols[1:], points):
            col.button(f"{name('op', p['name'])} ({R.fmt_num(p['threshold'])})", key=f"op_{p['name']}",
                       on_click=set_threshold, args=(p["threshold"],), help=rule_text(p),
                       type="primary" if abs(p["threshold"] - threshold) < 1e-12 else "secondary")
    return threshold


def rule_text(p: dict) -> str:
    target = R.fmt_pct(p.get("target"), 0) if R.is_number(p.get("target")) else ""
    return t(f"rule_{p.get('rule')}", target=target) if p.get("rule") else ""


def confusion_view(point: dict, threshold: float, scores_y: np.ndarray):
    classes = bundle.classes
    left, right = st.columns([1, 1])
    z = [[point["tn"], point["fp"]], [point["fn"], point["tp"]]]
    negatives, positives = point["tn"] + point["fp"], point["fn"] + point["tp"]

    def cell(kind: str, total: int, cls: str) -> str:
        share = R.fmt_pct(point[kind] / total) if total else "—"
        note = t("cell_share", share=share, cls=cls)
        return f"{t(kind)}<br><b>{point[kind]}</b><br><span style='font-size:12px'>{note}</span>"

    text = [[cell("tn", negatives, classes[0]), cell("fp", negatives, classes[0])],
            [cell("fn", positives, classes[-1]), cell("tp", positives, classes[-1])]]
    fig = go.Figure(go.Heatmap(z=z, x=[t("pred", cls=c) for c in classes], y=[t("true", cls=c) for c in classes],
                               text=text, texttemplate="%{text}", textfont=dict(size=15), colorscale="Blues",
                               showscale=False, hovertemplate="%{text}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    left.plotly_chart(style(fig, t("fig_confusion", threshold=R.fmt_num(threshold)), 380), key="confusion_chart")
    with right:
        cols = st.columns(2)
        cols[0].metric(t("sensitivity"), R.fmt_pct(point["sensitivity"]),
                       help=t("sensitivity_help", tp=point["tp"], fn=point["fn"]))
        cols[1].metric(t("specificity"), R.fmt_pct(point["specificity"]),
                       help=t("specificity_help", tn=point["tn"], fp=point["fp"]))
        cols = st.columns(2)
        cols[0].metric(t("ppv"), R.fmt_pct(point["ppv"]), help=t("ppv_help", tp=point["tp"], fp=point["fp"]))
        cols[1].metric(t("npv"), R.fmt_pct(point["npv"]), help=t("npv_help", tn=point["tn"], fn=point["fn"]))
        prevalence = float(np.mean(scores_y)) if len(scores_y) else float("nan")
        st.caption(t("sample_prevalence", prevalence=R.fmt_pct(prevalence), cls=classes[-1]))
        clinic = st.session_state.get("prevalence")
        if R.is_number(clinic) and 0 < clinic < 1 and abs(clinic - prevalence) > 0.005:
            adjusted = rates({k: point[k] for k in ("tp", "fp", "tn", "fn")}, clinic)
            st.caption(t("clinic_prevalence", prevalence=R.fmt_pct(clinic), ppv=R.fmt_pct(adjusted["ppv"]),
                         npv=R.fmt_pct(adjusted["npv"])))


def sweep_view(threshold: float, manifest: dict, y: np.ndarray, p: np.ndarray):
    st.subheader(t("h_sweep"))
    st.caption(t("sweep_caption"))
    frame = sweep(bundle.name)
    lo, hi = np.quantile(p, [0.005, 0.995]) if len(p) else (0.0, 1.0)
    pad = max((hi - lo) * 0.1, 0.01)
    x_range = [max(0.0, min(lo - pad, threshold - pad)), min(1.0, max(hi + pad, threshold + pad))]
    left, right = st.columns(2)
    fig = go.Figure()
    for metric, colour in METRIC_COLOURS.items():
        fig.add_trace(go.Scatter(x=frame["threshold"], y=frame[metric], mode="lines", name=t(metric),
                                 line=dict(color=colour, width=2),
                                 hovertemplate=f"{t(metric)} %{{y:.1%}} @ %{{x:.3f}}<extra></extra>"))
    markers(fig, threshold, manifest)
    fig.update_xaxes(title=t("threshold"), range=x_range)
    fig.update_yaxes(title="", tickformat=".0%", range=[0, 1.02])
    left.plotly_chart(style(fig, t("fig_sweep"), 420), key="sweep_chart")

    labels = np.where(np.asarray(y) == 1, bundle.classes[-1], bundle.classes[0])
    fig = px.histogram(pd.DataFrame({"p": p, "label": labels}), x="p", color="label", barmode="overlay", opacity=0.6,
                       nbins=60, range_x=x_range, color_discrete_map={bundle.classes[0]: PALETTE[0],
                                                                      bundle.classes[-1]: PALETTE[1]})
    markers(fig, threshold, manifest)
    fig.update_xaxes(title=t("x_probability"), range=x_range)
    fig.update_yaxes(title=t("y_images_log"), type="log")  # a confident model piles images at 0 and 1
    right.plotly_chart(style(fig, t("fig_distribution"), 420), key="distribution_chart")
    st.caption(t("distribution_caption"))


def markers(fig: go.Figure, threshold: float, manifest: dict):
    for op in manifest.get("operating_points", []):
        if "threshold" in op:
            fig.add_vline(x=op["threshold"], line=dict(color="#999999", dash="dot", width=1))
    fig.add_vline(x=threshold, line=dict(color="#F58518", width=3),
                  annotation_text=t("your_threshold", threshold=R.fmt_num(threshold)), annotation_position="top")


def operating_points_view(manifest: dict, evaluation: dict):
    table = R.operating_point_table(manifest, evaluation)
    if table.empty:
        return
    st.header(t("h_operating_points"))
    st.caption(t("operating_points_caption"))
    points = {p["name"]: p for p in manifest.get("operating_points", [])}
    shown = pd.DataFrame({
        t("col_rule"): table["name"].map(lambda n: rule_text(points[n])),
        t("col_threshold"): table["threshold"].map(R.fmt_num),
        t("col_val_sens"): table["val_sensitivity"].map(R.fmt_pct),
        t("col_val_spec"): table["val_specificity"].map(R.fmt_pct),
        t("col_test_sens"): table["test_sensitivity"].map(R.fmt_pct),
        t("col_test_spec"): table["test_specificity"].map(R.fmt_pct),
        t("col_test_ppv"): table["test_ppv"].map(R.fmt_pct),
        t("col_test_npv"): table["test_npv"].map(R.fmt_pct),
        t("col_test_counts"): [f"{tp} / {fp} / {tn} / {fn}" for tp, fp, tn, fn in
                               zip(table["test_tp"], table["test_fp"], table["test_tn"], table["test_fn"])],
    })
    shown.index = [name("op", n) for n in table["name"]]
    shown = shown.T
    st.table(shown.rename_axis(t("col_point"), axis=1))


def subtype_view(evaluation: dict, scores: dict, threshold: float):
    table = R.subtype_table(evaluation)
    current = R.subtype_sensitivity(scores, threshold) if scores else {}
    if table.empty and not current:
        return
    st.subheader(t("h_subtype"))
    rows = [{"point": name("op", r.operating_point), "subtype": name("subtype", r.subtype),
             "sensitivity": r.sensitivity} for r in table.itertuples()]
    rows += [{"point": t("your_threshold", threshold=R.fmt_num(threshold)), "subtype": name("subtype", s),
              "sensitivity": v} for s, v in current.items()]
    frame = pd.DataFrame(rows)
    fig = px.bar(frame, x="point", y="sensitivity", color="subtype", barmode="group",
                 text=frame["sensitivity"].map(R.fmt_pct), color_discrete_sequence=[PALETTE[1], PALETTE[3], PALETTE[4]],
                 labels={"point": "", "sensitivity": t("sensitivity"), "subtype": ""})
    fig.update_yaxes(tickformat=".0%", range=[0, 1.05])
    st.plotly_chart(style(fig, t("fig_subtype"), 360), key="subtype_chart")
    st.caption(t("subtype_caption"))


def calibration_view(evaluation: dict):
    options = [m for m, r in R.scorers(evaluation) if r.get("calibration")]
    if not options:
        return
    st.header(t("h_calibration"))
    st.caption(t("calibration_caption"))
    chosen = st.selectbox(t("calibration_model"), options, format_func=model_name, key="calibration_model")
    cal = dict(R.scorers(evaluation))[chosen]["calibration"]
    bins = R.reliability_frame(cal)
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#bbbbbb", dash="dot"),
                               name=t("perfect_calibration"), hoverinfo="skip"))
    for stage, colour, dash in (("before", "#999999", "dash"), ("after", "#E45756", None)):
        b = bins[bins["stage"] == stage]
        if b.empty:
            continue
        size = 8 + 22 * np.sqrt(b["n"] / max(bins["n"].max(), 1))
        fig.add_trace(go.Scatter(
            x=b["mean_predicted"], y=b["observed"], mode="lines+markers", line=dict(color=colour, dash=dash),
            marker=dict(size=size, color=colour), customdata=b["n"],
            name=t(f"stage_{stage}", ece=R.fmt_num(cal.get(f"ece_{stage}"))),
            hovertemplate=t("hover_reliability") + "<extra></extra>"))
    fig.update_xaxes(title=t("x_predicted"), range=[0, 1])
    fig.update_yaxes(title=t("y_observed"), range=[0, 1.02])
    fig.update_layout(legend=dict(yanchor="bottom", y=0.02, xanchor="right", x=0.99, bgcolor="rgba(255,255,255,0.8)"))
    left, right = st.columns([3, 2])
    left.plotly_chart(style(fig, t("fig_reliability"), 440), key="reliability_chart")
    with right:
        st.metric(t("ece_before"), R.fmt_num(cal.get("ece_before")))
        st.metric(t("ece_after"), R.fmt_num(cal.get("ece_after")))
        fitted = R.calibration_text(bundle.manifest.get("calibration") or {})
        if fitted:
            st.caption(t("temperatures", values=fitted))


def error_gallery(scores: dict, threshold: float):
    st.header(t("h_errors"))
    st.caption(t("errors_caption", n=GALLERY_SIZE))
    if not scores or not scores.get("path"):
        st.info(t("no_paths"))
        return
    data_dir = data_dir_input()
    if not R.data_dir_ok(data_dir):
        st.info(t("data_dir_missing"))
        return
    if st.button(t("show_errors", threshold=R.fmt_num(threshold)), key="show_errors", type="primary"):
        with st.spinner(t("computing_errors")):
            found = R.errors(scores, threshold, GALLERY_SIZE)
            point = R.at_threshold(*test_scores(bundle.name), threshold)
            st.session_state["evaluation_errors"] = {
                "bundle": bundle.name, "threshold": threshold, "totals": {k: point[k] for k in ("fp", "fn")},
                **{kind: explain(items, Path(data_dir).expanduser()) for kind, items in found.items()}}
    shown = st.session_state.get("evaluation_errors")
    if not shown or shown["bundle"] != bundle.name:
        return
    if abs(shown["threshold"] - threshold) > 1e-12:
        st.warning(t("errors_stale", threshold=R.fmt_num(shown["threshold"])))
    for kind in ("fp", "fn"):
        total = shown["totals"][kind]
        st.subheader(t(f"h_{kind}" if total > len(shown[kind]) else f"h_{kind}_all", n=len(shown[kind]),
                       total=fmt_int(total)))
        if not shown[kind]:
            st.caption(t(f"none_{kind}"))
            continue
        for col, item in zip(st.columns(GALLERY_SIZE), shown[kind]):
            caption = t("error_caption", p=R.fmt_num(item["probability"]), subtype=name("subtype", item["subtype"]),
                        file=Path(item["path"]).name)
            if item["image"] is None:
                col.caption(f"{caption} — {t('unreadable')}")
            else:
                col.image(item["image"], caption=caption, width="stretch")


def explain(items: list[dict], data_dir: Path) -> list[dict]:
    """Each mistake's image with the ensemble Grad-CAM (for the positive class) laid over it."""
    from model.explain import overlay
    from model.io import DecodeError, decode

    explainer = get_explainer(bundle.name)
    out = []
    for item in items:
        path = data_dir / item["path"]
        try:
            gray = decode(path.read_bytes(), path.name).pixels
        except (OSError, DecodeError):
            out.append({**item, "image": None})
            continue
        cam = explainer.cams(gray, "gradcam", bundle.classes[-1])["ensemble"]
        scale = min(1.0, 360 / max(gray.shape))
        small = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else gray
        out.append({**item, "image": overlay(small, cam)})
    return out


def binary_view(evaluation: dict, scores: dict | None):
    manifest = bundle.manifest
    headline(evaluation, manifest)
    if scores:
        y, p = test_scores(bundle.name)
    else:
        y, p = np.array([], int), np.array([], float)
    threshold = threshold_for(bundle)
    point = R.at_threshold(y, p, threshold) if scores else None
    if point:
        point["threshold"] = threshold
        curves(evaluation, manifest, point)
        threshold = threshold_controls(manifest)
        confusion_view(point, threshold, y)
        sweep_view(threshold, manifest, y, p)
    else:
        curves(evaluation, manifest, {"threshold": threshold, "sensitivity": np.nan, "specificity": np.nan,
                                      "ppv": np.nan})
        st.info(t("no_scores"))
    operating_points_view(manifest, evaluation)
    subtype_view(evaluation, scores, threshold)
    calibration_view(evaluation)
    training_view()
    if scores:
        error_gallery(scores, threshold)


# --- multiclass / multilabel ----------------------------------------------------------------------------------------

def per_class_view(evaluation: dict):
    ens = evaluation.get("ensemble") or {}
    cols = st.columns(3)
    cols[0].metric(t("m_macro_auc"), R.fmt_num(ens.get("macro_auc")), help=t("m_macro_auc_help"))
    if "accuracy" in ens:
        cols[1].metric(t("m_accuracy"), R.fmt_pct(ens.get("accuracy")), help=t("m_accuracy_help"))
    cols[2].metric(t("m_n"), fmt_int(evaluation.get("n")))

    st.header(t("h_per_class"))
    st.caption(t("per_class_caption"))
    table = R.per_class_table(evaluation)
    curves_frame = R.per_class_curves(evaluation)
    left, right = st.columns([1, 1])
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#bbbbbb", dash="dot"),
                               name=t("chance"), hoverinfo="skip"))
    for i, row in enumerate(table.itertuples()):
        c = curves_frame[curves_frame["class"] == row[1]]
        fig.add_trace(go.Scatter(x=c["fpr"], y=c["tpr"], mode="lines", line=dict(color=PALETTE[i % len(PALETTE)]),
                                 name=f"{row[1]} — AUC {R.fmt_num(row.auc)} ({R.fmt_ci([row.ci_low, row.ci_high])})"))
    fig.update_xaxes(title=t("x_fpr"), range=[0, 1])
    fig.update_yaxes(title=t("y_tpr"), range=[0, 1.02])
    fig.update_layout(legend=dict(yanchor="bottom", y=0.02, xanchor="right", x=0.99, bgcolor="rgba(255,255,255,0.8)"))
    left.plotly_chart(style(fig, t("fig_roc_per_class"), 470), key="roc_per_class_chart")
    if evaluation.get("confusion_matrix"):
        classes = bundle.classes
        cm = np.asarray(evaluation["confusion_matrix"])
        fig = go.Figure(go.Heatmap(z=cm, x=[t("pred", cls=c) for c in classes], y=[t("true", cls=c) for c in classes],
                                   text=cm, texttemplate="%{text}", textfont=dict(size=16), colorscale="Blues",
                                   showscale=False))
        fig.update_yaxes(autorange="reversed")
        right.plotly_chart(style(fig, t("fig_confusion_multiclass"), 470), key="confusion_chart")

    shown = pd.DataFrame({
        t("col_class"): table["class"], t("col_auc"): table["auc"],
        t("col_ci"): [R.fmt_ci([lo, hi]) for lo, hi in zip(table["ci_low"], table["ci_high"])],
        t("col_support"): table["support"], t("col_threshold"): table["threshold"],
        t("sensitivity"): table["sensitivity"].map(R.fmt_pct), t("specificity"): table["specificity"].map(R.fmt_pct),
        t("ppv"): table["ppv"].map(R.fmt_pct), t("npv"): table["npv"].map(R.fmt_pct)})
    fmt = st.column_config.NumberColumn(format="%.3f")
    st.dataframe(shown, hide_index=True, key="per_class_table",
                 column_config={t("col_auc"): fmt, t("col_threshold"): fmt})
    st.caption(t("per_class_table_caption"))
    members = R.member_per_class_table(evaluation)
    if len(members) > 1:
        st.subheader(t("h_member_per_class"))
        members["model"] = members["model"].map(model_name)
        st.dataframe(members.rename(columns={"model": t("col_model")}), hide_index=True, key="member_per_class_table",
                     column_config={c: fmt for c in members.columns if c != "model"})


# --- training curves (every task) -----------------------------------------------------------------------------------

def training_view():
    history = histories(bundle.name, str(bundle.path / "reports"))
    if history.empty or "val_auc" not in history:
        return
    st.header(t("h_training"))
    st.caption(t("training_caption"))
    members = list(dict.fromkeys(history["member"]))
    colours = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(members)}
    left, right = st.columns(2)
    for col, (metric, train_metric, title, ytitle) in zip(
            (left, right), (("val_auc", "auc", t("fig_training_auc"), "AUC"),
                            ("val_loss", "loss", t("fig_training_loss"), t("y_loss")))):
        if metric not in history:
            continue
        fig = go.Figure()
        for m in members:
            h = history[history["member"] == m]
            fig.add_trace(go.Scatter(x=h["epoch"], y=h[metric], mode="lines+markers", name=f"{m} · {t('validation')}",
                                     line=dict(color=colours[m], width=2.5), legendgroup=m))
            if train_metric in h:
                fig.add_trace(go.Scatter(x=h["epoch"], y=h[train_metric], mode="lines+markers",
                                         name=f"{m} · {t('training')}", legendgroup=m,
                                         line=dict(color=colours[m], dash="dot", width=1.5),
                                         marker=dict(symbol="circle-open", size=7)))
        fig.update_xaxes(title=t("x_epoch"), dtick=1 if history["epoch"].max() <= 15 else None)
        fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.2, xanchor="left", x=0))
        fig.update_yaxes(title=ytitle)
        col.plotly_chart(style(fig, title, 460), key=f"training_{metric}_chart")
    gap = R.overfitting_gap(history)
    if len(gap):
        gap[["val_auc", "train_auc", "gap"]] = gap[["val_auc", "train_auc", "gap"]].round(3) + 0.0  # no "-0.000"
        fmt = st.column_config.NumberColumn(format="%.3f")
        st.dataframe(gap.rename(columns={"member": t("col_model"), "epochs": t("col_epochs"),
                                         "best_epoch": t("col_best_epoch"), "val_auc": t("col_best_val_auc"),
                                         "train_auc": t("col_train_auc"), "gap": t("col_gap")}),
                     hide_index=True, key="training_table",
                     column_config={t("col_best_val_auc"): fmt, t("col_train_auc"): fmt, t("col_gap"): fmt})
        st.caption(t("gap_caption"))


# --- page -----------------------------------------------------------------------------------------------------------

if "threshold" in st.session_state:  # keep the shared threshold alive across pages (widget clean-up)
    st.session_state["threshold"] = st.session_state["threshold"]
bundle = current_bundle()
if bundle is None:
    st.stop()
evaluation = report(bundle.name, "evaluation")
scores = report(bundle.name, "scores")
st.title(t("title"))
if not evaluation:
    st.info(t("no_report"))
    st.stop()
st.markdown(t("intro", model=bundle.title, n=fmt_int(evaluation.get("n")),
              n_val=fmt_int(evaluation.get("n_val"))))
if bundle.task == "binary" and "ensemble" in evaluation and "roc" in evaluation["ensemble"]:
    binary_view(evaluation, scores)
else:
    per_class_view(evaluation)
    training_view()
