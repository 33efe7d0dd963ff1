"""Speech in voice channels over the real protocol: the bot (discord.py's VoiceClient, FFmpegOpusAudio,
the bundled ffmpeg) against the emulator's voice server (TLS websocket, UDP, xchacha20 transport
encryption with DAVE negotiated off) and the fake NanoGPT.

Assertions are on what a listener in the channel hears (the decrypted Opus packets the voice server
received, their duration and order), what members read, and what NanoGPT was asked and paid.
Clips are short: playback is real time.
"""

from __future__ import annotations

import asyncio
import subprocess
from dataclasses import dataclass
from typing import Any

import imageio_ffmpeg
import pytest

from tests.fakes.discord import CONNECT, SPEAK, DiscordEmulator, EmuInteraction, EmuUser
from tests.fakes.discord.voice import ogg_opus, opus_duration
from tests.fakes.nanogpt import FakeNanoGPT
from tests.fixtures_bot import World

pytest_plugins = ["tests.fixtures_nanogpt", "tests.fixtures_bot"]

TOLERANCE = 0.2  # seconds: what a listener hears vs. the audio NanoGPT returned


@dataclass
class Call:
    world: World
    channel: dict[str, Any]

    @property
    def emu(self) -> DiscordEmulator:
        return self.world.emu

    @property
    def nano(self) -> FakeNanoGPT:
        return self.world.nano

    @property
    def channel_id(self) -> int:
        return int(self.channel["id"])

    async def member(self, name: str | None = None, *, channel_id: int | None = None,
                     guild_id: int | None = None) -> EmuUser:
        """A member who is in the voice channel (VOICE_STATE_UPDATE seen by the bot)."""
        if guild_id is None:
            user = self.world.user(name)
        else:
            user = self.emu.add_user(name=name, guild_id=guild_id)
        cid = channel_id or self.channel_id
        await self.emu.move_member(user, cid, guild_id)
        gid = guild_id or self.emu.guild_id
        await self.emu.wait_until(lambda: self._bot_sees(user.id, gid, cid), 5, "the bot to see the member in voice")
        return user

    def _bot_sees(self, user_id: int, guild_id: int, channel_id: int | None) -> bool:
        guild = self.world.bot.get_guild(guild_id)
        state = guild._voice_state_for(user_id) if guild is not None else None
        seen = state.channel.id if state is not None and state.channel is not None else None
        return seen == channel_id

    async def join(self, user: EmuUser, **options: Any) -> EmuInteraction:
        inter = await self.emu.slash(user, "join", options=options)
        await inter.wait_final(20)
        return inter

    async def say(self, user: EmuUser, text: str, **kwargs: Any) -> EmuInteraction:
        inter = await self.emu.slash(user, "say", options={"text": text}, **kwargs)
        await inter.wait_final(10)
        return inter

    def in_voice(self, guild_id: int | None = None) -> bool:
        guild = self.world.bot.get_guild(guild_id or self.emu.guild_id)
        return guild is not None and guild.voice_client is not None


@pytest.fixture
async def call(world: World) -> Call:
    channel = await world.emu.create_voice_channel("Lounge")
    await world.emu.wait_until(lambda: world.bot.get_channel(int(channel["id"])) is not None, 5,
                               "the bot to see the voice channel")
    return Call(world, channel)


def decoded_seconds(frames) -> float:
    """Decode the heard packets (as an Ogg/Opus file) with the bundled ffmpeg; seconds of PCM."""
    result = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "ogg", "-i", "pipe:0",
         "-f", "s16le", "-ac", "1", "-ar", "48000", "pipe:1"],
        input=ogg_opus(frames), capture_output=True, check=True)
    return len(result.stdout) / 2 / 48000


async def test_join_then_say_plays_the_speech_nanogpt_returned(call):
    alice = await call.member("alice")
    inter = await call.join(alice)
    assert "Joined" in inter.answer.content and call.channel["id"] in inter.answer.content
    assert call.in_voice()
    said = await call.say(alice, "hello everyone")
    assert said.answer.files, "the text answer with the audio file still happens"
    durations = await call.emu.wait_for_lines(1, timeout=10)
    assert abs(durations[0] - 1.0) <= TOLERANCE
    line = call.emu.heard_lines()[0]
    assert abs(decoded_seconds(line) - 1.0) <= TOLERANCE
    assert len(call.nano.charges) == 1  # the one paid speech, played: no second TTS call
    assert not call.emu.voice_errors
    assert not [f for f in call.emu.voice_frames() if f.header], "only Opus audio packets are sent"
    session = call.emu.voice_sessions[call.emu.guild_id]
    assert session.mode == "aead_xchacha20_poly1305_rtpsize"
    assert any(flags for _, flags in session.speaking)



