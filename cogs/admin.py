"""/nanovoice settings: per-guild budget, clone role and clone switch for server managers."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

if TYPE_CHECKING:
    from bot.app import NanoVoice

log = logging.getLogger(__name__)


class Admin(commands.Cog):
    nanovoice = app_commands.Group(
        name="nanovoice", description="Server settings for nanovoice", guild_only=True,
        default_permissions=discord.Permissions(manage_guild=True),
    )

    def __init__(self, bot: NanoVoice) -> None:
        self.bot = bot

    @nanovoice.command(name="settings", description="View or change this server's nanovoice settings")
    @app_commands.checks.has_permissions(manage_guild=True)
    async def settings(self, interaction: discord.Interaction) -> None:
        raise NotImplementedError


async def setup(bot: NanoVoice) -> None:
    await bot.add_cog(Admin(bot))
