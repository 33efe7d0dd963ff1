"""The owner's blocks (/owner block): users and servers that may no longer use the bot.

Every change is announced in the transaction that makes it (``tx.notify``, LISTEN/NOTIFY on PostgreSQL), so
each process sharing the database can follow the blocks it keeps in memory (:meth:`BlockRepository.watch`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from bot.storage.base import Repository, Transaction, row_to
from bot.storage.records import Block

if TYPE_CHECKING:
    from bot.storage.database import Database

_TOPIC = "blocks"


class BlockRepository(Repository):
    data_name = "blocks"

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self._watchers: list[Callable[[], None]] = []
        db.subscribe(_TOPIC, self._on_notification)

    def watch(self, changed: Callable[[], None]) -> None:
        """Call ``changed()`` when a block may have been added or removed by any process sharing the database
        (this one's changes included), or when notifications may have been missed (read :meth:`list` again).
        Never on SQLite, whose one process makes every change itself."""
        self._watchers.append(changed)

    def _on_notification(self, _text: str | None) -> None:
        for changed in self._watchers:
            changed()

    async def list(self) -> list[Block]:
        rows = await self._db.fetchall(
            "SELECT kind, target_id, reason, blocked_by, created_at FROM blocks ORDER BY created_at, kind, target_id"
        )
        return [row_to(Block, r) for r in rows]

    async def add(self, kind: str, target_id: int, reason: str | None, blocked_by: int, now: float) -> Block:
        """Block (or re-block with a new reason) a user or a guild; returns the stored block."""
        async with self._db.transaction() as tx:
            rows = await tx.fetchall(
                "INSERT INTO blocks (kind, target_id, reason, blocked_by, created_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (kind, target_id) DO UPDATE SET reason = excluded.reason, "
                "blocked_by = excluded.blocked_by RETURNING kind, target_id, reason, blocked_by, created_at",
                (kind, target_id, reason, blocked_by, now),
            )
            await tx.notify(_TOPIC, f"{kind}:{target_id}")  # heard by every process once this commits
        return row_to(Block, rows[0])

    async def remove(self, kind: str, target_id: int) -> bool:
        async with self._db.transaction() as tx:
            removed = await tx.execute("DELETE FROM blocks WHERE kind = ? AND target_id = ?", (kind, target_id)) == 1
            if removed:
                await tx.notify(_TOPIC, f"{kind}:{target_id}")
        return removed

    async def count_user_data(self, user_id: int) -> int:
        return 0

    async def delete_user_data(self, user_id: int, tx: Transaction | None = None) -> int:
        """Nothing: a block is the owner's decision about a user, not the user's data, and /forget-me must
        not lift it (the table has no user_id column on purpose, migration 0003)."""
        return 0
