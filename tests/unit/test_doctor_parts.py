"""`nanovoice check` pieces that need no server at all: the invite permissions, ffmpeg, the database, and the
Docker health check when the bot runs no HTTP server. The pieces that ask a server (NanoGPT, the health
check's ``/healthz``, timeouts) are in ``tests/wire/test_doctor_parts.py``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bot.doctor import INVITE_PERMISSIONS, check_database, check_ffmpeg, health, invite_url
from bot.storage import Database
from tests.fixtures_db import make_config, sqlite_file_at_version


def test_invite_permissions_are_exactly_the_nine_needed():
    assert INVITE_PERMISSIONS == ((1 << 10) + (1 << 11) + (1 << 14) + (1 << 15) + (1 << 16) + (1 << 20) + (1 << 21)
                                  + (1 << 38) + (1 << 46))
    assert INVITE_PERMISSIONS == 70643625348096
    assert invite_url(42) == ("https://discord.com/oauth2/authorize?client_id=42"
                              "&scope=bot+applications.commands&permissions=70643625348096")


async def test_ffmpeg():
    result = await check_ffmpeg(make_config())
    assert result.problems == 0, result.lines
    assert result.lines[0].startswith("ok: ffmpeg version ") and "libmp3lame, libopus" in result.lines[0]


async def test_database_created_migrated_and_written(tmp_path):
    path = tmp_path / "deep" / "dir" / "db.sqlite3"
    result = await check_database(make_config(database_path=path))
    assert result.problems == 0
    assert result.lines == [f"ok: database {path} (schema version {len(Database.migrations())}) is writable"]


async def test_database_checked_beside_a_running_bot(tmp_path):
    """The bot claims its SQLite file (a second bot is refused); `nanovoice check` still opens and writes it."""
    path = tmp_path / "db.sqlite3"
    bot_db = await Database(path).connect()
    try:
        result = await check_database(make_config(database_path=path))
        assert result.lines == [f"ok: database {path} (schema version {len(Database.migrations())}) is writable"]
        assert await bot_db.get_meta("check_write_test") is not None
    finally:
        await bot_db.close()


async def test_database_unwritable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = await check_database(make_config(database_path=blocker / "db.sqlite3"))
    assert result.problems == 1
    assert result.lines[0].startswith(f"problem: cannot open the database {blocker / 'db.sqlite3'}")


# -- the Docker HEALTHCHECK ------------------------------------------------------------------------


async def test_health_without_http_server_checks_the_database(tmp_path):
    path = tmp_path / "nanovoice.sqlite3"
    assert health({"DATABASE_PATH": str(path)}) == 1  # the bot has not created it yet
    db = await Database(path).connect()
    try:
        assert health({"DATABASE_PATH": str(path)}) == 0  # readable while the bot holds it open (WAL)
    finally:
        await db.close()
    assert health({"DATABASE_PATH": str(path)}) == 0
    other = tmp_path / "empty.sqlite3"
    sqlite_file_at_version(other)  # exists but never migrated
    assert health({"DATABASE_PATH": str(other)}) == 1
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"not a database at all" * 100)
    assert health({"DATABASE_PATH": str(garbage)}) == 1


def test_health_module_entry_point(tmp_path):
    path = tmp_path / "nanovoice.sqlite3"
    sqlite_file_at_version(path, 1)
    env = {"DATABASE_PATH": str(path), "PATH": "/usr/bin:/bin"}
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "bot.doctor", "health"], cwd=root, env=env,
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
