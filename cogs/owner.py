"""/owner: controls for the bot's owner (today's spend across servers, blocks).

Only the application's owner(s) may use these (``bot.is_owner``, which reads the application or its
team from Discord), and only in a DM with the bot or in ``DEV_GUILD_ID``. The group is registered so
that it does not show up in ordinary servers (``allowed_contexts``: DMs only; installed with the bot),
and every call is checked again at run time: someone else gets one sentence and nothing happens.
The work is in :mod:`bot.policy` (blocks) and :mod:`bot.limits` / :mod:`bot.storage` (spend).
"""

from __future__ import annotations

import logging
import math
import re
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import interactions
from bot.app import nanovoice_of
from bot.errors import UserFacingError
from bot.limits import format_usd

if TYPE_CHECKING:
    from bot.app import NanoVoice
    from bot.storage import Block

log = logging.getLogger(__name__)

EMBED_COLOUR = discord.Colour.dark_gold()
NOT_OWNER = "Only the bot's owner can use this."
TOP_SERVERS = 10
BLOCKS_SHOWN = 40
_USER_ID = re.compile(r"^(?:<@!?(\d{15,21})>|(\d{15,21}))$")
_SERVER_ID = re.compile(r"^\d{15,21}$")


class OwnerGroup(app_commands.Group):
    """The ``/owner`` group: its check runs before every subcommand."""

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        bot = nanovoice_of(interaction.client)
        dev_guild = bot.config.dev_guild_id
        in_place = interaction.guild_id is None or interaction.guild_id == dev_guild
        if not in_place or not await bot.is_owner(interaction.user):
            log.warning("user %s tried /owner in %s", interaction.user.id,
                        f"guild {interaction.guild_id}" if interaction.guild_id else "a DM")
            raise app_commands.CheckFailure(NOT_OWNER)
        return True


def parse_target(user_id: str | None, server_id: str | None) -> tuple[str, int]:
    """``("user", id)`` or ``("guild", id)`` from the options; one sentence unless exactly one is a valid id."""
    if (user_id is None) == (server_id is None):
        raise UserFacingError("Give either a user_id or a server_id.")
    if user_id is not None:
        match = _USER_ID.match(user_id.strip())
        if match is None:
            raise UserFacingError("A user id is a number like 123456789012345678 (Developer Mode → Copy User ID).")
        return "user", int(match.group(1) or match.group(2))
    text = (server_id or "").strip()
    if not _SERVER_ID.match(text):
        raise UserFacingError("A server id is a number like 123456789012345678 (Developer Mode → Copy Server ID).")
    return "guild", int(text)


def target_text(kind: str, target_id: int, name: str | None = None) -> str:
    if kind == "user":
        return f"user <@{target_id}> (`{target_id}`)"
    shown = f" {discord.utils.escape_markdown(name)}" if name else ""
    return f"server{shown} (`{target_id}`)"


def render_blocks(blocks: list[Block], names: dict[int, str]) -> discord.Embed:
    embed = discord.Embed(title="Blocked users and servers", colour=EMBED_COLOUR)
    if not blocks:
        embed.description = "Nobody is blocked."
        return embed
    lines = []
    for block in blocks[:BLOCKS_SHOWN]:
        what = target_text(block.kind, block.target_id, names.get(block.target_id))
        line = f"• {what}, <t:{math.floor(block.created_at)}:R>"
        if block.reason:
            line += f": {discord.utils.escape_markdown(block.reason)}"
        lines.append(line)
    if len(blocks) > BLOCKS_SHOWN:
        lines.append(f"…and {len(blocks) - BLOCKS_SHOWN} more.")
    embed.description = "\n".join(lines)[:4000]
    return embed


