"""/say, the "Speak this message" context menu and voice messages (thin: the work is in bot.tts and bot.say_text)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot import interactions
from bot.audio import AudioError
from bot.errors import UserFacingError
from bot.say_text import MentionNames, mentioned_user_ids, quote_text
from bot.tts import ResolvedVoice, SpokenAudio

if TYPE_CHECKING:
    from bot.app import NanoVoice
    from bot.tts import TTSService

log = logging.getLogger(__name__)

MESSAGE_LIMIT = 2000  # Discord's content limit
VOICE_MESSAGE_FILENAME = "voice-message.ogg"
VOICE_MESSAGES_REFUSED = 50173  # "Cannot send voice messages in this channel"
NO_PINGS = discord.AllowedMentions.none()
ATTRIBUTION_SHOWN = "nanovoice.attribution_shown"  # key in Interaction.extras: the answer is the attribution line


class VoiceMessageFile(discord.File):
    """A ``discord.File`` whose attachment entry carries a voice message's duration and waveform."""

    def __init__(self, data: bytes, filename: str, *, duration: float, waveform: str) -> None:
        super().__init__(io.BytesIO(data), filename=filename)
        self.duration = duration
        self.waveform = waveform

    def to_dict(self, index: int) -> dict[str, Any]:
        payload = super().to_dict(index)
        payload["duration_secs"] = round(self.duration, 2)
        payload["waveform"] = self.waveform
        return payload


def voice_message_parameters(ogg: bytes, duration: float, waveform: str,
                             reference: discord.MessageReference | None = None) -> discord.http.MultipartParameters:
    """Create Message parameters for a voice message (flag 8192, one ``audio/ogg`` part, no content),
    optionally a reply to ``reference`` (replying never pings: allowed mentions none)."""
    file = VoiceMessageFile(ogg, VOICE_MESSAGE_FILENAME, duration=duration, waveform=waveform)
    params = discord.http.handle_message_parameters(file=file, flags=discord.MessageFlags(voice=True),
                                                    allowed_mentions=NO_PINGS,
                                                    message_reference=reference.to_message_reference_dict()
                                                    if reference is not None else discord.utils.MISSING)
    for part in params.multipart or ():
        if part.get("name") == "files[0]":
            part["content_type"] = "audio/ogg"  # Discord ignores the voice metadata unless this is audio/*
    return params


class DiscordNames:
    """Names for mentions from what discord.py already knows, plus (after the defer) members it can
    fetch: without the members intent the member cache is nearly empty."""

    FETCH_LIMIT = 5  # unknown users looked up per request
    FETCH_TIMEOUT = 2.0

    def __init__(self, bot: commands.Bot, interaction: discord.Interaction,
                 message: discord.Message | None = None) -> None:
        self.bot = bot
        self.guild = interaction.guild
        self.users: dict[int, str] = {interaction.user.id: interaction.user.display_name}
        self.roles: dict[int, str] = {}
        self.channels: dict[int, str] = {}
        if message is not None:
            self.users.update({u.id: u.display_name for u in message.mentions})
            self.roles.update({r.id: r.name for r in message.role_mentions})
            self.channels.update({c.id: c.name for c in message.channel_mentions if getattr(c, "name", None)})

    def user(self, user_id: int) -> str | None:
        if user_id in self.users:
            return self.users[user_id]
        found = (self.guild.get_member(user_id) if self.guild is not None else None) or self.bot.get_user(user_id)
        return found.display_name if found is not None else None

    def role(self, role_id: int) -> str | None:
        found = self.guild.get_role(role_id) if self.guild is not None else None
        return found.name if found is not None else self.roles.get(role_id)

    def channel(self, channel_id: int) -> str | None:
        found = self.guild.get_channel_or_thread(channel_id) if self.guild is not None else None
        name = getattr(found or self.bot.get_channel(channel_id), "name", None)
        return name or self.channels.get(channel_id)

    def names(self) -> MentionNames:
        return MentionNames(user=self.user, role=self.role, channel=self.channel)

    async def fetch_unknown_users(self, text: str) -> bool:
        """Look up (a few) mentioned users nobody has cached; True when any name was learned."""
        unknown = [uid for uid in mentioned_user_ids(text) if self.user(uid) is None][: self.FETCH_LIMIT]
        if not unknown:
            return False

        async def fetch(user_id: int) -> None:
            try:
                if self.guild is not None:
                    try:
                        member = await self.guild.fetch_member(user_id)
                    except discord.NotFound:
                        member = None
                    if member is not None:
                        self.users[user_id] = member.display_name
                        return
                self.users[user_id] = (await self.bot.fetch_user(user_id)).display_name
            except discord.HTTPException:
                log.debug("could not look up mentioned user %s", user_id)

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(fetch(uid) for uid in unknown)), self.FETCH_TIMEOUT)
        return any(uid in self.users for uid in unknown)


