"""Shared building blocks for tests of ``bot/`` services without Discord: a test ``Config`` and a
fresh, migrated SQLite ``Database`` per test."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest

from bot.config import Config, Secret
from bot.storage import Database

TEST_DISCORD_TOKEN = "discord-token-secret"
TEST_NANOGPT_KEY = "sk-nano-test"


def make_config(**changes: object) -> Config:
    """The configuration defaults (``Config()``) with test secrets, and ``changes`` applied."""
    base = Config(discord_token=Secret(TEST_DISCORD_TOKEN), nanogpt_api_key=Secret(TEST_NANOGPT_KEY))
    return dataclasses.replace(base, **changes)


@pytest.fixture
async def db(tmp_path) -> AsyncIterator[Database]:
    database = await Database(tmp_path / "db.sqlite3").connect()
    yield database
    await database.close()
