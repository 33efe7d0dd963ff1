"""Speech in voice channels, without Discord: the per-server queue and its rules.

While the bot is in a voice channel of a server, every ``/say`` (and "Speak this message") of a member
in that channel is also played there: the speech already paid for and posted (same cooldown, budget
and cache; no extra TTS call) becomes a :class:`Line` in that server's :class:`GuildQueue`, and lines
play one after another in the order they were queued.

Rules (the voice cog, ``cogs/voice_channels.py``, asks these and renders the answers):

* a server holds at most :data:`MAX_QUEUED_LINES` lines waiting, a member at most
  :data:`MAX_LINES_PER_MEMBER` of them; over either the line is refused with one sentence (the
  text answer with the audio file has been posted anyway);
* ``/skip`` stops the line playing now: its author or a server manager;
* ``/clear`` empties the queue for a server manager, and removes only their own waiting lines for
  anyone else (the line playing now keeps playing);
* the bot leaves on its own when nobody but bots is left in its channel, or when nothing has played
  for ``VOICE_IDLE_SECONDS`` (:func:`leave_reason`).

Time comes from :mod:`bot.clock` so tests move it instead of sleeping.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from dataclasses import dataclass

from bot.clock import Clock
from bot.errors import Forbidden, UserFacingError
from bot.text import plural

log = logging.getLogger(__name__)

MAX_QUEUED_LINES = 10  # lines waiting in one server (the one playing not counted)
MAX_LINES_PER_MEMBER = 3  # of those, lines from one member

PLAYBACK_OFF = "Voice playback is turned off in this server."
NOTHING_PLAYING = "Nothing is playing right now."
NOT_IN_VOICE = "I'm not in a voice channel in this server."

LEFT_ALONE = "alone"
LEFT_IDLE = "idle"


@dataclass(frozen=True, slots=True)
class Line:
    """One line of speech to play: exactly the audio posted for it."""

    id: int
    guild_id: int
    author_id: int
    audio: bytes
    content_type: str
    label: str  # the voice's name, for logs and for "now playing"


class QueueFull(UserFacingError):
    """The line was not queued; ``str()`` says why (the posted answer is unaffected)."""


class GuildQueue:
    """One server's lines: the one playing (``current``) and the ones waiting, in order."""

    def __init__(self, guild_id: int, *, max_lines: int = MAX_QUEUED_LINES,
                 max_per_member: int = MAX_LINES_PER_MEMBER) -> None:
        self.guild_id = guild_id
        self.max_lines = max_lines
        self.max_per_member = max_per_member
        self.current: Line | None = None
        self.pending: deque[Line] = deque()
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self.pending)

    @property
    def playing(self) -> bool:
        return self.current is not None

    def waiting_for(self, member_id: int) -> int:
        return sum(1 for line in self.pending if line.author_id == member_id)

    def add(self, line: Line) -> int:
        """Queue ``line``; returns how many lines play before it (0: it plays next). Raises :class:`QueueFull`."""
        if len(self.pending) >= self.max_lines:
            raise QueueFull(f"The voice queue here is full ({plural(self.max_lines, 'line')} waiting), "
                            "so I posted your speech without playing it; try again when it has moved on.")
        if self.waiting_for(line.author_id) >= self.max_per_member:
            raise QueueFull(f"You already have {plural(self.max_per_member, 'line')} waiting to be played, "
                            "so I posted this one without playing it; wait for yours to play first.")
        ahead = len(self.pending) + (1 if self.current is not None else 0)
        self.pending.append(line)
        self._ready.set()
        return ahead

    async def next_line(self) -> Line:
        """Wait for the next line and make it ``current``."""
        while not self.pending:
            self._ready.clear()
            await self._ready.wait()
        line = self.pending.popleft()
        self.current = line
        return line

    def finished(self, line: Line) -> None:
        if self.current is not None and self.current.id == line.id:
            self.current = None

    def check_skip(self, member_id: int, *, manager: bool) -> Line:
        """The line ``/skip`` would stop, or one sentence why not."""
        line = self.current
        if line is None:
            raise UserFacingError(NOTHING_PLAYING)
        if not manager and line.author_id != member_id:
            raise Forbidden("Only the member whose line is playing or a server manager can skip it.")
        return line

    def clear(self, member_id: int, *, manager: bool) -> int:
        """Remove waiting lines (all of them for a manager, else the member's own); returns how many."""
        if manager:
            removed = len(self.pending)
            self.pending.clear()
            return removed
        mine = [line for line in self.pending if line.author_id == member_id]
        if not mine and self.pending:
            raise Forbidden("You have no lines waiting; only a server manager can clear other members' lines.")
        self.pending = deque(line for line in self.pending if line.author_id != member_id)
        return len(mine)

    def drop_all(self) -> int:
        """Forget every waiting line (the bot left the channel); returns how many."""
        removed = len(self.pending)
        self.pending.clear()
        self.current = None
        return removed


class Playback:
    """Every server's queue and when each last played, keyed by guild id. One per bot (``bot.app``)."""

    def __init__(self, clock: Clock, idle_seconds: float, *, max_lines: int = MAX_QUEUED_LINES,
                 max_per_member: int = MAX_LINES_PER_MEMBER) -> None:
        self.clock = clock
        self.idle_seconds = idle_seconds
        self.max_lines = max_lines
        self.max_per_member = max_per_member
        self._queues: dict[int, GuildQueue] = {}
        self._active: dict[int, float] = {}
        self._ids = itertools.count(1)

    def queue(self, guild_id: int) -> GuildQueue:
        queue = self._queues.get(guild_id)
        if queue is None:
            queue = self._queues[guild_id] = GuildQueue(guild_id, max_lines=self.max_lines,
                                                        max_per_member=self.max_per_member)
            self.touch(guild_id)
        return queue

    def existing(self, guild_id: int) -> GuildQueue | None:
        return self._queues.get(guild_id)

    def line(self, guild_id: int, author_id: int, audio: bytes, content_type: str, label: str) -> Line:
        return Line(next(self._ids), guild_id, author_id, audio, content_type, label)

    def touch(self, guild_id: int) -> None:
        """Something happened in this server's voice session (joined, a line started or ended)."""
        self._active[guild_id] = self.clock.now()

    def idle_for(self, guild_id: int) -> float:
        return max(0.0, self.clock.now() - self._active.get(guild_id, self.clock.now()))

    def leave_reason(self, guild_id: int, humans_in_channel: int) -> str | None:
        """Why the bot should leave this server's voice channel now (:data:`LEFT_ALONE`, :data:`LEFT_IDLE`), or None."""
        if humans_in_channel <= 0:
            return LEFT_ALONE
        queue = self._queues.get(guild_id)
        if queue is not None and (queue.playing or queue.pending):
            return None
        if self.idle_seconds > 0 and self.idle_for(guild_id) >= self.idle_seconds:
            return LEFT_IDLE
        return None

    def forget(self, guild_id: int) -> int:
        """The bot left this server's voice channel: drop its queue; returns the lines that never played."""
        self._active.pop(guild_id, None)
        queue = self._queues.pop(guild_id, None)
        return queue.drop_all() if queue is not None else 0

    def guild_ids(self) -> list[int]:
        return list(self._queues)

    async def forget_user(self, user_id: int) -> int:
        """/forget-me: drop the user's waiting lines in every server (their audio); returns how many."""
        removed = 0
        for queue in self._queues.values():
            removed += queue.clear(user_id, manager=False) if queue.waiting_for(user_id) else 0
        return removed
