"""Clone jobs shared by two bot processes on one PostgreSQL database: two CloneService instances (two
Database objects, two pools, as two processes have), the real NanoGPT client against the fake.

A process that starts never marks a live sibling's jobs lost; one that dies (its connections gone, as after
SIGKILL) has its jobs adopted by the other, which finishes them with exactly one notice each; one that was
only taken for dead cannot overwrite the progress of the process that adopted its job. The real
two-process wire tests (SIGKILL of a bot process) are elsewhere; this pins the service's rules down.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest

from bot.cloning import LOST_AFTER_RESTART, CloneHandedOver
from bot.errors import UserFacingError
from bot.instances import Instance
from bot.storage import Database
from tests.fakes.nanogpt import Step
from tests.wire.test_clone_service import Env

pytest_plugins = ["tests.fixtures_nanogpt", "tests.fixtures_audio"]

SWEEP = 0.1  # seconds between sweeps here (2 s by default)


class Process(Env):
    """One bot process's clone service on the shared PostgreSQL database."""

    def __init__(self, url, fake, audio_corpus, tmp_path) -> None:
        super().__init__(tmp_path, fake, audio_corpus)
        self.path = url
        self.config = dataclasses.replace(self.config, clone_daily_limit=10)

    async def start(self, sweep=SWEEP, heartbeat=None):
        service = await super().start()  # its poller task has not run yet: these hold from its first turn
        service.sweep_interval = sweep
        if heartbeat is not None:
            service.heartbeat_interval = heartbeat
        return service

    async def die(self) -> None:
        """SIGKILL as the database sees it: every connection of this process is gone at once, nothing is
        handed back (the poller's clean-up fails on the closed pool)."""
        backend = self.db.backend
        await backend.release_lock(Instance.lock_key(self.service.instance.id))  # the liveness connection
        backend.pool.terminate()
        await self.stop()

    async def job(self, job_id):
        return await self.db.jobs.get(job_id)


@pytest.fixture
async def two(postgres_url, tmp_path, fake_nanogpt, audio_corpus):
    a = Process(postgres_url, fake_nanogpt, audio_corpus, tmp_path / "a")
    b = Process(postgres_url, fake_nanogpt, audio_corpus, tmp_path / "b")
    await a.start()
    yield a, b
    for process in (a, b):
        while process.pollers:
            await process.stop()


#: Runs stay 'processing' until a test lets them finish (``finish``): a notice cannot slip out before the
#: moment a test is about.
PROCESSING = [Step("processing", poll_after=0.2)]


def finish(fake, jobs) -> None:
    for job in jobs:
        fake.script_run(job.run_id, [Step("completed")])


async def _wait_for(predicate, seconds=10.0):
    """Until ``predicate()`` holds: a change another process makes in the database sets no event here."""
    async with asyncio.timeout(seconds):
        while not await predicate():  # noqa: ASYNC110 (the condition lives in PostgreSQL)
            await asyncio.sleep(0.02)


async def test_a_sibling_starting_leaves_a_live_processes_jobs_alone(two, fake_nanogpt):
    a, b = two
    fake_nanogpt.clone_script = [Step("processing", poll_after=0.2)] * 4 + [Step("completed")]
    pending = await a.clone("Pending", "qwen", seconds=4)
    fake_nanogpt.fail_next("/voice-clone/minimax", status=None, delay=1.0)  # answered after 1 s
    submitting = asyncio.create_task(a.clone("Submitting", "minimax"))
    await fake_nanogpt.wait_for("/voice-clone/minimax")
    (held,) = [j for j in await a.db.jobs.for_user(1) if j.state == "submitting"]
    await b.start()  # its start-up sweep runs while A's submit is in flight
    await asyncio.sleep(5 * SWEEP)
    assert (await b.job(held.id)).state == "submitting"
    assert (await b.job(held.id)).claimed_by == (await b.job(pending.id)).claimed_by == a.service.instance.id
    await submitting
    await a.events.wait(2)
    await asyncio.sleep(5 * SWEEP)
    assert sorted(notice.outcome for _, notice in a.events.notices) == ["completed", "completed"]
    assert b.events.notices == [] and len(fake_nanogpt.submits) == 2
    assert {v.name for v in await b.db.voices.list(1)} == {"Pending", "Submitting"}


