"""The bot's notion of "now": UTC unix seconds, injectable so tests move time instead of sleeping.

Every part of the bot that compares times (daily limits, cooldowns, job deadlines, URL expiry) asks
its :class:`Clock`. In production that is ``time.time()``; a test shifts it with :meth:`Clock.advance`
or :meth:`Clock.set`, or builds a frozen clock (``Clock(start, frozen=True)``) whose time moves only
when told to.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime

SECONDS_PER_DAY = 86_400


class Clock:
    """UTC wall-clock time as ``time.time()`` plus an offset (or a frozen value)."""

    def __init__(self, start: float | None = None, *, frozen: bool = False) -> None:
        """``start`` sets the current time (default: real time); ``frozen`` stops it moving on its own."""
        self._frozen = frozen
        self._offset = 0.0
        self._frozen_at = time.time() if start is None else float(start)
        if start is not None and not frozen:
            self._offset = float(start) - time.time()

    @property
    def frozen(self) -> bool:
        return self._frozen

    def now(self) -> float:
        """Current UTC time in unix seconds."""
        if self._frozen:
            return self._frozen_at
        return time.time() + self._offset

    def advance(self, seconds: float) -> float:
        """Move the clock forward (or back, if negative) by ``seconds``; returns the new time."""
        if self._frozen:
            self._frozen_at += seconds
        else:
            self._offset += seconds
        return self.now()

    def set(self, timestamp: float) -> None:
        """Make ``now()`` return ``timestamp`` (and run on from there unless frozen)."""
        if self._frozen:
            self._frozen_at = float(timestamp)
        else:
            self._offset = float(timestamp) - time.time()

    def utc_day(self, ts: float | None = None) -> str:
        """The UTC date of ``ts`` (default: now) as ``YYYY-MM-DD``."""
        ts = self.now() if ts is None else ts
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")

    def next_utc_midnight(self, ts: float | None = None) -> float:
        """Unix time of the first UTC midnight strictly after ``ts`` (default: now)."""
        ts = self.now() if ts is None else ts
        return float((math.floor(ts / SECONDS_PER_DAY) + 1) * SECONDS_PER_DAY)

    def __repr__(self) -> str:
        return f"Clock(now={self.now():.3f}, frozen={self._frozen})"
