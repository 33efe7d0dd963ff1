"""The real bot against the Discord emulator and the fake NanoGPT: the ``world`` fixture.

``world`` starts both fakes and the real :class:`bot.app.NanoVoice` (real discord.py REST client,
gateway websocket and command tree) with a fresh SQLite file, and gives tests one object:

- ``world.emu`` (:class:`tests.fakes.discord.DiscordEmulator`), ``world.nano`` (:class:`FakeNanoGPT`)
- ``world.bot`` (the running NanoVoice), ``world.db`` (its Database), ``world.clock`` (its Clock:
  ``world.clock.advance(seconds)`` moves the bot's time without sleeping)
- ``world.user(name)`` → a new guild member (:class:`EmuUser`)
- ``await world.restart(**env)`` → closes the bot and starts a new one on the same database file
  (each start opens its own HTTP session and database connection, as the command line does, and
  ``stop`` closes them after the bot)
- ``await world.stop()`` / ``await world.start(**env)``
- ``world.process_env(**env)`` and ``await world.spawn(**env)`` → the bot as a real subprocess
  (``python -m bot``) against the same fakes, for kill-and-restart tests; ``await world.kill(proc)``
- ``world.logs`` (every log record of the run, formatted) and ``world.unexpected_errors()``.

Environment: ``@pytest.mark.env(NAME="value", ...)`` overrides the defaults below for the first start.
Defaults differ from production only where a test would otherwise wait: ``SAY_COOLDOWN_SECONDS=0``.
At teardown the fixture fails the test if the bot logged an unexpected error (an error id) unless the
test is marked ``@pytest.mark.allow_unexpected_errors``, and the NanoGPT fixture checks that every
request matched NanoGPT's OpenAPI and that no download carried credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.app import NanoVoice, build_bot, http_session
from bot.clock import Clock
from bot.config import Config, load_config
from bot.nanogpt import NanoGPTClient
from bot.storage import Database
from tests.fakes.discord import DiscordEmulator, EmuUser
from tests.fakes.nanogpt import FakeNanoGPT

log = logging.getLogger(__name__)

READY_TIMEOUT = 10.0


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class World:
    emu: DiscordEmulator
    nano: FakeNanoGPT
    tmp_path: Path
    env: dict[str, str]
    clock: Clock = field(default_factory=Clock)
    bot: NanoVoice | None = None
    _connect_task: asyncio.Task | None = None
    _resources: contextlib.AsyncExitStack | None = None
    _capture: _Capture = field(default_factory=_Capture)
    _users: int = 0

    # -- configuration -------------------------------------------------------------------------

    @property
    def database_path(self) -> Path:
        return self.tmp_path / "data" / "nanovoice.sqlite3"

    def base_env(self) -> dict[str, str]:
        return {
            "DISCORD_TOKEN": self.emu.token,
            "NANOGPT_API_KEY": self.nano.api_key,
            "NANOGPT_BASE_URL": self.nano.base_url,
            "DISCORD_API_BASE": self.emu.api_base,
            "DISCORD_GATEWAY_URL": self.emu.gateway_url,
            "DATABASE_PATH": str(self.database_path),
            "SAY_COOLDOWN_SECONDS": "0",
            "LOG_LEVEL": "INFO",
        }

    def config(self, **overrides: str) -> Config:
        return load_config({**self.base_env(), **self.env, **overrides}, dotenv=False)

    # -- the in-process bot --------------------------------------------------------------------

    async def start(self, **overrides: str) -> NanoVoice:
        if self.bot is not None:
            raise RuntimeError("the bot is already running")
        self.env.update(overrides)
        config = self.config()
        # The resources first, as bot.__main__ opens them; stop() closes them after the bot.
        resources = self._resources = contextlib.AsyncExitStack()
        session = await resources.enter_async_context(http_session())
        db = await Database(config.database_path).connect()
        resources.push_async_callback(db.close)
        nanogpt = NanoGPTClient(session, config.nanogpt_base_url, config.nanogpt_api_key)
        # discord.py hard-codes wss:// for the voice websocket: the bot trusts the emulator's test CA.
        connector = aiohttp.TCPConnector(ssl=self.emu.voice_client_ssl_context())
        bot = build_bot(config, session=session, db=db, nanogpt=nanogpt, clock=self.clock, http_host="127.0.0.1",
                        guild_ready_timeout=0.05, connector=connector)

        async def no_identify_wait(*_: Any, **__: Any) -> None:
            return None

        bot.before_identify_hook = no_identify_wait  # type: ignore[method-assign]
        self.bot = bot
        await bot.login(self.emu.token)
        self._connect_task = asyncio.create_task(bot.connect(reconnect=True), name="bot-connect")
        ready = asyncio.create_task(bot.wait_until_ready())
        done, _ = await asyncio.wait({self._connect_task, ready}, timeout=READY_TIMEOUT,
                                     return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
            if self._connect_task in done and self._connect_task.exception():
                raise self._connect_task.exception()
            raise TimeoutError("the bot did not become ready against the emulator")
        # The clone poller's start-up recovery adopts every job nobody claims: wait for it to end (its
        # scheduler runs), so a job a test makes afterwards through the repositories is not taken for an
        # orphan of a dead process (and marked lost) while the test completes it.
        for _ in range(int(READY_TIMEOUT / 0.005)):
            if bot.clones._scheduler.running:
                break
            await asyncio.sleep(0.005)
        return bot

    async def stop(self) -> None:
        bot, task, resources = self.bot, self._connect_task, self._resources
        self.bot, self._connect_task, self._resources = None, None, None
        if bot is not None:
            await bot.close()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if resources is not None:
            await resources.aclose()  # the database, then the HTTP session

    async def restart(self, **overrides: str) -> NanoVoice:
        await self.stop()
        return await self.start(**overrides)

    @property
    def db(self) -> Database:
        assert self.bot is not None, "the bot is not running"
        return self.bot.db

    # -- people --------------------------------------------------------------------------------

    def user(self, name: str | None = None) -> EmuUser:
        self._users += 1
        return self.emu.add_user(name=name or f"member{self._users}")

    # -- the bot as a real process -------------------------------------------------------------

    def process_env(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "NANOGPT_"))}
        env.update(self.base_env())
        env.update(self.env)
        env.update(overrides)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    async def spawn(self, *, wait_ready: bool = True, **overrides: str) -> asyncio.subprocess.Process:
        """Start ``python -m bot`` against the fakes; waits until it has identified on the gateway."""
        identified = self.emu.identify_count
        log_path = self.tmp_path / f"bot-process-{identified}.log"
        out = log_path.open("wb")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "run", cwd=str(self.tmp_path), env=self.process_env(**overrides),
            stdout=out, stderr=asyncio.subprocess.STDOUT,
        )
        out.close()
        proc.log_path = log_path  # type: ignore[attr-defined]
        if wait_ready:
            await self.emu.wait_until(lambda: self.emu.identify_count > identified or proc.returncode is not None,
                                      timeout=30, what="the bot process to identify")
            if proc.returncode is not None:
                raise AssertionError(f"the bot process exited: {log_path.read_text()}")
            await asyncio.sleep(0.3)  # READY dispatch, guild_ready_timeout, command sync
        return proc

    @staticmethod
    async def kill(proc: asyncio.subprocess.Process) -> None:
        """SIGKILL: no clean-up of any kind runs in the bot."""
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        await proc.wait()

    @staticmethod
    async def terminate(proc: asyncio.subprocess.Process, timeout: float = 10) -> None:  # noqa: ASYNC109
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                proc.kill()
                await proc.wait()

    # -- logs ----------------------------------------------------------------------------------

    @property
    def logs(self) -> list[str]:
        return [self._format(r) for r in self._capture.records]

    def _format(self, record: logging.LogRecord) -> str:
        text = self._capture.format(record)
        return text

    def unexpected_errors(self) -> list[str]:
        return [self._format(r) for r in self._capture.records
                if r.levelno >= logging.ERROR and r.getMessage().startswith("unexpected error")]


@pytest.fixture
async def world(request, tmp_path, discord_emulator, fake_nanogpt) -> AsyncIterator[World]:
    marker = request.node.get_closest_marker("env")
    env = {k: str(v) for k, v in (marker.kwargs if marker else {}).items()}
    w = World(emu=discord_emulator, nano=fake_nanogpt, tmp_path=tmp_path, env=env)
    root = logging.getLogger()
    root.addHandler(w._capture)
    previous_level = root.level
    root.setLevel(logging.DEBUG)
    try:
        await w.start()
        yield w
    finally:
        await w.stop()
        root.removeHandler(w._capture)
        root.setLevel(previous_level)
    if not request.node.get_closest_marker("allow_unexpected_errors"):
        errors = w.unexpected_errors()
        assert not errors, "the bot logged unexpected errors:\n" + "\n".join(errors)