async def test_a_dead_processes_jobs_are_adopted_and_finished_with_one_notice_each(two, fake_nanogpt):
    a, b = two
    fake_nanogpt.clone_script = PROCESSING
    jobs = [await a.clone(f"Voice {i}", "qwen", seconds=4) for i in range(3)]
    await b.start()
    await asyncio.sleep(3 * SWEEP)
    assert [(await b.job(j.id)).claimed_by for j in jobs] == [a.service.instance.id] * 3  # alive: left alone
    await a.die()
    finish(fake_nanogpt, jobs)
    await b.events.wait(3)
    await asyncio.sleep(0.5)
    assert sorted(job.id for job, _ in b.events.notices) == [j.id for j in jobs]
    assert {notice.outcome for _, notice in b.events.notices} == {"completed"} and a.events.notices == []
    assert len(await b.db.voices.list(1)) == 3 and len(fake_nanogpt.submits) == 3
    done = [await b.job(j.id) for j in jobs]
    assert all(j.claimed_by == b.service.instance.id and j.lease_epoch == 2 and j.notified_at for j in done)
    assert await b.db.instances.get(a.service.instance.id) is None  # the dead row is gone


async def test_a_job_whose_owner_died_mid_submit_is_lost_with_one_notice(two, fake_nanogpt):
    a, b = two
    await b.start()
    fake_nanogpt.fail_next("/voice-clone/minimax", status=None, delay=3.0)  # A dies before the answer
    submitting = asyncio.create_task(a.clone("Limbo", "minimax"))
    await fake_nanogpt.wait_for("/voice-clone/minimax")
    await a.die()
    submitting.cancel()
    await asyncio.gather(submitting, return_exceptions=True)
    job, notice = await b.events.wait()
    assert notice.outcome == "lost" and notice.message == LOST_AFTER_RESTART and job.state == "lost"
    await asyncio.sleep(0.5)
    assert len(b.events.notices) == 1 and a.events.notices == [] and len(fake_nanogpt.submits) == 1


async def test_a_process_taken_for_dead_cannot_overwrite_the_adopters_progress(two, fake_nanogpt, caplog):
    """A loses its liveness connection but keeps running (a network partition): B adopts A's job; A's next
    write about it is fenced off (A leaves the job alone), B finishes it and is the only one to tell the user."""
    a, b = two
    a.service.heartbeat_interval = 3600.0  # A does not notice that it lost its lock during the test
    fake_nanogpt.clone_script = PROCESSING
    job = await a.clone("Contested", "qwen", seconds=4)
    await a.db.backend.release_lock(Instance.lock_key(a.service.instance.id))
    await b.start()

    async def adopted():
        return (await b.job(job.id)).claimed_by == b.service.instance.id

    await _wait_for(adopted)
    await asyncio.sleep(0.5)  # A polls on, and its next write about the job is refused
    finish(fake_nanogpt, [job])
    with caplog.at_level(logging.WARNING, logger="bot.cloning"):
        _, notice = await b.events.wait()
        await asyncio.sleep(0.5)
    assert notice.outcome == "completed" and len(b.events.notices) == 1 and a.events.notices == []
    assert any("another bot process follows it now" in r.getMessage() for r in caplog.records)
    assert job.id not in a.service._claims
    final = await b.job(job.id)
    assert final.state == "completed" and final.lease_epoch == 2 and len(await b.db.voices.list(1)) == 1


async def test_a_clean_stop_hands_the_jobs_to_a_sibling_at_once(two, fake_nanogpt):
    a, b = two
    fake_nanogpt.clone_script = PROCESSING
    job = await a.clone("Handed", "qwen", seconds=4)
    await b.start()
    b.service.lease_seconds = 3600.0  # only the hand-over, not an expired lease, can move the job
    await a.stop()
    assert await b.db.instances.get(a.service.instance.id) is None
    assert (await b.job(job.id)).claimed_by in (None, b.service.instance.id)  # handed back (or adopted already)
    finish(fake_nanogpt, [job])
    done, notice = await b.events.wait()
    assert notice.outcome == "completed" and done.id == job.id and a.events.notices == []


async def test_a_clean_stop_is_heard_by_the_sibling_which_adopts_at_once_not_at_its_next_sweep(two, fake_nanogpt):
    """The hand-over is announced (NOTIFY): B sweeps when it hears it, long before its next sweep is due."""
    a, b = two
    fake_nanogpt.clone_script = PROCESSING
    job = await a.clone("Handed", "qwen", seconds=4)
    await b.start(sweep=3600.0, heartbeat=3600.0)  # B's periodic sweep would be an hour away
    b.service.lease_seconds = 3600.0
    await asyncio.sleep(0.3)  # B's start-up sweep is done (A is alive: the job stays A's)
    assert (await b.job(job.id)).claimed_by == a.service.instance.id
    loop = asyncio.get_running_loop()
    stopped = loop.time()
    await a.stop()

    async def adopted():
        return (await b.job(job.id)).claimed_by == b.service.instance.id

    await _wait_for(adopted, seconds=5.0)
    assert loop.time() - stopped < 1.0  # well under even the default 2 s sweep
    finish(fake_nanogpt, [job])
    done, notice = await b.events.wait()
    assert notice.outcome == "completed" and done.id == job.id and a.events.notices == []


