"""State several bot processes must share: the owner's blocks (kept in memory by each process for the gate,
following the others' changes on PostgreSQL) and the /say cooldown (one atomic claim per line in the database
on PostgreSQL, in memory on SQLite). The repositories run on both backends; the cross-process tests use two
Database instances (two pools, as two bot processes have) on one PostgreSQL schema."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from bot.clock import Clock
from bot.embeddings import EmbeddingHost
from bot.limits import Cooldown, SharedCooldown
from bot.policy import USER_BLOCKED, Blocks
from bot.privacy import Privacy
from tests.fixtures_db import add_qwen_voice, make_config
from tests.fixtures_postgres import BACKENDS

NOON = 1764072000.0  # 2025-11-25 12:00 UTC
USER, OTHER = 4242, 4343
OWNER = 1


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The repository tests here run on SQLite and on PostgreSQL."""
    return request.param


async def _eventually(predicate, seconds: float = 2.0) -> bool:
    deadline = asyncio.get_running_loop().time() + seconds
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


# -- the cooldown repository (both backends) --------------------------------------------------------------

async def test_cooldown_claim_holds_for_its_seconds_then_passes(db):
    assert await db.cooldowns.claim(USER, NOON, 3.0)
    assert not await db.cooldowns.claim(USER, NOON + 2.9, 3.0)
    assert await db.cooldowns.claim(OTHER, NOON + 1, 3.0)  # per user
    assert await db.cooldowns.last(USER) == NOON  # a refused claim moves nothing
    assert await db.cooldowns.claim(USER, NOON + 3.0, 3.0)
    assert await db.cooldowns.last(USER) == NOON + 3.0


async def test_cooldown_release_removes_only_the_claim_it_names(db):
    assert await db.cooldowns.claim(USER, NOON, 3.0)
    assert not await db.cooldowns.release(USER, NOON - 10)  # someone else's older claim: nothing
    assert await db.cooldowns.last(USER) == NOON
    assert await db.cooldowns.release(USER, NOON)
    assert await db.cooldowns.last(USER) is None
    assert await db.cooldowns.claim(USER, NOON + 0.5, 3.0)


async def test_cooldown_prune_deletes_only_finished_rows(db):
    await db.cooldowns.claim(USER, NOON, 3.0)
    await db.cooldowns.claim(OTHER, NOON + 10, 3.0)
    assert await db.cooldowns.prune(NOON + 5) == 1
    assert await db.cooldowns.last(USER) is None and await db.cooldowns.last(OTHER) == NOON + 10


async def test_forget_me_deletes_the_cooldown_row_without_listing_it(db):
    await db.cooldowns.claim(USER, NOON, 3.0)
    await db.cooldowns.claim(OTHER, NOON, 3.0)
    privacy = Privacy(db)
    assert "say_cooldowns" not in await privacy.stored(USER)  # short-lived: /forget-me's list stays as it was
    done = await privacy.forget(USER)
    assert done.count("say_cooldowns") == 1
    assert await db.cooldowns.last(USER) is None and await db.cooldowns.last(OTHER) == NOON


async def test_block_and_unblock_keep_their_results(db):
    blocks = await Blocks(db).start()
    try:
        block = await blocks.block("user", USER, "spam", OWNER, NOON)
        assert (block.kind, block.target_id, block.reason) == ("user", USER, "spam")
        assert blocks.refusal(USER, None) == USER_BLOCKED
        again = await blocks.block("user", USER, "still spam", OWNER, NOON + 5)
        assert again.reason == "still spam" and again.created_at == NOON  # re-block: new reason, same block
        assert [b.reason for b in await db.blocks.list()] == ["still spam"]
        assert await blocks.unblock("user", USER)
        assert not await blocks.unblock("user", USER)
        assert blocks.refusal(USER, None) is None and await db.blocks.list() == []
    finally:
        await blocks.close()


async def test_shared_cooldown_on_one_database(db):
    clock = Clock(NOON, frozen=True)
    cooldown = SharedCooldown(3.0, clock, db)
    assert await cooldown.claim(USER) is None
    clock.advance(1.0)
    assert await cooldown.claim(USER) == pytest.approx(2.0)
    await cooldown.release(USER)  # this process's claim is gone: the user may speak again
    assert await cooldown.claim(USER) is None
    assert await SharedCooldown(0, clock, db).claim(USER) is None  # SAY_COOLDOWN_SECONDS=0: never waits
    assert cooldown.message(2.0) == Cooldown(3.0, clock).message(2.0)  # the same sentence


