"""The Evaluation page's figures: plotly only, built from the bundle's report tables and the page's translator `t`
(no Streamlit calls, no model math). Each function returns one figure; the page decides where it goes."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from model.outputs import bundle_tables as tables
from model.outputs import formatting as F

PALETTE = ["#4C78A8", "#E45756", "#54A24B", "#F58518", "#B279A2", "#72B7B2", "#EECA3B", "#9D755D"]
METRIC_COLOURS = {"sensitivity": "#E45756", "specificity": "#4C78A8", "ppv": "#F58518", "npv": "#54A24B"}
ENSEMBLE_COLOUR = "#1f1f1f"
CHANCE = dict(color="#bbbbbb", dash="dot")
MARKER = dict(size=13, color="#F58518", line=dict(color="black", width=1))
LEGEND_INSIDE = dict(yanchor="bottom", y=0.02, xanchor="right", x=0.99, bgcolor="rgba(255,255,255,0.8)")


def style(fig: go.Figure, title: str, height: int = 400) -> go.Figure:
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=60, b=10), legend_title_text="",
                      hovermode="closest")
    return fig


def model_name(t, model: str) -> str:
    return t("ensemble") if model == "ensemble" else model


def auc_text(r: dict) -> str:
    return f"{F.fmt_num(r.get('auc'))} ({F.fmt_ci(r.get('auc_ci95'))})"


# --- binary ---------------------------------------------------------------------------------------------------------

def roc_and_pr(t, evaluation: dict, point: dict) -> tuple[go.Figure, go.Figure]:
    """Every scorer's ROC and precision-recall curves (the ensemble bold, on top), with the current threshold."""
    scorers = dict(tables.scorers(evaluation))
    colours = {m: ENSEMBLE_COLOUR if m == "ensemble" else PALETTE[i % len(PALETTE)] for i, m in enumerate(scorers)}
    roc = go.Figure()
    roc.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=CHANCE, name=t("chance"), hoverinfo="skip"))
    pr = go.Figure()
    prevalence = evaluation["ensemble"].get("positives", 0) / max(evaluation["ensemble"].get("n", 1), 1)
    pr.add_trace(go.Scatter(x=[0, 1], y=[prevalence, prevalence], mode="lines", name=t("chance"), line=CHANCE,
                            hoverinfo="skip"))
    for model in reversed(list(scorers)):  # the ensemble drawn last, on top
        r, ens = scorers[model], model == "ensemble"
        line = dict(color=colours[model], width=3 if ens else 1.5, dash=None if ens else "dash")
        roc.add_trace(go.Scatter(
            x=r["roc"]["fpr"], y=r["roc"]["tpr"], mode="lines", line=line, customdata=r["roc"].get("threshold"),
            name=f"{model_name(t, model)} — AUC {auc_text(r)}", hovertemplate=t("hover_roc") + "<extra></extra>"))
        pr.add_trace(go.Scatter(
            x=r["pr"]["recall"], y=r["pr"]["precision"], mode="lines", line=line,
            customdata=r["pr"].get("threshold"),
            name=f"{model_name(t, model)} — AP {F.fmt_num(r.get('average_precision'))}",
            hovertemplate=t("hover_pr") + "<extra></extra>"))
    here = t("your_threshold", threshold=F.fmt_num(point["threshold"]))
    roc.add_trace(go.Scatter(x=[1 - point["specificity"]], y=[point["sensitivity"]], mode="markers", marker=MARKER,
                             name=here))
    pr.add_trace(go.Scatter(x=[point["sensitivity"]], y=[point["ppv"]], mode="markers", marker=MARKER, name=here))
    for fig, title, xt, yt in ((roc, t("fig_roc"), t("x_fpr"), t("y_tpr")),
                               (pr, t("fig_pr"), t("x_recall"), t("y_precision"))):
        fig.update_xaxes(title=xt, range=[0, 1], constrain="domain")
        fig.update_yaxes(title=yt, range=[0, 1.02])
        fig.update_layout(legend={**LEGEND_INSIDE, "traceorder": "reversed"})
        style(fig, title, 470)
    return roc, pr


