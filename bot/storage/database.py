"""The connection owner: the backend (SQLite or PostgreSQL), numbered migrations, transactions, meta.

``Database(path)`` is an SQLite file (one aiosqlite connection, the embedded default); ``Database(url)`` with
a ``postgresql://`` URL is a PostgreSQL database shared by several processes (an asyncpg pool). The
repositories, one per aggregate and reached as attributes (``db.voices``, ``db.jobs``, ``db.ledger`` …), run
the same SQL on both (:mod:`bot.storage.backends`). Writes run either as a single autocommitted statement
or inside :meth:`Database.transaction`, where a check-then-write (a quota, a unique name) names what it
reads with ``tx.lock(…)``, so it is atomic even with many coroutines and processes in flight.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiosqlite

from bot.storage.backends import (
    MIN_SQLITE,
    Backend,
    DatabaseInUse,
    Dialect,
    PostgresBackend,
    SqliteBackend,
    is_postgres_url,
    migrations,
)
from bot.storage.base import Repository, Row, Transaction
from bot.storage.blocks import BlockRepository
from bot.storage.cache import TtsCacheRepository
from bot.storage.cooldowns import CooldownRepository
from bot.storage.files import StoredFileRepository
from bot.storage.guilds import GuildSettingsRepository
from bot.storage.instances import InstanceRepository
from bot.storage.jobs import CloneJobRepository
from bot.storage.ledger import LedgerRepository
from bot.storage.voices import UserSettingsRepository, VoiceRepository

if TYPE_CHECKING:
    from bot.config import Config

log = logging.getLogger(__name__)

__all__ = ["MIN_SQLITE", "Database", "DatabaseInUse"]


class Database:
    """Owns the backend's connections. Open with :meth:`connect`, close with :meth:`close`."""

    def __init__(self, target: Path | str, *, process_lock: bool = True) -> None:
        """``process_lock=False`` opens an SQLite file without claiming it for this process (``nanovoice
        check`` beside a running bot); the bot always claims it: a second bot on the file is refused."""
        self.backend: Backend = (PostgresBackend(target) if isinstance(target, str) and is_postgres_url(target)
                                 else SqliteBackend(target, process_lock=process_lock))
        self._topics: dict[str, list[Callable[[str | None], None]]] = {}  # subscribe(): handlers per topic
        self.voices = VoiceRepository(self)
        self.user_settings = UserSettingsRepository(self)
        self.jobs = CloneJobRepository(self)
        self.ledger = LedgerRepository(self)
        self.cache = TtsCacheRepository(self)
        self.files = StoredFileRepository(self)
        self.guilds = GuildSettingsRepository(self)
        self.blocks = BlockRepository(self)
        self.cooldowns = CooldownRepository(self)
        self.instances = InstanceRepository(self)  # no user data: not one of repositories()

    @classmethod
    def from_config(cls, config: Config, *, process_lock: bool = True) -> Database:
        """The database the configuration names: ``DATABASE_URL`` (PostgreSQL) or ``DATABASE_PATH``."""
        return cls(str(config.database_url) if config.database_url else config.database_path,
                   process_lock=process_lock)

    def repositories(self) -> tuple[Repository, ...]:
        """Every repository of user data, for the privacy service (each one can delete a user's rows);
        ``db.instances`` (the running processes) holds none."""
        return (self.cache, self.user_settings, self.jobs, self.voices, self.files, self.ledger, self.guilds,
                self.blocks, self.cooldowns)

    @property
    def dialect(self) -> Dialect:
        return self.backend.dialect

    @property
    def path(self) -> Path | str | None:
        """The SQLite file (None on PostgreSQL)."""
        return self.backend.path if isinstance(self.backend, SqliteBackend) else None

    def describe(self) -> str:
        """Where the data lives, for people: the SQLite path or the PostgreSQL URL without its password."""
        return self.backend.describe()

    # -- lifecycle -----------------------------------------------------------------------------

    async def connect(self) -> Database:
        await self.backend.connect()
        return self

    async def close(self) -> None:
        await self.backend.close()

    @property
    def conn(self) -> aiosqlite.Connection:
        """The SQLite connection (for SQLite-only tools such as the benchmarks' bulk fill)."""
        if not isinstance(self.backend, SqliteBackend):
            raise RuntimeError("the database is PostgreSQL: there is no SQLite connection")
        return self.backend.conn

    @staticmethod
    def migrations(dialect: str = "sqlite") -> list[tuple[int, str]]:
        """Numbered migrations shipped in ``bot/migrations/<dialect>`` (``sqlite``, ``postgres``), in order."""
        return migrations(dialect)

    async def schema_version(self) -> int:
        return await self.backend.schema_version()

    async def migrate(self) -> None:
        await self.backend.migrate()

    async def ping(self) -> None:
        """One trivial query (the health check): raises when the database does not answer."""
        await self.fetchval("SELECT 1")

    def subscribe(self, topic: str, handler: Callable[[str | None], None]) -> None:
        """``handler(text)`` hears every ``tx.notify(topic, text)`` of this topic once committed, from any
        process sharing the database (this one's included), and ``handler(None)`` when some may have been
        missed (PostgreSQL only; on SQLite no other process writes, so it never fires)."""
        if not self._topics:
            self.backend.subscribe(self._route)
        self._topics.setdefault(topic, []).append(handler)

    def _route(self, payload: str | None) -> None:
        """One notification (``"topic:text"``, or None: some may have been missed) to its topic's handlers."""
        text: str | None = None
        if payload is None:
            handlers = [h for hs in self._topics.values() for h in hs]
        else:
            topic, _, text = payload.partition(":")
            handlers = list(self._topics.get(topic, ()))
        for handler in handlers:
            try:
                handler(text)
            except Exception:
                log.exception("a database notification handler failed")

    @property
    def shared(self) -> bool:
        """Whether other bot processes may use this database at the same time (PostgreSQL); an SQLite file
        has one process (:meth:`connect` refuses a second one: :class:`DatabaseInUse`)."""
        return self.backend.shared

    def exclusive(self, name: str) -> AbstractAsyncContextManager[None]:
        """``async with db.exclusive("command-sync"):`` one holder of ``name`` at a time across every process
        sharing the database (a session advisory lock on PostgreSQL, held on one pooled connection for the
        block); on SQLite, whose one process is the only user, an in-process lock. Released when the block
        ends, cancelled or not."""
        return self.backend.exclusive(name)

    @property
    def caches_safely(self) -> bool:
        """Whether what this process caches is kept current: always on SQLite (no other process writes);
        on PostgreSQL while it listens for the others' notifications."""
        return not isinstance(self.backend, PostgresBackend) or self.backend.listening

    # -- transactions and the query surface the repositories use ---------------------------------

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """A write transaction: ``BEGIN IMMEDIATE`` on SQLite (serialised with every other write), READ
        COMMITTED on PostgreSQL (take ``tx.lock(…)`` before a check-then-write)."""
        return self.backend.transaction()

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one write statement on its own; returns the affected row count."""
        return await self.backend.execute(sql, params)

    async def write_returning(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run one write statement with a ``RETURNING`` clause on its own; returns its rows (one trip)."""
        return await self.backend.write_returning(sql, params)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        return await self.backend.fetchone(sql, params)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return await self.backend.fetchall(sql, params)

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
