"""Evaluation page: how well the selected model did on its internal test split, from reports/evaluation.json and
the per-image scores in reports/scores.json; the threshold views use model.core.metrics on those stored scores.
Grad-CAM of the mistakes runs only on a button press. The figures are built in pages/lib/charts.py."""
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from model.core.metrics import rates
from model.core.types import Task
from model.outputs import bundle_tables as tables
from model.outputs import data_folder
from model.outputs import formatting as F
from pages.lib import charts
from pages.lib.common import bundle_report, current_bundle, get_ensemble, get_explainer, ready_to_predict, threshold_for
from pages.lib.evidence_view import lead
from pages.lib.router import take_over
from pages.lib.sites_view import active_site, side_by_side, site_caption, site_check, site_numbers
from pages.lib.ui import data_dir_input, fmt_int, tr

take_over()  # a deep link on a fresh server: hand over to app.py's navigation (pages.lib.router)

GALLERY_SIZE = 6

t = tr("evaluation")


def site_scores(scores: dict | None) -> dict | None:
    """The bundle's test scores on the active site profile's scale (its recalibration), so the shared threshold
    means the same here as in Diagnose; unchanged without a profile."""
    if not scores or SITE is None:
        return scores
    return {**scores, "ensemble": SITE.calibrate(np.asarray(scores["ensemble"], float)).tolist()}


@st.cache_data(show_spinner=False)
def _test_scores(bundle_name: str, site_sha: str | None):
    return tables.binary_scores(site_scores(bundle_report(bundle_name, "scores")))


def test_scores(bundle_name: str):
    """(y, ensemble probability) of the test images, from the bundle's scores.json (on the active profile's
    scale)."""
    return _test_scores(bundle_name, SITE.data["sha256"] if SITE else None)


@st.cache_data(show_spinner=False)
def _sweep(bundle_name: str, site_sha: str | None) -> pd.DataFrame:
    return tables.threshold_sweep(*test_scores(bundle_name))


def sweep(bundle_name: str) -> pd.DataFrame:
    return _sweep(bundle_name, SITE.data["sha256"] if SITE else None)


@st.cache_data(show_spinner=False)
def histories(bundle_name: str, reports_dir: str) -> pd.DataFrame:
    from pages.lib.common import load_bundles

    return tables.read_histories(reports_dir, read=load_bundles()[0][bundle_name].report_bytes)


def set_threshold(value: float):
    st.session_state["threshold"] = float(value)


def rule_text(p: dict) -> str:
    target = F.fmt_pct(p.get("target"), 0) if F.is_number(p.get("target")) else ""
    return t(f"rule_{p.get('rule')}", target=target) if p.get("rule") else ""


# --- binary ---------------------------------------------------------------------------------------------------------

def headline(evaluation: dict, bundle, threshold: float):
    """The most external evidence first (pages.lib.evidence_view), then the internal test split's own figures,
    labelled as the training collection."""
    lead(bundle, SITE, threshold)
    e = evaluation["ensemble"]
    st.subheader(t("h_internal"))
    cols = st.columns([1, 1.7, 1, 1, 0.9])  # the interval needs the room of two numbers
    cols[0].metric(t("m_auc"), F.fmt_num(e.get("auc")), help=t("m_auc_help"))
    cols[1].metric(t("m_auc_ci"), F.fmt_ci(e.get("auc_ci95")), help=t("m_auc_ci_help"))
    cols[2].metric(t("m_ap"), F.fmt_num(e.get("average_precision")), help=t("m_ap_help"))
    cal = e.get("calibration") or {}
    cols[3].metric(t("m_ece"), F.fmt_num(cal.get("ece_after")), help=t("m_ece_help"))
    cols[4].metric(t("m_n"), fmt_int(evaluation.get("n")),
                   help=t("m_n_help", positives=fmt_int(e.get("positives")), cls=bundle.classes[-1]))