async def wait_left(call: Call, guild_id: int | None = None, timeout: float = 10) -> None:  # noqa: ASYNC109
    gid = guild_id or call.emu.guild_id
    await call.emu.wait_until(lambda: call.emu.voice_channel_of(call.emu.bot_user, gid) is None
                              and not call.in_voice(gid), timeout, "the bot to leave voice")


async def test_lines_play_in_order_one_after_another(call):
    alice, bob = await call.member("alice"), await call.member("bob")
    await call.join(alice)
    for who, seconds, text in ((alice, 0.6, "first"), (bob, 1.2, "second"), (alice, 0.4, "third")):
        call.nano.tts_seconds = seconds
        await call.say(who, text)
    durations = await call.emu.wait_for_lines(3, timeout=15)
    assert len(durations) == 3
    for heard, sent in zip(durations, (0.6, 1.2, 0.4), strict=True):
        assert abs(heard - sent) <= TOLERANCE, durations
    lines = call.emu.heard_lines()
    assert lines[1][0].received_at >= lines[0][-1].received_at  # never two at once


async def test_say_from_someone_outside_the_channel_is_not_played(call):
    alice = await call.member("alice")
    await call.join(alice)
    outsider = call.world.user("outsider")
    said = await call.say(outsider, "not in the call")
    assert said.answer.files
    await asyncio.sleep(1.0)
    assert call.emu.voice_frames() == []


async def test_skip_stops_the_line_and_the_next_one_plays(call):
    alice, bob = await call.member("alice"), await call.member("bob")
    await call.join(alice)
    call.nano.tts_seconds = 3.0
    await call.say(alice, "a long line")
    call.nano.tts_seconds = 0.5
    await call.say(alice, "a short line")
    await call.emu.wait_until(lambda: len(call.emu.voice_frames()) >= 10, 5, "the first line to start")
    refused = await call.emu.slash(bob, "skip")
    assert "Only the member whose line is playing" in (await refused.wait_final()).content
    skipped = await call.emu.slash(alice, "skip")
    assert (await skipped.wait_final()).content == "Skipped."
    durations = await call.emu.wait_for_lines(2, timeout=10)
    assert durations[0] < 2.0  # cut short
    assert abs(durations[1] - 0.5) <= TOLERANCE


async def test_clear_empties_the_queue_for_a_manager_and_own_lines_for_a_member(call):
    alice, bob = await call.member("alice"), await call.member("bob")
    await call.join(alice)
    call.nano.tts_seconds = 1.5
    await call.say(alice, "playing now")
    call.nano.tts_seconds = 0.4
    await call.say(alice, "alice waits")
    await call.say(bob, "bob waits")
    await call.emu.wait_until(lambda: len(call.emu.voice_frames()) >= 5, 5, "the first line to start")
    mine = await call.emu.slash(bob, "clear")
    assert (await mine.wait_final()).content == "Removed 1 waiting line."
    await call.emu.move_member(call.emu.owner, call.channel_id)  # the guild owner manages the server
    everything = await call.emu.slash(call.emu.owner, "clear")
    assert (await everything.wait_final()).content == "Removed 1 waiting line."
    durations = await call.emu.wait_for_lines(1, timeout=10)
    await asyncio.sleep(1.0)
    assert len(call.emu.heard_lines()) == 1 and abs(durations[0] - 1.5) <= TOLERANCE


async def test_queue_bounds_refuse_clearly(call):
    alice = await call.member("alice")
    await call.join(alice)
    call.nano.tts_seconds = 2.0
    await call.say(alice, "line zero")
    call.nano.tts_seconds = 0.2
    answers = [await call.say(alice, f"line {i}") for i in range(1, 5)]
    last = answers[-1]
    await last.wait_followups(1)
    refusal = last.followups[-1]
    assert "already have 3 lines waiting" in refusal.content and refusal.ephemeral
    assert all(a.answer.files for a in answers)  # every text answer was still posted


async def test_leave_rules_and_leave(call):
    alice = await call.member("alice")
    await call.join(alice)
    outsider = call.world.user("outsider")
    refused = await call.emu.slash(outsider, "leave")
    assert "Only a member in my voice channel or a server manager" in (await refused.wait_final()).content
    assert call.in_voice()
    left = await call.emu.slash(alice, "leave")
    assert (await left.wait_final(10)).content.startswith("Left")
    await wait_left(call)
    again = await call.emu.slash(alice, "leave")
    assert (await again.wait_final()).content == "I'm not in a voice channel in this server."


