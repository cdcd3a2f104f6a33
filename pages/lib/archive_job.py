"""The Worklist page's archive job: `python -m model archive score FOLDER` (local engine) in a child process, so
it outlives a page rerun and leaves the app responsive; its table goes to $TORAX_STATE/archive/<name>.parquet and
its progress is read from the progress file the command keeps beside it. Nothing here scores: the command does.
One job per table name at a time (the command's own lock says the same)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import streamlit as st

from model.channels.archive import Output, read_progress
from model.channels.pacs import state_path

REPO_ROOT = Path(__file__).resolve().parents[2]
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def archive_dir() -> Path:
    """Where the page's archive tables go: $TORAX_STATE/archive (the state folder `pacs watch` uses)."""
    return state_path().parent / "archive"


def output_for(name: str) -> Path:
    return archive_dir() / f"{name}.parquet"


@st.cache_resource(show_spinner=False)
def _jobs() -> dict:
    """{table name: the child process}, shared by every session of this server."""
    return {}


def problem(folder: str, name: str) -> str | None:
    """Why a job can't start (a key of the page's strings), or None."""
    if not folder or not Path(folder).expanduser().is_dir():
        return "archive_no_folder"
    if not NAME.match(name or ""):
        return "archive_bad_name"
    if running(name):
        return "archive_busy"
    return None


def start(folder: str, name: str, bundle: str, site: str | None = None) -> subprocess.Popen:
    """Start scoring `folder` into output_for(name) (resuming a table of that name); its output goes to a .log
    beside the table."""
    out = output_for(name)
    out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    command = [sys.executable, "-m", "model", "archive", "score", str(Path(folder).expanduser()), "--out", str(out),
               "--bundle", bundle] + (["--site", site] if site else [])
    with open(out.with_name(out.name + ".log"), "ab") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    _jobs()[name] = process
    return process


def running(name: str) -> bool:
    process = _jobs().get(name)
    return process is not None and process.poll() is None


def stop(name: str) -> None:
    """Ask the job to stop (SIGTERM: it keeps what it wrote, like Ctrl-C)."""
    process = _jobs().get(name)
    if process is not None and process.poll() is None:
        process.terminate()


def status(name: str) -> dict | None:
    """{"running", "progress" (the command's progress file, or None), "returncode", "last_line" (of its log)} for
    the job or table `name`, or None when there is neither."""
    process = _jobs().get(name)
    out = output_for(name)
    progress = read_progress(out)
    if process is None and progress is None:
        return None
    log = out.with_name(out.name + ".log")
    lines = log.read_text(errors="replace").strip().splitlines() if log.is_file() else []
    return {"running": running(name), "progress": progress, "out": str(Output(out).path),
            "returncode": process.poll() if process is not None else None, "last_line": lines[-1] if lines else ""}
