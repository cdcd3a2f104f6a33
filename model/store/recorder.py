"""The one call every channel makes after an analysis: `record(result, bundle, channel=...)`, and the reader's
`confirm(...)`. Neither ever blocks the reader: when the database can't be reached or is locked, the row goes to
the spool (model.store.spool) and is written, without duplicates, the next time the database answers; the answer
says "pending". After a failure the database is not tried again for RETRY_S seconds (a dead server costs one
timeout, not one per result).

What a record holds is an allowlist, built here and nowhere else: time, channel, user, the input's sha256 and
DICOM Study/Series/SOP Instance UIDs, the bundle (name, version, member sha256s), the site profile (name, sha256),
operating point and threshold, the ensemble probability as shipped and as decided, probabilities, label, finding,
warning codes, guard scores, error code, latency, and the decoder's non-identifying facts (RECORDED_META). Never
pixels, file names, or any other DICOM attribute: patient names and birth dates can't reach the record.
"""
from __future__ import annotations

import hashlib
import re
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from io import BytesIO
from pathlib import Path

from model.core.types import Result, Task, plain
from model.store import confirmations as C
from model.store.db import LOCK_TIMEOUT_S, Store, StoreError, StoreUnavailable, utc_now
from model.store.location import database_url, recording_on, spool_path
from model.store.spool import Spool

RETRY_S = 10.0
RECORDED_META = ("format", "width", "height", "bit_depth", "frames", "modality", "view_position", "body_part",
                 "photometric", "transfer_syntax")
UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
DICOM_UIDS = {"StudyInstanceUID": "study_instance_uid", "SeriesInstanceUID": "series_instance_uid",
              "SOPInstanceUID": "sop_instance_uid"}


class Channel(StrEnum):
    """The way a result came in."""
    APP_DIAGNOSE = "app-diagnose"
    APP_WORKLIST = "app-worklist"
    API = "api"
    CLI = "cli"
    PACS = "pacs"
    ARCHIVE = "archive"


@dataclass
class Recorded:
    """What became of a record: "stored" (in the database), "pending" (in the spool, written when the database is
    back; `message` says why), or "off" (recording is turned off; no id)."""
    id: str | None
    state: str
    message: str | None = None
    label: str | None = None  # a confirmation: the label as recorded (one of the classes, or UNSURE)

    @property
    def pending(self) -> bool:
        return self.state == "pending"

    def to_json(self, why: bool = True) -> dict:
        """{"id", "state"}, and with `why` the message of a pending record (it may name the database's path or
        host: not for an API's clients)."""
        return {"id": self.id, "state": self.state, **({"message": self.message} if self.message and why else {})}


OFF = Recorded(None, "off")


# ---------------------------------------------------------------------------------------------------------------
# The row
# ---------------------------------------------------------------------------------------------------------------
def dicom_uids(data: bytes | None) -> dict:
    """Study, Series and SOP Instance UIDs of a DICOM upload (only values that are UIDs); nothing else is read."""
    if not data:
        return {}
    import warnings

    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's warnings may quote attribute values
            ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True, force=True, specific_tags=list(DICOM_UIDS))
            values = {k: str(ds.get(k, "") or "").strip() for k in DICOM_UIDS}
    except Exception:  # noqa: BLE001 - a header we can't read has no UIDs to record
        return {}
    return {DICOM_UIDS[k]: v for k, v in values.items() if v and len(v) <= 64 and UID.match(v)}


_WORKERS = ThreadPoolExecutor(2, thread_name_prefix="torax-record")


def input_facts(data: bytes | None, sha256: str | None = None) -> dict:
    """What the record keeps of an upload's bytes: their sha256 and, when they are DICOM, its UIDs."""
    from model.io.sniff import looks_like_bare_dicom, sniff

    if data is None:
        return {"input_sha256": sha256}
    out = {"input_sha256": sha256 or hashlib.sha256(data).hexdigest()}
    if sniff(data) == "dicom" or looks_like_bare_dicom(data):
        out.update(dicom_uids(data))
    return out


def upload_facts(data: bytes | None) -> Future | None:
    """`input_facts(data)` started on a thread, for `record(..., facts=...)`: a channel starts it before the analysis
    and it is ready by the time the result is recorded (hashlib lets go of the GIL), so hashing a 10 MB DICOM adds
    nothing to the reader's wait. None when recording is off."""
    if data is None or not recording_on():
        return None
    return _WORKERS.submit(input_facts, data)


def raw_probability(result: Result, site=None) -> float | None:
    """The ensemble probability as shipped, for a binary result: a site profile's calibration undone (it is
    one-to-one), so the record can be recalibrated and refitted later."""
    if result.probability is None or result.task != Task.BINARY:
        return None
    if result.site and site is not None:
        return float(site.uncalibrate(result.probability))
    return None if result.site else float(result.probability)


