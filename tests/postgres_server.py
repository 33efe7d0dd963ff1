"""A throwaway PostgreSQL 15 server in a temporary directory, for the test session and the benchmark.

``initdb`` into a temporary directory (as the ``postgres`` user when run as root: initdb and the server
refuse root), ``pg_ctl start`` on a free 127.0.0.1 port with fsync off, ``pg_ctl stop -m immediate`` and
the directory removed at the end. No pytest here: tests/fixtures_postgres.py and bench/postgres_server.py
both build on it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

#: Where Debian's postgresql-15 package puts the server binaries (override: NANOVOICE_PG_BIN).
PG_BIN = Path(os.environ.get("NANOVOICE_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _as_postgres(command: list[str]) -> list[str]:
    """initdb and the server refuse to run as root: run them as the ``postgres`` user then."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ThrowawayPostgres:
    """A PostgreSQL 15 server in a temporary directory; :meth:`start`, then :meth:`stop`."""

    port: int = 0
    directory: Path | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self, prefix: str = "nanovoice-pg-") -> ThrowawayPostgres:
        initdb, pg_ctl = PG_BIN / "initdb", PG_BIN / "pg_ctl"
        if not initdb.is_file() or not pg_ctl.is_file():
            raise RuntimeError(f"{initdb} not found: install postgresql-15, point NANOVOICE_PG_BIN at its "
                               "binaries")
        self.directory = Path(tempfile.mkdtemp(prefix=prefix))
        data = self.directory / "data"
        data.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres")
            shutil.chown(data, "postgres")
        done = subprocess.run(_as_postgres([str(initdb), "-D", str(data), "-A", "trust", "-U", "postgres",
                                            "--no-sync", "-E", "UTF8", "--locale", "C"]),
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            self.stop()
            raise RuntimeError(f"initdb failed: {done.stderr.strip() or done.stdout.strip()}")
        self.port = _free_port()
        options = (f"-p {self.port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        done = subprocess.run(_as_postgres([str(pg_ctl), "-D", str(data), "-w", "-l", str(data / "server.log"),
                                            "-o", options, "start"]),
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = (data / "server.log").read_text(errors="replace")[-2000:] if (data / "server.log").exists() else ""
            self.stop()
            raise RuntimeError(f"pg_ctl start failed: {done.stderr.strip()} {log}")
        return self

    def stop(self) -> None:
        if self.directory is None:
            return
        data = self.directory / "data"
        if (data / "postmaster.pid").exists():
            subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                           capture_output=True, timeout=60)
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory = None
