"""A small reusable scheduler: due times per key, one coroutine per due key, bounded, drained at shutdown.

:class:`Scheduler` keeps one due time per key in an in-memory heap (a later :meth:`~Scheduler.schedule`
supersedes an earlier one) and, while :meth:`~Scheduler.run` runs, starts ``turn(key)`` for each key
whose time has come, at most ``concurrency`` at once and never two for one key (a key due while its turn
still runs is looked at again shortly). Its owner also hands it background tasks (:meth:`~Scheduler.spawn`).

When ``run`` is cancelled, tasks inside :meth:`~Scheduler.finishing` (work that must not be cut off
halfway, such as a message being sent) get ``drain_seconds`` to finish; everything else is cancelled.
Times are the event loop's clock; nothing here knows what a key means.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Iterator
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)

__all__ = ["Scheduler", "backoff"]


def backoff(failures: int, *, base: float, cap: float) -> float:
    """Exponential backoff after ``failures`` failures in a row (1 → ``base``), capped, ±20 % jitter."""
    delay = min(cap, base * 2 ** max(0, failures - 1))
    return delay * random.uniform(0.8, 1.2)


class Scheduler(Generic[K]):
    """Runs ``turn(key)`` when each key is due. ``concurrency``, ``idle_recheck``, ``busy_retry`` and
    ``drain_seconds`` may be changed before :meth:`run`."""

    def __init__(self, turn: Callable[[K], Awaitable[None]], *, concurrency: int = 64, idle_recheck: float = 1.0,
                 busy_retry: float = 0.05, drain_seconds: float = 10.0, name: str = "turn") -> None:
        self._turn = turn
        self.concurrency = concurrency
        self.idle_recheck = idle_recheck  # look at the heap at least this often (cheap)
        self.busy_retry = busy_retry  # a key due while its turn runs is looked at again after this
        self.drain_seconds = drain_seconds
        self.name = name
        self._heap: list[tuple[float, int, K]] = []  # (loop time due, sequence, key)
        self._due: dict[K, float] = {}  # key → its live heap entry's due time (others are stale)
        self._seq = 0
        self._inflight: set[K] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._finishing: set[asyncio.Task[Any]] = set()
        self._wake: asyncio.Event | None = None

    # -- what the owner calls --------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._wake is not None

    def schedule(self, key: K, delay: float) -> None:
        """Run ``key``'s turn ``delay`` seconds from now (replacing an earlier due time).

        Needs a running event loop (``RuntimeError`` otherwise); works whether or not :meth:`run` is running.
        """
        due = asyncio.get_running_loop().time() + max(0.0, delay)
        self._seq += 1
        self._due[key] = due
        heapq.heappush(self._heap, (due, self._seq, key))
        self.wake()

    def due_in(self, key: K) -> float | None:
        """Seconds until ``key`` is due (negative: overdue), or None when it is not scheduled."""
        due = self._due.get(key)
        return None if due is None else due - asyncio.get_running_loop().time()

    def wake(self) -> None:
        """Look at the heap now (after a schedule, or when a slot came free)."""
        if self._wake is not None:
            self._wake.set()

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Run ``coro`` as a background task owned by the scheduler (cancelled when :meth:`run` stops)."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @contextlib.contextmanager
    def finishing(self) -> Iterator[None]:
        """Inside this block the current task is let finish (up to ``drain_seconds``) when :meth:`run`
        is cancelled, before the other tasks are cancelled."""
        task = asyncio.current_task()
        if task is None:
            yield
            return
        self._finishing.add(task)
        try:
            yield
        finally:
            self._finishing.discard(task)

    # -- the loop --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Start due turns until cancelled; then drain (see :meth:`finishing`) and cancel the rest."""
        if self._wake is not None:
            raise RuntimeError(f"the {self.name} scheduler is already running")
        self._wake = asyncio.Event()
        loop = asyncio.get_running_loop()
        try:
            while True:
                self._wake.clear()
                self._start_due(loop.time())
                if len(self._inflight) >= self.concurrency:
                    timeout = self.idle_recheck  # a finishing turn sets the event
                elif self._heap:
                    timeout = min(self.idle_recheck, max(0.0, self._heap[0][0] - loop.time()))
                else:
                    timeout = self.idle_recheck
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
                # arrives just as the event is set, and the loop would never stop.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
        finally:
            await self._drain()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            self._inflight.clear()
            self._wake = None

    def _start_due(self, now: float) -> None:
        busy: list[K] = []
        while self._heap and self._heap[0][0] <= now and len(self._inflight) < self.concurrency:
            due, _, key = heapq.heappop(self._heap)
            if self._due.get(key) != due:
                continue  # superseded by a later schedule
            if key in self._inflight:
                busy.append(key)  # still finishing its previous turn; look again shortly
                continue
            del self._due[key]
            self._inflight.add(key)
            self.spawn(self._run_turn(key), name=f"{self.name}-{key}")
        for key in busy:
            self.schedule(key, self.busy_retry)

    async def _run_turn(self, key: K) -> None:
        try:
            await self._turn(key)
        except asyncio.CancelledError:
            raise
        except Exception:  # the owner's turn handles its own errors; this only keeps the loop alive
            log.exception("%s %s: unexpected error in its turn", self.name, key)
        finally:
            self._inflight.discard(key)
            self.wake()

    async def _drain(self) -> None:
        pending = {t for t in self._finishing if not t.done()}
        if not pending:
            return
        log.info("waiting up to %.0f s for %d %s task(s) to finish", self.drain_seconds, len(pending), self.name)
        _, late = await asyncio.wait(pending, timeout=self.drain_seconds)
        if late:
            log.warning("%d %s task(s) were still running at shutdown; they were cut off", len(late), self.name)