def attribution(spoken: SpokenAudio, requester: str) -> str:
    """``🔊 Synthetic voice “Alice” for <@1>``: says the audio is synthetic and who asked for it.

    Every answer carries it (the voice message is a reply to it), so nobody takes the audio for a real
    recording. ``requester`` is a mention, sent with allowed mentions none: it shows the name, never pings.
    """
    kind = "voice" if spoken.voice.saved is not None else "stock voice"
    return f"🔊 Synthetic {kind} “{discord.utils.escape_markdown(spoken.voice.label)}” for {requester}"


def render_reply(spoken: SpokenAudio, requester: str, note: str | None = None) -> str:
    """The spoken text as a block quote, then a small line: synthetic, which voice, who asked (≤ 2,000)."""
    footer = f"-# {attribution(spoken, requester)}"
    if spoken.speed != 1.0:
        footer += f" · {speed_text(spoken.speed)}× speed"
    if note:
        footer = f"{note}\n{footer}"
    budget = MESSAGE_LIMIT - len(footer) - 1
    return f"{quote_text(spoken.text, budget)}\n{footer}"


def speed_text(speed: float) -> str:
    return f"{speed:.2f}".rstrip("0").rstrip(".")


def format_size(size: int) -> str:
    if size < 1024 * 1024:
        return f"{max(1, round(size / 1024))} KB"
    mib = size / (1024 * 1024)
    return f"{mib:.1f} MB" if mib < 10 else f"{mib:.0f} MB"


