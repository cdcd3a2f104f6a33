"""The record in the app: the sidebar's "Record results" setting, keeping each result once per session (Diagnose,
Worklist) with model.store.recorder, saying when recording is pending, and the reader's confirmation under a
Diagnose result.

Session-state keys: "record" (bool: the sidebar setting), "records" ({(channel, digest, bundle, site):
Recorded}: what this session has recorded, so a rerun or a moved slider records nothing twice), "confirmed"
({record id: Recorded}: the reader's last confirmation of it), and the confirmation widgets' own
"rec_label_<id>" / "rec_note_<id>" (one pair per result, so a new image starts blank). Only ids and states are
kept; the rows are in the database.
"""
from __future__ import annotations

import streamlit as st

from model.outputs.safe_text import md_escape
from model.store.location import recording_on
from pages.lib.ui import tr

LABEL_CHOICES = ("positive", "negative", "unsure")


def sidebar_record():
    """The sidebar's "Record results" toggle (off and disabled when the server turns recording off)."""
    t = tr("record")
    allowed = recording_on()
    if "record" not in st.session_state or not allowed:
        st.session_state["record"] = allowed
    st.sidebar.toggle(t("record"), key="record", disabled=not allowed,
                      help=t("record_help") if allowed else t("record_off_server"))


def recording() -> bool:
    return bool(st.session_state.get("record", recording_on()))


def keep(channel, digest: str, result, bundle, site=None, **context):
    """Record `result` once in this session for (channel, image, bundle, site); the Recorded (or None while
    recording is off). A database that is down or locked never stops the page: the record is spooled."""
    from model.store.recorder import recorder

    if not recording():
        return None
    key = (str(channel), digest, bundle.name, site.name if site is not None else None)
    done = st.session_state.setdefault("records", {})
    if key not in done:
        done[key] = recorder().record(result, bundle, channel=channel, sha256=digest, site=site, **context)
    return done[key]


def record_caption(recorded) -> None:
    """One line: recorded as <id>, or recording pending (and why)."""
    t = tr("record")
    if recorded is None:
        st.caption(t("not_recorded"))
    elif recorded.pending:
        st.warning(t("pending", id=recorded.id), icon=":material/cloud_off:")
    else:
        st.caption(t("recorded", id=recorded.id))


def _confirm(recorded, bundle):
    from model.store.confirmations import UNSURE, Refused, Source
    from model.store.db import StoreError
    from model.store.recorder import recorder

    t = tr("record")
    choice = st.session_state.get(f"rec_label_{recorded.id}")
    label = {"positive": bundle.classes[-1], "negative": bundle.classes[0], "unsure": UNSURE}.get(choice)
    try:
        done = recorder().confirm(recorded.id, label, st.session_state.get(f"rec_note_{recorded.id}"),
                                  source=Source.APP, classes=list(bundle.classes))
    except (Refused, StoreError) as e:
        st.session_state["rec_message"] = ("error", t("confirm_failed", message=md_escape(e.message)))
        return
    st.session_state.setdefault("confirmed", {})[recorded.id] = done
    st.session_state["rec_message"] = ("ok", t("confirmed_pending" if done.pending else "confirmed",
                                               label=t.class_label(done.label)))


def confirm_section(recorded, bundle):
    """Under a Diagnose result: the reader's read (or the truth), with an optional note."""
    from model.core.types import Task

    t = tr("record")
    if recorded is None or recorded.id is None or bundle.task != Task.BINARY:
        return
    st.markdown(f"**{t('confirm_heading')}**")
    names = {"positive": t.class_label(bundle.classes[-1]), "negative": t.class_label(bundle.classes[0]),
             "unsure": t("unsure")}
    st.radio(t("confirm_label"), LABEL_CHOICES, format_func=names.get, key=f"rec_label_{recorded.id}",
             horizontal=True, index=None, help=t("confirm_help"))
    st.text_input(t("confirm_note"), key=f"rec_note_{recorded.id}", max_chars=1000)
    st.button(t("confirm_button"), key="rec_confirm", on_click=_confirm, args=(recorded, bundle),
              disabled=st.session_state.get(f"rec_label_{recorded.id}") is None, icon=":material/how_to_reg:")
    message = st.session_state.pop("rec_message", None)
    if message:
        (st.success if message[0] == "ok" else st.error)(message[1])
    elif recorded.id in st.session_state.get("confirmed", {}):
        last = st.session_state["confirmed"][recorded.id]
        st.caption(t("confirmed", label=t.class_label(last.label)))
