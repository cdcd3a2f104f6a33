"""Worklist: many radiographs in, one ranked table out; a selected row opens in Diagnose.

Files are analysed once (keyed by bundle and the sha256 of their bytes) in batches through the ensemble; the
decisions follow the shared threshold without new inference. A file that cannot be read is an error row.
The current worklist is kept in session state (memory only) so it is still there after opening a row. An expander
starts `python -m model archive score` on a server folder and follows its progress (pages/lib/archive_job.py).
"""
from __future__ import annotations

import hashlib
import time

import pandas as pd
import streamlit as st

from model.core.analysis import analyse_batch, apply_site, decide, point_at
from model.core.ensemble import Ensemble
from model.core.guard import for_bundle
from model.core.types import NOT_ASSESSED, Task
from model.outputs.downloads import worklist_rows
from model.outputs.safe_text import csv_text, md_escape
from model.store.recorder import Channel
from pages.lib import archive_job
from pages.lib.common import current_bundle, get_ensemble, ready_to_predict, threshold_for
from pages.lib.record_view import keep
from pages.lib.router import take_over
from pages.lib.sites_view import active_site, site_caption
from pages.lib.ui import UPLOAD_TYPES, tr

take_over()  # a deep link on a fresh server: hand over to app.py's navigation (pages.lib.router)

t = tr("worklist")


def _take_uploads():
    """The uploader's files become the worklist (an emptied uploader empties it)."""
    files = st.session_state.get("wl_upload") or []
    st.session_state["worklist_entries"] = [
        {"name": f.name, "data": f.getvalue(), "digest": hashlib.sha256(f.getvalue()).hexdigest()} for f in files]


def _clear():
    st.session_state.pop("worklist_entries", None)


st.title(t("title"))
st.caption(t("intro"))
bundle = current_bundle()
st.file_uploader(t("upload"), type=UPLOAD_TYPES, accept_multiple_files=True, key="wl_upload",
                 on_change=_take_uploads, help=t("upload_help"))
entries = st.session_state.get("worklist_entries") or []
if bundle is None or not ready_to_predict(bundle):
    st.stop()


def _archive_progress(name: str):
    """The archive job's progress (the command writes it after each batch); redrawn every 2 s while it runs."""
    job = archive_job.status(name)
    if job is None:
        return
    progress = job["progress"] or {}
    total = progress.get("total") or 0
    done = (progress.get("written") or 0) + (progress.get("done_before") or 0)
    text = t("archive_progress", done=done, total=total, errors=progress.get("errors") or 0)
    if job["running"]:
        st.progress(min(1.0, done / total) if total else 0.0, text=text)
        st.button(t("archive_stop"), on_click=archive_job.stop, args=(name,), key="wl_archive_stop")
    elif progress.get("state") == "done" and job["returncode"] in (None, 0):
        st.success(t("archive_done", rows=progress.get("rows", done), out=md_escape(job["out"])),
                   icon=":material/check_circle:")
    else:
        st.warning(t("archive_stopped", text=text, line=md_escape(job["last_line"])), icon=":material/warning:")


with st.expander(t("archive_title"), icon=":material/inventory_2:"):
    # A server folder scored by `python -m model archive score` (the command is the product; this starts it).
    st.caption(t("archive_intro"))
    folder = st.text_input(t("archive_folder"), key="wl_archive_folder", help=t("archive_folder_help"))
    name = st.text_input(t("archive_name"), key="wl_archive_name", value="archive",
                         help=t("archive_name_help", where=md_escape(str(archive_job.archive_dir()))))
    if st.button(t("archive_start"), key="wl_archive_start", icon=":material/play_arrow:"):
        refused = archive_job.problem(folder.strip(), name.strip())
        if refused:
            st.error(t(refused))
        else:
            site = active_site(bundle)
            archive_job.start(folder.strip(), name.strip(), bundle.name, site.name if site is not None else None)
    st.fragment(run_every=2.0 if archive_job.running(name.strip()) else None)(_archive_progress)(name.strip())

if not entries:
    st.info(t("empty"), icon=":material/list_alt:")
    st.stop()
if not st.session_state.get("wl_upload"):
    left, right = st.columns([4, 1], vertical_alignment="center")
    left.caption(t("kept", n=len(entries)))
    right.button(t("clear"), on_click=_clear, width="stretch")

