"""/usage and the daily limits over the wire: the real bot against the Discord emulator and the fake
NanoGPT. Figures are checked against what the fake NanoGPT actually charged; time moves through the
bot's Clock (never slept)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from bot.limits import cost_to_micros, format_usd
from tests.fakes.nanogpt import make_tone
from tests.fixtures_bot import World

pytest_plugins = ["tests.fixtures_nanogpt", "tests.fixtures_bot"]

DAY = 86_400


async def usage_fields(world: World, user) -> dict[str, str]:
    inter = await world.emu.slash(user, "usage")
    message = await inter.wait_final(10)
    assert message.ephemeral
    assert message.allowed_mentions == {"parse": []}
    [embed] = message.embeds
    return {f["name"]: f["value"] for f in embed["fields"]}


def charged_micros(world: World) -> int:
    """What the fake NanoGPT charged, converted per charge exactly as the bot records it."""
    return sum(cost_to_micros(c.amount) for c in world.nano.charges)


async def say(world: World, user, text: str):
    inter = await world.emu.slash(user, "say", options={"text": text, "voice": "Kokoro-82m/af_bella"})
    return await inter.wait_final(10)


async def wait_for_clone(world: World, user_id: int) -> None:
    async def done() -> bool:
        jobs = await world.db.jobs.for_user(user_id)
        return bool(jobs) and all(j.state == "completed" and j.notified_at is not None for j in jobs)

    for _ in range(400):
        if await done():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"clone did not complete: {await world.db.jobs.for_user(user_id)}")


@pytest.mark.env(CLONE_CONFIRM="false", GUILD_DAILY_BUDGET_USD="5.00", CLONE_DAILY_LIMIT="3")
async def test_usage_matches_the_charges_of_say_and_clone(world: World):
    world.bot.nanogpt.tts_poll_interval = 0.02
    alice, bob = world.user("alice"), world.user("bob")
    fresh = await usage_fields(world, alice)
    assert fresh["Voice clones today"] == "0 of 3"
    assert fresh["Your spend"] == "Today: $0.00\nIn total: $0.00"
    assert fresh["This server today"] == "$0.00 of $5.00 daily budget ($5.00 left)"
    midnight = (int(world.clock.now()) // DAY + 1) * DAY
    assert fresh["Daily limits reset"].startswith(f"<t:{midnight}:R>")

    await say(world, alice, "hello there")
    await say(world, alice, "how are you doing today")
    await say(world, bob, "bob speaks too")
    clip = world.emu.add_attachment(make_tone(4.0, "mp3"), "clip.mp3", "audio/mpeg")
    inter = await world.emu.slash(alice, "voice", subcommand="clone",
                                  options={"audio": clip, "name": "Me", "provider": "qwen"})
    await inter.wait_final(20)
    await wait_for_clone(world, alice.id)

    kinds = [c.kind for c in world.nano.charges]
    assert kinds.count("clone_qwen") == 1 and kinds.count("tts") >= 3
    bob_micros = cost_to_micros(next(c.amount for c in world.nano.charges if c.chars == len("bob speaks too")))
    total = charged_micros(world)
    alice_micros = total - bob_micros
    fields = await usage_fields(world, alice)
    assert fields["Voice clones today"] == "1 of 3"
    assert fields["Your spend"] == f"Today: {format_usd(alice_micros)}\nIn total: {format_usd(alice_micros)}"
    left = 5_000_000 - total
    assert fields["This server today"] == f"{format_usd(total)} of $5.00 daily budget ({format_usd(left)} left)"
    # and exactly, in the ledger the figures come from
    usage = await world.bot.limits.usage(alice.id, world.emu.guild_id)
    assert (usage.user_spend_today_micros, usage.guild_spend_today_micros) == (alice_micros, total)

    bob_fields = await usage_fields(world, bob)
    assert bob_fields["Voice clones today"] == "0 of 3"
    assert bob_fields["Your spend"] == f"Today: {format_usd(bob_micros)}\nIn total: {format_usd(bob_micros)}"

    # the next UTC day: today's figures start again, the totals stay
    world.clock.set(midnight + 60)
    fields = await usage_fields(world, alice)
    assert fields["Voice clones today"] == "0 of 3"
    assert fields["Your spend"] == f"Today: $0.00\nIn total: {format_usd(alice_micros)}"
    assert fields["This server today"] == "$0.00 of $5.00 daily budget ($5.00 left)"
    assert fields["Daily limits reset"].startswith(f"<t:{midnight + DAY}:R>")


def line(seed: str, length: int = 600) -> str:
    """Plain words (nothing the text hygiene would change), exactly ``length`` characters."""
    text = " ".join(f"{seed}{i}" for i in range(length))[:length].rstrip()
    while len(text) < length:
        text += "z"
    return text


@pytest.mark.env(GUILD_DAILY_BUDGET_USD="0.001", SAY_MAX_CHARS="1000")  # 1000 micro-dollars a day
async def test_budget_exhaustion_and_next_day_reset(world: World):
    alice = world.user("alice")
    first, second = line("alpha"), line("beta")  # 600 characters each: $0.0006 at $0.001 per 1k (Kokoro)
    reply = await say(world, alice, first)
    assert reply.files, reply
    assert charged_micros(world) == 600
    requests_before = len(world.nano.tts_requests)

    inter = await world.emu.slash(alice, "say", options={"text": second, "voice": "Kokoro-82m/af_bella"})
    refusal = await inter.wait_final(10)
    midnight = (int(world.clock.now()) // DAY + 1) * DAY
    assert not refusal.files
    assert refusal.content == (
        "This server has only $0.0004 left of its $0.001 daily NanoGPT budget, not enough for this speech "
        f"($0.0006); it resets <t:{midnight}:R>."
    )
    assert len(world.nano.tts_requests) == requests_before  # nothing reached NanoGPT
    fields = await usage_fields(world, alice)
    assert fields["This server today"] == "$0.0006 of $0.001 daily budget ($0.0004 left)"

    world.clock.advance(midnight + 1 - world.clock.now())  # past midnight UTC: a new day, a new budget
    reply = await say(world, alice, second)
    assert reply.files and not reply.ephemeral
    assert len(world.nano.tts_requests) == requests_before + 1
    assert charged_micros(world) == 1200
    fields = await usage_fields(world, alice)
    assert fields["This server today"] == "$0.0006 of $0.001 daily budget ($0.0004 left)"
    assert fields["Your spend"] == "Today: $0.0006\nIn total: $0.0012"


async def wait_for_log(world: World, text: str, timeout: float = 5.0) -> bool:  # noqa: ASYNC109
    for _ in range(int(timeout / 0.05)):
        if any(text in line for line in world.logs):
            return True
        await asyncio.sleep(0.05)
    return False


async def test_low_balance_tells_the_user_and_logs_the_balance_for_the_operator(world: World):
    alice = world.user("alice")
    world.nano.balance_usd = Decimal("0.0000005")  # less than any line of speech
    inter = await world.emu.slash(alice, "say", options={"text": "hello there", "voice": "Kokoro-82m/af_bella"})
    reply = await inter.wait_final(10)
    assert reply.content == "The bot's NanoGPT balance is too low; please tell the bot's operator."
    assert await wait_for_log(world, "NanoGPT balance too low: <$0.0001 left")
    usage = await world.bot.limits.usage(alice.id, world.emu.guild_id)
    assert usage.user_spend_today_micros == 0  # released: nothing was charged


@pytest.mark.env(CLONE_CONFIRM="false")
async def test_low_balance_on_a_clone_logs_the_balance_too(world: World):
    alice = world.user("alice")
    world.nano.balance_usd = Decimal("0.10")  # a Qwen clone costs $0.25
    clip = world.emu.add_attachment(make_tone(4.0, "mp3"), "clip.mp3", "audio/mpeg")
    inter = await world.emu.slash(alice, "voice", subcommand="clone",
                                  options={"audio": clip, "name": "Me", "provider": "qwen"})
    reply = await inter.wait_final(20)
    assert reply.content == "The bot's NanoGPT balance is too low; please tell the bot's operator."
    assert world.nano.charges == []
    assert (await world.bot.limits.usage(alice.id, world.emu.guild_id)).clones_today == 0  # released
    assert await wait_for_log(world, "NanoGPT balance too low: $0.10 left", timeout=5.0)
