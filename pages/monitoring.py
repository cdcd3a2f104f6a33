"""Monitoring: is the model still doing here what it did when it was checked? For a period of the department's
record: volume, the share flagged by each input check, the share called positive, the score distribution against
the reference (PSI, KS), performance measured on the reader's confirmations, the alarms with what to do, a refit
of the site profile from the record, and the period's audit extract.

A thin page: read state, call model.store, draw (pages/lib/monitoring_view.py). The report is cached for a
minute per period, bundle, site profile and record size.
"""
from __future__ import annotations

from datetime import date, datetime, timedelta

import streamlit as st

from model.outputs.safe_text import csv_text, md_escape
from model.store.db import StoreError
from model.store.recorder import recorder
from pages.lib.common import current_bundle
from pages.lib.monitoring_view import (
    draw_alarms,
    draw_drift,
    draw_guards,
    draw_performance,
    refit_section,
    volume_figure,
)
from pages.lib.router import take_over
from pages.lib.sites_view import active_site, site_caption
from pages.lib.ui import fmt_int, tr

take_over()  # a deep link on a fresh server: hand over to app.py's navigation (pages.lib.router)

DEFAULT_DAYS = 30

t = tr("monitoring")


@st.cache_data(ttl=60, max_entries=16, show_spinner=False)
def report_for(url: str, bundle_name: str, site_sha: str | None, since: datetime, until: datetime, size: tuple,
               _store, _bundle, _site) -> dict:
    """model.store.monitor.run, once per period, bundle, site profile and record size (`size`)."""
    from model.store.monitor import run

    return run(_store, _bundle, site=_site, since=since, until=until)


st.title(t("title"))
st.caption(t("intro"))
bundle = current_bundle()
if bundle is None:
    st.stop()
site = active_site(bundle)
today = date.today()
st.session_state.setdefault("mon_period", (today - timedelta(days=DEFAULT_DAYS), today))
period = st.date_input(t("period"), key="mon_period", max_value=today, help=t("period_help"))
if not isinstance(period, (tuple, list)) or len(period) != 2:
    st.info(t("pick_end"), icon=":material/date_range:")
    st.stop()
since = datetime.combine(period[0], datetime.min.time())
until = datetime.combine(period[1], datetime.min.time()) + timedelta(days=1)
keeper = recorder()
try:
    store = keeper.store()
    report = report_for(keeper.url, bundle.name, site.data["sha256"] if site else None, since, until,
                        tuple(store.count().values()), store, bundle, site)
except StoreError as e:
    st.error(t("store_unavailable", message=md_escape(e.message)), icon=":material/cloud_off:")
    pending = keeper.pending()
    if pending:
        st.caption(t("pending", n=fmt_int(pending)))
    st.stop()
site_caption(site)

# 1. At a glance, and what to do.
a, b, c, d = st.columns(4)
a.metric(t("results"), fmt_int(report["n"]))
share = report.get("positive_share")
b.metric(t("positive_share", cls=bundle.classes[-1]), "—" if not share or share["value"] is None
         else f"{share['value']:.1%}", help=t("positive_share_help"))
c.metric(t("confirmed"), fmt_int((report.get("performance") or {}).get("n_confirmed", 0)))
d.metric(t("alarms"), len(report["alarms"]))
pending = keeper.pending()
if pending:
    st.warning(t("pending", n=fmt_int(pending)), icon=":material/cloud_off:")
draw_alarms(report, t)
if report["excluded_other_bundles"]:
    st.caption(t("excluded", n=report["excluded_other_bundles"], bundle=bundle.name, version=bundle.version))

if report["n"]:
    # 2. Volume and the input checks.
    st.subheader(t("h_volume"), divider="gray")
    left, right = st.columns(2, gap="large")
    left.plotly_chart(volume_figure(report, t), key="mon_volume", config={"displayModeBar": False})
    with right:
        st.markdown(f"**{t('h_guards')}**")
        draw_guards(report, t)
        st.caption(t("labels", labels=", ".join(f"{md_escape(k)} {v}" for k, v in report["labels"].items())))

    # 3. The scores against the reference.
    st.subheader(t("h_drift"), divider="gray")
    draw_drift(report, t)

    # 4. Performance on the reader's confirmations.
    st.subheader(t("h_performance"), divider="gray")
    draw_performance(report, bundle, t)
else:
    st.info(t("empty"), icon=":material/inbox:")

# 5. Refit the site profile from the record, and the audit extract.
refit_section(store, bundle, since, until)
st.subheader(t("h_export"), divider="gray")
st.caption(t("export_intro"))
st.download_button(t("export_csv"), lambda: csv_text(store.extract(since, until)),
                   file_name=f"torax-record-{period[0]}-{period[1]}.csv", mime="text/csv",
                   icon=":material/download:", on_click="ignore")