# Analyse what has not been analysed yet with this bundle, in batches, with a progress bar.
done = st.session_state.setdefault("worklist_results", {})
todo = [e for e in entries if (bundle.name, e["digest"], e["name"]) not in done]
if todo:
    bar = st.progress(0.0, text=t("running", done=0, total=len(todo)))

    def progress(step: int, total: int):
        bar.progress(step / total, text=t("running", done=min(len(todo), step * len(todo) // total), total=len(todo)))

    start = time.perf_counter()
    fresh = analyse_batch([(e["name"], e["data"]) for e in todo], get_ensemble(bundle.name),
                          progress=progress, guard=for_bundle(bundle))
    each_ms = (time.perf_counter() - start) * 1000 / len(todo)  # a batch: each file's share of its time
    for entry, result in zip(todo, fresh):
        done[(bundle.name, entry["digest"], entry["name"])] = result
        st.session_state.setdefault("worklist_latency", {})[entry["digest"]] = each_ms
    bar.empty()
# Keep only this worklist's results (the table decides what stays in memory).
keys = [(bundle.name, e["digest"], e["name"]) for e in entries]
st.session_state["worklist_results"] = {k: done[k] for k in keys}

site = active_site(bundle)
threshold = threshold_for(bundle, site)
decided = [decide(apply_site(done[k], site), bundle, threshold, site) for k in keys]
# Each file kept once per bundle and site profile in this session, at the threshold first shown.
entry_of = {(bundle.name, e["digest"], e["name"]): e for e in entries}
recorded = [keep(Channel.APP_WORKLIST, k[1], r, bundle, site, data=entry_of[k]["data"], raw=done[k].probability,
                 latency_ms=st.session_state.get("worklist_latency", {}).get(k[1]))
            for k, r in zip(keys, decided)]
results = [t.localised(r) for r in decided]
rows = worklist_rows(results)

errors = sum(1 for r in rows if r["error"])
if bundle.task == Task.BINARY:
    point = point_at(bundle, threshold, site)
    st.markdown(t("summary", n=len(rows), positive=sum(r["decision"] == bundle.classes[-1] for r in rows),
                  cls=t.class_label(bundle.classes[-1]), disagree=sum(bool(r["disagreement"]) for r in rows),
                  errors=errors))
    st.caption(t("at_threshold", t=threshold, point=t(f"op_{point['name']}") if point else t("custom_point")))
else:
    st.markdown(t("summary_multiclass", n=len(rows), errors=errors))
site_caption(site)
if any(r is not None for r in recorded):
    pending = sum(1 for r in recorded if r is not None and r.pending)
    tr_record = tr("record")
    if pending:
        st.warning(tr_record("worklist_pending", n=pending), icon=":material/cloud_off:")
    else:
        st.caption(tr_record("worklist_recorded", n=len(recorded)))

# Most probable first, unreadable files last; the index still points at the entry, for opening a row.
rows = pd.DataFrame(rows).sort_values("probability", ascending=False, na_position="last", kind="stable")
table = rows.assign(
    decision=[tr("sites")("not_assessed") if d == NOT_ASSESSED else t.class_label(d) if isinstance(d, str)
              else t("unreadable") for d in rows["decision"]],
    probability=rows["probability"] * 100)
shown = [c for c in table.columns if c != "site" and (c not in ("warnings", "error") or table[c].astype(bool).any())]
event = st.dataframe(
    table, key="wl_table", on_select="rerun", selection_mode="single-row", hide_index=True, width="stretch",
    column_order=shown, placeholder="", column_config={
        "file": st.column_config.TextColumn(t("col_file"), width=230),
        "decision": st.column_config.TextColumn(t("col_decision"), width=110),
        "probability": st.column_config.ProgressColumn(
            t("col_probability"), min_value=0.0, max_value=100.0, format="%.1f%%", width=150,
            help=t("help_probability", cls=t.class_label(bundle.classes[-1]))),
        "spread": st.column_config.NumberColumn(t("col_spread"), format="%.2f", width=110,
                                                help=t("help_spread", limit=Ensemble.DISAGREEMENT)),
        "disagreement": st.column_config.CheckboxColumn(t("col_disagreement"), width=100),
        "warnings": st.column_config.TextColumn(t("col_warnings"), width="medium"),
        "error": st.column_config.TextColumn(t("col_error"), width="medium"),
    })
st.caption(t("select_hint"))
failed = rows[rows["error"].astype(bool)]
if len(failed):
    # File names are the uploader's text: escaped, so that none becomes a link or an image fetched by the browser.
    st.error("\n".join(f"- **{md_escape(name)}**: {message}"
                       for name, message in zip(failed["file"], failed["error"])),
             icon=":material/error:")
# Cells starting with = + - @ tab or CR get a leading quote (a file name must not run as a spreadsheet formula).
st.download_button(t("download_csv"), csv_text(rows), file_name="torax-worklist.csv",
                   mime="text/csv", icon=":material/download:", on_click="ignore")

if event.selection.rows:
    entry = entries[table.index[event.selection.rows[0]]]
    st.session_state["current_upload"] = {"name": entry["name"], "data": entry["data"]}
    st.switch_page("pages/diagnose.py")
