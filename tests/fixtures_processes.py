"""Several real bot processes on one Discord emulator, one fake NanoGPT and one PostgreSQL schema: ``cluster``.

Each process is ``python -m bot run`` (as an operator starts it) with ``DATABASE_URL`` on the test's own
schema (``?search_path=`` of :func:`tests.fixtures_postgres.fresh_schema`; no ``DATABASE_PATH``),
``SHARD_COUNT=2`` (``cluster.use_shards(n)`` for more) and its own ``SHARD_IDS``, so the emulator sends each
guild's events to one process only::

    async def test_x(cluster):
        first, second = await cluster.start(0, 1)   # one process per shard, started together
        guild = cluster.guilds[1]                   # a guild whose events go to shard 1
        alice = cluster.user("alice", guild)
        inter = await cluster.emu.slash(alice, "say", options={"text": "hi"}, channel_id=cluster.channel(guild))
        assert cluster.clients_of(inter) == {second.name}   # which process answered (its TCP connections)
        await cluster.kill(second)                  # SIGKILL; cluster.terminate / cluster.restart
        db = await cluster.db()                     # the test's own connection to the same schema

- ``cluster.emu``, ``cluster.nano``, ``cluster.guilds`` (shard → a guild id on it, both known before start)
- ``await cluster.spawn(shard, **env)`` → :class:`BotProcess`, once it has identified its shard on the gateway
  (from its own connection) and logged that it is ready; ``cluster.start(*shards)`` spawns several at once
- which process sent a request: the emulator names each request's client (``RecordedRequest.client``, from the
  TCP port it came from, looked up in ``/proc``) and each gateway session's; ``cluster.clients_of(inter)``
- ``@pytest.mark.env(NAME="value")`` overrides the environment of every process (as for ``world``)

Each process writes its log to its own file under ``tmp_path``; at teardown every log is printed (pytest shows it
for a failing test only), the processes are stopped, and the test fails if one logged an unexpected error
(unless marked ``@pytest.mark.allow_unexpected_errors``). Only 127.0.0.1 is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bot.storage import Database
from tests.fakes.discord import DiscordEmulator, EmuInteraction, EmuUser
from tests.fakes.nanogpt import FakeNanoGPT
from tests.fixtures_postgres import PostgresServer, fresh_schema

SHARD_COUNT = 2
READY_TIMEOUT = 30.0  # seconds for a process to identify and log "logged in as" (two cores shared with others)
STOP_TIMEOUT = 10.0
READY_LINE = "logged in as"


def guild_id_on(emu: DiscordEmulator, shard: int, count: int = SHARD_COUNT) -> int:
    """A fresh guild id whose events Discord sends to ``shard`` of ``count``."""
    flake = emu.snowflake()
    ms = flake >> 22
    ms += (shard - ms % count) % count
    return (ms << 22) | (flake & ((1 << 22) - 1))


@dataclass
class BotProcess:
    """One ``python -m bot run`` process."""

    name: str  # "shard0", "shard0-2" for the second start of shard 0's process, …
    shard: int
    proc: asyncio.subprocess.Process
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc.returncode is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def unexpected_errors(self) -> list[str]:
        return [line for line in self.log().splitlines() if "unexpected error" in line]


def _socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets process ``pid`` has open (from ``/proc/PID/fd``)."""
    inodes: set[str] = set()
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return inodes
    for name in names:
        with contextlib.suppress(OSError):
            target = os.readlink(f"{fd_dir}/{name}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def _client_socket_inode(local_port: int, server_port: int) -> str | None:
    """The inode of the TCP socket 127.0.0.1:``local_port`` → :``server_port`` (from ``/proc/net/tcp``)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as rows:
            next(rows, None)
            for row in rows:
                fields = row.split()
                local, remote, inode = fields[1], fields[2], fields[9]
                if (int(local.rsplit(":", 1)[1], 16) == local_port and int(remote.rsplit(":", 1)[1], 16) == server_port
                        and inode != "0"):
                    return inode
    return None


@dataclass
class Cluster:
    emu: DiscordEmulator
    nano: FakeNanoGPT
    tmp_path: Path
    database_url: str
    env: dict[str, str]
    guilds: dict[int, int] = field(default_factory=dict)  # shard → a guild whose events go to it
    shard_count: int = SHARD_COUNT
    processes: list[BotProcess] = field(default_factory=list)  # every process started, in order
    _db: Database | None = None
    _users: int = 0

    # -- set-up ----------------------------------------------------------------------------------

    def add_guilds(self) -> None:
        """One guild per shard: the emulator's default guild on its own shard, a new one on each other."""
        self.guilds[self.emu.shard_of(self.emu.guild_id, self.shard_count)] = self.emu.guild_id
        for shard in range(self.shard_count):
            if shard not in self.guilds:
                self.guilds[shard] = self.emu.add_guild(guild_id_on(self.emu, shard, self.shard_count),
                                                        f"Shard {shard} Guild").id

    def use_shards(self, count: int) -> None:
        """``SHARD_COUNT=count`` for every process (before any starts): the emulator's shards and IDENTIFY
        buckets, and ``guilds`` again, one per shard."""
        assert not self.processes, "use_shards before the first process starts"
        self.shard_count = self.emu.shard_count = self.emu.max_concurrency = count
        self.guilds = {}
        self.add_guilds()

    def channel(self, guild_id: int) -> int:
        """The guild's text channel."""
        return next(iter(self.emu.guilds[guild_id].channels))

    def user(self, name: str | None = None, *guild_ids: int) -> EmuUser:
        """A new user, a member of each of ``guild_ids`` (default: every shard's guild)."""
        self._users += 1
        user: EmuUser | None = None
        for guild_id in guild_ids or tuple(self.guilds.values()):
            user = self.emu.add_user(user.id if user else None, name or f"member{self._users}", guild_id=guild_id)
        assert user is not None
        return user

    # -- processes -------------------------------------------------------------------------------

    def process_env(self, shard: int, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("DISCORD_", "NANOGPT_", "DATABASE_", "SHARD_"))}
        env.update({
            "DISCORD_TOKEN": self.emu.token,
            "NANOGPT_API_KEY": self.nano.api_key,
            "NANOGPT_BASE_URL": self.nano.base_url,
            "DISCORD_API_BASE": self.emu.api_base,
            "DISCORD_GATEWAY_URL": self.emu.gateway_url,
            "DATABASE_URL": self.database_url,  # never DATABASE_PATH with it (exit 2)
            "SHARD_COUNT": str(self.shard_count),
            "SHARD_IDS": str(shard),
            "SAY_COOLDOWN_SECONDS": "0",
            "LOG_LEVEL": "INFO",
        })
        env.update(self.env)
        env.update(overrides)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    async def spawn(self, shard: int, *, wait_ready: bool = True, **overrides: str) -> BotProcess:
        """Start shard ``shard``'s process; with ``wait_ready`` return once its own gateway connection has
        identified that shard and it logged that it is ready."""
        starts = sum(p.shard == shard for p in self.processes)
        name = f"shard{shard}" + (f"-{starts + 1}" if starts else "")
        log_path = self.tmp_path / f"{name}.log"
        with log_path.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot", "run", cwd=str(self.tmp_path), env=self.process_env(shard, **overrides),
                stdout=out, stderr=asyncio.subprocess.STDOUT)
        process = BotProcess(name, shard, proc, log_path)
        self.processes.append(process)
        if wait_ready:
            await self.wait_ready(process)
        return process

    async def start(self, *shards: int, **overrides: str) -> list[BotProcess]:
        """One process per shard (default: every shard), started at the same time."""
        return list(await asyncio.gather(*(self.spawn(s, **overrides) for s in shards or range(self.shard_count))))

    async def wait_ready(self, process: BotProcess, timeout: float = READY_TIMEOUT) -> None:  # noqa: ASYNC109
        def ready() -> bool:
            identified = ([process.shard, self.shard_count], process.name) in self.emu.shard_clients()
            return not process.running or (identified and READY_LINE in process.log())

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not ready():
            if loop.time() > deadline:
                raise AssertionError(f"{process.name} did not become ready within {timeout:.0f} s:\n{process.log()}")
            await asyncio.sleep(0.05)
        if not process.running:
            raise AssertionError(f"{process.name} exited with {process.proc.returncode}:\n{process.log()}")

    @property
    def running(self) -> list[BotProcess]:
        return [p for p in self.processes if p.running]

    @staticmethod
    async def kill(process: BotProcess) -> None:
        """SIGKILL: no clean-up of any kind runs in the bot."""
        if process.running:
            process.proc.send_signal(signal.SIGKILL)
        await process.proc.wait()

    @staticmethod
    async def terminate(process: BotProcess, timeout: float = STOP_TIMEOUT) -> int:  # noqa: ASYNC109
        """SIGTERM (a clean shutdown, as ``docker stop``); SIGKILL after ``timeout``. Returns the exit code."""
        if process.running:
            process.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.proc.wait(), timeout)
            except TimeoutError:
                process.proc.kill()
                await process.proc.wait()
        assert process.proc.returncode is not None
        return process.proc.returncode

    async def restart(self, process: BotProcess, **overrides: str) -> BotProcess:
        """A clean stop of ``process``, then a new process for its shard."""
        await self.terminate(process)
        return await self.spawn(process.shard, **overrides)

    # -- who did what ----------------------------------------------------------------------------

    def client_of(self, port: int) -> str | None:
        """The name of the bot process whose TCP connection to the emulator comes from ``port`` (the
        emulator's ``client_of`` hook; asked while the request's connection is open)."""
        assert self.emu.port is not None
        inode = _client_socket_inode(port, self.emu.port)
        if inode is None:
            return None
        return next((p.name for p in self.running if inode in _socket_inodes(p.pid)), None)

    def clients_of(self, inter: EmuInteraction) -> set[str | None]:
        """Which processes made the REST calls answering ``inter`` (its callback, edits and followups)."""
        return {r.client for r in self.emu.requests
                if f"/interactions/{inter.id}/" in r.path or f"/{inter.token}" in r.path}

    async def wait_registered(self, process: BotProcess, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Until ``process`` has registered itself in the database as a running bot process (``db.instances``;
        its start-up recovery of clone jobs follows at once)."""
        db = await self.db()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while process.pid not in {i.pid for i in await db.instances.others("")}:
            if loop.time() > deadline or not process.running:
                raise AssertionError(f"{process.name} did not register within {timeout:.0f} s:\n{process.log()}")
            await asyncio.sleep(0.05)

    async def db(self) -> Database:
        """The test's own connection owner on the processes' schema (to read what they stored)."""
        if self._db is None:
            self._db = await Database(self.database_url).connect()
        return self._db

    async def close(self) -> None:
        await asyncio.gather(*(self.terminate(p) for p in self.running))
        if self._db is not None:
            await self._db.close()
            self._db = None

    def report(self) -> str:
        return "\n".join(f"===== {p.name} (pid {p.pid}, exit {p.proc.returncode}) =====\n{p.log()}"
                         for p in self.processes)


@pytest.fixture
async def cluster(request: pytest.FixtureRequest, tmp_path: Path, discord_emulator: DiscordEmulator,
                  fake_nanogpt: FakeNanoGPT, postgres_server: PostgresServer) -> AsyncIterator[Cluster]:
    """See the module docstring. No process runs yet: ``await cluster.start()``."""
    marker = request.node.get_closest_marker("env")
    env = {k: str(v) for k, v in (marker.kwargs if marker else {}).items()}
    discord_emulator.shard_count = SHARD_COUNT
    # Every shard in its own IDENTIFY bucket (as for large bots), so the processes need not start 5 s apart.
    discord_emulator.max_concurrency = SHARD_COUNT
    async with fresh_schema(postgres_server) as url:
        c = Cluster(discord_emulator, fake_nanogpt, tmp_path, url, env)
        c.add_guilds()
        discord_emulator.client_of = c.client_of
        try:
            yield c
        finally:
            await c.close()
            discord_emulator.client_of = None
            print(c.report())  # pytest shows it when the test failed
    if not request.node.get_closest_marker("allow_unexpected_errors"):
        errors = [f"{p.name}: {line}" for p in c.processes for line in p.unexpected_errors()]
        assert not errors, "a bot process logged unexpected errors:\n" + "\n".join(errors)