def curves(evaluation: dict, bundle, point: dict):
    st.header(t("h_curves"))
    st.caption(t("curves_caption"))
    roc, pr = charts.roc_and_pr(t, evaluation, point)
    left, right = st.columns(2)
    left.plotly_chart(roc, key="roc_chart")
    right.plotly_chart(pr, key="pr_chart")

    table = tables.member_table(evaluation, bundle.manifest)
    table["model"] = table["model"].map(lambda m: charts.model_name(t, m))
    table["ci"] = [F.fmt_ci([lo, hi]) for lo, hi in zip(table["ci_low"], table["ci_high"])]
    columns = ["model", "auc", "ci", "average_precision", "val_auc", "temperature"]
    if table["bias"].notna().any():
        columns.append("bias")
    for column in ("auc", "average_precision", "val_auc", "temperature", "bias"):
        table[column] = table[column].map(F.fmt_num)
    table = table[columns].rename(columns={
        "model": t("col_model"), "auc": t("col_auc"), "ci": t("col_ci"), "average_precision": t("col_ap"),
        "val_auc": t("col_val_auc"), "temperature": t("col_temperature"), "bias": t("col_bias")})
    st.dataframe(table, hide_index=True, key="member_table")
    st.caption(t("member_table_caption"))


def threshold_controls(bundle) -> float:
    threshold = threshold_for(bundle, SITE)
    st.header(t("h_threshold"))
    st.caption(t("threshold_caption"))
    st.session_state["evaluation_threshold"] = threshold
    st.slider(t("threshold"), 0.0, 1.0, step=0.001, format="%.3f", key="evaluation_threshold",
              help=t("threshold_help"),
              on_change=lambda: set_threshold(st.session_state["evaluation_threshold"]))
    points = [p for p in (SITE.operating_points if SITE else bundle.operating_points) if "threshold" in p]
    if points:
        cols = st.columns(len(points) + 1)
        cols[0].markdown(f"**{t('jump_to')}**")
        for col, p in zip(cols[1:], points):
            col.button(f"{t.name('op', p['name'])} ({F.fmt_num(p['threshold'])})", key=f"op_{p['name']}",
                       on_click=set_threshold, args=(p["threshold"],), help=rule_text(p),
                       type="primary" if abs(p["threshold"] - threshold) < 1e-12 else "secondary")
    return threshold


def confusion_view(point: dict, threshold: float, scores_y: np.ndarray, classes: list[str]):
    left, right = st.columns([1, 1])
    left.plotly_chart(charts.confusion(t, point, classes, threshold), key="confusion_chart")
    with right:
        cols = st.columns(2)
        cols[0].metric(t("sensitivity"), F.fmt_pct(point["sensitivity"]),
                       help=t("sensitivity_help", tp=point["tp"], fn=point["fn"]))
        cols[1].metric(t("specificity"), F.fmt_pct(point["specificity"]),
                       help=t("specificity_help", tn=point["tn"], fp=point["fp"]))
        cols = st.columns(2)
        cols[0].metric(t("ppv"), F.fmt_pct(point["ppv"]), help=t("ppv_help", tp=point["tp"], fp=point["fp"]))
        cols[1].metric(t("npv"), F.fmt_pct(point["npv"]), help=t("npv_help", tn=point["tn"], fn=point["fn"]))
        prevalence = float(np.mean(scores_y)) if len(scores_y) else float("nan")
        st.caption(t("sample_prevalence", prevalence=F.fmt_pct(prevalence), cls=classes[-1]))
        clinic = st.session_state.get("prevalence")
        if F.is_number(clinic) and 0 < clinic < 1 and abs(clinic - prevalence) > 0.005:
            adjusted = rates({k: point[k] for k in ("tp", "fp", "tn", "fn")}, clinic)
            st.caption(t("clinic_prevalence", prevalence=F.fmt_pct(clinic), ppv=F.fmt_pct(adjusted["ppv"]),
                         npv=F.fmt_pct(adjusted["npv"])))


def sweep_view(bundle, threshold: float, y: np.ndarray, p: np.ndarray):
    st.subheader(t("h_sweep"))
    st.caption(t("sweep_caption"))
    x_range = charts.sweep_range(p, threshold)
    points = bundle.operating_points
    left, right = st.columns(2)
    left.plotly_chart(charts.sweep(t, sweep(bundle.name), threshold, points, x_range), key="sweep_chart")
    right.plotly_chart(charts.distribution(t, y, p, bundle.classes, threshold, points, x_range),
                       key="distribution_chart")
    st.caption(t("distribution_caption"))


