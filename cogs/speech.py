"""/say and the "Speak this message" context menu."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

if TYPE_CHECKING:
    from bot.app import NanoVoice

log = logging.getLogger(__name__)


class Speech(commands.Cog):
    def __init__(self, bot: NanoVoice) -> None:
        self.bot = bot
        self.speak_menu = app_commands.ContextMenu(name="Speak this message", callback=self.speak_this_message)
        self.speak_menu.guild_only = True

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.speak_menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.speak_menu.name, type=self.speak_menu.type)

    @app_commands.command(name="say", description="Speak text in one of your voices or a stock voice")
    @app_commands.guild_only()
    @app_commands.describe(
        text="What to say",
        voice="One of your voices, or a stock voice written model/voice",
        speed="Speaking speed, 0.5 to 2.0 (default 1.0)",
        voice_message="Send it as a Discord voice message",
    )
    async def say(
        self,
        interaction: discord.Interaction,
        text: str,
        voice: str | None = None,
        speed: app_commands.Range[float, 0.5, 2.0] | None = None,
        voice_message: bool | None = None,
    ) -> None:
        raise NotImplementedError

    async def speak_this_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        raise NotImplementedError


async def setup(bot: NanoVoice) -> None:
    await bot.add_cog(Speech(bot))
