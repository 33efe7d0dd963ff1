"""A throwaway PostgreSQL 15 server for the test session, and a fresh schema on it per test.

The server starts on first use (``initdb`` into a temporary directory, ``pg_ctl start`` on a free
127.0.0.1 port, fsync off) and stops at the end of the session. Without PostgreSQL's binaries the
PostgreSQL-parametrised tests FAIL, saying what is missing (CI must run them); set
``NANOVOICE_SKIP_POSTGRES=1`` to skip them instead, with that reason.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

#: Where Debian's postgresql-15 package puts the server binaries (override: NANOVOICE_PG_BIN).
PG_BIN = Path(os.environ.get("NANOVOICE_PG_BIN", "/usr/lib/postgresql/15/bin"))
SKIP_VARIABLE = "NANOVOICE_SKIP_POSTGRES"

#: Backends of the tests parametrised over both (``backend`` fixture overrides in those modules).
BACKENDS = ("sqlite", "postgres")


@dataclass(frozen=True)
class PostgresServer:
    port: int
    directory: Path

    def url(self, database: str = "postgres", **options: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in options.items())
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}" + (f"?{query}" if query else "")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_postgres(command: list[str]) -> list[str]:
    """initdb and the server refuse to run as root: run them as the ``postgres`` user then."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


def _unavailable(reason: str) -> None:
    if os.environ.get(SKIP_VARIABLE) == "1":
        pytest.skip(f"PostgreSQL tests skipped ({SKIP_VARIABLE}=1): {reason}")
    pytest.fail(f"PostgreSQL tests need a PostgreSQL 15 server: {reason}. Install postgresql-15 (.ci/run does), "
                f"point NANOVOICE_PG_BIN at its binaries, or set {SKIP_VARIABLE}=1 to skip them.", pytrace=False)


class _ServerHolder:
    """Starts the server on first request (so an SQLite-only run never starts one); stops it at the end."""

    def __init__(self) -> None:
        self.server: PostgresServer | None = None
        self.error: str | None = None
        self._tmp: Path | None = None

    def get(self) -> PostgresServer:
        if self.server is None and self.error is None:
            try:
                self.server = self._start()
            except Exception as exc:  # a missing binary, initdb or start failing: one clear reason
                self.error = str(exc)
        if self.server is None:
            _unavailable(self.error or "it did not start")
        assert self.server is not None
        return self.server

    def _start(self) -> PostgresServer:
        initdb, pg_ctl = PG_BIN / "initdb", PG_BIN / "pg_ctl"
        if not initdb.is_file() or not pg_ctl.is_file():
            raise RuntimeError(f"{initdb} not found")
        self._tmp = Path(tempfile.mkdtemp(prefix="nanovoice-pg-"))
        data = self._tmp / "data"
        data.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self._tmp, "postgres")
            shutil.chown(data, "postgres")
        done = subprocess.run(_as_postgres([str(initdb), "-D", str(data), "-A", "trust", "-U", "postgres",
                                            "--no-sync", "-E", "UTF8", "--locale", "C"]),
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr.strip() or done.stdout.strip()}")
        port = _free_port()
        options = (f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
                   "-c full_page_writes=off -c max_connections=200")
        done = subprocess.run(_as_postgres([str(pg_ctl), "-D", str(data), "-w", "-l", str(data / "server.log"),
                                            "-o", options, "start"]),
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = (data / "server.log").read_text(errors="replace")[-2000:] if (data / "server.log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {done.stderr.strip()} {log}")
        return PostgresServer(port, data)

    def stop(self) -> None:
        if self.server is not None:
            subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.server.directory), "-m", "immediate",
                                         "-w", "stop"]), capture_output=True, timeout=60)
            self.server = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


@pytest.fixture(scope="session")
def _postgres_holder() -> Iterator[_ServerHolder]:
    holder = _ServerHolder()
    yield holder
    holder.stop()


@pytest.fixture
def postgres_server(_postgres_holder: _ServerHolder) -> PostgresServer:
    """The session's PostgreSQL server (started on first use)."""
    return _postgres_holder.get()


@asynccontextmanager
async def fresh_schema(server: PostgresServer) -> AsyncIterator[str]:
    """A ``postgresql://`` URL whose connections use a fresh, empty schema (dropped afterwards)."""
    schema = f"t_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(server.url())
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
    finally:
        await admin.close()
    try:
        yield server.url(search_path=schema)
    finally:
        admin = await asyncpg.connect(server.url())
        try:
            await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        finally:
            await admin.close()


@pytest.fixture
async def postgres_url(postgres_server: PostgresServer) -> AsyncIterator[str]:
    """A ``postgresql://`` URL on a fresh, empty schema of the session's server (dropped after the test)."""
    async with fresh_schema(postgres_server) as url:
        yield url
