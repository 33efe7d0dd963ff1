"""Database.exclusive, the cross-process section behind command sync and IDENTIFY buckets: on PostgreSQL two
Database objects (two pools, as two bot processes have) never hold one name at once, a cancelled holder or
waiter lets go; on SQLite an in-process lock, and the file itself is claimed by one process (its ``.lock``)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from bot.storage import Database, DatabaseInUse


async def _advisory_locks_held(url: str) -> int:
    """Session advisory locks granted on the server right now (any session)."""
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"))
    finally:
        await conn.close()


async def test_exclusive_section_excludes_across_two_processes(two_processes):
    first, second = two_processes
    inside: list[str] = []
    overlaps: list[tuple[str, ...]] = []

    async def hold(db: Database, who: str) -> None:
        async with db.exclusive("command-sync"):
            inside.append(who)
            if len(inside) > 1:
                overlaps.append(tuple(inside))
            await asyncio.sleep(0.2)
            inside.remove(who)

    started = asyncio.get_running_loop().time()
    await asyncio.gather(*(hold(db, f"{name}{i}") for i in range(3) for db, name in ((first, "a"), (second, "b"))))
    assert overlaps == []
    assert asyncio.get_running_loop().time() - started >= 6 * 0.2 - 0.05  # one after another


async def test_different_names_do_not_exclude_each_other(two_processes):
    first, second = two_processes
    async with first.exclusive("identify:1:0"):
        await asyncio.wait_for(_enter_and_leave(second, "identify:1:1"), 2)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(_enter_and_leave(second, "identify:1:0"), 0.3)


async def _enter_and_leave(db: Database, name: str) -> None:
    async with db.exclusive(name):
        pass


async def test_cancelled_holder_releases_for_the_other_process(two_processes, postgres_url):
    first, second = two_processes
    entered = asyncio.Event()

    async def holds_forever() -> None:
        async with first.exclusive("command-sync"):
            entered.set()
            await asyncio.sleep(3600)

    holder = asyncio.create_task(holds_forever())
    await entered.wait()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(_enter_and_leave(second, "command-sync"), 0.3)
    holder.cancel()
    with pytest.raises(asyncio.CancelledError):
        await holder
    await asyncio.wait_for(_enter_and_leave(second, "command-sync"), 5)
    # Nothing stays locked on a pooled connection afterwards (the pool does not reset sessions).
    assert await _advisory_locks_held(postgres_url) == 0
    await asyncio.wait_for(_enter_and_leave(first, "command-sync"), 5)


async def test_cancelled_waiter_never_takes_the_lock_later(two_processes, postgres_url):
    first, second = two_processes
    async with first.exclusive("command-sync"):
        waiter = asyncio.create_task(_enter_and_leave(second, "command-sync"))
        await asyncio.sleep(0.2)  # waiting in pg_advisory_lock on the server
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    # The waiter's session is gone: neither process finds the name held.
    await asyncio.wait_for(_enter_and_leave(first, "command-sync"), 5)
    await asyncio.wait_for(_enter_and_leave(second, "command-sync"), 5)
    await asyncio.sleep(0.1)
    assert await _advisory_locks_held(postgres_url) == 0


async def test_an_error_inside_the_section_releases_it(two_processes):
    first, second = two_processes
    with pytest.raises(RuntimeError, match="boom"):
        async with first.exclusive("command-sync"):
            raise RuntimeError("boom")
    await asyncio.wait_for(_enter_and_leave(second, "command-sync"), 5)


async def test_sqlite_exclusive_is_an_in_process_lock(tmp_path):
    db = await Database(tmp_path / "x.sqlite3").connect()
    try:
        order: list[str] = []

        async def hold(who: str) -> None:
            async with db.exclusive("command-sync"):
                order.append(f"{who} in")
                await asyncio.sleep(0.05)
                order.append(f"{who} out")

        await asyncio.gather(hold("a"), hold("b"))
        assert order == ["a in", "a out", "b in", "b out"]
        assert not db.shared
    finally:
        await db.close()


async def test_sqlite_file_is_claimed_by_one_owner_until_closed(tmp_path):
    path = tmp_path / "data" / "x.sqlite3"
    first = await Database(path).connect()
    try:
        with pytest.raises(DatabaseInUse) as refused:
            await Database(path).connect()
        assert str(refused.value) == (
            f"another nanovoice process is already using the database {path}: stop it first, or share a "
            "PostgreSQL database (DATABASE_URL) between processes")
        link = tmp_path / "elsewhere.sqlite3"
        link.symlink_to(path)
        with pytest.raises(DatabaseInUse):  # the same file by another name
            await Database(link).connect()
        # nanovoice check opens it beside the bot without claiming it, and can write.
        check = await Database(path, process_lock=False).connect()
        await check.set_meta("check_write_test", "x")
        assert await first.get_meta("check_write_test") == "x"
        await check.close()
    finally:
        await first.close()
    again = await Database(path).connect()  # released on close
    await again.close()
