"""The record as a labelled sample: each confirmed image once, with its ensemble probability as shipped and its
latest confirmed label. `python -m model site fit --from-records` and the Monitoring page's refit hand it to
model.sites.profiles.fit, the same cross-validated fit as for a folder of labelled images.

Used: results of this very bundle (name, version and member sha256s) that were assessed (no error, not
`not_chest_xray`, as the image-based fit skips them) and confirmed with one of the bundle's classes (UNSURE is left
out). An image recorded several times counts once, with the latest confirmation any of its records got.
"""
from __future__ import annotations

from collections import Counter
from datetime import datetime

import numpy as np

from model.core.types import Task, WarningCode
from model.sites.profiles import Scored, SiteError, bundle_identity
from model.store.confirmations import UNSURE
from model.store.db import iso


def records_sample(store, bundle, since: datetime | None = None, until: datetime | None = None) -> \
        tuple[Scored, dict]:
    """(Scored, the range used: {"since", "until", "results", "first", "last"}) for `sites.fit`. SiteError
    `one_class` / `no_records` when it can't be fitted on; `unsupported_task` for a multiclass bundle, whose records
    keep no probabilities as shipped (fit its profile on a labelled folder)."""
    if bundle.task != Task.BINARY:
        raise SiteError("unsupported_task", f"A profile for {bundle.name} ({', '.join(bundle.classes)}) is fitted on "
                                            "a folder of labelled images (python -m model site fit FOLDER): the "
                                            "record keeps the probability as shipped for two-class bundles only.")
    rows = store.results(since, until, bundle=bundle.name)
    members = bundle_identity(bundle)["members"]
    skipped: Counter = Counter()
    latest: dict[str, tuple] = {}  # image sha256 -> (confirmation time, label, raw probability, record)
    for r in rows:
        if r["bundle_version"] != bundle.version or r["bundle_members"] != members:
            skipped["other_bundle_version"] += 1
        elif r["error"] or r["probability_raw"] is None or not r["input_sha256"]:
            skipped["not_analysed"] += 1
        elif WarningCode.NOT_CHEST_XRAY.value in (r["warnings"] or []):
            skipped[WarningCode.NOT_CHEST_XRAY.value] += 1
        elif r["confirmed"] is None:
            skipped["unconfirmed"] += 1
        elif r["confirmed"]["label"] == UNSURE or r["confirmed"]["label"] not in bundle.classes:
            skipped["unsure"] += 1
        else:
            key = r["input_sha256"]
            when = r["confirmed"]["created_at"]
            if key in latest:
                skipped["same_image_again"] += 1
                if when < latest[key][0]:
                    continue
            latest[key] = (when, r["confirmed"]["label"], r["probability_raw"], r)
    if not latest:
        raise SiteError("no_records", "No confirmed result of this bundle in the record for this period: confirm "
                                      "results first (Diagnose, `python -m model record confirm` or "
                                      "`record import-confirmations`).")
    used = [v[3] for v in latest.values()]
    y = np.array([int(v[1] == bundle.classes[-1]) for v in latest.values()])
    p = np.array([v[2] for v in latest.values()], float)
    if len(set(y.tolist())) < 2:
        raise SiteError("one_class", f"The {len(y)} confirmed result(s) in this period are all of one class; a site "
                                     "profile needs both.")
    times = [r["created_at"] for r in used]
    span = {"since": iso(since) if since else iso(min(times)), "until": iso(until) if until else iso(max(times)),
            "results": len(used), "first": iso(min(times)), "last": iso(max(times))}
    source = f"the record, {span['since']} to {span['until']}: {len(used)} confirmed results"
    scored = Scored(bundle.name, list(bundle.classes), source, [r["id"] for r in used], y, p,
                    [{"file": "", "code": code, "message": ""} for code, n in skipped.items() for _ in range(n)],
                    dict(skipped))
    return scored, span
