"""/voice: clone (delegated to the clone-jobs cog), per-user voice management, and /forget-me.

Every query is scoped by the invoking user's id: a user can never see, use, rename or delete another
user's voice, and the ``name`` options autocomplete from the user's own voices only. All answers are
ephemeral. This cog also installs the Discord side of EMBEDDING_CHANNEL_ID re-hosting
(:meth:`bot.embeddings.EmbeddingHost.set_discord_hooks`).
"""

from __future__ import annotations

import io
import logging
from decimal import Decimal
from difflib import SequenceMatcher
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import discord
from discord import app_commands
from discord.ext import commands

from bot import interactions, providers
from bot.errors import NotFound, UserFacingError
from bot.jobs import STATE_LABELS, validate_voice_name
from bot.storage import CloneJob, DuplicateVoiceName, Voice, name_key
from bot.text import plural

if TYPE_CHECKING:
    from bot.app import NanoVoice

log = logging.getLogger(__name__)

PROVIDERS = [app_commands.Choice(name=p.choice_name(), value=p.key) for p in providers.PROVIDERS.values()]
MINIMAX_MODELS = [
    app_commands.Choice(name="speech-02-hd (best quality)", value="speech-02-hd"),
    app_commands.Choice(name="speech-02-turbo (faster)", value="speech-02-turbo"),
]

PAGE_SIZE = 10
VIEW_TIMEOUT = 300.0
AUTOCOMPLETE_LIMIT = 25
MINIMAX_UNUSED_DAYS = 7
CLEAR_DEFAULT_WORDS = ("none", "off", "clear", "stock")
COLOUR = discord.Colour.blurple()
COLOUR_DANGER = discord.Colour.red()
COLOUR_DONE = discord.Colour.dark_grey()
REHOST_NOTE = "Stored voice embedding kept by nanovoice so Qwen3-TTS voices keep working. Please don't delete it."


# -- helpers ----------------------------------------------------------------------------------------


def shown(name: str, limit: int = 40) -> str:
    """A user-typed name, safe to put in a message: trimmed, markdown escaped, in curly quotes."""
    name = " ".join(name.split())
    if len(name) > limit:
        name = name[: limit - 1] + "…"
    return f"“{discord.utils.escape_markdown(name)}”"


def ts(value: float | None, style: str = "R") -> str:
    return f"<t:{int(value)}:{style}>" if value is not None else "never"


def provider_label(provider: str) -> str:
    return providers.label(provider)


def format_cost(micros: int | None, source: str | None) -> str:
    if micros is None:
        return "unknown"
    amount = Decimal(micros) / 1_000_000
    if (source or "USD").upper() == "USD":
        places = Decimal("0.01") if amount == amount.quantize(Decimal("0.01")) else Decimal("0.0001")
        return f"${amount.quantize(places)}"
    return f"{amount.normalize()} {source}"


def rank_names(query: str, names: list[str], limit: int = AUTOCOMPLETE_LIMIT) -> list[str]:
    """Fuzzy-match ``query`` against ``names``: exact, prefix, word prefix, substring, subsequence, similar."""
    q = " ".join(query.split()).casefold()
    if not q:
        return sorted(names, key=str.casefold)[:limit]
    scored: list[tuple[float, str, str]] = []
    for name in names:
        key = name.casefold()
        if key == q:
            score = 0.0
        elif key.startswith(q):
            score = 1.0
        elif any(word.startswith(q) for word in key.split()):
            score = 2.0
        elif q in key:
            score = 3.0
        elif _subsequence(q, key):
            score = 4.0
        else:
            ratio = SequenceMatcher(None, q, key).ratio()
            if ratio < 0.5:
                continue
            score = 6.0 - ratio
        scored.append((score, key, name))
    scored.sort()
    return [name for _, _, name in scored[:limit]]


def _subsequence(needle: str, haystack: str) -> bool:
    it = iter(haystack)
    return all(char in it for char in needle)


