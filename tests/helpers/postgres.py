"""A throwaway PostgreSQL server for the record's tests: Debian's `postgresql` binaries, `initdb` into a temporary
folder, listening on a free loopback port (and a Unix socket in that folder), trust authentication for one user.
PostgreSQL refuses to run as root, so as root (CI) the folder is given to `nobody` and the server runs as that
user (runuser). Started once per test session (tests/conftest.py `postgres`)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from helpers.servers import free_port

PG_ROOT = Path("/usr/lib/postgresql")


def pg_bin() -> Path | None:
    """The newest installed server's bin folder, or None."""
    found = sorted((p for p in PG_ROOT.glob("*/bin") if (p / "initdb").exists()),
                   key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return found[-1] if found else None


class Postgres:
    """`start()`, then `database(name)` gives a SQLAlchemy URL of a fresh database; `stop()` / `start()` again
    (the same data folder) simulate an outage; `close()` removes everything."""

    def __init__(self, folder: Path, user: str = "torax"):
        self.folder, self.user = Path(folder), user
        self.bin = pg_bin()
        self.port = free_port()
        self.data = self.folder / "data"
        self.as_user = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=120)
        if check and done.returncode:
            log = self.folder / "server.log"
            raise RuntimeError(f"{Path(args[0]).name} failed ({done.returncode}): {done.stderr[-2000:]}"
                               + (log.read_text()[-2000:] if log.exists() else ""))
        return done

    def start(self) -> Postgres:
        if not self.data.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            if self.as_user:
                shutil.chown(self.folder, "nobody", "nogroup")
            self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", self.user, "-E", "UTF8",
                      "--no-sync", "--no-instructions")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "server.log"), "-w",
                  "-o", f"-p {self.port} -h 127.0.0.1 -k {self.folder} -F -c max_connections=200", "start")
        return self

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)

    def close(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def database(self, name: str) -> str:
        """A new, empty database; its URL."""
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={self.user} dbname=postgres",
                             autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)
