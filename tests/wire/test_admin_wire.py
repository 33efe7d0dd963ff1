"""/nanovoice settings over the wire: who may use it, what it shows, and that a server's settings
override the environment for the budget, the clone role and the clone switch (the real bot against
the Discord emulator and the fake NanoGPT)."""

from __future__ import annotations

import pytest

from tests.fakes.discord import DEFAULT_EVERYONE_PERMISSIONS, MANAGE_GUILD
from tests.fakes.nanogpt import make_tone
from tests.fixtures_bot import World

pytest_plugins = ["tests.fixtures_nanogpt", "tests.fixtures_bot"]

DAY = 86_400
NO_MANAGE = "You need the Manage Server permission to do that."


def manager(world: World, name: str = "manager"):
    user = world.user(name)
    world.emu.set_member_permissions(user, DEFAULT_EVERYONE_PERMISSIONS | MANAGE_GUILD)
    return user


async def settings(world: World, user, **options):
    inter = await world.emu.slash(user, "nanovoice", subcommand="settings", options=options)
    message = await inter.wait_final(10)
    assert message.ephemeral, message
    assert message.allowed_mentions == {"parse": []}
    return message


def fields(message) -> dict[str, str]:
    [embed] = message.embeds
    return {f["name"]: f["value"] for f in embed["fields"]}


async def clone(world: World, user, name: str = "Me"):
    clip = world.emu.add_attachment(make_tone(4.0, "mp3"), "clip.mp3", "audio/mpeg")
    inter = await world.emu.slash(user, "voice", subcommand="clone",
                                  options={"audio": clip, "name": name, "provider": "qwen"})
    return await inter.wait_final(20)


def clone_requests(world: World) -> list:
    return world.nano.requests_to(r"^/voice-clone/(qwen|minimax)$")


async def test_members_without_manage_server_are_refused(world: World):
    member = world.user("member")
    inter = await world.emu.slash(member, "nanovoice", subcommand="settings", options={"clones_enabled": False})
    reply = await inter.wait_final(10)
    assert reply.content == NO_MANAGE and reply.ephemeral and not reply.embeds
    assert (await world.db.guilds.get(world.emu.guild_id)).clones_enabled is None  # nothing changed
    # and the command is hidden from them by default (Discord's default_permissions)
    command = world.emu.find_command("nanovoice")
    assert str(command["default_member_permissions"]) == str(MANAGE_GUILD)
    assert command["dm_permission"] is False


@pytest.mark.env(GUILD_DAILY_BUDGET_USD="5.00", CLONE_DAILY_LIMIT="3")
async def test_shows_effective_settings_and_where_they_come_from(world: World):
    boss = manager(world)
    shown = fields(await settings(world, boss))
    assert shown == {
        "Daily budget": "$5.00 (the bot's default)",
        "Who can clone voices": "Everyone",
        "Voice cloning": "On (the bot's default), 3 per member per day",
        "Voice channel playback": "On",
    }
    owner = fields(await settings(world, world.emu.owner))  # the owner has every permission
    assert owner == shown