def list_pages(voices: list[Voice], default_id: int | None) -> list[discord.Embed]:
    pages = [voices[i: i + PAGE_SIZE] for i in range(0, len(voices), PAGE_SIZE)]
    embeds = []
    for number, page in enumerate(pages, start=1):
        lines = []
        for voice in page:
            marker = " ⭐ default" if voice.id == default_id else ""
            used = f"last used {ts(voice.last_used_at)}" if voice.last_used_at else "never used"
            lines.append(f"**{discord.utils.escape_markdown(voice.name)}**{marker}\n"
                         f"{provider_label(voice.provider)} · created {ts(voice.created_at, 'd')} · {used}")
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
        line = (f"{shown(job.voice_name)} · {provider_label(job.provider)} · {state} · "
                f"started {ts(job.submitted_at or job.created_at)}")
        if job.state == "completed" and job.finished_at:
            line += f" · finished {ts(job.finished_at)}"
        if job.state in ("failed", "lost") and job.error:
            error = " ".join(job.error.split())
            line += f"\n> {discord.utils.escape_markdown(error[:300])}"
        lines.append(line)
    embed = discord.Embed(title="Your clone jobs", description="\n".join(lines), colour=COLOUR)
    embed.set_footer(text=f"{open_count} running · newest first · the {len(jobs)} most recent")
    return embed


# -- views ------------------------------------------------------------------------------------------


class AuthorOnlyView(discord.ui.View):
    """Buttons only the user who ran the command may press; disabled when they time out."""

    expired_text: str | None = None

    def __init__(self, origin: discord.Interaction, *, timeout: float = VIEW_TIMEOUT) -> None:
        super().__init__(timeout=timeout)
        self.origin = origin

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.user.id == self.origin.user.id:
            return True
        await interaction.response.send_message(
            "Only the person who ran this command can use these buttons.", ephemeral=True,
            allowed_mentions=interactions.NO_PINGS,
        )
        return False

    async def on_timeout(self) -> None:
        changes: dict[str, object] = {"view": None}
        if self.expired_text is not None:
            changes.update(content=self.expired_text, embed=None)
        try:
            await interactions.edit_original(self.origin, **changes)
        except discord.HTTPException:
            log.info("could not close the buttons of interaction %s", self.origin.id, exc_info=True)

    async def on_error(self, interaction: discord.Interaction, error: Exception, item: discord.ui.Item) -> None:
        from bot.app import report_error

        await report_error(interaction, error)


