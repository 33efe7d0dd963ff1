"""Shards over the wire: SHARD_COUNT runs the real bot as discord.py's AutoShardedBot, one gateway
connection per shard, and the emulator sends each guild's events only to the connection of shard
``(guild_id >> 22) % n`` (DMs to shard 0), as Discord does."""

from __future__ import annotations

import json

import aiohttp
import pytest
from discord.ext import commands

from tests.fakes.discord import DiscordEmulator
from tests.fixtures_bot import World

pytest_plugins = ["tests.fixtures_nanogpt", "tests.fixtures_bot"]


def guild_id_on(emu: DiscordEmulator, shard: int, count: int) -> int:
    """A fresh guild id whose events Discord sends to ``shard`` of ``count``."""
    flake = emu.snowflake()
    ms = flake >> 22
    ms += (shard - ms % count) % count
    return (ms << 22) | (flake & ((1 << 22) - 1))


@pytest.mark.env(SHARD_COUNT="2")
async def test_one_process_runs_both_shards_and_answers_say_in_a_guild_on_each(world: World) -> None:
    emu, bot = world.emu, world.bot
    world.bot.nanogpt.tts_poll_interval = 0.02
    assert isinstance(bot, commands.AutoShardedBot)
    assert bot.shard_count == 2 and sorted(bot.shards) == [0, 1]
    assert sorted(map(tuple, emu.identified_shards)) == [(0, 2), (1, 2)]  # one IDENTIFY per shard

    # The default guild lives on one shard; a guild joined while running lives on the other.
    first = emu.guild_id
    other_shard = 1 - emu.shard_of(first, 2)
    second = (await emu.join_guild(guild_id_on(emu, other_shard, 2), "Other Shard Guild")).id
    await emu.wait_until(lambda: bot.get_guild(second) is not None, 5, "the joined guild on its shard")
    assert bot.get_guild(first).shard_id == emu.shard_of(first, 2)
    assert bot.get_guild(second).shard_id == other_shard

    for guild_id in (first, second):
        alice = emu.add_user(name=f"alice-{guild_id % 1000}", guild_id=guild_id)
        channel = next(iter(emu.guilds[guild_id].channels))
        inter = await emu.slash(alice, "say", options={"text": f"hello {guild_id}"}, channel_id=channel)
        # Exactly one connection got the interaction: the one of the guild's own shard.
        assert inter.delivered_to == [[emu.shard_of(guild_id, 2), 2]]
        reply = await inter.wait_final(10)
        assert reply.files, f"no voice message in guild {guild_id}"
    assert [r["text"] for r in world.nano.tts_requests] == [f"hello {first}", f"hello {second}"]


async def test_emulator_gateway_bot_shard_count_and_dm_routing(discord_emulator: DiscordEmulator) -> None:
    """Raw protocol: GET /gateway/bot recommends the configured count; READY and GUILD_CREATE carry
    only the shard's guilds; a DM event goes to shard 0 alone, a guild's event to its shard alone."""
    emu = discord_emulator
    emu.shard_count = 2
    on_one = emu.add_guild(guild_id_on(emu, 1, 2), "Shard One Guild").id
    on_zero = emu.guild_id if emu.shard_of(emu.guild_id, 2) == 0 else emu.add_guild(guild_id_on(emu, 0, 2)).id
    headers = {"Authorization": f"Bot {emu.token}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{emu.api_base}/gateway/bot", headers=headers) as resp:
            assert (await resp.json())["shards"] == 2
        sockets = []
        for shard in (0, 1):
            ws = await http.ws_connect(emu.gateway_url)
            assert (await ws.receive_json())["op"] == 10
            await ws.send_str(json.dumps({"op": 2, "d": {"token": emu.token, "intents": 1, "shard": [shard, 2],
                                                         "properties": {}}}))
            ready = await ws.receive_json()
            assert ready["t"] == "READY" and ready["d"]["shard"] == [shard, 2]
            guilds = {int(g["id"]) for g in ready["d"]["guilds"]}
            assert guilds == {g for g in emu.guilds if emu.shard_of(g, 2) == shard}
            assert (on_zero if shard == 0 else on_one) in guilds
            for _ in guilds:
                assert (await ws.receive_json())["t"] == "GUILD_CREATE"
            sockets.append(ws)
        assert await emu.dispatch("TYPING_START", {"user_id": "1"}, guild_id=None) == [[0, 2]]
        assert await emu.dispatch("TYPING_START", {"user_id": "1"}, guild_id=on_one) == [[1, 2]]
        assert (await sockets[0].receive_json())["t"] == "TYPING_START"
        assert (await sockets[1].receive_json())["t"] == "TYPING_START"
        for ws in sockets:
            await ws.close()
