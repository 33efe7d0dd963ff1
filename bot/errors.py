"""Errors whose text is meant for the person who ran a command.

Anything raised as :class:`UserFacingError` (or a subclass) is shown as-is by the global error
handler, ephemerally; everything else is an unexpected error and gets an apology plus an error id.
Keep messages to one sentence that says what to change.
"""

from __future__ import annotations


class UserFacingError(Exception):
    """An error whose ``str()`` is a complete sentence safe to show to the user."""


class NotFound(UserFacingError):
    """The thing the user named does not exist (for them)."""


class Forbidden(UserFacingError):
    """The user may not do this here."""