def confusion(t, point: dict, classes: list[str], threshold: float) -> go.Figure:
    """The 2×2 confusion matrix at a threshold, each cell with its share of its true class."""
    z = [[point["tn"], point["fp"]], [point["fn"], point["tp"]]]
    negatives, positives = point["tn"] + point["fp"], point["fn"] + point["tp"]

    def cell(kind: str, total: int, cls: str) -> str:
        share = F.fmt_pct(point[kind] / total) if total else "—"
        note = t("cell_share", share=share, cls=cls)
        return f"{t(kind)}<br><b>{point[kind]}</b><br><span style='font-size:12px'>{note}</span>"

    text = [[cell("tn", negatives, classes[0]), cell("fp", negatives, classes[0])],
            [cell("fn", positives, classes[-1]), cell("tp", positives, classes[-1])]]
    fig = go.Figure(go.Heatmap(z=z, x=[t("pred", cls=c) for c in classes], y=[t("true", cls=c) for c in classes],
                               text=text, texttemplate="%{text}", textfont=dict(size=15), colorscale="Blues",
                               showscale=False, hovertemplate="%{text}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return style(fig, t("fig_confusion", threshold=F.fmt_num(threshold)), 380)


def threshold_markers(t, fig: go.Figure, threshold: float, operating_points: list[dict]):
    for op in operating_points:
        if "threshold" in op:
            fig.add_vline(x=op["threshold"], line=dict(color="#999999", dash="dot", width=1))
    fig.add_vline(x=threshold, line=dict(color="#F58518", width=3),
                  annotation_text=t("your_threshold", threshold=F.fmt_num(threshold)), annotation_position="top")


def sweep_range(p: np.ndarray, threshold: float) -> list[float]:
    """The x range that shows where the scores are, and the threshold."""
    lo, hi = np.quantile(p, [0.005, 0.995]) if len(p) else (0.0, 1.0)
    pad = max((hi - lo) * 0.1, 0.01)
    return [max(0.0, min(lo - pad, threshold - pad)), min(1.0, max(hi + pad, threshold + pad))]


def sweep(t, frame: pd.DataFrame, threshold: float, operating_points: list[dict], x_range) -> go.Figure:
    """Sensitivity, specificity, PPV and NPV over every threshold."""
    fig = go.Figure()
    for metric, colour in METRIC_COLOURS.items():
        fig.add_trace(go.Scatter(x=frame["threshold"], y=frame[metric], mode="lines", name=t(metric),
                                 line=dict(color=colour, width=2),
                                 hovertemplate=f"{t(metric)} %{{y:.1%}} @ %{{x:.3f}}<extra></extra>"))
    threshold_markers(t, fig, threshold, operating_points)
    fig.update_xaxes(title=t("threshold"), range=x_range)
    fig.update_yaxes(title="", tickformat=".0%", range=[0, 1.02])
    return style(fig, t("fig_sweep"), 420)


def distribution(t, y: np.ndarray, p: np.ndarray, classes: list[str], threshold: float,
                 operating_points: list[dict], x_range) -> go.Figure:
    """The test scores of each true class, on a log scale (a confident model piles images at 0 and 1)."""
    labels = np.where(np.asarray(y) == 1, classes[-1], classes[0])
    fig = px.histogram(pd.DataFrame({"p": p, "label": labels}), x="p", color="label", barmode="overlay", opacity=0.6,
                       nbins=60, range_x=x_range, color_discrete_map={classes[0]: PALETTE[0],
                                                                      classes[-1]: PALETTE[1]})
    threshold_markers(t, fig, threshold, operating_points)
    fig.update_xaxes(title=t("x_probability"), range=x_range)
    fig.update_yaxes(title=t("y_images_log"), type="log")
    return style(fig, t("fig_distribution"), 420)


def subtype_sensitivity(t, frame: pd.DataFrame) -> go.Figure:
    """Grouped bars: sensitivity per subtype (columns point, subtype, sensitivity)."""
    fig = px.bar(frame, x="point", y="sensitivity", color="subtype", barmode="group",
                 text=frame["sensitivity"].map(F.fmt_pct), color_discrete_sequence=[PALETTE[1], PALETTE[3], PALETTE[4]],
                 labels={"point": "", "sensitivity": t("sensitivity"), "subtype": ""})
    fig.update_yaxes(tickformat=".0%", range=[0, 1.05])
    return style(fig, t("fig_subtype"), 360)


def reliability(t, calibration: dict) -> go.Figure:
    """The reliability diagram before and after calibration; marker size grows with the images in a bin."""
    bins = tables.reliability_frame(calibration)
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=CHANCE, name=t("perfect_calibration"),
                               hoverinfo="skip"))
    for stage, colour, dash in (("before", "#999999", "dash"), ("after", "#E45756", None)):
        b = bins[bins["stage"] == stage]
        if b.empty:
            continue
        size = 8 + 22 * np.sqrt(b["n"] / max(bins["n"].max(), 1))
        fig.add_trace(go.Scatter(
            x=b["mean_predicted"], y=b["observed"], mode="lines+markers", line=dict(color=colour, dash=dash),
            marker=dict(size=size, color=colour), customdata=b["n"],
            name=t(f"stage_{stage}", ece=F.fmt_num(calibration.get(f"ece_{stage}"))),
            hovertemplate=t("hover_reliability") + "<extra></extra>"))
    fig.update_xaxes(title=t("x_predicted"), range=[0, 1])
    fig.update_yaxes(title=t("y_observed"), range=[0, 1.02])
    fig.update_layout(legend=LEGEND_INSIDE)
    return style(fig, t("fig_reliability"), 440)