class Say(commands.Cog):
    def __init__(self, bot: NanoVoice) -> None:
        self.bot = bot
        self.speak_menu = app_commands.ContextMenu(name="Speak this message", callback=self.speak_this_message)
        self.speak_menu.guild_only = True

    @property
    def tts(self) -> TTSService:
        return self.bot.tts

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.speak_menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.speak_menu.name, type=self.speak_menu.type)
        await self.tts.close()

    # -- commands --------------------------------------------------------------------------------

    @app_commands.command(name="say", description="Speak text in one of your voices or a stock voice")
    @app_commands.guild_only()
    @app_commands.describe(
        text="What to say",
        voice="One of your voices, or a stock voice written model/voice",
        speed="Speaking speed, 0.5 to 2.0 (default 1.0)",
        voice_message="Send it as a Discord voice message",
    )
    async def say(
        self,
        interaction: discord.Interaction,
        text: str,
        voice: str | None = None,
        speed: app_commands.Range[float, 0.5, 2.0] | None = None,
        voice_message: bool | None = None,
    ) -> None:
        await self.tts.check_cooldown(interaction.user.id)
        try:
            # Checks that need no network (text, the voice's name: one SQLite read) come before the public
            # defer, so those refusals stay private to the user.
            names = DiscordNames(self.bot, interaction)
            spoken = self.tts.prepare_text(text, names.names())
            resolved = await self.tts.resolve_voice(interaction.user.id, voice)  # one SQLite read
            await interactions.defer(interaction)
            if await names.fetch_unknown_users(text):
                spoken = self.tts.prepare_text(text, names.names())
            await self._speak(interaction, spoken, resolved, speed, bool(voice_message))
        except UserFacingError:
            await self.tts.release_cooldown(interaction.user.id)  # refused: nothing was spoken
            raise

    @say.autocomplete("voice")
    async def voice_autocomplete(self, interaction: discord.Interaction,
                                 current: str) -> list[app_commands.Choice[str]]:
        pairs = await self.tts.voice_choices(interaction.user.id, current)
        return [app_commands.Choice(name=name, value=value) for name, value in pairs]

    async def speak_this_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        await self.tts.check_cooldown(interaction.user.id)
        try:
            if not (message.content or "").strip():
                raise UserFacingError("That message has no text I can read out.")
            names = DiscordNames(self.bot, interaction, message)
            spoken = self.tts.prepare_text(message.content, names.names(), what="message")
            resolved = await self.tts.resolve_voice(interaction.user.id, None)
            await interactions.defer(interaction)
            if await names.fetch_unknown_users(message.content):
                spoken = self.tts.prepare_text(message.content, names.names(), what="message")
            await self._speak(interaction, spoken, resolved, None, False)
        except UserFacingError:
            await self.tts.release_cooldown(interaction.user.id)
            raise

    # -- rendering -------------------------------------------------------------------------------

    async def _speak(self, interaction: discord.Interaction, text: str, voice: ResolvedVoice, speed: float | None,
                     as_voice_message: bool) -> None:
        spoken = await self.tts.synthesize(interaction.user.id, interaction.guild_id, text, voice, speed)
        if as_voice_message:
            await self._send_voice_message(interaction, spoken)
        else:
            await self._send_file(interaction, spoken)
        self.bot.dispatch("speech_posted", interaction, spoken)  # cogs/voice_channels.py also plays it in a call

    async def _send_file(self, interaction: discord.Interaction, spoken: SpokenAudio, note: str | None = None) -> None:
        limit = interaction.filesize_limit
        if len(spoken.audio) > limit:
            self._drop_attribution_on_error(interaction)
            raise UserFacingError(
                f"The speech came out at {format_size(len(spoken.audio))}, over this server's "
                f"{format_size(limit)} upload limit; try a shorter text."
            )
        file = discord.File(io.BytesIO(spoken.audio), filename=spoken.filename)
        content = render_reply(spoken, interaction.user.mention, note)
        if interaction.extras.get(ATTRIBUTION_SHOWN):
            # The answer already is the attribution line (a refused voice message): it becomes the file answer.
            if await interactions.edit_original(interaction, content=content, attachments=[file]) is not None:
                return
            file = discord.File(io.BytesIO(spoken.audio), filename=spoken.filename)
        await interactions.send(interaction, content, ephemeral=False, file=file, allowed_mentions=NO_PINGS)

    @staticmethod
    def _drop_attribution_on_error(interaction: discord.Interaction) -> None:
        """An attribution line with no audio under it goes away with the error (``send_error`` removes it)."""
        if interaction.extras.get(ATTRIBUTION_SHOWN):
            interaction.extras[interactions.PUBLIC_PLACEHOLDER] = True

    async def _send_voice_message(self, interaction: discord.Interaction, spoken: SpokenAudio) -> None:
        """Post a real voice message in the channel (Create Message), then remove the "thinking…"
        reply; a plain attachment where Discord refuses voice messages (50173, 403)."""
        perms = interaction.app_permissions
        # In a thread (a forum post too) Discord asks for Send Messages in Threads, not Send Messages.
        may_send = perms.send_messages_in_threads if isinstance(interaction.channel, discord.Thread) \
            else perms.send_messages
        if not (perms.send_voice_messages and perms.attach_files and may_send):
            note = "-# I may not send voice messages here, so here is the audio as a file."
            await self._send_file(interaction, spoken, note)
            return
        try:
            encoded = await self.tts.voice_message(spoken)
        except AudioError:
            log.warning("speech %s could not be encoded as a voice message; sending a file", spoken.cache_key[:12])
            await self._send_file(interaction, spoken)
            return
        if len(encoded.ogg) > interaction.filesize_limit:
            await self._send_file(interaction, spoken)
            return
        # A voice message can have no content and can't be edited, so the attribution is the interaction's
        # answer (the "thinking…" reply becomes it) and the voice message is a reply to that line.
        line = attribution(spoken, interaction.user.mention)
        answer = await interactions.edit_original(interaction, content=line)
        interaction.extras[ATTRIBUTION_SHOWN] = answer is not None
        reference = None
        if answer is not None:
            reference = discord.MessageReference(message_id=answer.id, channel_id=answer.channel.id,
                                                 fail_if_not_exists=False)
        params = voice_message_parameters(encoded.ogg, encoded.duration, encoded.waveform_b64, reference)
        try:
            with params:
                await self.bot.http.send_message(interactions.channel_id_of(interaction), params=params)
        except discord.HTTPException as exc:
            if exc.code == VOICE_MESSAGES_REFUSED or exc.status == 403:
                log.info("voice message refused in channel %s (HTTP %s, code %s); sending a file",
                         interaction.channel_id, exc.status, exc.code)
                await self._send_file(interaction, spoken,
                                      "-# Voice messages aren't allowed here, so here is the audio as a file.")
                return
            self._drop_attribution_on_error(interaction)
            raise
        if answer is None:  # no answer to reply to (token gone): the attribution follows the voice message
            channel = interaction.channel
            if channel is not None and hasattr(channel, "send"):
                await channel.send(line, allowed_mentions=NO_PINGS)


async def setup(bot: NanoVoice) -> None:
    await bot.add_cog(Say(bot))