def operating_points_view(bundle, evaluation: dict):
    table = tables.operating_point_table(bundle.manifest, evaluation)
    if table.empty:
        return
    st.header(t("h_operating_points"))
    st.caption(t("operating_points_caption"))
    points = {p["name"]: p for p in bundle.operating_points}
    shown = pd.DataFrame({
        t("col_rule"): table["name"].map(lambda n: rule_text(points[n])),
        t("col_threshold"): table["threshold"].map(F.fmt_num),
        t("col_val_sens"): table["val_sensitivity"].map(F.fmt_pct),
        t("col_val_spec"): table["val_specificity"].map(F.fmt_pct),
        t("col_test_sens"): table["test_sensitivity"].map(F.fmt_pct),
        t("col_test_spec"): table["test_specificity"].map(F.fmt_pct),
        t("col_test_ppv"): table["test_ppv"].map(F.fmt_pct),
        t("col_test_npv"): table["test_npv"].map(F.fmt_pct),
        t("col_test_counts"): [f"{tp} / {fp} / {tn} / {fn}" for tp, fp, tn, fn in
                               zip(table["test_tp"], table["test_fp"], table["test_tn"], table["test_fn"])],
    })
    shown.index = [t.name("op", n) for n in table["name"]]
    st.table(shown.T.rename_axis(t("col_point"), axis=1))


def subtype_view(evaluation: dict, scores: dict, threshold: float):
    table = tables.subtype_table(evaluation)
    current = tables.subtype_sensitivity(scores, threshold) if scores else {}
    if table.empty and not current:
        return
    st.subheader(t("h_subtype"))
    rows = [{"point": t.name("op", r.operating_point), "subtype": t.name("subtype", r.subtype),
             "sensitivity": r.sensitivity} for r in table.itertuples()]
    rows += [{"point": t("your_threshold", threshold=F.fmt_num(threshold)), "subtype": t.name("subtype", s),
              "sensitivity": v} for s, v in current.items()]
    st.plotly_chart(charts.subtype_sensitivity(t, pd.DataFrame(rows)), key="subtype_chart")
    st.caption(t("subtype_caption"))


def calibration_view(evaluation: dict, bundle):
    options = [m for m, r in tables.scorers(evaluation) if r.get("calibration")]
    if not options:
        return
    st.header(t("h_calibration"))
    st.caption(t("calibration_caption"))
    chosen = st.selectbox(t("calibration_model"), options, format_func=lambda m: charts.model_name(t, m),
                          key="calibration_model")
    cal = dict(tables.scorers(evaluation))[chosen]["calibration"]
    left, right = st.columns([3, 2])
    left.plotly_chart(charts.reliability(t, cal), key="reliability_chart")
    with right:
        st.metric(t("ece_before"), F.fmt_num(cal.get("ece_before")))
        st.metric(t("ece_after"), F.fmt_num(cal.get("ece_after")))
        fitted = tables.calibration_text(bundle.manifest.get("calibration") or {})
        if fitted:
            st.caption(t("temperatures", values=fitted))


