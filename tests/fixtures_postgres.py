"""A throwaway PostgreSQL 15 server for the test session, and a fresh schema on it per test.

The server starts on first use (``initdb`` into a temporary directory, ``pg_ctl start`` on a free
127.0.0.1 port, fsync off) and stops at the end of the session. Without PostgreSQL's binaries the
PostgreSQL-parametrised tests FAIL, saying what is missing (CI must run them); set
``NANOVOICE_SKIP_POSTGRES=1`` to skip them instead, with that reason.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from bot.storage import Database
from tests.postgres_server import ThrowawayPostgres

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
        self._throwaway: ThrowawayPostgres | None = None

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
        self._throwaway = ThrowawayPostgres().start()
        assert self._throwaway.directory is not None
        return PostgresServer(self._throwaway.port, self._throwaway.directory / "data")

    def stop(self) -> None:
        self.server = None
        if self._throwaway is not None:
            self._throwaway.stop()
            self._throwaway = None


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


@pytest.fixture
async def two_processes(postgres_url):
    """Two connection owners on one PostgreSQL schema, migrated at the same time."""
    first, second = Database(postgres_url), Database(postgres_url)
    await asyncio.gather(first.connect(), second.connect())
    yield first, second
    await asyncio.gather(first.close(), second.close())
