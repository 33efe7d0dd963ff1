"""Spending limits: atomic reservations, daily clone limit, guild budget, UTC-day reset, exact money."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from bot.clock import Clock
from bot.errors import UserFacingError
from bot.limits import (
    Cooldown,
    LimitExceeded,
    Limits,
    cost_to_micros,
    estimate_clone_micros,
    estimate_tts_micros,
    format_money,
    format_usd,
)
from tests.fixtures_db import ledger_rows, make_config

# 2025-11-25 12:00:00 UTC; the next UTC midnight is 1764115200 (2025-11-26 00:00:00).
NOON = 1764072000.0
MIDNIGHT = 1764115200
USER, OTHER_USER = 111, 222
GUILD, OTHER_GUILD = 9001, 9002
MINIMAX = estimate_clone_micros("minimax")
QWEN = estimate_clone_micros("qwen")


@pytest.fixture
def clock() -> Clock:
    return Clock(NOON, frozen=True)


def make_limits(db, clock, **config) -> Limits:
    return Limits(db, make_config(**config), clock)


async def ledger_row(db, entry_id: int) -> dict:
    (row,) = [r for r in await ledger_rows(db) if r["id"] == entry_id]
    return row


# -- clone limit -------------------------------------------------------------------------------


async def test_concurrent_clone_reservations_respect_the_limit(db, clock):
    limits = make_limits(db, clock, clone_daily_limit=3, guild_daily_budget_micros=0)
    results = await asyncio.gather(
        *(limits.reserve_clone(USER, GUILD, MINIMAX, ref=f"run{i}") for i in range(10)), return_exceptions=True
    )
    granted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(granted) == 3
    assert len(refused) == 7 and all(isinstance(e, LimitExceeded) for e in refused)
    rows = await ledger_rows(db)
    assert len(rows) == 3
    assert {r["state"] for r in rows} == {"reserved"}
    assert {r["kind"] for r in rows} == {"clone"}
    assert all(r["day"] == "2025-11-25" and r["amount_micros"] == MINIMAX for r in rows)
    assert sorted(r.id for r in granted) == [r["id"] for r in rows]
    # Another user has their own limit.
    await limits.reserve_clone(OTHER_USER, GUILD, QWEN)


async def test_limit_message_names_the_limit_and_the_reset(db, clock):
    limits = make_limits(db, clock, clone_daily_limit=3)
    for _ in range(3):
        await limits.reserve_clone(USER, GUILD, QWEN)
    with pytest.raises(LimitExceeded) as caught:
        await limits.reserve_clone(USER, GUILD, QWEN)
    error = caught.value
    assert isinstance(error, UserFacingError)
    assert str(error) == f"You have used all 3 voice clones for today; the limit resets <t:{MIDNIGHT}:R>."
    assert error.reason == "clone_limit" and error.resets_at == MIDNIGHT


async def test_limit_of_one_reads_naturally(db, clock):
    limits = make_limits(db, clock, clone_daily_limit=1)
    await limits.reserve_clone(USER, None, QWEN)
    with pytest.raises(LimitExceeded, match=r"^You have used your 1 voice clone for today; .*<t:\d+:R>\.$"):
        await limits.reserve_clone(USER, None, QWEN)


async def test_limit_zero_disables_cloning_but_not_speech(db, clock):
    limits = make_limits(db, clock, clone_daily_limit=0)
    with pytest.raises(LimitExceeded) as caught:
        await limits.reserve_clone(USER, GUILD, MINIMAX)
    assert str(caught.value) == "Voice cloning is turned off on this bot."
    assert caught.value.reason == "clones_disabled"
    assert await ledger_rows(db) == []
    await limits.reserve_tts(USER, GUILD, 1_000)
    assert (await limits.usage(USER, GUILD)).clone_limit == 0


async def test_release_frees_a_slot_and_counts_nothing(db, clock):
    limits = make_limits(db, clock, clone_daily_limit=2)
    first = await limits.reserve_clone(USER, GUILD, MINIMAX)
    await limits.reserve_clone(USER, GUILD, MINIMAX)
    with pytest.raises(LimitExceeded):
        await limits.reserve_clone(USER, GUILD, MINIMAX)
    await limits.release(first)
    row = await ledger_row(db, first.id)
    assert row["state"] == "released" and row["amount_micros"] == 0 and row["settled_at"] == NOON
    usage = await limits.usage(USER, GUILD)
    assert usage.clones_today == 1 and usage.guild_spend_today_micros == MINIMAX
    await limits.reserve_clone(USER, GUILD, MINIMAX)
    assert (await limits.usage(USER, GUILD)).clones_today == 2


async def test_release_never_undoes_a_charge(db, clock):
    limits = make_limits(db, clock)
    reservation = await limits.reserve_clone(USER, GUILD, QWEN)
    await limits.settle(reservation, QWEN)
    await limits.release(reservation)
    row = await ledger_row(db, reservation.id)
    assert row["state"] == "charged" and row["amount_micros"] == QWEN


async def test_next_utc_day_resets_the_clone_limit(db):
    clock = Clock(MIDNIGHT - 60, frozen=True)  # 23:59 UTC
    limits = make_limits(db, clock, clone_daily_limit=1)
    await limits.reserve_clone(USER, GUILD, QWEN)
    with pytest.raises(LimitExceeded, match=f"<t:{MIDNIGHT}:R>"):
        await limits.reserve_clone(USER, GUILD, QWEN)
    clock.advance(61)  # 00:00:01 the next day
    reservation = await limits.reserve_clone(USER, GUILD, QWEN)
    assert reservation.day == "2025-11-26"
    usage = await limits.usage(USER, GUILD)
    assert usage.clones_today == 1
    assert usage.resets_at == MIDNIGHT + 86_400
    assert usage.user_spend_today_micros == QWEN and usage.user_spend_total_micros == 2 * QWEN


# -- guild budget ------------------------------------------------------------------------------


async def test_guild_budget_exhausted_by_speech_then_clone(db, clock):
    limits = make_limits(db, clock, guild_daily_budget_micros=1_000_000)  # $1.00
    speech = await limits.reserve_tts(USER, GUILD, 700_000)
    await limits.settle(speech, 800_000)  # NanoGPT charged more than the estimate
    with pytest.raises(LimitExceeded) as caught:
        await limits.reserve_clone(OTHER_USER, GUILD, QWEN)
    assert caught.value.reason == "guild_budget"
    assert str(caught.value) == (
        "This server has only $0.20 left of its $1.00 daily NanoGPT budget, not enough for this voice clone "
        f"($0.25); it resets <t:{MIDNIGHT}:R>."
    )
    # Exactly up to the budget is allowed; one micro-dollar more is not.
    await limits.reserve_tts(OTHER_USER, GUILD, 200_000)
    with pytest.raises(LimitExceeded) as caught:
        await limits.reserve_tts(USER, GUILD, 1)
    assert str(caught.value) == f"This server has reached its $1.00 daily NanoGPT budget; it resets <t:{MIDNIGHT}:R>."
    with pytest.raises(LimitExceeded, match=r"reached its \$1\.00 daily NanoGPT budget"):
        await limits.reserve_clone(USER, GUILD, QWEN)
    # Other guilds and DMs are unaffected; refused reservations left no rows.
    await limits.reserve_clone(USER, OTHER_GUILD, QWEN)
    await limits.reserve_tts(USER, None, 5_000_000)
    assert len(await ledger_rows(db)) == 4
    usage = await limits.usage(USER, GUILD)
    assert usage.guild_spend_today_micros == 1_000_000 and usage.guild_budget_micros == 1_000_000
    # The budget is back the next UTC day.
    clock.set(MIDNIGHT)
    await limits.reserve_clone(USER, GUILD, QWEN)


async def test_concurrent_speech_never_overshoots_the_budget(db, clock):
    limits = make_limits(db, clock, guild_daily_budget_micros=100_000)
    results = await asyncio.gather(
        *(limits.reserve_tts(USER + i, GUILD, 30_000) for i in range(10)), return_exceptions=True
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 3
    assert (await limits.usage(USER, GUILD)).guild_spend_today_micros == 90_000


async def test_guild_settings_override_the_default_budget(db, clock):
    limits = make_limits(db, clock, guild_daily_budget_micros=5_000_000)
    await db.guilds.update(GUILD, NOON, daily_budget_micros=QWEN)
    await limits.reserve_clone(USER, GUILD, QWEN)
    with pytest.raises(LimitExceeded, match=r"reached its \$0\.25 daily NanoGPT budget; it resets <t:\d+:R>\.$"):
        await limits.reserve_clone(OTHER_USER, GUILD, QWEN)
    assert (await limits.usage(USER, GUILD)).guild_budget_micros == QWEN
    # Other guilds keep the env default.
    assert (await limits.usage(USER, OTHER_GUILD)).guild_budget_micros == 5_000_000
    # A stored 0 ("no limit", from before the ceiling) or a value above the env's $5 is enforced at $5.
    for stored in (0, 8_000_000):
        await db.guilds.update(GUILD, NOON, daily_budget_micros=stored)
        assert (await limits.usage(USER, GUILD)).guild_budget_micros == 5_000_000
    await limits.reserve_tts(USER, GUILD, 5_000_000 - QWEN)  # exactly up to the ceiling
    with pytest.raises(LimitExceeded, match=r"reached its \$5\.00 daily NanoGPT budget"):
        await limits.reserve_tts(USER, GUILD, 1)
    # Clearing the setting falls back to the env default ($5, already spent).
    await db.guilds.update(GUILD, NOON, daily_budget_micros=None)
    with pytest.raises(LimitExceeded, match=r"\$5\.00 daily NanoGPT budget"):
        await limits.reserve_tts(USER, GUILD, 1)


async def test_a_lowered_ceiling_applies_to_stored_budgets(db, clock):
    await db.guilds.update(GUILD, NOON, daily_budget_micros=3_000_000)  # allowed under a $5 ceiling
    limits = make_limits(db, clock, guild_daily_budget_micros=1_000_000)  # the operator lowers it to $1
    await limits.reserve_tts(USER, GUILD, 1_000_000)
    with pytest.raises(LimitExceeded) as caught:
        await limits.reserve_tts(USER, GUILD, 1)
    assert caught.value.reason == "guild_budget" and "$1.00 daily NanoGPT budget" in str(caught.value)


async def test_the_bot_budget_is_exact_across_guilds_and_dms(db, clock):
    limits = make_limits(db, clock, guild_daily_budget_micros=0, clone_daily_limit=50,
                         bot_daily_budget_micros=1_000_000)
    # 40 reservations of $0.10 at once from two guilds and DMs: exactly 10 fit in the bot's $1.00.
    results = await asyncio.gather(
        *(limits.reserve_tts(USER + i, (GUILD, OTHER_GUILD, None)[i % 3], 100_000) for i in range(40)),
        return_exceptions=True,
    )
    granted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(granted) == 10 and all(isinstance(e, LimitExceeded) and e.reason == "bot_budget" for e in refused)
    assert await db.ledger.total_spend("2025-11-25") == 1_000_000
    assert str(refused[0]) == f"This bot's daily budget is used up; it resets <t:{MIDNIGHT}:R>."
    # A release frees room; a clone that doesn't fit is told so; the next UTC day starts again.
    await limits.release(granted[0])
    with pytest.raises(LimitExceeded, match=r"^This bot's daily budget doesn't have enough left for this voice "
                                            rf"clone; it resets <t:{MIDNIGHT}:R>\.$"):
        await limits.reserve_clone(USER, GUILD, QWEN)
    await limits.reserve_tts(USER, OTHER_GUILD, 100_000)
    clock.advance(12 * 3600)
    await limits.reserve_clone(USER, GUILD, QWEN)


async def test_env_budget_zero_is_unlimited(db, clock):
    limits = make_limits(db, clock, guild_daily_budget_micros=0, clone_daily_limit=50)
    for _ in range(20):
        await limits.reserve_clone(USER, GUILD, MINIMAX)
    usage = await limits.usage(USER, GUILD)
    assert usage.guild_budget_micros == 0 and usage.guild_spend_today_micros == 20 * MINIMAX


# -- settling and usage ------------------------------------------------------------------------


async def test_settle_records_the_reported_cost_exactly(db, clock):
    limits = make_limits(db, clock)
    clone = await limits.reserve_clone(USER, GUILD, MINIMAX)
    await limits.settle(clone, cost_to_micros(1.0), ref="run-abc")
    speech = await limits.reserve_tts(USER, GUILD, estimate_tts_micros("Elevenlabs-Turbo-V2.5", 84))
    assert speech.amount_micros == 5_040
    await limits.settle(speech, cost_to_micros(0.0050388))  # reported cost: rounded half up → 5039
    kept = await limits.reserve_tts(USER, GUILD, 1_234)
    await limits.settle(kept, None)  # no reported cost: the estimate stands
    rows = await ledger_rows(db)
    assert [(r["state"], r["amount_micros"], r["currency"]) for r in rows] == [
        ("charged", 1_000_000, "USD"),
        ("charged", 5_039, "USD"),
        ("charged", 1_234, "USD"),
    ]
    assert rows[0]["ref"] == "run-abc" and rows[0]["settled_at"] == NOON
    assert rows[0]["id"] == clone.id

    # Another user in the same guild, and the same user in a DM.
    await limits.settle(await limits.reserve_tts(OTHER_USER, GUILD, 500), 500)
    await limits.settle(await limits.reserve_tts(USER, None, 100), 100)

    usage = await limits.usage(USER, GUILD)
    assert usage.clones_today == 1 and usage.clone_limit == 3
    assert usage.user_spend_today_micros == 1_000_000 + 5_039 + 1_234 + 100
    assert usage.user_spend_total_micros == usage.user_spend_today_micros
    assert usage.guild_spend_today_micros == 1_000_000 + 5_039 + 1_234 + 500
    assert usage.guild_budget_micros == 5_000_000
    assert usage.resets_at == MIDNIGHT
    assert format_usd(usage.user_spend_today_micros) == "$1.01"

    clock.advance(86_400)
    later = await limits.usage(USER, GUILD)
    assert later.clones_today == 0 and later.user_spend_today_micros == 0 and later.guild_spend_today_micros == 0
    assert later.user_spend_total_micros == 1_006_373


async def test_xno_charges_are_kept_apart_from_dollars(db, clock):
    limits = make_limits(db, clock, guild_daily_budget_micros=1_000_000)
    reservation = await limits.reserve_clone(USER, GUILD, MINIMAX)
    # While reserved, the USD estimate counts toward the budget.
    with pytest.raises(LimitExceeded):
        await limits.reserve_tts(USER, GUILD, 1)
    await limits.settle(reservation, cost_to_micros("2.5"), currency="xno")
    row = await ledger_row(db, reservation.id)
    assert row["currency"] == "XNO" and row["amount_micros"] == 2_500_000
    usage = await limits.usage(USER, GUILD)
    assert usage.clones_today == 1  # the run still counts toward the clone limit
    assert usage.user_spend_today_micros == 0 and usage.user_spend_total_micros == 0
    assert usage.user_spend_total_xno_micros == 2_500_000
    assert usage.guild_spend_today_micros == 0
    assert format_money(usage.user_spend_total_xno_micros, "XNO") == "2.5 XNO"


async def test_dm_usage_has_no_guild_figures(db, clock):
    limits = make_limits(db, clock, clone_daily_limit=1)
    await limits.reserve_clone(USER, None, QWEN)
    usage = await limits.usage(USER, None)
    assert usage.guild_spend_today_micros is None and usage.guild_budget_micros is None
    assert usage.clones_today == 1 and usage.user_spend_today_micros == QWEN


async def test_negative_amounts_are_refused(db, clock):
    limits = make_limits(db, clock)
    with pytest.raises(ValueError):
        await limits.reserve_tts(USER, GUILD, -1)
    reservation = await limits.reserve_tts(USER, GUILD, 10)
    with pytest.raises(ValueError):
        await limits.settle(reservation, -5)


# -- estimates and money -----------------------------------------------------------------------


def test_estimates():
    assert estimate_clone_micros("minimax") == 1_000_000 and estimate_clone_micros("Qwen") == 250_000
    with pytest.raises(ValueError):
        estimate_clone_micros("nope")
    assert estimate_tts_micros("Kokoro-82m", 1000) == 1_000
    assert estimate_tts_micros("kokoro-82m", 1) == 1  # rounded up, never 0
    assert estimate_tts_micros("gpt-4o-mini-tts", 1000) == 600
    assert estimate_tts_micros("tts-1", 2000) == 30_000
    assert estimate_tts_micros("tts-1-hd", 1000) == 30_000
    assert estimate_tts_micros("Elevenlabs-Turbo-V2.5", 10_000) == 600_000
    assert estimate_tts_micros("Minimax-Speech-02-HD", 1000) == 100_000  # undocumented: conservative default
    assert estimate_tts_micros("Qwen-3-TTS-1.7B", 0) == 1


@pytest.mark.parametrize(
    ("cost", "micros"),
    [
        (0.0050388, 5_039),
        ("0.0050385", 5_039),  # half up
        ("0.0050384", 5_038),
        (1.0, 1_000_000),
        (0.25, 250_000),
        (0.001, 1_000),
        (0.1 + 0.2, 300_000),  # float artefact 0.30000000000000004 rounds away
        (Decimal("0.0000005"), 1),
        (0, 0),
    ],
)
def test_cost_to_micros(cost, micros):
    assert cost_to_micros(cost) == micros


@pytest.mark.parametrize("bad", [-0.01, "abc", float("nan"), float("inf")])
def test_cost_to_micros_rejects_nonsense(bad):
    with pytest.raises(ValueError):
        cost_to_micros(bad)


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (1_000_000, "$1.00"),
        (250_000, "$0.25"),
        (5_000_000, "$5.00"),
        (0, "$0.00"),
        (3_500, "$0.0035"),
        (5_039, "$0.005"),
        (5_050, "$0.0051"),  # half up
        (15_000, "$0.015"),
        (600, "$0.0006"),
        (123_456, "$0.1235"),
        (1_005_039, "$1.01"),
        (1_234_500_000, "$1,234.50"),
        (40, "<$0.0001"),
        (-250_000, "-$0.25"),
    ],
)
def test_format_usd(micros, text):
    assert format_usd(micros) == text


def test_format_money():
    assert format_money(1_000_000) == "$1.00"
    assert format_money(1_000_000, "XNO") == "1 XNO"
    assert format_money(1_234, "xno") == "0.001234 XNO"


# -- cooldown ----------------------------------------------------------------------------------


def test_cooldown_per_key(clock):
    cooldown = Cooldown(3, clock)
    assert cooldown.check(USER) is None
    assert cooldown.check(OTHER_USER) is None
    clock.advance(1)
    assert cooldown.check(USER) == pytest.approx(2)
    message = cooldown.message(cooldown.check(USER))
    assert message == f"You're speaking too fast; try again <t:{int(NOON) + 3}:R>."
    clock.advance(2)
    assert cooldown.check(USER) is None  # cooled down: this use is recorded
    assert cooldown.check(USER) == pytest.approx(3)
    cooldown.reset(USER)
    assert cooldown.check(USER) is None


def test_cooldown_zero_never_blocks(clock):
    cooldown = Cooldown(0, clock)
    assert all(cooldown.check(USER) is None for _ in range(5))


# -- clock -------------------------------------------------------------------------------------


def test_clock_days_and_midnights():
    clock = Clock(NOON, frozen=True)
    assert clock.now() == NOON and clock.utc_day() == "2025-11-25"
    assert clock.next_utc_midnight() == MIDNIGHT
    assert clock.next_utc_midnight(MIDNIGHT) == MIDNIGHT + 86_400  # strictly after
    assert clock.utc_day(MIDNIGHT - 0.001) == "2025-11-25" and clock.utc_day(MIDNIGHT) == "2025-11-26"
    assert clock.advance(90) == NOON + 90
    clock.set(0)
    assert clock.utc_day() == "1970-01-01" and clock.next_utc_midnight() == 86_400


def test_running_clock_moves_with_real_time_plus_offset():
    import time

    clock = Clock()
    assert abs(clock.now() - time.time()) < 1
    clock.advance(3600)
    assert abs(clock.now() - time.time() - 3600) < 1
    clock.set(NOON)
    assert NOON <= clock.now() < NOON + 1
    assert not clock.frozen


async def test_check_clone_asks_early_and_reserves_nothing(db, clock):
    limits = make_limits(db, clock, clone_daily_limit=1, guild_daily_budget_micros=2 * MINIMAX)
    await limits.check_clone(USER, GUILD, MINIMAX)
    assert await ledger_rows(db) == []
    await limits.reserve_clone(USER, GUILD, MINIMAX)
    with pytest.raises(LimitExceeded) as caught:
        await limits.check_clone(USER, GUILD, MINIMAX)
    assert caught.value.reason == "clone_limit"
    with pytest.raises(LimitExceeded) as caught:  # another user: the guild budget has $1.00 left of $2.00
        await limits.check_clone(OTHER_USER, GUILD, MINIMAX + 1)
    assert caught.value.reason == "guild_budget"
    assert len(await ledger_rows(db)) == 1
