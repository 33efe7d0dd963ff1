"""/usage: the user's clone runs and spend, and the guild's budget (figures from the ledger via Limits)."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import interactions
from bot.limits import Usage as UsageFigures
from bot.text import format_money, format_usd

if TYPE_CHECKING:
    from bot.app import NanoVoice

log = logging.getLogger(__name__)

EMBED_COLOUR = discord.Colour.blurple()


def render_usage(usage: UsageFigures) -> discord.Embed:
    """The /usage embed. Reserved (in-flight) costs count as spent, exactly as the limits see them."""
    embed = discord.Embed(title="Your nanovoice usage", colour=EMBED_COLOUR)
    if usage.clone_limit > 0:
        clones = f"{usage.clones_today} of {usage.clone_limit}"
        if usage.clones_today >= usage.clone_limit:
            clones += " (limit reached)"
    else:
        clones = "Voice cloning is turned off on this bot."
    embed.add_field(name="Voice clones today", value=clones, inline=False)

    spend = f"Today: {format_usd(usage.user_spend_today_micros)}\nIn total: {format_usd(usage.user_spend_total_micros)}"
    if usage.user_spend_total_xno_micros:
        spend += f" (and {format_money(usage.user_spend_total_xno_micros, 'XNO')} paid in Nano)"
    embed.add_field(name="Your spend", value=spend, inline=False)

    if usage.guild_spend_today_micros is not None:
        spent = format_usd(usage.guild_spend_today_micros)
        budget = usage.guild_budget_micros or 0
        if budget > 0:
            left = max(0, budget - usage.guild_spend_today_micros)
            value = f"{spent} of {format_usd(budget)} daily budget ({format_usd(left)} left)"
        else:
            value = f"{spent} (no limit)"
        embed.add_field(name="This server today", value=value, inline=False)

    resets = math.ceil(usage.resets_at)
    embed.add_field(name="Daily limits reset", value=f"<t:{resets}:R> (midnight UTC, <t:{resets}:t> your time)",
                    inline=False)
    return embed


class Usage(commands.Cog):
    def __init__(self, bot: NanoVoice) -> None:
        self.bot = bot

    @app_commands.command(name="usage", description="Your clone runs and spend today, and this server's budget")
    @app_commands.guild_only()
    async def usage(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        figures = await self.bot.limits.usage(interaction.user.id, interaction.guild_id)
        await interactions.send(interaction, embed=render_usage(figures), ephemeral=True)


async def setup(bot: NanoVoice) -> None:
    await bot.add_cog(Usage(bot))
