"""The voice queue's rules (bot.playback), without Discord: bounds, order, /skip and /clear, leaving."""

from __future__ import annotations

import asyncio

import pytest

from bot.clock import Clock
from bot.errors import Forbidden, UserFacingError
from bot.playback import LEFT_ALONE, LEFT_IDLE, GuildQueue, Playback, QueueFull

GUILD = 10**17


def make(max_lines: int = 10, max_per_member: int = 3) -> tuple[Playback, GuildQueue, Clock]:
    clock = Clock(1_000_000.0, frozen=True)
    playback = Playback(clock, 300, max_lines=max_lines, max_per_member=max_per_member)
    return playback, playback.queue(GUILD), clock


def line(playback: Playback, author: int, label: str = "v"):
    return playback.line(GUILD, author, b"audio", "audio/mpeg", label)


async def test_lines_come_out_in_the_order_they_were_queued():
    playback, queue, _ = make()
    lines = [line(playback, author) for author in (1, 2, 1)]
    assert [queue.add(x) for x in lines] == [0, 1, 2]
    got = []
    for _ in lines:
        current = await queue.next_line()
        assert queue.current is current
        got.append(current.id)
        queue.finished(current)
    assert got == [x.id for x in lines]
    assert not queue.playing


async def test_next_line_waits_for_a_line():
    playback, queue, _ = make()
    waiter = asyncio.create_task(queue.next_line())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    first = line(playback, 1)
    queue.add(first)
    assert (await asyncio.wait_for(waiter, 1)) is first


def test_the_line_playing_counts_ahead_but_not_against_the_bounds():
    playback, queue, _ = make(max_lines=2, max_per_member=5)
    queue.current = line(playback, 1)
    assert queue.add(line(playback, 2)) == 1
    assert queue.add(line(playback, 3)) == 2
    with pytest.raises(QueueFull, match=r"full \(2 lines waiting\)"):
        queue.add(line(playback, 4))


def test_a_member_may_have_only_so_many_lines_waiting():
    playback, queue, _ = make(max_per_member=2)
    queue.add(line(playback, 1))
    queue.add(line(playback, 1))
    with pytest.raises(QueueFull, match="You already have 2 lines waiting"):
        queue.add(line(playback, 1))
    assert queue.add(line(playback, 2)) == 2  # someone else still may


def test_skip_is_for_the_author_or_a_manager():
    playback, queue, _ = make()
    with pytest.raises(UserFacingError, match="Nothing is playing"):
        queue.check_skip(1, manager=True)
    queue.current = line(playback, 1)
    assert queue.check_skip(1, manager=False) is queue.current
    assert queue.check_skip(2, manager=True) is queue.current
    with pytest.raises(Forbidden, match="Only the member whose line is playing"):
        queue.check_skip(2, manager=False)


def test_clear_takes_everyone_s_lines_for_a_manager_and_own_lines_otherwise():
    playback, queue, _ = make()
    for author in (1, 2, 1, 3):
        queue.add(line(playback, author))
    assert queue.clear(1, manager=False) == 2
    assert [x.author_id for x in queue.pending] == [2, 3]
    with pytest.raises(Forbidden, match="You have no lines waiting"):
        queue.clear(1, manager=False)
    assert queue.clear(9, manager=True) == 2
    assert queue.clear(9, manager=True) == 0
    assert queue.clear(1, manager=False) == 0  # nothing waiting at all: nothing to refuse


def test_leave_when_alone_at_once_and_when_idle_after_the_configured_time():
    playback, _, clock = make()
    assert playback.leave_reason(GUILD, humans_in_channel=0) == LEFT_ALONE
    assert playback.leave_reason(GUILD, humans_in_channel=1) is None
    clock.advance(299)
    assert playback.leave_reason(GUILD, humans_in_channel=1) is None
    clock.advance(1)
    assert playback.leave_reason(GUILD, humans_in_channel=1) == LEFT_IDLE
    playback.touch(GUILD)  # a line started or ended
    assert playback.leave_reason(GUILD, humans_in_channel=1) is None


def test_never_idle_while_playing_or_lines_wait():
    playback, queue, clock = make()
    queue.add(line(playback, 1))
    clock.advance(10_000)
    assert playback.leave_reason(GUILD, humans_in_channel=2) is None
    assert playback.leave_reason(GUILD, humans_in_channel=0) == LEFT_ALONE  # alone still leaves


def test_forget_drops_the_queue_and_counts_unplayed_lines():
    playback, queue, _ = make()
    queue.current = line(playback, 1)
    queue.add(line(playback, 2))
    assert playback.forget(GUILD) == 1
    assert playback.existing(GUILD) is None and playback.guild_ids() == []
    assert playback.queue(GUILD) is not queue  # a new session starts empty


async def test_forget_me_drops_only_that_member_s_waiting_lines():
    playback, queue, _ = make()
    for author in (1, 2, 1):
        queue.add(line(playback, author))
    assert await playback.forget_user(1) == 2
    assert [x.author_id for x in queue.pending] == [2]
    assert await playback.forget_user(1) == 0


async def test_a_line_gives_its_ffmpeg_slot_back_once_transcoded():
    from bot import audio
    from cogs.voice_channels import open_source
    from tests.fakes.nanogpt import make_tone_async

    slot = audio.ffmpeg_slot()
    free = slot._value
    source = await open_source(await make_tone_async(1.0), "audio/mpeg")
    packets = []
    try:
        while packet := await asyncio.to_thread(source.read):
            packets.append(packet)
        for _ in range(100):  # the release is handed to the loop from the reading thread
            if slot._value == free:
                break
            await asyncio.sleep(0.01)
        assert slot._value == free
    finally:
        source.cleanup()
    assert 48 <= len(packets) <= 53  # 20 ms Opus packets for 1 s of speech
    assert not any(p.startswith((b"OpusHead", b"OpusTags")) for p in packets)
