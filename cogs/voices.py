"""/voice: clone (delegated to the clone-jobs cog) and per-user voice management."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

if TYPE_CHECKING:
    from bot.app import NanoVoice

log = logging.getLogger(__name__)

PROVIDERS = [
    app_commands.Choice(name="MiniMax ($1.00, 10 s–5 min of audio)", value="minimax"),
    app_commands.Choice(name="Qwen3-TTS ($0.25, 3 s–5 min of audio)", value="qwen"),
]
MINIMAX_MODELS = [
    app_commands.Choice(name="speech-02-hd (best quality)", value="speech-02-hd"),
    app_commands.Choice(name="speech-02-turbo (faster)", value="speech-02-turbo"),
]


class Voices(commands.Cog):
    voice = app_commands.Group(name="voice", description="Clone and manage your voices", guild_only=True)

    def __init__(self, bot: NanoVoice) -> None:
        self.bot = bot

    @voice.command(name="clone", description="Clone a voice from a short recording (costs the server money)")
    @app_commands.describe(
        audio="A recording of one person speaking (MP3, M4A, WAV, OGG, FLAC, AAC, WebM)",
        name="What to call the voice (1–32 characters)",
        provider="MiniMax ($1.00) or Qwen3-TTS ($0.25)",
        transcript="What is said in the recording (helps Qwen)",
        model="MiniMax clone model",
        noise_reduction="Ask MiniMax to reduce background noise",
        normalize_volume="Ask MiniMax to normalise the volume",
    )
    @app_commands.choices(provider=PROVIDERS, model=MINIMAX_MODELS)
    async def clone(
        self,
        interaction: discord.Interaction,
        audio: discord.Attachment,
        name: app_commands.Range[str, 1, 32],
        provider: app_commands.Choice[str],
        transcript: app_commands.Range[str, 1, 1000] | None = None,
        model: app_commands.Choice[str] | None = None,
        noise_reduction: bool | None = None,
        normalize_volume: bool | None = None,
    ) -> None:
        raise NotImplementedError

    @voice.command(name="list", description="Show your saved voices")
    async def list_(self, interaction: discord.Interaction) -> None:
        raise NotImplementedError

    @voice.command(name="info", description="Details of one of your voices")
    async def info(self, interaction: discord.Interaction, name: str) -> None:
        raise NotImplementedError

    @voice.command(name="rename", description="Rename one of your voices")
    async def rename(self, interaction: discord.Interaction, name: str,
                     new_name: app_commands.Range[str, 1, 32]) -> None:
        raise NotImplementedError

    @voice.command(name="delete", description="Delete one of your voices")
    async def delete(self, interaction: discord.Interaction, name: str) -> None:
        raise NotImplementedError

    @voice.command(name="default", description="Use this voice when /say names none")
    async def default(self, interaction: discord.Interaction, name: str) -> None:
        raise NotImplementedError

    @voice.command(name="jobs", description="Your running and recent clone jobs")
    async def jobs(self, interaction: discord.Interaction) -> None:
        raise NotImplementedError


async def setup(bot: NanoVoice) -> None:
    await bot.add_cog(Voices(bot))
