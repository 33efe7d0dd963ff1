"""PostgreSQL as several processes share it: two Database instances (two pools, as two bot processes have)
on one database. Budgets and limits stay exact, migrations apply once, guild settings cached by one
process follow a change made through the other; and the two dialects' schemas are the same."""

from __future__ import annotations

import asyncio
import re

from bot.clock import Clock
from bot.limits import LimitExceeded, Limits
from bot.storage import Database
from tests.fixtures_db import ledger_rows, make_config

NOON = 1764072000.0  # 2025-11-25 12:00 UTC
GUILD = 9001


async def test_concurrent_migrations_apply_each_once(two_processes):
    first, second = two_processes
    assert await first.schema_version() == await second.schema_version() == len(Database.migrations("postgres"))
    assert await first.cache.stats() == (0, 0)  # the totals row was inserted once (its CHECK allows only one)


async def _race(limits: list[Limits], attempts: int, reserve) -> tuple[int, list[BaseException]]:
    results = await asyncio.gather(*(reserve(limits[i % len(limits)], i) for i in range(attempts)),
                                   return_exceptions=True)
    refused = [r for r in results if isinstance(r, BaseException)]
    return attempts - len(refused), refused


async def test_guild_budget_is_exact_across_two_processes(two_processes):
    """Two pools × 200 concurrent reservations of $0.01 against a $1.00 guild budget: exactly 100 pass."""
    config = make_config(guild_daily_budget_micros=1_000_000, clone_daily_limit=3)
    limits = [Limits(db, config, Clock(NOON, frozen=True)) for db in two_processes]
    granted, refused = await _race(
        limits, 200, lambda lim, i: lim.reserve_tts(1000 + i, GUILD, 10_000, ref=f"say{i}"))
    assert granted == 100
    assert all(isinstance(e, LimitExceeded) and e.reason == "guild_budget" for e in refused)
    assert await two_processes[0].ledger.guild_spend(GUILD, "2025-11-25") == 1_000_000


async def test_bot_budget_is_exact_across_two_processes(two_processes):
    """BOT_DAILY_BUDGET_USD over many guilds (no guild budget): exactly the budget, never more."""
    config = make_config(guild_daily_budget_micros=0, bot_daily_budget_micros=500_000)
    limits = [Limits(db, config, Clock(NOON, frozen=True)) for db in two_processes]
    granted, refused = await _race(limits, 120, lambda lim, i: lim.reserve_tts(7, GUILD + i, 10_000))
    assert granted == 50 and all(e.reason == "bot_budget" for e in refused)
    assert await two_processes[1].ledger.total_spend("2025-11-25") == 500_000


async def test_user_clone_limit_is_exact_across_two_processes_and_guilds(two_processes):
    """One user cloning in many guilds at once through both processes gets exactly the daily limit."""
    config = make_config(clone_daily_limit=3, guild_daily_budget_micros=0)
    limits = [Limits(db, config, Clock(NOON, frozen=True)) for db in two_processes]
    granted, refused = await _race(limits, 60, lambda lim, i: lim.reserve_clone(42, GUILD + i, 1_000))
    assert granted == 3 and all(e.reason == "clone_limit" for e in refused)
    assert len(await ledger_rows(two_processes[0])) == 3


async def test_guild_settings_cached_in_one_process_follow_a_change_in_the_other(two_processes):
    first, second = two_processes
    assert (await second.guilds.get(GUILD)).daily_budget_micros is None  # now cached by the second process
    await first.guilds.update(GUILD, NOON, daily_budget_micros=2_000_000, clones_enabled=False)
    for _ in range(100):  # the notification arrives within a short time
        seen = await second.guilds.get(GUILD)
        if seen.daily_budget_micros == 2_000_000:
            break
        await asyncio.sleep(0.02)
    assert seen.daily_budget_micros == 2_000_000 and seen.clones_enabled is False
    # …and the value is cached again: with no further change, the reads agree.
    assert await second.guilds.get(GUILD) == await first.guilds.get(GUILD)


