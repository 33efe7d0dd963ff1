"""The TTS cache: synthesised speech keyed by (voice, model, speed, normalised text), bounded in bytes."""

from __future__ import annotations

from bot.storage.base import Repository, Transaction, placeholders, present
from bot.storage.records import CacheEntry

# The eviction order: least recently used, then oldest, then first stored (from the covering index
# tts_cache_lru of migration 0002, never the audio rows).
CACHE_EVICTION_ORDER = "SELECT key, size FROM tts_cache ORDER BY last_used_at, created_at, rowid LIMIT ?"


class TtsCacheRepository(Repository):
    data_name = "tts_cache"

    async def get(self, key: str, now: float) -> CacheEntry | None:
        """The entry under ``key`` (marked as just used), or None; one trip to the database thread."""
        rows = await self._db.write_returning(
            "UPDATE tts_cache SET last_used_at = ? WHERE key = ? RETURNING key, content_type, data", (now, key)
        )
        if not rows:
            return None
        return CacheEntry(rows[0]["key"], rows[0]["content_type"], bytes(rows[0]["data"]))

    async def put(self, key: str, user_id: int, content_type: str, data: bytes, now: float, max_bytes: int) -> int:
        """Store an entry and evict least-recently-used ones beyond ``max_bytes``; returns evictions.

        Triggers keep the totals (migration 0002) and the eviction order is a covering index, so a put
        never reads other entries' audio.
        """
        await self._db.execute(
            "INSERT INTO tts_cache (key, user_id, content_type, data, size, created_at, last_used_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET last_used_at = excluded.last_used_at",
            (key, user_id, content_type, data, len(data), now, now),
        )
        if (await self.stats())[1] <= max_bytes:
            return 0
        return await self._evict(max_bytes)

    async def _evict(self, max_bytes: int, batch: int = 64) -> int:
        evicted = 0
        async with self._db.transaction() as tx:
            total = present(await tx.fetchone("SELECT bytes FROM tts_cache_totals WHERE id = 1"),
                            "the TTS cache totals")[0]
            while total > max_bytes:
                victims: list[str] = []
                for victim, size in await tx.fetchall(CACHE_EVICTION_ORDER, (batch,)):
                    if total <= max_bytes:
                        break
                    victims.append(victim)
                    total -= size
                if not victims:
                    break
                await tx.execute(f"DELETE FROM tts_cache WHERE key IN ({placeholders(victims)})", victims)
                evicted += len(victims)
        return evicted

    async def stats(self) -> tuple[int, int]:
        """(entries, bytes) of the TTS cache, from the trigger-kept totals."""
        row = present(await self._db.fetchone("SELECT entries, bytes FROM tts_cache_totals WHERE id = 1"),
                      "the TTS cache totals")
        return int(row[0]), int(row[1])

    async def user_keys(self, user_id: int) -> list[str]:
        """The keys of the entries stored for ``user_id``."""
        return [r[0] for r in await self._db.fetchall("SELECT key FROM tts_cache WHERE user_id = ?", (user_id,))]

    async def count_user_data(self, user_id: int) -> int:
        return int(await self._db.fetchval("SELECT COUNT(*) FROM tts_cache WHERE user_id = ?", (user_id,)))

    async def delete_user_data(self, user_id: int, tx: Transaction | None = None) -> int:
        return await self._on(tx).execute("DELETE FROM tts_cache WHERE user_id = ?", (user_id,))
