"""/join, /leave, /skip, /clear: speech in voice channels (the discord.py voice glue; rules in bot.playback).

While the bot is in a voice channel, ``cogs/say.py`` dispatches ``speech_posted`` after every ``/say``
answer; when the member is in the bot's channel, the same audio (the paid, cached speech: no second TTS
call) joins the server's queue and a player task per server plays it. Each line runs the bundled ffmpeg
through ``FFmpegOpusAudio`` (fed from memory, input format and codec given: there is no ffprobe) under
the one ffmpeg cap of :mod:`bot.audio`; the slot is held while ffmpeg transcodes, and the Opus packets
are handed to discord.py's player from memory, so a long line never keeps a slot for its whole playback.
discord.py calls ``after=`` on its player thread: it is handed back to the loop with
``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import queue
import threading
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands
from discord.voice_state import SocketReader, VoiceConnectionState

from bot import audio, interactions, playback
from bot.errors import Forbidden, UserFacingError
from bot.nanogpt import extension_for
from bot.playback import GuildQueue, Line, Playback, QueueFull
from bot.policy import voice_playback_enabled
from bot.tts import SpokenAudio

if TYPE_CHECKING:
    from bot.app import NanoVoice

log = logging.getLogger(__name__)

OPUS_BITRATE_KBPS = 64
CONNECT_TIMEOUT = 15.0  # seconds for discord.py's whole voice handshake
# ffmpeg writes its Ogg output in 8 KB blocks (about a second of speech): one page per packet, flushed at
# once, lets the first packet play while the rest is still being encoded.
FLUSH_EVERY_PACKET = "-flush_packets 1 -page_duration 20000"
OGG_OPUS_HEADERS = (b"OpusHead", b"OpusTags")
PREBUFFER_PACKETS = 5  # 100 ms of speech ready before a line starts: ffmpeg stalls (a busy CPU) are no gaps
PACKET_WAIT = 5.0  # the player thread gives up on a line when ffmpeg sends nothing for this long


def _and_join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def missing_voice_permissions(perms: discord.Permissions) -> list[str]:
    """The permissions the bot lacks to play in a voice channel, as Discord names them."""
    wanted = (("View Channel", perms.view_channel), ("Connect", perms.connect), ("Speak", perms.speak))
    return [name for name, granted in wanted if not granted]


class PrefetchedOpus(discord.AudioSource):
    """Opus packets from ``FFmpegOpusAudio``, read ahead by a thread so ffmpeg finishes (and gives its
    slot back) as fast as it can transcode, while the player takes one 20 ms packet at a time."""

    def __init__(self, source: discord.FFmpegOpusAudio, on_drained: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._source = source
        self._packets: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._on_drained = on_drained
        self._loop = loop
        self.buffered = asyncio.Event()  # PREBUFFER_PACKETS are in (or the whole line): playing may start
        self._count = 0
        self._released = False
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self.packets_read = 0
        self._thread = threading.Thread(target=self._drain, name="voice-prefetch", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        try:
            while not self._stopped.is_set():
                packet = self._source.read()
                if not packet:
                    break
                if packet.startswith(OGG_OPUS_HEADERS):
                    continue  # discord.py's Ogg reader yields the stream's header packets too: no audio
                self._packets.put(packet)
                self._count += 1
                if self._count == PREBUFFER_PACKETS:
                    self._signal_buffered()
        except Exception:
            log.warning("reading ffmpeg's Opus output failed", exc_info=True)
        finally:
            self._packets.put(None)
            self._signal_buffered()
            self._release()

    def _signal_buffered(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone at shutdown
            self._loop.call_soon_threadsafe(self.buffered.set)

    def _release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._on_drained()

    def is_opus(self) -> bool:
        return True

    def read(self) -> bytes:
        try:
            packet = self._packets.get(timeout=PACKET_WAIT)
        except queue.Empty:
            log.warning("ffmpeg sent no audio for %.0f s; ending the line", PACKET_WAIT)
            return b""
        if packet is None:
            self._packets.put(None)  # stay at the end
            return b""
        self.packets_read += 1
        return packet

    def cleanup(self) -> None:
        self._stopped.set()
        with contextlib.suppress(Exception):
            self._source.cleanup()


class _PromptSocketReader(SocketReader):
    """discord.py's UDP reader with a short ``select`` timeout.

    Upstream (2.7.1) waits up to 30 s in ``select`` on the socket it saw last; after a voice reconnect
    that socket is closed and a new one is made, so the IP-discovery answer on the new socket is not
    read until the old wait ends, and the reconnect times out (measured against the emulator's voice
    server: a 4006 mid-line never came back within 15 s). Same loop, 0.25 s timeout."""

    SELECT_TIMEOUT = 0.25

    def _do_run(self) -> None:
        import select

        while not self._end.is_set():
            if not self._running.is_set():
                self._running.wait()
                continue
            sock = self.state.socket
            try:
                readable, _, _ = select.select([sock], [], [], self.SELECT_TIMEOUT)
            except (ValueError, TypeError, OSError):
                continue  # closed or not made yet: the next turn reads the current socket
            if not readable:
                continue
            try:
                data = sock.recv(2048)
            except OSError:
                continue
            for callback in list(self._callbacks):
                try:
                    callback(data)
                except Exception:
                    log.exception("voice socket callback %s failed", callback)


class NanoVoiceClient(discord.VoiceClient):
    """discord.py's VoiceClient with :class:`_PromptSocketReader`, so a reconnect finds its UDP answers."""

    def create_connection_state(self) -> VoiceConnectionState:
        state = super().create_connection_state()
        state._socket_reader.stop()  # upstream's reader thread ends at once (it starts paused)
        state._socket_reader = _PromptSocketReader(state)
        state._socket_reader.start()
        return state


