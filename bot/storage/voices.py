"""Saved voices and each user's settings (their default voice)."""

from __future__ import annotations

import builtins

import aiosqlite

from bot.storage.base import Repository, Transaction, row_to
from bot.storage.records import DuplicateVoiceName, Voice, name_key


class VoiceRepository(Repository):
    data_name = "voices"

    async def list(self, user_id: int) -> list[Voice]:
        rows = await self._db.fetchall("SELECT * FROM voices WHERE user_id = ? ORDER BY name_key", (user_id,))
        return [row_to(Voice, r) for r in rows]

    async def by_name(self, user_id: int, name: str) -> Voice | None:
        row = await self._db.fetchone(
            "SELECT * FROM voices WHERE user_id = ? AND name_key = ?", (user_id, name_key(name))
        )
        return row_to(Voice, row)

    async def get(self, user_id: int, voice_id: int) -> Voice | None:
        """A voice by id, only if it belongs to ``user_id``."""
        row = await self._db.fetchone("SELECT * FROM voices WHERE id = ? AND user_id = ?", (voice_id, user_id))
        return row_to(Voice, row)

    async def name_taken(self, user_id: int, name: str) -> bool:
        return await self.by_name(user_id, name) is not None

    async def rename(self, user_id: int, voice_id: int, new_name: str) -> None:
        try:
            await self._db.execute(
                "UPDATE voices SET name = ?, name_key = ? WHERE id = ? AND user_id = ?",
                (new_name.strip(), name_key(new_name), voice_id, user_id),
            )
        except aiosqlite.IntegrityError:
            raise DuplicateVoiceName(new_name) from None

    async def delete(self, user_id: int, voice_id: int) -> bool:
        """Delete one of ``user_id``'s voices and its stored embedding file; False when there is none."""
        async with self._db.transaction() as tx:
            file_id = await tx.fetchone(
                "SELECT embedding_file_id FROM voices WHERE id = ? AND user_id = ?", (voice_id, user_id)
            )
            if file_id is None:
                return False
            await tx.execute("DELETE FROM voices WHERE id = ? AND user_id = ?", (voice_id, user_id))
            if file_id[0] is not None:
                await tx.execute("DELETE FROM stored_files WHERE id = ? AND user_id = ?", (file_id[0], user_id))
            return True

    async def touch(self, voice_id: int, now: float) -> None:
        await self._db.execute("UPDATE voices SET last_used_at = ? WHERE id = ?", (now, voice_id))

    async def is_cloned_voice_id(self, provider_voice_id: str) -> bool:
        """Whether any user's cloned voice (or clone job) carries this provider voice id."""
        row = await self._db.fetchone(
            "SELECT 1 FROM voices WHERE provider_voice_id = ? COLLATE NOCASE "
            "UNION ALL SELECT 1 FROM clone_jobs WHERE custom_voice_id = ? COLLATE NOCASE LIMIT 1",
            (provider_voice_id, provider_voice_id),
        )
        return row is not None

    async def mark_embedding_expired(self, voice_id: int, now: float) -> bool:
        """Record that the provider's copy of a Qwen embedding is gone (survives restarts)."""
        return await self._db.execute(
            "UPDATE voices SET embedding_expires_at = ? WHERE id = ? "
            "AND (embedding_expires_at IS NULL OR embedding_expires_at > ?)",
            (now, voice_id, now),
        ) == 1

    async def names_for_speech(self, user_id: int) -> builtins.list[tuple[str, str, bool]]:
        """``(name, provider, is_default)`` of the user's voices, by name (for /say autocomplete)."""
        rows = await self._db.fetchall(
            "SELECT v.name, v.provider, (s.default_voice_id IS NOT NULL AND s.default_voice_id = v.id) "
            "FROM voices v LEFT JOIN user_settings s ON s.user_id = v.user_id "
            "WHERE v.user_id = ? ORDER BY v.name_key",
            (user_id,),
        )
        return [(r[0], r[1], bool(r[2])) for r in rows]

    async def count_user_data(self, user_id: int) -> int:
        return int(await self._db.fetchval("SELECT COUNT(*) FROM voices WHERE user_id = ?", (user_id,)))

    async def delete_user_data(self, user_id: int, tx: Transaction | None = None) -> int:
        return await self._on(tx).execute("DELETE FROM voices WHERE user_id = ?", (user_id,))


class UserSettingsRepository(Repository):
    """One row per user who saved a setting (today: the default voice)."""

    data_name = "user_settings"

    async def default_voice(self, user_id: int) -> Voice | None:
        row = await self._db.fetchone(
            "SELECT v.* FROM user_settings s JOIN voices v ON v.id = s.default_voice_id "
            "WHERE s.user_id = ? AND v.user_id = ?",
            (user_id, user_id),
        )
        return row_to(Voice, row)

    async def set_default_voice(self, user_id: int, voice_id: int | None, now: float) -> None:
        await self._db.execute(
            "INSERT INTO user_settings (user_id, default_voice_id, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (user_id) DO UPDATE SET default_voice_id = excluded.default_voice_id, "
            "updated_at = excluded.updated_at",
            (user_id, voice_id, now),
        )

    async def count_user_data(self, user_id: int) -> int:
        return int(await self._db.fetchval("SELECT COUNT(*) FROM user_settings WHERE user_id = ?", (user_id,)))

    async def delete_user_data(self, user_id: int, tx: Transaction | None = None) -> int:
        return await self._on(tx).execute("DELETE FROM user_settings WHERE user_id = ?", (user_id,))
