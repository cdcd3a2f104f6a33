"""Site profiles in the app: the sidebar's active profile, the evidence behind Diagnose's live rates, internal test
and external data side by side, and "Check the model on your own images" (upload → report → save as profile).

Session-state keys: "site" (the active profile's name, or None), "site_check" (the last uploaded labelled set,
scored), "site_save_pending" / "site_save_message" (the save-and-confirm step). The numbers come from
model.sites.profiles and model.core.metrics; this module only draws. Uploads stay in memory; the only file
written is a saved profile.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from model.core import metrics as M
from model.core.types import Task
from model.outputs.safe_text import md_escape
from model.sites import profiles as sites
from pages.lib.ui import UPLOAD_TYPES, show_outcome, tr

COLOURS = {"internal": "#4C78A8", "external": "#E45756", "site": "#54A24B"}
ORDER = ("internal", "external", "site")
SITE_TASKS = (Task.BINARY, Task.MULTICLASS)  # one class per image; multi-label bundles have no site profiles


# ---------------------------------------------------------------------------------------------------------------
# The active profile
# ---------------------------------------------------------------------------------------------------------------
def active_site(bundle) -> sites.SiteProfile | None:
    """The verified profile chosen in the sidebar for this bundle, or None (as shipped)."""
    name = st.session_state.get("site")
    if not name or bundle is None or bundle.task not in SITE_TASKS:
        return None
    try:
        return sites.load(name, bundle)
    except sites.SiteError as e:
        st.warning(tr("sites")("site_refused", name=md_escape(name), message=md_escape(e.message)),
                   icon=":material/warning:")
        return None


def sidebar_site(bundle):
    """The sidebar control that shows and switches the active profile (none / NAME)."""
    if bundle is None or bundle.task not in SITE_TASKS:
        return
    t = tr("sites")
    found = sites.list_profiles(bundle=bundle)
    options = [None] + [p["name"] for p in found if p["ok"]]
    if st.session_state.get("site") not in options:
        st.session_state["site"] = None
    st.sidebar.selectbox(t("site"), options, key="site", help=t("site_help"),
                         format_func=lambda n: t("site_none") if n is None else n)
    for p in found:
        if not p["ok"]:
            st.sidebar.caption(t("site_refused", name=md_escape(p["name"]), message=md_escape(p["message"])))


def site_caption(site: sites.SiteProfile | None):
    """One line saying which profile the results on this page use."""
    t = tr("sites")
    if site is None:
        st.caption(t("site_not_in_use"))
    else:
        st.caption(t("site_in_use", name=site.name, n=site.data["sample"]["n"], created=site.data["created"][:10]))


# ---------------------------------------------------------------------------------------------------------------
# Evidence sets
# ---------------------------------------------------------------------------------------------------------------
@st.cache_data(show_spinner=False, max_entries=16)
def _evidence(bundle_name: str, site_sha: str | None, _bundle, _site) -> dict:
    return sites.evidence_sets(_bundle, _site)


def evidence(bundle, site) -> dict:
    return _evidence(bundle.name, site.data["sha256"] if site else None, bundle, site)


def _set_label(t, key: str, ev: dict) -> str:
    return t(f"evidence_{key}", name=ev["dataset"], dataset=ev["dataset"], n=ev["n"])


def evidence_choice(bundle, site, key: str = "evidence") -> dict | None:
    """The reader's choice of evidence for the live rates (most external first); {"key", "y", "score", "n",
    "dataset"} or None when the bundle has no per-image scores."""
    sets = evidence(bundle, site)
    if not sets:
        return None
    t = tr("sites")
    keys = list(sets)
    if st.session_state.get(key) not in keys:
        st.session_state[key] = keys[0]
    choice = st.radio(t("evidence"), keys, key=key, horizontal=True, help=t("evidence_help"),
                      format_func=lambda k: _set_label(t, k, sets[k]))
    return {"key": choice, **sets[choice]}


# ---------------------------------------------------------------------------------------------------------------
# Internal and external, side by side
# ---------------------------------------------------------------------------------------------------------------
def _names(t, sets: dict) -> dict:
    return {k: t(f"set_{k}") + (f" ({sets[k]['dataset']})" if k == "external" else "") for k in sets}


def comparison_table(sets: dict, threshold: float, names: dict, t) -> pd.DataFrame:
    rows = []
    for k in (k for k in ORDER if k in sets):
        y, p = sets[k]["y"], sets[k]["score"]
        r = M.rates(M.confusion(y, p, threshold))
        rows.append({t("col_set"): names[k], t("col_n"): len(y), t("col_auc"): M.roc_auc(y, p),
                     t("col_ece"): M.expected_calibration_error(y, p)[0], t("col_sens"): r["sensitivity"],
                     t("col_spec"): r["specificity"], t("col_ppv"): r["ppv"], t("col_npv"): r["npv"],
                     t("col_acc"): r["accuracy"]})
    return pd.DataFrame(rows).set_index(t("col_set"))


def curves_figures(sets: dict, threshold: float, names: dict, t) -> list[go.Figure]:
    """ROC, precision-recall and calibration, one line per data set, the current threshold marked."""
    roc, pr, cal = go.Figure(), go.Figure(), go.Figure()
    roc.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#bbb", dash="dot"), showlegend=False,
                    hoverinfo="skip")
    cal.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#bbb", dash="dot"), name=t("perfect"),
                    hoverinfo="skip")
    for k in (k for k in ORDER if k in sets):
        y, p, colour = sets[k]["y"], sets[k]["score"], COLOURS[k]
        fpr, tpr, _ = M.roc_curve(y, p)
        precision, recall, _ = M.pr_curve(y, p)
        r = M.rates(M.confusion(y, p, threshold))
        roc.add_scatter(x=fpr, y=tpr, mode="lines", line=dict(color=colour), name=names[k])
        roc.add_scatter(x=[1 - r["specificity"]], y=[r["sensitivity"]], mode="markers", showlegend=False,
                        marker=dict(size=11, color=colour, line=dict(color="black", width=1)))
        pr.add_scatter(x=recall, y=precision, mode="lines", line=dict(color=colour), name=names[k])
        pr.add_scatter(x=[r["sensitivity"]], y=[r["ppv"]], mode="markers", showlegend=False,
                       marker=dict(size=11, color=colour, line=dict(color="black", width=1)))
        _, bins = M.expected_calibration_error(y, p)
        cal.add_scatter(x=[b["mean_predicted"] for b in bins], y=[b["observed"] for b in bins],
                        mode="lines+markers", line=dict(color=colour), name=names[k],
                        marker=dict(size=[6 + 14 * np.sqrt(b["n"] / len(y)) for b in bins]))
    for fig, title, x, y in ((roc, "fig_roc", "x_fpr", "y_tpr"), (pr, "fig_pr", "x_recall", "y_precision"),
                             (cal, "fig_calibration", "x_predicted", "y_observed")):
        fig.update_layout(title=t(title), height=360, margin=dict(l=10, r=10, t=50, b=10),
                          legend=dict(orientation="h", y=-0.25), xaxis=dict(title=t(x), range=[0, 1]),
                          yaxis=dict(title=t(y), range=[0, 1.02]))
    return [roc, pr, cal]


def confusion_heatmap(z, classes: list[str], title: str, t, height: int = 260) -> go.Figure:
    """Counts, rows the true class and columns the predicted one, in the order of `classes`."""
    fig = go.Figure(go.Heatmap(z=z, x=[f"{t('pred')} {c}" for c in classes], y=[f"{t('true')} {c}" for c in classes],
                               text=z, texttemplate="%{text}", colorscale="Blues", showscale=False))
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=40, b=10))
    fig.update_yaxes(autorange="reversed")
    return fig


def confusion_figure(y, p, threshold: float, classes: list[str], title: str, t) -> go.Figure:
    c = M.confusion(y, p, threshold)
    return confusion_heatmap([[c["tn"], c["fp"]], [c["fn"], c["tp"]]], classes, title, t)


def side_by_side(bundle, threshold: float, site=None, key: str = "sbs"):
    """Internal test and external (and, with a profile, this site's cross-validated) numbers at one threshold."""
    if bundle.task != Task.BINARY:
        return
    t = tr("sites")
    sets = evidence(bundle, site)
    if not sets:
        return
    names = _names(t, sets)
    st.subheader(t("h_side_by_side"), divider="gray")
    st.caption(t("side_by_side_caption", threshold=f"{threshold:.3f}"))
    if "external" not in sets:
        st.info(t("no_external"), icon=":material/info:")
    st.dataframe(comparison_table(sets, threshold, names, t), key=f"{key}_table",
                 column_config={c: st.column_config.NumberColumn(format="%.3f")
                                for c in (t("col_auc"), t("col_ece"), t("col_sens"), t("col_spec"), t("col_ppv"),
                                          t("col_npv"), t("col_acc"))})
    for column, fig, name in zip(st.columns(3), curves_figures(sets, threshold, names, t), ("roc", "pr", "cal")):
        column.plotly_chart(fig, key=f"{key}_{name}", config={"displayModeBar": False})
    present = [k for k in ORDER if k in sets]
    for column, k in zip(st.columns(len(present)), present):
        column.plotly_chart(confusion_figure(sets[k]["y"], sets[k]["score"], threshold, bundle.classes,
                                             t("confusion_title", set=names[k], threshold=f"{threshold:.3f}"), t),
                            key=f"{key}_cm_{k}", config={"displayModeBar": False})


# ---------------------------------------------------------------------------------------------------------------
# A multiclass profile at its site
# ---------------------------------------------------------------------------------------------------------------
def _ci(pair) -> str:
    return f"{pair[0]:.3f}–{pair[1]:.3f}"


def multiclass_site_table(site: sites.SiteProfile, t) -> pd.DataFrame:
    """The model as shipped on the profile's sample, and with the profile (cross-validated, 95% CI)."""
    shipped, cv = site.data["as_shipped"], site.data["validation"]
    rows = [(t("row_accuracy"), shipped["accuracy"], cv["accuracy"], cv["accuracy_ci95"]),
            (t("row_macro_auc"), shipped["macro_auc"], cv["macro_auc"], cv["macro_auc_ci95"]),
            (t("row_ece"), shipped["ece"], cv["ece"], cv["ece_ci95"])]
    rows += [(t("row_recall", cls=c), shipped["recall"][c], cv["recall"][c], cv["recall_ci95"][c])
             for c in site.data["classes"]]
    return pd.DataFrame([{t("col_measure"): name, t("col_as_shipped"): a, t("col_with_profile"): b,
                          t("col_with_profile_ci"): _ci(ci)} for name, a, b, ci in rows]).set_index(t("col_measure"))


def site_numbers(bundle, site: sites.SiteProfile | None):
    """For a multiclass bundle with a profile in use: what the profile changes at its site (Evaluation)."""
    if site is None or bundle.task != Task.MULTICLASS:
        return
    t = tr("sites")
    st.subheader(t("h_site_numbers"), divider="gray")
    st.caption(t("site_numbers_caption", name=md_escape(site.name), n=site.data["sample"]["n"]))
    table = multiclass_site_table(site, t)
    st.dataframe(table, key="site_numbers", column_config={
        c: st.column_config.NumberColumn(format="%.3f") for c in (t("col_as_shipped"), t("col_with_profile"))})
    st.caption(t("multiclass_decides"))


# ---------------------------------------------------------------------------------------------------------------
# Check the model on your own images
# ---------------------------------------------------------------------------------------------------------------
def draw_multiclass_report(report: dict, t):
    a, b, c = st.columns(3)
    a.metric(t("m_n"), report["n"])
    b.metric(t("m_accuracy"), f"{report['accuracy']:.3f} ({_ci(report['accuracy_ci95'])})")
    c.metric(t("m_macro_auc"), f"{report['macro_auc']:.3f} ({_ci(report['macro_auc_ci95'])})")
    rows = [{t("col_class"): cls, t("col_recall"): report["recall"][cls],
             t("col_recall_ci"): _ci(report["recall_ci95"][cls]), t("col_class_auc"): report["auc"][cls]}
            for cls in report["classes"]]
    st.dataframe(pd.DataFrame(rows).set_index(t("col_class")), key="sc_classes",
                 column_config={c: st.column_config.NumberColumn(format="%.3f")
                                for c in (t("col_recall"), t("col_class_auc"))})
    st.plotly_chart(confusion_heatmap(report["confusion"], report["classes"], t("confusion_multiclass"), t, 300),
                    key="sc_confusion", config={"displayModeBar": False})
    st.caption(f"{t('m_ece')} {report['ece']:.3f}. {t('multiclass_decides')}")


def draw_report(report: dict, bundle, t):
    counts = ", ".join(f"{c} {n}" for c, n in report["per_class"].items())
    how = t("report_with_site", name=report["site"]) if report["site"] else t("report_as_shipped")
    st.markdown(f"**{t('report_heading', bundle=bundle.name, n=report['n'], counts=counts)}** — {how}")
    if report.get("task") == Task.MULTICLASS.value:
        draw_multiclass_report(report, t)
        _report_notes(report, t)
        return
    a, b, c = st.columns(3)
    a.metric(t("m_n"), report["n"])
    lo, hi = report["auc_ci95"]
    b.metric(t("m_auc"), f"{report['auc']:.3f} ({lo:.3f}–{hi:.3f})")
    c.metric(t("m_ece"), f"{report['ece']:.3f}")
    rows = [{t("col_point"): name, t("col_threshold"): p["threshold"], t("col_sens"): p["sensitivity"],
             t("col_spec"): p["specificity"], t("col_ppv"): p["ppv"], t("col_npv"): p["npv"],
             t("col_acc"): p["accuracy"]} for name, p in report["points"].items()]
    st.dataframe(pd.DataFrame(rows).set_index(t("col_point")), key="sc_points",
                 column_config={c: st.column_config.NumberColumn(format="%.3f") for c in rows[0] if
                                c != t("col_point")} if rows else None)
    _report_notes(report, t)


def _report_notes(report: dict, t):
    if report["warnings"]:
        st.warning(t("warnings", items=", ".join(f"{k} ×{n}" for k, n in report["warnings"].items())),
                   icon=":material/warning:")
    for note in report["notes"]:
        st.info(note, icon=":material/info:")
    if report["skipped"]:
        with st.expander(t("skipped", n=len(report["skipped"]))):
            st.dataframe(pd.DataFrame(report["skipped"]), key="sc_skipped")


def _save(bundle, scored, name: str | None, force: bool):
    """Button callback: fit and save a profile; an existing name first asks for confirmation."""
    t = tr("sites")
    name = (name or st.session_state.get("sc_name") or "").strip()
    st.session_state.pop("site_save_pending", None)
    try:
        sites.check_name(name)
        if sites.profile_path(name).exists() and not force:
            st.session_state["site_save_pending"] = name
            return
        profile = sites.fit(scored, bundle, name)
        path = sites.save(profile, force=force)
        st.session_state["site_save_message"] = ("ok", t("saved", name=name, path=path),
                                                 sites.summary_lines(profile))
    except sites.SiteError as e:
        st.session_state["site_save_message"] = ("error", t("save_failed", message=md_escape(e.message)), None)


def save_section(bundle, scored):
    t = tr("sites")
    st.markdown(f"**{t('h_save')}**")
    folder = sites.sites_dir()
    if not sites.sites_writable(folder):
        st.caption(t("save_unavailable", folder=md_escape(folder)))
        return
    if sites.signature_required():  # the app holds no signing key: a profile saved here would be refused
        st.caption(t("save_needs_signature"))
        return
    st.caption(t("save_intro_multiclass" if bundle.task == Task.MULTICLASS else "save_intro", folds=sites.FOLDS))
    pending = st.session_state.get("site_save_pending")
    name = st.text_input(t("save_name"), key="sc_name", max_chars=64)
    if pending:
        st.warning(t("save_exists", name=pending), icon=":material/warning:")
        yes, no = st.columns(2)
        yes.button(t("save_replace"), key="sc_replace", on_click=_save, args=(bundle, scored, pending, True),
                   type="primary")
        no.button(t("save_cancel"), key="sc_cancel", on_click=lambda: st.session_state.pop("site_save_pending"))
    else:
        st.button(t("save_button"), key="sc_save", on_click=_save, args=(bundle, scored, None, False),
                  disabled=not (name or "").strip(), icon=":material/save:")
    show_outcome("site_save_message")


def site_check(bundle, ensemble_for):
    """The upload → report → save flow. `ensemble_for(name)` gives the cached Ensemble (it loads the members)."""
    from model.core.bundle import BundleError
    from model.core.guard import for_bundle

    t = tr("sites")
    st.subheader(t("h_check"), divider="gray")
    if bundle.task not in SITE_TASKS:
        st.info(t("single_label_only"))
        return
    st.caption(t("check_intro", classes=", ".join(bundle.classes)))
    mode = st.radio(t("check_mode"), ["zip", "files"], format_func=lambda m: t(f"mode_{m}"), horizontal=True,
                    key="sc_mode")
    if mode == "zip":
        archive = st.file_uploader(t("upload_zip"), type=["zip"], key="sc_zip")
        ready = archive is not None
    else:
        files = st.file_uploader(t("upload_files"), type=UPLOAD_TYPES, accept_multiple_files=True, key="sc_files")
        table = st.file_uploader(t("upload_csv"), type=["csv"], key="sc_csv")
        ready = bool(files) and table is not None
    if st.button(t("check_run"), key="sc_run", disabled=not ready, type="primary", icon=":material/fact_check:"):
        st.session_state.pop("site_check", None)
        st.session_state.pop("site_save_pending", None)
        try:
            if mode == "zip":
                labelled = sites.labelled_from_zip(archive.getvalue(), bundle.classes, source=f"'{archive.name}'")
            else:
                labelled = sites.labelled_from_uploads([(f.name, f.getvalue()) for f in files], table.getvalue(),
                                                       bundle.classes)
            bar = st.progress(0.0, text=t("check_running", n=len(labelled.items)))
            scored = sites.score(labelled, ensemble_for(bundle.name), guard=for_bundle(bundle),
                                 progress=lambda done, total: bar.progress(done / max(total, 1)),
                                 max_pixels=sites.UPLOAD_PIXEL_BUDGET)
            bar.empty()
            st.session_state["site_check"] = {"bundle": bundle.name, "scored": scored}
        except (sites.SiteError, BundleError) as e:  # entry, folder and archive names, CSV labels; or why the
            st.error(md_escape(e.message), icon=":material/error:")  # bundle's members could not be loaded
    check = st.session_state.get("site_check")
    if not check or check["bundle"] != bundle.name:
        return
    site = active_site(bundle)
    report = _report(check["scored"], bundle, site)
    draw_report(report, bundle, t)
    save_section(bundle, check["scored"])


def _report(scored, bundle, site) -> dict:
    """validate() once per (set, profile): its bootstrap is not free, and sliders rerun the page."""
    cache = st.session_state.setdefault("site_check_reports", {})
    key = (id(scored), site.data["sha256"] if site else None)
    if key not in cache:
        cache.clear()
        cache[key] = sites.validate(scored, bundle, site)
    return cache[key]
