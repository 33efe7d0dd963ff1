"""/help over the wire: one private card with every command and this server's limits and prices."""

from __future__ import annotations

import dataclasses
import re

import pytest

from bot import providers
from tests.fixtures_bot import World

ALL_COMMANDS = ["/voice clone", "/voice list", "/voice info", "/voice rename", "/voice delete", "/voice default",
                "/voice jobs", "/say", "/join", "/leave", "/skip", "/clear", "/usage", "/forget-me",
                "/nanovoice settings", "Clone this voice", "Speak this message", "/help"]


async def ask_help(world: World, user) -> dict:
    inter = await world.emu.slash(user, "help")
    message = await inter.wait_final(10)
    assert message.ephemeral and message.allowed_mentions == {"parse": []} and not message.content
    (embed,) = message.embeds
    return embed


def fields(embed: dict) -> dict[str, str]:
    return {f["name"]: f["value"] for f in embed.get("fields", [])}


@pytest.mark.env(CLONE_DAILY_LIMIT="2", SAY_MAX_CHARS="1500", SAY_COOLDOWN_SECONDS="4", GUILD_DAILY_BUDGET_USD="7.5")
async def test_help_lists_every_command_and_this_servers_limits(world: World):
    embed = await ask_help(world, world.user("alice"))
    card = fields(embed)
    listed = [line.split("**")[1] for line in card["Commands"].split("\n")]
    assert listed == ALL_COMMANDS
    assert card["Clone prices and recordings"] == (
        "MiniMax: $1.00 a clone, 10 s–5 min of audio\n"
        "Qwen3-TTS: $0.25 a clone, 3 s–5 min of audio; only the first 30 s is used")
    assert card["Your daily clone limit"] == "You may start 2 clones a day (UTC)."
    assert card["This server's budget"] == "$7.50 a day (UTC) for clones and speech together."
    assert card["/say"] == "Up to 1,500 characters, one line every 4 seconds."
    assert card["Speech prices"].startswith("NanoGPT charges speech by the character")
    assert "Kokoro-82m: $0.001 per 1,000 characters" in card["Speech prices"]
    assert "Minimax-Speech-02-HD: up to $0.10 per 1,000 characters (my estimate)" in card["Speech prices"]
    text = " ".join([embed["title"], embed["description"], *card, *card.values(), embed["footer"]["text"]])
    assert not re.search(r"\b[A-Z]+_[A-Z_]+\b", text), "no environment-variable names for members"
    assert world.nano.requests == []  # /help costs nothing


async def test_help_follows_the_servers_own_settings_and_the_provider_table(world: World, monkeypatch):
    now = world.clock.now()
    role = world.emu.add_role("Cloners")
    await world.db.guilds.update(world.emu.guild_id, now, daily_budget_micros=2_000_000,
                                 clone_role_id=int(role["id"]))
    monkeypatch.setitem(providers.PROVIDERS, "qwen",
                        dataclasses.replace(providers.PROVIDERS["qwen"], price_micros=300_000))
    card = fields(await ask_help(world, world.user("bob")))
    assert card["This server's budget"] == "$2.00 a day (UTC) for clones and speech together."
    only = f"Only members with <@&{role['id']}> may clone."
    assert card["Your daily clone limit"] == f"You may start 3 clones a day (UTC). {only}"
    assert "Qwen3-TTS: $0.30 a clone" in card["Clone prices and recordings"]
    await world.db.guilds.update(world.emu.guild_id, now, clones_enabled=False)
    card = fields(await ask_help(world, world.user("carol")))
    assert card["Your daily clone limit"] == "Voice cloning is turned off on this server."