async def test_manager_may_make_the_bot_leave_from_outside(call):
    alice = await call.member("alice")
    await call.join(alice)
    left = await call.emu.slash(call.emu.owner, "leave")
    assert (await left.wait_final(10)).content.startswith("Left")
    await wait_left(call)


async def test_leaves_when_alone_and_when_idle(call):
    alice = await call.member("alice")
    await call.join(alice)
    await call.emu.move_member(alice, None)
    await wait_left(call)
    await call.emu.move_member(alice, call.channel_id)
    await call.emu.wait_until(lambda: call._bot_sees(alice.id, call.emu.guild_id, call.channel_id), 5)
    await call.join(alice)
    call.world.clock.advance(290)
    await asyncio.sleep(1.5)
    assert call.in_voice()
    call.world.clock.advance(15)
    await wait_left(call)
    assert call.emu.voice_op4[-1]["channel_id"] is None


async def test_two_servers_play_independently(call):
    other = await call.emu.join_guild(name="Second")
    lounge = await call.emu.create_voice_channel("Hall", guild_id=other.id)
    await call.emu.wait_until(lambda: call.world.bot.get_channel(int(lounge["id"])) is not None, 5)
    alice = await call.member("alice")
    bob = await call.member("bob", channel_id=int(lounge["id"]), guild_id=other.id)
    await call.join(alice)
    inter = await call.emu.slash(bob, "join", channel_id=next(iter(other.channels)))
    await inter.wait_final(20)
    call.nano.tts_seconds = 1.0
    first = asyncio.create_task(call.say(alice, "here"))
    call.nano.tts_seconds = 1.0
    await call.emu.slash(bob, "say", options={"text": "there"}, channel_id=next(iter(other.channels)))
    await first
    await call.emu.wait_for_lines(1, timeout=10)
    await call.emu.wait_for_lines(1, guild_id=other.id, timeout=10)
    here, there = call.emu.heard_lines()[0], call.emu.heard_lines(other.id)[0]
    assert abs(opus_duration(here) - 1.0) <= TOLERANCE and abs(opus_duration(there) - 1.0) <= TOLERANCE
    assert here[0].ssrc != there[0].ssrc
    # at the same time, not one after the other
    assert there[0].received_at < here[-1].received_at and here[0].received_at < there[-1].received_at


async def test_voice_server_disconnect_mid_line_then_next_say_plays(call):
    alice = await call.member("alice")
    await call.join(alice)
    call.nano.tts_seconds = 2.0
    await call.say(alice, "interrupted")
    await call.emu.wait_until(lambda: len(call.emu.voice_frames()) >= 10, 5, "the line to start")
    sessions = len(call.emu.voice_session_log)
    await call.emu.close_voice(4006)
    await call.emu.wait_until(lambda: len(call.emu.voice_session_log) > sessions
                              and call.emu.voice_sessions[call.emu.guild_id].described_at is not None, 15,
                              "the bot to open a new voice session")
    heard = len(call.emu.voice_frames())
    call.nano.tts_seconds = 0.6
    await call.say(alice, "after the reconnect")
    await call.emu.wait_until(lambda: any(abs(d - 0.6) <= TOLERANCE for d in call.emu.heard_seconds()), 15,
                              "the next line to be heard")
    assert len(call.emu.voice_frames()) > heard
    assert call.in_voice()


async def test_kicked_from_voice_forgets_the_queue_and_can_join_again(call):
    alice = await call.member("alice")
    await call.join(alice)
    await call.emu.kick_from_voice()
    await wait_left(call)
    await call.join(alice)
    call.nano.tts_seconds = 0.5
    await call.say(alice, "back again")
    durations = await call.emu.wait_for_lines(1, timeout=10)
    assert abs(durations[0] - 0.5) <= TOLERANCE


async def test_dave_required_close_leaves_cleanly(call):
    cog = call.world.bot.get_cog("VoiceChannels")
    cog.RECONNECT_GRACE_SECONDS = 2.0
    alice = await call.member("alice")
    await call.join(alice)
    call.emu.voice_identify_close[call.emu.guild_id] = 4017  # every new voice session is refused
    await call.emu.close_voice(4017)
    await wait_left(call, timeout=20)
    del call.emu.voice_identify_close[call.emu.guild_id]
    await call.join(alice)
    assert call.in_voice()


