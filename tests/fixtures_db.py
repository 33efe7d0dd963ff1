"""Shared building blocks for tests of ``bot/`` services without Discord: a test ``Config``, a fresh,
migrated ``Database`` per test (SQLite; or PostgreSQL, in a fresh schema, where a module overrides the
``backend`` fixture with ``params=BACKENDS``), and test data made through its repositories."""

from __future__ import annotations

import dataclasses
import secrets
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from bot.config import Config, Secret
from bot.storage import Database
from tests.fixtures_postgres import PostgresServer, fresh_schema

TEST_DISCORD_TOKEN = "discord-token-secret"
TEST_NANOGPT_KEY = "sk-nano-test"


def make_config(**changes: object) -> Config:
    """The configuration defaults (``Config()``) with test secrets, and ``changes`` applied."""
    base = Config(discord_token=Secret(TEST_DISCORD_TOKEN), nanogpt_api_key=Secret(TEST_NANOGPT_KEY))
    return dataclasses.replace(base, **changes)


@pytest.fixture
def backend() -> str:
    """The backend of the ``db`` fixture: SQLite, unless a module runs on both (``params=BACKENDS``)."""
    return "sqlite"


@pytest.fixture
def _db_server(request: pytest.FixtureRequest, backend: str) -> PostgresServer | None:
    return request.getfixturevalue("postgres_server") if backend == "postgres" else None


@pytest.fixture
async def db(tmp_path: Path, _db_server: PostgresServer | None) -> AsyncIterator[Database]:
    if _db_server is None:
        database = await Database(tmp_path / "db.sqlite3").connect()
        yield database
        await database.close()
        return
    async with fresh_schema(_db_server) as url:
        database = await Database(url).connect()
        yield database
        await database.close()


# -- test data through the repositories ----------------------------------------------------------------
# A saved voice exists only as the result of a clone job, so these make one the way the clone service does
# (create → complete) and mark its notice as sent, so a bot started on this database has nothing to announce.


async def add_minimax_voice(db: Database, user_id: int, name: str, *, voice_id: str = "nv1abcdef0123",
                            guild_id: int | None = None, now: float = 0.0) -> int:
    """A completed MiniMax clone of ``user_id`` named ``name`` with provider voice id ``voice_id`` (unique, as
    the clone service makes them)."""

    def only_this_id() -> str:
        if (offered := next(ids, None)) is None:
            raise AssertionError(f"the MiniMax voice id {voice_id} is taken; give each test voice its own")
        return offered

    ids = iter([voice_id])
    job_id, _ = await db.jobs.create(
        user_id=user_id, guild_id=guild_id, channel_id=None, application_id=None, interaction_token=None,
        token_expires_at=None, voice_name=name, provider="minimax", transcript=None, clone_model=None, now=now,
        make_custom_voice_id=only_this_id,
    )
    return await _complete(db, job_id, now, provider_voice_id=voice_id)


async def add_qwen_voice(db: Database, user_id: int, name: str, *, embedding_url: str | None = None,
                         embedding: bytes | None = b"\x00embedding", filename: str = "speaker-embedding.safetensors",
                         transcript: str | None = "hello there", guild_id: int | None = None, now: float = 0.0,
                         lifetime: float = 7 * 86400.0) -> int:
    """A completed Qwen clone: the stored embedding file (unless ``embedding`` is None), the provider's URL
    (expiring ``lifetime`` after ``now``) and the transcript."""
    job_id, _ = await db.jobs.create(
        user_id=user_id, guild_id=guild_id, channel_id=None, application_id=None, interaction_token=None,
        token_expires_at=None, voice_name=name, provider="qwen", transcript=transcript, clone_model=None, now=now,
    )
    stored = None if embedding is None else (
        secrets.token_urlsafe(32), filename, "application/octet-stream", embedding)
    return await _complete(db, job_id, now, embedding_url=embedding_url,
                           embedding_expires_at=now + lifetime if embedding_url else None, embedding=stored)


async def _complete(db: Database, job_id: int, now: float, **saved: Any) -> int:
    done = await db.jobs.complete(job_id, now=now, **saved)
    assert done is not None
    await db.jobs.mark_notified(job_id, now)
    return done[0]


async def add_job(db: Database, user_id: int, name: str, *, state: str, provider: str = "qwen",
                  guild_id: int | None = None, now: float = 0.0, **changes: Any) -> int:
    """A clone job of ``user_id`` in ``state`` (its other columns from ``changes``), as the clone service
    records one: created as 'submitting', then updated."""
    job_id, _ = await db.jobs.create(
        user_id=user_id, guild_id=guild_id, channel_id=None, application_id=None, interaction_token=None,
        token_expires_at=None, voice_name=name, provider=provider, transcript=None, clone_model=None, now=now,
    )
    await db.jobs.update(job_id, state=state, **changes)
    return job_id


# -- inspecting what no public method shows --------------------------------------------------------------


