"""Bot instances (bot/instances.py): registration, heartbeat and who counts as dead, on both backends; on
PostgreSQL through two Database objects (two pools, as two processes have)."""

from __future__ import annotations

import pytest

from bot.clock import Clock
from bot.instances import Instance
from bot.storage import BotInstance, Database
from tests.fixtures_postgres import BACKENDS

LEASE = 60.0


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


async def test_register_beat_and_unregister_keep_one_row(db):
    clock = Clock()
    me = Instance(db, clock, shard_ids=(0, 2))
    assert await db.instances.get(me.id) is None
    await me.register()
    await me.register()  # idempotent
    row = await db.instances.get(me.id)
    assert (row.pid, row.shard_ids, row.started_at) == (me.pid, "0,2", row.heartbeat_at)
    clock.advance(5)
    await db.instances.delete([me.id])  # a sibling took this process for dead
    await me.beat()
    again = await db.instances.get(me.id)
    assert again.heartbeat_at == pytest.approx(row.heartbeat_at + 5, abs=1) and again.started_at == row.started_at
    await me.unregister()
    assert await db.instances.get(me.id) is None and not me.registered


async def test_a_sibling_with_a_stale_heartbeat_is_dead(db):
    clock = Clock()
    me = Instance(db, clock)
    await me.register()
    now = clock.now()
    await db.instances.beat(BotInstance("stale", 0.0, now - LEASE - 1, 1, "h", None))
    assert "stale" in await me.reap(LEASE)
    assert await db.instances.get("stale") is None and await db.instances.get(me.id) is not None


async def test_on_sqlite_every_other_instance_is_dead(tmp_path):
    db = await Database(tmp_path / "db.sqlite3").connect()
    try:
        clock = Clock()
        me = Instance(db, clock)
        await me.register()
        await db.instances.beat(BotInstance("fresh", clock.now(), clock.now(), 1, "h", None))
        assert await me.reap(LEASE) == ["fresh"]  # one process per SQLite file: this one
    finally:
        await db.close()


@pytest.mark.parametrize("backend", ["postgres"])
async def test_on_postgres_a_sibling_without_its_liveness_lock_is_dead_at_once(backend, postgres_url):
    first, second = await Database(postgres_url).connect(), await Database(postgres_url).connect()
    try:
        clock = Clock()
        a, b = Instance(first, clock), Instance(second, clock)
        await a.register()
        await b.register()
        assert await b.reap(LEASE) == [] and await a.reap(LEASE) == []  # both alive, heartbeats fresh
        assert await second.backend.locks_held([Instance.lock_key(a.id), Instance.lock_key("nobody")]) == {
            Instance.lock_key(a.id)}
        await first.backend.release_lock(Instance.lock_key(a.id))  # what a SIGKILL does to its connection
        assert await b.reap(LEASE) == [a.id]
        assert await second.instances.get(a.id) is None
        await a.beat()  # A was only cut off: it takes its lock again and is back
        assert await b.reap(LEASE) == [] and await second.instances.get(a.id) is not None
        await a.unregister()
        assert await second.instances.others(b.id) == []
        assert await second.backend.locks_held([Instance.lock_key(a.id)]) == set()
    finally:
        await first.close()
        await second.close()
