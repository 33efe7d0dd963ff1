"""The real bot against the emulator: start-up, the fixed command set, one round trip."""

from __future__ import annotations

import time

import pytest

from tests.fixtures_bot import World

# The fixed command set: command → subcommand → option names (required ones first, as Discord demands).
# These names are a contract with server members and operators: they never change.
EXPECTED_SLASH = {
    "voice": {
        "clone": ["audio", "name", "provider", "transcript", "model", "noise_reduction", "normalize_volume"],
        "list": [],
        "info": ["name"],
        "rename": ["name", "new_name"],
        "delete": ["name"],
        "default": ["name"],
        "jobs": [],
    },
    "say": ["text", "voice", "speed", "voice_message"],
    "join": ["channel"],
    "leave": [],
    "skip": [],
    "clear": [],
    "usage": [],
    "forget-me": [],
    "nanovoice": {"settings": None},  # its options are ours to choose
    "help": [],
}
EXPECTED_MESSAGE_MENUS = {"Clone this voice", "Speak this message"}


def _options(command):
    return [o["name"] for o in command.get("options", [])]


async def test_synced_commands_are_the_fixed_set(world: World):
    # What a server's members can see; the owner's DM-only /owner is not in that set.
    commands = [c for c in world.emu.global_commands if c.get("contexts") is None or 0 in c["contexts"]]
    slash = {c["name"]: c for c in commands if c.get("type", 1) == 1}
    menus = {c["name"] for c in commands if c.get("type") == 3}
    assert set(slash) == set(EXPECTED_SLASH)
    assert menus == EXPECTED_MESSAGE_MENUS
    for name, expected in EXPECTED_SLASH.items():
        if isinstance(expected, dict):
            subs = {o["name"]: o for o in slash[name]["options"] if o["type"] == 1}
            assert set(subs) == set(expected), name
            for sub, options in expected.items():
                if options is not None:
                    assert _options(subs[sub]) == options, f"/{name} {sub}"
        else:
            assert _options(slash[name]) == expected, name
    clone = next(o for o in slash["voice"]["options"] if o["name"] == "clone")
    provider = next(o for o in clone["options"] if o["name"] == "provider")
    assert {c["value"] for c in provider["choices"]} == {"minimax", "qwen"}
    say = slash["say"]
    speed = next(o for o in say["options"] if o["name"] == "speed")
    assert (speed["min_value"], speed["max_value"]) == (0.5, 2.0)


async def test_auto_sync_only_when_the_definition_changes(world: World):
    assert world.emu.global_sync_count == 1
    await world.restart()
    assert world.emu.global_sync_count == 1  # unchanged: no second global sync
    await world.restart(SYNC_COMMANDS="always")
    assert world.emu.global_sync_count == 2
    await world.restart(SYNC_COMMANDS="off")
    assert world.emu.global_sync_count == 2


async def test_dev_guild_sync(world: World):
    await world.restart(DEV_GUILD_ID=str(world.emu.guild_id))
    assert world.emu.guild_sync_count(world.emu.guild_id) == 1
    names = {c["name"] for c in world.emu.guild_commands[world.emu.guild_id]}
    assert {"voice", "say", "usage", "forget-me", "nanovoice"} <= names


async def test_start_up_is_fast(world: World):
    await world.stop()
    started = time.perf_counter()
    await world.start()
    elapsed = time.perf_counter() - started
    assert world.bot.is_ready()
    # Generous bound for a loaded CI machine; the benchmark reports the real figure.
    assert elapsed < 3.0, elapsed


async def test_one_command_round_trip(world: World):
    member = world.user("ada")
    interaction = await world.emu.slash(member, "usage")
    message = await interaction.wait_final(timeout=10)
    assert message.embeds or message.content
    assert "thinking" not in (message.content or "").lower()


@pytest.mark.allow_unexpected_errors
async def test_unexpected_error_gets_an_apology_with_an_id(world: World, monkeypatch):
    async def broken(*args, **kwargs):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(world.bot.limits, "usage", broken)
    interaction = await world.emu.slash(world.user(), "usage")
    message = await interaction.wait_final(timeout=10)
    assert "error id" in message.content
    error_id = message.content.split("`")[1]
    assert any(error_id in line for line in world.unexpected_errors())
    assert "kaboom" not in message.content


async def test_bot_process_stops_cleanly_on_sigterm(world: World):
    import asyncio
    import signal

    await world.stop()
    proc = await world.spawn()
    proc.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(proc.wait(), 15)
    output = proc.log_path.read_text()
    assert code == 0, output
    assert "Traceback" not in output
