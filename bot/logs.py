"""Logging, set up once at start: discord.py's formatter, LOG_LEVEL, and secret redaction."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import discord

REDACTED = "[redacted]"


class RedactSecrets(logging.Filter):
    """Replaces every configured secret in a record's message and arguments (belt and braces:
    nothing should log a secret in the first place)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = tuple(s for s in secrets if s and len(s) >= 6)

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        scrubbed = self._scrub(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._scrub(record.exc_text)
        return True


def setup_logging(level: str, secrets: Iterable[str] = ()) -> None:
    """Configure the root logger once: discord.py's handler, our level, ``discord.http`` at WARNING."""
    discord.utils.setup_logging(level=getattr(logging, level.upper(), logging.INFO), root=True)
    redactor = RedactSecrets(secrets)
    for handler in logging.getLogger().handlers:
        handler.addFilter(redactor)
    logging.getLogger("discord.http").setLevel(logging.WARNING)
    # aiosqlite's DEBUG lines print every SQL parameter, embedding URL tokens included.
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, logging.getLogger().level))
    logging.getLogger("discord.gateway").setLevel(max(logging.INFO, logging.getLogger().level))