async def pragma(db: Database, name: str) -> Any:
    """The value of ``PRAGMA name`` on the bot's connection (journal mode, foreign keys: settings of the
    connection, which no repository reports)."""
    assert name.isidentifier()
    return await db.fetchval(f"PRAGMA {name}")


async def ledger_rows(db: Database) -> list[dict[str, Any]]:
    """Every ledger row, oldest first. Raw SQL on purpose: the bot only ever sums the ledger (limits,
    /usage, /owner spend), and a test must see each row's state (reserved, charged, released)."""
    return [dict(r) for r in await db.fetchall("SELECT * FROM ledger ORDER BY id")]


async def table_count(db: Database, table: str) -> int:
    """Rows in ``table`` over every user. Raw SQL on purpose: the repositories answer per user only, and a
    test must show that nothing leaked to another user (or that nothing was left at all)."""
    assert table.isidentifier()
    return int(await db.fetchval(f"SELECT COUNT(*) FROM {table}"))


async def cache_totals_recounted(db: Database) -> tuple[int, int]:
    """(entries, bytes) of the TTS cache counted from its rows. Raw SQL on purpose: the repository answers
    from the trigger-kept totals (migration 0002), and this is what those totals must agree with."""
    row = await db.fetchone("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM tts_cache")
    assert row is not None
    return int(row[0]), int(row[1])


async def make_0001_database_with_cache(path: Path, sizes: list[int]) -> None:
    """A database at schema 0001 holding cache entries of ``sizes`` bytes. Raw SQL on purpose: no current
    code writes the old schema, and migration 0002 must count what such a database already holds."""
    async with aiosqlite.connect(path) as conn:
        number, sql = Database.migrations()[0]
        await conn.executescript(f"{sql}\nPRAGMA user_version = {number};")
        await conn.executemany(
            "INSERT INTO tts_cache (key, user_id, content_type, data, size, created_at, last_used_at) "
            "VALUES (?, 1, 'audio/mpeg', ?, ?, 0, 0)", [(f"k{i}", b"y" * size, size) for i, size in enumerate(sizes)],
        )
        await conn.commit()


async def make_0004_database_with_voices(path: Path) -> None:
    """A database at schema 0004 (before 0005 dropped the provider CHECK) holding one user's MiniMax voice
    (their default), a Qwen voice with its stored embedding file, the clone job of each (pointing at its
    voice) and a failed job. Raw SQL on purpose: no current code writes the old schema, and 0005 rebuilds
    these tables, so it must carry over what such a database already holds."""
    async with aiosqlite.connect(path) as conn:
        await conn.execute("PRAGMA foreign_keys=ON")
        for number, sql in Database.migrations()[:4]:
            await conn.executescript(f"BEGIN;\n{sql}\nPRAGMA user_version = {number};\nCOMMIT;")
        await conn.execute(
            "INSERT INTO stored_files (id, user_id, kind, token, filename, content_type, data, size, sha256, "
            "created_at) VALUES (7, 1, 'embedding', 'tok', 'e.safetensors', 'application/octet-stream', x'00', 1, "
            "'ab', 5)")
        await conn.executemany(
            "INSERT INTO voices (id, user_id, guild_id, name, name_key, provider, provider_voice_id, embedding_url, "
            "embedding_expires_at, embedding_file_id, transcript, clone_model, created_at, last_used_at) "
            "VALUES (?, 1, 2, ?, ?, ?, ?, ?, ?, ?, ?, ?, 5, ?)",
            [(10, "Narrator", "narrator", "minimax", "nv1abcdef0123", None, None, None, None, "speech-02-hd", 9),
             (11, "Me", "me", "qwen", None, "https://x.test/e", 600, 7, "hello there", None, None)])
        await conn.execute("INSERT INTO user_settings (user_id, default_voice_id, updated_at) VALUES (1, 10, 6)")
        await conn.executemany(
            "INSERT INTO clone_jobs (id, run_id, provider, user_id, guild_id, voice_name, custom_voice_id, "
            "cost_micros, state, error, created_at, poll_count, voice_id, notified_at) "
            "VALUES (?, ?, ?, 1, 2, ?, ?, ?, ?, ?, 4, ?, ?, 5)",
            [(20, "run-a", "minimax", "Narrator", "nv1abcdef0123", 1_000_000, "completed", None, 3, 10),
             (21, "run-b", "qwen", "Me", None, 250_000, "completed", None, 2, 11),
             (22, "run-c", "qwen", "Broken", None, None, "failed", "no speech", 1, None)])
        await conn.commit()


def sqlite_file_at_version(path: Path, user_version: int = 0) -> None:
    """An SQLite file whose ``PRAGMA user_version`` says ``user_version`` and holds nothing else (0: never
    migrated). Raw SQL on purpose: it stands for a database some other (older) program left behind."""
    conn = sqlite3.connect(path)
    try:
        conn.execute(f"PRAGMA user_version = {int(user_version)}")
    finally:
        conn.close()
