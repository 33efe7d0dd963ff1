"""/nanovoice settings: per-guild budget, clone role and clone switch for server managers.

``default_permissions=manage_guild`` hides the command from other members in Discord's UI, but a
server can override that in its integration settings, so the callback is also guarded at run time
(``checks.has_permissions``: the member's permissions come with the interaction). The work is in
:mod:`bot.policy` (parsing, effective values) and :mod:`bot.storage` (the stored overrides).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot import interactions
from bot.errors import UserFacingError
from bot.limits import format_usd
from bot.policy import EffectiveSettings, effective_settings, parse_budget

if TYPE_CHECKING:
    from bot.app import NanoVoice

log = logging.getLogger(__name__)

EMBED_COLOUR = discord.Colour.blurple()
DEFAULT_WORDS = {"default", "env", "environment", "reset"}


def render_settings(settings: EffectiveSettings, *, role_exists: bool = True) -> discord.Embed:
    """The guild's effective settings, and where each comes from."""
    embed = discord.Embed(title="nanovoice settings for this server", colour=EMBED_COLOUR)
    embed.add_field(name="Daily budget", value=budget_text(settings), inline=False)

    if settings.clone_role_id is None:
        who = "Everyone"
    else:
        who = f"Members with <@&{settings.clone_role_id}>"
        if not role_exists:
            who += " (this role no longer exists, so nobody can clone; pick another role)"
    embed.add_field(name="Who can clone voices", value=who, inline=False)

    if settings.clone_daily_limit <= 0:
        cloning = "Off (turned off by the bot's operator)"
    elif settings.clones_enabled:
        cloning = "On" + ("" if settings.clones_enabled_from_server else " (the bot's default)")
        cloning += f", {settings.clone_daily_limit} per member per day"
    else:
        cloning = "Off (turned off for this server)"
    embed.add_field(name="Voice cloning", value=cloning, inline=False)
    embed.add_field(name="Voice channel playback", value="On" if settings.voice_playback else
                    "Off (/say never plays in voice channels here)", inline=False)
    embed.set_footer(text="Change with /nanovoice settings daily_budget_usd, clone_role, clones_enabled or "
                          "voice_playback; "
                          "reset: True goes back to the bot's defaults.")
    return embed


def budget_text(settings: EffectiveSettings) -> str:
    """The budget that is enforced, where it comes from, and the most the bot allows (never above it)."""
    budget = format_usd(settings.daily_budget_micros) if settings.daily_budget_micros > 0 else "No limit"
    ceiling = settings.budget_ceiling_micros
    if settings.budget_capped:
        asked = settings.server_budget_micros or 0
        wanted = format_usd(asked) if asked > 0 else "no limit"
        return f"{budget} (the most the bot allows; this server's setting of {wanted} is above it)"
    if not settings.budget_from_server:
        return f"{budget} (the bot's default)"
    if ceiling > 0:
        return f"{budget} (set for this server; the bot allows at most {format_usd(ceiling)})"
    return f"{budget} (set for this server)"


def describe_changes(changes: dict[str, Any]) -> str:
    parts = []
    if "daily_budget_micros" in changes:
        value = changes["daily_budget_micros"]
        if value is None:
            parts.append("the daily budget now follows the bot's default")
        elif value == 0:
            parts.append("no daily budget limit")
        else:
            parts.append(f"daily budget {format_usd(value)}")
    if "clone_role_id" in changes:
        role_id = changes["clone_role_id"]
        parts.append("everyone may clone" if role_id is None else f"only <@&{role_id}> may clone")
    if "clones_enabled" in changes:
        parts.append("voice cloning on" if changes["clones_enabled"] else "voice cloning off")
    if changes.get("voice_playback") is not None:
        parts.append("voice channel playback on" if changes["voice_playback"] else "voice channel playback off")
    return "Saved: " + "; ".join(parts) + "."


class Admin(commands.Cog):
    nanovoice = app_commands.Group(
        name="nanovoice", description="Server settings for nanovoice", guild_only=True,
        default_permissions=discord.Permissions(manage_guild=True),
    )

    def __init__(self, bot: NanoVoice) -> None:
        self.bot = bot

    @nanovoice.command(name="settings", description="View or change this server's nanovoice settings")
    @app_commands.describe(
        daily_budget_usd="Dollars per UTC day, e.g. 2.50, at most the bot's limit; \"default\" = the bot's budget",
        clone_role="Only members with this role may clone voices (@everyone = all members)",
        clones_enabled="Turn voice cloning on or off in this server",
        voice_playback="Let /say play in the bot's voice channel (on) or never (off)",
        reset="Go back to the bot's defaults for every setting",
    )
    @app_commands.checks.has_permissions(manage_guild=True)
    async def settings(self, interaction: discord.Interaction, daily_budget_usd: str | None = None,
                       clone_role: discord.Role | None = None, clones_enabled: bool | None = None,
                       reset: bool = False, voice_playback: bool | None = None) -> None:
        changes = self.parse_changes(daily_budget_usd, clone_role, clones_enabled, reset,
                                     ceiling_micros=self.bot.config.guild_daily_budget_micros,
                                     voice_playback=voice_playback)
        await interaction.response.defer(ephemeral=True, thinking=True)
        guild_id = interactions.guild_id_of(interaction)
        content = None
        if changes:
            await self.bot.db.guilds.update(guild_id, self.bot.clock.now(), **changes)
            log.info("guild %s settings changed by user %s: %s", guild_id, interaction.user.id,
                     ", ".join(f"{k}={v}" for k, v in sorted(changes.items())))
            content = ("Saved: every setting is back to the bot's defaults." if reset
                       else describe_changes(changes))
        current = await effective_settings(self.bot.db, self.bot.config, guild_id)
        role_exists = True
        if current.clone_role_id is not None and interaction.guild is not None:
            just_chosen = clone_role is not None and clone_role.id == current.clone_role_id
            role_exists = just_chosen or interaction.guild.get_role(current.clone_role_id) is not None
        await interactions.send(interaction, content, embed=render_settings(current, role_exists=role_exists),
                                ephemeral=True)

    @staticmethod
    def parse_changes(daily_budget_usd: str | None, clone_role: discord.Role | None, clones_enabled: bool | None,
                      reset: bool, *, ceiling_micros: int = 0, voice_playback: bool | None = None) -> dict[str, Any]:
        """The stored-settings update these options ask for; one sentence when they make no sense."""
        if reset:
            if (daily_budget_usd is not None or clone_role is not None or clones_enabled is not None
                    or voice_playback is not None):
                raise UserFacingError("Use reset on its own: it puts every setting back to the bot's defaults.")
            return {"daily_budget_micros": None, "clone_role_id": None, "clones_enabled": None,
                    "voice_playback": None}
        changes: dict[str, Any] = {}
        if daily_budget_usd is not None:
            if daily_budget_usd.strip().lower() in DEFAULT_WORDS:
                changes["daily_budget_micros"] = None
            else:
                changes["daily_budget_micros"] = parse_budget(daily_budget_usd, ceiling_micros)
        if clone_role is not None:
            if clone_role.is_default():
                changes["clone_role_id"] = None
            elif clone_role.managed:
                raise UserFacingError(
                    f"{clone_role.mention} belongs to a bot or an integration and can't be given to members; "
                    "pick another role."
                )
            else:
                changes["clone_role_id"] = clone_role.id
        if clones_enabled is not None:
            changes["clones_enabled"] = clones_enabled
        if voice_playback is not None:
            changes["voice_playback"] = voice_playback
        return changes


async def setup(bot: NanoVoice) -> None:
    await bot.add_cog(Admin(bot))
