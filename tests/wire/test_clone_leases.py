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

from bot.cloning import LOST_AFTER_RESTART
from bot.instances import Instance
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

    async def start(self):
        service = await super().start()
        service.sweep_interval = SWEEP
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
