"""PostgreSQL for the benchmark: a throwaway server, fresh schemas on it, and its CPU time from /proc.

The server start and stop follow tests/fixtures_postgres.py (the same recipe, duplicated rather than
shared, so the benchmark does not depend on the test suite's fixtures and the tests not on the bench):
``initdb`` into a temporary directory (as the ``postgres`` user when run as root), ``pg_ctl start`` on a
free 127.0.0.1 port with fsync off, ``pg_ctl stop -m immediate`` and the directory removed at the end.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

#: Where Debian's postgresql-15 package puts the server binaries (override: NANOVOICE_PG_BIN).
PG_BIN = Path(os.environ.get("NANOVOICE_PG_BIN", "/usr/lib/postgresql/15/bin"))
_CLK_TCK = os.sysconf("SC_CLK_TCK")


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

    def start(self) -> ThrowawayPostgres:
        initdb, pg_ctl = PG_BIN / "initdb", PG_BIN / "pg_ctl"
        if not initdb.is_file() or not pg_ctl.is_file():
            raise RuntimeError(f"{initdb} not found: install postgresql-15, point NANOVOICE_PG_BIN at its "
                               "binaries, or pass --database-url")
        self.directory = Path(tempfile.mkdtemp(prefix="nanovoice-bench-pg-"))
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


def with_search_path(url: str, schema: str) -> str:
    """``url`` whose connections use ``schema`` (asyncpg passes unknown query parameters as settings)."""
    parts = urlsplit(url)
    query = f"{parts.query}&search_path={schema}" if parts.query else f"search_path={schema}"
    return urlunsplit(parts._replace(query=query))


def _admin_url(url: str) -> str:
    """``url`` without a search_path of ours (the schema may not exist yet)."""
    parts = urlsplit(url)
    query = "&".join(p for p in parts.query.split("&") if p and not p.startswith("search_path="))
    return urlunsplit(parts._replace(query=query))


@contextlib.asynccontextmanager
async def fresh_schema(url: str, prefix: str = "bench") -> AsyncIterator[str]:
    """A URL on ``url``'s database whose connections use a fresh, empty schema (dropped afterwards)."""
    schema = f"{prefix}_{secrets.token_hex(5)}"
    admin_url = _admin_url(url)
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
    finally:
        await admin.close()
    try:
        yield with_search_path(admin_url, schema)
    finally:
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        finally:
            await admin.close()


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        head, _, tail = f.read().rpartition(")")
    return [head.partition("(")[2], *tail.split()]  # [comm, state, ppid, …]


async def find_postmaster(url: str) -> int | None:
    """The local postmaster's pid behind ``url``: the parent of this connection's backend process.
    None when the server is not on this machine (or its processes are not visible)."""
    conn = await asyncpg.connect(_admin_url(url))
    try:  # while the connection is open: its backend process exits with it
        backend = int(await conn.fetchval("SELECT pg_backend_pid()"))
        comm, _, ppid = _stat(backend)[:3]
        if not comm.startswith("postgres"):
            return None
        postmaster = int(ppid)
        return postmaster if _stat(postmaster)[0].startswith("postgres") else None
    except (OSError, ValueError, IndexError):
        return None
    finally:
        await conn.close()


class ServerCPU:
    """CPU time of a PostgreSQL server: the postmaster (with its reaped children: closed connections)
    plus every live child (backends, checkpointer, WAL writer, autovacuum …), utime + stime from /proc."""

    def __init__(self, postmaster: int) -> None:
        self.postmaster = postmaster

    def cpu_s(self) -> float:
        ticks = 0
        own = _stat(self.postmaster)
        ticks += sum(int(v) for v in own[12:16])  # utime stime cutime cstime
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = _stat(int(entry.name))
                if int(fields[2]) == self.postmaster:
                    ticks += sum(int(v) for v in fields[12:16])
        return ticks / _CLK_TCK
