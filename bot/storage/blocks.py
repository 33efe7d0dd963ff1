"""The owner's blocks (/owner block): users and servers that may no longer use the bot."""

from __future__ import annotations

from bot.storage.base import Repository, Transaction, row_to
from bot.storage.records import Block


class BlockRepository(Repository):
    data_name = "blocks"

    async def list(self) -> list[Block]:
        rows = await self._db.fetchall(
            "SELECT kind, target_id, reason, blocked_by, created_at FROM blocks ORDER BY created_at, kind, target_id"
        )
        return [row_to(Block, r) for r in rows]

    async def add(self, kind: str, target_id: int, reason: str | None, blocked_by: int, now: float) -> Block:
        """Block (or re-block with a new reason) a user or a guild; returns the stored block."""
        rows = await self._db.write_returning(
            "INSERT INTO blocks (kind, target_id, reason, blocked_by, created_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (kind, target_id) DO UPDATE SET reason = excluded.reason, blocked_by = excluded.blocked_by "
            "RETURNING kind, target_id, reason, blocked_by, created_at",
            (kind, target_id, reason, blocked_by, now),
        )
        return row_to(Block, rows[0])

    async def remove(self, kind: str, target_id: int) -> bool:
        return await self._db.execute("DELETE FROM blocks WHERE kind = ? AND target_id = ?", (kind, target_id)) == 1

    async def count_user_data(self, user_id: int) -> int:
        return 0

    async def delete_user_data(self, user_id: int, tx: Transaction | None = None) -> int:
        """Nothing: a block is the owner's decision about a user, not the user's data, and /forget-me must
        not lift it (the table has no user_id column on purpose, migration 0003)."""
        return 0