class Owner(commands.Cog):
    owner = OwnerGroup(
        name="owner", description="Bot owner controls: spend across servers, blocks",
        allowed_contexts=app_commands.AppCommandContext(guild=False, dm_channel=True, private_channel=False),
        allowed_installs=app_commands.AppInstallationType(guild=True, user=False),
    )

    def __init__(self, bot: NanoVoice) -> None:
        self.bot = bot

    @owner.command(name="spend", description="Today's spend across every server, and the bot's daily budget")
    async def spend(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        limits, db, clock, config = self.bot.limits, self.bot.db, self.bot.clock, self.bot.config
        now = clock.now()
        day = clock.utc_day(now)
        total = await db.ledger.total_spend(day)
        top = await db.ledger.top_guilds(day, TOP_SERVERS + 1)  # one more: DMs may take a place
        servers = await db.ledger.guild_count(day)

        embed = discord.Embed(title=f"Spend today ({day}, UTC)", colour=EMBED_COLOUR)
        budget = config.bot_daily_budget_micros
        if budget > 0:
            left = max(0, budget - total)
            value = f"{format_usd(total)} of the bot's {format_usd(budget)} daily budget ({format_usd(left)} left)"
        else:
            value = f"{format_usd(total)} (the bot has no daily budget)"
        embed.add_field(name="All servers and DMs", value=value, inline=False)

        lines: list[str] = []
        dm_spend = 0
        for guild_id, spent in top:
            if guild_id is None:
                dm_spend = spent
                continue
            if len(lines) == TOP_SERVERS:
                break
            guild_budget = await limits.guild_budget_micros(guild_id)
            guild = self.bot.get_guild(guild_id)
            name = discord.utils.escape_markdown(guild.name) if guild is not None else "a server I'm not in"
            of = f" of {format_usd(guild_budget)}" if guild_budget > 0 else " (no limit)"
            lines.append(f"{name} (`{guild_id}`): {format_usd(spent)}{of}")
        if servers > len(lines):
            others = servers - len(lines)
            lines.append(f"…and {others} more {'server' if others == 1 else 'servers'}.")
        embed.add_field(name="Top servers", value="\n".join(lines) if lines else "No server has spent anything today.",
                        inline=False)
        if dm_spend:
            embed.add_field(name="Direct messages", value=format_usd(dm_spend), inline=False)
        resets = math.ceil(clock.next_utc_midnight(now))
        embed.add_field(name="Resets", value=f"<t:{resets}:R>", inline=False)
        await interactions.send(interaction, embed=embed, ephemeral=True)

    @owner.command(name="block", description="Stop a user or a server from using the bot")
    @app_commands.describe(user_id="The user's id", server_id="The server's id", reason="Why (only you see it)")
    async def block(self, interaction: discord.Interaction, user_id: str | None = None, server_id: str | None = None,
                    reason: app_commands.Range[str, 1, 200] | None = None) -> None:
        kind, target_id = parse_target(user_id, server_id)
        # is_owner reads only the id, so a bare Object does (discord.py types it as a full User).
        target = discord.Object(target_id)
        if kind == "user" and (target_id == interaction.user.id or await self.bot.is_owner(target)):  # type: ignore[arg-type]
            raise UserFacingError("I can't block the bot's owner.")
        if kind == "user" and self.bot.user is not None and target_id == self.bot.user.id:
            raise UserFacingError("I can't block myself.")
        reason = " ".join(reason.split()) if reason else None
        await self.bot.blocks.block(kind, target_id, reason, interaction.user.id, self.bot.clock.now())
        log.warning("owner %s blocked %s %s%s", interaction.user.id, kind, target_id,
                    f" ({reason})" if reason else "")
        guild = self.bot.get_guild(target_id) if kind == "guild" else None
        what = target_text(kind, target_id, guild.name if guild else None)
        after = ("Their clone jobs that are already running still finish." if kind == "user"
                 else "Clone jobs already running there still finish.")
        await interactions.send(interaction, f"Blocked {what}. {after}", ephemeral=True)

    @owner.command(name="unblock", description="Let a blocked user or server use the bot again")
    @app_commands.describe(user_id="The user's id", server_id="The server's id")
    async def unblock(self, interaction: discord.Interaction, user_id: str | None = None,
                      server_id: str | None = None) -> None:
        kind, target_id = parse_target(user_id, server_id)
        guild = self.bot.get_guild(target_id) if kind == "guild" else None
        what = target_text(kind, target_id, guild.name if guild else None)
        if not await self.bot.blocks.unblock(kind, target_id):
            raise UserFacingError(f"The {what} isn't blocked.")
        log.warning("owner %s unblocked %s %s", interaction.user.id, kind, target_id)
        await interactions.send(interaction, f"Unblocked {what}.", ephemeral=True)

    @owner.command(name="blocks", description="List the blocked users and servers")
    async def blocks(self, interaction: discord.Interaction) -> None:
        found = self.bot.blocks.all()
        names = {b.target_id: g.name for b in found if b.kind == "guild" and (g := self.bot.get_guild(b.target_id))}
        await interactions.send(interaction, embed=render_blocks(found, names), ephemeral=True)


async def setup(bot: NanoVoice) -> None:
    await bot.add_cog(Owner(bot))
