"""The running bot processes (``bot_instances``, migration 0006): who may claim clone jobs.

Not one of :meth:`Database.repositories` (the /forget-me protocol): it holds no user's data, only which
processes are alive (:mod:`bot.instances` owns this process's row).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from bot.storage.base import placeholders, row_to
from bot.storage.jobs import CLAIMS_TOPIC
from bot.storage.records import BotInstance

if TYPE_CHECKING:
    from bot.storage.database import Database


class InstanceRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def beat(self, instance: BotInstance) -> None:
        """Register ``instance`` or, when its row is there, move its heartbeat to ``instance.heartbeat_at``
        (a row a sibling deleted, taking this process for dead, comes back)."""
        await self._db.execute(
            "INSERT INTO bot_instances (id, started_at, heartbeat_at, pid, host, shard_ids) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
            (instance.id, instance.started_at, instance.heartbeat_at, instance.pid, instance.host, instance.shard_ids),
        )

    async def get(self, instance_id: str) -> BotInstance | None:
        return row_to(BotInstance, await self._db.fetchone("SELECT * FROM bot_instances WHERE id = ?",
                                                           (instance_id,)))

    async def others(self, instance_id: str) -> list[BotInstance]:
        """Every registered instance but ``instance_id``."""
        rows = await self._db.fetchall("SELECT * FROM bot_instances WHERE id <> ? ORDER BY started_at",
                                       (instance_id,))
        return [row_to(BotInstance, r) for r in rows]

    async def delete(self, instance_ids: Sequence[str]) -> int:
        if not instance_ids:
            return 0
        return await self._db.execute(f"DELETE FROM bot_instances WHERE id IN ({placeholders(instance_ids)})",
                                      tuple(instance_ids))

    async def leave(self, instance_id: str) -> None:
        """A clean stop: delete ``instance_id``'s row and say so (:data:`~bot.storage.jobs.CLAIMS_TOPIC`), so the
        siblings sweep at once for any job still claimed in its name."""
        async with self._db.transaction() as tx:
            await tx.execute("DELETE FROM bot_instances WHERE id = ?", (instance_id,))
            await tx.notify(CLAIMS_TOPIC, instance_id)