@pytest.mark.env(GUILD_DAILY_BUDGET_USD="0", SAY_MAX_CHARS="10000")
async def test_server_budget_overrides_an_unlimited_environment(world: World):
    boss, alice = manager(world), world.user("alice")
    reply = await settings(world, boss, daily_budget_usd="0.01")
    assert reply.content == "Saved: daily budget $0.01."
    assert fields(reply)["Daily budget"] == "$0.01 (set for this server)"
    assert (await world.db.guilds.get(world.emu.guild_id)).daily_budget_micros == 10_000

    text = " ".join(f"word{i}" for i in range(2000))[:6000]  # 6,000 characters: $0.006 each with Kokoro
    first = await (await world.emu.slash(alice, "say", options={"text": text})).wait_final(10)
    assert first.files
    sent = len(world.nano.tts_requests)
    second = await (await world.emu.slash(alice, "say", options={"text": text[::-1].strip()})).wait_final(10)
    midnight = (int(world.clock.now()) // DAY + 1) * DAY
    assert second.content.endswith(f"daily NanoGPT budget, not enough for this speech ($0.006); it resets "
                                   f"<t:{midnight}:R>.")
    assert len(world.nano.tts_requests) == sent

    unlimited = await settings(world, boss, daily_budget_usd="0")
    assert unlimited.content == "Saved: no daily budget limit."
    assert fields(unlimited)["Daily budget"] == "No limit (set for this server)"
    third = await (await world.emu.slash(alice, "say", options={"text": text[::-1].strip()})).wait_final(10)
    assert third.files and len(world.nano.tts_requests) == sent + 1

    usage = await (await world.emu.slash(alice, "usage")).wait_final(10)
    assert fields(usage)["This server today"] == "$0.012 (no limit)"

    back = await settings(world, boss, daily_budget_usd="default")
    assert fields(back)["Daily budget"] == "No limit (the bot's default)"


@pytest.mark.parametrize(("typed", "answer"), [
    ("2,50", "“2,50” is not a dollar amount; write the daily budget like 2.50."),
    ("-3", "“-3” is not a dollar amount; write the daily budget like 2.50."),
    ("ten", "“ten” is not a dollar amount; write the daily budget like 2.50."),
    ("0.0000001", "Budgets can have at most six decimals (a millionth of a dollar); use e.g. 2.50."),
])
async def test_bad_budget_is_one_sentence_and_changes_nothing(world: World, typed: str, answer: str):
    boss = manager(world)
    inter = await world.emu.slash(boss, "nanovoice", subcommand="settings", options={"daily_budget_usd": typed})
    reply = await inter.wait_final(10)
    assert reply.content == answer and reply.ephemeral
    assert (await world.db.guilds.get(world.emu.guild_id)).daily_budget_micros is None


@pytest.mark.env(CLONE_CONFIRM="false")
async def test_clones_disabled_in_the_server(world: World):
    boss, alice = manager(world), world.user("alice")
    reply = await settings(world, boss, clones_enabled=False)
    assert reply.content == "Saved: voice cloning off."
    assert fields(reply)["Voice cloning"] == "Off (turned off for this server)"
    refused = await clone(world, alice)
    assert refused.content == "Voice cloning is turned off in this server."
    assert clone_requests(world) == []  # no NanoGPT request, no charge
    assert world.nano.charges == []
    assert await world.db.jobs.for_user(alice.id) == []

    await settings(world, boss, clones_enabled=True)
    accepted = await clone(world, alice)
    assert "turned off" not in accepted.content
    assert len(clone_requests(world)) == 1


@pytest.mark.env(CLONE_CONFIRM="false")
async def test_clone_role(world: World):
    role = world.emu.add_role("Voice actors")
    alice, bob = world.user("alice"), world.user("bob")
    world.emu.set_member_roles(bob, [int(role["id"])])
    boss = manager(world)
    await world.restart()  # the bot learns roles at connect (GUILD_CREATE)

    reply = await settings(world, boss, clone_role=int(role["id"]))
    assert reply.content == f"Saved: only <@&{role['id']}> may clone."
    assert fields(reply)["Who can clone voices"] == f"Members with <@&{role['id']}>"

    refused = await clone(world, alice)
    assert refused.content == f"Only members with the <@&{role['id']}> role can clone voices here."
    assert refused.pinged_user_ids == [] and refused.allowed_mentions == {"parse": []}
    assert clone_requests(world) == []
    allowed = await clone(world, bob)
    assert "role" not in allowed.content
    assert len(clone_requests(world)) == 1

    everyone = await settings(world, boss, clone_role=world.emu.guild_id)  # @everyone: all members again
    assert everyone.content == "Saved: everyone may clone."
    assert fields(everyone)["Who can clone voices"] == "Everyone"


async def test_bot_roles_cannot_be_clone_roles(world: World):
    boss = manager(world)
    bot_role = next(r for r in world.emu.guilds[world.emu.guild_id].roles.values() if r.get("managed"))
    inter = await world.emu.slash(boss, "nanovoice", subcommand="settings", options={"clone_role": int(bot_role["id"])})
    reply = await inter.wait_final(10)
    assert reply.content == (f"<@&{bot_role['id']}> belongs to a bot or an integration and can't be given to "
                             "members; pick another role.")
    assert (await world.db.guilds.get(world.emu.guild_id)).clone_role_id is None


@pytest.mark.env(GUILD_DAILY_BUDGET_USD="2.00")
async def test_reset_goes_back_to_the_environment(world: World):
    boss = manager(world)
    await settings(world, boss, daily_budget_usd="9.99", clones_enabled=False)
    both = await settings(world, boss, reset=True, clones_enabled=True)
    assert both.content == "Use reset on its own: it puts every setting back to the bot's defaults."
    reply = await settings(world, boss, reset=True)
    assert reply.content == "Saved: every setting is back to the bot's defaults."
    assert fields(reply) == {
        "Daily budget": "$2.00 (the bot's default)",
        "Who can clone voices": "Everyone",
        "Voice cloning": "On (the bot's default), 3 per member per day",
        "Voice channel playback": "On",
    }
    stored = await world.db.guilds.get(world.emu.guild_id)
    assert (stored.daily_budget_micros, stored.clone_role_id, stored.clones_enabled) == (None, None, None)
