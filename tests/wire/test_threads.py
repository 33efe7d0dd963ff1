"""Threads and forum posts over the wire: /say answers there, voice messages are posted there, and a clone
whose 15-minute token died tells its user in the thread. Discord asks for Send Messages in Threads there,
not Send Messages, and the emulator does the same."""

from __future__ import annotations

import pytest

from tests.fakes.discord import (
    ATTACH_FILES,
    SEND_MESSAGES,
    SEND_MESSAGES_IN_THREADS,
    SEND_VOICE_MESSAGES,
    VIEW_CHANNEL,
    DiscordAPIError,
)
from tests.fakes.nanogpt import Step
from tests.fixtures_bot import World

pytest_plugins = ["tests.fixtures_nanogpt", "tests.fixtures_audio", "tests.fixtures_bot"]

THREAD_ONLY = VIEW_CHANNEL | SEND_MESSAGES_IN_THREADS | ATTACH_FILES | SEND_VOICE_MESSAGES | (1 << 16)


async def with_thread(world: World, kind: str) -> int:
    """A public thread in the default channel, or a post in a new forum; the bot reconnects to see it
    in GUILD_CREATE's ``threads``."""
    if kind == "thread":
        thread = world.emu.add_thread("a thread")
    else:
        forum = world.emu.add_channel("ideas", type=15)
        thread = world.emu.add_thread("a forum post", parent_id=int(forum["id"]))
    await world.restart()
    tid = int(thread["id"])
    cached = world.bot.get_channel(tid)
    assert cached is not None and cached.type.value == 11 and cached.parent_id == int(thread["parent_id"])
    if kind == "forum post":
        assert cached.parent is not None and cached.parent.type.value == 15
    return tid


@pytest.mark.parametrize("kind", ["thread", "forum post"])
async def test_say_answers_in_the_thread(world: World, kind: str):
    tid = await with_thread(world, kind)
    alice = world.user("alice")
    inter = await world.emu.slash(alice, "say", options={"text": "hello thread"}, channel_id=tid)
    reply = await inter.wait_final(10)
    assert reply.channel_id == tid and not reply.ephemeral
    assert reply.content.startswith("> hello thread\n-# 🔊 Synthetic stock voice") and reply.files


@pytest.mark.parametrize("kind", ["thread", "forum post"])
async def test_voice_message_in_a_thread_needs_only_send_messages_in_threads(world: World, kind: str):
    tid = await with_thread(world, kind)
    world.emu.set_member_permissions(world.emu.bot_user, THREAD_ONLY)  # no Send Messages at all
    alice = world.user("alice")
    inter = await world.emu.slash(alice, "say", options={"text": "spoken here", "voice_message": True},
                                  channel_id=tid)
    await world.emu.wait_until(lambda: any(m.is_voice_message for m in world.emu.channel_messages(tid)), 10,
                               "a voice message in the thread")
    [voice] = [m for m in world.emu.channel_messages(tid) if m.is_voice_message]
    assert voice.files[0].content_type == "audio/ogg" and voice.pinged_user_ids == []
    answer = inter.original
    assert answer.channel_id == tid and answer.content.startswith("🔊 Synthetic stock voice")
    assert int(voice.data["message_reference"]["message_id"]) == answer.id
    assert not [m for m in world.emu.channel_messages(world.emu.channel_id) if m.source == "channel"]


async def test_the_emulator_asks_for_send_messages_in_threads_in_a_thread(world: World):
    thread = world.emu.add_thread("strict")
    world.emu.set_member_permissions(world.emu.bot_user, VIEW_CHANNEL | SEND_MESSAGES)
    with pytest.raises(DiscordAPIError) as refused:
        world.emu._check_send_permissions(int(thread["id"]), {})
    assert (refused.value.status, refused.value.code) == (403, 50013)
    world.emu._check_send_permissions(world.emu.channel_id, {})  # the parent channel is fine
    world.emu.set_member_permissions(world.emu.bot_user, VIEW_CHANNEL | SEND_MESSAGES_IN_THREADS)
    world.emu._check_send_permissions(int(thread["id"]), {})
    forum = world.emu.add_channel("forum", type=15)
    with pytest.raises(DiscordAPIError):
        world.emu._check_send_permissions(int(forum["id"]), {})
    assert SEND_MESSAGES != SEND_MESSAGES_IN_THREADS == 1 << 38


@pytest.mark.parametrize("kind", ["thread", "forum post"])
async def test_a_late_clone_notice_goes_to_the_thread_mentioning_only_the_user(world: World, audio_corpus,
                                                                              kind: str):
    tid = await with_thread(world, kind)
    await world.restart(CLONE_CONFIRM="false")
    world.emu.set_member_permissions(world.emu.bot_user, THREAD_ONLY)
    world.nano.clone_script = [Step("processing", poll_after=0.3), Step("completed")]
    alice = world.user("alice")
    attachment = world.emu.add_attachment(audio_corpus("mp3", 4), "a.mp3", "audio/mpeg")
    inter = await world.emu.slash(alice, "voice", subcommand="clone", channel_id=tid,
                                  options={"audio": attachment, "name": "Threaded", "provider": "qwen"})
    await world.emu.wait_until(lambda: inter.original is not None and not inter.original.loading, 10, "the card")
    world.clock.advance(16 * 60)  # the interaction token is dead by the time the job completes
    world.emu.clock_offset = 16 * 60

    def notices(channel_id):
        return [m for m in world.emu.channel_messages(channel_id) if m.source == "channel"]

    await world.emu.wait_until(lambda: notices(tid), 10, "the notice in the thread")
    (notice,) = notices(tid)
    assert notice.content.startswith(f"<@{alice.id}> ") and "“Threaded” is ready" in notice.content
    assert notice.pinged_user_ids == [alice.id] and notice.allowed_mentions["parse"] == []
    assert "synthetic voice" in notice.content and notice.files[0].filename.startswith("sample.")
    assert notices(world.emu.channel_id) == []  # not in the parent channel
