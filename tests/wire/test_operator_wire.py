"""The operator's controls over the wire: GUILD_DAILY_BUDGET_USD is a ceiling servers may only
tighten, BOT_DAILY_BUDGET_USD across every server, ALLOWED_GUILD_IDS, ALLOWED_TTS_MODELS, prices in the
voice autocomplete, and the owner's /owner commands and blocks. The real bot against the Discord emulator
and the fake NanoGPT; assertions are on what people see and on what reached NanoGPT."""

from __future__ import annotations

import asyncio

import pytest

from bot.config import TTS_MODELS
from bot.limits import TTS_MICROS_PER_1K_CHARS, estimate_tts_micros, format_usd
from tests.fakes.discord import DEFAULT_BOT_PERMISSIONS
from tests.fakes.nanogpt import Step, make_tone
from tests.fixtures_bot import World
from tests.wire.test_admin_wire import manager, settings

pytest_plugins = ["tests.fixtures_nanogpt", "tests.fixtures_bot"]

DAY = 86_400
TEXT = " ".join(f"word{i}" for i in range(2000))[:6000]  # 6,000 characters: $0.006 with Kokoro
ALLOWED_GUILD = 1_111_111_111_111_111_111
OTHER_GUILD = 1_222_222_222_222_222_222
USER_BLOCKED = "You can't use this bot."
GUILD_BLOCKED = "This bot isn't available in this server."
NOT_OWNER = "Only the bot's owner can use this."


