"""Storage's connection owner: migrations, pragmas, transactions, case-insensitive names, exact money."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from bot.storage import Database, DuplicateVoiceName
from tests.fixtures_db import add_minimax_voice, ledger_rows, make_0004_database_with_voices, pragma
from tests.fixtures_postgres import BACKENDS

DAY = "2026-01-01"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Every test here runs on SQLite and on PostgreSQL."""
    return request.param


async def test_migrations_applied_and_pragmas(tmp_path):
    db = await Database(tmp_path / "sub" / "db.sqlite3").connect()
    assert await db.schema_version() == len(Database.migrations())
    assert (await pragma(db, "journal_mode")).lower() == "wal"
    assert await pragma(db, "foreign_keys") == 1
    # Re-opening applies nothing twice.
    await db.close()
    again = await Database(tmp_path / "sub" / "db.sqlite3").connect()
    assert await again.schema_version() == len(Database.migrations())
    await again.close()


async def test_voice_names_unique_per_user_case_insensitively(db):
    await add_minimax_voice(db, 1, "Alice", voice_id="nv1a")
    with pytest.raises(DuplicateVoiceName):
        await add_minimax_voice(db, 1, "ALICE", voice_id="nv1b")
    await add_minimax_voice(db, 2, "alice", voice_id="nv2a")  # another user may use the same name
    assert (await db.voices.by_name(1, "aLiCe")).name == "Alice"
    other = await db.voices.by_name(2, "alice")
    assert await db.voices.get(1, other.id) is None  # never another user's voice
    bob = await add_minimax_voice(db, 1, "Bob", voice_id="nv1c")
    with pytest.raises(DuplicateVoiceName):
        await db.voices.rename(1, bob, "alice")
    assert [v.name for v in await db.voices.list(1)] == ["Alice", "Bob"]


async def test_sql_metacharacters_are_plain_data(db):
    name = "x'); DROP TABLE voices; --"
    await add_minimax_voice(db, 1, name)
    assert (await db.voices.by_name(1, name)).name == name
    assert [v.name for v in await db.voices.list(1)] == [name]


async def _reserve(db, tx, amount: int = 1) -> int:
    return await db.ledger.reserve(tx, user_id=1, guild_id=1, kind="clone", ref=None, amount_micros=amount,
                                   day=DAY, now=0)


async def test_transactions_serialise_check_then_write(db):
    """A quota check and its reservation in one transaction: ten at once never pass a limit of three."""
    async def take():
        async with db.transaction() as tx:
            await tx.lock("ledger:user:1")  # a no-op on SQLite: BEGIN IMMEDIATE already holds every write
            count = await db.ledger.count(1, "clone", DAY, tx=tx)
            await asyncio.sleep(0)
            if count < 3:
                await _reserve(db, tx)

    await asyncio.gather(*(take() for _ in range(10)))
    assert await db.ledger.count(1, "clone", DAY) == 3


async def test_failed_transaction_rolls_back(db):
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            await _reserve(db, tx, 1_000)
            raise RuntimeError("boom")
    assert await db.ledger.count(1, "clone", DAY) == 0 and await db.ledger.user_spend(1) == 0


async def test_money_is_stored_as_integers(db):
    async with db.transaction() as tx:
        entry = await _reserve(db, tx, 5039)
    assert await db.ledger.settle(entry, 5039, "USD", None, now=1)
    (row,) = await ledger_rows(db)
    assert type(row["amount_micros"]) is int and row["amount_micros"] == 5039
    assert await db.ledger.user_spend(1) == 5039


async def test_ping_answers_while_connected_and_raises_after_close(tmp_path):
    db = await Database(tmp_path / "db.sqlite3").connect()
    await db.ping()
    await db.close()
    with pytest.raises(RuntimeError):
        await db.ping()


async def test_migration_0005_opens_the_provider_and_keeps_rows_references_and_indexes(tmp_path):
    """A database at 0004 with voices and jobs: 0005 rebuilds both tables without the provider CHECK, and
    every row, every reference to them and from them, the other CHECKs and the indexes survive."""
    path = tmp_path / "old.sqlite3"
    await make_0004_database_with_voices(path)
    db = await Database(path).connect()
    try:
        assert await db.schema_version() == len(Database.migrations()) >= 5
        assert await pragma(db, "foreign_keys") == 1  # back on after the rebuild
        assert await db.fetchall("PRAGMA foreign_key_check") == []
        me, narrator = await db.voices.list(1)  # by name
        assert (narrator.id, narrator.provider, narrator.provider_voice_id, narrator.clone_model,
                narrator.last_used_at) == (10, "minimax", "nv1abcdef0123", "speech-02-hd", 9)
        assert (me.id, me.provider, me.embedding_url, me.embedding_expires_at, me.embedding_file_id,
                me.transcript) == (11, "qwen", "https://x.test/e", 600, 7, "hello there")
        default = await db.user_settings.default_voice(1)
        assert default is not None and default.id == 10
        jobs = await db.jobs.for_user(1)
        assert sorted((j.id, j.run_id, j.provider, j.state, j.voice_id, j.cost_micros, j.poll_count) for j in jobs) == [
            (20, "run-a", "minimax", "completed", 10, 1_000_000, 3),
            (21, "run-b", "qwen", "completed", 11, 250_000, 2),
            (22, "run-c", "qwen", "failed", None, None, 1)]
        indexes = {row[0] for row in await db.fetchall(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name IN ('voices', 'clone_jobs') "
            "AND name NOT LIKE 'sqlite_autoindex%'")}
        assert indexes == {"clone_jobs_user", "clone_jobs_open", "clone_jobs_claims"}  # 0006 adds the claims
        schema = " ".join(row[0] for row in await db.fetchall(
            "SELECT sql FROM sqlite_master WHERE name IN ('voices', 'clone_jobs')"))
        assert "provider IN" not in schema and "_new" not in schema

        # A third provider's rows are accepted now; the state CHECK and the uniqueness rules still hold.
        job_id, _ = await db.jobs.create(
            user_id=1, guild_id=None, channel_id=None, application_id=None, interaction_token=None,
            token_expires_at=None, voice_name="Polly", provider="parrot", transcript=None, clone_model=None, now=30)
        with pytest.raises(sqlite3.IntegrityError):
            await db.jobs.update(job_id, state="dancing")
        with pytest.raises(sqlite3.IntegrityError):
            await db.jobs.update(job_id, custom_voice_id="nv1abcdef0123")  # 20 holds it
        saved = await db.jobs.complete(job_id, now=31, provider_voice_id="p-1")
        assert saved is not None and (await db.voices.get(1, saved[0])).provider == "parrot"

        # The foreign keys still act: deleting the default voice clears the setting and its job's link.
        assert await db.voices.delete(1, 10)
        assert await db.user_settings.default_voice(1) is None
        narrators_job = await db.jobs.get(20)
        assert narrators_job is not None and narrators_job.voice_id is None
    finally:
        await db.close()