async def test_losing_the_notification_connection_stops_caching_until_it_is_back(two_processes):
    first, second = two_processes
    await second.guilds.get(GUILD)
    await second.backend._listener.close()  # as if the connection dropped
    assert not second.caches_safely
    await first.guilds.update(GUILD, NOON, daily_budget_micros=3_000_000)
    assert (await second.guilds.get(GUILD)).daily_budget_micros == 3_000_000  # read through, not stale


# -- the two dialects' schemas ---------------------------------------------------------------------------

_TYPE_MEANING = {
    "integer": "integer", "bigint": "integer", "boolean": "integer", "real": "real", "double precision": "real",
    "text": "text", "blob": "bytes", "bytea": "bytes",
}


def _normalised_index(sql: str) -> str:
    """An index's meaning: its table, uniqueness and columns (PostgreSQL INCLUDE columns count as columns)."""
    sql = re.sub(r"\s+", " ", sql.lower().replace('"', ""))
    match = re.search(r"create (unique )?index (\S+) on (?:\S+\.)?(\w+)(?: using \w+)? \((.*?)\)"
                      r"(?: include \((.*?)\))?", sql)
    assert match, sql
    columns = {c.strip() for c in match.group(4).split(",")} | {c.strip() for c in (match.group(5) or "").split(",")}
    return f"{match.group(1) or ''}{match.group(3)}({','.join(sorted(columns - {''}))})"


async def _sqlite_schema(db: Database) -> dict:
    tables = {}
    for (name,) in await db.fetchall("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"):
        columns = await db.fetchall(f"PRAGMA table_info({name})")
        tables[name] = {c["name"]: (_TYPE_MEANING[c["type"].lower()], bool(c["notnull"]) or bool(c["pk"]))
                        for c in columns}
    indexes = {
        name: _normalised_index(sql)
        for name, sql in await db.fetchall(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
    }
    triggers = {r[0] for r in await db.fetchall("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    return {"tables": tables, "indexes": indexes, "triggers": triggers}


async def _postgres_schema(db: Database) -> dict:
    tables: dict[str, dict] = {}
    for r in await db.fetchall(
        "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name <> 'nanovoice_schema' ORDER BY table_name"
    ):
        tables.setdefault(r["table_name"], {})[r["column_name"]] = (_TYPE_MEANING[r["data_type"]],
                                                                    r["is_nullable"] == "NO")
    indexes = {
        r["indexname"]: _normalised_index(r["indexdef"])
        for r in await db.fetchall("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
                                   "AND indexname NOT LIKE '%_pkey' AND indexname NOT LIKE '%_key'")
    }
    triggers = {r[0] for r in await db.fetchall(
        "SELECT DISTINCT trigger_name FROM information_schema.triggers WHERE trigger_schema = current_schema()")}
    return {"tables": tables, "indexes": indexes, "triggers": triggers}


async def test_the_sqlite_and_postgres_schemas_have_the_same_tables_columns_and_indexes(tmp_path, postgres_url):
    """Same migration numbers; every table, column (type by meaning, NOT NULL) and named index and trigger
    of one dialect is in the other (unique constraints, which SQLite names automatically, are compared
    through the writes the suites run on both)."""
    assert [n for n, _ in Database.migrations("sqlite")] == [n for n, _ in Database.migrations("postgres")]
    lite = await Database(tmp_path / "schema.sqlite3").connect()
    pg = await Database(postgres_url).connect()
    try:
        sqlite_schema, postgres_schema = await _sqlite_schema(lite), await _postgres_schema(pg)
    finally:
        await lite.close()
        await pg.close()
    assert sqlite_schema["tables"].keys() == postgres_schema["tables"].keys()
    for table, columns in sqlite_schema["tables"].items():
        assert columns == postgres_schema["tables"][table], table
    sqlite_indexes = {k: v for k, v in sqlite_schema["indexes"].items() if not k.startswith("sqlite_autoindex")}
    assert sqlite_indexes == postgres_schema["indexes"]
    assert sqlite_schema["triggers"] == postgres_schema["triggers"]
