"""The reader's confirmations: their read of the image, or the truth once it is known (one of the result's classes,
or UNSURE), with an optional note. One at a time (`row`, checked by the recorder against the result), or in bulk
from a CSV (`import_csv`): every row is matched, or refused with its reason; nothing in a bad row is written.

CSV: a header naming `sha256` (the input file's SHA-256, as recorded) or `sop_instance_uid`, then `label`, and
optionally `note`. Header names are not case-sensitive.
"""
from __future__ import annotations

import csv
import io
import re
import uuid
from enum import StrEnum

UNSURE = "UNSURE"
NOTE_MAX = 1000
MAX_CSV_BYTES = 64 << 20
SHA256 = re.compile(r"^[0-9a-f]{64}$")
UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class Source(StrEnum):
    """Where a confirmation came from."""
    APP = "app"
    CLI = "cli"
    API = "api"
    IMPORT = "import"


class Refused(Exception):
    """A confirmation that can't be recorded; `message` says why."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def check_id(text) -> str:
    """A result id as recorded (a UUID), or Refused."""
    try:
        return str(uuid.UUID(str(text).strip()))
    except ValueError:
        raise Refused("unknown_id", f"{str(text)[:80]!r} is not a record id (they look like "
                                    "3f2b8c1e-0d4a-4e57-9a51-2c9f1d7e8b60).") from None


def label_for(label, classes) -> str:
    """`label` as one of the result's `classes` (any case) or UNSURE; Refused otherwise."""
    text = str(label or "").strip()
    for name in [*(classes or []), UNSURE]:
        if text.lower() == str(name).lower():
            return str(name)
    allowed = ", ".join([*(classes or []), UNSURE])
    raise Refused("unknown_label", f"{text[:80]!r} is not a label for this result: use one of {allowed}.")


def check_note(note) -> str | None:
    if note is None or not str(note).strip():
        return None
    note = str(note).strip()
    if len(note) > NOTE_MAX:
        raise Refused("note_too_long", f"The note has {len(note)} characters; at most {NOTE_MAX} are kept.")
    return note


def row(result_id: str, label: str, note, user: str, source: Source, now) -> dict:
    """A confirmation row (already checked)."""
    return {"id": str(uuid.uuid4()), "result_id": result_id, "created_at": now, "label": label,
            "note": check_note(note), "user": str(user)[:64], "source": Source(source).value}


# ---------------------------------------------------------------------------------------------------------------
# Bulk: a CSV of follow-up truth
# ---------------------------------------------------------------------------------------------------------------
def read_csv(data: bytes) -> tuple[str, list[tuple[int, str, str, str | None]]]:
    """(key column, [(line number, key, label, note)]) from the CSV's bytes; Refused for a file that can't be
    read at all (no header with a key column and `label`)."""
    if len(data) > MAX_CSV_BYTES:
        raise Refused("too_large", f"The CSV is larger than {MAX_CSV_BYTES >> 20} MiB; split it.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise Refused("not_text", "The file is not UTF-8 text (a CSV saved as UTF-8 is needed).") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise Refused("empty", "The CSV is empty.") from None
    except csv.Error as e:
        raise Refused("not_csv", f"The file is not a readable CSV ({e}).") from None
    key = next((k for k in ("sha256", "sop_instance_uid") if k in header), None)
    if key is None or "label" not in header:
        raise Refused("bad_header", "The CSV needs a header with a `sha256` or `sop_instance_uid` column and a "
                                    f"`label` column (it has: {', '.join(header)[:200] or 'nothing'}).")
    where = {name: header.index(name) for name in (key, "label", "note") if name in header}
    rows = []
    try:
        for values in reader:
            if not any(v.strip() for v in values):
                continue
            cell = lambda name: values[where[name]].strip() if name in where and where[name] < len(values) else ""
            rows.append((reader.line_num, cell(key), cell("label"), cell("note") or None))
    except csv.Error as e:
        raise Refused("not_csv", f"The CSV is malformed at line {reader.line_num} ({e}).") from None
    return key, rows


def import_csv(store, data: bytes, user: str, now) -> dict:
    """Match each row of a confirmations CSV to the recorded results and write a confirmation for every result it
    matches. Returns {"key", "rows", "matched", "unmatched", "ambiguous", "refused", "confirmed", "problems":
    [{"line", "outcome", "reason"}]}: matched rows confirm every result of their image (the same image analysed
    twice is confirmed twice); a row is ambiguous when its key names several different images, or when the file
    gives the same key two different labels; refused when its key or label can't be used."""
    key, rows = read_csv(data)
    column = "input_sha256" if key == "sha256" else "sop_instance_uid"
    pattern = SHA256 if key == "sha256" else UID
    report = {"key": key, "rows": len(rows), "matched": 0, "unmatched": 0, "ambiguous": 0, "refused": 0,
              "confirmed": 0, "problems": []}

    def problem(line, outcome, reason):
        report[outcome] += 1
        report["problems"].append({"line": line, "outcome": outcome, "reason": reason})

    usable, labels_by_key = [], {}
    for line, value, label, note in rows:
        value = value.lower() if key == "sha256" else value
        if not pattern.match(value) or len(value) > 64:
            problem(line, "refused", f"{key} {value[:80]!r} is not a valid {key}")
            continue
        if not label:
            problem(line, "refused", "no label")
            continue
        try:
            note = check_note(note)
        except Refused as e:
            problem(line, "refused", e.message)
            continue
        labels_by_key.setdefault(value, set()).add(label.strip().lower())
        usable.append((line, value, label, note))
    found: dict[str, list[dict]] = {}
    for result in store.find(column, [value for _, value, _, _ in usable]):
        found.setdefault(result[column], []).append(result)
    new, seen = [], set()
    for line, value, label, note in usable:
        if len(labels_by_key[value]) > 1:
            problem(line, "ambiguous", f"this {key} is given different labels in this file")
            continue
        matches = found.get(value, [])
        if not matches:
            problem(line, "unmatched", f"no recorded result has this {key}")
            continue
        if len({m["input_sha256"] for m in matches}) > 1:
            problem(line, "ambiguous", f"{len(matches)} recorded results of different images have this {key}")
            continue
        if value in seen:
            problem(line, "refused", f"this {key} appears earlier in the file with the same label (applied once)")
            continue
        rows_here = []
        try:
            for match in matches:
                rows_here.append(row(match["id"], label_for(label, match["classes"]), note, user, Source.IMPORT,
                                     now))
        except Refused as e:
            problem(line, "refused", e.message)
            continue
        seen.add(value)
        report["matched"] += 1
        new += rows_here
    store.add_confirmations(new)  # one transaction: all of them, or a StoreError and none
    report["confirmed"] = len(new)
    return report
