"""The connection owner: one aiosqlite connection, numbered migrations, write transactions, meta.

Writes are serialised through one lock and run either as a single autocommitted statement or inside
:meth:`Database.transaction` (``BEGIN IMMEDIATE``), so a check-then-write (a quota, a unique name) is
atomic even with many coroutines in flight. The queries themselves live in the repositories, one per
aggregate, reached as attributes (``db.voices``, ``db.jobs``, ``db.ledger`` …).
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite

from bot.storage.base import Repository, Transaction, present
from bot.storage.blocks import BlockRepository
from bot.storage.cache import TtsCacheRepository
from bot.storage.files import StoredFileRepository
from bot.storage.guilds import GuildSettingsRepository
from bot.storage.jobs import CloneJobRepository
from bot.storage.ledger import LedgerRepository
from bot.storage.voices import UserSettingsRepository, VoiceRepository

log = logging.getLogger(__name__)

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

MIN_SQLITE = (3, 35, 0)  # UPDATE … RETURNING


class Database:
    """Owns the aiosqlite connection. Open with :meth:`connect`, close with :meth:`close`."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path) if str(path) != ":memory:" else path
        self._conn: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self.voices = VoiceRepository(self)
        self.user_settings = UserSettingsRepository(self)
        self.jobs = CloneJobRepository(self)
        self.ledger = LedgerRepository(self)
        self.cache = TtsCacheRepository(self)
        self.files = StoredFileRepository(self)
        self.guilds = GuildSettingsRepository(self)
        self.blocks = BlockRepository(self)

    def repositories(self) -> tuple[Repository, ...]:
        """Every repository, for the privacy service (each one can delete a user's rows)."""
        return (self.cache, self.user_settings, self.jobs, self.voices, self.files, self.ledger, self.guilds,
                self.blocks)

    # -- lifecycle -----------------------------------------------------------------------------

    async def connect(self) -> Database:
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise RuntimeError(f"SQLite {sqlite3.sqlite_version} is too old: nanovoice needs "
                               f"{'.'.join(map(str, MIN_SQLITE))} or newer (for RETURNING)")
        if isinstance(self.path, Path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = await aiosqlite.connect(str(self.path), isolation_level=None)
        self._conn.row_factory = aiosqlite.Row
        try:
            await self._conn.execute("PRAGMA journal_mode=WAL")
            await self._conn.execute("PRAGMA foreign_keys=ON")
            await self._conn.execute("PRAGMA synchronous=NORMAL")
            await self._conn.execute("PRAGMA busy_timeout=5000")
            await self.migrate()
        except BaseException:
            await self.close()  # not a database, or a failed migration: no connection thread left behind
            raise
        return self

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    @property
    def conn(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise RuntimeError("database is not connected")
        return self._conn

    @staticmethod
    def migrations() -> list[tuple[int, str]]:
        """Numbered migrations shipped in ``bot/migrations``, in order."""
        found: list[tuple[int, str]] = []
        for entry in resources.files("bot.migrations").iterdir():
            match = _MIGRATION_NAME.match(entry.name)
            if match:
                found.append((int(match.group(1)), entry.read_text(encoding="utf-8")))
        found.sort()
        numbers = [n for n, _ in found]
        if numbers != list(range(1, len(numbers) + 1)):
            raise RuntimeError(f"migrations must be numbered 1..n without gaps, found {numbers}")
        return found

    async def schema_version(self) -> int:
        async with self.conn.execute("PRAGMA user_version") as cur:
            row = present(await cur.fetchone(), "PRAGMA user_version")
        return int(row[0])

    async def migrate(self) -> None:
        current = await self.schema_version()
        for number, sql in self.migrations():
            if number <= current:
                continue
            log.info("applying database migration %04d", number)
            async with self._write_lock:
                await self._apply_migration(number, sql)

    async def _apply_migration(self, number: int, sql: str) -> None:
        """One migration and its version bump in one transaction, with foreign keys off around it (SQLite's
        ALTER procedure: a migration may rebuild a table others point at; the pragma is a no-op inside a
        transaction), and ``PRAGMA foreign_key_check`` before the commit: a migration that breaks a
        reference is rolled back."""
        await self.conn.execute("PRAGMA foreign_keys=OFF")
        try:
            # executescript commits first, then runs the script: it leaves this transaction open.
            await self.conn.executescript(f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {number};")
            async with self.conn.execute("PRAGMA foreign_key_check") as cur:
                broken = list(await cur.fetchall())
            if broken:
                raise RuntimeError(f"database migration {number:04d} breaks foreign keys: "
                                   f"{[tuple(row) for row in broken[:5]]}")
            await self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                await self.conn.execute("ROLLBACK")
            raise
        finally:
            await self.conn.execute("PRAGMA foreign_keys=ON")

    async def ping(self) -> None:
        """One trivial query (the health check): raises when the database does not answer."""
        await self.fetchval("SELECT 1")

    # -- transactions and the query surface the repositories use ---------------------------------

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """A write transaction (BEGIN IMMEDIATE) serialised with every other write."""
        async with self._write_lock:
            await self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield Transaction(self.conn)
            except BaseException:
                await self.conn.execute("ROLLBACK")
                raise
            else:
                await self.conn.execute("COMMIT")

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one write statement on its own; returns the affected row count.

        One trip to the database thread: the finished statement's cursor holds nothing open (sqlite3
        resets a statement once it has run to completion), so it is left to the garbage collector
        instead of costing a second trip to close it.
        """
        async with self._write_lock:
            return (await self.conn.execute(sql, params)).rowcount

    async def write_returning(self, sql: str, params: Sequence[Any] = ()) -> list[aiosqlite.Row]:
        """Run one write statement with a ``RETURNING`` clause on its own; returns its rows (one trip)."""
        async with self._write_lock:
            return list(await self.conn.execute_fetchall(sql, params))

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> aiosqlite.Row | None:
        rows = await self.conn.execute_fetchall(sql, params)  # one trip to the database thread, not three
        return next(iter(rows), None)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[aiosqlite.Row]:
        return list(await self.conn.execute_fetchall(sql, params))

    async def fetchval(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = await self.fetchone(sql, params)
        return None if row is None else row[0]

    # -- meta ----------------------------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None:
        value: str | None = await self.fetchval("SELECT value FROM meta WHERE key = ?", (key,))
        return value

    async def set_meta(self, key: str, value: str) -> None:
        await self.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )
