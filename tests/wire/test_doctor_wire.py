"""`nanovoice check` as a real subprocess (``python -m bot check``) against the Discord emulator and the
fake NanoGPT: exit codes, one line per problem, the balance, permissions, and never a secret."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

from bot.doctor import CHECK_TIMEOUT, INVITE_PERMISSIONS
from bot.storage import Database
from tests.fakes.discord import VIEW_CHANNEL, DiscordEmulator
from tests.fakes.nanogpt import FakeNanoGPT

pytest_plugins = ["tests.fixtures_nanogpt"]

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Checked:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()

    @property
    def problems(self) -> list[str]:
        return [line for line in self.lines if line.startswith("problem:")]


@pytest.fixture
async def emu() -> AsyncIterator[DiscordEmulator]:
    emulator = DiscordEmulator()
    await emulator.start()
    try:
        yield emulator
    finally:
        await emulator.close()
    assert not emulator.unknown_routes, [f"{r.method} {r.path}" for r in emulator.unknown_routes]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def run_check(tmp_path: Path, emu: DiscordEmulator, nano: FakeNanoGPT, **overrides: str) -> Checked:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "NANOGPT_"))}
    env.update({
        "DISCORD_TOKEN": emu.token,
        "NANOGPT_API_KEY": nano.api_key,
        "NANOGPT_BASE_URL": nano.base_url,
        "DISCORD_API_BASE": emu.api_base,
        "DISCORD_GATEWAY_URL": emu.gateway_url,
        "DATABASE_PATH": str(tmp_path / "data" / "nanovoice.sqlite3"),
        "PYTHONPATH": str(ROOT),
    })
    env.update(overrides)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "check", cwd=str(tmp_path), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    checked = Checked(proc.returncode, out.decode(), err.decode())
    for secret in (emu.token, nano.api_key, overrides.get("DISCORD_TOKEN"), overrides.get("NANOGPT_API_KEY")):
        if secret:
            assert secret not in checked.out and secret not in checked.err, "a secret was printed"
    return checked


async def test_all_good(tmp_path, emu, fake_nanogpt):
    fake_nanogpt.balance_usd = Decimal("12.3456")
    checked = await run_check(tmp_path, emu, fake_nanogpt)
    assert checked.code == 0, checked
    assert checked.problems == []
    assert f"ok: logged in to Discord as {emu.bot_user.name} ({emu.bot_user.id}), in 1 server" in checked.lines
    assert "ok: the bot has the permissions it needs in every server checked" in checked.lines
    assert f"ok: NanoGPT key accepted; balance $12.35 and {fake_nanogpt.balance_nano} XNO" in checked.lines
    assert any(line.startswith("ok: ffmpeg version ") for line in checked.lines)
    database, version = tmp_path / "data" / "nanovoice.sqlite3", len(Database.migrations())
    assert f"ok: database {database} (schema version {version}) is writable" in checked.lines
    assert checked.lines[-1] == "nanovoice check: everything looks ready"
    assert all(line.split(":", 1)[0] in {"ok", "note", "problem", "nanovoice check"} or line.startswith("checking ")
               for line in checked.lines)
    # each check is announced before its result lines
    headings = [line for line in checked.lines if line.startswith("checking ")]
    assert headings == ["checking the configuration…", f"checking Discord at {emu.api_base}…",
                        f"checking NanoGPT at {fake_nanogpt.base_url}…", "checking ffmpeg…",
                        f"checking the database {database}…"]
    after = {h: checked.lines[checked.lines.index(h) + 1] for h in headings}
    assert after["checking the configuration…"].startswith("ok: configuration loaded")
    assert after[f"checking Discord at {emu.api_base}…"].startswith("ok: logged in to Discord as")
    assert after[f"checking NanoGPT at {fake_nanogpt.base_url}…"].startswith("ok: NanoGPT key accepted")
    assert after["checking ffmpeg…"].startswith("ok: ffmpeg version")
    assert after[f"checking the database {database}…"].startswith(f"ok: database {database}")
    # Discord was asked through discord.py's REST client with the bot token; NanoGPT with the key
    paths = [r.path for r in emu.requests]
    assert "/users/@me" in paths and "/users/@me/guilds" in paths
    assert f"/guilds/{emu.guild_id}/members/{emu.bot_user.id}" in paths
    assert all(r.headers.get("Authorization") == f"Bot {emu.token}" for r in emu.requests)
    assert [r.path for r in fake_nanogpt.requests] == ["/check-balance"]
    assert emu.identify_count == 0  # no gateway session


async def test_rejected_nanogpt_key(tmp_path, emu, fake_nanogpt):
    checked = await run_check(tmp_path, emu, fake_nanogpt, NANOGPT_API_KEY="sk-nano-00000000-wrong")
    assert checked.code == 1
    assert checked.problems == ["problem: NanoGPT rejected NANOGPT_API_KEY (HTTP 401); create or copy a key at "
                                "nano-gpt.com/api"]
    assert checked.lines[-1] == "nanovoice check: 1 problem found"


async def test_unreachable_nanogpt(tmp_path, emu, fake_nanogpt):
    base = f"http://127.0.0.1:{closed_port()}/api"
    checked = await run_check(tmp_path, emu, fake_nanogpt, NANOGPT_BASE_URL=base)
    assert checked.code == 1
    [problem] = checked.problems
    assert problem.startswith(f"problem: NanoGPT at {base} is not answering (")
    assert problem.endswith("; check NANOGPT_BASE_URL and the network")
    assert checked.err == ""  # no traceback, no retry chatter


async def test_rejected_discord_token(tmp_path, emu, fake_nanogpt):
    wrong = emu.token[:-4] + "AAAA"
    checked = await run_check(tmp_path, emu, fake_nanogpt, DISCORD_TOKEN=wrong)
    assert checked.code == 1
    assert checked.problems == ["problem: Discord rejected DISCORD_TOKEN (HTTP 401); copy the bot token again from "
                                "the Developer Portal (Bot → Reset Token)"]


async def test_unreachable_discord(tmp_path, emu, fake_nanogpt):
    base = f"http://127.0.0.1:{closed_port()}/api/v10"
    checked = await run_check(tmp_path, emu, fake_nanogpt, DISCORD_API_BASE=base)
    assert checked.code == 1
    [problem] = checked.problems
    assert problem.startswith(f"problem: cannot reach Discord at {base}: ")


async def test_missing_permissions_are_named_per_server(tmp_path, emu, fake_nanogpt):
    guild = emu.add_guild(name="Locked Down")
    guild.roles[guild.id]["permissions"] = "0"
    for role in guild.roles.values():
        if role.get("managed"):
            role["permissions"] = str(VIEW_CHANNEL)
    checked = await run_check(tmp_path, emu, fake_nanogpt)
    assert checked.code == 1
    assert "ok: logged in to Discord as NanoVoice" in checked.out and "in 2 servers" in checked.out
    assert checked.problems == [
        f"problem: missing permissions in 1 of 2 servers: Locked Down ({guild.id}): Send Messages, Embed Links, "
        "Attach Files, Read Message History, Connect, Speak, Send Voice Messages, Send Messages in Threads; give the "
        "bot's role these permissions"
    ]


async def test_no_server_yet_prints_the_invite_url(tmp_path, emu, fake_nanogpt):
    emu.guilds[emu.guild_id].members.pop(emu.bot_user.id)
    checked = await run_check(tmp_path, emu, fake_nanogpt)
    assert checked.code == 0, checked
    assert f"ok: logged in to Discord as {emu.bot_user.name} ({emu.bot_user.id}), in no server yet" in checked.lines
    assert (f"note: invite the bot with https://discord.com/oauth2/authorize?client_id={emu.application_id}"
            f"&scope=bot+applications.commands&permissions={INVITE_PERMISSIONS}") in checked.lines


async def test_dev_guild_must_be_joined(tmp_path, emu, fake_nanogpt):
    checked = await run_check(tmp_path, emu, fake_nanogpt, DEV_GUILD_ID="123456789012345678")
    assert checked.code == 1
    assert checked.problems == ["problem: DEV_GUILD_ID 123456789012345678 is not a server the bot is in; invite it "
                                "there or unset DEV_GUILD_ID"]


async def test_several_problems_one_line_each(tmp_path, emu, fake_nanogpt):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    checked = await run_check(tmp_path, emu, fake_nanogpt, DISCORD_TOKEN="bad.token.value",
                              NANOGPT_API_KEY="sk-nano-bad", DATABASE_PATH=str(blocker / "db.sqlite3"))
    assert checked.code == 1
    assert [p.split(":", 2)[1].strip()[:20] for p in checked.problems] == [
        "Discord rejected DIS", "NanoGPT rejected NAN", "cannot open the data"]
    assert checked.lines[-1] == "nanovoice check: 3 problems found"


async def test_configuration_error_is_one_line_exit_2(tmp_path, emu, fake_nanogpt):
    checked = await run_check(tmp_path, emu, fake_nanogpt, NANOGPT_API_KEY="")
    assert checked.code == 2
    assert checked.out == ""
    assert checked.err.strip() == "nanovoice: configuration error: NANOGPT_API_KEY is required but missing or empty"


async def test_a_check_that_never_answers_times_out_shown_as_it_runs(tmp_path, emu, fake_nanogpt):
    """NanoGPT accepts the connection and never answers: the NanoGPT check is announced at once (flushed,
    before the wait), gives up after CHECK_TIMEOUT with a problem naming NanoGPT, and the rest still runs."""
    fake_nanogpt.fail_next("/check-balance", status=None, delay=3600)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "NANOGPT_"))}
    env.update({
        "DISCORD_TOKEN": emu.token, "NANOGPT_API_KEY": fake_nanogpt.api_key, "NANOGPT_BASE_URL": fake_nanogpt.base_url,
        "DISCORD_API_BASE": emu.api_base, "DISCORD_GATEWAY_URL": emu.gateway_url,
        "DATABASE_PATH": str(tmp_path / "data" / "nanovoice.sqlite3"), "PYTHONPATH": str(ROOT),
    })
    loop = asyncio.get_running_loop()
    started = loop.time()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "check", cwd=str(tmp_path), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    arrivals: list[tuple[float, str]] = []  # (seconds since start, line) as the lines arrive on the pipe
    assert proc.stdout is not None
    async with asyncio.timeout(CHECK_TIMEOUT + 40):
        while line := await proc.stdout.readline():
            arrivals.append((loop.time() - started, line.decode().rstrip("\n")))
        await proc.wait()
    lines = [text for _, text in arrivals]
    heading = f"checking NanoGPT at {fake_nanogpt.base_url}…"
    problem = (f"problem: NanoGPT at {fake_nanogpt.base_url} didn't answer within {CHECK_TIMEOUT:g} s; "
               "check NANOGPT_BASE_URL and the network")
    assert proc.returncode == 1, lines
    assert [line for line in lines if line.startswith("problem:")] == [problem]
    assert lines.index(problem) == lines.index(heading) + 1
    shown_at = dict((text, at) for at, text in arrivals)
    waited = shown_at[problem] - shown_at[heading]
    assert CHECK_TIMEOUT - 0.5 <= waited <= CHECK_TIMEOUT + 5  # the heading was on screen while it waited
    assert lines.index("checking ffmpeg…") > lines.index(problem)  # the other checks still ran
    assert lines[-1] == "nanovoice check: 1 problem found"
    assert [r.path for r in fake_nanogpt.requests] == ["/check-balance"]


async def test_servers_outside_allowed_guild_ids_are_named(tmp_path, emu, fake_nanogpt):
    other = emu.add_guild(name="Elsewhere")
    missing_id = emu.snowflake()
    checked = await run_check(tmp_path, emu, fake_nanogpt, ALLOWED_GUILD_IDS=f"{emu.guild_id},{missing_id}")
    assert checked.code == 0, checked
    notes = [line for line in checked.lines if line.startswith("note: ")]
    assert f"note: the bot is in 1 server not in ALLOWED_GUILD_IDS (Elsewhere ({other.id})); it leaves them " \
           "when it starts" in notes
    assert f"note: the bot is not in 1 server of ALLOWED_GUILD_IDS ({missing_id}); invite it there if it should " \
           "serve them" in notes