def error_gallery(bundle, scores: dict, threshold: float):
    st.header(t("h_errors"))
    st.caption(t("errors_caption", n=GALLERY_SIZE))
    if not scores or not scores.get("path"):
        st.info(t("no_paths"))
        return
    data_dir = data_dir_input(t, "evaluation_data_dir")
    if not data_folder.data_dir_ok(data_dir):
        st.info(t("data_dir_missing"))
        return
    if st.button(t("show_errors", threshold=F.fmt_num(threshold)), key="show_errors", type="primary") \
            and ready_to_predict(bundle):
        with st.spinner(t("computing_errors")):
            found = tables.errors(scores, threshold, GALLERY_SIZE)
            point = tables.at_threshold(*test_scores(bundle.name), threshold)
            explainer = get_explainer(bundle.name)
            st.session_state["evaluation_errors"] = {
                "bundle": bundle.name, "threshold": threshold, "totals": {k: point[k] for k in ("fp", "fn")},
                **{kind: data_folder.explained(items, data_dir, explainer, bundle.classes[-1])
                   for kind, items in found.items()}}
    shown = st.session_state.get("evaluation_errors")
    if not shown or shown["bundle"] != bundle.name:
        return
    if abs(shown["threshold"] - threshold) > 1e-12:
        st.warning(t("errors_stale", threshold=F.fmt_num(shown["threshold"])))
    for kind in ("fp", "fn"):
        total = shown["totals"][kind]
        st.subheader(t(f"h_{kind}" if total > len(shown[kind]) else f"h_{kind}_all", n=len(shown[kind]),
                       total=fmt_int(total)))
        if not shown[kind]:
            st.caption(t(f"none_{kind}"))
            continue
        for col, item in zip(st.columns(GALLERY_SIZE), shown[kind]):
            caption = t("error_caption", p=F.fmt_num(item["probability"]), subtype=t.name("subtype", item["subtype"]),
                        file=Path(item["path"]).name)
            if item["image"] is None:
                col.caption(f"{caption} — {t('unreadable')}")
            else:
                col.image(item["image"], caption=caption, width="stretch")


def binary_view(bundle, evaluation: dict, scores: dict | None):
    threshold = threshold_for(bundle, SITE)
    headline(evaluation, bundle, threshold)
    if scores:
        y, p = test_scores(bundle.name)
    else:
        y, p = np.array([], int), np.array([], float)
    point = tables.at_threshold(y, p, threshold) if scores else None
    if point:
        point["threshold"] = threshold
        curves(evaluation, bundle, point)
        threshold = threshold_controls(bundle)
        confusion_view(point, threshold, y, bundle.classes)
        side_by_side(bundle, threshold, SITE, key="ev_sbs")
        sweep_view(bundle, threshold, y, p)
    else:
        curves(evaluation, bundle, {"threshold": threshold, "sensitivity": np.nan, "specificity": np.nan,
                                    "ppv": np.nan})
        st.info(t("no_scores"))
    operating_points_view(bundle, evaluation)
    subtype_view(evaluation, scores, threshold)
    calibration_view(evaluation, bundle)
    training_view(bundle)
    input_size_view(bundle)
    if scores:
        error_gallery(bundle, scores, threshold)


# --- multiclass / multilabel ----------------------------------------------------------------------------------------

def per_class_view(evaluation: dict, bundle):
    ens = evaluation.get("ensemble") or {}
    cols = st.columns(3)
    cols[0].metric(t("m_macro_auc"), F.fmt_num(ens.get("macro_auc")), help=t("m_macro_auc_help"))
    if "accuracy" in ens:
        cols[1].metric(t("m_accuracy"), F.fmt_pct(ens.get("accuracy")), help=t("m_accuracy_help"))
    cols[2].metric(t("m_n"), fmt_int(evaluation.get("n")))

    st.header(t("h_per_class"))
    st.caption(t("per_class_caption"))
    left, right = st.columns([1, 1])
    left.plotly_chart(charts.per_class_roc(t, evaluation), key="roc_per_class_chart")
    if evaluation.get("confusion_matrix"):
        right.plotly_chart(charts.confusion_multiclass(t, evaluation["confusion_matrix"], bundle.classes),
                           key="confusion_chart")

    table = tables.per_class_table(evaluation)
    shown = pd.DataFrame({
        t("col_class"): table["class"], t("col_auc"): table["auc"],
        t("col_ci"): [F.fmt_ci([lo, hi]) for lo, hi in zip(table["ci_low"], table["ci_high"])],
        t("col_support"): table["support"], t("col_threshold"): table["threshold"],
        t("sensitivity"): table["sensitivity"].map(F.fmt_pct), t("specificity"): table["specificity"].map(F.fmt_pct),
        t("ppv"): table["ppv"].map(F.fmt_pct), t("npv"): table["npv"].map(F.fmt_pct)})
    fmt = st.column_config.NumberColumn(format="%.3f")
    st.dataframe(shown, hide_index=True, key="per_class_table",
                 column_config={t("col_auc"): fmt, t("col_threshold"): fmt})
    st.caption(t("per_class_table_caption"))
    members = tables.member_per_class_table(evaluation)
    if len(members) > 1:
        st.subheader(t("h_member_per_class"))
        members["model"] = members["model"].map(lambda m: charts.model_name(t, m))
        st.dataframe(members.rename(columns={"model": t("col_model")}), hide_index=True, key="member_per_class_table",
                     column_config={c: fmt for c in members.columns if c != "model"})