async def open_source(data: bytes, content_type: str) -> PrefetchedOpus:
    """A playable source for synthesised speech, holding one slot of :func:`bot.audio.ffmpeg_slot`
    until ffmpeg has written its last packet."""
    exe = await audio.ffmpeg_exe()
    slot = audio.ffmpeg_slot()
    await slot.acquire()
    loop = asyncio.get_running_loop()

    def release() -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone at shutdown
            loop.call_soon_threadsafe(slot.release)

    try:
        kind = audio.sniff(data) or extension_for(content_type)
        codec = "opus" if kind == "ogg/opus" else kind.split("/", 1)[0]  # opus is copied, anything else encoded
        ffmpeg = await asyncio.to_thread(
            discord.FFmpegOpusAudio, io.BytesIO(data), pipe=True, executable=exe, codec=codec,
            bitrate=OPUS_BITRATE_KBPS, before_options=" ".join(audio.playback_input_args()),
            options=FLUSH_EVERY_PACKET,
        )
    except BaseException:
        slot.release()
        raise
    return PrefetchedOpus(ffmpeg, release, loop)


class VoiceChannels(commands.Cog):
    """Voice sessions: one player task per server the bot is in a voice channel of."""

    WATCH_SECONDS = 1.0  # how often alone / idle / stuck-reconnecting is checked
    RECONNECT_GRACE_SECONDS = 20.0  # a voice connection down this long (e.g. 4017) is given up

    def __init__(self, bot: NanoVoice) -> None:
        self.bot = bot
        self._players: dict[int, asyncio.Task[None]] = {}
        self._down_since: dict[int, float] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._skipped: set[int] = set()  # ids of lines /skip stopped
        self.lines_played = 0

    @property
    def playback(self) -> Playback:
        return self.bot.playback

    async def cog_load(self) -> None:
        self._watcher = asyncio.create_task(self._watch(), name="voice-watch")

    async def cog_unload(self) -> None:
        tasks = [t for t in (self._watcher, *self._players.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        self._players.clear()

    # -- commands --------------------------------------------------------------------------------

    @app_commands.command(name="join", description="Join your voice channel (or the one named) and speak /say there")
    @app_commands.guild_only()
    @app_commands.describe(channel="The voice channel to join (default: the one you are in)")
    async def join(self, interaction: discord.Interaction, channel: discord.VoiceChannel | None = None) -> None:
        guild, member = self._guild_member(interaction)
        if not await voice_playback_enabled(self.bot.db, guild.id):
            raise UserFacingError(playback.PLAYBACK_OFF)
        target = channel or (member.voice.channel if member.voice is not None else None)
        if target is None:
            raise UserFacingError("Join a voice channel first, or name one: `/join channel:`.")
        missing = missing_voice_permissions(target.permissions_for(guild.me))
        if missing:
            raise Forbidden(f"I need the {_and_join(missing)} permission{'s' if len(missing) > 1 else ''} in "
                            f"{target.mention} to speak there; ask a server manager to allow it.")
        current = guild.voice_client
        if isinstance(current, discord.VoiceClient) and current.channel is not None:
            if current.channel.id == target.id:
                raise UserFacingError(f"I'm already in {target.mention}.")
            if self._humans(current) and not self._may_manage(interaction, current):
                raise Forbidden(f"I'm in {current.channel.mention} with members listening; someone there or a "
                                "server manager can `/leave` first.")
        await interactions.defer(interaction)
        if current is None:
            self._cleanup(guild.id)  # anything left from a session that ended (kicked, connection lost)
        try:
            if isinstance(current, discord.VoiceClient):
                await current.move_to(target, timeout=CONNECT_TIMEOUT)
            else:
                await target.connect(timeout=CONNECT_TIMEOUT, reconnect=True, self_deaf=True, cls=NanoVoiceClient)
        except (TimeoutError, discord.ClientException) as exc:
            log.warning("could not join voice channel %s in guild %s: %r", target.id, guild.id, exc)
            self._cleanup(guild.id)
            raise UserFacingError(f"I couldn't connect to {target.mention}; try `/join` again in a moment.") from None
        self.playback.queue(guild.id)
        self.playback.touch(guild.id)
        self._ensure_player(guild.id)
        log.info("joined voice channel %s in guild %s (asked by %s)", target.id, guild.id, member.id)
        await interactions.send(interaction, f"Joined {target.mention}: `/say` from members in this channel "
                                             "now plays here too.", ephemeral=False)

    @app_commands.command(name="leave", description="Leave the voice channel")
    @app_commands.guild_only()
    async def leave(self, interaction: discord.Interaction) -> None:
        guild, _ = self._guild_member(interaction)
        vc = self._voice_client(guild)
        if not self._may_manage(interaction, vc):
            raise Forbidden("Only a member in my voice channel or a server manager can make me leave.")
        await interactions.defer(interaction)
        channel = vc.channel
        await self._leave(guild, f"/leave by {interaction.user.id}")
        await interactions.send(interaction, f"Left {channel.mention}.", ephemeral=False)

    @app_commands.command(name="skip", description="Stop the line playing in the voice channel")
    @app_commands.guild_only()
    async def skip(self, interaction: discord.Interaction) -> None:
        guild, member = self._guild_member(interaction)
        vc = self._voice_client(guild)
        line = self._queue(guild).check_skip(member.id, manager=self._is_manager(interaction))
        self._skipped.add(line.id)  # a line still buffering is dropped before it starts
        vc.stop()  # the player's after= moves on to the next line
        log.info("line %s skipped in guild %s by %s", line.id, guild.id, member.id)
        await interactions.send(interaction, "Skipped.", ephemeral=True)

    @app_commands.command(name="clear", description="Empty the voice queue (managers: everyone's lines)")
    @app_commands.guild_only()
    async def clear(self, interaction: discord.Interaction) -> None:
        guild, member = self._guild_member(interaction)
        self._voice_client(guild)
        removed = self._queue(guild).clear(member.id, manager=self._is_manager(interaction))
        message = "The queue is already empty." if removed == 0 else \
            f"Removed {removed} waiting line{'s' if removed != 1 else ''}."
        await interactions.send(interaction, message, ephemeral=True)

    # -- /say and "Speak this message" -----------------------------------------------------------

    @commands.Cog.listener()
    async def on_speech_posted(self, interaction: discord.Interaction, spoken: SpokenAudio) -> None:
        """Queue the speech just posted when its author is in the bot's voice channel (order is kept:
        nothing awaits before the line is queued)."""
        guild = interaction.guild
        member = interaction.user
        if guild is None or not isinstance(member, discord.Member):
            return
        vc = guild.voice_client
        if not isinstance(vc, discord.VoiceClient) or vc.channel is None:
            return
        if member.voice is None or member.voice.channel is None or member.voice.channel.id != vc.channel.id:
            return
        line = self.playback.line(guild.id, member.id, spoken.audio, spoken.content_type, spoken.voice.label)
        try:
            ahead = self.playback.queue(guild.id).add(line)
        except QueueFull as exc:
            log.info("line refused in guild %s for %s: %s", guild.id, member.id, exc)
            with contextlib.suppress(discord.HTTPException):
                await interactions.send(interaction, str(exc), ephemeral=True)
            return
        self._ensure_player(guild.id)
        log.debug("line %s queued in guild %s (%d ahead)", line.id, guild.id, ahead)

    # -- playing ---------------------------------------------------------------------------------

    def _ensure_player(self, guild_id: int) -> None:
        task = self._players.get(guild_id)
        if task is None or task.done():
            self._players[guild_id] = asyncio.create_task(self._player(guild_id), name=f"voice-player-{guild_id}")

    async def _player(self, guild_id: int) -> None:
        queue_ = self.playback.queue(guild_id)
        while self.playback.existing(guild_id) is queue_:  # the session ended (left): this player ends too
            line = await queue_.next_line()
            try:
                await self._play(guild_id, queue_, line)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("could not play line %s in guild %s", line.id, guild_id)
            finally:
                self._skipped.discard(line.id)
                queue_.finished(line)
                if self.playback.existing(guild_id) is queue_:
                    self.playback.touch(guild_id)

    async def _play(self, guild_id: int, queue_: GuildQueue, line: Line) -> None:
        guild = self.bot.get_guild(guild_id)
        vc = guild.voice_client if guild is not None else None
        if guild is None or not isinstance(vc, discord.VoiceClient):
            return
        if not await voice_playback_enabled(self.bot.db, guild_id):
            await self._leave(guild, "voice playback turned off")
            return
        for _ in range(int(self.RECONNECT_GRACE_SECONDS * 10)):  # reconnecting: wait for it
            if vc.is_connected():
                break
            await asyncio.sleep(0.1)
        else:
            log.warning("voice in guild %s did not come back; dropping line %s", guild_id, line.id)
            return
        source = await open_source(line.audio, line.content_type)
        try:
            await asyncio.wait_for(source.buffered.wait(), PACKET_WAIT)
        except BaseException:
            source.cleanup()
            raise
        if line.id in self._skipped:
            source.cleanup()
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Exception | None] = loop.create_future()

        def settle(error: Exception | None) -> None:
            if not done.done():
                done.set_result(error)

        def after(error: Exception | None) -> None:  # discord.py's player thread
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, error)

        self.playback.touch(guild_id)
        try:
            vc.play(source, after=after)
        except discord.ClientException:
            source.cleanup()
            raise
        log.info("playing line %s (%s, %d bytes) in guild %s", line.id, line.label, len(line.audio), guild_id)
        error = await done
        self.lines_played += 1
        if error is not None:
            log.warning("line %s in guild %s ended with %r", line.id, guild_id, error)

    # -- leaving ---------------------------------------------------------------------------------

    async def _leave(self, guild: discord.Guild, why: str) -> None:
        vc = guild.voice_client
        self._cleanup(guild.id)
        if vc is not None:
            with contextlib.suppress(Exception):
                await vc.disconnect(force=True)
        log.info("left the voice channel in guild %s (%s)", guild.id, why)

    def _cleanup(self, guild_id: int) -> None:
        task = self._players.pop(guild_id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        self._down_since.pop(guild_id, None)
        dropped = self.playback.forget(guild_id)
        if dropped:
            log.info("dropped %d waiting line(s) in guild %s", dropped, guild_id)

    @commands.Cog.listener()
    async def on_voice_state_update(self, member: discord.Member, before: discord.VoiceState,
                                    after: discord.VoiceState) -> None:
        guild = member.guild
        if self.bot.user is not None and member.id == self.bot.user.id:
            # Our own "left the channel" also comes during discord.py's reconnects (it leaves and joins
            # again), so the session is dropped only once the voice client is gone (_check_sessions).
            return
        vc = guild.voice_client
        if isinstance(vc, discord.VoiceClient) and vc.channel is not None and before.channel is not None \
                and before.channel.id == vc.channel.id and not self._humans(vc):
            await self._leave(guild, playback.LEFT_ALONE)

    @commands.Cog.listener()
    async def on_ready(self) -> None:
        """After a restart Discord may still show the bot in a channel it no longer plays in: leave those."""
        for guild in self.bot.guilds:
            me = guild.me
            if me is not None and me.voice is not None and me.voice.channel is not None \
                    and guild.voice_client is None:
                log.info("leaving voice channel %s in guild %s left over from before a restart",
                         me.voice.channel.id, guild.id)
                with contextlib.suppress(Exception):
                    await guild.change_voice_state(channel=None)

    async def _watch(self) -> None:
        await self.bot.wait_until_ready()
        while True:
            await asyncio.sleep(self.WATCH_SECONDS)
            try:
                await self._check_sessions()
            except Exception:
                log.exception("voice session check failed")

    async def _check_sessions(self) -> None:
        for guild_id in self.playback.guild_ids():
            guild = self.bot.get_guild(guild_id)
            vc = guild.voice_client if guild is not None else None
            if guild is None or not isinstance(vc, discord.VoiceClient):
                self._cleanup(guild_id)
                continue
            if not vc.is_connected():
                since = self._down_since.setdefault(guild_id, self.bot.clock.now())
                if self.bot.clock.now() - since >= self.RECONNECT_GRACE_SECONDS:
                    await self._leave(guild, "voice connection lost")
                continue
            self._down_since.pop(guild_id, None)
            reason = self.playback.leave_reason(guild_id, len(self._humans(vc)))
            if reason is not None:
                await self._leave(guild, reason)

    # -- helpers ---------------------------------------------------------------------------------

    @staticmethod
    def _guild_member(interaction: discord.Interaction) -> tuple[discord.Guild, discord.Member]:
        if interaction.guild is None or not isinstance(interaction.user, discord.Member):
            raise UserFacingError("This command only works in a server channel.")
        return interaction.guild, interaction.user

    @staticmethod
    def _voice_client(guild: discord.Guild) -> discord.VoiceClient:
        vc = guild.voice_client
        if not isinstance(vc, discord.VoiceClient) or vc.channel is None:
            raise UserFacingError(playback.NOT_IN_VOICE)
        return vc

    def _queue(self, guild: discord.Guild) -> GuildQueue:
        return self.playback.existing(guild.id) or self.playback.queue(guild.id)

    @staticmethod
    def _humans(vc: discord.VoiceClient) -> list[discord.Member]:
        channel = vc.channel
        members = channel.members if channel is not None else []
        return [m for m in members if not m.bot]

    @staticmethod
    def _is_manager(interaction: discord.Interaction) -> bool:
        perms = interaction.permissions
        return perms.manage_guild or perms.administrator

    def _may_manage(self, interaction: discord.Interaction, vc: discord.VoiceClient) -> bool:
        """A server manager, or a member in the bot's voice channel."""
        member = interaction.user
        in_channel = isinstance(member, discord.Member) and member.voice is not None \
            and member.voice.channel is not None and vc.channel is not None \
            and member.voice.channel.id == vc.channel.id
        return in_channel or self._is_manager(interaction)


async def setup(bot: NanoVoice) -> None:
    await bot.add_cog(VoiceChannels(bot))
