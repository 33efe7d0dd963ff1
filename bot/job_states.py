"""The clone job state machine: states, the moves allowed between them, and how a job's notice ends.

::

    submitting ──► pending ◄──► processing
        │             │              │
        ├──► lost     ├──► completed ◄┤
        └──► failed ◄─┴──────────────┘

A job is written 'submitting' before its paid request is sent and becomes 'pending' once the run is
recorded; a submit whose answer is lost (or a restart in between) makes it 'lost', never resubmitted. The
poller moves open jobs between 'pending' and 'processing' as NanoGPT reports, and ends them 'completed' or
'failed'. Values are stored in ``clone_jobs.state`` as these strings.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "LABELS",
    "OPEN_STATES",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "JobState",
    "NoticeOutcome",
    "can_move",
    "check_move",
    "is_open",
    "is_terminal",
]


class JobState(StrEnum):
    SUBMITTING = "submitting"
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    LOST = "lost"


class NoticeOutcome(StrEnum):
    """How the one notice of a finished job reads: its terminal state."""

    COMPLETED = "completed"
    FAILED = "failed"
    LOST = "lost"


#: Open states in a fixed order (SQL placeholders are built from it).
OPEN_STATES: tuple[JobState, ...] = (JobState.SUBMITTING, JobState.PENDING, JobState.PROCESSING)
TERMINAL_STATES: tuple[JobState, ...] = (JobState.COMPLETED, JobState.FAILED, JobState.LOST)

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.SUBMITTING: frozenset({JobState.PENDING, JobState.FAILED, JobState.LOST}),
    JobState.PENDING: frozenset({JobState.PENDING, JobState.PROCESSING, JobState.COMPLETED, JobState.FAILED}),
    JobState.PROCESSING: frozenset({JobState.PENDING, JobState.PROCESSING, JobState.COMPLETED, JobState.FAILED}),
    JobState.COMPLETED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.LOST: frozenset(),
}

#: The state as people see it (status card, /voice jobs).
LABELS: dict[str, str] = {
    JobState.SUBMITTING: "Submitting",
    JobState.PENDING: "Queued",
    JobState.PROCESSING: "Processing",
    JobState.COMPLETED: "Completed",
    JobState.FAILED: "Failed",
    JobState.LOST: "Not confirmed",
}


def is_open(state: str) -> bool:
    """Whether a job in ``state`` is still being submitted or polled."""
    return state in OPEN_STATES


def is_terminal(state: str) -> bool:
    return state in TERMINAL_STATES


def can_move(old: str, new: str) -> bool:
    """Whether a job may go from ``old`` to ``new`` (unknown states may not move)."""
    try:
        return JobState(new) in TRANSITIONS[JobState(old)]
    except ValueError:
        return False


def check_move(old: str, new: str) -> JobState:
    """``new`` as a :class:`JobState`; ``ValueError`` when the machine does not allow ``old`` → ``new``."""
    if not can_move(old, new):
        raise ValueError(f"a clone job cannot go from {old!r} to {new!r}")
    return JobState(new)
