"""The /say cooldown shared by every process on one database (``say_cooldowns``, migration 0007).

One row per user who spoke recently: the unix time of their last line. :meth:`CooldownRepository.claim` is
the whole check-and-set in one statement, so two processes racing for one user never both pass: an upsert
that only moves ``last_at`` when the cooldown is over, and returns the row only when it did (PostgreSQL
re-checks the condition on the row it waited for, READ COMMITTED's rule for ``ON CONFLICT DO UPDATE``).
"""

from __future__ import annotations

from bot.storage.base import Repository, Transaction


class CooldownRepository(Repository):
    data_name = "say_cooldowns"
    listed = False  # deleted by /forget-me, but not listed as stored data: it is gone within seconds anyway

    async def claim(self, user_id: int, now: float, seconds: float) -> bool:
        """Record ``now`` as the user's last line if their last one is at least ``seconds`` old (or there is
        none); True when it was recorded, False while they are cooling down. One round trip."""
        rows = await self._db.write_returning(
            "INSERT INTO say_cooldowns (user_id, last_at) VALUES (?, ?) "
            "ON CONFLICT (user_id) DO UPDATE SET last_at = excluded.last_at WHERE say_cooldowns.last_at <= ? "
            "RETURNING last_at",
            (user_id, now, now - seconds),
        )
        return bool(rows)

    async def last(self, user_id: int) -> float | None:
        """The unix time of the user's last recorded line (None: none recorded)."""
        value = await self._db.fetchval("SELECT last_at FROM say_cooldowns WHERE user_id = ?", (user_id,))
        return None if value is None else float(value)

    async def release(self, user_id: int, claimed_at: float) -> bool:
        """Forget the user's last line if it is still the one claimed at ``claimed_at`` (a refused request:
        nothing was spoken); a later claim, by any process, stays."""
        return await self._db.execute("DELETE FROM say_cooldowns WHERE user_id = ? AND last_at = ?",
                                      (user_id, claimed_at)) == 1

    async def prune(self, before: float) -> int:
        """Delete the rows of lines older than ``before`` (their cooldown is over: they mean nothing)."""
        return await self._db.execute("DELETE FROM say_cooldowns WHERE last_at < ?", (before,))

    async def count_user_data(self, user_id: int) -> int:
        return int(await self._db.fetchval("SELECT COUNT(*) FROM say_cooldowns WHERE user_id = ?", (user_id,)))

    async def delete_user_data(self, user_id: int, tx: Transaction | None = None) -> int:
        return await self._on(tx).execute("DELETE FROM say_cooldowns WHERE user_id = ?", (user_id,))
