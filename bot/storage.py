"""SQLite storage: one connection, numbered migrations, and every query the bot runs.

All SQL lives here and is parameterised. Writes are serialised through one lock and run either as a
single autocommitted statement or inside :meth:`Database.transaction` (``BEGIN IMMEDIATE``), so a
check-then-write (a quota, a unique name) is atomic even with many coroutines in flight.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite

log = logging.getLogger(__name__)

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

OPEN_JOB_STATES = ("submitting", "pending", "processing")


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


@dataclass(frozen=True, slots=True)
class CacheEntry:
    key: str
    content_type: str
    data: bytes


def _row_to(cls: type, row: aiosqlite.Row | None) -> Any:
    if row is None:
        return None
    return cls(**{k: row[k] for k in cls.__slots__})


class DuplicateVoiceName(Exception):
    """The user already has a voice with this (case-insensitive) name."""


class Database:
    """Owns the aiosqlite connection. Open with :meth:`connect`, close with :meth:`close`."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path) if str(path) != ":memory:" else path
        self._conn: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()

    # -- lifecycle -----------------------------------------------------------------------------

    async def connect(self) -> Database:
        if isinstance(self.path, Path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = await aiosqlite.connect(str(self.path), isolation_level=None)
        self._conn.row_factory = aiosqlite.Row
        await self._conn.execute("PRAGMA journal_mode=WAL")
        await self._conn.execute("PRAGMA foreign_keys=ON")
        await self._conn.execute("PRAGMA synchronous=NORMAL")
        await self._conn.execute("PRAGMA busy_timeout=5000")
        await self.migrate()
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
            row = await cur.fetchone()
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
        """Run one write statement on its own; returns the affected row count."""
        async with self._write_lock:
            cur = await self.conn.execute(sql, params)
            count = cur.rowcount
            await cur.close()
            return count

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> aiosqlite.Row | None:
        async with self.conn.execute(sql, params) as cur:
            return await cur.fetchone()

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[aiosqlite.Row]:
        async with self.conn.execute(sql, params) as cur:
            return list(await cur.fetchall())

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

    async def set_voice_embedding_url(self, voice_id: int, url: str | None) -> None:
        await self.execute("UPDATE voices SET embedding_url = ? WHERE id = ?", (url, voice_id))

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
        row = await self.fetchone(
            "SELECT guild_id, daily_budget_micros, clone_role_id, clones_enabled FROM guild_settings "
            "WHERE guild_id = ?",
            (guild_id,),
        )
        if row is None:
            return GuildSettings(guild_id, None, None, None)
        enabled = None if row["clones_enabled"] is None else bool(row["clones_enabled"])
        return GuildSettings(guild_id, row["daily_budget_micros"], row["clone_role_id"], enabled)

    async def update_guild_settings(self, guild_id: int, now: float, **changes: Any) -> GuildSettings:
        """Set some of daily_budget_micros, clone_role_id, clones_enabled (None clears to the default)."""
        allowed = {"daily_budget_micros", "clone_role_id", "clones_enabled"}
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"unknown guild settings {sorted(unknown)}")
        async with self.transaction() as tx:
            await tx.execute(
                "INSERT INTO guild_settings (guild_id, updated_at) VALUES (?, ?) ON CONFLICT (guild_id) DO NOTHING",
                (guild_id, now),
            )
            for column in sorted(changes):  # column names come from the fixed set above
                value = changes[column]
                if column == "clones_enabled" and value is not None:
                    value = int(bool(value))
                await tx.execute(
                    f"UPDATE guild_settings SET {column} = ?, updated_at = ? WHERE guild_id = ?",
                    (value, now, guild_id),
                )
        return await self.get_guild_settings(guild_id)

    # -- clone jobs ----------------------------------------------------------------------------

    async def get_job(self, job_id: int) -> CloneJob | None:
        return _row_to(CloneJob, await self.fetchone("SELECT * FROM clone_jobs WHERE id = ?", (job_id,)))

    async def open_jobs(self) -> list[CloneJob]:
        rows = await self.fetchall(
            f"SELECT * FROM clone_jobs WHERE state IN ({','.join('?' * len(OPEN_JOB_STATES))}) "
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
        row = await self.fetchone("SELECT key, content_type, data FROM tts_cache WHERE key = ?", (key,))
        if row is None:
            return None
        await self.execute("UPDATE tts_cache SET last_used_at = ? WHERE key = ?", (now, key))
        return CacheEntry(row["key"], row["content_type"], bytes(row["data"]))

    async def cache_put(self, key: str, user_id: int, content_type: str, data: bytes, now: float,
                        max_bytes: int) -> int:
        """Store an entry and evict least-recently-used ones beyond ``max_bytes``; returns evictions."""
        async with self.transaction() as tx:
            await tx.execute(
                "INSERT INTO tts_cache (key, user_id, content_type, data, size, created_at, last_used_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET last_used_at = excluded.last_used_at",
                (key, user_id, content_type, data, len(data), now, now),
            )
            total = (await (await tx.execute("SELECT COALESCE(SUM(size), 0) FROM tts_cache")).fetchone())[0]
            evicted = 0
            if total > max_bytes:
                rows = await (await tx.execute(
                    "SELECT key, size FROM tts_cache ORDER BY last_used_at ASC, created_at ASC"
                )).fetchall()
                for row in rows:
                    if total <= max_bytes:
                        break
                    await tx.execute("DELETE FROM tts_cache WHERE key = ?", (row[0],))
                    total -= row[1]
                    evicted += 1
            return evicted

    async def cache_stats(self) -> tuple[int, int]:
        row = await self.fetchone("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM tts_cache")
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


def placeholders(values: Iterable[Any]) -> str:
    return ",".join("?" for _ in values)
