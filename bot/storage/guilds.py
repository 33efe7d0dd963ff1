"""Per-server settings (/nanovoice settings), cached in memory since every paid call reads them.

The cache stays current across processes: a change is announced (``tx.notify``, LISTEN/NOTIFY on
PostgreSQL) in the transaction that makes it, and every process sharing the database drops its copy
when it hears it. While a process can't hear the others (its listening connection is being restored),
it reads through instead of caching.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bot.storage.base import Repository, Transaction
from bot.storage.records import GuildSettings

if TYPE_CHECKING:
    from bot.storage.database import Database

_COLUMNS = frozenset({"daily_budget_micros", "clone_role_id", "clones_enabled", "voice_playback"})
_SWITCHES = ("clones_enabled", "voice_playback")  # 0/1 on SQLite, BOOLEAN on PostgreSQL; NULL: never set
_TOPIC = "guild_settings"


class GuildSettingsRepository(Repository):
    data_name = "guild_settings"

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self._cached: dict[int, GuildSettings] = {}
        self._generation = 0  # bumped by every invalidation: a read that raced one is not cached
        db.subscribe(_TOPIC, self._on_notification)

    async def get(self, guild_id: int) -> GuildSettings:
        """A guild's settings; cached, since every paid call reads them and only this class writes them."""
        cached = self._cached.get(guild_id)
        if cached is not None:
            return cached
        generation = self._generation
        settings = await self._load(guild_id)
        if generation == self._generation and self._db.caches_safely:
            self._cached[guild_id] = settings
        return settings

    def _invalidate(self, guild_id: int | None) -> None:
        """Forget one guild's cached settings (None: every guild's)."""
        self._generation += 1
        if guild_id is None:
            self._cached.clear()
        else:
            self._cached.pop(guild_id, None)

    def _on_notification(self, text: str | None) -> None:
        if text is None:  # notifications may have been missed
            self._invalidate(None)
        elif text.isdigit():
            self._invalidate(int(text))

    async def _load(self, guild_id: int) -> GuildSettings:
        row = await self._db.fetchone(
            "SELECT guild_id, daily_budget_micros, clone_role_id, clones_enabled, voice_playback FROM guild_settings "
            "WHERE guild_id = ?",
            (guild_id,),
        )
        if row is None:
            return GuildSettings(guild_id, None, None, None)
        enabled = None if row["clones_enabled"] is None else bool(row["clones_enabled"])
        playback = None if row["voice_playback"] is None else bool(row["voice_playback"])
        return GuildSettings(guild_id, row["daily_budget_micros"], row["clone_role_id"], enabled, playback)

    async def update(self, guild_id: int, now: float, **changes: Any) -> GuildSettings:
        """Set some of daily_budget_micros, clone_role_id, clones_enabled, voice_playback (None: the default)."""
        unknown = set(changes) - _COLUMNS
        if unknown:
            raise ValueError(f"unknown guild settings {sorted(unknown)}")
        self._invalidate(guild_id)
        async with self._db.transaction() as tx:
            await tx.execute(
                "INSERT INTO guild_settings (guild_id, updated_at) VALUES (?, ?) ON CONFLICT (guild_id) DO NOTHING",
                (guild_id, now),
            )
            for column in sorted(changes):  # column names come from the fixed set above
                value = changes[column]
                if column in _SWITCHES and value is not None:
                    value = bool(value)  # BOOLEAN on PostgreSQL, 0/1 on SQLite
                await tx.execute(
                    f"UPDATE guild_settings SET {column} = ?, updated_at = ? WHERE guild_id = ?",
                    (value, now, guild_id),
                )
            await tx.notify(_TOPIC, str(guild_id))  # other processes drop their copy once this commits
        self._invalidate(guild_id)  # a read that raced the transaction may have cached the old row
        return await self.get(guild_id)

    async def count_user_data(self, user_id: int) -> int:
        return 0

    async def delete_user_data(self, user_id: int, tx: Transaction | None = None) -> int:
        """Nothing: a server's settings belong to the server (a clone role is a role id, not a user)."""
        return 0
