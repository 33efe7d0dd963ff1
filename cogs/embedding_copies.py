"""The Discord side of EMBEDDING_CHANNEL_ID: where :class:`bot.embeddings.EmbeddingHost` keeps copies of
Qwen3-TTS voice embeddings when the bot has no public HTTP address.

A copy is a message with the embedding attached in that channel; this cog posts it, fetches it again
for a fresh attachment URL, and deletes it (:meth:`EmbeddingHost.set_discord_hooks`). Installed only
when the host runs in that mode.
"""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

if TYPE_CHECKING:
    from bot.app import NanoVoice

log = logging.getLogger(__name__)

REHOST_NOTE = "Stored voice embedding kept by nanovoice so Qwen3-TTS voices keep working. Please don't delete it."


class EmbeddingCopies(commands.Cog):
    def __init__(self, bot: NanoVoice) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        if self.bot.embeddings.mode == "discord":
            self.bot.embeddings.set_discord_hooks(self.rehost, self.refresh, self.delete_copy)

    async def cog_unload(self) -> None:
        self.bot.embeddings.set_discord_hooks(None, None, None)

    def _channel(self) -> discord.PartialMessageable:
        channel_id = self.bot.config.embedding_channel_id
        if channel_id is None:  # the hooks are installed only when it is set
            raise RuntimeError("EMBEDDING_CHANNEL_ID is not set, so there is no channel to keep embeddings in")
        return self.bot.get_partial_messageable(channel_id)

    async def rehost(self, data: bytes, filename: str) -> tuple[str, float | None, int]:
        """Post a copy; its attachment URL, no known expiry, and the message id."""
        message = await self._channel().send(
            REHOST_NOTE, file=discord.File(io.BytesIO(data), filename=filename),
            allowed_mentions=discord.AllowedMentions.none(),
        )
        if not message.attachments:
            raise RuntimeError("Discord kept no attachment of the re-hosted embedding")
        return message.attachments[0].url, None, message.id

    async def refresh(self, message_id: int) -> tuple[str, float | None]:
        """A fresh attachment URL of the copy in ``message_id``."""
        message = await self._channel().fetch_message(message_id)
        if not message.attachments:
            raise LookupError(f"message {message_id} has no attachment")
        return message.attachments[0].url, None

    async def delete_copy(self, message_id: int) -> None:
        try:
            await self._channel().get_partial_message(message_id).delete()
        except discord.NotFound:
            pass


async def setup(bot: NanoVoice) -> None:
    await bot.add_cog(EmbeddingCopies(bot))
