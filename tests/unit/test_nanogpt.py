"""bot.nanogpt's pure helpers: ``Retry-After`` parsing, content types and file extensions, exact decimals.
The client against the fake NanoGPT is in ``tests/wire/test_nanogpt.py``."""

from __future__ import annotations

import email.utils
from decimal import Decimal

import pytest

from bot.nanogpt import CloneTicket, dumps_json, extension_for, normalize_content_type, parse_retry_after


def test_parse_retry_after() -> None:
    assert parse_retry_after("5") == 5 and parse_retry_after("1.5") == 1.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("-3") == 0
    now = 1_700_000_000.0
    assert parse_retry_after(email.utils.formatdate(now + 42, usegmt=True), now=now) == pytest.approx(42)
    assert parse_retry_after(email.utils.formatdate(now - 42, usegmt=True), now=now) == 0


def test_content_types_and_extensions() -> None:
    assert normalize_content_type("audio/mp3") == "audio/mpeg"
    assert normalize_content_type("Audio/X-WAV; charset=binary") == "audio/wav"
    assert [extension_for(t) for t in ("audio/mpeg", "audio/wav", "audio/ogg", "audio/opus", "audio/aac",
                                       "audio/flac", "application/json")] == \
        ["mp3", "wav", "ogg", "ogg", "aac", "flac", "bin"]
    # One table for every file the bot names after a content type: aliases and parameters resolve first.
    assert [extension_for(t) for t in ("Audio/MP3; rate=44100", "AUDIO/MPEG", "audio/x-wav",
                                       "application/ogg", "audio/ogg; codecs=opus", "audio/x-m4a", "audio/webm",
                                       "application/octet-stream", "", None)] == \
        ["mp3", "mp3", "wav", "ogg", "ogg", "m4a", "webm", "bin", "bin", "bin"]


def test_decimals_round_trip_exactly() -> None:
    assert dumps_json({"cost": Decimal("0.0050388"), "n": [Decimal("1.0"), 2]}) == '{"cost":0.0050388,"n":[1.0,2]}'
    ticket = CloneTicket("r", "pending", None, Decimal("0.0050388"), "USD", True, None, None, {})
    assert ticket.cost_micros == 5039
    assert CloneTicket("r", "pending", None, None, None, None, None, None, {}).cost_micros is None
