"""VoiceService against a real, migrated SQLite database: listing, the name rules, rename, default,
delete, info and the autocomplete ranking, each scoped to the acting user."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from bot.clock import Clock
from bot.embeddings import EmbeddingHost
from bot.errors import NotFound, UserFacingError
from bot.providers.minimax import UNUSED_DAYS as MINIMAX_UNUSED_DAYS
from bot.storage import Database
from bot.voices import NAME_MAX, VoiceService, validate_voice_name
from tests.fixtures_db import add_job, add_minimax_voice, add_qwen_voice, make_config

NOW = 1_800_000_000.0
CREATED = NOW - 3600
ALICE, BOB = 1, 2


@pytest.fixture
async def voices(db: Database) -> AsyncIterator[VoiceService]:
    async with aiohttp.ClientSession() as session:  # the embedding host's; nothing here goes on the network
        host = EmbeddingHost(db, make_config(), Clock(NOW, frozen=True), session)
        yield VoiceService(db, Clock(NOW, frozen=True), host)


async def clone(db: Database, user_id: int, name: str, provider: str = "qwen", *, cost_micros: int | None = None,
                payment_source: str = "USD", **saved: object) -> int:
    """A saved voice, made as a clone makes it (tests.fixtures_db); with the cost its clone job recorded."""
    if provider == "minimax":
        voice_id = await add_minimax_voice(db, user_id, name, voice_id=f"nv1{user_id:03d}{name.casefold()}",
                                           now=CREATED, **saved)  # type: ignore[arg-type]
    else:
        voice_id = await add_qwen_voice(db, user_id, name, now=CREATED, **saved)  # type: ignore[arg-type]
    if cost_micros is not None:
        job = await db.jobs.for_voice(user_id, voice_id)
        assert job is not None
        await db.jobs.update(job.id, cost_micros=cost_micros, payment_source=payment_source)
    return voice_id


async def running(db: Database, user_id: int, name: str) -> int:
    """A clone of that name still running at NanoGPT."""
    return await add_job(db, user_id, name, state="pending", now=CREATED)


def test_voice_name_rules():
    assert validate_voice_name("  Zoë   the  Bard ") == "Zoë the Bard"
    assert len(validate_voice_name("x" * NAME_MAX)) == NAME_MAX
    for bad in ("", "   ", "x" * (NAME_MAX + 1)):
        with pytest.raises(UserFacingError, match="1–32 characters"):
            validate_voice_name(bad)
    for bad in ("a\u200bb", "a\u202eb", "line\nbreak", "\u3164"):
        with pytest.raises(UserFacingError, match="control, invisible or text-direction"):
            validate_voice_name(bad)


async def test_list_get_and_default_are_per_user(db, voices):
    await clone(db, ALICE, "Narrator")
    await clone(db, ALICE, "alpha")
    await clone(db, BOB, "Secret")
    assert [v.name for v in await voices.list_voices(ALICE)] == ["alpha", "Narrator"]
    assert (await voices.get(ALICE, "NARRATOR")).name == "Narrator"
    with pytest.raises(NotFound) as missing:
        await voices.get(ALICE, "Secret")  # Bob's
    assert str(missing.value) == "You have no voice called “Secret”; /voice list shows yours."

    assert (await voices.set_default(ALICE, "narrator")).name == "Narrator"
    assert (await voices.default_voice(ALICE)).name == "Narrator"
    assert await voices.default_voice(BOB) is None
    assert await voices.set_default(ALICE, " None ") is None  # a clearing word
    assert await voices.default_voice(ALICE) is None
    with pytest.raises(NotFound):
        await voices.set_default(ALICE, "Secret")


async def test_a_voice_called_like_a_clearing_word_is_chosen_not_cleared(db, voices):
    await clone(db, ALICE, "Off")
    assert (await voices.set_default(ALICE, "off")).name == "Off"
    assert (await voices.default_voice(ALICE)).name == "Off"


async def test_rename(db, voices):
    await clone(db, ALICE, "Narrator")
    await clone(db, ALICE, "Grandma")
    same = await voices.rename(ALICE, "narrator", "  Narrator ")
    assert (same.old, same.new, same.changed) == ("Narrator", "Narrator", False)
    case = await voices.rename(ALICE, "Narrator", "narrator")  # a change of case is a rename
    assert case.changed and [v.name for v in await voices.list_voices(ALICE)] == ["Grandma", "narrator"]
    done = await voices.rename(ALICE, "narrator", "The  Storyteller")
    assert (done.old, done.new, done.changed) == ("narrator", "The Storyteller", True)
    with pytest.raises(UserFacingError) as taken:
        await voices.rename(ALICE, "The Storyteller", "GRANDMA")
    assert str(taken.value) == ("You already have a voice called “GRANDMA”; pick another name or delete that "
                                "one first.")
    await running(db, ALICE, "Running")
    with pytest.raises(UserFacingError, match="A clone called “running” is already in progress"):
        await voices.rename(ALICE, "Grandma", "running")
    with pytest.raises(UserFacingError, match="Voice names"):
        await voices.rename(ALICE, "Grandma", "bad\u200bname")
    with pytest.raises(NotFound):
        await voices.rename(BOB, "Grandma", "Mine now")
    assert sorted(v.name for v in await voices.list_voices(ALICE)) == ["Grandma", "The Storyteller"]


async def test_names_taken_by_voices_or_running_clones_are_refused_for_new_voices(db, voices):
    await clone(db, ALICE, "Narrator")
    await running(db, ALICE, "Pending")
    with pytest.raises(UserFacingError, match="You already have a voice called “narrator”"):
        await voices.ensure_name_free(ALICE, "narrator")
    with pytest.raises(UserFacingError, match="A clone called “PENDING” is already in progress"):
        await voices.ensure_name_free(ALICE, "PENDING")
    await voices.ensure_name_free(ALICE, "Fresh")
    await voices.ensure_name_free(BOB, "Narrator")  # names are per user


async def test_delete_removes_the_voice_and_its_stored_embedding(db, voices):
    voice_id = await clone(db, ALICE, "Kept")  # with its stored embedding file
    bobs = await clone(db, BOB, "Bobs")
    await voices.set_default(ALICE, "Kept")
    assert not await voices.delete(ALICE, bobs)  # not hers
    assert await voices.delete(ALICE, voice_id)
    assert await voices.list_voices(ALICE) == [] and await voices.default_voice(ALICE) is None
    assert len(await db.files.for_user(BOB)) == 1 and await db.files.for_user(ALICE) == []
    assert not await voices.delete(ALICE, voice_id)  # already gone
    assert [v.name for v in await voices.list_voices(BOB)] == ["Bobs"]


async def test_info_minimax_keep_until_and_clone_cost(db, voices):
    await clone(db, ALICE, "Mini", "minimax", cost_micros=1_000_000)
    await voices.set_default(ALICE, "Mini")
    info = await voices.info(ALICE, "mini")
    assert info.is_default and info.now == NOW
    assert info.clone_job is not None and info.clone_job.cost_micros == 1_000_000
    assert info.keep_until == CREATED + MINIMAX_UNUSED_DAYS * 86_400
    assert info.stops_at is None


async def test_info_qwen_without_a_durable_copy_says_when_it_stops(db, voices):
    await clone(db, ALICE, "Q", "qwen", embedding_url="https://nano.example/e.pt", lifetime=3600 + 60)
    info = await voices.info(ALICE, "Q")
    assert not info.is_default and info.keep_until is None
    assert info.stops_at == NOW + 60  # no durable storage configured: the provider's copy is all there is


async def test_name_choices_rank_the_users_own_voices(db, voices):
    for name in ("Grandma", "Grandpa Joe", "Narrator", "The Grand Wizard"):
        await clone(db, ALICE, name)
    await clone(db, BOB, "Grand Secret")
    assert [v.name for v in await voices.name_choices(ALICE, "grand")] == ["Grandma", "Grandpa Joe",
                                                                          "The Grand Wizard"]
    assert [v.name for v in await voices.name_choices(ALICE, "")] == ["Grandma", "Grandpa Joe", "Narrator",
                                                                     "The Grand Wizard"]
    assert await voices.name_choices(ALICE, "zzzz") == []


async def test_recent_jobs_are_the_users_newest_first(db, voices):
    await clone(db, ALICE, "One")
    await running(db, ALICE, "Two")
    await running(db, BOB, "Three")
    assert [j.voice_name for j in await voices.recent_jobs(ALICE)] == ["Two", "One"]
    assert [j.voice_name for j in await voices.recent_jobs(ALICE, limit=1)] == ["Two"]
