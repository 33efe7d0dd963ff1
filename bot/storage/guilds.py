"""Per-server settings (/nanovoice settings), cached in memory since every paid call reads them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bot.storage.base import Repository, Transaction
from bot.storage.records import GuildSettings

if TYPE_CHECKING:
    from bot.storage.database import Database

_COLUMNS = frozenset({"daily_budget_micros", "clone_role_id", "clones_enabled", "voice_playback"})
_SWITCHES = ("clones_enabled", "voice_playback")  # stored as 0/1, NULL: never set


class GuildSettingsRepository(Repository):
    data_name = "guild_settings"

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self._cached: dict[int, GuildSettings] = {}

    async def get(self, guild_id: int) -> GuildSettings:
        """A guild's settings; cached, since every paid call reads them and only this class writes them."""
        cached = self._cached.get(guild_id)
        if cached is not None:
            return cached
        settings = await self._load(guild_id)
        self._cached[guild_id] = settings
        return settings

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
        self._cached.pop(guild_id, None)
        async with self._db.transaction() as tx:
            await tx.execute(
                "INSERT INTO guild_settings (guild_id, updated_at) VALUES (?, ?) ON CONFLICT (guild_id) DO NOTHING",
                (guild_id, now),
            )
            for column in sorted(changes):  # column names come from the fixed set above
                value = changes[column]
                if column in _SWITCHES and value is not None:
                    value = int(bool(value))
                await tx.execute(
                    f"UPDATE guild_settings SET {column} = ?, updated_at = ? WHERE guild_id = ?",
                    (value, now, guild_id),
                )
        return await self.get(guild_id)

    async def count_user_data(self, user_id: int) -> int:
        return 0

    async def delete_user_data(self, user_id: int, tx: Transaction | None = None) -> int:
        """Nothing: a server's settings belong to the server (a clone role is a role id, not a user)."""
        return 0
