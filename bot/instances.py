"""This bot process as one of several sharing a database: its identity, registration, heartbeat and liveness.

One :class:`Instance` per running process (a uuid4 hex id), owned by the clone service, which claims clone
jobs in its name (:mod:`bot.cloning`, "Claims"). It registers in ``bot_instances`` and beats a heartbeat
there. Another process is dead when its row is missing, when its heartbeat is older than the lease, or —
on PostgreSQL, which notices a SIGKILL at once — when it no longer holds its liveness lock: every instance
holds the session advisory lock ``instance:<id>`` on a connection of its own for its whole life, and a
killed process's connection (and lock) goes with it. On SQLite only one process uses the database file, so
every other instance is dead by definition.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid

from bot.clock import Clock
from bot.storage import BotInstance, Database
from bot.storage.backends import PostgresBackend, advisory_key

log = logging.getLogger(__name__)

__all__ = ["Instance"]


class Instance:
    """This process's row in ``bot_instances`` and, on PostgreSQL, its liveness lock."""

    def __init__(self, db: Database, clock: Clock, *, shard_ids: tuple[int, ...] | None = None) -> None:
        self.db = db
        self.clock = clock
        self.id = uuid.uuid4().hex
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self.shard_ids = ",".join(map(str, shard_ids)) if shard_ids is not None else None
        self.started_at: float | None = None
        self._registering = asyncio.Lock()
        self._lock_lost = False  # the liveness lock's connection is gone and not yet taken again

    @property
    def registered(self) -> bool:
        return self.started_at is not None

    @property
    def _postgres(self) -> PostgresBackend | None:
        backend = self.db.backend
        return backend if isinstance(backend, PostgresBackend) else None

    @staticmethod
    def lock_key(instance_id: str) -> int:
        """The advisory lock number an instance holds while it lives."""
        return advisory_key(f"instance:{instance_id}")

    def _row(self, now: float) -> BotInstance:
        return BotInstance(self.id, self.started_at if self.started_at is not None else now, now, self.pid,
                           self.host, self.shard_ids)

    async def register(self) -> None:
        """Take the liveness lock, then write the row (in that order: a row without its lock reads as dead).
        Idempotent."""
        async with self._registering:
            if self.registered:
                return
            now = self.clock.now()
            if (pg := self._postgres) is not None:
                await pg.hold_lock(self.lock_key(self.id))
            self.started_at = now
            await self.db.instances.beat(self._row(now))
            log.info("bot instance %s registered (pid %s on %s)", self.id, self.pid, self.host)

    async def beat(self) -> None:
        """The heartbeat: the row's ``heartbeat_at`` is now (the row is written again if a sibling deleted
        it) and the liveness lock is taken again if its connection was lost."""
        if not self.registered:
            return
        pg = self._postgres
        if pg is not None and not pg.holding(self.lock_key(self.id)):
            if not self._lock_lost:  # one warning per loss, however many beats it takes to get it back
                log.warning("bot instance %s lost its liveness lock (database connection gone); taking it again",
                            self.id)
                self._lock_lost = True
            await pg.hold_lock(self.lock_key(self.id))
            self._lock_lost = False
            log.info("bot instance %s holds its liveness lock again", self.id)
        await self.db.instances.beat(self._row(self.clock.now()))

    async def reap(self, lease_seconds: float) -> list[str]:
        """Delete the rows of dead instances (see the module's docstring) and return their ids."""
        others = await self.db.instances.others(self.id)
        if not others:
            return []
        pg = self._postgres
        if pg is None:
            dead = [o.id for o in others]  # SQLite: one process, this one
        else:
            stale_before = self.clock.now() - lease_seconds
            held = await pg.locks_held([self.lock_key(o.id) for o in others])
            dead = [o.id for o in others if o.heartbeat_at < stale_before or self.lock_key(o.id) not in held]
        if dead:
            await self.db.instances.delete(dead)
            log.info("bot instance(s) %s stopped without handing over: their clone jobs are adopted",
                     ", ".join(dead))
        return dead

    async def unregister(self) -> None:
        """A clean stop: delete the row (announced: the siblings sweep at once) and give the liveness lock
        back."""
        if not self.registered:
            return
        async with self._registering:
            self.started_at = None
            try:
                await self.db.instances.leave(self.id)
            finally:
                if (pg := self._postgres) is not None:
                    await pg.release_lock(self.lock_key(self.id))
            log.info("bot instance %s unregistered", self.id)
