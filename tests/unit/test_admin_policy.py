"""The guild clone policy, budget parsing and the settings/usage renderings (no Discord needed)."""

from __future__ import annotations

import dataclasses

import pytest

from bot.errors import Forbidden, UserFacingError
from bot.limits import Usage
from bot.policy import (
    CLONES_DISABLED,
    effective_settings,
    ensure_clone_allowed,
    parse_budget,
)
from cogs.admin import describe_changes, render_settings
from cogs.usage import render_usage
from tests.fixtures_db import make_config

GUILD = 9001
ROLE, OTHER_ROLE = 7001, 7002
NOW = 1764072000.0


async def test_everyone_may_clone_by_default(db):
    await ensure_clone_allowed(db, GUILD, [])
    await ensure_clone_allowed(db, None, [])  # no guild, no guild policy


async def test_clones_disabled_in_the_guild(db):
    await db.guilds.update(GUILD, NOW, clones_enabled=False)
    with pytest.raises(Forbidden) as caught:
        await ensure_clone_allowed(db, GUILD, [ROLE])
    assert str(caught.value) == CLONES_DISABLED == "Voice cloning is turned off in this server."
    await ensure_clone_allowed(db, GUILD + 1, [])  # other guilds are not affected
    await db.guilds.update(GUILD, NOW, clones_enabled=True)
    await ensure_clone_allowed(db, GUILD, [])


async def test_clone_role_required(db):
    await db.guilds.update(GUILD, NOW, clone_role_id=ROLE)
    with pytest.raises(Forbidden) as caught:
        await ensure_clone_allowed(db, GUILD, [OTHER_ROLE])
    assert str(caught.value) == f"Only members with the <@&{ROLE}> role can clone voices here."
    await ensure_clone_allowed(db, GUILD, [OTHER_ROLE, ROLE])
    await ensure_clone_allowed(db, GUILD, (r for r in [ROLE]))  # any iterable


async def test_everyone_role_as_clone_role_admits_all(db):
    await db.guilds.update(GUILD, NOW, clone_role_id=GUILD)  # @everyone has the guild's id
    await ensure_clone_allowed(db, GUILD, [])


async def test_disabled_wins_over_role(db):
    await db.guilds.update(GUILD, NOW, clone_role_id=ROLE, clones_enabled=False)
    with pytest.raises(Forbidden, match="turned off"):
        await ensure_clone_allowed(db, GUILD, [ROLE])


@pytest.mark.parametrize(("text", "micros"), [
    ("2.50", 2_500_000), ("0", 0), ("$2.50", 2_500_000), (" 5 ", 5_000_000), ("0.010001", 10_001),
    ("1,000", 1_000_000_000), ("1,000.50", 1_000_500_000), ("0.10", 100_000), ("19.99", 19_990_000), (".5", 500_000),
])
def test_parse_budget_is_exact(text, micros):
    assert parse_budget(text) == micros  # no operator ceiling (GUILD_DAILY_BUDGET_USD=0)


@pytest.mark.parametrize(("text", "answer"), [
    ("0", "This server's budget can be at most $5.00 a day."),  # only the operator chooses "no limit"
    ("5.01", "This server's budget can be at most $5.00 a day."),
    ("1,000,000", "This server's budget can be at most $5.00 a day."),
    ("0.001", "This server's budget must be at least $0.01 a day."),
    ("ten", "“ten” is not a dollar amount; write the daily budget like 2.50."),
])
def test_parse_budget_under_a_ceiling_only_tightens(text, answer):
    with pytest.raises(UserFacingError) as caught:
        parse_budget(text, 5_000_000)
    assert str(caught.value) == answer
    assert parse_budget("5", 5_000_000) == 5_000_000 and parse_budget("0.01", 5_000_000) == 10_000


def test_parse_budget_without_a_ceiling_has_a_sane_maximum():
    with pytest.raises(UserFacingError) as caught:
        parse_budget("10,000.01")
    assert str(caught.value) == "This server's budget can be at most $10,000.00 a day, or 0 for no limit."


@pytest.mark.parametrize("text", ["abc", "-1", "", "2,50", "1,00", "1e3", "NaN", "inf", "2.5.0", "1.0000001",
                                  "99999999", "$", "0.000001"])
def test_parse_budget_refuses_with_one_sentence(text):
    with pytest.raises(UserFacingError) as caught:
        parse_budget(text)
    message = str(caught.value)
    assert message.endswith(".") and "\n" not in message


