"""Records waiting for the database: JSON lines in the state folder (0600), appended while the database can't be
reached or is locked, and written to it, in order, once it is back (`drain`). Every row carries its own id, so a
drain cut short and run again inserts nothing twice. A line that can't be written at all (damaged, or a
confirmation of a result the database no longer has) is moved to records-spool.rejected.jsonl, never dropped.

Processes and threads share the file under an exclusive flock.
"""
from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from model.store.schema import confirmations, results

KINDS = {"result": results, "confirmation": confirmations}
TIMES = ("created_at",)


def _line(kind: str, row: dict) -> str:
    row = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}
    return json.dumps({"kind": kind, "row": row}, separators=(",", ":"), allow_nan=False) + "\n"


def _row(entry: dict) -> tuple[str, dict]:
    kind, row = entry["kind"], dict(entry["row"])
    if kind not in KINDS or not isinstance(row.get("id"), str):
        raise ValueError("not a spooled record")
    for key in TIMES:
        row[key] = datetime.fromisoformat(row[key])
    return kind, row


class Spool:
    def __init__(self, path: Path):
        self.path = Path(path)

    @contextmanager
    def _locked(self, flags: int):
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, flags | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def append(self, kind: str, row: dict) -> None:
        """Keep one row (a result or a confirmation) until the database is back; on disk before this returns."""
        data = _line(kind, row).encode()
        with self._locked(os.O_WRONLY | os.O_APPEND) as fd:
            os.write(fd, data)
            os.fsync(fd)

    def has_pending(self) -> bool:
        try:
            return self.path.stat().st_size > 0
        except FileNotFoundError:
            return False

    def pending(self) -> int:
        """How many rows wait."""
        if not self.has_pending():
            return 0
        with open(self.path, "rb") as f:
            return sum(1 for line in f if line.strip())

    def drain(self, store) -> int:
        """Write every waiting row to `store` in order, then empty the spool. Returns how many rows were new to
        the database. A StoreError (the database went away again) leaves the spool as it was."""
        from model.store.db import StoreError

        with self._locked(os.O_RDWR) as fd:
            with os.fdopen(os.dup(fd), "rb") as f:
                lines = f.read().splitlines()
            written, rejected = 0, []
            for line in lines:
                if not line.strip():
                    continue
                try:
                    kind, row = _row(json.loads(line))
                except (ValueError, KeyError, TypeError):
                    rejected.append((line, "damaged line"))
                    continue
                try:
                    written += store.add(KINDS[kind], [row])
                except StoreError as e:
                    if e.code in ("unavailable", "unreadable", "unwritable"):
                        raise  # down again: keep everything, try later
                    rejected.append((line, e.message))
            if rejected:
                self._reject(rejected)
            os.ftruncate(fd, 0)
        return written

    def _reject(self, lines: list[tuple[bytes, str]]) -> None:
        path = self.path.with_name(self.path.stem + ".rejected.jsonl")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            for line, why in lines:
                os.write(fd, json.dumps({"line": line.decode("utf-8", "replace"), "reason": why}).encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