def result_row(result: Result, bundle, *, channel: Channel, user: str = "local", data: bytes | None = None,
               sha256: str | None = None, facts=None, site=None, latency_ms: float | None = None,
               raw: float | None = None, now=None, record_id: str | None = None) -> dict:
    """The record of one result: the allowlist above, nothing else. The upload's sha256 and UIDs come from
    `facts` (upload_facts, started before the analysis) or are worked out here from `data` (and `sha256`, when
    the caller has it already)."""
    from model.sites.profiles import bundle_identity

    now = now or utc_now()
    identity = bundle_identity(bundle)
    meta = {k: result.meta[k] for k in RECORDED_META if result.meta and k in result.meta}
    facts = facts.result() if isinstance(facts, Future) else facts or input_facts(data, sha256)
    threshold = result.threshold
    return plain({
        "id": record_id or str(uuid.uuid4()),
        "channel": Channel(channel).value,
        "user": str(user or "local")[:64],
        "input_sha256": facts.get("input_sha256"),
        **{k: facts.get(k) if meta.get("format") == "dicom" else None for k in DICOM_UIDS.values()},
        "bundle": identity["name"], "bundle_version": identity["version"], "bundle_members": identity["members"],
        "task": result.task, "classes": list(result.probabilities or bundle.classes),
        "site": result.site, "site_sha256": site.data.get("sha256") if site is not None and result.site else None,
        "operating_point": result.operating_point,
        "threshold": None if isinstance(threshold, dict) else threshold,
        "thresholds": threshold if isinstance(threshold, dict) else None,
        "probability_raw": raw if raw is not None else raw_probability(result, site),
        "probability": result.probability, "probabilities": result.probabilities,
        "label": result.label, "finding": None if result.failed else result.finding,
        "warnings": [w.get("code") for w in result.warnings] or None,
        "error": (result.error or {}).get("code"),
        "latency_ms": None if latency_ms is None else round(float(latency_ms), 2),
        "meta": meta or None, "guard_scores": result.guard_scores,
    }) | {"created_at": now}


# ---------------------------------------------------------------------------------------------------------------
# The recorder
# ---------------------------------------------------------------------------------------------------------------
class Recorder:
    """Writes records to one database, or to the spool while it can't. Thread-safe; one per process
    (`recorder()`), or made directly with a URL, spool path and clock (tests, the bench)."""

    def __init__(self, url: str | None = None, spool: Path | None = None, clock=time.time,
                 lock_timeout: float = LOCK_TIMEOUT_S, retain_days: int | None = None):
        self.url = url or database_url()
        self.spool = Spool(spool or spool_path())
        self.clock, self.lock_timeout, self.retain_days = clock, lock_timeout, retain_days
        self._store: Store | None = None
        self._down_until = 0.0
        self._retained_at: float | None = None
        self.problem: str | None = None
        self._lock = threading.Lock()

    def store(self) -> Store:
        """The open store; StoreError / StoreUnavailable when it can't be used now. Waiting rows are written
        first."""
        with self._lock:
            if self._store is None:
                self._store = Store.open(self.url, lock_timeout=self.lock_timeout)
            store = self._store
        if self.spool.has_pending():
            self.spool.drain(store)
        self._retain(store)
        return store

    def _retain(self, store: Store) -> None:
        """The retention setting (TORAX_RETAIN_DAYS): applied once a day while the recorder is in use."""
        now = self.clock()
        if self.retain_days and (self._retained_at is None or now - self._retained_at >= 86400):
            self._retained_at = now
            store.retain(self.retain_days, user="retention", now=utc_now(self.clock), log_empty=False)

    def _usable(self) -> Store | None:
        """The store, or None (and `problem` set) when it can't be written now."""
        if self.clock() < self._down_until:
            return None
        try:
            store = self.store()
        except StoreError as e:
            self._down_until = self.clock() + RETRY_S
            self.problem = e.message
            return None
        self.problem = None
        return store

    def _write(self, kind: str, row: dict) -> Recorded:
        store = self._usable()
        if store is not None:
            try:
                store.add(store_table(kind), [row])
                return Recorded(row["id"], "stored")
            except StoreError as e:
                self._down_until = self.clock() + RETRY_S
                self.problem = e.message
        self.spool.append(kind, row)
        return Recorded(row["id"], "pending", self.problem)

    def record(self, result: Result, bundle, **context) -> Recorded:
        """Record one result (see `result_row` for the context: channel, user, facts or data or sha256, site,
        latency_ms, raw)."""
        return self._write("result", result_row(result, bundle, now=utc_now(self.clock), **context))

    def confirm(self, result_id, label, note=None, user: str = "local", source=C.Source.CLI,
                classes=None) -> Recorded:
        """Record a confirmation of result `result_id`. C.Refused for an unknown id, label or a note too long.
        When the database is unavailable, a caller that knows the result (`classes`: the app, for a result it
        recorded itself) has the confirmation spooled; anyone else gets StoreUnavailable."""
        result_id = C.check_id(result_id)
        store = self._usable()
        if store is not None:
            try:
                found = store.result(result_id)
                if found is None:
                    raise C.Refused("unknown_id", f"No recorded result has the id {result_id}.")
                row = C.row(result_id, C.label_for(label, found["classes"]), note, user, source,
                            utc_now(self.clock))
                store.add_confirmations([row])
                return Recorded(row["id"], "stored", label=row["label"])
            except StoreError as e:
                self._down_until = self.clock() + RETRY_S
                self.problem = e.message
                if classes is None:
                    raise
        if classes is None:
            raise StoreUnavailable("unavailable", self.problem or "The record database can't be reached now.")
        row = C.row(result_id, C.label_for(label, classes), note, user, source, utc_now(self.clock))
        self.spool.append("confirmation", row)
        return Recorded(row["id"], "pending", self.problem, row["label"])

    def record_many(self, rows: list[dict]) -> int:
        """Record many ready-made result rows in one insert (archive runs); rows already there are skipped (their
        ids are stable). Spooled when the database can't take them. Returns how many were stored now."""
        store = self._usable()
        if store is not None:
            try:
                return store.add(store_table("result"), rows)
            except StoreError as e:
                self._down_until = self.clock() + RETRY_S
                self.problem = e.message
        for row in rows:
            self.spool.append("result", row)
        return 0

    def pending(self) -> int:
        return self.spool.pending()

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None


