"""Command line: ``nanovoice [run]`` starts the bot; ``nanovoice check`` diagnoses the setup;
``nanovoice --version``.

``python -m bot`` is the same program. Exit codes: 0 stopped cleanly, 1 the bot could not start or run
(Discord unreachable, token rejected: one line saying so, no traceback), 2 configuration error (and another
bot process already using the SQLite database: one line).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import importlib.metadata
import logging
import os
import signal
import socket
import sqlite3
import ssl
import sys
import tomllib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

# Only what the configuration needs at the top: ``--version`` and a configuration error answer without
# loading discord.py and the bot (they are imported where the bot or the check starts).
from bot.config import Config, ConfigError, load_config
from bot.text import shorten

if TYPE_CHECKING:
    from bot.app import NanoVoice
    from bot.storage import Database

log = logging.getLogger("bot")

EXIT_FAILURE = 1
EXIT_CONFIG = 2
DETAIL_MAX = 160  # characters of an error's own text quoted in the one line operators see


def version() -> str:
    """The installed package's version; from a source checkout's pyproject.toml when not installed."""
    try:
        return importlib.metadata.version("nanovoice")
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        with (Path(__file__).resolve().parent.parent / "pyproject.toml").open("rb") as file:
            project = tomllib.load(file)["project"]
        if project["name"] == "nanovoice":
            return str(project["version"])
    except (OSError, KeyError, TypeError, tomllib.TOMLDecodeError):
        pass
    return "unknown"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nanovoice", description="Voice-cloning Discord bot on NanoGPT.")
    parser.add_argument("command", nargs="?", default="run", choices=("run", "check"),
                        help="run the bot (default) or check the configuration, Discord, NanoGPT and ffmpeg")
    parser.add_argument("--version", action="version", version=f"nanovoice {version()}")
    return parser.parse_args(argv)


class StartupFailure(Exception):
    """The bot could not start (a service it needs is unreachable, its database or HTTP port unusable);
    ``str()`` is the one line operators see, ``exit_code`` the process's."""

    def __init__(self, line: str, *, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(line)
        self.exit_code = exit_code


class _FirstGatewayFailure(logging.Filter):
    """Catches the failure of the bot's very first gateway connection.

    discord.py retries a failed gateway connection forever, logging a traceback before each attempt,
    and when the very first connection fails, 2.7 then crashes on its own missing websocket
    (``self.ws.sequence``); the sharded bot (``AutoShardedBot``) retries a shard's first connection every
    5 s ("Failed to connect for shard_id …"). Before the bot has ever connected, a failure means the gateway
    cannot be reached at all: keep the cause, drop discord.py's traceback, and close the client (which
    stops the sharded bot's retries: ``ShardedNanoVoice.launch_shard``), so that the command line reports
    it in one line. Once connected, reconnects are discord.py's as usual.
    """

    LOGGERS = ("discord.client", "discord.shard")
    MESSAGES = ("Attempting a reconnect", "Failed to connect for shard_id")

    def __init__(self, client: NanoVoice) -> None:
        super().__init__()
        self.client = client
        self.error: BaseException | None = None
        self._closing: asyncio.Task | None = None

    def _connected_once(self) -> bool:
        import discord

        if isinstance(self.client, discord.AutoShardedClient):
            return bool(self.client.shards)  # a shard is kept once its first connection succeeded
        return self.client.ws is not None

    def filter(self, record: logging.LogRecord) -> bool:
        if (not record.exc_info or record.exc_info[1] is None or not str(record.msg).startswith(self.MESSAGES)
                or self._connected_once()):
            return True
        if self.error is None:
            self.error = record.exc_info[1]
            self._closing = asyncio.get_running_loop().create_task(self.client.close())
        return False


async def _run(config: Config) -> None:
    """Open the resources, then run the bot on them (discord.py's ``examples/advanced_startup.py``):
    the HTTP session and the database are opened here and closed here, after the bot has closed."""
    import aiohttp
    import discord

    from bot.app import build_bot, http_session
    from bot.nanogpt import NanoGPTClient

    async with http_session() as session, _database(config) as db:
        nanogpt = NanoGPTClient(session, config.nanogpt_base_url, config.nanogpt_api_key)
        async with build_bot(config, session=session, db=db, nanogpt=nanogpt) as client:
            loop = asyncio.get_running_loop()
            # SIGTERM (systemd, docker stop) closes the bot as cleanly as Ctrl+C: cogs, gateway, database.
            loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(client.close()))
            try:
                await client.login(str(config.discord_token))
            except (OSError, aiohttp.ClientError, TimeoutError, discord.HTTPException) as exc:
                if client.user is None:  # discord.py's own login (GET /users/@me) failed, before our setup_hook
                    raise StartupFailure(f"can't reach Discord at {_address(exc, config.discord_api_base)}: "
                                         f"{_reason(exc)}") from exc
                line = _setup_failure(exc, config)
                if line is None:
                    raise
                log.debug("start-up failed", exc_info=exc)
                raise StartupFailure(line) from exc
            first = _FirstGatewayFailure(client)
            for name in first.LOGGERS:
                logging.getLogger(name).addFilter(first)
            try:
                await client.connect(reconnect=True)
            except Exception as exc:
                if first.error is None:
                    raise
                raise _gateway_unreachable(config, first.error) from exc
            finally:
                for name in first.LOGGERS:
                    logging.getLogger(name).removeFilter(first)
            if first.error is not None:
                raise _gateway_unreachable(config, first.error)