async def test_effective_settings_say_where_values_come_from(db):
    config = make_config(guild_daily_budget_micros=0)
    current = await effective_settings(db, config, GUILD)
    assert (current.daily_budget_micros, current.budget_from_server) == (0, False)
    assert current.clone_role_id is None and current.clones_enabled and not current.clones_enabled_from_server
    await db.guilds.update(GUILD, NOW, daily_budget_micros=0, clone_role_id=ROLE, clones_enabled=False)
    current = await effective_settings(db, config, GUILD)
    assert (current.daily_budget_micros, current.budget_from_server) == (0, True)
    assert current.clone_role_id == ROLE and not current.clones_enabled and current.clones_enabled_from_server
    fields = {f.name: f.value for f in render_settings(current).fields}
    assert fields["Daily budget"] == "No limit (set for this server)"
    assert fields["Who can clone voices"] == f"Members with <@&{ROLE}>"
    assert fields["Voice cloning"] == "Off (turned off for this server)"
    gone = {f.name: f.value for f in render_settings(current, role_exists=False).fields}
    assert "no longer exists" in gone["Who can clone voices"]


async def test_settings_render_defaults(db):
    current = await effective_settings(db, make_config(clone_daily_limit=3), GUILD)
    fields = {f.name: f.value for f in render_settings(current).fields}
    assert fields["Daily budget"] == "$5.00 (the bot's default)"
    assert fields["Who can clone voices"] == "Everyone"
    assert fields["Voice cloning"] == "On (the bot's default), 3 per member per day"
    off = await effective_settings(db, make_config(clone_daily_limit=0), GUILD)
    assert {f.name: f.value for f in render_settings(off).fields}["Voice cloning"] == (
        "Off (turned off by the bot's operator)")


async def test_settings_stored_above_the_ceiling_show_the_ceiling(db):
    await db.guilds.update(GUILD, NOW, daily_budget_micros=0)  # "no limit", stored before the ceiling
    current = await effective_settings(db, make_config(guild_daily_budget_micros=5_000_000), GUILD)
    assert current.daily_budget_micros == 5_000_000
    shown = {f.name: f.value for f in render_settings(current).fields}["Daily budget"]
    assert shown == "$5.00 (the most the bot allows; this server's setting of no limit is above it)"
    await db.guilds.update(GUILD, NOW, daily_budget_micros=8_000_000)
    lowered = await effective_settings(db, make_config(guild_daily_budget_micros=2_000_000), GUILD)
    assert lowered.daily_budget_micros == 2_000_000
    assert {f.name: f.value for f in render_settings(lowered).fields}["Daily budget"] == (
        "$2.00 (the most the bot allows; this server's setting of $8.00 is above it)")
    await db.guilds.update(GUILD, NOW, daily_budget_micros=1_500_000)
    within = await effective_settings(db, make_config(guild_daily_budget_micros=2_000_000), GUILD)
    assert {f.name: f.value for f in render_settings(within).fields}["Daily budget"] == (
        "$1.50 (set for this server; the bot allows at most $2.00)")


def test_describe_changes():
    assert describe_changes({"daily_budget_micros": 2_500_000}) == "Saved: daily budget $2.50."
    assert describe_changes({"daily_budget_micros": 0, "clones_enabled": False}) == (
        "Saved: no daily budget limit; voice cloning off."
    )
    assert describe_changes({"clone_role_id": ROLE}) == f"Saved: only <@&{ROLE}> may clone."
    assert describe_changes({"clone_role_id": None, "daily_budget_micros": None}) == (
        "Saved: the daily budget now follows the bot's default; everyone may clone."
    )


def test_usage_render_exact_figures():
    usage = Usage(clones_today=1, clone_limit=3, user_spend_today_micros=1_000_250,
                  user_spend_total_micros=3_250_035, user_spend_total_xno_micros=0,
                  guild_spend_today_micros=1_500_250, guild_budget_micros=5_000_000, resets_at=1764115200.0)
    fields = {f.name: f.value for f in render_usage(usage).fields}
    assert fields["Voice clones today"] == "1 of 3"
    assert fields["Your spend"] == "Today: $1.00\nIn total: $3.25"
    assert fields["This server today"] == "$1.50 of $5.00 daily budget ($3.50 left)"
    assert fields["Daily limits reset"].startswith("<t:1764115200:R>")


def test_usage_render_small_amounts_unlimited_and_limits():
    usage = Usage(clones_today=3, clone_limit=3, user_spend_today_micros=35, user_spend_total_micros=35,
                  user_spend_total_xno_micros=500_000, guild_spend_today_micros=35, guild_budget_micros=0,
                  resets_at=1764115200.5)
    fields = {f.name: f.value for f in render_usage(usage).fields}
    assert fields["Voice clones today"] == "3 of 3 (limit reached)"
    assert fields["Your spend"] == "Today: <$0.0001\nIn total: <$0.0001 (and 0.5 XNO paid in Nano)"
    assert fields["This server today"] == "<$0.0001 (no limit)"
    assert fields["Daily limits reset"].startswith("<t:1764115201:R>")
    off = dataclasses.replace(usage, clone_limit=0)
    assert {f.name: f.value for f in render_usage(off).fields}["Voice clones today"] == (
        "Voice cloning is turned off on this bot."
    )