async def test_missing_connect_permission_is_one_clear_sentence(call):
    locked = await call.emu.create_voice_channel("Locked", overwrites=[
        {"id": str(call.emu.bot_user.id), "type": 1, "allow": "0", "deny": str(CONNECT | SPEAK)}])
    await call.emu.wait_until(lambda: call.world.bot.get_channel(int(locked["id"])) is not None, 5)
    alice = await call.member("alice", channel_id=int(locked["id"]))
    inter = await call.emu.slash(alice, "join")
    answer = await inter.wait_final()
    assert answer.content == (f"I need the Connect and Speak permissions in <#{locked['id']}> to speak there; "
                              "ask a server manager to allow it.")
    assert answer.ephemeral and not call.emu.voice_op4


async def test_join_without_a_channel_says_what_to_do(call):
    loner = call.world.user("loner")
    inter = await call.emu.slash(loner, "join")
    assert (await inter.wait_final()).content == "Join a voice channel first, or name one: `/join channel:`."


async def test_join_a_named_channel(call):
    alice = call.world.user("alice")
    inter = await call.join(alice, channel=call.channel)
    assert inter.answer.content.startswith("Joined")
    assert call.emu.voice_channel_of(call.emu.bot_user) == call.channel_id


async def test_voice_playback_off_setting(call):
    alice = await call.member("alice")
    await call.join(alice)
    off = await call.emu.slash(call.emu.owner, "nanovoice", subcommand="settings", options={"voice_playback": False})
    assert "voice channel playback off" in (await off.wait_final()).content
    await call.say(alice, "should not play")
    await wait_left(call)
    assert opus_duration(call.emu.voice_frames()) == 0
    refused = await call.emu.slash(alice, "join")
    assert (await refused.wait_final()).content == "Voice playback is turned off in this server."


async def test_restart_is_not_stuck_in_a_channel(call):
    await call.world.stop()
    # What a crash leaves behind: Discord still shows the bot in the channel.
    call.emu.set_voice_state(call.emu.bot_user, call.channel_id)
    await call.world.start()
    await call.emu.wait_until(lambda: call.emu.voice_op4 and call.emu.voice_op4[-1]["channel_id"] is None, 10,
                              "the bot to leave the channel left over from before")
    assert call.emu.voice_channel_of(call.emu.bot_user) is None


async def test_speak_this_message_plays_too_and_a_cached_line_costs_nothing_more(call):
    alice = await call.member("alice")
    await call.join(alice)
    call.nano.tts_seconds = 0.5
    target = await call.emu.create_user_message(call.emu.channel_id, call.world.user("writer"), "read me aloud")
    first = await call.emu.message_context(alice, "Speak this message", target)
    await first.wait_final(10)
    again = await call.emu.message_context(alice, "Speak this message", target)
    await again.wait_final(10)
    durations = await call.emu.wait_for_lines(2, timeout=10)
    assert all(abs(d - 0.5) <= TOLERANCE for d in durations[:2])
    assert len(call.nano.charges) == 1  # the second line came from the TTS cache, and played all the same


async def test_voice_server_move_mid_line_then_next_say_plays(call):
    alice = await call.member("alice")
    await call.join(alice)
    call.nano.tts_seconds = 2.0
    await call.say(alice, "moving")
    await call.emu.wait_until(lambda: len(call.emu.voice_frames()) >= 10, 5, "the line to start")
    sessions = len(call.emu.voice_session_log)
    await call.emu.move_voice_server()
    await call.emu.wait_until(lambda: len(call.emu.voice_session_log) > sessions, 15, "a new voice session")
    call.nano.tts_seconds = 0.6
    await call.say(alice, "after the move")
    await call.emu.wait_until(lambda: any(abs(d - 0.6) <= TOLERANCE for d in call.emu.heard_seconds()), 15,
                              "the next line to be heard")
    assert call.in_voice() and not call.emu.voice_errors



@pytest.mark.slow
async def test_4015_resume_that_does_not_come_back_leaves_cleanly(call):
    # discord.py 2.7.1 answers 4015 with a RESUME after a new op 4; its state machine then waits for a
    # voice state update it already had, gives up after the connect timeout (15 s) and disconnects.
    alice = await call.member("alice")
    await call.join(alice)
    call.nano.tts_seconds = 2.0
    await call.say(alice, "resume me")
    await call.emu.wait_until(lambda: len(call.emu.voice_frames()) >= 10, 5, "the line to start")
    await call.emu.close_voice(4015)
    await wait_left(call, timeout=30)
    await call.join(alice)
    call.nano.tts_seconds = 0.5
    await call.say(alice, "back")
    await call.emu.wait_until(lambda: any(abs(d - 0.5) <= TOLERANCE for d in call.emu.heard_seconds()), 15,
                              "the next line to be heard")