def store_table(kind: str):
    from model.store.spool import KINDS

    return KINDS[kind]


_RECORDERS: dict[tuple, Recorder] = {}
_RECORDERS_LOCK = threading.Lock()


def retain_days_setting() -> int | None:
    """TORAX_RETAIN_DAYS as a whole number of days, or None (keep everything)."""
    import os

    text = os.environ.get("TORAX_RETAIN_DAYS", "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def recorder() -> Recorder:
    """This process's recorder for the configured database and state folder."""
    key = (database_url(), str(spool_path()), retain_days_setting())
    with _RECORDERS_LOCK:
        if key not in _RECORDERS:
            _RECORDERS[key] = Recorder(key[0], Path(key[1]), retain_days=key[2])
        return _RECORDERS[key]


def record(result: Result, bundle, **context) -> Recorded:
    """Record one result with this process's recorder, unless recording is turned off (TORAX_RECORD=0)."""
    if not recording_on():
        return OFF
    return recorder().record(result, bundle, **context)


# ---------------------------------------------------------------------------------------------------------------
# Archive runs (python -m model archive score --record)
# ---------------------------------------------------------------------------------------------------------------
ARCHIVE_RUN_IDS = uuid.UUID("6f1c1a52-4f3e-4d1b-9a0e-7c1d2b3a4e5f")  # namespace of archive rows' record ids


def archive_row(row: dict, bundle, run_id: str, now=None) -> dict:
    """One row of an archive table as a record: the same allowlist as result_row (the archive's columns hold no
    file name beyond `source`, which is not kept), channel "archive", the run in `meta`. The id is derived from
    the run, source and sha256, so handing the same rows over twice records them once."""
    import json

    from model.sites.profiles import bundle_identity

    identity = bundle_identity(bundle)
    probabilities = row.get("probabilities")
    label = row.get("label")
    if isinstance(label, str) and label.startswith("["):
        label = json.loads(label)
    return plain({
        "id": str(uuid.uuid5(ARCHIVE_RUN_IDS, f"{run_id}\n{row.get('source')}\n{row.get('sha256')}")),
        "channel": Channel.ARCHIVE.value, "user": "local", "input_sha256": row.get("sha256"),
        **{k: row.get(k) for k in ("study_instance_uid", "series_instance_uid", "sop_instance_uid")},
        "bundle": identity["name"], "bundle_version": identity["version"], "bundle_members": identity["members"],
        "task": bundle.task, "classes": list(bundle.classes), "site": row.get("site"), "site_sha256": None,
        "operating_point": row.get("operating_point"), "threshold": row.get("threshold"), "thresholds": None,
        "probability_raw": row.get("probability_raw"), "probability": row.get("probability"),
        "probabilities": json.loads(probabilities) if isinstance(probabilities, str) else probabilities,
        "label": label, "finding": row.get("finding"), "warnings": list(row.get("warnings") or []) or None,
        "error": row.get("error_code"), "latency_ms": None, "meta": {"archive_run": run_id},
        "guard_scores": None}) | {"created_at": now or utc_now()}


def record_archive_rows(rows: list[dict], run_id: str, bundle=None) -> int:
    """Record an archive run's rows (`--record`) in one insert, tagged with the run; `bundle` (else the rows'
    bundle, verified without its models) gives the members' digests. Spooled while the database is down."""
    if not rows:
        return 0
    if bundle is None:
        from model.core.bundle import bundles_dir, load_bundle
        bundle = load_bundle(bundles_dir() / rows[0]["bundle"], models=False)
    now = utc_now()
    return recorder().record_many([archive_row(r, bundle, run_id, now) for r in rows])