def midnight(world: World) -> int:
    return (int(world.clock.now()) // DAY + 1) * DAY


def fields(message) -> dict[str, str]:
    [embed] = message.embeds
    return {f["name"]: f["value"] for f in embed["fields"]}


async def say(world: World, user, text: str = "hello there", channel_id: int | None = None, **options):
    inter = await world.emu.slash(user, "say", options={"text": text, **options}, channel_id=channel_id)
    return await inter.wait_final(10)


async def owner(world: World, user, subcommand: str, **options):
    inter = await world.emu.dm_slash(user, "owner", subcommand, options)
    message = await inter.wait_final(10)
    assert message.ephemeral and message.allowed_mentions == {"parse": []}
    return message


# -- the server budget is capped by the operator's --------------------------------------------------------


@pytest.mark.env(GUILD_DAILY_BUDGET_USD="5.00")
async def test_servers_may_only_tighten_the_operators_budget(world: World):
    boss = manager(world)
    for typed in ("0", "5.01", "1000000"):
        reply = await settings(world, boss, daily_budget_usd=typed)
        assert reply.content == "This server's budget can be at most $5.00 a day." and reply.ephemeral
        assert not reply.embeds
    tiny = await settings(world, boss, daily_budget_usd="0.001")
    assert tiny.content == "This server's budget must be at least $0.01 a day."
    assert (await world.db.guilds.get(world.emu.guild_id)).daily_budget_micros is None  # nothing saved
    ok = await settings(world, boss, daily_budget_usd="5")
    assert ok.content == "Saved: daily budget $5.00."
    assert fields(ok)["Daily budget"] == "$5.00 (set for this server; the bot allows at most $5.00)"
    option = next(o for o in world.emu.find_command("nanovoice")["options"][0]["options"]
                  if o["name"] == "daily_budget_usd")
    assert "GUILD_DAILY_BUDGET_USD" not in option["description"] and "0 = no limit" not in option["description"]


@pytest.mark.env(GUILD_DAILY_BUDGET_USD="0.01", SAY_MAX_CHARS="10000")
async def test_a_stored_budget_above_the_ceiling_is_enforced_at_the_ceiling(world: World):
    # Stored before the ceiling existed (or before the operator lowered it): "no limit".
    await world.db.guilds.update(world.emu.guild_id, world.clock.now(), daily_budget_micros=0)
    boss, alice = manager(world), world.user("alice")
    shown = fields(await settings(world, boss))["Daily budget"]
    assert shown == "$0.01 (the most the bot allows; this server's setting of no limit is above it)"

    assert (await say(world, alice, TEXT)).files  # $0.006 of $0.01
    sent = len(world.nano.tts_requests)
    refused = await say(world, alice, TEXT[::-1].strip())
    assert refused.content == (f"This server has only $0.004 left of its $0.01 daily NanoGPT budget, not enough "
                               f"for this speech ($0.006); it resets <t:{midnight(world)}:R>.")
    assert len(world.nano.tts_requests) == sent  # refused before NanoGPT
    usage = await (await world.emu.slash(alice, "usage")).wait_final(10)
    assert fields(usage)["This server today"] == "$0.006 of $0.01 daily budget ($0.004 left)"


# -- the bot's own daily budget -------------------------------------------------------------------------


@pytest.mark.env(BOT_DAILY_BUDGET_USD="0.03", GUILD_DAILY_BUDGET_USD="0", SAY_MAX_CHARS="10000")
async def test_the_bot_budget_is_exact_across_two_servers_at_once(world: World):
    second = await world.emu.join_guild(name="Second Guild")
    await world.emu.wait_until(lambda: world.bot.get_guild(second.id) is not None, 5, "the bot to see the guild")
    here = [world.user(f"here{i}") for i in range(5)]
    there = [world.emu.add_user(name=f"there{i}", guild_id=second.id) for i in range(5)]
    second_channel = next(iter(second.channels))
    texts = [f"{i} {TEXT}"[:6000] for i in range(10)]
    replies = await asyncio.gather(
        *(say(world, user, texts[i]) for i, user in enumerate(here)),
        *(say(world, user, texts[5 + i], channel_id=second_channel) for i, user in enumerate(there)),
    )
    spoken = [r for r in replies if r.files]
    refused = [r for r in replies if not r.files]
    assert len(spoken) == 5 and len(world.nano.tts_requests) == 5  # 5 × $0.006 = the bot's $0.03
    assert {r.content for r in refused} == {f"This bot's daily budget is used up; it resets <t:{midnight(world)}:R>."}
    assert all(r.ephemeral for r in refused)
    spent = await world.db.ledger.total_spend(world.clock.utc_day(world.clock.now()))
    assert spent == 30_000


# -- ALLOWED_GUILD_IDS ----------------------------------------------------------------------------------


@pytest.mark.env(ALLOWED_GUILD_IDS=str(ALLOWED_GUILD))
async def test_the_bot_leaves_servers_that_are_not_allowed(world: World):
    default = world.emu.guild_id
    line = f"WARNING bot.app: left server {default}: it is not in ALLOWED_GUILD_IDS"
    await world.emu.wait_until(lambda: line in world.logs, 5, "the bot to leave at start-up")
    assert world.emu.left_guilds == [default]

    allowed = await world.emu.join_guild(ALLOWED_GUILD, name="Allowed")
    other = await world.emu.join_guild(OTHER_GUILD, name="Other")
    line = f"WARNING bot.app: left server {OTHER_GUILD}: it is not in ALLOWED_GUILD_IDS"
    await world.emu.wait_until(lambda: line in world.logs, 5, "the bot to leave on join")
    assert world.emu.left_guilds == [default, OTHER_GUILD]
    assert world.emu.bot_user.id in allowed.members and world.emu.bot_user.id not in other.members

    # An interaction from a server the bot may not serve (e.g. a stale client) is refused, never processed.
    alice = world.user("alice")
    inter = await world.emu.slash(alice, "say", options={"text": "hello"}, app_permissions=DEFAULT_BOT_PERMISSIONS)
    reply = await inter.wait_final(10)
    assert reply.content == GUILD_BLOCKED and reply.ephemeral
    assert world.nano.requests == []
    member = world.emu.add_user(name="member", guild_id=ALLOWED_GUILD)
    assert (await say(world, member, channel_id=next(iter(allowed.channels)))).files


# -- ALLOWED_TTS_MODELS and prices ----------------------------------------------------------------------


def price_label(value: str) -> str:
    model = value.split("/")[0]
    price = format_usd(estimate_tts_micros(model, 1000))
    return f"{value} · {'' if model.lower() in TTS_MICROS_PER_1K_CHARS else 'up to '}{price} per 1,000 characters"


async def test_stock_voices_in_autocomplete_show_their_price_from_the_price_table(world: World):
    alice = world.user("alice")
    choices = await world.emu.autocomplete(alice, "say", options={"text": "x"}, focused="voice")
    assert choices and all(c["name"] == price_label(c["value"]) for c in choices)
    assert choices[0] == {"name": "Kokoro-82m/af_bella · $0.001 per 1,000 characters", "value": "Kokoro-82m/af_bella"}
    openai = await world.emu.autocomplete(alice, "say", options={"text": "x", "voice": "tts-1-hd/"}, focused="voice")
    hd = next(c for c in openai if c["value"] == "tts-1-hd/alloy")
    assert hd["name"] == f"tts-1-hd/alloy · {format_usd(TTS_MICROS_PER_1K_CHARS['tts-1-hd'])} per 1,000 characters"


@pytest.mark.env(ALLOWED_TTS_MODELS="Kokoro-82m")
async def test_only_allowed_models_are_offered_and_spoken(world: World):
    alice = world.user("alice")
    for typed in ("", "alloy", "tts-1/alloy", "Elevenlabs"):
        choices = await world.emu.autocomplete(alice, "say", options={"text": "x", "voice": typed}, focused="voice")
        assert all(c["value"].startswith("Kokoro-82m/") for c in choices), (typed, choices)
    refused = await say(world, alice, voice="tts-1/alloy")
    assert refused.content == ("tts-1 voices are turned off on this bot; pick another voice, such as "
                               "Kokoro-82m/af_bella.")
    assert refused.ephemeral and world.nano.requests == []
    assert (await say(world, alice, voice="kokoro-82m/af_nova")).files
    assert [r["model"] for r in world.nano.tts_requests] == ["Kokoro-82m"]
    assert set(TTS_MODELS) > {"Kokoro-82m"}  # the others really are documented models


# -- /owner ---------------------------------------------------------------------------------------------


@pytest.mark.env(BOT_DAILY_BUDGET_USD="2.00", GUILD_DAILY_BUDGET_USD="5.00")
async def test_owner_commands_work_in_the_owners_dms_only(world: World):
    alice = world.user("alice")
    assert (await say(world, alice, TEXT[:1000])).files  # $0.001

    spend = await owner(world, world.emu.owner, "spend")
    shown = fields(spend)
    assert shown["All servers and DMs"] == "$0.001 of the bot's $2.00 daily budget ($2.00 left)"
    assert shown["Top servers"] == f"Emulated Guild (`{world.emu.guild_id}`): $0.001 of $5.00"
    assert shown["Resets"] == f"<t:{midnight(world)}:R>"

    refused = await owner(world, alice, "spend")
    assert refused.content == NOT_OWNER and not refused.embeds
    blocked = await owner(world, alice, "block", user_id=str(world.emu.owner.id))
    assert blocked.content == NOT_OWNER and await world.db.blocks.list() == []

    # Registered for DMs only: Discord doesn't show it in ordinary servers.
    command = next(c for c in world.emu.global_commands if c["name"] == "owner")
    assert command["contexts"] == [1] and command["integration_types"] == [0]
    with pytest.raises(LookupError):
        world.emu.find_command("owner")
    assert world.emu.guild_commands.get(world.emu.guild_id) is None


@pytest.mark.env(CLONE_CONFIRM="true")
async def test_blocks_stop_commands_buttons_and_autocomplete_and_persist(world: World):
    alice, bob = world.user("alice"), world.user("bob")
    clip = world.emu.add_attachment(make_tone(4.0, "mp3"), "clip.mp3", "audio/mpeg")
    clone = await world.emu.slash(alice, "voice", subcommand="clone",
                                  options={"audio": clip, "name": "Me", "provider": "qwen"})
    await world.emu.wait_until(lambda: clone.original is not None and not clone.original.loading
                               and clone.original.custom_ids(), 10, "the confirmation")
    confirm = clone.original

    done = await owner(world, world.emu.owner, "block", user_id=str(alice.id), reason="spam  spam")
    assert done.content == (f"Blocked user <@{alice.id}> (`{alice.id}`). Their clone jobs that are already "
                            "running still finish.")
    assert (await say(world, alice)).content == USER_BLOCKED
    assert await world.emu.autocomplete(alice, "say", options={"text": "x"}, focused="voice") == []
    click = await world.emu.click(alice, confirm, confirm.custom_ids()[0])
    answer = await click.wait_response()
    assert answer["data"]["content"] == USER_BLOCKED and answer["data"]["flags"] & 64
    assert world.nano.requests == []  # nothing was submitted or spoken
    assert (await say(world, bob)).files  # others are not affected

    listed = await owner(world, world.emu.owner, "blocks")
    assert f"user <@{alice.id}> (`{alice.id}`)" in listed.embeds[0]["description"]
    assert listed.embeds[0]["description"].endswith(": spam spam")

    await world.restart()  # blocks are stored
    assert (await say(world, alice)).content == USER_BLOCKED
    server = await owner(world, world.emu.owner, "block", server_id=str(world.emu.guild_id))
    assert server.content.startswith(f"Blocked server Emulated Guild (`{world.emu.guild_id}`).")
    assert (await say(world, bob)).content == GUILD_BLOCKED
    await owner(world, world.emu.owner, "unblock", server_id=str(world.emu.guild_id))
    unblocked = await owner(world, world.emu.owner, "unblock", user_id=str(alice.id))
    assert unblocked.content == f"Unblocked user <@{alice.id}> (`{alice.id}`)."
    again = await owner(world, world.emu.owner, "unblock", user_id=str(alice.id))
    assert again.content == f"The user <@{alice.id}> (`{alice.id}`) isn't blocked."
    assert (await say(world, alice)).files


@pytest.mark.env(CLONE_CONFIRM="false")
async def test_a_blocked_users_running_clone_still_finishes(world: World):
    world.nano.clone_script = [Step("pending", poll_after=0.2), Step("processing", poll_after=0.2), Step("completed")]
    alice = world.user("alice")
    clip = world.emu.add_attachment(make_tone(4.0, "mp3"), "clip.mp3", "audio/mpeg")
    await world.emu.slash(alice, "voice", subcommand="clone", options={"audio": clip, "name": "Me", "provider": "qwen"})
    await world.emu.wait_until(lambda: len(world.nano.submits) == 1, 10, "the paid submit")
    await owner(world, world.emu.owner, "block", user_id=str(alice.id))

    async def saved() -> bool:
        return await world.db.voices.by_name(alice.id, "Me") is not None

    for _ in range(100):
        if await saved():
            break
        await asyncio.sleep(0.1)
    assert await saved()  # paid for, so kept
    (job,) = await world.db.jobs.for_user(alice.id)
    assert job.state == "completed"


async def test_a_block_stops_a_modal_that_was_already_open(world: World):
    alice = world.user("alice")
    att = world.emu.add_attachment(make_tone(6.0, "mp3"), "clip.mp3", "audio/mpeg")
    message = await world.emu.create_user_message(None, alice, attachments=[att])
    menu = await world.emu.message_context(alice, "Clone this voice", message)
    await menu.wait_response()
    modal = world.emu.last_modal(menu.token)
    assert modal is not None
    await owner(world, world.emu.owner, "block", user_id=str(alice.id))
    submitted = await world.emu.submit_modal(alice, modal["custom_id"], {
        "clone:name": "Whisper", "clone:provider": ["qwen"], "clone:transcript": "hello"})
    answer = await submitted.wait_response()
    assert answer["data"]["content"] == USER_BLOCKED and answer["data"]["flags"] & 64
    assert world.nano.requests == [] and await world.db.jobs.for_user(alice.id) == []


async def test_owner_commands_in_the_dev_guild(world: World):
    await world.restart(DEV_GUILD_ID=str(world.emu.guild_id))
    assert world.emu.find_command("owner", guild_id=world.emu.guild_id)["guild_id"] == str(world.emu.guild_id)
    alice = world.user("alice")
    mine = await (await world.emu.slash(world.emu.owner, "owner", subcommand="blocks")).wait_final(10)
    assert mine.ephemeral and mine.embeds[0]["description"] == "Nobody is blocked."
    theirs = await (await world.emu.slash(alice, "owner", subcommand="blocks")).wait_final(10)
    assert theirs.content == NOT_OWNER and theirs.ephemeral and not theirs.embeds
    # Elsewhere the owner's commands don't exist, and reaching them anyway is refused.
    other = await world.emu.join_guild(name="Other")
    await world.emu.wait_until(lambda: world.bot.get_guild(other.id) is not None, 5, "the bot to see the guild")
    with pytest.raises(LookupError):
        world.emu.find_command("owner", guild_id=other.id)
