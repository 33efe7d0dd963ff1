"""CloneService's pure helpers: the custom voice ids it sends NanoGPT and the voice-name rule. The service
against the fake NanoGPT (money, polling, restarts) is in ``tests/wire/test_clone_service.py``."""

from __future__ import annotations

import re

import pytest

from bot.cloning import make_custom_voice_id
from bot.errors import UserFacingError
from bot.voices import validate_voice_name

VOICE_ID = re.compile(r"^[A-Za-z][A-Za-z0-9]{7,}$")


def test_custom_voice_ids_are_valid_unique_and_contain_a_digit():
    ids = {make_custom_voice_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(VOICE_ID.match(i) and any(c.isdigit() for c in i) for i in ids)


@pytest.mark.parametrize("name", ["a" * 33, "   ", "", "bad\x07bell", "zero\u200bwidth", "evil\u202eoverride",
                                  "line\nbreak", "iso\u2066late", "bom\ufeff"])
def test_bad_names_are_one_sentence(name):
    with pytest.raises(UserFacingError) as info:
        validate_voice_name(name)
    message = str(info.value)
    assert message.endswith(".") and message.count(". ") == 0


def test_names_are_trimmed_and_keep_unicode():
    assert validate_voice_name("  Zoë   the  Bard ") == "Zoë the Bard"
    assert validate_voice_name("日本語の声") == "日本語の声"
    assert len(validate_voice_name("x" * 32)) == 32