@contextlib.asynccontextmanager
async def _database(config: Config) -> AsyncIterator[Database]:
    """The connected database, closed on the way out; a :class:`StartupFailure` in one line when it
    can't be opened."""
    import asyncpg

    from bot.storage import Database, DatabaseInUse

    try:
        db = await Database.from_config(config).connect()
    except DatabaseInUse as exc:  # a second bot on one SQLite file: a deployment error, like a bad setting
        raise StartupFailure(str(exc), exit_code=EXIT_CONFIG) from exc
    except (sqlite3.Error, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.debug("opening the database failed", exc_info=exc)
        raise StartupFailure(f"can't open the database {config.database_label}: {shorten(str(exc), DETAIL_MAX)}; "
                             f"check {config.database_variable}") from exc
    except OSError as exc:
        line = _setup_failure(exc, config)
        if line is None:
            raise
        log.debug("opening the database failed", exc_info=exc)
        raise StartupFailure(line) from exc
    try:
        yield db
    finally:
        await db.close()


_UNREACHABLE = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT, errno.ECONNRESET}


def _setup_failure(exc: BaseException, config: Config) -> str | None:
    """One line for what commonly fails in the bot's own set-up (its database, its HTTP port), else None."""
    if not isinstance(exc, OSError) or not isinstance(exc.errno, int):
        return None
    if exc.filename is not None:  # creating the database's directory, opening the file
        if isinstance(exc, FileExistsError | NotADirectoryError):
            reason = f"{exc.filename} is a file, not a directory"
        else:
            reason = f"{os.strerror(exc.errno).lower()} ({exc.filename})"
        return f"can't open the database {config.database_path}: {reason}; check DATABASE_PATH"
    if config.database_url and (isinstance(exc, socket.gaierror) or exc.errno in _UNREACHABLE):
        reason = (exc.strerror or os.strerror(exc.errno)).lower()
        return f"can't reach the database {config.database_label}: {reason}; check DATABASE_URL and that it runs"
    if config.public_base_url and exc.errno in {errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES}:
        return (f"can't serve HTTP on port {config.http_port}: {os.strerror(exc.errno).lower()}; choose another "
                "HTTP_PORT")
    return None


def _gateway_unreachable(config: Config, error: BaseException) -> StartupFailure:
    return StartupFailure(f"can't reach the Discord gateway at {_address(error, config.discord_gateway_url)}: "
                       f"{_reason(error)}")


def _address(exc: BaseException, url: str) -> str:
    """host:port the failed connection went to (from aiohttp's error, else from the configured URL)."""
    from yarl import URL

    host, port = getattr(exc, "host", None), getattr(exc, "port", None)
    if not isinstance(host, str) or not isinstance(port, int):
        parsed = URL(url)
        host, port = parsed.host, parsed.port
    return f"[{host}]:{port}" if host and ":" in host else f"{host}:{port}"


def _reason(exc: BaseException) -> str:
    """What went wrong, in a few lowercase words: "connection refused", "DNS lookup failed: …"."""
    import aiohttp
    import discord

    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"its TLS certificate was not accepted ({shorten(str(exc.certificate_error), DETAIL_MAX)})"
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return f"the websocket handshake was refused (HTTP {exc.status})"
    if isinstance(exc, discord.HTTPException):
        return f"Discord answered HTTP {exc.status}; try again later"
    cause = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else exc
    if isinstance(cause, socket.gaierror):
        return f"DNS lookup failed ({shorten(cause.strerror or str(cause), DETAIL_MAX).lower()})"
    if isinstance(cause, ssl.SSLError):
        return f"TLS failed ({shorten(cause.reason or str(cause), DETAIL_MAX).lower()})"
    if isinstance(cause, TimeoutError) or getattr(cause, "errno", None) == errno.ETIMEDOUT:
        return "no answer in time"
    if isinstance(cause, ConnectionRefusedError) or getattr(cause, "errno", None) == errno.ECONNREFUSED:
        return "connection refused"
    if isinstance(cause, OSError) and cause.strerror:
        return shorten(cause.strerror, DETAIL_MAX).lower()
    return shorten(str(exc), DETAIL_MAX) or type(exc).__name__


def _fail(message: str, config: Config, exit_code: int = EXIT_FAILURE) -> int:
    from bot.logs import redact, redaction_list

    print(f"nanovoice: {redact(message, redaction_list(config.secrets))}", file=sys.stderr, flush=True)
    return exit_code


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        config = load_config()
    except ConfigError as exc:
        print(f"nanovoice: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    from bot.logs import setup_logging

    setup_logging(config.log_level, config.secrets)
    if args.command == "check":
        from bot.doctor import run_check

        return asyncio.run(run_check(config))
    log.info("nanovoice %s starting", version())
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(_run(config))
    except KeyboardInterrupt:
        log.info("stopped")
    except StartupFailure as exc:
        return _fail(str(exc), config, exc.exit_code)
    except Exception as exc:  # a login failure and the like: one line, no traceback for operators
        import discord

        if isinstance(exc, discord.LoginFailure):
            return _fail("Discord rejected DISCORD_TOKEN (HTTP 401); copy the bot token again from the Developer "
                         "Portal (Bot → Reset Token)", config)
        raise
    return 0


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (a dependency everywhere but Windows): the same asyncio API with
    roughly a third less CPU per socket and thread hop, which a busy bot spends most of its time on."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    sys.exit(main())
