"""The record's database: `Store.open()` connects (SQLite in the state folder, or $TORAX_DB_URL), refuses a SQLite
file that is not a Tórax record (corrupt, or another program's) without touching it, and brings an older schema up
to date with the Alembic migrations in model/store/migrations; then append results and confirmations, read them
back, and apply retention.

Results and confirmations are only ever inserted (ids are made by the client, so inserting the same row twice, as
a replay from the spool does, changes nothing) and never updated: the database refuses an UPDATE (a trigger).
Retention is the one delete, and it is logged in `audit`.

Faults are typed: StoreUnavailable (unreachable, locked: try again later; the recorder spools meanwhile) and
StoreError (a file that is not ours, a schema from a newer version: a person must act). Messages never carry a
password.
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import exc

from model.store.location import database_url, shown_url
from model.store.schema import HEAD, audit, confirmations, results

MIGRATIONS = Path(__file__).parent / "migrations"
KNOWN_REVISIONS = ("0001", "0002")
SQLITE_MAGIC = b"SQLite format 3\x00"
LOCK_TIMEOUT_S = 1.0
"""Longest a write waits for another writer's lock on a SQLite file before the record goes to the spool."""
CONNECT_TIMEOUT_S = 3
"""Longest a connection to a database server may take before the record goes to the spool."""
OUR_TABLES = {"results", "confirmations", "audit"}


class StoreError(Exception):
    """The record can't be used as configured; `message` says why and what to do."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class StoreUnavailable(StoreError):
    """The database can't be reached or is locked right now: a record waits in the spool."""


def utc_now(clock=None) -> datetime:
    """Now, as the record stores times: naive UTC."""
    import time

    return datetime.fromtimestamp((clock or time.time)(), UTC).replace(tzinfo=None)


def parse_time(text: str | datetime | None) -> datetime | None:
    """An ISO 8601 date or time (`2025-03-01`, `2025-03-01T08:00`, `…Z`, `…+01:00`) as naive UTC; ValueError
    otherwise. A time without an offset is taken as UTC."""
    if text is None or isinstance(text, datetime):
        value = text
    else:
        value = datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
    if value is not None and value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def iso(value: datetime | None) -> str | None:
    """A stored (naive UTC) time as ISO 8601 with Z."""
    return None if value is None else value.isoformat(timespec="seconds") + "Z"