# --- training curves (every task) -----------------------------------------------------------------------------------

def training_view(bundle):
    history = histories(bundle.name, str(bundle.path / "reports"))
    if history.empty or "val_auc" not in history:
        return
    st.header(t("h_training"))
    st.caption(t("training_caption"))
    left, right = st.columns(2)
    for col, (metric, train_metric, title, ytitle) in zip(
            (left, right), (("val_auc", "auc", t("fig_training_auc"), "AUC"),
                            ("val_loss", "loss", t("fig_training_loss"), t("y_loss")))):
        if metric in history:
            col.plotly_chart(charts.training_curve(t, history, metric, train_metric, title, ytitle),
                             key=f"training_{metric}_chart")
    gap = tables.overfitting_gap(history)
    if len(gap):
        gap[["val_auc", "train_auc", "gap"]] = gap[["val_auc", "train_auc", "gap"]].round(3) + 0.0  # no "-0.000"
        fmt = st.column_config.NumberColumn(format="%.3f")
        st.dataframe(gap.rename(columns={"member": t("col_model"), "epochs": t("col_epochs"),
                                         "best_epoch": t("col_best_epoch"), "val_auc": t("col_best_val_auc"),
                                         "train_auc": t("col_train_auc"), "gap": t("col_gap")}),
                     hide_index=True, key="training_table",
                     column_config={t("col_best_val_auc"): fmt, t("col_train_auc"): fmt, t("col_gap"): fmt})
        st.caption(t("gap_caption"))


# --- input size (training.size_study) ------------------------------------------------------------------------------

