"""The headline numbers of Evaluation and the Model card: the most external evidence first (the active site
profile, then the external collection, then the internal test split), the training collection's numbers second and
labelled as such, and one comparison sentence per set (model.evidence decides the wording from the numbers)."""
from __future__ import annotations

import streamlit as st

from model.outputs import formatting as F
from model.outputs.evidence import evidence
from model.outputs.safe_text import md_escape
from pages.lib.ui import fmt_int, tr


def set_name(t, item: dict) -> str:
    return t(f"set_{item['kind']}", dataset=md_escape(str(item["dataset"])))


def comparison_sentences(items: list[dict]) -> list[str]:
    t = tr("evidence")
    return [t(f"ensemble_{c['verdict']}", set=set_name(t, item), ens=F.fmt_num(c["ensemble_auc"]), best=c["best"],
              auc=F.fmt_num(c["best_auc"]))
            for item in items if (c := item["comparison"])]


def lead(bundle, site, threshold: float) -> list[dict]:
    """Draw the headline: metrics on the most external set, then the training collection's line. Returns the sets
    (most external first) for the caller's own tables."""
    t = tr("evidence")
    items = evidence(bundle, site, threshold)
    if not items:
        return items
    first, s = items[0], items[0]["summary"]
    cols = st.columns(6)
    cols[0].metric(t("m_auc"), F.fmt_num(s["auc"]), help=t("m_auc_help", ci=F.fmt_ci(s["auc_ci95"])))
    cols[1].metric(t("m_sensitivity"), F.fmt_pct(s["sensitivity"]),
                   help=t("ci_help", ci=F.fmt_ci(s["sensitivity_ci95"])))
    cols[2].metric(t("m_specificity"), F.fmt_pct(s["specificity"]),
                   help=t("ci_help", ci=F.fmt_ci(s["specificity_ci95"])))
    cols[3].metric(t("m_ppv"), F.fmt_pct(s["ppv"]))
    cols[4].metric(t("m_npv"), F.fmt_pct(s["npv"]))
    cols[5].metric(t("m_n"), fmt_int(s["n"]))
    st.caption(t("lead_caption", set=set_name(t, first), n=fmt_int(s["n"]), threshold=f"{threshold:.3f}")
               + " " + t(f"why_{first['kind']}"))
    internal = next((i for i in items[1:] if i["kind"] == "internal"), None)
    if internal is not None:
        si = internal["summary"]
        st.caption(t("secondary", n=fmt_int(si["n"]), auc=F.fmt_num(si["auc"]), sens=F.fmt_pct(si["sensitivity"]),
                     spec=F.fmt_pct(si["specificity"]), threshold=f"{threshold:.3f}"))
    for sentence in comparison_sentences(items):
        st.caption(sentence)
    return items
