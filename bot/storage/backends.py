"""The two backends under :class:`~bot.storage.database.Database`: SQLite (aiosqlite, one connection, the
embedded default) and PostgreSQL (asyncpg, a pool per process, for several processes sharing one database).

Both run the repositories' SQL as written (``?`` placeholders; PostgreSQL numbers them), hand out the
transaction object of :mod:`bot.storage.base` and apply the numbered migrations of their own dialect
(``bot/migrations/sqlite/``, ``bot/migrations/postgres/``, the same numbers). What differs between the
dialects and a repository must ask is on :class:`Dialect`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg

from bot.storage.base import Row, Transaction, present

log = logging.getLogger(__name__)

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

MIN_SQLITE = (3, 35, 0)  # UPDATE … RETURNING

#: Connections each process keeps to PostgreSQL (asyncpg's pool): enough for the bot's concurrent queries
#: (most are one short statement), few enough that several shard processes fit in the server's
#: ``max_connections`` (100 by default). Plus one more per process that only listens for notifications.
POSTGRES_POOL_SIZE = 10

#: How long closing waits for queries in flight before it drops the connections.
POOL_CLOSE_SECONDS = 10.0

#: The session-level advisory lock every process takes while it checks and applies migrations.
MIGRATION_LOCK_KEY = 0x6E616E6F766F6963  # "nanovoic"

#: The file next to an SQLite database that its one process holds an exclusive ``flock`` on while connected.
PROCESS_LOCK_SUFFIX = ".lock"

#: The LISTEN/NOTIFY channel of every process's notifications (payload: "<topic>:<text>").
NOTIFY_CHANNEL = "nanovoice"


@dataclass(frozen=True, slots=True)
class Dialect:
    """What a repository asks where one SQL text can't serve both databases."""

    name: str
    #: The TTS cache's eviction order (least recently used, then oldest; SQLite then by rowid, PostgreSQL,
    #: which has no rowid, by key), answered from the covering index ``tts_cache_lru``.
    cache_eviction_order: str
    #: Appended to a SELECT whose rows the transaction is about to change, so no other transaction changes
    #: them first (PostgreSQL row locks; SQLite's ``BEGIN IMMEDIATE`` already holds the whole database).
    lock_rows: str = ""
    #: Appended to the clone-job sweep's SELECT: rows another process's sweep is claiming are passed over,
    #: not waited for (nothing on SQLite: one process).
    skip_locked: str = ""


SQLITE = Dialect(
    "sqlite", "SELECT key, size FROM tts_cache ORDER BY last_used_at, created_at, rowid LIMIT ?",
)
POSTGRES = Dialect(
    "postgres", "SELECT key, size FROM tts_cache ORDER BY last_used_at, created_at, key LIMIT ?",
    lock_rows=" FOR UPDATE", skip_locked=" FOR UPDATE SKIP LOCKED",
)


def migrations(dialect: str) -> list[tuple[int, str]]:
    """Numbered migrations shipped in ``bot/migrations/<dialect>``, in order."""
    found: list[tuple[int, str]] = []
    for entry in resources.files("bot.migrations").joinpath(dialect).iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.read_text(encoding="utf-8")))
    found.sort()
    numbers = [n for n, _ in found]
    if numbers != list(range(1, len(numbers) + 1)):
        raise RuntimeError(f"{dialect} migrations must be numbered 1..n without gaps, found {numbers}")
    return found


def is_postgres_url(target: object) -> bool:
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


def advisory_key(key: str) -> int:
    """The signed 64-bit advisory-lock number of a lock name (the same in every process)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big", signed=True)


@lru_cache(maxsize=2048)
def numbered(sql: str) -> str:
    """``sql`` with its ``?`` placeholders numbered ``$1, $2 …`` (none is inside a quoted literal or name)."""
    out: list[str] = []
    number = 0
    quote: str | None = None
    for ch in sql:
        if quote is not None:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "?":
            number += 1
            out.append(f"${number}")
            continue
        out.append(ch)
    return "".join(out)


class DatabaseInUse(RuntimeError):
    """Another process holds this SQLite database (its ``.lock`` file); ``str()`` is the line operators see."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"another nanovoice process is already using the database {path}: stop it first, or "
                         "share a PostgreSQL database (DATABASE_URL) between processes")
        self.path = path


