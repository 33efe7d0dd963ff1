"""Benchmark the TTS cache in SQLite: what storing and reading one clip costs when the cache is full.

    .venv/bin/python bench/bench_cache.py [--mb 200] [--clip-kb 30] [--ops 50]

Fills a fresh database (through the real migrations) with ``--mb`` of cached clips of ``--clip-kb`` each,
then times ``Database.cache_put`` without and with eviction and ``Database.cache_get``, through aiosqlite
as the bot uses them. Prints wall and CPU milliseconds per operation (CPU of the whole process: the event
loop and the database thread).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.storage import Database


async def _per_op(ops: int, call) -> tuple[float, float]:
    wall, cpu = [], time.process_time()
    for i in range(ops):
        started = time.perf_counter()
        await call(i)
        wall.append(time.perf_counter() - started)
    return statistics.median(wall) * 1000, (time.process_time() - cpu) / ops * 1000


async def run(mb: int, clip_kb: int, ops: int) -> list[tuple[str, float, float]]:
    clip = os.urandom(clip_kb * 1024)
    entries = mb * 1024 // clip_kb
    with tempfile.TemporaryDirectory(prefix="nanovoice-bench-cache-") as tmp:
        db = await Database(Path(tmp) / "cache.sqlite3").connect()
        try:
            async with db.transaction():  # the fill itself is not what is measured: one bulk insert
                await db.conn.executemany(
                    "INSERT INTO tts_cache (key, user_id, content_type, data, size, created_at, last_used_at) "
                    "VALUES (?, 1, 'audio/mpeg', ?, ?, ?, ?)",
                    ((f"fill-{i}", clip, len(clip), float(i), float(i)) for i in range(entries)),
                )
            count, size = await db.cache.stats()
            print(f"cache filled: {count} clips, {size / 2**20:.0f} MB")
            roomy, full = 2 * size, size  # a limit the puts stay under, and one every put goes over
            results = [
                ("cache_put, no eviction", *await _per_op(ops, lambda i: db.cache.put(
                    f"new-{i}", 1, "audio/mpeg", clip, 1e9 + i, roomy))),
                ("cache_put, evicting the oldest", *await _per_op(ops, lambda i: db.cache.put(
                    f"evict-{i}", 1, "audio/mpeg", clip, 2e9 + i, full))),
                ("cache_get (hit)", *await _per_op(ops, lambda i: db.cache.get(f"fill-{entries - 1 - i}", 3e9 + i))),
            ]
        finally:
            await db.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200, help="cache size to fill (default 200, the bot's limit)")
    parser.add_argument("--clip-kb", type=int, default=30, help="size of each cached clip (default 30)")
    parser.add_argument("--ops", type=int, default=50, help="operations timed per figure (default 50)")
    args = parser.parse_args()
    results = asyncio.run(run(args.mb, args.clip_kb, args.ops))
    print(f"{'operation':<32} {'wall median':>12} {'CPU per op':>11}")
    for name, wall_ms, cpu_ms in results:
        print(f"{name:<32} {wall_ms:>9.2f} ms {cpu_ms:>8.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
