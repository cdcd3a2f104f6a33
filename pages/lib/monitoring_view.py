"""The Monitoring page's drawing: the report of model.store.monitor for a period (volume, guard rates, drift,
live performance, alarms), the refit of a site profile from the record, and the period's audit extract. The
numbers all come from model/store; this module only draws.

Session-state keys: "mon_period" (the date range), "mon_refit_name" / "mon_refit_replace" (the refit form),
"mon_refit_message" (its outcome, shown once).
"""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from model.outputs.safe_text import md_escape
from pages.lib.ui import show_outcome, tr

PERIOD_COLOUR, REFERENCE_COLOUR = "#E45756", "#4C78A8"
RATES = ("sensitivity", "specificity", "ppv", "npv", "agreement", "auc", "ece")


def _pct(value) -> str:
    return "—" if value is None else f"{value:.1%}"


def volume_figure(report: dict, t) -> go.Figure:
    counts = report["volume"]["counts"]
    fig = go.Figure(go.Bar(x=list(counts), y=list(counts.values()), marker_color=REFERENCE_COLOUR,
                           hovertemplate="%{x}: %{y}<extra></extra>"))
    # days and weeks as categories: on a date axis one day's bar is a millisecond wide, i.e. invisible
    fig.update_layout(title=t(f"volume_{report['volume']['by']}"), height=280, margin=dict(l=10, r=10, t=40, b=10),
                      yaxis=dict(title=t("results")), xaxis=dict(type="category"))
    return fig


def drift_figure(drift: dict, t) -> go.Figure:
    """This period's score histogram against the reference's (shares per bin)."""
    h = drift["histogram"]
    centres = [(a + b) / 2 for a, b in zip(h["edges"][:-1], h["edges"][1:])]
    fig = go.Figure()
    fig.add_bar(x=centres, y=h["reference"], name=t("reference_scores"), marker_color=REFERENCE_COLOUR, opacity=0.6)
    fig.add_bar(x=centres, y=h["period"], name=t("period_scores"), marker_color=PERIOD_COLOUR, opacity=0.6)
    fig.update_layout(barmode="overlay", height=300, margin=dict(l=10, r=10, t=40, b=10),
                      title=t("drift_figure"), legend=dict(orientation="h", y=-0.25),
                      xaxis=dict(title=t("score"), range=[0, 1]), yaxis=dict(title=t("share"), tickformat=".0%"))
    return fig


def draw_alarms(report: dict, t) -> None:
    if not report["alarms"]:
        st.success(t("no_alarms"), icon=":material/check_circle:")
    for alarm in report["alarms"]:
        st.error(f"**{md_escape(alarm['code'])}** — {md_escape(alarm['message'])}", icon=":material/notifications:")


def draw_guards(report: dict, t) -> None:
    rows = []
    for code, rate in report["guards"].items():
        check = report["guard_checks"].get(code, {})
        rows.append({t("col_code"): code, t("col_rate"): rate, t("col_reference"): check.get("reference"),
                     t("col_reference_source"): check.get("reference_source", ""),
                     t("col_alarm"): bool(check.get("alarm"))})
    if rows:
        st.dataframe(pd.DataFrame(rows), hide_index=True, key="mon_guards", column_config={
            t("col_rate"): st.column_config.NumberColumn(format="percent"),
            t("col_reference"): st.column_config.NumberColumn(format="percent")})


def draw_drift(report: dict, t) -> None:
    drift = report.get("drift")
    if not drift:
        return
    st.caption(t("drift_caption", reference=md_escape(drift["reference"] or t("none")), n=drift["n_reference"],
                 scale=md_escape(drift["scale"]), rule=md_escape(drift["rule"])))
    if drift["psi"] is None:
        st.info(drift.get("note", ""), icon=":material/info:")
        return
    a, b, c = st.columns(3)
    a.metric("PSI", f"{drift['psi']:.3f}")
    b.metric(t("ks_p"), f"{drift['ks_p']:.3g}")
    c.metric(t("drift_alarm"), t("yes") if drift["alarm"] else t("no"))
    st.plotly_chart(drift_figure(drift, t), key="mon_drift", config={"displayModeBar": False})