def input_size_view(bundle):
    """What input size costs: one member, one recipe, several sizes (reports/input-size.json), and what it means."""
    report = bundle_report(bundle.name, "input-size")
    if not report:
        return
    table = tables.input_size_table(report)
    if table.empty:
        return
    st.header(t("h_input_size"))
    st.caption(t("input_size_caption", member=(report.get("rows") or [{}])[0].get("member", "?")))
    verdict = tables.input_size_verdict(table)
    if verdict:
        text = t("size_enough", size=verdict["enough"], val_auc=F.fmt_num(verdict["enough_val_auc"]),
                 best=verdict["best"], best_val_auc=F.fmt_num(verdict["best_val_auc"]),
                 tolerance=F.fmt_num(verdict["tolerance"]))
        if "versus_best" in verdict:
            b = verdict["versus_best"]
            text += " " + t("size_versus_best", size=b["size"], auc=F.fmt_num(b["test_auc_loss"]),
                            points=F.fmt_num(100 * b["accuracy_loss"], 1), speedup=F.fmt_num(b["speedup"], 1))
            if F.is_number(b["external_auc"]) and F.is_number(b["best_external_auc"]):
                text += " " + t("size_versus_best_external", auc=F.fmt_num(b["external_auc"]),
                                best_auc=F.fmt_num(b["best_external_auc"]), size=b["size"])
        if "smaller" in verdict:
            s = verdict["smaller"]
            text += " " + t("size_smaller_loses", size=s["size"], auc=F.fmt_num(s["test_auc_loss"]),
                            points=F.fmt_num(100 * s["accuracy_loss"], 1), speedup=F.fmt_num(s["speedup"], 1))
        if "largest" in verdict:
            g = verdict["largest"]
            text += " " + t("size_larger_gains", size=g["size"], auc=F.fmt_num(g["test_auc_gain"]),
                            slowdown=F.fmt_num(g["slowdown"], 1))
        st.markdown(text)
    three = tables.three_class_size_verdict(table, verdict["enough"] if verdict else None)
    if three:
        text = t("size_three_class", size=three["best"], val_acc=F.fmt_pct(three["best_val_accuracy"]),
                 test_acc=F.fmt_pct(three["best_test_accuracy"]), bvv=F.fmt_num(three["best_test_bvv_auc"]))
        if "binary_enough" in three:
            e = three["binary_enough"]
            text += " " + t("size_three_class_binary_enough", size=e["size"], best=three["best"],
                            val_points=F.fmt_delta(100 * e["val_accuracy_change"], 1),
                            test_points=F.fmt_delta(100 * e["test_accuracy_change"], 1),
                            bvv=F.fmt_delta(e["test_bvv_auc_change"]))
        elif verdict and verdict["enough"] == three["best"]:
            text += " " + t("size_three_class_same")
        st.markdown(text)
    st.plotly_chart(charts.input_size(t, table), key="input_size_chart")
    fmt = st.column_config.NumberColumn(format="%.3f")
    shown = pd.DataFrame({
        t("col_input_size"): [f"{s} × {s}" for s in table["size"]], t("col_params"): table["params"],
        t("col_val_auc"): table["val_auc"], t("col_auc"): table["test_auc"],
        t("col_ci"): [F.fmt_ci([lo, hi]) for lo, hi in zip(table["ci_low"], table["ci_high"])],
        t("col_balanced_accuracy"): table["test_accuracy"].map(F.fmt_pct),
        t("sensitivity"): table["sensitivity"].map(F.fmt_pct), t("specificity"): table["specificity"].map(F.fmt_pct),
        t("col_latency"): table["latency_ms"].map(lambda v: F.fmt_num(v, 1)),
        t("col_external_auc"): table["external_auc"],
        t("col_external_accuracy"): table["external_accuracy"].map(F.fmt_pct)})
    st.dataframe(shown, hide_index=True, key="input_size_table",
                 column_config={t("col_val_auc"): fmt, t("col_auc"): fmt, t("col_external_auc"): fmt})
    st.caption(t("input_size_table_caption"))
    if three:
        st.dataframe(pd.DataFrame({
            t("col_input_size"): [f"{s} × {s}" for s in table["size"]],
            t("col_val_3class_accuracy"): table["val_3class_accuracy"].map(F.fmt_pct),
            t("col_val_bvv_auc"): table["val_bacterial_vs_viral_auc"],
            t("col_test_3class_accuracy"): table["test_3class_accuracy"].map(F.fmt_pct),
            t("col_test_bvv_auc"): table["test_bacterial_vs_viral_auc"],
            t("col_external_3class_accuracy"): table["external_3class_accuracy"].map(F.fmt_pct)}),
            hide_index=True, key="input_size_three_class_table",
            column_config={t("col_val_bvv_auc"): fmt, t("col_test_bvv_auc"): fmt})
        st.caption(t("input_size_three_class_caption"))


# --- page -----------------------------------------------------------------------------------------------------------

if "threshold" in st.session_state:  # keep the shared threshold alive across pages (widget clean-up)
    st.session_state["threshold"] = st.session_state["threshold"]
bundle = current_bundle()
if bundle is None:
    st.stop()
evaluation = bundle_report(bundle.name, "evaluation")
SITE = active_site(bundle)
scores = site_scores(bundle_report(bundle.name, "scores"))
st.title(t("title"))
site_caption(SITE)
if not evaluation:
    st.info(t("no_report"))
    st.stop()
st.markdown(t("intro", model=bundle.title, n=fmt_int(evaluation.get("n")),
              n_val=fmt_int(evaluation.get("n_val"))))
if bundle.task == Task.BINARY and "ensemble" in evaluation and "roc" in evaluation["ensemble"]:
    binary_view(bundle, evaluation, scores)
else:
    site_numbers(bundle, SITE)
    if SITE is not None:  # what follows is the model as shipped, on the training collection's own test split
        st.subheader(t("h_internal"), divider="gray")
    per_class_view(evaluation, bundle)
    training_view(bundle)
    input_size_view(bundle)
site_check(bundle, get_ensemble)
