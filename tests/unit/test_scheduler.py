"""bot.scheduler: due times per key, bounded turns, one turn per key at a time, shutdown drain."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from bot.scheduler import Scheduler, backoff


class Turns:
    """Records the turns a scheduler runs; ``hold`` keeps turns of a key running until released."""

    def __init__(self) -> None:
        self.started: list[object] = []
        self.finished: list[object] = []
        self.running: set[object] = set()
        self.most_at_once = 0
        self.hold: dict[object, asyncio.Event] = {}
        self.fail: set[object] = set()
        self.changed = asyncio.Event()

    async def __call__(self, key: object) -> None:
        self.started.append(key)
        self.running.add(key)
        self.most_at_once = max(self.most_at_once, len(self.running))
        self.changed.set()
        try:
            if key in self.hold:
                await self.hold[key].wait()
            if key in self.fail:
                raise RuntimeError(f"turn {key} broke")
        finally:
            self.running.discard(key)
            self.finished.append(key)
            self.changed.set()

    async def until(self, predicate, seconds: float = 5.0) -> None:
        async with asyncio.timeout(seconds):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


@contextlib.asynccontextmanager
async def running(scheduler: Scheduler):
    task = asyncio.create_task(scheduler.run())
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_keys_run_in_due_order_and_a_later_schedule_replaces_an_earlier_one():
    turns = Turns()
    scheduler: Scheduler[str] = Scheduler(turns, idle_recheck=0.05)
    scheduler.schedule("late", 0.15)
    scheduler.schedule("soon", 0.05)
    scheduler.schedule("moved", 0.01)
    scheduler.schedule("moved", 0.10)  # supersedes the 0.01 entry: one turn, after "soon"
    assert scheduler.due_in("moved") == pytest.approx(0.10, abs=0.02)
    async with running(scheduler):
        await turns.until(lambda: len(turns.finished) == 3)
        await asyncio.sleep(0.1)
    assert turns.started == ["soon", "moved", "late"]
    assert scheduler.due_in("moved") is None and not scheduler.running


async def test_schedules_made_before_run_wait_for_it_and_wake_starts_them_at_once():
    turns = Turns()
    scheduler: Scheduler[int] = Scheduler(turns, idle_recheck=30.0)  # only a wake-up can start a turn in time
    scheduler.schedule(1, 0.0)
    await asyncio.sleep(0.05)
    assert turns.started == []  # nothing runs without run()
    async with running(scheduler):
        await turns.until(lambda: turns.finished == [1], seconds=1.0)
        scheduler.schedule(2, 0.0)  # schedule wakes the loop: no 30 s wait
        await turns.until(lambda: turns.finished == [1, 2], seconds=1.0)


async def test_at_most_concurrency_turns_run_at_once():
    turns = Turns()
    gate = asyncio.Event()
    for key in range(10):
        turns.hold[key] = gate
    scheduler: Scheduler[int] = Scheduler(turns, concurrency=3, idle_recheck=0.05)
    for key in range(10):
        scheduler.schedule(key, 0.0)
    async with running(scheduler):
        await turns.until(lambda: len(turns.started) == 3)
        await asyncio.sleep(0.1)
        assert len(turns.started) == 3  # the other seven wait for a slot
        gate.set()
        await turns.until(lambda: len(turns.finished) == 10)
    assert turns.most_at_once == 3 and sorted(turns.started) == list(range(10))


async def test_a_key_due_while_its_turn_runs_gets_its_next_turn_after_that_one():
    turns = Turns()
    turns.hold["job"] = asyncio.Event()
    scheduler: Scheduler[str] = Scheduler(turns, idle_recheck=0.05, busy_retry=0.02)
    scheduler.schedule("job", 0.0)
    async with running(scheduler):
        await turns.until(lambda: turns.started == ["job"])
        scheduler.schedule("job", 0.0)  # due again while the first turn still runs
        await asyncio.sleep(0.1)
        assert turns.started == ["job"] and turns.most_at_once == 1
        turns.hold["job"].set()
        await turns.until(lambda: turns.finished == ["job", "job"])
    assert turns.most_at_once == 1


async def test_a_failing_turn_does_not_stop_the_others(caplog):
    turns = Turns()
    turns.fail.add("bad")
    scheduler: Scheduler[str] = Scheduler(turns, idle_recheck=0.05, name="demo")
    scheduler.schedule("bad", 0.0)
    scheduler.schedule("good", 0.05)
    async with running(scheduler):
        await turns.until(lambda: turns.finished == ["bad", "good"])
    assert "demo bad: unexpected error in its turn" in caplog.text


async def test_shutdown_lets_finishing_work_end_and_cancels_the_rest():
    scheduler: Scheduler[str] = Scheduler(lambda key: asyncio.sleep(0), idle_recheck=0.05, drain_seconds=2.0)
    events: list[str] = []
    in_block = asyncio.Event()
    let_go = asyncio.Event()

    async def sending() -> None:
        with scheduler.finishing():
            in_block.set()
            await let_go.wait()
            events.append("sent")

    async def idle() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            events.append("idle cancelled")
            raise

    task = asyncio.create_task(scheduler.run())
    await asyncio.sleep(0)
    scheduler.spawn(sending(), name="sending")
    scheduler.spawn(idle(), name="idle")
    await in_block.wait()
    task.cancel()
    await asyncio.sleep(0.1)
    assert events == []  # shutdown is waiting for the send; the idle task is not cancelled yet
    let_go.set()
    await asyncio.gather(task, return_exceptions=True)
    assert events == ["sent", "idle cancelled"] and not scheduler.running


async def test_shutdown_gives_up_on_finishing_work_after_drain_seconds():
    scheduler: Scheduler[str] = Scheduler(lambda key: asyncio.sleep(0), drain_seconds=0.1)

    async def hangs() -> None:
        with scheduler.finishing():
            await asyncio.sleep(60)

    task = asyncio.create_task(scheduler.run())
    await asyncio.sleep(0)
    hung = scheduler.spawn(hangs(), name="hangs")
    await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    started = loop.time()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert loop.time() - started < 1.0 and hung.cancelled()


async def test_run_twice_at_once_is_refused_and_it_can_run_again_after_stopping():
    turns = Turns()
    scheduler: Scheduler[int] = Scheduler(turns, idle_recheck=0.05)
    async with running(scheduler):
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError):
            await scheduler.run()
    scheduler.schedule(7, 0.0)
    async with running(scheduler):  # a restarted poller picks up what was scheduled meanwhile
        await turns.until(lambda: turns.finished == [7])


def test_schedule_needs_a_running_loop():
    scheduler: Scheduler[int] = Scheduler(Turns())
    with pytest.raises(RuntimeError):
        scheduler.schedule(1, 0.0)


def test_backoff_doubles_up_to_the_cap_with_jitter():
    for failures, middle in ((1, 1.0), (2, 2.0), (3, 4.0), (7, 60.0), (30, 60.0)):
        delays = [backoff(failures, base=1.0, cap=60.0) for _ in range(200)]
        assert all(0.8 * middle <= d <= 1.2 * middle for d in delays)
        assert max(delays) - min(delays) > 0.05 * middle  # jittered, not a fixed value
    assert 0.8 <= backoff(0, base=1.0, cap=60.0) <= 1.2
