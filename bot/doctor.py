"""``nanovoice check``: is this installation ready to run? Each check is announced as it starts
(``checking …``, flushed) and followed by its result lines; non-zero on any problem. A check that gets no
answer for :data:`CHECK_TIMEOUT` seconds (10) is given up with a ``problem:`` line naming what didn't answer.

The configuration was already validated by ``load_config`` (a bad value never gets here: exit 2).
Then, each independent of the others:

* **Discord** — logs in with ``DISCORD_TOKEN`` through discord.py's own HTTP client (against
  ``DISCORD_API_BASE``; ``GET /users/@me``), counts the servers the bot is in (``GET /users/@me/guilds``),
  and per server computes the bot's server-level permissions from the guild's roles and the bot
  member's roles (``GET /guilds/{id}``, ``GET /guilds/{id}/members/{bot}``), reporting any missing
  permission of :data:`NEEDED`;
  ``DEV_GUILD_ID`` and ``EMBEDDING_CHANNEL_ID`` must be reachable when set. No gateway connection.
* **NanoGPT** — ``POST /check-balance`` with ``NANOGPT_API_KEY``: the key works and the balance.
* **ffmpeg** — the bundled binary runs and has the encoders the bot uses.
* **Database** — opens ``DATABASE_PATH`` (or ``DATABASE_URL``), applies migrations, writes and reads back a row.

Result lines start with ``ok:``, ``note:`` (worth knowing, not a failure) or ``problem:``. No secret is
ever printed: every line is scrubbed of the token and the key before it is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import secrets
import sqlite3
import sys
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import discord

from bot.app import point_discord_at
from bot.config import Config
from bot.limits import cost_to_micros, format_usd
from bot.logs import redact, redaction_list
from bot.nanogpt import AuthError, NanoGPTClient, NanoGPTError, UpstreamUnavailable
from bot.storage import Database
from bot.text import plural, shorten

if TYPE_CHECKING:
    from discord.types.guild import Guild as GuildPayload

log = logging.getLogger(__name__)

#: The permissions the bot needs in a server (and in the channels where it is used), in invite order.
NEEDED: tuple[tuple[str, str], ...] = (
    ("view_channel", "View Channel"),
    ("send_messages", "Send Messages"),
    ("embed_links", "Embed Links"),
    ("attach_files", "Attach Files"),
    ("read_message_history", "Read Message History"),
    ("connect", "Connect"),  # voice channels: /join
    ("speak", "Speak"),
    ("send_voice_messages", "Send Voice Messages"),
    ("send_messages_in_threads", "Send Messages in Threads"),
)
INVITE_PERMISSIONS = sum(getattr(discord.Permissions, name).flag for name, _ in NEEDED)  # 70643625348096
MAX_GUILDS_CHECKED = 50  # permission checks cost two requests per server; sample the first ones
#: Each check is given up (a ``problem:`` line naming what didn't answer) after this long without an answer.
CHECK_TIMEOUT = 10.0
DETAIL_MAX = 200  # characters of an error's own text quoted in a check's line
DISCORD_TIMEOUT = 60.0  # the Discord check in all, however steadily Discord answers
NANOGPT_TIMEOUT = 45.0
FFMPEG_TIMEOUT = 30.0
FFMPEG_ENCODERS = ("libmp3lame", "libopus")

Report = Callable[[str], None]


def invite_url(application_id: int) -> str:
    return (f"https://discord.com/oauth2/authorize?client_id={application_id}"
            f"&scope=bot+applications.commands&permissions={INVITE_PERMISSIONS}")


@dataclass
class CheckResult:
    lines: list[str] = field(default_factory=list)
    problems: int = 0

    def ok(self, text: str) -> None:
        self.lines.append(f"ok: {text}")

    def note(self, text: str) -> None:
        self.lines.append(f"note: {text}")

    def problem(self, text: str) -> None:
        self.problems += 1
        self.lines.append(f"problem: {text}")


def _printer(line: str) -> None:
    print(line, flush=True)


@dataclass(frozen=True)
class Check:
    label: str  # shown before the check runs: "checking {label}…"
    run: Callable[[Config], Awaitable[CheckResult]]
    silent: str  # the problem when it times out: "{silent} didn't answer within 10 s; {advice}"
    advice: str


def checks(config: Config) -> tuple[Check, ...]:
    """The checks after the configuration, in the order they run."""
    return (
        Check(f"Discord at {config.discord_api_base}", check_discord, f"Discord at {config.discord_api_base}",
              "check DISCORD_API_BASE and the network"),
        Check(f"NanoGPT at {config.nanogpt_base_url}", check_nanogpt, f"NanoGPT at {config.nanogpt_base_url}",
              "check NANOGPT_BASE_URL and the network"),
        Check("ffmpeg", check_ffmpeg, "ffmpeg", "check that the bundled ffmpeg runs on this machine"),
        Check(f"the database {config.database_label}", check_database, f"the database {config.database_label}",
              "check DATABASE_URL and that PostgreSQL answers" if config.database_url
              else "is another program holding it locked? check DATABASE_PATH"),
    )


async def run_check(config: Config, *, report: Report = _printer) -> int:
    """Run every check, each announced before it runs and then its result lines, all through ``report``
    (which flushes); returns 0 when all passed, else 1. A check without an answer for
    :data:`CHECK_TIMEOUT` seconds is a ``problem:`` line naming what didn't answer."""
    quiet = _quiet_loggers()
    secret_values = redaction_list(config.secrets)
    total = CheckResult()

    def say(line: str) -> None:
        report(redact(line, secret_values))

    def emit(result: CheckResult) -> None:
        for line in result.lines:
            say(line)
        total.problems += result.problems

    try:
        say("checking the configuration…")
        emit(check_config(config))
        for check in checks(config):
            say(f"checking {check.label}…")
            emit(await _timed(check, config))
    finally:
        quiet()
    if total.problems:
        report(f"nanovoice check: {plural(total.problems, 'problem')} found")
        return 1
    report("nanovoice check: everything looks ready")
    return 0


_deadline: contextvars.ContextVar[asyncio.Timeout | None] = contextvars.ContextVar("check_deadline", default=None)


def _answered() -> None:
    """The running check got an answer: it has :data:`CHECK_TIMEOUT` again for the next one, so a Discord
    that answers slowly for many servers is no timeout; only silence is."""
    deadline = _deadline.get()
    if deadline is not None:
        deadline.reschedule(asyncio.get_running_loop().time() + CHECK_TIMEOUT)


async def _timed(check: Check, config: Config) -> CheckResult:
    """The check, given up after :data:`CHECK_TIMEOUT` seconds without an answer."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT) as deadline:
            token = _deadline.set(deadline)
            try:
                return await _guarded(check.run, config)
            finally:
                _deadline.reset(token)
    except TimeoutError:
        result = CheckResult()
        result.problem(f"{check.silent} didn't answer within {CHECK_TIMEOUT:g} s; {check.advice}")
        return result


async def _guarded(check: Callable[[Config], Awaitable[CheckResult]], config: Config) -> CheckResult:
    """A check that crashes is a problem line, not a traceback."""
    try:
        return await check(config)
    except Exception as exc:
        deadline = _deadline.get()
        if isinstance(exc, TimeoutError) and deadline is not None and deadline.expired():
            raise  # our own deadline: _timed says what didn't answer
        result = CheckResult()
        name = check.__name__.removeprefix("check_")
        result.problem(f"the {name} check failed unexpectedly: {type(exc).__name__}: {shorten(str(exc), DETAIL_MAX)}")
        log.debug("%s check crashed", name, exc_info=True)
        return result


def _quiet_loggers() -> Callable[[], None]:
    """Library chatter (retries, rate limits) would interleave with the report: keep only errors."""
    names = ("discord", "bot.nanogpt", "bot.storage")
    saved = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.ERROR)

    def restore() -> None:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)

    return restore


# -- configuration -------------------------------------------------------------------------------


def check_config(config: Config) -> CheckResult:
    result = CheckResult()
    result.ok(f"configuration loaded (database {config.database_label}, NanoGPT at {config.nanogpt_base_url}, "
              f"Discord REST at {config.discord_api_base})")
    if config.public_base_url is None and config.embedding_channel_id is None:
        result.note("neither PUBLIC_BASE_URL nor EMBEDDING_CHANNEL_ID is set: Qwen voices stop working about "
                    "7 days after they are cloned (MiniMax voices are not affected)")
    if config.clone_daily_limit == 0:
        result.note("CLONE_DAILY_LIMIT is 0: voice cloning is turned off on this bot")
    return result


# -- Discord -------------------------------------------------------------------------------------


async def check_discord(config: Config) -> CheckResult:
    point_discord_at(config)
    result = CheckResult()
    http = discord.http.HTTPClient(asyncio.get_running_loop())
    try:
        async with asyncio.timeout(DISCORD_TIMEOUT):
            await _discord_checks(http, config, result)
    except TimeoutError:
        result.problem(f"Discord at {config.discord_api_base} did not answer within {DISCORD_TIMEOUT:.0f} s")
    finally:
        await http.close()
    return result


async def _discord_checks(http: discord.http.HTTPClient, config: Config, result: CheckResult) -> None:
    Route = discord.http.Route
    try:
        me = await http.static_login(str(config.discord_token))
    except discord.LoginFailure:
        result.problem("Discord rejected DISCORD_TOKEN (HTTP 401); copy the bot token again from the "
                       "Developer Portal (Bot → Reset Token)")
        return
    except discord.HTTPException as exc:
        result.problem(f"Discord login failed: HTTP {exc.status} {shorten(exc.text or '', DETAIL_MAX)}".rstrip())
        return
    except (aiohttp.ClientError, OSError) as exc:
        result.problem(f"cannot reach Discord at {config.discord_api_base}: {_describe(exc)}")
        return
    _answered()
    bot_id = int(me["id"])
    name = me.get("username", "?")

    guilds: list[GuildPayload] = []
    after: int | None = None
    while True:  # 200 per page
        page = await http.get_guilds(200, after=after, with_counts=False)
        _answered()
        guilds.extend(page)
        if len(page) < 200:
            break
        after = int(page[-1]["id"])
    application_id = bot_id
    try:
        application_id = int((await http.application_info())["id"])
        _answered()
    except (discord.HTTPException, KeyError, ValueError):
        pass
    if not guilds:
        result.ok(f"logged in to Discord as {name} ({bot_id}), in no server yet")
        result.note(f"invite the bot with {invite_url(application_id)}")
    else:
        result.ok(f"logged in to Discord as {name} ({bot_id}), in {plural(len(guilds), 'server')}")

    if config.allowed_guild_ids is not None:
        outside = [g for g in guilds if not config.guild_allowed(int(g["id"]))]
        if outside:
            shown = ", ".join(_guild_label(g) for g in outside[:5]) + (" and more" if len(outside) > 5 else "")
            result.note(f"the bot is in {plural(len(outside), 'server')} not in ALLOWED_GUILD_IDS ({shown}); it leaves "
                        "them when it starts")
        absent = sorted(config.allowed_guild_ids - {int(g["id"]) for g in guilds})
        if absent:
            result.note(f"the bot is not in {plural(len(absent), 'server')} of ALLOWED_GUILD_IDS "
                        f"({', '.join(map(str, absent[:5]))}{' and more' if len(absent) > 5 else ''}); invite it "
                        "there if it should serve them")

    missing: list[str] = []
    checked = 0
    for guild in guilds[:MAX_GUILDS_CHECKED]:
        try:
            perms = await _guild_permissions(http, guild, bot_id)
        except discord.HTTPException as exc:
            missing.append(f"{_guild_label(guild)}: could not read the bot's roles (HTTP {exc.status})")
            continue
        checked += 1
        lacking = [label for attr, label in NEEDED if not getattr(perms, attr)]
        if lacking:
            missing.append(f"{_guild_label(guild)}: {', '.join(lacking)}")
    if missing:
        checked_of = plural(min(len(guilds), MAX_GUILDS_CHECKED), "server")
        result.problem(f"missing permissions in {len(missing)} of {checked_of}: {'; '.join(missing)}; give the "
                       "bot's role these permissions")
    elif checked:
        sampled = f" (the first {checked})" if len(guilds) > checked else ""
        result.ok(f"the bot has the permissions it needs in every server checked{sampled}")

    if config.dev_guild_id is not None and guilds and not any(int(g["id"]) == config.dev_guild_id for g in guilds):
        result.problem(f"DEV_GUILD_ID {config.dev_guild_id} is not a server the bot is in; invite it there "
                       f"or unset DEV_GUILD_ID")
    elif config.dev_guild_id is not None and not guilds:
        result.problem(f"DEV_GUILD_ID {config.dev_guild_id} is set but the bot is in no server; invite it first")

    if config.embedding_channel_id is not None:
        try:
            await http.request(Route("GET", "/channels/{channel_id}", channel_id=config.embedding_channel_id))
        except discord.HTTPException as exc:
            result.problem(f"EMBEDDING_CHANNEL_ID {config.embedding_channel_id} cannot be read by the bot "
                           f"(HTTP {exc.status}); check the channel id and the bot's access to it")
        else:
            result.ok(f"EMBEDDING_CHANNEL_ID {config.embedding_channel_id} is readable")


async def _guild_permissions(http: discord.http.HTTPClient, guild: GuildPayload, bot_id: int) -> discord.Permissions:
    """The bot's server-level permissions: @everyone plus its roles (channel overwrites not included).

    ``GET /guilds/{id}`` carries the roles and the owner; ``GET /guilds/{id}/members/{bot}`` the bot's roles.
    """
    guild_id = int(guild["id"])
    full = await http.get_guild(guild_id, with_counts=False)
    _answered()
    if guild.get("owner") or str(full.get("owner_id")) == str(bot_id):
        return discord.Permissions.all()
    member = await http.get_member(guild_id, bot_id)
    _answered()
    by_id = {int(r["id"]): int(r.get("permissions", 0)) for r in full.get("roles", [])}
    value = by_id.get(guild_id, 0)  # @everyone has the guild's id
    for role_id in member.get("roles", []):
        value |= by_id.get(int(role_id), 0)
    perms = discord.Permissions(value)
    if perms.administrator:
        return discord.Permissions.all()
    return perms


def _guild_label(guild: GuildPayload) -> str:
    return f"{shorten(str(guild.get('name') or '?'), 60)} ({guild['id']})"


def _describe(exc: BaseException) -> str:
    text = shorten(str(exc), DETAIL_MAX) or type(exc).__name__
    return text


# -- NanoGPT -------------------------------------------------------------------------------------


async def check_nanogpt(config: Config) -> CheckResult:
    result = CheckResult()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20),
                                     headers={"User-Agent": "nanovoice-check"}) as session:
        client = NanoGPTClient(session, config.nanogpt_base_url, config.nanogpt_api_key, timeout=15,
                               max_retry_wait=5)
        try:
            async with asyncio.timeout(NANOGPT_TIMEOUT):
                balance = await client.check_balance()
        except AuthError as exc:
            result.problem(f"NanoGPT rejected NANOGPT_API_KEY (HTTP {exc.status or 401}); create or copy a key at "
                           "nano-gpt.com/api")
            return result
        except (UpstreamUnavailable, TimeoutError) as exc:
            reason = exc.message if isinstance(exc, NanoGPTError) else "no answer in time"
            reason = shorten(reason, DETAIL_MAX).rstrip(".")
            result.problem(f"NanoGPT at {config.nanogpt_base_url} is not answering ({reason}); "
                           "check NANOGPT_BASE_URL and the network")
            return result
        except NanoGPTError as exc:
            result.problem(f"NanoGPT refused /check-balance: {shorten(str(exc), DETAIL_MAX)}")
            return result
    usd = _money(balance.usd)
    nano = f" and {balance.nano.normalize():f} XNO" if balance.nano else ""
    if balance.usd <= 0 and not balance.nano:
        result.problem(f"NanoGPT key works but the balance is {usd}; top up at nano-gpt.com before anyone "
                       "clones or speaks")
    else:
        low = " (low: a MiniMax clone costs $1.00)" if balance.usd < 1 and not balance.nano else ""
        result.ok(f"NanoGPT key accepted; balance {usd}{nano}{low}")
    return result


def _money(amount: Decimal) -> str:
    if amount < 0:
        return f"-{format_usd(cost_to_micros(-amount))}"
    return format_usd(cost_to_micros(amount))


# -- ffmpeg --------------------------------------------------------------------------------------


async def check_ffmpeg(config: Config) -> CheckResult:
    result = CheckResult()
    try:
        import imageio_ffmpeg

        exe = await asyncio.to_thread(imageio_ffmpeg.get_ffmpeg_exe)
    except Exception as exc:
        result.problem(f"no usable ffmpeg: {shorten(str(exc), DETAIL_MAX)}; reinstall imageio-ffmpeg "
                       "(or set IMAGEIO_FFMPEG_EXE)")
        return result
    try:
        version = await _run(exe, "-hide_banner", "-version")
        encoders = await _run(exe, "-hide_banner", "-encoders")
    except (OSError, TimeoutError, RuntimeError) as exc:
        result.problem(f"ffmpeg at {exe} does not run: {shorten(str(exc), DETAIL_MAX) or type(exc).__name__}")
        return result
    words = (version.splitlines()[0] if version else "ffmpeg").split()
    first = " ".join(words[:3]) if words[:2] == ["ffmpeg", "version"] else " ".join(words[:6])
    lacking = [name for name in FFMPEG_ENCODERS if name not in encoders]
    if lacking:
        result.problem(f"{shorten(first, 80)} lacks the encoder(s) {', '.join(lacking)}; use the ffmpeg "
                       "bundled with imageio-ffmpeg")
    else:
        result.ok(f"{shorten(first, 80)} (with {', '.join(FFMPEG_ENCODERS)})")
    return result


async def _run(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(*args, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(FFMPEG_TIMEOUT):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"exit code {proc.returncode}: {err.decode(errors='replace')[-200:]}")
    return out.decode(errors="replace")


# -- database ------------------------------------------------------------------------------------


async def check_database(config: Config) -> CheckResult:
    result = CheckResult()
    path = config.database_label
    try:
        # Beside a running bot too: the check does not claim the SQLite file for its process.
        db = await Database.from_config(config, process_lock=False).connect()
    except Exception as exc:
        advice = ("check DATABASE_URL and that PostgreSQL answers" if config.database_url
                  else "check DATABASE_PATH and that its directory is writable")
        detail = shorten(str(exc), DETAIL_MAX) or type(exc).__name__
        result.problem(f"cannot open the database {path}: {detail}; {advice}")
        return result
    try:
        version = await db.schema_version()
        token = secrets.token_hex(8)
        await db.set_meta("check_write_test", token)
        if await db.get_meta("check_write_test") != token:
            result.problem(f"the database {path} did not keep a test write")
        else:
            result.ok(f"database {path} (schema version {version}) is writable")
    except Exception as exc:
        result.problem(f"the database {path} is not writable: {shorten(str(exc), DETAIL_MAX) or type(exc).__name__}")
    finally:
        await db.close()
    return result


# -- container health ----------------------------------------------------------------------------


async def _postgres_healthy(url: str) -> bool:
    """The PostgreSQL database answers within 5 s and has been migrated."""
    import asyncpg

    try:
        conn = await asyncpg.connect(url, timeout=5)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError):
        return False
    try:
        version = await conn.fetchval("SELECT version FROM nanovoice_schema WHERE id = 1", timeout=5)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    finally:
        await conn.close()
    return bool(version)


def health(env: Mapping[str, str] | None = None) -> int:
    """The Docker HEALTHCHECK (``python -m bot.doctor health``): 0 healthy, 1 not. Fast, offline, no secrets.

    With ``PUBLIC_BASE_URL`` set the bot serves ``/healthz`` on ``HTTP_PORT``: asking it proves the
    process answers and its database works. Without it there is no server to ask, so this only proves
    what it can: the database file exists and answers a read (the bot is the container's main process,
    so a crashed bot stops the container anyway and the restart policy takes over).
    """
    env = os.environ if env is None else env
    if (env.get("PUBLIC_BASE_URL") or "").strip():
        port = (env.get("HTTP_PORT") or "8080").strip()
        try:
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
            with opener.open(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
                return 0 if response.status == 200 else 1
        except (OSError, ValueError):
            return 1
    url = (env.get("DATABASE_URL") or "").strip()
    if url:
        return 0 if asyncio.run(_postgres_healthy(url)) else 1
    path = Path((env.get("DATABASE_PATH") or "data/nanovoice.sqlite3").strip())
    if not path.is_file():
        return 1
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)) as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error:
        return 1
    return 0 if version > 0 else 1


if __name__ == "__main__":
    if sys.argv[1:] == ["health"]:
        sys.exit(health())
    sys.exit("usage: python -m bot.doctor health (for the full check run `nanovoice check`)")