def _lock_process_file(path: Path) -> int | None:
    """An exclusive, non-blocking ``flock`` on ``<path>.lock`` (created when missing): its open descriptor,
    or :class:`DatabaseInUse` when another process holds it. The kernel releases it when the descriptor is
    closed or the process dies (SIGKILL included), so a crash never leaves a stale lock behind. A file of
    its own, not the database: SQLite's own locks are ``fcntl`` locks on the database, which ``flock`` must
    not meet (on NFS Linux emulates ``flock`` with them). None where there is no ``flock`` (Windows)."""
    try:
        import fcntl
    except ImportError:
        return None
    real = path.resolve()  # one lock file per database file, whatever path (relative, a symlink) names it
    lock_path = real.with_name(real.name + PROCESS_LOCK_SUFFIX)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DatabaseInUse(path) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _rowcount(status: str) -> int:
    """The row count of an asyncpg command status ("UPDATE 3", "INSERT 0 1", "DELETE 0")."""
    last = status.rpartition(" ")[2]
    return int(last) if last.isdigit() else 0


# -- SQLite ------------------------------------------------------------------------------------------------


class SqliteTransaction(Transaction):
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def lock(self, *keys: str) -> None:
        """No-op: ``BEGIN IMMEDIATE`` already holds every write of the (single-process) database."""

    async def notify(self, channel: str, payload: str) -> None:
        """No-op: only one process uses an SQLite database."""

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return (await self._conn.execute(sql, params)).rowcount

    async def insert(self, sql: str, params: Sequence[Any] = ()) -> int:
        cursor = await self._conn.execute(sql, params)
        if cursor.lastrowid is None:
            raise RuntimeError("the database did not report the id of an inserted row")
        return cursor.lastrowid

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        return next(iter(await self._conn.execute_fetchall(sql, params)), None)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return list(await self._conn.execute_fetchall(sql, params))

    async def fetchval(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = await self.fetchone(sql, params)
        return None if row is None else row[0]


class SqliteBackend:
    """One aiosqlite connection; writes serialised through one lock (single statements or ``BEGIN
    IMMEDIATE`` transactions), so a check-then-write is atomic with many coroutines in flight."""

    dialect = SQLITE
    shared = False  # one process only: no other process can change what this one cached

    def __init__(self, path: Path | str, *, process_lock: bool = True) -> None:
        self.path = Path(path) if str(path) != ":memory:" else path
        self.process_lock = process_lock
        self._conn: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._lock_fd: int | None = None
        self._sections: dict[str, asyncio.Lock] = {}

    def describe(self) -> str:
        return str(self.path)

    async def connect(self) -> None:
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise RuntimeError(f"SQLite {sqlite3.sqlite_version} is too old: nanovoice needs "
                               f"{'.'.join(map(str, MIN_SQLITE))} or newer (for RETURNING)")
        if isinstance(self.path, Path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.process_lock:
                self._lock_fd = _lock_process_file(self.path)
        try:
            self._conn = await aiosqlite.connect(str(self.path), isolation_level=None)
        except BaseException:
            self._unlock_process_file()
            raise
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

    async def close(self) -> None:
        try:
            if self._conn is not None:
                await self._conn.close()
                self._conn = None
        finally:
            self._unlock_process_file()

    def _unlock_process_file(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock

    @asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[None]:
        """One holder of ``name`` at a time in this process (the only one using the file)."""
        async with self._sections.setdefault(name, asyncio.Lock()):
            yield

    @property
    def conn(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise RuntimeError("database is not connected")
        return self._conn

    async def schema_version(self) -> int:
        async with self.conn.execute("PRAGMA user_version") as cur:
            row = present(await cur.fetchone(), "PRAGMA user_version")
        return int(row[0])

    async def migrate(self) -> None:
        current = await self.schema_version()
        for number, sql in migrations("sqlite"):
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

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        async with self._write_lock:
            await self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield SqliteTransaction(self.conn)
            except BaseException:
                await self.conn.execute("ROLLBACK")
                raise
            else:
                await self.conn.execute("COMMIT")

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        # One trip to the database thread: the finished statement's cursor holds nothing open (sqlite3
        # resets a statement once it has run to completion), so it is left to the garbage collector.
        async with self._write_lock:
            return (await self.conn.execute(sql, params)).rowcount

    async def write_returning(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        async with self._write_lock:
            return list(await self.conn.execute_fetchall(sql, params))

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = await self.conn.execute_fetchall(sql, params)  # one trip to the database thread, not three
        return next(iter(rows), None)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return list(await self.conn.execute_fetchall(sql, params))

    def subscribe(self, handler: Callable[[str | None], None]) -> None:
        """Nothing to listen to: no other process writes this database."""


# -- PostgreSQL --------------------------------------------------------------------------------------------


class PostgresTransaction(Transaction):
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def lock(self, *keys: str) -> None:
        """``pg_advisory_xact_lock`` on every key, in sorted order (so no two transactions deadlock), in one
        statement; held until the transaction ends."""
        numbers = sorted({advisory_key(k) for k in keys})
        if numbers:
            calls = ", ".join(f"pg_advisory_xact_lock(${i}::bigint)" for i in range(1, len(numbers) + 1))
            await self._conn.execute(f"SELECT {calls}", *numbers)

    async def notify(self, channel: str, payload: str) -> None:
        await self._conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, f"{channel}:{payload}")

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return _rowcount(await self._conn.execute(numbered(sql), *params))

    async def insert(self, sql: str, params: Sequence[Any] = ()) -> int:
        new_id = await self._conn.fetchval(numbered(sql) + " RETURNING id", *params)
        if new_id is None:
            raise RuntimeError("the database did not report the id of an inserted row")
        return int(new_id)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        return await self._conn.fetchrow(numbered(sql), *params)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return list(await self._conn.fetch(numbered(sql), *params))

    async def fetchval(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return await self._conn.fetchval(numbered(sql), *params)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing. asyncpg's default (``pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL``) costs one more round trip per query, and the bot leaves no session state on a
    pooled connection: its advisory locks are transaction-scoped (the migration lock and those of
    :meth:`PostgresBackend.exclusive` are released explicitly), it LISTENs on a connection of its own and
    never SETs outside a transaction."""


class PostgresBackend:
    """An asyncpg pool of :data:`POSTGRES_POOL_SIZE` connections, plus one connection that LISTENs for
    the other processes' notifications (cache invalidation). Transactions are READ COMMITTED; a
    check-then-write names what it reads with :meth:`PostgresTransaction.lock` (advisory locks)."""

    dialect = POSTGRES
    shared = True  # other processes may write the same database

    def __init__(self, url: str, *, pool_size: int = POSTGRES_POOL_SIZE) -> None:
        self.url = url
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._handlers: list[Callable[[str | None], None]] = []
        self._reconnect: asyncio.Task[None] | None = None
        self._closing = False
        self._held: dict[int, asyncpg.Connection] = {}  # session advisory locks held on their own connection

    def describe(self) -> str:
        """The URL without its password (for messages and logs)."""
        return re.sub(r"(//[^/:@]*):[^@/]*@", r"\1:***@", self.url)

    @property
    def listening(self) -> bool:
        """Whether this process hears other processes' notifications right now."""
        return self._listener is not None and not self._listener.is_closed()

    async def connect(self) -> None:
        self._closing = False
        self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=self.pool_size, reset=_keep_session)
        try:
            await self.migrate()
            await self._listen()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        self._closing = True
        if self._reconnect is not None:
            self._reconnect.cancel()
            self._reconnect = None
        for key in list(self._held):
            await self.release_lock(key)
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), POOL_CLOSE_SECONDS)
            except TimeoutError:
                log.warning("PostgreSQL connections still busy after %ss at shutdown: closing them", POOL_CLOSE_SECONDS)
                pool.terminate()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("database is not connected")
        return self._pool

    # -- migrations --------------------------------------------------------------------------------------

    async def schema_version(self) -> int:
        version = await self.pool.fetchval(
            "SELECT version FROM nanovoice_schema WHERE id = 1"
        ) if await self.pool.fetchval("SELECT to_regclass('nanovoice_schema') IS NOT NULL") else 0
        return int(version or 0)

    async def migrate(self) -> None:
        """Apply the missing PostgreSQL migrations, each in its own transaction with its version bump, under
        a session advisory lock: processes starting together apply each one once."""
        async with self.pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
            try:
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS nanovoice_schema (id INTEGER PRIMARY KEY CHECK (id = 1), "
                    "version INTEGER NOT NULL); "
                    "INSERT INTO nanovoice_schema (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING"
                )
                current = int(await conn.fetchval("SELECT version FROM nanovoice_schema WHERE id = 1"))
                for number, sql in migrations("postgres"):
                    if number <= current:
                        continue
                    log.info("applying database migration %04d (PostgreSQL)", number)
                    async with conn.transaction():
                        await conn.execute(sql)
                        await conn.execute("UPDATE nanovoice_schema SET version = $1 WHERE id = 1", number)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)

    # -- notifications -----------------------------------------------------------------------------------

    def subscribe(self, handler: Callable[[str | None], None]) -> None:
        """Call ``handler("<topic>:<text>")`` for each notification of any process (this one's included),
        and ``handler(None)`` when notifications may have been missed (the listening connection was lost)."""
        self._handlers.append(handler)

    def _dispatch(self, payload: str | None) -> None:
        for handler in self._handlers:
            try:
                handler(payload)
            except Exception:
                log.exception("a database notification handler failed")

    def _on_notification(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        self._dispatch(payload)

    def _on_lost(self, conn: Any) -> None:
        if self._closing:
            return
        log.warning("lost the PostgreSQL notification connection; cached settings are read through until "
                    "it is back")
        self._listener = None
        self._dispatch(None)
        if self._reconnect is None or self._reconnect.done():
            self._reconnect = asyncio.get_running_loop().create_task(self._relisten())

    async def _listen(self) -> None:
        listener = await asyncpg.connect(self.url)
        await listener.add_listener(NOTIFY_CHANNEL, self._on_notification)
        listener.add_termination_listener(self._on_lost)
        self._listener = listener

    async def _relisten(self) -> None:
        delay = 1.0
        while not self._closing:
            await asyncio.sleep(delay)
            try:
                await self._listen()
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("cannot listen for PostgreSQL notifications yet: %s", exc)
                delay = min(delay * 2, 30.0)
                continue
            self._dispatch(None)  # anything may have changed while nobody listened
            log.info("listening for PostgreSQL notifications again")
            return

    # -- liveness locks ----------------------------------------------------------------------------------

    async def hold_lock(self, key: int) -> None:
        """Take the session-level advisory lock ``key`` on a connection of its own and keep it until
        :meth:`release_lock` (or until the connection is gone: a killed process's locks go with it, which
        the other processes see at once through :meth:`locks_held`)."""
        if self.holding(key):
            return
        conn = await asyncpg.connect(self.url)
        try:
            await conn.execute("SELECT pg_advisory_lock($1)", key)
        except BaseException:
            await conn.close()
            raise
        self._held[key] = conn

    def holding(self, key: int) -> bool:
        """Whether this process still holds ``key`` (its connection is open)."""
        conn = self._held.get(key)
        return conn is not None and not conn.is_closed()

    async def release_lock(self, key: int) -> None:
        """Give ``key`` back (closing its connection releases it)."""
        conn = self._held.pop(key, None)
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), POOL_CLOSE_SECONDS)
            except (OSError, TimeoutError, asyncpg.PostgresError):
                conn.terminate()

    async def locks_held(self, keys: Sequence[int]) -> set[int]:
        """Which of the advisory lock numbers ``keys`` some session of this database holds right now."""
        if not keys:
            return set()
        # A bigint advisory lock shows in pg_locks as classid (high 32 bits), objid (low) and objsubid 1.
        rows = await self.pool.fetch(
            "SELECT (classid::bigint << 32) | objid::bigint AS key FROM pg_locks WHERE locktype = 'advisory' "
            "AND objsubid = 1 AND granted AND database = (SELECT oid FROM pg_database WHERE datname = "
            "current_database()) AND ((classid::bigint << 32) | objid::bigint) = ANY($1::bigint[])",
            list(keys),
        )
        return {int(r["key"]) for r in rows}

    # -- queries -----------------------------------------------------------------------------------------

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        async with self.pool.acquire() as conn, conn.transaction():
            yield PostgresTransaction(conn)

    @asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[None]:
        """A session ``pg_advisory_lock`` on ``name``, on one pooled connection kept for the block: one holder
        across every process sharing the database. Released when the block ends, however it ends; a holder
        (or waiter) cancelled where the lock's state is unknown drops its connection, which the server
        answers by releasing every lock of that session (as it does for a killed process)."""
        key = advisory_key(f"exclusive:{name}")
        async with self.pool.acquire() as conn:
            try:
                await conn.execute("SELECT pg_advisory_lock($1)", key)
            except BaseException:
                conn.terminate()  # cancelled while waiting: it may have been granted just then
                raise
            try:
                yield
            finally:
                try:
                    await conn.execute("SELECT pg_advisory_unlock($1)", key)
                except BaseException:
                    conn.terminate()  # the lock must not stay with a pooled connection
                    raise

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return _rowcount(await self.pool.execute(numbered(sql), *params))

    async def write_returning(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return list(await self.pool.fetch(numbered(sql), *params))

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        return await self.pool.fetchrow(numbered(sql), *params)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return list(await self.pool.fetch(numbered(sql), *params))


Backend = SqliteBackend | PostgresBackend
