"""bot.job_states: the clone job state machine, and the values stored in clone_jobs.state."""

from __future__ import annotations

import pytest

from bot.job_states import (
    LABELS,
    OPEN_STATES,
    TERMINAL_STATES,
    JobState,
    NoticeOutcome,
    can_move,
    check_move,
    is_open,
    is_terminal,
)


def test_stored_values_are_the_strings_the_database_has_always_held():
    assert [s.value for s in JobState] == ["submitting", "pending", "processing", "completed", "failed", "lost"]
    assert JobState.PENDING == "pending" and f"{JobState.LOST}" == "lost"
    assert {o.value for o in NoticeOutcome} == {s.value for s in TERMINAL_STATES}


def test_open_and_terminal_states_split_every_state():
    assert set(OPEN_STATES) | set(TERMINAL_STATES) == set(JobState)
    assert not set(OPEN_STATES) & set(TERMINAL_STATES)
    assert all(is_open(s) and not is_terminal(s) for s in ("submitting", "pending", "processing"))
    assert all(is_terminal(s) and not is_open(s) for s in ("completed", "failed", "lost"))
    assert not is_open("bogus") and not is_terminal("bogus")


@pytest.mark.parametrize(("old", "new"), [
    ("submitting", "pending"), ("submitting", "failed"), ("submitting", "lost"),
    ("pending", "processing"), ("processing", "pending"), ("pending", "pending"),
    ("pending", "completed"), ("processing", "completed"), ("processing", "failed"),
])
def test_the_moves_the_service_makes_are_allowed(old, new):
    assert can_move(old, new)
    assert check_move(old, new) is JobState(new)


@pytest.mark.parametrize(("old", "new"), [
    ("submitting", "completed"),  # a run is polled before it can complete
    ("submitting", "processing"),
    ("pending", "submitting"),  # never resubmitted
    ("pending", "lost"),  # lost only means "sent, answer unknown"
    ("completed", "failed"), ("failed", "pending"), ("lost", "pending"),  # terminal states stay
    ("pending", "bogus"), ("bogus", "pending"),
])
def test_other_moves_are_refused(old, new):
    assert not can_move(old, new)
    with pytest.raises(ValueError):
        check_move(old, new)


def test_every_state_has_a_label():
    assert set(LABELS) == set(JobState)
    assert LABELS[JobState.PENDING] == "Queued" and LABELS["lost"] == "Not confirmed"
