"""Clone jobs: the clone flow (validation, consent, paid submit), the background poller, and the
"Clone this voice" message context menu.

Thin on purpose: :class:`bot.cloning.CloneService` does the checks, the money, the polling and the
bookkeeping; this cog turns interactions into service calls and service state into Discord messages
(the confirmation card, the live status card, the completion notice).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot import interactions, providers
from bot.cloning import (
    INTERACTION_TOKEN_LIFETIME,
    STATE_LABELS,
    ClipSource,
    CloneHandedOver,
    CloneNotice,
    CloneRequest,
    InteractionRef,
    PreparedClone,
    format_elapsed,
)
from bot.errors import UserFacingError
from bot.job_states import JobState, NoticeOutcome
from bot.nanogpt import NanoGPTError
from bot.storage import CloneJob
from bot.text import format_money, format_usd, quoted
from cogs import ui

if TYPE_CHECKING:
    from bot.app import NanoVoice

log = logging.getLogger(__name__)

CONSENT = "I have the consent of the person whose voice this is."
AUDIO_EXTENSIONS = (".mp3", ".m4a", ".wav", ".ogg", ".oga", ".opus", ".flac", ".aac", ".webm", ".mp4")

COLOUR_WAITING = discord.Colour.blurple()
COLOUR_DONE = discord.Colour.green()
COLOUR_PROBLEM = discord.Colour.red()
COLOUR_CLOSED = discord.Colour.light_grey()


# -- rendering -------------------------------------------------------------------------------------


def confirm_embed(prepared: PreparedClone) -> discord.Embed:
    clip = prepared.audio
    duration = f"{clip.duration:.1f} s"
    if clip.trimmed:
        duration = f"{clip.source_duration:.1f} s, trimmed to the first {clip.duration:.0f} s"
    embed = discord.Embed(
        title=f"Clone {quoted(prepared.request.name)}?",
        description=f"{CONSENT}\n\nPress **Confirm** and I'll spend {format_usd(prepared.price_micros)} of "
                    f"the NanoGPT balance on this clone.",
        colour=COLOUR_WAITING,
    )
    embed.add_field(name="Provider", value=prepared.provider_label)
    embed.add_field(name="Price", value=format_usd(prepared.price_micros))
    embed.add_field(name="Duration", value=duration)
    rule = providers.find(prepared.request.provider)
    if rule is not None:
        embed.add_field(name=f"{rule.label} accepts", value=rule.clip_rule(), inline=False)
    return embed


def closed_embed(prepared: PreparedClone, text: str, *, colour: discord.Colour = COLOUR_CLOSED) -> discord.Embed:
    embed = discord.Embed(title=f"Clone {quoted(prepared.request.name)}", description=text, colour=colour)
    embed.add_field(name="Provider", value=prepared.provider_label)
    return embed


def status_embed(job: CloneJob, now: float) -> discord.Embed:
    """The live status card: provider, state, elapsed time."""
    started = job.submitted_at or job.created_at
    end = job.finished_at if job.finished_at else now
    colour = COLOUR_WAITING if job.is_open else (COLOUR_DONE if job.state == JobState.COMPLETED else COLOUR_PROBLEM)
    embed = discord.Embed(title=f"Cloning {quoted(job.voice_name)}", colour=colour)
    if job.is_open:
        embed.description = f"Started <t:{int(started)}:R>; this card updates as NanoGPT works."
    embed.add_field(name="Provider", value=providers.label(job.provider))
    embed.add_field(name="State", value=STATE_LABELS.get(job.state, job.state.title()))
    embed.add_field(name="Elapsed", value=format_elapsed(end - started))
    if job.cost_micros is not None:
        embed.add_field(name="Cost", value=format_money(job.cost_micros, job.payment_source or "USD"))
    return embed


def sample_label(job: CloneJob, notice: CloneNotice, who: str) -> str:
    """``The attached sample is a synthetic voice: “Alice”, cloned for <@1>.``"""
    name = quoted(notice.voice_name or job.voice_name)
    return f"The attached sample is a synthetic voice: {name}, cloned for {who}."


def sample_alt_text(job: CloneJob, notice: CloneNotice) -> str:
    """The sample file's description (alt text): it stays with the file wherever it is shown."""
    return f"Synthetic voice sample: {notice.voice_name or job.voice_name}"[:1024]