# -- across two processes (PostgreSQL) ----------------------------------------------------------------------

async def test_a_block_given_through_one_process_holds_in_the_other(two_processes):
    first, second = two_processes
    here, there = await Blocks(first).start(), await Blocks(second).start()
    try:
        await here.block("user", USER, "spam", OWNER, NOON)
        assert await _eventually(lambda: there.refusal(USER, 77) == USER_BLOCKED)
        assert [(b.kind, b.target_id, b.reason) for b in there.all()] == [("user", USER, "spam")]
        await here.block("guild", 77, None, OWNER, NOON)
        assert await _eventually(lambda: there.refusal(OTHER, 77) is not None)
        await here.unblock("user", USER)
        await here.unblock("guild", 77)
        assert await _eventually(lambda: there.refusal(USER, 77) is None)
        assert there.all() == []
    finally:
        await asyncio.gather(here.close(), there.close())


async def test_blocks_are_read_again_while_the_other_processes_cannot_be_heard(two_processes):
    first, second = two_processes
    here, there = await Blocks(first).start(), await Blocks(second, poll_seconds=0.1).start()
    try:
        await second.backend._listener.close()  # as if the connection dropped; it is restored after 1 s
        assert not second.caches_safely
        await here.block("user", USER, None, OWNER, NOON)
        assert await _eventually(lambda: there.refusal(USER, None) == USER_BLOCKED, 0.9)  # read, not heard
        assert not second.caches_safely
        await asyncio.sleep(1.5)
        assert second.caches_safely  # listening again: changes are heard as before
        await here.unblock("user", USER)
        assert await _eventually(lambda: there.refusal(USER, None) is None)
    finally:
        await asyncio.gather(here.close(), there.close())


async def test_fifty_concurrent_cooldown_claims_for_one_user_across_two_processes_give_one(two_processes):
    clock = Clock(NOON, frozen=True)
    cooldowns = [SharedCooldown(60.0, clock, db) for db in two_processes]
    results = await asyncio.gather(*(cooldowns[i % 2].claim(USER) for i in range(50)))
    assert sum(r is None for r in results) == 1
    assert all(r == pytest.approx(60.0) for r in results if r is not None)
    # The same on the repository, with each claim at its own time within the cooldown.
    results2 = await asyncio.gather(*(two_processes[i % 2].cooldowns.claim(OTHER, NOON + i / 100, 60.0)
                                      for i in range(50)))
    assert sum(results2) == 1


async def test_a_release_in_one_process_leaves_the_others_claim(two_processes):
    clock = Clock(NOON, frozen=True)
    here, there = (SharedCooldown(10.0, clock, db) for db in two_processes)
    assert await here.claim(USER) is None
    await here.release(USER)
    clock.advance(1)
    assert await there.claim(USER) is None  # the other process's line
    await here.release(USER)  # nothing of this process's left to release
    assert await here.claim(USER) == pytest.approx(10.0)


async def test_an_embedding_copy_is_posted_once_when_two_processes_need_it_at_once(two_processes):
    """EMBEDDING_CHANNEL_ID: two processes needing a Qwen voice's copy at the same moment post one message
    (a second one would be left in the channel, never deleted, not even by /forget-me)."""
    posted: list[int] = []

    async def rehost(data: bytes, filename: str) -> tuple[str, float | None, int]:
        await asyncio.sleep(0.2)  # an upload to Discord takes a while
        posted.append(len(posted) + 1)
        return f"https://cdn.example/attachments/1/{posted[-1]}/{filename}", NOON + 86_400, posted[-1]

    async def refresh(message_id: int) -> tuple[str, float | None]:
        raise LookupError(message_id)

    first, second = two_processes
    voice_id = await add_qwen_voice(first, USER, "Q", embedding_url=None, embedding=b"\x00" * 64,
                                    filename="speaker-embedding.safetensors", transcript=None, guild_id=1,
                                    now=NOON, lifetime=7 * 86_400)
    config = make_config(embedding_channel_id=777)
    async with aiohttp.ClientSession() as session:
        hosts = [EmbeddingHost(db, config, Clock(NOON, frozen=True), session) for db in two_processes]
        for host in hosts:
            host.set_discord_hooks(rehost, refresh)
        voice = await first.voices.get(USER, voice_id)
        urls = await asyncio.gather(*(hosts[i % 2].url_for(voice) for i in range(6)))
    assert len(posted) == 1 and set(urls) == {(await second.files.get(voice.embedding_file_id)).discord_url}
