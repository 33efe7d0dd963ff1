"""/help: one private card with every command and this server's limits and prices (thin: read-only)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import interactions, providers
from bot.limits import TTS_DEFAULT_MICROS_PER_1K, TTS_MICROS_PER_1K_CHARS, format_usd
from bot.policy import EffectiveSettings, effective_settings
from bot.text import plural

if TYPE_CHECKING:
    from bot.app import NanoVoice
    from bot.config import Config

log = logging.getLogger(__name__)

COLOUR = discord.Colour.blurple()

COMMANDS = (
    ("/voice clone", "Clone a voice from a recording. I show the price and ask for consent before paying."),
    ("/voice list", "Your saved voices."),
    ("/voice info", "Details of one of your voices."),
    ("/voice rename", "Give one of your voices a new name."),
    ("/voice delete", "Delete one of your voices."),
    ("/voice default", "Pick the voice /say uses when you name none."),
    ("/voice jobs", "Your recent clone jobs and their state."),
    ("/say", "I speak your text in one of your voices or a stock voice, as a file or a voice message."),
    ("/join", "I join your voice channel; /say from members there then plays there too."),
    ("/leave", "I leave the voice channel (members there, or server managers)."),
    ("/skip", "Stop the line playing in the voice channel (its author or a server manager)."),
    ("/clear", "Remove waiting lines: your own, or everyone's for server managers."),
    ("/usage", "Your clones and spend today, and this server's budget."),
    ("/forget-me", "Delete everything I keep about you."),
    ("/nanovoice settings", "Server managers: daily budget, who may clone, clones and voice playback on or off."),
    ("Clone this voice", "Message menu (Apps): clone the voice in a message's audio or voice message."),
    ("Speak this message", "Message menu (Apps): I read a message out in your default voice."),
    ("/help", "This card."),
)


def _tts_price(model: str) -> str:
    per_1k = TTS_MICROS_PER_1K_CHARS.get(model.strip().lower())
    if per_1k is not None:
        return f"{model}: {format_usd(per_1k)} per 1,000 characters"
    return f"{model}: up to {format_usd(TTS_DEFAULT_MICROS_PER_1K)} per 1,000 characters (my estimate)"


def help_embed(config: Config, settings: EffectiveSettings) -> discord.Embed:
    """The /help card: commands, then this server's limits and prices."""
    embed = discord.Embed(
        title="nanovoice help",
        description="I clone voices through NanoGPT and speak in them. Every clone and every line of speech "
                    "is paid from my operator's NanoGPT balance, so there are limits.",
        colour=COLOUR,
    )
    embed.add_field(name="Commands", inline=False,
                    value="\n".join(f"**{name}**: {what}" for name, what in COMMANDS))

    prices = "\n".join(f"{p.label}: {p.price} a clone, {p.clip_rule()}" for p in providers.PROVIDERS.values())
    embed.add_field(name="Clone prices and recordings", value=prices, inline=False)

    if config.clone_daily_limit <= 0:
        clones = "Voice cloning is turned off on this bot."
    elif not settings.clones_enabled:
        clones = "Voice cloning is turned off on this server."
    else:
        clones = f"You may start {plural(config.clone_daily_limit, 'clone')} a day (UTC)."
        if settings.clone_role_id is not None and settings.clone_role_id != settings.guild_id:
            clones += f" Only members with <@&{settings.clone_role_id}> may clone."
    embed.add_field(name="Your daily clone limit", value=clones, inline=False)

    budget = (f"{format_usd(settings.daily_budget_micros)} a day (UTC) for clones and speech together."
              if settings.daily_budget_micros > 0 else "No daily limit.")
    embed.add_field(name="This server's budget", value=budget, inline=False)

    embed.add_field(name="/say", inline=False,
                    value=f"Up to {config.say_max_chars:,} characters, one line every "
                          f"{plural(config.say_cooldown_seconds, 'second')}.")
    embed.add_field(
        name="Speech prices", inline=False,
        value="NanoGPT charges speech by the character, and it counts toward the server's budget. "
              f"The stock voice: {_tts_price(config.default_tts_model)}. "
              + " ".join(f"{p.label} voices: {_tts_price(model)}." for p in providers.PROVIDERS.values()
                         if (model := p.tts_model(config)) is not None),
    )
    embed.set_footer(text="Daily limits reset at midnight UTC. /usage shows what is left today.")
    return embed


class Help(commands.Cog):
    def __init__(self, bot: NanoVoice) -> None:
        self.bot = bot

    @app_commands.command(name="help", description="What each command does, and this server's limits and prices")
    @app_commands.guild_only()
    async def help(self, interaction: discord.Interaction) -> None:
        settings = await effective_settings(self.bot.db, self.bot.config, interactions.guild_id_of(interaction))
        await interactions.send(interaction, embed=help_embed(self.bot.config, settings), ephemeral=True)


async def setup(bot: NanoVoice) -> None:
    await bot.add_cog(Help(bot))