def notice_embed(job: CloneJob, notice: CloneNotice, now: float) -> discord.Embed:
    embed = status_embed(job, now)
    if notice.outcome == NoticeOutcome.COMPLETED and notice.voice_name:
        embed.title = f"Voice {quoted(notice.voice_name)} is ready"
    embed.description = discord.utils.escape_markdown(notice.message)
    if notice.sample is not None:
        embed.set_footer(text=f"🔊 {sample_label(job, notice, 'you')}")  # footers show no mentions
    return embed


# -- views -----------------------------------------------------------------------------------------


class ConfirmCloneView(ui.ConfirmView):
    """Cost-and-consent confirmation; only the invoking user may press it, once."""

    already_answered_text = "This clone was already confirmed or cancelled."

    def __init__(self, cog: Cloning, origin: discord.Interaction, prepared: PreparedClone, where: InteractionRef,
                 *, timeout: float) -> None:
        super().__init__(origin, confirm_style=discord.ButtonStyle.success, timeout=timeout)
        self.cog = cog
        self.prepared = prepared
        self.where = where

    def not_yours_text(self) -> str:
        return f"Only {self.origin.user.mention} can confirm this clone."

    async def confirmed(self, interaction: discord.Interaction) -> None:
        await interaction.response.edit_message(
            embed=closed_embed(self.prepared, "Submitting to NanoGPT…", colour=COLOUR_WAITING), view=None,
        )
        try:
            await self.cog.submit(self.origin, self.prepared, self.where)
        except (UserFacingError, NanoGPTError) as exc:
            message = exc.user_message if isinstance(exc, NanoGPTError) else str(exc)
            await interactions.edit_original(
                self.origin, embed=closed_embed(self.prepared, message, colour=COLOUR_PROBLEM), view=None,
            )

    async def cancelled(self, interaction: discord.Interaction) -> None:
        self.disable_buttons()
        await interaction.response.edit_message(
            embed=closed_embed(self.prepared, "Cancelled; nothing was charged."), view=self,
        )

    async def on_timeout(self) -> None:
        self.disable_buttons()
        try:
            await interactions.edit_original(
                self.origin,
                embed=closed_embed(self.prepared, "This confirmation expired; nothing was charged. "
                                                  "Run /voice clone again to start over."),
                view=self,
            )
        except discord.HTTPException:
            log.warning("could not mark the clone confirmation of interaction %s as expired", self.origin.id,
                        exc_info=True)


class CloneModal(ui.Modal):
    """Name, provider and transcript for "Clone this voice"."""

    def __init__(self, cog: Cloning, attachment: discord.Attachment) -> None:
        super().__init__(title="Clone this voice", timeout=600)
        self.cog = cog
        self.attachment = attachment
        self.name_input: discord.ui.TextInput[CloneModal] = discord.ui.TextInput(
            custom_id="clone:name", min_length=1, max_length=32, placeholder="What to call the voice",
        )
        self.provider_select: discord.ui.Select[CloneModal] = discord.ui.Select(
            custom_id="clone:provider",
            options=[discord.SelectOption(label=name, value=key) for name, key in providers.choices()],
            min_values=1, max_values=1,
        )
        self.transcript_input: discord.ui.TextInput[CloneModal] = discord.ui.TextInput(
            custom_id="clone:transcript", style=discord.TextStyle.paragraph, required=False, max_length=1000,
            placeholder="What is said in the recording (helps Qwen3-TTS)",
        )
        self.add_item(discord.ui.Label(text="Voice name", component=self.name_input))
        self.add_item(discord.ui.Label(text="Provider", component=self.provider_select))
        self.add_item(discord.ui.Label(text="Transcript (optional)", component=self.transcript_input))

    async def on_submit(self, interaction: discord.Interaction) -> None:
        values = self.provider_select.values
        await self.cog.start_clone(
            interaction, attachment=self.attachment, name=self.name_input.value,
            provider=values[0] if values else "", transcript=self.transcript_input.value or None,
            model=None, noise_reduction=False, normalize_volume=False,
        )


