"""PostgreSQL for the benchmark: a throwaway server, fresh schemas on it, and its CPU time from /proc.

The server itself is the test suite's (:class:`tests.postgres_server.ThrowawayPostgres`; the bench already
runs the suite's fakes).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tests.postgres_server import ThrowawayPostgres

__all__ = ["ServerCPU", "ThrowawayPostgres", "find_postmaster", "fresh_schema", "with_search_path"]

_CLK_TCK = os.sysconf("SC_CLK_TCK")


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