def json_ready(value):
    """A row (or rows, nested) with its times as ISO 8601 strings: what the CLI prints and the API answers."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_ready(v) for v in value]
    return iso(value) if isinstance(value, datetime) else value


# ---------------------------------------------------------------------------------------------------------------
# SQLite files: refused unless they are ours (or new)
# ---------------------------------------------------------------------------------------------------------------
def check_sqlite_file(path: Path, timeout: float = LOCK_TIMEOUT_S) -> None:
    """StoreError unless `path` is missing, empty, or a SQLite database that Tórax made (or nothing yet): checked
    read-only, before anything (even a pragma) may write to it."""
    import sqlite3
    from contextlib import closing

    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except FileNotFoundError:
        return
    except OSError as e:
        raise StoreUnavailable("unreadable", f"The record database {path} can't be opened ({e.strerror}).") from None
    if not head:
        return
    if head != SQLITE_MAGIC:
        raise StoreError("not_a_database", f"{path} is not a SQLite database, so it was not used and was left as "
                                           "it is. Move it away, or set TORAX_DB_URL to another database.")
    try:
        with closing(sqlite3.connect(f"{Path(path).absolute().as_uri()}?mode=ro", uri=True, timeout=timeout)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            found = db.execute("SELECT version_num FROM alembic_version").fetchone()[0] \
                if "alembic_version" in tables else None
    except sqlite3.OperationalError as e:
        if "locked" in str(e) or "busy" in str(e):
            raise StoreUnavailable("unavailable", f"The record database {path} can't be read now: it is locked by "
                                                  "another program.") from None
        raise StoreUnavailable("unreadable", f"The record database {path} can't be opened ({e}).") from None
    except (sqlite3.DatabaseError, TypeError) as e:
        raise StoreError("corrupt", f"{path} is damaged or is not a Tórax record database ({e}), so it was not "
                                    "used and was left as it is. Restore it from a backup, or move it away to "
                                    "start a new one.") from None
    _check_revision(found, tables, str(path), own_database=True)


def _check_revision(found: str | None, tables: set, where: str, own_database: bool) -> None:
    """StoreError for a schema from a newer version, or tables Tórax did not make (in a database of its own,
    any table; on a shared server, tables with Tórax's names)."""
    if found is not None and found not in KNOWN_REVISIONS:
        raise StoreError("newer_schema", f"The record database {where} has schema revision {found}, which this "
                                         f"version of Tórax does not know (it knows up to {HEAD}): it was written "
                                         "by a newer version. Upgrade Tórax.")
    if found is None and (tables & OUR_TABLES or (own_database and tables)):
        raise StoreError("foreign", f"The record database {where} already holds tables that Tórax did not make "
                                    f"({', '.join(sorted(tables)[:5])}), so it was not used and was left as it is. "
                                    "Point TORAX_DB_URL at a database of its own.")


def create_sqlite_file(path: Path) -> None:
    """An empty database file, readable by this user only, in a folder only this user may enter."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer; writers take turns
    cursor.execute("PRAGMA synchronous=NORMAL")  # WAL keeps a committed record through a crash of the process
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


# ---------------------------------------------------------------------------------------------------------------
# Migrations
# ---------------------------------------------------------------------------------------------------------------
def migrate(engine, target: str = "head") -> None:
    """Run the Alembic migrations up to `target` (a revision, or "head") on `engine`."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":  # two servers starting at once: one migrates, the other waits
            connection.execute(sa.text("SELECT pg_advisory_lock(74657)"))
            connection.commit()
        try:
            config.attributes["connection"] = connection
            command.upgrade(config, target)
            connection.commit()
        finally:
            if engine.dialect.name == "postgresql":
                connection.execute(sa.text("SELECT pg_advisory_unlock(74657)"))
                connection.commit()


def revision(connection) -> str | None:
    """The schema revision of a database (None: no Alembic table)."""
    if "alembic_version" not in sa.inspect(connection).get_table_names():
        return None
    return connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


@contextmanager
def _file_lock(path: Path):
    """An exclusive lock on `path` (created 0600), for processes migrating the same SQLite file at once."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# ---------------------------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------------------------
class Store:
    """One database. Thread-safe (one engine, a pool of connections); open it with `Store.open()`."""

    def __init__(self, engine, url: str, path: Path | None = None):
        self.engine, self.url, self.path = engine, url, path
        self.dialect = engine.dialect.name

    @property
    def where(self) -> str:
        return str(self.path) if self.path else shown_url(self.url)

    @classmethod
    def open(cls, url: str | None = None, *, lock_timeout: float = LOCK_TIMEOUT_S) -> Store:
        """The store at `url` (default: $TORAX_DB_URL, else the SQLite file in the state folder), upgraded to the
        current schema. StoreError when the file or database is not a Tórax record; StoreUnavailable when it
        can't be reached now."""
        url = url or database_url()
        try:
            parsed = sa.engine.make_url(url)
        except exc.ArgumentError:
            raise StoreError("bad_url", f"TORAX_DB_URL is not a database URL ({shown_url(url)}); write it as "
                                        "postgresql+psycopg://user@host/database.") from None
        path = None
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                path = Path(parsed.database)
                check_sqlite_file(path, lock_timeout)
                try:
                    create_sqlite_file(path)
                except OSError as e:
                    raise StoreUnavailable("unwritable", f"The record database {path} can't be created "
                                                         f"({e.strerror}).") from None
            engine = sa.create_engine(url, connect_args={"timeout": lock_timeout})
            sa.event.listen(engine, "connect", _sqlite_pragmas)
        else:
            try:
                engine = sa.create_engine(url, pool_pre_ping=True,
                                          connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
            except (exc.ArgumentError, ImportError) as e:
                raise StoreError("bad_url", f"The record database {shown_url(url)} can't be used "
                                            f"({type(e).__name__}).") from None
        store = cls(engine, url, path)
        try:
            store._ready()
        except BaseException:
            engine.dispose()
            raise
        return store

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _faults(self):
        """Database exceptions as StoreUnavailable (try again later) or StoreError (a person must act)."""
        try:
            yield
        except StoreError:
            raise
        except exc.OperationalError as e:
            reason = str(e.orig).split("\n")[0] if e.orig is not None else type(e).__name__
            if "locked" in reason or "busy" in reason:
                why = "it is locked by another program"
            else:
                why = "it can't be reached"
            raise StoreUnavailable("unavailable", f"The record database {self.where} can't be written now: {why}. "
                                                  "Results are kept in the spool until it is back.") from None
        except exc.IntegrityError:
            raise StoreError("integrity", "The database refused the row: it refers to a result it does not hold.") \
                from None
        except exc.DatabaseError as e:
            if self.path is not None:
                raise StoreError("corrupt", f"{self.path} is damaged or is not a Tórax record database "
                                            f"({str(e.orig).splitlines()[0] if e.orig else 'unreadable'}), so it "
                                            "was not used and was left as it is. Restore it from a backup, or "
                                            "move it away to start a new one.") from None
            raise StoreError("database_error", f"The record database {self.where} refused the request "
                                               f"({type(e.orig).__name__ if e.orig else type(e).__name__}).") \
                from None

    def _ready(self) -> None:
        with self._faults():
            with self.engine.connect() as connection:
                found = revision(connection)
                tables = set(sa.inspect(connection).get_table_names()) if found is None else set()
            if found == HEAD:
                return
            _check_revision(found, tables, self.where, own_database=self.path is not None)
            if self.path is not None:
                with _file_lock(self.path.with_name(self.path.name + ".lock")):
                    migrate(self.engine)
            else:
                migrate(self.engine)

    # -- writing -------------------------------------------------------------------------------------------------
    def _insert(self, table):
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(table)

    def add(self, table, rows: list[dict]) -> int:
        """Insert rows, skipping any whose id is already there (a replay changes nothing). Returns how many were
        new."""
        if not rows:
            return 0
        with self._faults(), self.engine.begin() as connection:
            result = connection.execute(self._insert(table).on_conflict_do_nothing(index_elements=["id"]), rows)
            return max(result.rowcount, 0)

    def add_result(self, row: dict) -> bool:
        return self.add(results, [row]) == 1

    def add_confirmations(self, rows: list[dict]) -> int:
        return self.add(confirmations, rows)

    def retain(self, days: int, user: str = "local", now: datetime | None = None, log_empty: bool = True) -> dict:
        """Delete the results older than `days` days and their confirmations, and log it in `audit` (a run that
        deleted nothing too, unless `log_empty` is False). Returns what was done."""
        if isinstance(days, bool) or not isinstance(days, int) or days < 1:
            raise StoreError("bad_option", f"Retention needs a whole number of days of at least 1 (got {days!r}).")
        now = now or utc_now()
        cutoff = now - timedelta(days=days)
        old = sa.select(results.c.id).where(results.c.created_at < cutoff)
        with self._faults(), self.engine.begin() as connection:
            gone_confirmations = connection.execute(
                sa.delete(confirmations).where(confirmations.c.result_id.in_(old))).rowcount
            gone_results = connection.execute(sa.delete(results).where(results.c.created_at < cutoff)).rowcount
            detail = {"days": days, "cutoff": iso(cutoff), "results_deleted": gone_results,
                      "confirmations_deleted": gone_confirmations}
            if gone_results or log_empty:
                connection.execute(sa.insert(audit).values(at=now, action="retention", user=user[:64],
                                                           detail=detail))
        return detail

    # -- reading -------------------------------------------------------------------------------------------------
    def _rows(self, statement) -> list[dict]:
        with self._faults(), self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(statement)]

    def result(self, result_id: str) -> dict | None:
        """One result with all its confirmations (oldest first) and `confirmed`, the latest (or None)."""
        found = self._rows(sa.select(results).where(results.c.id == str(result_id)))
        if not found:
            return None
        row = found[0]
        row["confirmations"] = self._rows(sa.select(confirmations).where(confirmations.c.result_id == row["id"])
                                          .order_by(confirmations.c.created_at, confirmations.c.id))
        row["confirmed"] = row["confirmations"][-1] if row["confirmations"] else None
        return row

    def results(self, since: datetime | None = None, until: datetime | None = None, bundle: str | None = None,
                limit: int | None = None) -> list[dict]:
        """Results recorded in [since, until), oldest first, each with `confirmed`: its latest confirmation."""
        query = sa.select(results).order_by(results.c.created_at, results.c.id)
        conditions = []
        if since is not None:
            conditions.append(results.c.created_at >= since)
        if until is not None:
            conditions.append(results.c.created_at < until)
        if bundle is not None:
            conditions.append(results.c.bundle == bundle)
        if conditions:
            query = query.where(*conditions)
        if limit is not None:
            query = query.limit(limit)
        rows = self._rows(query)
        ids = sa.select(results.c.id)
        if conditions:
            ids = ids.where(*conditions)
        latest = {}
        if rows:
            for c in self._rows(sa.select(confirmations).where(confirmations.c.result_id.in_(
                    [r["id"] for r in rows] if limit is not None else ids))
                    .order_by(confirmations.c.created_at, confirmations.c.id)):
                latest[c["result_id"]] = c  # oldest first: the last one seen is the latest
        for row in rows:
            row["confirmed"] = latest.get(row["id"])
        return rows

    def find(self, column: str, values) -> list[dict]:
        """Results whose `column` (input_sha256, sop_instance_uid, study_instance_uid) is one of `values`."""
        values = list(dict.fromkeys(values))
        found = []
        for start in range(0, len(values), 500):
            found += self._rows(sa.select(results).where(results.c[column].in_(values[start:start + 500]))
                                .order_by(results.c.created_at))
        return found

    def extract(self, since: datetime | None = None, until: datetime | None = None):
        """The audit extract as a pandas DataFrame: one row per result of [since, until), JSON-valued fields as
        JSON text, times as ISO 8601, then its latest confirmation (label, note, who, when) and how many it has."""
        import json

        import pandas as pd

        rows = self.results(since, until)
        counts = {}
        if rows:
            with self._faults(), self.engine.connect() as connection:
                counts = dict(connection.execute(sa.select(confirmations.c.result_id, sa.func.count())
                                                 .group_by(confirmations.c.result_id)).all())
        as_json = {c.name for c in results.columns if isinstance(c.type, sa.JSON)}
        out = []
        for r in rows:
            confirmed = r.pop("confirmed") or {}
            r = {k: (json.dumps(v) if k in as_json and v is not None else v) for k, v in r.items()}
            r["created_at"] = iso(r["created_at"])
            r.update(confirmed_label=confirmed.get("label"), confirmed_note=confirmed.get("note"),
                     confirmed_by=confirmed.get("user"), confirmed_at=iso(confirmed.get("created_at")),
                     confirmations=counts.get(r["id"], 0))
            out.append(r)
        columns = [c.name for c in results.columns] + ["confirmed_label", "confirmed_note", "confirmed_by",
                                                       "confirmed_at", "confirmations"]
        return pd.DataFrame(out, columns=columns)

    def audit_log(self) -> list[dict]:
        return self._rows(sa.select(audit).order_by(audit.c.id))

    def count(self) -> dict:
        with self._faults(), self.engine.connect() as connection:
            return {name: connection.execute(sa.select(sa.func.count()).select_from(table)).scalar()
                    for name, table in (("results", results), ("confirmations", confirmations))}

