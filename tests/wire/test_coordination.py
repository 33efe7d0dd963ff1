"""Several bot processes on one PostgreSQL database, started at once against one emulator: global commands
are synced once (the others find the hash under the command-sync section), and IDENTIFYs of one bucket
(``shard_id % max_concurrency``) are 5 s apart across the processes, while different buckets identify at once.

Each bot here is a real ``ShardedNanoVoice`` with its own HTTP session, Database and pool (as a process has)
and discord.py's real IDENTIFY path, unlike the ``world`` fixture, which skips the IDENTIFY wait."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import pytest

from bot.app import IDENTIFY_INTERVAL, NanoVoice, ShardedNanoVoice, build_bot, http_session
from bot.clock import Clock
from bot.config import load_config
from bot.nanogpt import NanoGPTClient
from bot.storage import Database
from tests.fakes.discord import DiscordEmulator
from tests.fakes.nanogpt import FakeNanoGPT

pytest_plugins = ["tests.fixtures_nanogpt", "tests.fixtures_postgres"]


def _env(emu: DiscordEmulator, nano: FakeNanoGPT, **overrides: str) -> dict[str, str]:
    return {"DISCORD_TOKEN": emu.token, "NANOGPT_API_KEY": nano.api_key, "NANOGPT_BASE_URL": nano.base_url,
            "DISCORD_API_BASE": emu.api_base, "DISCORD_GATEWAY_URL": emu.gateway_url, "LOG_LEVEL": "INFO",
            **overrides}


@contextlib.asynccontextmanager
async def bots_at_once(emu: DiscordEmulator, nano: FakeNanoGPT, envs: Sequence[dict[str, str]],
                       ready_timeout: float = 30) -> AsyncIterator[list[NanoVoice]]:
    """Start one bot per environment at the same moment (login with its command sync, then the gateway),
    each on resources of its own; yields them once all are ready; closes them."""
    async with contextlib.AsyncExitStack() as stack:
        bots: list[NanoVoice] = []
        for overrides in envs:
            config = load_config(_env(emu, nano, **overrides), dotenv=False)
            session = await stack.enter_async_context(http_session())
            db = await Database.from_config(config).connect()
            stack.push_async_callback(db.close)
            nanogpt = NanoGPTClient(session, config.nanogpt_base_url, config.nanogpt_api_key)
            bot = build_bot(config, session=session, db=db, nanogpt=nanogpt, clock=Clock(), http_host="127.0.0.1",
                            guild_ready_timeout=0.05)
            stack.push_async_callback(bot.close)
            bots.append(bot)
        await asyncio.gather(*(bot.login(emu.token) for bot in bots))
        tasks = [asyncio.create_task(bot.connect(reconnect=True)) for bot in bots]
        try:
            await asyncio.wait_for(asyncio.gather(*(bot.wait_until_ready() for bot in bots)), ready_timeout)
            yield bots
        finally:
            for bot in bots:
                await bot.close()
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


def _two_shard_processes(url: str, **extra: str) -> list[dict[str, str]]:
    return [{"DATABASE_URL": url, "SHARD_COUNT": "2", "SHARD_IDS": str(shard), **extra} for shard in (0, 1)]


async def test_two_processes_sync_commands_once_and_identify_one_bucket_5_s_apart(
        discord_emulator: DiscordEmulator, fake_nanogpt: FakeNanoGPT, postgres_url: str) -> None:
    emu = discord_emulator
    emu.shard_count, emu.max_concurrency = 2, 1
    async with bots_at_once(emu, fake_nanogpt, _two_shard_processes(postgres_url)) as bots:
        assert all(isinstance(bot, ShardedNanoVoice) for bot in bots)
        assert emu.global_sync_count == 1
        assert sorted(bot.synced for bot in bots) == ["global commands unchanged", "synced globally"]
        (first, shard_a), (second, shard_b) = sorted(emu.identifies)
        assert sorted([shard_a, shard_b]) == [[0, 2], [1, 2]]  # one IDENTIFY per process, each its own shard
        assert second - first >= IDENTIFY_INTERVAL  # one bucket: Discord's 5 s, although two processes
        assert [await bot.max_concurrency() for bot in bots] == [1, 1]

    # Started again with the same definition: nobody syncs.
    async with bots_at_once(emu, fake_nanogpt, _two_shard_processes(postgres_url)) as bots:
        assert emu.global_sync_count == 1
        assert [bot.synced for bot in bots] == ["global commands unchanged"] * 2


async def test_shards_in_different_buckets_identify_at_once(
        discord_emulator: DiscordEmulator, fake_nanogpt: FakeNanoGPT, postgres_url: str) -> None:
    emu = discord_emulator
    emu.shard_count, emu.max_concurrency = 2, 2  # shard 0 in bucket 0, shard 1 in bucket 1
    async with bots_at_once(emu, fake_nanogpt, _two_shard_processes(postgres_url)) as bots:
        (first, _), (second, _) = sorted(emu.identifies)
        assert second - first < 2.0
        assert emu.global_sync_count == 1
        assert [await bot.max_concurrency() for bot in bots] == [2, 2]


async def test_dev_guild_commands_are_synced_once_by_processes_sharing_a_database(
        discord_emulator: DiscordEmulator, fake_nanogpt: FakeNanoGPT, postgres_url: str) -> None:
    emu = discord_emulator
    emu.shard_count, emu.max_concurrency = 2, 2
    envs = _two_shard_processes(postgres_url, DEV_GUILD_ID=str(emu.guild_id))
    async with bots_at_once(emu, fake_nanogpt, envs) as bots:
        assert emu.guild_sync_count(emu.guild_id) == 1 and emu.global_sync_count == 0
        assert sorted(bot.synced for bot in bots) == [f"commands of guild {emu.guild_id} unchanged",
                                                      f"synced to guild {emu.guild_id}"]
        assert {c["name"] for c in emu.guild_commands[emu.guild_id]} >= {"voice", "say", "usage"}


@pytest.mark.parametrize("shard_ids", ["0", "1"])
async def test_sqlite_keeps_discord_py_identify_spacing_within_one_process(
        discord_emulator: DiscordEmulator, fake_nanogpt: FakeNanoGPT, tmp_path, shard_ids: str) -> None:
    """On SQLite one process runs every shard: discord.py's own hook (the first IDENTIFY at once, each
    later one 5 s after) spaces them; the bot does not ask GET /gateway/bot for buckets."""
    emu = discord_emulator
    emu.shard_count, emu.max_concurrency = 2, 2
    env = {"DATABASE_PATH": str(tmp_path / "one.sqlite3"), "SHARD_COUNT": "2"}
    if shard_ids == "1":
        env["SHARD_COUNT"] = "1"  # one shard: a single initial IDENTIFY, no wait at all
    async with bots_at_once(emu, fake_nanogpt, [env]) as (bot,):
        times = sorted(t for t, _ in emu.identifies)
        if shard_ids == "0":
            assert len(times) == 2 and times[1] - times[0] >= IDENTIFY_INTERVAL - 0.1
        else:
            assert len(times) == 1
        assert not any(r.path.endswith("/gateway/bot") for r in emu.requests)
        assert bot._max_concurrency is None


# -- SQLite: one process per database file -----------------------------------------------------------------


async def test_a_second_process_on_the_sqlite_file_exits_2_and_the_first_keeps_running(world) -> None:
    await world.stop()  # the in-process bot lets go of the file: the processes below are its users
    first = await world.spawn()
    identified = world.emu.identify_count
    try:
        second = await world.spawn(wait_ready=False)
        code = await asyncio.wait_for(second.wait(), 30)
        lines = [line for line in second.log_path.read_text().splitlines() if line.startswith("nanovoice:")]
        assert code == 2, second.log_path.read_text()
        assert lines == [f"nanovoice: another nanovoice process is already using the database "
                         f"{world.database_path}: stop it first, or share a PostgreSQL database (DATABASE_URL) "
                         "between processes"]
        assert "Traceback" not in second.log_path.read_text()
        assert world.emu.identify_count == identified  # the refused one never reached Discord's gateway

        # The first still answers.
        inter = await world.emu.slash(world.user("alice"), "help")
        reply = await inter.wait_final(10)
        assert reply.embeds or reply.content
        assert first.returncode is None

        # SIGKILL leaves no stale claim: the kernel dropped the lock with the process.
        await world.kill(first)
        third = await world.spawn()
        await world.terminate(third)
        assert third.returncode == 0, third.log_path.read_text()
    finally:
        await world.kill(first)