async def _taken_for_dead_mid_submit(a, fake_nanogpt, answer_after):
    """A sends a paid MiniMax clone answered after ``answer_after`` s, and loses its liveness lock meanwhile
    (kept running: it does not notice before the answer). Returns A's submit task."""
    a.service.heartbeat_interval = 3600.0
    fake_nanogpt.clone_script = PROCESSING
    fake_nanogpt.fail_next("/voice-clone/minimax", status=None, delay=answer_after)
    submitting = asyncio.create_task(a.clone("Limbo", "minimax"))
    await fake_nanogpt.wait_for("/voice-clone/minimax")
    await a.db.backend.release_lock(Instance.lock_key(a.service.instance.id))
    return submitting


async def test_a_submit_answered_after_the_sibling_announced_the_loss_says_nothing_more(two, fake_nanogpt):
    """B takes A for dead while A's paid submit is in flight, marks the job lost and tells the user. When the
    run's answer reaches A, A settles the reservation at the run's real cost, records the run on the lost
    row (still lost, still B's) and says nothing: the user gets one message."""
    a, b = two
    await b.start()
    submitting = await _taken_for_dead_mid_submit(a, fake_nanogpt, answer_after=2.0)
    job, notice = await b.events.wait()
    assert notice.outcome == "lost" and notice.message == LOST_AFTER_RESTART and not submitting.done()
    with pytest.raises(CloneHandedOver):
        await submitting
    await asyncio.sleep(0.5)
    assert len(b.events.notices) == 1 and a.events.notices == [] and len(fake_nanogpt.submits) == 1
    final = await b.job(job.id)
    assert final.state == "lost" and final.claimed_by == b.service.instance.id and final.run_id is not None
    assert final.cost_micros and final.notified_at is not None
    assert await a.ledger() == [{"kind": "clone", "state": "charged", "amount_micros": final.cost_micros}]
    assert fake_nanogpt.requests_to("/voice-clone/minimax/status") == []  # the run is not followed
    assert await b.db.voices.list(1) == []  # the lost job is not revived


async def test_a_submit_answered_before_the_sibling_told_the_user_speaks_and_the_sibling_does_not(two, fake_nanogpt):
    """The notice goes to whoever claims it: here a sibling swept (job lost, claimed) but had not told the
    user when A's answer came, so A tells the user (its submit's one sentence) and no sibling does."""
    a, b = two
    submitting = await _taken_for_dead_mid_submit(a, fake_nanogpt, answer_after=1.0)
    sibling_db = await Database(a.path).connect()
    sibling = Instance(sibling_db, a.clock)
    try:
        await sibling.register()
        await sibling.reap(60.0)  # A holds no liveness lock: dead
        now = a.clock.now()
        _, lost = await sibling_db.jobs.adopt(sibling.id, now=now, lease_until=now + 60, lost_error=LOST_AFTER_RESTART)
        assert len(lost) == 1
        with pytest.raises(UserFacingError) as told:
            await submitting
        assert str(told.value) == LOST_AFTER_RESTART
        await b.start()  # another process sweeping now finds nothing left to say
        await asyncio.sleep(0.5)
        assert a.events.notices == [] and b.events.notices == []
        final = await sibling_db.jobs.get(lost[0])
        assert final.state == "lost" and final.claimed_by == sibling.id and final.notified_at is not None
        assert final.run_id is not None and final.cost_micros
        assert await a.ledger() == [{"kind": "clone", "state": "charged", "amount_micros": final.cost_micros}]
    finally:
        await sibling.unregister()
        await sibling_db.close()


async def test_heartbeat_and_sweep_outlive_a_database_failure_and_log_it_once(two, caplog):
    """The table the heartbeat and the sweep use is away for a second (as the database is after a restart):
    both keep failing many times over; each logs one warning, then one line when it works again, and the
    loop goes on beating."""
    a, b = two
    await a.stop()  # one process: each line below is B's
    await b.start(heartbeat=0.1)
    await asyncio.sleep(0.3)
    with caplog.at_level(logging.INFO, logger="bot.cloning"):
        await b.db.execute("ALTER TABLE bot_instances RENAME TO bot_instances_away")
        await asyncio.sleep(1.0)  # about ten failed beats and sweeps
        await b.db.execute("ALTER TABLE bot_instances_away RENAME TO bot_instances")
        await asyncio.sleep(0.5)
    messages = [r.getMessage() for r in caplog.records if r.name == "bot.cloning"]
    assert sum("heartbeat failed" in m for m in messages) == 1
    assert sum("orphan sweep failed" in m for m in messages) == 1
    assert sum("heartbeat works again" in m for m in messages) == 1
    assert sum("orphan sweep works again" in m for m in messages) == 1
    beat = (await b.db.instances.get(b.service.instance.id)).heartbeat_at
    await asyncio.sleep(0.3)
    assert (await b.db.instances.get(b.service.instance.id)).heartbeat_at > beat  # still beating