def draw_performance(report: dict, bundle, t) -> None:
    performance = report.get("performance")
    if not performance:
        return
    point = performance["point"]
    st.caption(t("performance_caption", point=point["name"] or t("custom"), threshold=point["threshold"],
                 source=md_escape(point["source"]), n=performance["n_confirmed"], unsure=performance["n_unsure"]))
    if performance["status"] != "ok":
        st.info(t("too_few", n=performance["n_confirmed"], minimum=performance["minimum"]["confirmed"],
                  per_class=performance["minimum"]["per_class"], pos=performance["positives"],
                  neg=performance["negatives"]), icon=":material/hourglass_empty:")
        return
    reference = performance.get("reference") or {}
    rows = []
    for rate in RATES:
        value = performance[rate]
        ref = reference.get(rate) or {}
        rows.append({t("col_measure"): t(f"m_{rate}"), t("col_value"): value["value"],
                     t("col_ci"): "–".join(f"{v:.3f}" for v in value["ci95"]) if value["ci95"] else "",
                     t("col_n"): value["n"],
                     t("col_in_use"): ref.get("value"),
                     t("col_in_use_ci"): "–".join(f"{v:.3f}" for v in ref["ci95"]) if ref.get("ci95") else ""})
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="mon_performance", column_config={
        t("col_value"): st.column_config.NumberColumn(format="%.3f"),
        t("col_in_use"): st.column_config.NumberColumn(format="%.3f")})
    if reference:
        st.caption(t("in_use_source", source=md_escape(reference["source"])))


# ---------------------------------------------------------------------------------------------------------------
# Refit a site profile from the record
# ---------------------------------------------------------------------------------------------------------------
def _refit(store, bundle, since, until):
    from model.sites import profiles as sites
    from model.store.db import StoreError
    from model.store.sample import records_sample

    t = tr("monitoring")
    name = (st.session_state.get("mon_refit_name") or "").strip()
    try:
        sites.check_name(name)
        replace = bool(st.session_state.get("mon_refit_replace"))
        if sites.profile_path(name).exists() and not replace:
            raise sites.SiteError("exists", t("refit_exists", name=name))
        scored, span = records_sample(store, bundle, since, until)
        profile = sites.fit(scored, bundle, name, records=span)
        path = sites.save(profile, force=replace)
        st.session_state["mon_refit_message"] = ("ok", t("refit_saved", name=name, path=path, n=scored.n),
                                                 sites.summary_lines(profile))
    except (sites.SiteError, StoreError) as e:
        st.session_state["mon_refit_message"] = ("error", t("refit_failed", message=md_escape(e.message)), None)


def refit_section(store, bundle, since, until) -> None:
    from model.core.types import Task
    from model.sites import profiles as sites

    t = tr("monitoring")
    st.subheader(t("h_refit"), divider="gray")
    if bundle.task != Task.BINARY:
        st.info(t("binary_only"))
        return
    if not sites.sites_writable():
        st.caption(t("refit_unavailable", folder=md_escape(sites.sites_dir())))
        return
    if sites.signature_required():
        st.caption(t("refit_needs_signature"))
        return
    st.caption(t("refit_intro", folds=sites.FOLDS))
    left, right = st.columns([3, 2], vertical_alignment="bottom")
    left.text_input(t("refit_name"), key="mon_refit_name", max_chars=64)
    right.checkbox(t("refit_replace"), key="mon_refit_replace")
    st.button(t("refit_button"), key="mon_refit", on_click=_refit, args=(store, bundle, since, until),
              disabled=not (st.session_state.get("mon_refit_name") or "").strip(), icon=":material/tune:")
    show_outcome("mon_refit_message")
