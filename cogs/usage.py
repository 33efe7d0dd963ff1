"""/usage and /forget-me."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

if TYPE_CHECKING:
    from bot.app import NanoVoice

log = logging.getLogger(__name__)


class Usage(commands.Cog):
    def __init__(self, bot: NanoVoice) -> None:
        self.bot = bot

    @app_commands.command(name="usage", description="Your clone runs and spend today, and this server's budget")
    @app_commands.guild_only()
    async def usage(self, interaction: discord.Interaction) -> None:
        raise NotImplementedError

    @app_commands.command(name="forget-me", description="Delete every voice, job, cached line and setting of yours")
    @app_commands.guild_only()
    async def forget_me(self, interaction: discord.Interaction) -> None:
        raise NotImplementedError


async def setup(bot: NanoVoice) -> None:
    await bot.add_cog(Usage(bot))
