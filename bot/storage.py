"""SQLite storage: one connection, numbered migrations, and every query the bot runs.

All SQL lives here and is parameterised. Writes are serialised through one lock and run either as a
single autocommitted statement or inside :meth:`Database.transaction` (``BEGIN IMMEDIATE``), so a
check-then-write (a quota, a unique name) is atomic even with many coroutines in flight.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar, overload

import aiosqlite

log = logging.getLogger(__name__)

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

OPEN_JOB_STATES = ("submitting", "pending", "processing")
MIN_SQLITE = (3, 35, 0)  # UPDATE … RETURNING
# The TTS cache's eviction order: least recently used, then oldest, then first stored (from the covering
# index tts_cache_lru of migration 0002, never the audio rows).
CACHE_EVICTION_ORDER = "SELECT key, size FROM tts_cache ORDER BY last_used_at, created_at, rowid LIMIT ?"


def name_key(name: str) -> str:
    """The case-insensitive identity of a voice name."""
    return name.strip().casefold()


@dataclass(frozen=True, slots=True)
class Voice:
    id: int
    user_id: int
    guild_id: int | None
    name: str
    provider: str
    provider_voice_id: str | None
    embedding_url: str | None
    embedding_expires_at: float | None
    embedding_file_id: int | None
    transcript: str | None
    clone_model: str | None
    created_at: float
    last_used_at: float | None


@dataclass(frozen=True, slots=True)
class CloneJob:
    id: int
    run_id: str | None
    provider: str
    user_id: int
    guild_id: int | None
    channel_id: int | None
    application_id: int | None
    interaction_token: str | None
    token_expires_at: float | None
    voice_name: str
    custom_voice_id: str | None
    transcript: str | None
    clone_model: str | None
    cost_micros: int | None
    payment_source: str | None
    is_api_request: int | None
    state: str
    error: str | None
    created_at: float
    submitted_at: float | None
    next_poll_at: float | None
    last_polled_at: float | None
    poll_count: int
    failures: int
    finished_at: float | None
    voice_id: int | None
    notified_at: float | None

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_JOB_STATES


@dataclass(frozen=True, slots=True)
class StoredFile:
    id: int
    user_id: int
    kind: str
    token: str
    filename: str
    content_type: str
    size: int
    sha256: str
    created_at: float
    discord_url: str | None
    discord_url_expires_at: float | None
    discord_message_id: int | None


@dataclass(frozen=True, slots=True)
class GuildSettings:
    guild_id: int
    daily_budget_micros: int | None
    clone_role_id: int | None
    clones_enabled: bool | None
    voice_playback: bool | None = None  # None: never set (on)


@dataclass(frozen=True, slots=True)
class Block:
    """A user or a server the bot's owner has blocked (``kind`` 'user' or 'guild')."""

    kind: str
    target_id: int
    reason: str | None
    blocked_by: int
    created_at: float


@dataclass(frozen=True, slots=True)
class CacheEntry:
    key: str
    content_type: str
    data: bytes


class _RowRecord(Protocol):
    """A slotted dataclass whose fields are the columns of a row (``Voice``, ``CloneJob``, …)."""

    __slots__: ClassVar[tuple[str, ...]]


_R = TypeVar("_R", bound=_RowRecord)


@overload
def _row_to(cls: type[_R], row: aiosqlite.Row) -> _R: ...
@overload
def _row_to(cls: type[_R], row: aiosqlite.Row | None) -> _R | None: ...
def _row_to(cls: type[_R], row: aiosqlite.Row | None) -> _R | None:
    if row is None:
        return None
    return cls(**{k: row[k] for k in cls.__slots__})


def _present(row: aiosqlite.Row | None, what: str) -> aiosqlite.Row:
    """``row``, which the schema guarantees (a single-row table, an aggregate); RuntimeError if missing."""
    if row is None:
        raise RuntimeError(f"the database returned no row for {what}")
    return row


def _inserted_id(cursor: aiosqlite.Cursor) -> int:
    """The rowid an INSERT just created; RuntimeError if SQLite reports none."""
    if cursor.lastrowid is None:
        raise RuntimeError("the database did not report the id of an inserted row")
    return cursor.lastrowid