def find_audio(message: discord.Message) -> discord.Attachment | None:
    """The message's voice message or first audio attachment."""
    for attachment in message.attachments:
        if attachment.is_voice_message() or (attachment.content_type or "").lower().startswith("audio/"):
            return attachment
    for attachment in message.attachments:  # no content type given: trust a known audio extension
        if attachment.content_type is None and attachment.filename.lower().endswith(AUDIO_EXTENSIONS):
            return attachment
    return None


def _reader(attachment: discord.Attachment):
    async def read() -> bytes:
        try:
            return await attachment.read()
        except discord.HTTPException as exc:
            log.warning("downloading attachment %s failed: %s", attachment.id, exc)
            raise UserFacingError("I couldn't download that recording from Discord; try again.") from exc

    return read


def notice_nonce(job: CloneJob) -> str:
    """The channel notice's nonce: one per job (a job has one notice), at most Discord's 25 characters."""
    return f"clone-{job.id}"[:25]


# -- the cog ---------------------------------------------------------------------------------------


class Cloning(commands.Cog):
    confirm_timeout: float = 300.0  # seconds the Confirm/Cancel buttons stay usable (tests shorten it)

    def __init__(self, bot: NanoVoice) -> None:
        self.bot = bot
        self.clone_menu = app_commands.ContextMenu(name="Clone this voice", callback=self.clone_this_voice)
        self.clone_menu.guild_only = True
        self.poller: asyncio.Task[None] | None = None

    async def cog_load(self) -> None:
        self.bot.set_clone_flow(self)
        self.bot.tree.add_command(self.clone_menu)
        self.poller = asyncio.create_task(self._run_poller(), name="clone-job-poller")

    async def cog_unload(self) -> None:
        self.bot.set_clone_flow(None)
        self.bot.tree.remove_command(self.clone_menu.name, type=self.clone_menu.type)
        if self.poller is not None:
            self.poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.poller
            self.poller = None

    async def _run_poller(self) -> None:
        clones = self.bot.clones
        try:
            try:
                await clones.recover()  # the database only: adopt orphaned jobs before Discord is even ready
            except Exception:
                log.exception("could not adopt orphaned clone jobs yet; trying again once the bot is ready")
            await self.bot.wait_until_ready()
            while True:
                try:
                    await clones.run_poller(self)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("the clone job poller stopped unexpectedly; restarting it in 5 s")
                    await asyncio.sleep(5)
        finally:
            await clones.release_claims()  # stopped before the poller ran: hand back what recover adopted

    # -- the flow ------------------------------------------------------------------------------

    async def start_clone(
        self,
        interaction: discord.Interaction,
        *,
        attachment: discord.Attachment,
        name: str,
        provider: str,
        transcript: str | None,
        model: str | None,
        noise_reduction: bool,
        normalize_volume: bool,
    ) -> None:
        """The /voice clone flow (also used by the context menu after its modal)."""
        where = InteractionRef(interaction.application_id, interaction.token,
                               self.bot.clock.now() + INTERACTION_TOKEN_LIFETIME - 5)
        request = CloneRequest(
            user_id=interaction.user.id, guild_id=interaction.guild_id, channel_id=interaction.channel_id,
            name=name, provider=provider, role_ids=tuple(r.id for r in getattr(interaction.user, "roles", ())),
            transcript=transcript, model=model, noise_reduction=noise_reduction, normalize_volume=normalize_volume,
        )
        clip = ClipSource(attachment.filename, attachment.size, interaction.filesize_limit, _reader(attachment))
        # Name, policy, limits and size need no download: refuse those privately, before the public defer.
        request = await self.bot.clones.check(request, clip)
        await interactions.defer(interaction)
        prepared = await self.bot.clones.prepare_audio(request, clip)
        if not self.bot.config.clone_confirm:
            await self.submit(interaction, prepared, where)
            return
        view = ConfirmCloneView(self, interaction, prepared, where, timeout=self.confirm_timeout)
        await interactions.edit_original(interaction, content=None, embed=confirm_embed(prepared), view=view)

    async def submit(self, origin: discord.Interaction, prepared: PreparedClone,
                     where: InteractionRef) -> CloneJob | None:
        """The paid submit; None when another bot process took the job over meanwhile and tells the user."""
        async def show_card(job: CloneJob) -> None:
            await interactions.edit_original(origin, content=None, embed=status_embed(job, self.bot.clock.now()),
                                             view=None)

        try:
            return await self.bot.clones.submit(prepared, where, on_recorded=show_card)
        except CloneHandedOver as handed:  # its notice edits this card: one message, not two
            log.info("clone job %s: another bot process tells the user how it ended", handed.job_id)
            return None

    async def clone_this_voice(self, interaction: discord.Interaction, message: discord.Message) -> None:
        attachment = find_audio(message)
        if attachment is None:
            raise UserFacingError("That message has no audio attachment or voice message to clone.")
        await interaction.response.send_modal(CloneModal(self, attachment))

    # -- JobEvents: how the poller reaches the user --------------------------------------------

    async def _edit_card(self, job: CloneJob, **changes: Any) -> None:
        """Edit the job's status card: the original response of its interaction, through its webhook token."""
        if job.application_id is None or job.interaction_token is None:
            raise RuntimeError(f"clone job {job.id} has no interaction token to edit its status card with")
        webhook = discord.Webhook.partial(job.application_id, job.interaction_token, client=self.bot)
        # "@original" is Discord's id for an interaction's first response; discord.py types message_id as int.
        await webhook.edit_message("@original", **changes)  # type: ignore[call-overload]

    async def show_progress(self, job: CloneJob) -> None:
        try:
            await self._edit_card(job, embed=status_embed(job, self.bot.clock.now()),
                                  allowed_mentions=interactions.NO_PINGS)
        except discord.NotFound:
            log.info("status card of clone job %s is gone", job.id)

    async def deliver_notice(self, job: CloneJob, notice: CloneNotice) -> None:
        """Edit the status card while its token lives, else post in the channel mentioning only the user."""

        def files() -> list[discord.File]:
            if notice.sample is None:
                return []
            return [discord.File(io.BytesIO(notice.sample), filename=notice.sample_filename,
                                 description=sample_alt_text(job, notice))]

        embed = notice_embed(job, notice, self.bot.clock.now())
        if self.bot.clones.token_alive(job):
            try:
                await self._edit_card(job, content=None, embed=embed, attachments=files(), view=None,
                                      allowed_mentions=interactions.NO_PINGS)
                return
            except discord.NotFound:
                log.info("status card of clone job %s is gone; telling the user in the channel", job.id)
        if job.channel_id is None:
            log.warning("clone job %s has no channel; its notice is dropped", job.id)
            return
        channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        try:
            content = f"<@{job.user_id}> {discord.utils.escape_markdown(notice.message)}"
            if notice.sample is not None:
                content += f"\n-# 🔊 {sample_label(job, notice, f'<@{job.user_id}>')}"
            await channel.send(
                content, files=files(),
                nonce=notice_nonce(job),  # with enforce_nonce: Discord drops a resend after a crash
                allowed_mentions=discord.AllowedMentions(everyone=False, roles=False,
                                                         users=[discord.Object(job.user_id)]),
            )
        except (discord.Forbidden, discord.NotFound):
            log.warning("cannot post the notice of clone job %s in channel %s", job.id, job.channel_id,
                        exc_info=True)


async def setup(bot: NanoVoice) -> None:
    await bot.add_cog(Cloning(bot))
