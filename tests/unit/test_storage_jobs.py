"""Clone-job storage: the name check at insert, unique customVoiceIds, claims (create, heartbeat, the orphan
sweep, fenced writes, two sweepers racing), lost submits, one-transaction completion."""

from __future__ import annotations

import asyncio

import pytest

from bot.storage import BotInstance, Claim, Database, DuplicateVoiceName, LeaseLost
from bot.storage.jobs import CLAIMS_TOPIC
from tests.fixtures_db import add_qwen_voice
from tests.fixtures_postgres import BACKENDS


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Every test here runs on SQLite and on PostgreSQL."""
    return request.param


async def _job(db, user_id=1, name="Alice", provider="minimax", ids=None, owner=None):
    ids = iter(ids or ["nv1aaaaaaaa"])
    return await db.jobs.create(
        user_id=user_id, guild_id=10, channel_id=20, application_id=30, interaction_token="tok",
        token_expires_at=1000.0, voice_name=name, provider=provider, transcript="hello there",
        clone_model=None, now=1.0, make_custom_voice_id=(lambda: next(ids)) if provider == "minimax" else None,
        owner=owner, lease_until=61.0 if owner else None,
    )


async def test_create_job_checks_names_of_voices_and_open_jobs(db):
    job_id, cvid = await _job(db)
    assert cvid == "nv1aaaaaaaa"
    job = await db.jobs.get(job_id)
    assert job.state == "submitting" and job.run_id is None and job.interaction_token == "tok"
    with pytest.raises(DuplicateVoiceName):
        await _job(db, name="ALICE", ids=["nv2bbbbbbbb"])
    assert await db.jobs.open_names(1) == ["Alice"]
    # Another user may use the name; a finished job frees it.
    await _job(db, user_id=2, name="alice", ids=["nv3cccccccc"])
    assert await db.jobs.finish(job_id, "failed", error="x", now=2.0, notified=True)
    assert not await db.jobs.finish(job_id, "failed", error="x", now=2.0)  # not open any more
    assert (await db.jobs.get(job_id)).notified_at == 2.0
    await _job(db, name="alice", ids=["nv4dddddddd"])


async def test_custom_voice_id_is_regenerated_when_taken(db):
    await _job(db, name="one", ids=["nv1aaaaaaaa"])
    _, cvid = await _job(db, name="two", ids=["nv1aaaaaaaa", "nv1aaaaaaaa", "nv5eeeeeeee"])
    assert cvid == "nv5eeeeeeee"


async def test_orphaned_submitting_jobs_become_lost_and_live_owners_keep_theirs(db):
    """The sweep after a restart: a 'submitting' job nobody alive follows is lost (once); the one a live
    process is submitting right now, and a job with its run recorded, are not lost."""
    await db.instances.beat(BotInstance("live", 0.0, 4.0, 1, "h", None))
    a, _ = await _job(db, name="a", ids=["nv1aaaaaaaa"])  # no owner: what a crash before 0006 leaves
    b, _ = await _job(db, name="b", ids=["nv2aaaaaaaa"], owner="live")
    c, _ = await _job(db, name="c", ids=["nv3aaaaaaaa"])
    await db.jobs.update(c, state="pending", run_id="run-c")
    adopted, lost = await db.jobs.adopt("me", now=5.0, lease_until=65.0, lost_error="lost!")
    assert lost == [a] and [j.id for j in adopted] == [a, c]
    assert all(j.claimed_by == "me" and j.lease_epoch == 1 and j.lease_until == 65.0 for j in adopted)
    job = await db.jobs.get(a)
    assert job.state == "lost" and job.error == "lost!" and job.notified_at is None and job.finished_at == 5.0
    assert (await db.jobs.get(b)).state == "submitting" and (await db.jobs.get(c)).state == "pending"
    assert [j.id for j in await db.jobs.unnotified_finished()] == [a]
    assert await db.jobs.adopt("me", now=6.0, lease_until=66.0, lost_error="lost!") == ([], [])  # mine now
    claim = Claim("me", 1)
    assert await db.jobs.mark_notified(a, 6.0, claim=claim)
    await db.jobs.unmark_notified(a, claim=claim)
    assert await db.jobs.mark_notified(a, 7.0, claim=claim)
    assert not await db.jobs.mark_notified(a, 8.0, claim=claim)


async def test_create_claims_the_job_for_its_owner(db):
    job_id, _ = await _job(db, owner="me")
    job = await db.jobs.get(job_id)
    assert (job.claimed_by, job.lease_epoch, job.lease_until) == ("me", 1, 61.0)
    assert job.claim == Claim("me", 1)
    unowned = await db.jobs.get((await _job(db, name="Bob", ids=["nv2bbbbbbbb"]))[0])
    assert (unowned.claimed_by, unowned.lease_epoch, unowned.lease_until, unowned.claim) == (None, 0, None, None)


async def test_the_heartbeat_renews_only_its_own_unannounced_jobs(db):
    mine, _ = await _job(db, name="mine", ids=["nv1aaaaaaaa"], owner="me")
    theirs, _ = await _job(db, name="theirs", ids=["nv2aaaaaaaa"], owner="them")
    told, _ = await _job(db, name="told", ids=["nv3aaaaaaaa"], owner="me")
    assert await db.jobs.finish(told, "failed", error="x", now=2.0, notified=True, claim=Claim("me", 1))
    assert await db.jobs.renew("me", 500.0) == 1
    assert [(await db.jobs.get(j)).lease_until for j in (mine, theirs, told)] == [500.0, 61.0, 61.0]


async def test_the_sweep_adopts_only_jobs_of_dead_or_expired_owners(db):
    await db.instances.beat(BotInstance("alive", 0.0, 100.0, 1, "h", None))
    await db.instances.beat(BotInstance("expired", 0.0, 100.0, 2, "h", None))
    alive, _ = await _job(db, name="alive", ids=["nv1aaaaaaaa"], owner="alive")
    await db.jobs.update(alive, state="pending", run_id="run-alive", claim=Claim("alive", 1))
    expired, _ = await _job(db, name="expired", ids=["nv2aaaaaaaa"], owner="expired")
    await db.jobs.update(expired, state="processing", run_id="run-expired", claim=Claim("expired", 1))
    gone, _ = await _job(db, name="gone", ids=["nv3aaaaaaaa"], owner="gone")  # no bot_instances row
    await db.jobs.update(gone, state="pending", run_id="run-gone", claim=Claim("gone", 1))
    finished, _ = await _job(db, name="finished", ids=["nv4aaaaaaaa"], owner="gone")
    await db.jobs.finish(finished, "failed", error="x", now=2.0, claim=Claim("gone", 1))
    announced, _ = await _job(db, name="told", ids=["nv5aaaaaaaa"], owner="gone")
    await db.jobs.finish(announced, "failed", error="x", now=2.0, notified=True, claim=Claim("gone", 1))
    await db.jobs.renew("alive", 200.0)  # the live owner's heartbeat; "expired" missed its own
    adopted, lost = await db.jobs.adopt("me", now=100.0, lease_until=160.0, lost_error="lost!")
    assert lost == [] and [j.id for j in adopted] == [expired, gone, finished]
    assert {j.state for j in adopted} == {"processing", "pending", "failed"}
    assert all(j.claim == Claim("me", 2) for j in adopted)
    assert (await db.jobs.get(alive)).claim == Claim("alive", 1)
    assert (await db.jobs.get(announced)).claim == Claim("gone", 1)  # told the user: nothing left to do


async def test_a_released_job_is_adopted_at_once(db):
    await db.instances.beat(BotInstance("left", 0.0, 100.0, 1, "h", None))
    job_id, _ = await _job(db, owner="left")
    await db.jobs.update(job_id, state="pending", run_id="run-1", claim=Claim("left", 1))
    assert await db.jobs.release("left") == 1
    (adopted,), _ = await db.jobs.adopt("me", now=2.0, lease_until=62.0, lost_error="lost!")
    assert adopted.id == job_id and adopted.claim == Claim("me", 2)


async def test_a_write_under_a_stale_claim_changes_nothing(db):
    await db.instances.beat(BotInstance("new", 0.0, 100.0, 1, "h", None))
    job_id, _ = await _job(db, provider="qwen", owner="old")
    await db.jobs.update(job_id, state="pending", run_id="run-1", poll_count=1, claim=Claim("old", 1))
    (adopted,), _ = await db.jobs.adopt("new", now=100.0, lease_until=160.0, lost_error="lost!")
    stale, fresh = Claim("old", 1), Claim("new", 2)
    assert adopted.claim == fresh
    with pytest.raises(LeaseLost):
        await db.jobs.update(job_id, poll_count=99, state="processing", claim=stale)
    with pytest.raises(LeaseLost):
        await db.jobs.finish(job_id, "failed", error="stale", now=101.0, claim=stale)
    with pytest.raises(LeaseLost):
        await db.jobs.complete(job_id, now=101.0, embedding_url="https://x/e", claim=stale)
    with pytest.raises(LeaseLost):
        await db.jobs.mark_notified(job_id, 101.0, claim=stale)
    assert await db.jobs.adopt("old", now=100.0, lease_until=160.0, lost_error="x") == ([], [])  # "new" leases it
    job = await db.jobs.get(job_id)
    assert (job.state, job.poll_count, job.error, job.notified_at, job.voice_id) == ("pending", 1, None, None, None)
    assert await db.voices.list(1) == []
    # The new owner's writes go through; a re-claim by the old owner's epoch number under a new name does not.
    await db.jobs.update(job_id, poll_count=2, claim=fresh)
    with pytest.raises(LeaseLost):
        await db.jobs.update(job_id, poll_count=3, claim=Claim("new", 1))
    assert (await db.jobs.complete(job_id, now=102.0, embedding_url="https://x/e", claim=fresh)) is not None
    assert (await db.jobs.get(job_id)).state == "completed"


async def test_a_fenced_write_about_a_deleted_job_is_no_lease_loss(db):
    job_id, _ = await _job(db, owner="me")
    await db.jobs.delete_user_data(1)  # /forget-me
    await db.jobs.update(job_id, poll_count=3, claim=Claim("me", 1))
    assert not await db.jobs.finish(job_id, "failed", error="x", now=2.0, claim=Claim("me", 1))
    assert not await db.jobs.mark_notified(job_id, 2.0, claim=Claim("me", 1))


async def test_a_run_answered_after_the_job_was_lost_is_kept_and_one_side_claims_the_notice(db):
    """The submitting process was taken for dead and the sweep made its job 'lost'; when its run's answer comes
    back, the run id and cost go on the lost row (state, claim and error untouched) and it claims the
    notice unless the adopter already did; a job not (yet) lost is left alone."""
    await db.instances.beat(BotInstance("adopter", 0.0, 100.0, 1, "h", None))
    first, _ = await _job(db, name="first", ids=["nv1aaaaaaaa"], owner="taken-for-dead")
    second, _ = await _job(db, name="second", ids=["nv2aaaaaaaa"], owner="taken-for-dead")
    adopted, lost = await db.jobs.adopt("adopter", now=100.0, lease_until=160.0, lost_error="lost!")
    assert lost == [first, second] == [j.id for j in adopted]
    assert await db.jobs.mark_notified(second, 101.0, claim=Claim("adopter", 2))  # the adopter spoke first
    run = dict(cost_micros=700_000, payment_source="USD", is_api_request=True, submitted_at=102.0, now=102.0)
    assert await db.jobs.record_lost_run(first, run_id="run-1", **run)
    assert not await db.jobs.record_lost_run(first, run_id="run-again", **run)  # one notice claim only
    assert not await db.jobs.record_lost_run(second, run_id="run-2", **run)
    one, two = await db.jobs.get(first), await db.jobs.get(second)
    assert (one.state, one.error, one.claim, one.run_id, one.cost_micros, one.notified_at) == (
        "lost", "lost!", Claim("adopter", 2), "run-1", 700_000, 102.0)
    assert (two.state, two.claim, two.run_id, two.cost_micros, two.notified_at) == (
        "lost", Claim("adopter", 2), "run-2", 700_000, 101.0)
    assert not await db.jobs.mark_notified(first, 103.0, claim=Claim("adopter", 2))  # the adopter stays silent
    assert await db.jobs.adopt("adopter", now=200.0, lease_until=260.0, lost_error="x") == ([], [])  # not revived
    released, _ = await _job(db, name="released", ids=["nv3aaaaaaaa"])  # nobody claims it; not lost yet
    assert not await db.jobs.record_lost_run(released, run_id="run-3", **run)
    job = await db.jobs.get(released)
    assert (job.state, job.run_id, job.notified_at) == ("submitting", None, None)
    assert not await db.jobs.record_lost_run(9999, run_id="run-4", **run)  # gone (/forget-me)


@pytest.mark.parametrize("backend", ["postgres"])  # two processes share a database only on PostgreSQL
async def test_a_hand_over_and_a_leaving_instance_are_announced_to_the_siblings(backend, postgres_url):
    leaving, sibling = Database(postgres_url), Database(postgres_url)
    await asyncio.gather(leaving.connect(), sibling.connect())
    heard: list[str | None] = []
    sibling.subscribe(CLAIMS_TOPIC, heard.append)
    try:
        await leaving.instances.beat(BotInstance("leaving", 0.0, 10.0, 1, "h", None))
        await _job(leaving, owner="leaving")
        assert await leaving.jobs.release("nobody") == 0  # nothing handed back: nothing to announce
        assert await leaving.jobs.release("leaving") == 1
        await leaving.instances.leave("leaving")
        async with asyncio.timeout(5):
            while len(heard) < 2:  # noqa: ASYNC110 (delivered by the listening connection)
                await asyncio.sleep(0.01)
        assert heard == ["leaving", "leaving"]  # the release, then the leave
        assert await sibling.instances.get("leaving") is None
    finally:
        await asyncio.gather(leaving.close(), sibling.close())


@pytest.mark.parametrize("backend", ["postgres"])  # two processes share a database only on PostgreSQL
async def test_two_sweepers_racing_over_50_orphans_adopt_each_exactly_once(backend, postgres_url):
    """Two live processes (two pools) sweeping one PostgreSQL database at once, several times over: every
    orphan is adopted by exactly one of them, at epoch 1 (SKIP LOCKED passes over the rows the other is
    claiming, and neither takes the other's)."""
    first, second = Database(postgres_url), Database(postgres_url)
    await asyncio.gather(first.connect(), second.connect())
    try:
        for owner in ("a", "b"):
            await first.instances.beat(BotInstance(owner, 0.0, 10.0, 1, "h", None))
        ids = [(await _job(first, name=f"v{i}", ids=[f"nv{i:03d}aaaaaaa"]))[0] for i in range(50)]
        for job_id in ids[:25]:
            await first.jobs.update(job_id, state="pending", run_id=f"run-{job_id}")

        async def sweep(db, owner):
            got = []
            for _ in range(5):
                adopted, _lost = await db.jobs.adopt(owner, now=10.0, lease_until=70.0, lost_error="lost!")
                got += [j.id for j in adopted]
            return got

        a, b = await asyncio.gather(sweep(first, "a"), sweep(second, "b"))
        assert sorted(a + b) == ids and not set(a) & set(b)
        jobs = [await first.jobs.get(job_id) for job_id in ids]
        assert all(j.lease_epoch == 1 for j in jobs)
        assert {j.id for j in jobs if j.claimed_by == "a"} == set(a)
        assert sum(j.state == "lost" for j in jobs) == 25  # the 25 still 'submitting', each lost once
    finally:
        await asyncio.gather(first.close(), second.close())


async def test_complete_saves_voice_file_and_job_in_one_go_and_renames_on_conflict(db):
    job_id, _ = await _job(db, name="A" * 32, provider="qwen")
    await db.voices.rename(1, await add_qwen_voice(db, 1, "other"), "A" * 32)  # the name was taken meanwhile
    voice_id, name = await db.jobs.complete(
        job_id, now=100.0, embedding_url="https://x/e.safetensors", embedding_expires_at=200.0,
        embedding=("tok" * 10, "e.safetensors", "application/octet-stream", b"\x00embedding"),
    )
    assert name == "A" * 28 + " (2)" and len(name) == 32
    voice = await db.voices.get(1, voice_id)
    assert voice.embedding_url == "https://x/e.safetensors" and voice.transcript == "hello there"
    stored = await db.files.get(voice.embedding_file_id)
    assert stored.kind == "qwen_embedding" and stored.size == len(b"\x00embedding")
    assert await db.files.data(stored.id) == b"\x00embedding"
    job = await db.jobs.get(job_id)
    assert job.state == "completed" and job.voice_id == voice_id and job.finished_at == 100.0
    # A second completion (a racing poll) changes nothing.
    assert await db.jobs.complete(job_id, now=101.0) is None
    assert [v.id for v in await db.voices.list(1)] == [voice_id, (await db.voices.by_name(1, "A" * 32)).id]