class DuplicateVoiceName(Exception):
    """The user already has a voice with this (case-insensitive) name."""


class Database:
    """Owns the aiosqlite connection. Open with :meth:`connect`, close with :meth:`close`."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path) if str(path) != ":memory:" else path
        self._conn: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._guild_settings: dict[int, GuildSettings] = {}

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

    async def __aenter__(self) -> Database:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

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
            row = _present(await cur.fetchone(), "PRAGMA user_version")
        return int(row[0])

    async def migrate(self) -> None:
        current = await self.schema_version()
        for number, sql in self.migrations():
            if number <= current:
                continue
            log.info("applying database migration %04d", number)
            async with self._write_lock:
                # executescript commits first; wrap the migration and the version bump together.
                await self.conn.executescript(f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {number};\nCOMMIT;")

    # -- primitives ----------------------------------------------------------------------------

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction (BEGIN IMMEDIATE) serialised with every other write."""
        async with self._write_lock:
            await self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
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
        return await self.fetchval("SELECT value FROM meta WHERE key = ?", (key,))

    async def set_meta(self, key: str, value: str) -> None:
        await self.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # -- voices --------------------------------------------------------------------------------

    async def list_voices(self, user_id: int) -> list[Voice]:
        rows = await self.fetchall(
            "SELECT * FROM voices WHERE user_id = ? ORDER BY name_key", (user_id,)
        )
        return [_row_to(Voice, r) for r in rows]

    async def get_voice_by_name(self, user_id: int, name: str) -> Voice | None:
        row = await self.fetchone(
            "SELECT * FROM voices WHERE user_id = ? AND name_key = ?", (user_id, name_key(name))
        )
        return _row_to(Voice, row)

    async def get_voice(self, user_id: int, voice_id: int) -> Voice | None:
        """A voice by id, only if it belongs to ``user_id``."""
        row = await self.fetchone("SELECT * FROM voices WHERE id = ? AND user_id = ?", (voice_id, user_id))
        return _row_to(Voice, row)

    async def voice_name_taken(self, user_id: int, name: str) -> bool:
        return await self.get_voice_by_name(user_id, name) is not None

    async def rename_voice(self, user_id: int, voice_id: int, new_name: str) -> None:
        try:
            await self.execute(
                "UPDATE voices SET name = ?, name_key = ? WHERE id = ? AND user_id = ?",
                (new_name.strip(), name_key(new_name), voice_id, user_id),
            )
        except aiosqlite.IntegrityError:
            raise DuplicateVoiceName(new_name) from None

    async def delete_voice(self, user_id: int, voice_id: int) -> bool:
        async with self.transaction() as tx:
            row = await (await tx.execute(
                "SELECT embedding_file_id FROM voices WHERE id = ? AND user_id = ?", (voice_id, user_id)
            )).fetchone()
            if row is None:
                return False
            await tx.execute("DELETE FROM voices WHERE id = ? AND user_id = ?", (voice_id, user_id))
            if row[0] is not None:
                await tx.execute("DELETE FROM stored_files WHERE id = ? AND user_id = ?", (row[0], user_id))
            return True

    async def touch_voice(self, voice_id: int, now: float) -> None:
        await self.execute("UPDATE voices SET last_used_at = ? WHERE id = ?", (now, voice_id))

    async def is_cloned_voice_id(self, provider_voice_id: str) -> bool:
        """Whether any user's cloned voice (or clone job) carries this provider voice id."""
        row = await self.fetchone(
            "SELECT 1 FROM voices WHERE provider_voice_id = ? COLLATE NOCASE "
            "UNION ALL SELECT 1 FROM clone_jobs WHERE custom_voice_id = ? COLLATE NOCASE LIMIT 1",
            (provider_voice_id, provider_voice_id),
        )
        return row is not None

    # -- user settings -------------------------------------------------------------------------

    async def get_default_voice(self, user_id: int) -> Voice | None:
        row = await self.fetchone(
            "SELECT v.* FROM user_settings s JOIN voices v ON v.id = s.default_voice_id "
            "WHERE s.user_id = ? AND v.user_id = ?",
            (user_id, user_id),
        )
        return _row_to(Voice, row)

    async def set_default_voice(self, user_id: int, voice_id: int | None, now: float) -> None:
        await self.execute(
            "INSERT INTO user_settings (user_id, default_voice_id, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (user_id) DO UPDATE SET default_voice_id = excluded.default_voice_id, "
            "updated_at = excluded.updated_at",
            (user_id, voice_id, now),
        )

    # -- guild settings ------------------------------------------------------------------------

    async def get_guild_settings(self, guild_id: int) -> GuildSettings:
        """A guild's settings; cached, since every paid call reads them and only this class writes them."""
        cached = self._guild_settings.get(guild_id)
        if cached is not None:
            return cached
        settings = await self._load_guild_settings(guild_id)
        self._guild_settings[guild_id] = settings
        return settings

    async def _load_guild_settings(self, guild_id: int) -> GuildSettings:
        row = await self.fetchone(
            "SELECT guild_id, daily_budget_micros, clone_role_id, clones_enabled, voice_playback FROM guild_settings "
            "WHERE guild_id = ?",
            (guild_id,),
        )
        if row is None:
            return GuildSettings(guild_id, None, None, None)
        enabled = None if row["clones_enabled"] is None else bool(row["clones_enabled"])
        playback = None if row["voice_playback"] is None else bool(row["voice_playback"])
        return GuildSettings(guild_id, row["daily_budget_micros"], row["clone_role_id"], enabled, playback)

    async def update_guild_settings(self, guild_id: int, now: float, **changes: Any) -> GuildSettings:
        """Set some of daily_budget_micros, clone_role_id, clones_enabled, voice_playback (None: the default)."""
        allowed = {"daily_budget_micros", "clone_role_id", "clones_enabled", "voice_playback"}
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"unknown guild settings {sorted(unknown)}")
        self._guild_settings.pop(guild_id, None)
        async with self.transaction() as tx:
            await tx.execute(
                "INSERT INTO guild_settings (guild_id, updated_at) VALUES (?, ?) ON CONFLICT (guild_id) DO NOTHING",
                (guild_id, now),
            )
            for column in sorted(changes):  # column names come from the fixed set above
                value = changes[column]
                if column in ("clones_enabled", "voice_playback") and value is not None:
                    value = int(bool(value))
                await tx.execute(
                    f"UPDATE guild_settings SET {column} = ?, updated_at = ? WHERE guild_id = ?",
                    (value, now, guild_id),
                )
        return await self.get_guild_settings(guild_id)

    # -- blocks (/owner block) -------------------------------------------------------------------

    async def list_blocks(self) -> list[Block]:
        rows = await self.fetchall(
            "SELECT kind, target_id, reason, blocked_by, created_at FROM blocks ORDER BY created_at, kind, target_id"
        )
        return [_row_to(Block, r) for r in rows]

    async def add_block(self, kind: str, target_id: int, reason: str | None, blocked_by: int, now: float) -> Block:
        """Block (or re-block with a new reason) a user or a guild; returns the stored block."""
        rows = await self.write_returning(
            "INSERT INTO blocks (kind, target_id, reason, blocked_by, created_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (kind, target_id) DO UPDATE SET reason = excluded.reason, blocked_by = excluded.blocked_by "
            "RETURNING kind, target_id, reason, blocked_by, created_at",
            (kind, target_id, reason, blocked_by, now),
        )
        return _row_to(Block, rows[0])

    async def remove_block(self, kind: str, target_id: int) -> bool:
        return await self.execute("DELETE FROM blocks WHERE kind = ? AND target_id = ?", (kind, target_id)) == 1

    # -- clone jobs ----------------------------------------------------------------------------

    async def get_job(self, job_id: int) -> CloneJob | None:
        return _row_to(CloneJob, await self.fetchone("SELECT * FROM clone_jobs WHERE id = ?", (job_id,)))

    async def open_jobs(self) -> list[CloneJob]:
        rows = await self.fetchall(
            f"SELECT * FROM clone_jobs WHERE state IN ({placeholders(OPEN_JOB_STATES)}) "
            "ORDER BY next_poll_at",
            OPEN_JOB_STATES,
        )
        return [_row_to(CloneJob, r) for r in rows]

    async def unnotified_finished_jobs(self) -> list[CloneJob]:
        rows = await self.fetchall(
            "SELECT * FROM clone_jobs WHERE state IN ('completed', 'failed', 'lost') AND notified_at IS NULL"
        )
        return [_row_to(CloneJob, r) for r in rows]

    async def user_jobs(self, user_id: int, limit: int = 10) -> list[CloneJob]:
        rows = await self.fetchall(
            "SELECT * FROM clone_jobs WHERE user_id = ? ORDER BY created_at DESC, id DESC LIMIT ?",
            (user_id, limit),
        )
        return [_row_to(CloneJob, r) for r in rows]

    async def update_job(self, job_id: int, **changes: Any) -> None:
        columns = set(CloneJob.__slots__) - {"id"}
        unknown = set(changes) - columns
        if unknown:
            raise ValueError(f"unknown clone job columns {sorted(unknown)}")
        assignments = ", ".join(f"{c} = ?" for c in sorted(changes))  # names from the fixed set above
        await self.execute(
            f"UPDATE clone_jobs SET {assignments} WHERE id = ?",
            (*(changes[c] for c in sorted(changes)), job_id),
        )

    async def mark_job_notified(self, job_id: int, now: float) -> bool:
        """Claim the single notification of a finished job; False if it was already sent."""
        return await self.execute(
            "UPDATE clone_jobs SET notified_at = ? WHERE id = ? AND notified_at IS NULL", (now, job_id)
        ) == 1

    # -- stored files --------------------------------------------------------------------------

    async def get_file(self, file_id: int) -> StoredFile | None:
        row = await self.fetchone(
            "SELECT id, user_id, kind, token, filename, content_type, size, sha256, created_at, discord_url, "
            "discord_url_expires_at, discord_message_id FROM stored_files WHERE id = ?",
            (file_id,),
        )
        return _row_to(StoredFile, row)

    async def get_file_data(self, file_id: int) -> bytes | None:
        return await self.fetchval("SELECT data FROM stored_files WHERE id = ?", (file_id,))

    async def get_file_by_token(self, token: str) -> tuple[StoredFile, bytes] | None:
        row = await self.fetchone("SELECT * FROM stored_files WHERE token = ?", (token,))
        if row is None:
            return None
        meta = _row_to(StoredFile, row)
        return meta, bytes(row["data"])

    async def set_file_discord_copy(self, file_id: int, url: str | None, expires_at: float | None,
                                    message_id: int | None) -> None:
        await self.execute(
            "UPDATE stored_files SET discord_url = ?, discord_url_expires_at = ?, discord_message_id = ? "
            "WHERE id = ?",
            (url, expires_at, message_id, file_id),
        )

    # -- tts cache -----------------------------------------------------------------------------

    async def cache_get(self, key: str, now: float) -> CacheEntry | None:
        """The entry under ``key`` (marked as just used), or None; one trip to the database thread."""
        rows = await self.write_returning(
            "UPDATE tts_cache SET last_used_at = ? WHERE key = ? RETURNING key, content_type, data", (now, key)
        )
        if not rows:
            return None
        return CacheEntry(rows[0]["key"], rows[0]["content_type"], bytes(rows[0]["data"]))

    async def cache_put(self, key: str, user_id: int, content_type: str, data: bytes, now: float,
                        max_bytes: int) -> int:
        """Store an entry and evict least-recently-used ones beyond ``max_bytes``; returns evictions.

        Triggers keep the totals (migration 0002) and the eviction order is a covering index, so a put
        never reads other entries' audio.
        """
        await self.execute(
            "INSERT INTO tts_cache (key, user_id, content_type, data, size, created_at, last_used_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET last_used_at = excluded.last_used_at",
            (key, user_id, content_type, data, len(data), now, now),
        )
        if (await self.cache_stats())[1] <= max_bytes:
            return 0
        return await self._cache_evict(max_bytes)

    async def _cache_evict(self, max_bytes: int, batch: int = 64) -> int:
        evicted = 0
        async with self.transaction() as tx:
            totals = await (await tx.execute("SELECT bytes FROM tts_cache_totals WHERE id = 1")).fetchone()
            total = _present(totals, "the TTS cache totals")[0]
            while total > max_bytes:
                rows = await tx.execute_fetchall(CACHE_EVICTION_ORDER, (batch,))
                victims: list[str] = []
                for victim, size in rows:
                    if total <= max_bytes:
                        break
                    victims.append(victim)
                    total -= size
                if not victims:
                    break
                await tx.execute(f"DELETE FROM tts_cache WHERE key IN ({placeholders(victims)})", victims)
                evicted += len(victims)
        return evicted

    async def cache_stats(self) -> tuple[int, int]:
        """(entries, bytes) of the TTS cache, from the trigger-kept totals."""
        row = _present(await self.fetchone("SELECT entries, bytes FROM tts_cache_totals WHERE id = 1"),
                       "the TTS cache totals")
        return int(row[0]), int(row[1])

    # -- forget-me -----------------------------------------------------------------------------

    USER_TABLES: tuple[str, ...] = (
        "tts_cache", "user_settings", "clone_jobs", "voices", "stored_files", "ledger",
    )
    ANONYMOUS_USER = 0

    async def forget_user(self, user_id: int) -> dict[str, int]:
        """Delete every row that belongs to ``user_id``; returns the count per table.

        Ledger rows are money already spent by the guild: they are kept for the guild's budget but
        detached from the user (``user_id`` becomes 0), so nothing points back to them.
        """
        counts: dict[str, int] = {}
        async with self.transaction() as tx:
            for table in self.USER_TABLES:  # fixed names, not user input
                if table == "ledger":
                    cur = await tx.execute(
                        "UPDATE ledger SET user_id = ?, ref = NULL WHERE user_id = ?", (self.ANONYMOUS_USER, user_id)
                    )
                else:
                    cur = await tx.execute(f"DELETE FROM {table} WHERE user_id = ?", (user_id,))
                counts[table] = cur.rowcount
        return counts

    async def count_user_rows(self, user_id: int) -> int:
        total = 0
        for table in self.USER_TABLES:
            total += int(await self.fetchval(f"SELECT COUNT(*) FROM {table} WHERE user_id = ?", (user_id,)))
        return total

    # -- clone jobs (service) --------------------------------------------------------------------

    async def open_job_names(self, user_id: int) -> list[str]:
        """Voice names of the user's clone jobs that are still running."""
        rows = await self.fetchall(
            f"SELECT voice_name FROM clone_jobs WHERE user_id = ? AND state IN ({placeholders(OPEN_JOB_STATES)})",
            (user_id, *OPEN_JOB_STATES),
        )
        return [r[0] for r in rows]

    async def create_clone_job(self, *, user_id: int, guild_id: int | None, channel_id: int | None,
                               application_id: int | None, interaction_token: str | None,
                               token_expires_at: float | None, voice_name: str, provider: str,
                               transcript: str | None, clone_model: str | None, now: float,
                               make_custom_voice_id: Callable[[], str] | None = None) -> tuple[int, str | None]:
        """Insert a job in state 'submitting' (before the paid request); returns (job id, customVoiceId).

        In one transaction: the name must be free among the user's voices and open jobs (else
        :class:`DuplicateVoiceName`), and ``make_custom_voice_id`` is called until its id is unused.
        """
        key = name_key(voice_name)
        async with self.transaction() as tx:
            if await (await tx.execute(
                "SELECT 1 FROM voices WHERE user_id = ? AND name_key = ?", (user_id, key)
            )).fetchone():
                raise DuplicateVoiceName(voice_name)
            rows = await (await tx.execute(
                f"SELECT voice_name FROM clone_jobs WHERE user_id = ? AND state IN ({placeholders(OPEN_JOB_STATES)})",
                (user_id, *OPEN_JOB_STATES),
            )).fetchall()
            if any(name_key(r[0]) == key for r in rows):
                raise DuplicateVoiceName(voice_name)
            custom_voice_id = None
            while make_custom_voice_id is not None:
                custom_voice_id = make_custom_voice_id()
                taken = await (await tx.execute(
                    "SELECT 1 FROM clone_jobs WHERE custom_voice_id = ? UNION ALL "
                    "SELECT 1 FROM voices WHERE provider_voice_id = ?", (custom_voice_id, custom_voice_id),
                )).fetchone()
                if not taken:
                    break
            cur = await tx.execute(
                "INSERT INTO clone_jobs (provider, user_id, guild_id, channel_id, application_id, interaction_token, "
                "token_expires_at, voice_name, custom_voice_id, transcript, clone_model, state, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'submitting', ?)",
                (provider, user_id, guild_id, channel_id, application_id, interaction_token, token_expires_at,
                 voice_name.strip(), custom_voice_id, transcript, clone_model, now),
            )
            return _inserted_id(cur), custom_voice_id

    async def finish_clone_job(self, job_id: int, state: str, *, error: str | None, now: float,
                               notified: bool = False) -> bool:
        """Move an open job to 'failed' or 'lost'; False when it was no longer open."""
        return await self.execute(
            f"UPDATE clone_jobs SET state = ?, error = ?, finished_at = ?, next_poll_at = NULL, "
            f"notified_at = CASE WHEN ? THEN ? ELSE notified_at END "
            f"WHERE id = ? AND state IN ({placeholders(OPEN_JOB_STATES)})",
            (state, error, now, int(notified), now, job_id, *OPEN_JOB_STATES),
        ) == 1

    async def mark_submitting_jobs_lost(self, error: str, now: float, *, keep: Iterable[int] = ()) -> list[int]:
        """After a restart: jobs still 'submitting' (no run id recorded) become 'lost'; returns their ids."""
        keep = set(keep)
        rows = await self.fetchall("SELECT id FROM clone_jobs WHERE state = 'submitting'")
        lost = []
        for row in rows:
            if row[0] not in keep and await self.finish_clone_job(row[0], "lost", error=error, now=now):
                lost.append(row[0])
        return lost

    async def unmark_job_notified(self, job_id: int) -> None:
        """Give back a notification claim whose message could not be sent."""
        await self.execute("UPDATE clone_jobs SET notified_at = NULL WHERE id = ?", (job_id,))

    async def complete_clone_job(self, job_id: int, *, now: float, provider_voice_id: str | None = None,
                                 embedding_url: str | None = None, embedding_expires_at: float | None = None,
                                 embedding: tuple[str, str, str, bytes] | None = None,
                                 max_name_length: int = 32) -> tuple[int, str] | None:
        """In one transaction: store the embedding file (``(token, filename, content_type, data)``), save
        the voice (as "<name> (2)" … when the name was taken meanwhile) and mark the job completed.

        Returns ``(voice id, saved name)``, or None when the job was not open any more.
        """
        async with self.transaction() as tx:
            job = _row_to(CloneJob, await (await tx.execute(
                "SELECT * FROM clone_jobs WHERE id = ?", (job_id,)
            )).fetchone())
            if job is None or not job.is_open:
                return None
            file_id = None
            if embedding is not None:
                token, filename, content_type, data = embedding
                cur = await tx.execute(
                    "INSERT INTO stored_files (user_id, kind, token, filename, content_type, data, size, sha256, "
                    "created_at) VALUES (?, 'qwen_embedding', ?, ?, ?, ?, ?, ?, ?)",
                    (job.user_id, token, filename, content_type, data, len(data),
                     hashlib.sha256(data).hexdigest(), now),
                )
                file_id = _inserted_id(cur)
            name, number = job.voice_name, 1
            while await (await tx.execute(
                "SELECT 1 FROM voices WHERE user_id = ? AND name_key = ?", (job.user_id, name_key(name))
            )).fetchone():
                number += 1
                suffix = f" ({number})"
                name = job.voice_name[: max_name_length - len(suffix)].rstrip() + suffix
            cur = await tx.execute(
                "INSERT INTO voices (user_id, guild_id, name, name_key, provider, provider_voice_id, embedding_url, "
                "embedding_expires_at, embedding_file_id, transcript, clone_model, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job.user_id, job.guild_id, name, name_key(name), job.provider, provider_voice_id, embedding_url,
                 embedding_expires_at, file_id, job.transcript, job.clone_model, now),
            )
            voice_id = _inserted_id(cur)
            await tx.execute(
                "UPDATE clone_jobs SET state = 'completed', voice_id = ?, finished_at = ?, next_poll_at = NULL, "
                "error = NULL WHERE id = ?",
                (voice_id, now, job_id),
            )
            return voice_id, name

    # -- ledger --------------------------------------------------------------------------------
    # Spend ledger queries for bot.limits. Rows in state 'reserved' or 'charged' count toward limits
    # and spend; 'released' rows count for nothing. Reads take an optional ``tx`` (the connection
    # yielded by :meth:`transaction`) so that a limit check and its reservation run in one transaction.

    async def _ledger_val(self, tx: aiosqlite.Connection | None, sql: str, params: Sequence[Any]) -> int:
        async with (tx or self.conn).execute(sql, params) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row is not None and row[0] is not None else 0

    async def ledger_count(self, user_id: int, kind: str, day: str, *,
                           tx: aiosqlite.Connection | None = None) -> int:
        """How many counted (reserved or charged) ``kind`` rows ``user_id`` has on ``day``."""
        return await self._ledger_val(
            tx,
            "SELECT COUNT(*) FROM ledger WHERE user_id = ? AND day = ? AND kind = ? "
            "AND state IN ('reserved', 'charged')",
            (user_id, day, kind),
        )

    async def ledger_guild_spend(self, guild_id: int, day: str, *, currency: str = "USD",
                                 tx: aiosqlite.Connection | None = None) -> int:
        """Micro-units of ``currency`` reserved or charged for ``guild_id`` on ``day``."""
        return await self._ledger_val(
            tx,
            "SELECT COALESCE(SUM(amount_micros), 0) FROM ledger WHERE guild_id = ? AND day = ? "
            "AND currency = ? AND state IN ('reserved', 'charged')",
            (guild_id, day, currency),
        )

    async def ledger_total_spend(self, day: str, *, currency: str = "USD",
                                 tx: aiosqlite.Connection | None = None) -> int:
        """Micro-units of ``currency`` reserved or charged on ``day`` across every guild and DM (the bot's spend)."""
        return await self._ledger_val(
            tx,
            "SELECT COALESCE(SUM(amount_micros), 0) FROM ledger WHERE day = ? AND currency = ? "
            "AND state IN ('reserved', 'charged')",
            (day, currency),
        )

    async def ledger_top_guilds(self, day: str, limit: int, *, currency: str = "USD") -> list[tuple[int | None, int]]:
        """``(guild_id, spend)`` of the guilds (None: DMs) that spent most on ``day``, highest first."""
        rows = await self.fetchall(
            "SELECT guild_id, SUM(amount_micros) AS spend FROM ledger WHERE day = ? AND currency = ? "
            "AND state IN ('reserved', 'charged') GROUP BY guild_id HAVING spend > 0 "
            "ORDER BY spend DESC, guild_id LIMIT ?",
            (day, currency, limit),
        )
        return [(r[0], int(r[1])) for r in rows]

    async def ledger_guild_count(self, day: str, *, currency: str = "USD") -> int:
        """How many guilds spent anything on ``day`` (DMs not counted)."""
        return await self._ledger_val(
            None,
            "SELECT COUNT(DISTINCT guild_id) FROM ledger WHERE day = ? AND currency = ? "
            "AND state IN ('reserved', 'charged') AND guild_id IS NOT NULL AND amount_micros > 0",
            (day, currency),
        )

    async def ledger_user_spend(self, user_id: int, *, day: str | None = None, currency: str = "USD") -> int:
        """Micro-units of ``currency`` reserved or charged for ``user_id`` on ``day`` (None: ever)."""
        if day is None:
            return await self._ledger_val(
                None,
                "SELECT COALESCE(SUM(amount_micros), 0) FROM ledger WHERE user_id = ? AND currency = ? "
                "AND state IN ('reserved', 'charged')",
                (user_id, currency),
            )
        return await self._ledger_val(
            None,
            "SELECT COALESCE(SUM(amount_micros), 0) FROM ledger WHERE user_id = ? AND day = ? AND currency = ? "
            "AND state IN ('reserved', 'charged')",
            (user_id, day, currency),
        )

    async def ledger_reserve(self, tx: aiosqlite.Connection, *, user_id: int, guild_id: int | None, kind: str,
                             ref: str | None, amount_micros: int, day: str, now: float) -> int:
        """Insert a 'reserved' USD row inside ``tx``; returns its id."""
        cur = await tx.execute(
            "INSERT INTO ledger (user_id, guild_id, kind, ref, state, amount_micros, currency, day, created_at) "
            "VALUES (?, ?, ?, ?, 'reserved', ?, 'USD', ?, ?)",
            (user_id, guild_id, kind, ref, amount_micros, day, now),
        )
        return _inserted_id(cur)

    async def ledger_settle(self, entry_id: int, amount_micros: int, currency: str, ref: str | None,
                            now: float) -> bool:
        """Mark a reserved (or re-settle a charged) row as charged with its actual amount."""
        return await self.execute(
            "UPDATE ledger SET state = 'charged', amount_micros = ?, currency = ?, ref = COALESCE(?, ref), "
            "settled_at = ? WHERE id = ? AND state IN ('reserved', 'charged')",
            (amount_micros, currency, ref, now, entry_id),
        ) == 1

    async def ledger_release(self, entry_id: int, now: float) -> bool:
        """Mark a reserved row as released (amount 0); a charged row is never released."""
        return await self.execute(
            "UPDATE ledger SET state = 'released', amount_micros = 0, settled_at = ? "
            "WHERE id = ? AND state = 'reserved'",
            (now, entry_id),
        ) == 1

    async def ledger_get(self, entry_id: int) -> aiosqlite.Row | None:
        return await self.fetchone("SELECT * FROM ledger WHERE id = ?", (entry_id,))

    async def ledger_find(self, kind: str, ref: str) -> aiosqlite.Row | None:
        """The newest ledger row of ``kind`` with ``ref`` (a run id or job id), if any."""
        return await self.fetchone(
            "SELECT * FROM ledger WHERE kind = ? AND ref = ? ORDER BY id DESC LIMIT 1", (kind, ref)
        )

    # -- voice management and files --------------------------------------------------------------

    async def mark_voice_embedding_expired(self, voice_id: int, now: float) -> bool:
        """Record that the provider's copy of a Qwen embedding is gone (survives restarts)."""
        return await self.execute(
            "UPDATE voices SET embedding_expires_at = ? WHERE id = ? "
            "AND (embedding_expires_at IS NULL OR embedding_expires_at > ?)",
            (now, voice_id, now),
        ) == 1

    async def voice_clone_job(self, user_id: int, voice_id: int) -> CloneJob | None:
        """The clone job that made ``voice_id``, only if both belong to ``user_id``."""
        row = await self.fetchone(
            "SELECT * FROM clone_jobs WHERE voice_id = ? AND user_id = ? ORDER BY id DESC LIMIT 1",
            (voice_id, user_id),
        )
        return _row_to(CloneJob, row)

    async def user_files(self, user_id: int) -> list[StoredFile]:
        rows = await self.fetchall(
            "SELECT id, user_id, kind, token, filename, content_type, size, sha256, created_at, discord_url, "
            "discord_url_expires_at, discord_message_id FROM stored_files WHERE user_id = ? ORDER BY id",
            (user_id,),
        )
        return [_row_to(StoredFile, r) for r in rows]

    async def user_data_counts(self, user_id: int) -> dict[str, int]:
        """Rows per table that /forget-me would delete (the ledger is anonymised, not counted)."""
        counts: dict[str, int] = {}
        for table in self.USER_TABLES:  # fixed names, not user input
            if table != "ledger":
                counts[table] = int(await self.fetchval(f"SELECT COUNT(*) FROM {table} WHERE user_id = ?",
                                                        (user_id,)))
        return counts

    # -- speech --------------------------------------------------------------------------------

    async def speech_voice_names(self, user_id: int) -> list[tuple[str, str, bool]]:
        """``(name, provider, is_default)`` of the user's voices, by name (for /say autocomplete)."""
        rows = await self.fetchall(
            "SELECT v.name, v.provider, (s.default_voice_id IS NOT NULL AND s.default_voice_id = v.id) "
            "FROM voices v LEFT JOIN user_settings s ON s.user_id = v.user_id "
            "WHERE v.user_id = ? ORDER BY v.name_key",
            (user_id,),
        )
        return [(r[0], r[1], bool(r[2])) for r in rows]


def placeholders(values: Iterable[Any]) -> str:
    return ",".join("?" for _ in values)
