"""Storage: migrations, pragmas, case-insensitive names, exact money, forget-me."""

from __future__ import annotations

import asyncio

import aiosqlite
import pytest

from bot.storage import CACHE_EVICTION_ORDER, Database, DuplicateVoiceName


@pytest.fixture
async def db(tmp_path):
    database = await Database(tmp_path / "sub" / "db.sqlite3").connect()
    yield database
    await database.close()


async def _add_voice(db, user_id, name, provider="minimax"):
    async with db.transaction() as tx:
        cur = await tx.execute(
            "INSERT INTO voices (user_id, name, name_key, provider, created_at) VALUES (?, ?, ?, ?, 0)",
            (user_id, name, name.casefold(), provider),
        )
        return cur.lastrowid


async def test_migrations_applied_and_pragmas(db, tmp_path):
    assert await db.schema_version() == len(Database.migrations())
    assert (await db.fetchval("PRAGMA journal_mode")).lower() == "wal"
    assert await db.fetchval("PRAGMA foreign_keys") == 1
    # Re-opening applies nothing twice.
    await db.close()
    again = await Database(tmp_path / "sub" / "db.sqlite3").connect()
    assert await again.schema_version() == len(Database.migrations())
    await again.close()
    await db.connect()


async def test_voice_names_unique_per_user_case_insensitively(db):
    await _add_voice(db, 1, "Alice")
    with pytest.raises(aiosqlite.IntegrityError):
        await _add_voice(db, 1, "ALICE")
    await _add_voice(db, 2, "alice")  # another user may use the same name
    assert (await db.get_voice_by_name(1, "aLiCe")).name == "Alice"
    other = await db.get_voice_by_name(2, "alice")
    assert await db.get_voice(1, other.id) is None  # never another user's voice
    bob = await _add_voice(db, 1, "Bob")
    with pytest.raises(DuplicateVoiceName):
        await db.rename_voice(1, bob, "alice")


async def test_sql_metacharacters_are_plain_data(db):
    name = "x'); DROP TABLE voices; --"
    await _add_voice(db, 1, name)
    assert (await db.get_voice_by_name(1, name)).name == name
    assert await db.fetchval("SELECT COUNT(*) FROM voices") == 1


async def test_transactions_serialise_check_then_write(db):
    async def take(i):
        async with db.transaction() as tx:
            count = (await (await tx.execute("SELECT COUNT(*) FROM meta")).fetchone())[0]
            await asyncio.sleep(0)
            if count < 3:
                await tx.execute("INSERT INTO meta (key, value) VALUES (?, '1')", (f"k{i}",))

    await asyncio.gather(*(take(i) for i in range(10)))
    assert await db.fetchval("SELECT COUNT(*) FROM meta") == 3


async def test_failed_transaction_rolls_back(db):
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO meta (key, value) VALUES ('a', 'b')")
            raise RuntimeError("boom")
    assert await db.get_meta("a") is None


async def test_money_is_stored_as_integers(db):
    await db.execute(
        "INSERT INTO ledger (user_id, guild_id, kind, state, amount_micros, day, created_at) "
        "VALUES (1, 1, 'tts', 'charged', ?, '2026-01-01', 0)", (5039,)
    )
    assert await db.fetchval("SELECT typeof(amount_micros) FROM ledger") == "integer"


async def test_cache_lru_eviction(db):
    for i in range(5):
        await db.cache_put(f"k{i}", 1, "audio/mpeg", b"x" * 100, now=float(i), max_bytes=350)
    assert (await db.cache_stats())[0] == 3
    assert await db.cache_get("k0", now=10) is None
    assert await db.cache_get("k2", now=10) is not None  # now most recently used
    await db.cache_put("k5", 1, "audio/mpeg", b"x" * 100, now=11, max_bytes=350)
    assert await db.cache_get("k3", now=12) is None and await db.cache_get("k2", now=12) is not None


async def _true_cache_totals(db):
    return tuple(await db.fetchone("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM tts_cache"))


async def test_cache_totals_follow_every_write(db):
    """The trigger-kept totals match the table through puts, re-puts, evictions and forget-me."""
    assert await db.cache_stats() == (0, 0)
    for i in range(6):
        await db.cache_put(f"k{i}", 1 + i % 2, "audio/mpeg", b"x" * (100 + i), now=float(i), max_bytes=10**6)
    await db.cache_put("k0", 1, "audio/mpeg", b"x" * 100, now=9.0, max_bytes=10**6)  # re-put: no double count
    assert await db.cache_stats() == await _true_cache_totals(db) == (6, 615)
    assert await db.cache_put("k6", 1, "audio/mpeg", b"x" * 300, now=10.0, max_bytes=700) == 3  # k1, k2, k3 go
    assert await db.cache_stats() == await _true_cache_totals(db) == (4, 104 + 105 + 100 + 300)
    await db.forget_user(2)
    assert await db.cache_stats() == await _true_cache_totals(db) == (3, 104 + 100 + 300)


async def test_cache_eviction_reads_only_the_index(db):
    """Evicting never walks the cached audio: the LRU order is answered from a covering index."""
    plan = await db.fetchall(f"EXPLAIN QUERY PLAN {CACHE_EVICTION_ORDER}", (64,))
    assert any("COVERING INDEX tts_cache_lru" in row[3] for row in plan), [tuple(r) for r in plan]


async def test_migration_0002_counts_an_existing_cache(tmp_path):
    """A database cached under 0001 starts 0002 with the right totals."""
    path = tmp_path / "old.sqlite3"
    async with aiosqlite.connect(path) as conn:
        number, sql = Database.migrations()[0]
        await conn.executescript(f"{sql}\nPRAGMA user_version = {number};")
        await conn.executemany(
            "INSERT INTO tts_cache (key, user_id, content_type, data, size, created_at, last_used_at) "
            "VALUES (?, 1, 'audio/mpeg', ?, ?, 0, 0)", [(f"k{i}", b"y" * (10 * i), 10 * i) for i in range(1, 5)],
        )
        await conn.commit()
    db = await Database(path).connect()
    try:
        assert await db.cache_stats() == (4, 100)
    finally:
        await db.close()


async def test_forget_user_removes_every_row(db):
    voice = await _add_voice(db, 7, "Mine")
    await _add_voice(db, 8, "Theirs")
    await db.set_default_voice(7, voice, now=1)
    await db.cache_put("k", 7, "audio/mpeg", b"abc", now=1, max_bytes=10**6)
    await db.execute(
        "INSERT INTO ledger (user_id, guild_id, kind, state, amount_micros, day, created_at) "
        "VALUES (7, 1, 'clone', 'charged', 1000000, '2026-01-01', 0)"
    )
    assert await db.count_user_rows(7) > 0
    await db.forget_user(7)
    assert await db.count_user_rows(7) == 0
    assert await db.get_voice_by_name(8, "Theirs") is not None
    # The guild's spend stays, detached from the user.
    assert await db.fetchval("SELECT SUM(amount_micros) FROM ledger WHERE guild_id = 1") == 1_000_000
