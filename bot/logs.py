"""Logging, set up once at start: discord.py's formatter, LOG_LEVEL, secret redaction, and no voice-support
warnings."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import discord

REDACTED = "[redacted]"
MIN_SECRET_LENGTH = 6  # shorter values are not real tokens or keys, and redacting them mangles text


def redaction_list(secrets: Iterable[str]) -> tuple[str, ...]:
    """The values worth redacting: real secrets, longest first."""
    return tuple(sorted({s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True))


def redact(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with every value of ``redaction_list(...)`` replaced by ``[redacted]``."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class RedactSecrets(logging.Filter):
    """Replaces every configured secret in a record's message and arguments (belt and braces:
    nothing should log a secret in the first place)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = redaction_list(secrets)

    def _scrub(self, text: str) -> str:
        return redact(text, self._secrets)

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


#: discord.py's start-up warnings about optional voice-channel libraries, word for word (discord/client.py).
VOICE_SUPPORT_WARNINGS = frozenset({
    "PyNaCl is not installed, voice will NOT be supported",
    "davey is not installed, voice will NOT be supported",
})


class DropVoiceSupportWarnings(logging.Filter):
    """Drops exactly discord.py's two "voice will NOT be supported" warnings.

    They are about joining voice channels, which the bot doesn't do (voice *messages* are files and need
    neither library), so at start-up they only alarm operators. When the bot starts using voice channels,
    install ``discord.py[voice]`` and remove this filter.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.WARNING and record.msg in VOICE_SUPPORT_WARNINGS)


_DROP_VOICE_WARNINGS = DropVoiceSupportWarnings()


def setup_logging(level: str, secrets: Iterable[str] = ()) -> None:
    """Configure the root logger once: discord.py's handler, our level, ``discord.http`` at WARNING."""
    discord.utils.setup_logging(level=getattr(logging, level.upper(), logging.INFO), root=True)
    redactor = RedactSecrets(secrets)
    for handler in logging.getLogger().handlers:
        handler.addFilter(redactor)
    logging.getLogger("discord.http").setLevel(logging.WARNING)
    logging.getLogger("discord.client").addFilter(_DROP_VOICE_WARNINGS)  # added once: filters are a set
    # aiosqlite's DEBUG lines print every SQL parameter, embedding URL tokens included.
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, logging.getLogger().level))
    logging.getLogger("discord.gateway").setLevel(max(logging.INFO, logging.getLogger().level))
