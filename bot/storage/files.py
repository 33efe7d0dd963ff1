"""Files the bot stores itself (Qwen speaker embeddings) and their re-hosted copies in Discord."""

from __future__ import annotations

from bot.storage.base import Repository, Transaction, row_to
from bot.storage.records import StoredFile

_META = ("SELECT id, user_id, kind, token, filename, content_type, size, sha256, created_at, discord_url, "
         "discord_url_expires_at, discord_message_id FROM stored_files")


class StoredFileRepository(Repository):
    data_name = "stored_files"

    async def get(self, file_id: int) -> StoredFile | None:
        return row_to(StoredFile, await self._db.fetchone(f"{_META} WHERE id = ?", (file_id,)))

    async def data(self, file_id: int) -> bytes | None:
        data: bytes | None = await self._db.fetchval("SELECT data FROM stored_files WHERE id = ?", (file_id,))
        return data

    async def by_token(self, token: str) -> tuple[StoredFile, bytes] | None:
        row = await self._db.fetchone("SELECT * FROM stored_files WHERE token = ?", (token,))
        if row is None:
            return None
        return row_to(StoredFile, row), bytes(row["data"])

    async def for_user(self, user_id: int) -> list[StoredFile]:
        rows = await self._db.fetchall(f"{_META} WHERE user_id = ? ORDER BY id", (user_id,))
        return [row_to(StoredFile, r) for r in rows]

    async def set_discord_copy(self, file_id: int, url: str | None, expires_at: float | None,
                               message_id: int | None) -> None:
        await self._db.execute(
            "UPDATE stored_files SET discord_url = ?, discord_url_expires_at = ?, discord_message_id = ? "
            "WHERE id = ?",
            (url, expires_at, message_id, file_id),
        )

    async def count_user_data(self, user_id: int) -> int:
        return int(await self._db.fetchval("SELECT COUNT(*) FROM stored_files WHERE user_id = ?", (user_id,)))

    async def delete_user_data(self, user_id: int, tx: Transaction | None = None) -> int:
        return await self._on(tx).execute("DELETE FROM stored_files WHERE user_id = ?", (user_id,))