# --- multiclass / multilabel ----------------------------------------------------------------------------------------

def per_class_roc(t, evaluation: dict) -> go.Figure:
    table = tables.per_class_table(evaluation)
    curves = tables.per_class_curves(evaluation)
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=CHANCE, name=t("chance"), hoverinfo="skip"))
    for i, row in enumerate(table.itertuples()):
        c = curves[curves["class"] == row[1]]
        fig.add_trace(go.Scatter(x=c["fpr"], y=c["tpr"], mode="lines", line=dict(color=PALETTE[i % len(PALETTE)]),
                                 name=f"{row[1]} — AUC {F.fmt_num(row.auc)} ({F.fmt_ci([row.ci_low, row.ci_high])})"))
    fig.update_xaxes(title=t("x_fpr"), range=[0, 1])
    fig.update_yaxes(title=t("y_tpr"), range=[0, 1.02])
    fig.update_layout(legend=LEGEND_INSIDE)
    return style(fig, t("fig_roc_per_class"), 470)


def confusion_multiclass(t, matrix, classes: list[str]) -> go.Figure:
    cm = np.asarray(matrix)
    fig = go.Figure(go.Heatmap(z=cm, x=[t("pred", cls=c) for c in classes], y=[t("true", cls=c) for c in classes],
                               text=cm, texttemplate="%{text}", textfont=dict(size=16), colorscale="Blues",
                               showscale=False))
    fig.update_yaxes(autorange="reversed")
    return style(fig, t("fig_confusion_multiclass"), 470)


# --- training curves ------------------------------------------------------------------------------------------------

def training_curve(t, history: pd.DataFrame, metric: str, train_metric: str, title: str, ytitle: str) -> go.Figure:
    """One validation metric (solid) and its training counterpart (dotted) per member and epoch."""
    members = list(dict.fromkeys(history["member"]))
    colours = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(members)}
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
    return style(fig, title, 460)


def input_size(t, table: pd.DataFrame) -> go.Figure:
    """AUC per input size (internal test with its 95% CI, val, external where scored) on the left axis, one image's
    latency (bars) on the right."""
    from plotly.subplots import make_subplots

    fig = make_subplots(specs=[[{"secondary_y": True}]])
    x = [str(s) for s in table["size"]]
    fig.add_trace(go.Bar(x=x, y=table["latency_ms"], name=t("size_latency"), marker_color="#d9d9d9",
                         opacity=0.8), secondary_y=True)
    fig.add_trace(go.Scatter(x=x, y=table["test_auc"], mode="lines+markers", name=t("size_test_auc"),
                             line=dict(color=ENSEMBLE_COLOUR, width=2.5),
                             error_y=dict(type="data", symmetric=False, array=table["ci_high"] - table["test_auc"],
                                          arrayminus=table["test_auc"] - table["ci_low"])), secondary_y=False)
    fig.add_trace(go.Scatter(x=x, y=table["val_auc"], mode="lines+markers", name=t("size_val_auc"),
                             line=dict(color=PALETTE[0], dash="dot")), secondary_y=False)
    if table["external_auc"].notna().any():
        fig.add_trace(go.Scatter(x=x, y=table["external_auc"], mode="lines+markers", name=t("size_external_auc"),
                                 line=dict(color=PALETTE[1], dash="dash")), secondary_y=False)
    fig.update_xaxes(title=t("x_input_size"), type="category")
    fig.update_yaxes(title="AUC", secondary_y=False)
    fig.update_yaxes(title=t("y_latency"), secondary_y=True, rangemode="tozero", showgrid=False)
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.2, xanchor="left", x=0))
    return style(fig, t("fig_input_size"), 440)
