"""The privacy service over the real repositories: /forget-me deletes one user's rows everywhere, detaches
their spending, asks every registered holder, and leaves everyone else's data alone."""

from __future__ import annotations

import pytest

from bot.privacy import Privacy
from bot.storage import ANONYMOUS_USER
from tests.fixtures_db import add_job, add_minimax_voice, add_qwen_voice, ledger_rows

ME, OTHER, GUILD = 7, 8, 1


async def _charge(db, user_id: int, amount: int) -> None:
    async with db.transaction() as tx:
        entry = await db.ledger.reserve(tx, user_id=user_id, guild_id=GUILD, kind="clone", ref=f"run-{user_id}",
                                        amount_micros=amount, day="2026-01-01", now=0)
    assert await db.ledger.settle(entry, amount, "USD", None, now=1)


async def _everything_of(db, user_id: int, tag: str) -> None:
    voice = await add_minimax_voice(db, user_id, "Mine", voice_id=f"nv{tag}")
    await add_qwen_voice(db, user_id, "Kept")
    await add_job(db, user_id, "Running", state="processing")
    await db.user_settings.set_default_voice(user_id, voice, now=1)
    await db.cache.put(f"k{tag}", user_id, "audio/mpeg", b"abc", now=1, max_bytes=10**6)
    await _charge(db, user_id, 1_000_000)


class Memory:
    """A holder of user data kept in memory, as the services are."""

    def __init__(self, db, held: dict[int, int]) -> None:
        self.db, self.held, self.saw_rows = db, held, None

    async def forget_user(self, user_id: int) -> int:
        self.saw_rows = await self.db.voices.count_user_data(user_id)  # the rows are still there to look up
        return self.held.pop(user_id, 0)


async def test_forget_deletes_every_row_of_one_user_only(db):
    await _everything_of(db, ME, "1")
    await _everything_of(db, OTHER, "2")
    privacy = Privacy(db)
    before = await privacy.stored(ME)
    assert before == await privacy.stored(OTHER)
    assert {k: n for k, n in before.items() if n} == {
        "voices": 2, "clone_jobs": 3, "tts_cache": 1, "user_settings": 1, "stored_files": 1}
    assert "ledger" not in before  # detached, not deleted: not announced as deleted

    done = await privacy.forget(ME)

    assert {k: n for k, n in done.rows.items() if n} == {**{k: n for k, n in before.items() if n}, "ledger": 1}
    assert done.count("voices") == 2 and done.count("nothing such") == 0
    assert not any((await privacy.stored(ME)).values())
    assert await db.voices.list(ME) == [] and await db.jobs.for_user(ME) == [] and await db.files.for_user(ME) == []
    assert await db.user_settings.default_voice(ME) is None and await db.cache.user_keys(ME) == []
    # The other user keeps everything.
    assert await privacy.stored(OTHER) == before
    assert (await db.user_settings.default_voice(OTHER)).name == "Mine"
    # The guild's spend stays, detached from the user.
    assert await db.ledger.guild_spend(GUILD, "2026-01-01") == 2_000_000
    assert await db.ledger.user_spend(ME) == 0 and await db.ledger.user_spend(OTHER) == 1_000_000
    mine = [r for r in await ledger_rows(db) if r["user_id"] == ANONYMOUS_USER]
    assert len(mine) == 1 and mine[0]["ref"] is None


async def test_forget_asks_every_holder_before_the_rows_go(db):
    await _everything_of(db, ME, "1")
    privacy = Privacy(db)
    memory = Memory(db, {ME: 3, OTHER: 4})
    privacy.register("memory", memory)
    with pytest.raises(ValueError):
        privacy.register("memory", memory)  # one holder per name
    done = await privacy.forget(ME)
    assert done.forgotten == {"memory": 3} and memory.held == {OTHER: 4}
    assert memory.saw_rows == 2


async def test_blocks_and_server_settings_are_not_the_users_to_delete(db):
    """/forget-me must not lift a block on the user, nor change a server's settings."""
    await db.blocks.add("user", ME, "spam", blocked_by=1, now=0)
    await db.guilds.update(GUILD, 0, clone_role_id=ME)
    done = await Privacy(db).forget(ME)
    assert done.count("blocks") == 0 and done.count("guild_settings") == 0
    assert [b.target_id for b in await db.blocks.list()] == [ME]
    assert (await db.guilds.get(GUILD)).clone_role_id == ME


async def test_a_failing_repository_deletes_nothing(db):
    """The rows go in one transaction: when one repository fails, every other one's rows stay."""
    await _everything_of(db, ME, "1")
    privacy = Privacy(db)
    before = await privacy.stored(ME)

    async def broken(user_id, tx=None):
        raise RuntimeError("disk full")

    db.files.delete_user_data = broken  # the last repository with rows of the user
    with pytest.raises(RuntimeError):
        await privacy.forget(ME)
    del db.files.delete_user_data
    assert await privacy.stored(ME) == before
