"""Where the record lives. Light on purpose (no SQLAlchemy): the PACS state file and the app share `state_dir`.

- the state folder: $TORAX_STATE, else $XDG_STATE_HOME/torax (~/.local/state/torax); the default sites folder,
  ~/.local/state/torax/sites, is inside it;
- the database: $TORAX_DB_URL (e.g. postgresql+psycopg://torax@db.hospital/torax), else SQLite at
  <state folder>/records.sqlite3, created 0600 in a 0700 folder;
- the spool: <state folder>/records-spool.jsonl (0600), where records wait while the database can't be reached.
"""
from __future__ import annotations

import os
from pathlib import Path

DB_FILE = "records.sqlite3"
SPOOL_FILE = "records-spool.jsonl"
OFF = ("0", "off", "false", "no")


def state_dir() -> Path:
    """$TORAX_STATE, else $XDG_STATE_HOME/torax (~/.local/state/torax)."""
    if os.environ.get("TORAX_STATE"):
        return Path(os.environ["TORAX_STATE"])
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "torax"


def database_url() -> str:
    """$TORAX_DB_URL, else the SQLite file in the state folder."""
    return os.environ.get("TORAX_DB_URL", "").strip() or f"sqlite:///{state_dir() / DB_FILE}"


def spool_path() -> Path:
    return state_dir() / SPOOL_FILE


def recording_on() -> bool:
    """Recording is on unless TORAX_RECORD is 0/off/false/no (the CLI's --no-record and the app's setting turn it
    off for one command or one session)."""
    return os.environ.get("TORAX_RECORD", "").strip().lower() not in OFF


def shown_url(url: str) -> str:
    """A database URL fit for messages: without its password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown by its scheme only
        return url.split(":", 1)[0] + ":…"
