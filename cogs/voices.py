"""/voice: clone (delegated to the clone-jobs cog), per-user voice management, and /forget-me.

Every query is scoped by the invoking user's id: a user can never see, use, rename or delete another
user's voice, and the ``name`` options autocomplete from the user's own voices only. All answers are
ephemeral. The work is :class:`bot.voices.VoiceService`'s; this cog parses and renders.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import interactions, providers
from bot.cloning import STATE_LABELS
from bot.job_states import JobState
from bot.storage import CloneJob, Voice
from bot.text import format_money, plural, quoted
from bot.voices import VoiceInfo
from cogs.ui import ConfirmDeleteView, PagesView

if TYPE_CHECKING:
    from bot.app import NanoVoice

log = logging.getLogger(__name__)

PROVIDERS = [app_commands.Choice(name=name, value=key) for name, key in providers.choices()]
MINIMAX_MODELS = [
    app_commands.Choice(name="speech-02-hd (best quality)", value="speech-02-hd"),
    app_commands.Choice(name="speech-02-turbo (faster)", value="speech-02-turbo"),
]

PAGE_SIZE = 10
COLOUR = discord.Colour.blurple()
COLOUR_DANGER = discord.Colour.red()
COLOUR_DONE = discord.Colour.dark_grey()


# -- helpers ----------------------------------------------------------------------------------------


def ts(value: float | None, style: str = "R") -> str:
    return f"<t:{int(value)}:{style}>" if value is not None else "never"


def list_pages(voices: list[Voice], default_id: int | None) -> list[discord.Embed]:
    pages = [voices[i: i + PAGE_SIZE] for i in range(0, len(voices), PAGE_SIZE)]
    embeds = []
    for number, page in enumerate(pages, start=1):
        lines = []
        for voice in page:
            marker = " ⭐ default" if voice.id == default_id else ""
            used = f"last used {ts(voice.last_used_at)}" if voice.last_used_at else "never used"
            lines.append(f"**{discord.utils.escape_markdown(voice.name)}**{marker}\n"
                         f"{providers.label(voice.provider)} · created {ts(voice.created_at, 'd')} · {used}")
        embed = discord.Embed(title=f"Your voices ({len(voices)})", description="\n".join(lines), colour=COLOUR)
        footer = "/voice info name: shows details · /say voice: uses one"
        if len(pages) > 1:
            footer = f"Page {number} of {len(pages)} · " + footer
        embed.set_footer(text=footer)
        embeds.append(embed)
    return embeds


def jobs_embed(jobs: list[CloneJob]) -> discord.Embed:
    open_count = sum(job.is_open for job in jobs)
    lines = []
    for job in jobs:
        state = STATE_LABELS.get(job.state, job.state)
        if job.is_open:
            state = f"**{state}**"
        line = (f"{quoted(job.voice_name)} · {providers.label(job.provider)} · {state} · "
                f"started {ts(job.submitted_at or job.created_at)}")
        if job.state == JobState.COMPLETED and job.finished_at:
            line += f" · finished {ts(job.finished_at)}"
        if job.state in (JobState.FAILED, JobState.LOST) and job.error:
            line += f"\n> {discord.utils.escape_markdown(' '.join(job.error.split())[:300])}"
        lines.append(line)
    embed = discord.Embed(title="Your clone jobs", description="\n".join(lines), colour=COLOUR)
    embed.set_footer(text=f"{open_count} running · newest first · the {len(jobs)} most recent")
    return embed


def info_embed(info: VoiceInfo) -> discord.Embed:
    voice, now = info.voice, info.now
    embed = discord.Embed(title=f"Voice {quoted(voice.name)}", colour=COLOUR)
    embed.add_field(name="Provider", value=providers.label(voice.provider))
    embed.add_field(name="Created", value=f"{ts(voice.created_at, 'f')} ({ts(voice.created_at)})")
    embed.add_field(name="Last used", value=ts(voice.last_used_at))
    embed.add_field(name="Default", value="Yes ⭐" if info.is_default else "No")
    job = info.clone_job
    cost = "unknown" if job is None or job.cost_micros is None else format_money(job.cost_micros,
                                                                                 job.payment_source or "USD")
    embed.add_field(name="Clone cost", value=cost)
    for field in providers.get(voice.provider).info_fields(voice, now=now, expires_at=info.stops_at, when=ts,
                                                           escape=discord.utils.escape_markdown):
        embed.add_field(name=field.name, value=field.value, inline=field.inline)
    return embed


# -- the cog ----------------------------------------------------------------------------------------


class Voices(commands.Cog):
    voice = app_commands.Group(name="voice", description="Clone and manage your voices", guild_only=True)

    def __init__(self, bot: NanoVoice) -> None:
        self.bot = bot

    async def _defer(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)

    # -- /voice clone (the clone-jobs cog owns the flow) --------------------------------------------

    @voice.command(name="clone", description="Clone a voice from a short recording (costs the server money)")
    @app_commands.describe(
        audio="A recording of one person speaking (MP3, M4A, WAV, OGG, FLAC, AAC, WebM)",
        name="What to call the voice (1–32 characters)",
        provider=" or ".join(f"{p.label} ({p.price})" for p in providers.PROVIDERS.values()),
        transcript="What is said in the recording (helps Qwen3-TTS)",
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
        await self.bot.clone_flow.start_clone(
            interaction,
            attachment=audio,
            name=name,
            provider=provider.value,
            transcript=transcript,
            model=model.value if model else None,
            noise_reduction=bool(noise_reduction),
            normalize_volume=bool(normalize_volume),
        )

    # -- management ----------------------------------------------------------------------------------

    @voice.command(name="list", description="Show your saved voices")
    async def list_(self, interaction: discord.Interaction) -> None:
        await self._defer(interaction)
        user_id = interaction.user.id
        voices = await self.bot.voices.list_voices(user_id)
        if not voices:
            await interactions.send(
                interaction, "You have no saved voices yet. Clone one with /voice clone: it needs a short "
                             "recording of one person speaking (and their consent).", ephemeral=True)
            return
        default = await self.bot.voices.default_voice(user_id)
        pages = list_pages(voices, default.id if default else None)
        if len(pages) == 1:
            await interactions.send(interaction, embed=pages[0], ephemeral=True)
        else:
            await interactions.send(interaction, embed=pages[0], view=PagesView(interaction, pages), ephemeral=True)

    @voice.command(name="info", description="Details of one of your voices")
    @app_commands.describe(name="One of your voices")
    async def info(self, interaction: discord.Interaction, name: str) -> None:
        await self._defer(interaction)
        info = await self.bot.voices.info(interaction.user.id, name)
        await interactions.send(interaction, embed=info_embed(info), ephemeral=True)

    @voice.command(name="rename", description="Rename one of your voices")
    @app_commands.describe(name="One of your voices", new_name="Its new name (1–32 characters)")
    async def rename(self, interaction: discord.Interaction, name: str,
                     new_name: app_commands.Range[str, 1, 32]) -> None:
        await self._defer(interaction)
        renamed = await self.bot.voices.rename(interaction.user.id, name, new_name)
        if not renamed.changed:
            text = f"Your voice is already called {quoted(renamed.new)}."
        else:
            text = f"Renamed {quoted(renamed.old)} to {quoted(renamed.new)}."
        await interactions.send(interaction, text, ephemeral=True)

    @voice.command(name="delete", description="Delete one of your voices")
    @app_commands.describe(name="One of your voices")
    async def delete(self, interaction: discord.Interaction, name: str) -> None:
        await self._defer(interaction)
        user_id = interaction.user.id
        voice = await self.bot.voices.get(user_id, name)
        remote = providers.get(voice.provider).delete_note()
        text = (f"Delete your {providers.label(voice.provider)} voice {quoted(voice.name)}? {remote} "
                f"Deleting frees the name {quoted(voice.name)} for a new voice.")
        if await self.bot.voices.is_default(user_id, voice):
            text += " It is your default voice: /say will use the stock voice afterwards."
        embed = discord.Embed(title="Delete this voice?", description=text, colour=COLOUR_DANGER)

        async def do_delete() -> str:
            if await self.bot.voices.delete(user_id, voice.id):
                return f"Deleted {quoted(voice.name)}; the name is free again."
            return f"{quoted(voice.name)} was already gone."

        view = ConfirmDeleteView(interaction, do_delete, confirm_label="Delete",
                                 cancelled_text=f"Kept {quoted(voice.name)}; nothing was deleted.")
        await interactions.send(interaction, embed=embed, view=view, ephemeral=True)

    @voice.command(name="default", description="Use this voice when /say names none (name: none clears it)")
    @app_commands.describe(name="One of your voices, or none to go back to the stock voice")
    async def default(self, interaction: discord.Interaction, name: str) -> None:
        await self._defer(interaction)
        voice = await self.bot.voices.set_default(interaction.user.id, name)
        if voice is None:
            stock = f"{self.bot.config.default_tts_model}/{self.bot.config.default_tts_voice}"
            await interactions.send(
                interaction, f"Cleared your default voice: /say now uses the stock voice {stock} unless you pick one.",
                ephemeral=True)
            return
        await interactions.send(
            interaction, f"{quoted(voice.name)} is now your default voice: /say uses it when you don't pick one. "
                         f"To go back to the stock voice, run /voice default name:none.", ephemeral=True)

    @info.autocomplete("name")
    @rename.autocomplete("name")
    @delete.autocomplete("name")
    @default.autocomplete("name")
    async def _voice_name_autocomplete(self, interaction: discord.Interaction,
                                       current: str) -> list[app_commands.Choice[str]]:
        return [
            app_commands.Choice(name=f"{voice.name} · {providers.label(voice.provider)}", value=voice.name)
            for voice in await self.bot.voices.name_choices(interaction.user.id, current)
        ]

    @voice.command(name="jobs", description="Your running and recent clone jobs")
    async def jobs(self, interaction: discord.Interaction) -> None:
        await self._defer(interaction)
        jobs = await self.bot.voices.recent_jobs(interaction.user.id, limit=10)
        if not jobs:
            await interactions.send(interaction, "You have no clone jobs. Start one with /voice clone.",
                                    ephemeral=True)
            return
        await interactions.send(interaction, embed=jobs_embed(jobs), ephemeral=True)

    # -- /forget-me ----------------------------------------------------------------------------------

    @app_commands.command(name="forget-me", description="Delete every voice, job, cached line and setting of yours")
    @app_commands.guild_only()
    async def forget_me(self, interaction: discord.Interaction) -> None:
        await self._defer(interaction)
        user_id = interaction.user.id
        counts = await self.bot.privacy.stored(user_id)
        if not any(counts.values()):
            await interactions.send(interaction, "I have nothing stored about you.", ephemeral=True)
            return
        lines = [
            f"• {plural(counts['voices'], 'voice')}",
            f"• {plural(counts['clone_jobs'], 'clone job record')} (running clones are abandoned)",
            f"• {plural(counts['tts_cache'], 'cached speech clip')}",
            f"• your settings{'' if counts['user_settings'] else ' (none saved)'}",
            f"• {plural(counts['stored_files'], 'stored file')} (voice embeddings)",
        ]
        embed = discord.Embed(
            title="Forget everything about you?",
            description="This deletes, for good:\n" + "\n".join(lines) + "\n\nSpending records stay for the "
                        "server's budget, no longer linked to you. Voices at NanoGPT can't be deleted remotely; "
                        "they expire there on their own.",
            colour=COLOUR_DANGER,
        )

        async def do_forget() -> str:
            done = await self.bot.privacy.forget(user_id)
            log.info("user %s used /forget-me: %s", user_id, done)
            return (f"Done: I deleted {plural(done.count('voices'), 'voice')}, "
                    f"{plural(done.count('clone_jobs'), 'clone job record')}, "
                    f"{plural(done.count('tts_cache'), 'cached speech clip')}, "
                    f"{plural(done.count('user_settings'), 'setting')} and "
                    f"{plural(done.count('stored_files'), 'stored file')}.")

        view = ConfirmDeleteView(interaction, do_forget, confirm_label="Delete everything",
                                 cancelled_text="Cancelled; nothing was deleted.")
        await interactions.send(interaction, embed=embed, view=view, ephemeral=True)


async def setup(bot: NanoVoice) -> None:
    await bot.add_cog(Voices(bot))
