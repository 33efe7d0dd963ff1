"""The spend ledger for bot.limits.

Rows in state 'reserved' or 'charged' count toward limits and spend; 'released' rows count for nothing.
Reads take an optional ``tx`` (the :class:`~bot.storage.base.Transaction` of
:meth:`Database.transaction`) so that a limit check and its reservation run in one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bot.storage.base import Repository, Transaction

COUNTED = "state IN ('reserved', 'charged')"
ANONYMOUS_USER = 0


class LedgerRepository(Repository):
    data_name = "ledger"
    removes_rows = False  # money already spent stays for the budgets, detached from the user

    async def _sum(self, tx: Transaction | None, sql: str, params: Sequence[Any]) -> int:
        value = await self._on(tx).fetchval(sql, params)
        return int(value) if value is not None else 0

    async def count(self, user_id: int, kind: str, day: str, *, tx: Transaction | None = None) -> int:
        """How many counted (reserved or charged) ``kind`` rows ``user_id`` has on ``day``."""
        return await self._sum(
            tx, f"SELECT COUNT(*) FROM ledger WHERE user_id = ? AND day = ? AND kind = ? AND {COUNTED}",
            (user_id, day, kind),
        )

    async def guild_spend(self, guild_id: int, day: str, *, currency: str = "USD",
                          tx: Transaction | None = None) -> int:
        """Micro-units of ``currency`` reserved or charged for ``guild_id`` on ``day``."""
        return await self._sum(
            tx, "SELECT COALESCE(SUM(amount_micros), 0) FROM ledger WHERE guild_id = ? AND day = ? "
                f"AND currency = ? AND {COUNTED}",
            (guild_id, day, currency),
        )

    async def total_spend(self, day: str, *, currency: str = "USD", tx: Transaction | None = None) -> int:
        """Micro-units of ``currency`` reserved or charged on ``day`` across every guild and DM (the bot's spend)."""
        return await self._sum(
            tx, f"SELECT COALESCE(SUM(amount_micros), 0) FROM ledger WHERE day = ? AND currency = ? AND {COUNTED}",
            (day, currency),
        )

    async def top_guilds(self, day: str, limit: int, *, currency: str = "USD") -> list[tuple[int | None, int]]:
        """``(guild_id, spend)`` of the guilds (None: DMs) that spent most on ``day``, highest first."""
        rows = await self._db.fetchall(
            "SELECT guild_id, SUM(amount_micros) AS spend FROM ledger WHERE day = ? AND currency = ? "
            f"AND {COUNTED} GROUP BY guild_id HAVING spend > 0 ORDER BY spend DESC, guild_id LIMIT ?",
            (day, currency, limit),
        )
        return [(r[0], int(r[1])) for r in rows]

    async def guild_count(self, day: str, *, currency: str = "USD") -> int:
        """How many guilds spent anything on ``day`` (DMs not counted)."""
        return await self._sum(
            None, "SELECT COUNT(DISTINCT guild_id) FROM ledger WHERE day = ? AND currency = ? "
                  f"AND {COUNTED} AND guild_id IS NOT NULL AND amount_micros > 0",
            (day, currency),
        )

    async def user_spend(self, user_id: int, *, day: str | None = None, currency: str = "USD") -> int:
        """Micro-units of ``currency`` reserved or charged for ``user_id`` on ``day`` (None: ever)."""
        if day is None:
            return await self._sum(
                None, "SELECT COALESCE(SUM(amount_micros), 0) FROM ledger WHERE user_id = ? AND currency = ? "
                      f"AND {COUNTED}",
                (user_id, currency),
            )
        return await self._sum(
            None, "SELECT COALESCE(SUM(amount_micros), 0) FROM ledger WHERE user_id = ? AND day = ? "
                  f"AND currency = ? AND {COUNTED}",
            (user_id, day, currency),
        )

    async def reserve(self, tx: Transaction, *, user_id: int, guild_id: int | None, kind: str, ref: str | None,
                      amount_micros: int, day: str, now: float) -> int:
        """Insert a 'reserved' USD row inside ``tx``; returns its id."""
        return await tx.insert(
            "INSERT INTO ledger (user_id, guild_id, kind, ref, state, amount_micros, currency, day, created_at) "
            "VALUES (?, ?, ?, ?, 'reserved', ?, 'USD', ?, ?)",
            (user_id, guild_id, kind, ref, amount_micros, day, now),
        )

    async def settle(self, entry_id: int, amount_micros: int, currency: str, ref: str | None, now: float) -> bool:
        """Mark a reserved (or re-settle a charged) row as charged with its actual amount."""
        return await self._db.execute(
            "UPDATE ledger SET state = 'charged', amount_micros = ?, currency = ?, ref = COALESCE(?, ref), "
            "settled_at = ? WHERE id = ? AND state IN ('reserved', 'charged')",
            (amount_micros, currency, ref, now, entry_id),
        ) == 1

    async def release(self, entry_id: int, now: float) -> bool:
        """Mark a reserved row as released (amount 0); a charged row is never released."""
        return await self._db.execute(
            "UPDATE ledger SET state = 'released', amount_micros = 0, settled_at = ? "
            "WHERE id = ? AND state = 'reserved'",
            (now, entry_id),
        ) == 1

    async def count_user_data(self, user_id: int) -> int:
        return int(await self._db.fetchval("SELECT COUNT(*) FROM ledger WHERE user_id = ?", (user_id,)))

    async def delete_user_data(self, user_id: int, tx: Transaction | None = None) -> int:
        """Detach (not delete) the user's rows: they are money the guild already spent, kept for its budget,
        with ``user_id`` 0 and no reference, so nothing points back to the user. Returns how many."""
        return await self._on(tx).execute(
            "UPDATE ledger SET user_id = ?, ref = NULL WHERE user_id = ?", (ANONYMOUS_USER, user_id)
        )
