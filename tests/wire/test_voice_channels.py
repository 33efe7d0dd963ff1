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

from tests.fakes.discord import CONNECT, MANAGE_GUILD, SPEAK, DiscordEmulator, EmuInteraction, EmuUser
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

