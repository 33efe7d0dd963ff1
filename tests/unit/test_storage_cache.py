"""The TTS cache repository: LRU eviction, trigger-kept totals, the covering index, migration 0002."""

from __future__ import annotations

from bot.storage import CACHE_EVICTION_ORDER, Database
from tests.fixtures_db import cache_totals_recounted, make_0001_database_with_cache


async def test_cache_lru_eviction(db):
    for i in range(5):
        await db.cache.put(f"k{i}", 1, "audio/mpeg", b"x" * 100, now=float(i), max_bytes=350)
    assert (await db.cache.stats())[0] == 3
    assert await db.cache.get("k0", now=10) is None
    assert await db.cache.get("k2", now=10) is not None  # now most recently used
    await db.cache.put("k5", 1, "audio/mpeg", b"x" * 100, now=11, max_bytes=350)
    assert await db.cache.get("k3", now=12) is None and await db.cache.get("k2", now=12) is not None


async def test_cache_totals_follow_every_write(db):
    """The trigger-kept totals match the table through puts, re-puts, evictions and forget-me."""
    assert await db.cache.stats() == (0, 0)
    for i in range(6):
        await db.cache.put(f"k{i}", 1 + i % 2, "audio/mpeg", b"x" * (100 + i), now=float(i), max_bytes=10**6)
    await db.cache.put("k0", 1, "audio/mpeg", b"x" * 100, now=9.0, max_bytes=10**6)  # re-put: no double count
    assert await db.cache.stats() == await cache_totals_recounted(db) == (6, 615)
    assert await db.cache.put("k6", 1, "audio/mpeg", b"x" * 300, now=10.0, max_bytes=700) == 3  # k1, k2, k3 go
    assert await db.cache.stats() == await cache_totals_recounted(db) == (4, 104 + 105 + 100 + 300)
    assert sorted(await db.cache.user_keys(2)) == ["k5"]
    assert await db.cache.count_user_data(2) == 1
    assert await db.cache.delete_user_data(2) == 1
    assert await db.cache.stats() == await cache_totals_recounted(db) == (3, 104 + 100 + 300)
    assert await db.cache.user_keys(2) == [] and sorted(await db.cache.user_keys(1)) == ["k0", "k4", "k6"]


async def test_cache_eviction_reads_only_the_index(db):
    """Evicting never walks the cached audio: the LRU order is answered from a covering index."""
    plan = await db.fetchall(f"EXPLAIN QUERY PLAN {CACHE_EVICTION_ORDER}", (64,))
    assert any("COVERING INDEX tts_cache_lru" in row[3] for row in plan), [tuple(r) for r in plan]


async def test_migration_0002_counts_an_existing_cache(tmp_path):
    """A database cached under 0001 starts 0002 with the right totals."""
    path = tmp_path / "old.sqlite3"
    await make_0001_database_with_cache(path, [10, 20, 30, 40])
    db = await Database(path).connect()
    try:
        assert await db.cache.stats() == (4, 100)
    finally:
        await db.close()
