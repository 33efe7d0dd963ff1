"""Clone jobs: the clone flow (validation, consent, paid submit), the background poller, and the
"Clone this voice" message context menu."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

if TYPE_CHECKING:
    from bot.app import NanoVoice

log = logging.getLogger(__name__)


class CloneJobs(commands.Cog):
    def __init__(self, bot: NanoVoice) -> None:
        self.bot = bot
        self.clone_menu = app_commands.ContextMenu(name="Clone this voice", callback=self.clone_this_voice)
        self.clone_menu.guild_only = True

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.clone_menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.clone_menu.name, type=self.clone_menu.type)

    async def clone_this_voice(self, interaction: discord.Interaction, message: discord.Message) -> None:
        raise NotImplementedError


async def setup(bot: NanoVoice) -> None:
    await bot.add_cog(CloneJobs(bot))