class PagesView(AuthorOnlyView):
    def __init__(self, origin: discord.Interaction, pages: list[discord.Embed]) -> None:
        super().__init__(origin)
        self.pages = pages
        self.page = 0
        self._sync()

    def _sync(self) -> None:
        self.previous.disabled = self.page == 0
        self.next.disabled = self.page >= len(self.pages) - 1

    async def _show(self, interaction: discord.Interaction, page: int) -> None:
        self.page = max(0, min(page, len(self.pages) - 1))
        self._sync()
        await interaction.response.edit_message(embed=self.pages[self.page], view=self)

    @discord.ui.button(label="Previous", style=discord.ButtonStyle.secondary)
    async def previous(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await self._show(interaction, self.page - 1)

    @discord.ui.button(label="Next", style=discord.ButtonStyle.secondary)
    async def next(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await self._show(interaction, self.page + 1)


class ConfirmView(AuthorOnlyView):
    """Confirm/Cancel for something destructive. ``action`` runs on Confirm and returns the result text."""

    expired_text = "No answer within 5 minutes: nothing was deleted."

    def __init__(self, origin: discord.Interaction, action, *, confirm_label: str, cancelled_text: str) -> None:
        super().__init__(origin)
        self.action = action
        self.cancelled_text = cancelled_text
        self.confirm.label = confirm_label

    @discord.ui.button(label="Confirm", style=discord.ButtonStyle.danger)
    async def confirm(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        self.stop()
        await interaction.response.edit_message(content="Deleting…", embed=None, view=None)
        try:
            text = await self.action()
        except UserFacingError as exc:
            text = str(exc)
        await interactions.edit_original(interaction, content=text, embed=None, view=None)

    @discord.ui.button(label="Cancel", style=discord.ButtonStyle.secondary)
    async def cancel(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        self.stop()
        await interaction.response.edit_message(content=self.cancelled_text, embed=None, view=None)


@runtime_checkable
class CloneStarter(Protocol):
    """What /voice clone needs from the clone-jobs cog (``cogs.clone_jobs.CloneJobs``), which owns the flow."""

    async def start_clone(self, interaction: discord.Interaction, *, attachment: discord.Attachment, name: str,
                          provider: str, transcript: str | None, model: str | None, noise_reduction: bool,
                          normalize_volume: bool) -> None: ...


# -- the cog ----------------------------------------------------------------------------------------


class Voices(commands.Cog):
    voice = app_commands.Group(name="voice", description="Clone and manage your voices", guild_only=True)

    def __init__(self, bot: NanoVoice) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        embeddings = self.bot.embeddings
        if embeddings.mode == "discord":
            embeddings.set_discord_hooks(self._rehost, self._refresh, self._delete_copy)

    async def cog_unload(self) -> None:
        self.bot.embeddings.set_discord_hooks(None, None, None)

    # -- EMBEDDING_CHANNEL_ID: the Discord side of re-hosting --------------------------------------

    def _embedding_channel(self) -> discord.PartialMessageable:
        channel_id = self.bot.config.embedding_channel_id
        if channel_id is None:  # the hooks are installed only when it is set
            raise RuntimeError("EMBEDDING_CHANNEL_ID is not set, so there is no channel to keep embeddings in")
        return self.bot.get_partial_messageable(channel_id)

    async def _rehost(self, data: bytes, filename: str) -> tuple[str, float | None, int]:
        message = await self._embedding_channel().send(
            REHOST_NOTE, file=discord.File(io.BytesIO(data), filename=filename),
            allowed_mentions=discord.AllowedMentions.none(),
        )
        if not message.attachments:
            raise RuntimeError("Discord kept no attachment of the re-hosted embedding")
        return message.attachments[0].url, None, message.id

    async def _refresh(self, message_id: int) -> tuple[str, float | None]:
        message = await self._embedding_channel().fetch_message(message_id)
        if not message.attachments:
            raise LookupError(f"message {message_id} has no attachment")
        return message.attachments[0].url, None

    async def _delete_copy(self, message_id: int) -> None:
        try:
            await self._embedding_channel().get_partial_message(message_id).delete()
        except discord.NotFound:
            pass

    # -- shared ----------------------------------------------------------------------------------

    async def _own_voice(self, user_id: int, name: str) -> Voice:
        voice = await self.bot.db.voices.by_name(user_id, name)
        if voice is None:
            raise NotFound(f"You have no voice called {shown(name)}; /voice list shows yours.")
        return voice

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
        clone_jobs = self.bot.get_cog("CloneJobs")
        if not isinstance(clone_jobs, CloneStarter):
            raise RuntimeError("the clone-jobs cog (cogs.clone_jobs) is not loaded")
        await clone_jobs.start_clone(
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
        voices = await self.bot.db.voices.list(user_id)
        if not voices:
            await interactions.send(
                interaction, "You have no saved voices yet. Clone one with /voice clone: it needs a short "
                             "recording of one person speaking (and their consent).", ephemeral=True)
            return
        default = await self.bot.db.user_settings.default_voice(user_id)
        pages = list_pages(voices, default.id if default else None)
        if len(pages) == 1:
            await interactions.send(interaction, embed=pages[0], ephemeral=True)
        else:
            await interactions.send(interaction, embed=pages[0], view=PagesView(interaction, pages), ephemeral=True)

    @voice.command(name="info", description="Details of one of your voices")
    @app_commands.describe(name="One of your voices")
    async def info(self, interaction: discord.Interaction, name: str) -> None:
        await self._defer(interaction)
        user_id = interaction.user.id
        voice = await self._own_voice(user_id, name)
        default = await self.bot.db.user_settings.default_voice(user_id)
        job = await self.bot.db.jobs.for_voice(user_id, voice.id)
        now = self.bot.clock.now()
        embed = discord.Embed(title=f"Voice {shown(voice.name)}", colour=COLOUR)
        embed.add_field(name="Provider", value=provider_label(voice.provider))
        embed.add_field(name="Created", value=f"{ts(voice.created_at, 'f')} ({ts(voice.created_at)})")
        embed.add_field(name="Last used", value=ts(voice.last_used_at))
        embed.add_field(name="Default", value="Yes ⭐" if default and default.id == voice.id else "No")
        embed.add_field(name="Clone cost", value=format_cost(job.cost_micros, job.payment_source) if job else "unknown")
        if voice.provider == "minimax":
            embed.add_field(name="MiniMax voice id", value=f"`{voice.provider_voice_id or 'unknown'}`")
            if voice.clone_model:
                embed.add_field(name="Clone model", value=voice.clone_model)
            unused_since = voice.last_used_at or voice.created_at
            deadline = unused_since + MINIMAX_UNUSED_DAYS * 86_400
            if deadline > now:
                keeping = f"Use it with /say by {ts(deadline, 'f')} ({ts(deadline)}) to keep it."
            else:
                keeping = f"It went unused for 7 days ({ts(deadline)}), so it may be gone."
            embed.add_field(name="Keeping it", inline=False,
                            value=f"MiniMax deletes voices that go unused for 7 days. {keeping}")
        else:
            transcript = voice.transcript or "none given"
            embed.add_field(name="Transcript", inline=False,
                            value=discord.utils.escape_markdown(transcript[:1000]))
            stops = self.bot.embeddings.expires_at(voice)
            if stops is None:
                durability = "I keep a copy, so it keeps working after NanoGPT's copy expires."
            elif stops > now:
                durability = (f"Stops working {ts(stops)} ({ts(stops, 'f')}). NanoGPT keeps Qwen3-TTS voices about "
                              "7 days, and I have nowhere to keep a copy. The bot's operator can give me one.")
            else:
                durability = (f"Stopped working {ts(stops)}. NanoGPT's copy has expired and I have no copy of my own; "
                              "clone it again.")
            embed.add_field(name="Durable", value=durability, inline=False)
        await interactions.send(interaction, embed=embed, ephemeral=True)

    @voice.command(name="rename", description="Rename one of your voices")
    @app_commands.describe(name="One of your voices", new_name="Its new name (1–32 characters)")
    async def rename(self, interaction: discord.Interaction, name: str,
                     new_name: app_commands.Range[str, 1, 32]) -> None:
        await self._defer(interaction)
        user_id = interaction.user.id
        voice = await self._own_voice(user_id, name)
        cleaned = validate_voice_name(new_name)
        if cleaned == voice.name:
            await interactions.send(interaction, f"Your voice is already called {shown(cleaned)}.", ephemeral=True)
            return
        if name_key(cleaned) != name_key(voice.name):
            await self.bot.clones.ensure_no_clone_named(user_id, cleaned)
        try:
            await self.bot.db.voices.rename(user_id, voice.id, cleaned)
        except DuplicateVoiceName:
            raise UserFacingError(
                f"You already have a voice called {shown(cleaned)}; pick another name or delete that one first."
            ) from None
        await interactions.send(interaction, f"Renamed {shown(voice.name)} to {shown(cleaned)}.", ephemeral=True)

    @voice.command(name="delete", description="Delete one of your voices")
    @app_commands.describe(name="One of your voices")
    async def delete(self, interaction: discord.Interaction, name: str) -> None:
        await self._defer(interaction)
        user_id = interaction.user.id
        voice = await self._own_voice(user_id, name)
        default = await self.bot.db.user_settings.default_voice(user_id)
        if voice.provider == "minimax":
            remote = ("NanoGPT offers no way to delete the clone remotely; MiniMax deletes voices that go unused "
                      "for 7 days.")
        else:
            remote = ("NanoGPT offers no way to delete the clone remotely; its copy of the Qwen3-TTS voice expires "
                      "after about 7 days. I delete my own copy now.")
        text = (f"Delete your {provider_label(voice.provider)} voice {shown(voice.name)}? {remote} "
                f"Deleting frees the name {shown(voice.name)} for a new voice.")
        if default is not None and default.id == voice.id:
            text += " It is your default voice: /say will use the stock voice afterwards."
        embed = discord.Embed(title="Delete this voice?", description=text, colour=COLOUR_DANGER)

        async def do_delete() -> str:
            if await self.bot.embeddings.delete_voice(user_id, voice.id):
                log.info("user %s deleted voice %s", user_id, voice.id)
                return f"Deleted {shown(voice.name)}; the name is free again."
            return f"{shown(voice.name)} was already gone."

        view = ConfirmView(interaction, do_delete, confirm_label="Delete",
                           cancelled_text=f"Kept {shown(voice.name)}; nothing was deleted.")
        await interactions.send(interaction, embed=embed, view=view, ephemeral=True)

    @voice.command(name="default", description="Use this voice when /say names none (name: none clears it)")
    @app_commands.describe(name="One of your voices, or none to go back to the stock voice")
    async def default(self, interaction: discord.Interaction, name: str) -> None:
        await self._defer(interaction)
        user_id = interaction.user.id
        now = self.bot.clock.now()
        voice = await self.bot.db.voices.by_name(user_id, name)
        stock = f"{self.bot.config.default_tts_model}/{self.bot.config.default_tts_voice}"
        if voice is None and name.strip().casefold() in CLEAR_DEFAULT_WORDS:
            await self.bot.db.user_settings.set_default_voice(user_id, None, now)
            await interactions.send(
                interaction, f"Cleared your default voice: /say now uses the stock voice {stock} unless you pick one.",
                ephemeral=True)
            return
        if voice is None:
            raise NotFound(f"You have no voice called {shown(name)}; /voice list shows yours.")
        await self.bot.db.user_settings.set_default_voice(user_id, voice.id, now)
        await interactions.send(
            interaction, f"{shown(voice.name)} is now your default voice: /say uses it when you don't pick one. "
                         f"To go back to the stock voice, run /voice default name:none.", ephemeral=True)

    @info.autocomplete("name")
    @rename.autocomplete("name")
    @delete.autocomplete("name")
    @default.autocomplete("name")
    async def _voice_name_autocomplete(self, interaction: discord.Interaction,
                                       current: str) -> list[app_commands.Choice[str]]:
        voices = await self.bot.db.voices.list(interaction.user.id)
        by_name = {voice.name: voice for voice in voices}
        return [
            app_commands.Choice(name=f"{name} · {provider_label(by_name[name].provider)}", value=name)
            for name in rank_names(current, list(by_name))
        ]

    @voice.command(name="jobs", description="Your running and recent clone jobs")
    async def jobs(self, interaction: discord.Interaction) -> None:
        await self._defer(interaction)
        jobs = await self.bot.db.jobs.for_user(interaction.user.id, limit=10)
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

        view = ConfirmView(interaction, do_forget, confirm_label="Delete everything",
                           cancelled_text="Cancelled; nothing was deleted.")
        await interactions.send(interaction, embed=embed, view=view, ephemeral=True)


async def setup(bot: NanoVoice) -> None:
    await bot.add_cog(Voices(bot))
