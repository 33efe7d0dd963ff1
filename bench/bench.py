"""nanovoice benchmark: the real bot against the local Discord emulator and the fake NanoGPT.

    .venv/bin/python -m bench.bench [--quick] [--only NAME[,NAME…]] [--json PATH]
    .venv/bin/python -m bench.bench [--processes N] [--guilds G] [--database-url URL]
    .venv/bin/python -m bench.bench --compare [--guilds G]

The bot runs as its own process, exactly as operators start it (``python -m bot run``), pointed at the
emulator and the fake NanoGPT, which run in this process together with the driver. So the bot's CPU
time (``utime + stime`` of its process and its reaped children, from ``/proc/PID/stat``) and its
resident memory (``VmRSS`` from ``/proc/PID/status``) are the bot's own; the fakes' and the driver's
share is reported separately (``driver_cpu_s``). Wall times come from ``time.perf_counter`` stamped
inside the emulator: when it dispatches ``INTERACTION_CREATE`` and when the reply becomes final.

Scenarios (``--only`` picks some; every bot start also yields the start-up and memory figures):

* ``say1``, ``say64``: ``/say`` overhead — injected interaction → final reply at the emulator, minus the
  fake's TTS latency, median and p99: at concurrency 1 (one request after another, TTS 0), and at
  concurrency 64 (64 members each sending their next ``/say`` as soon as the last one is answered, so
  64 are always in flight; the fake answering TTS in 500 ms);
* ``burst64``: 64 ``/say`` injected at the same instant (TTS 0), four times: how long the last one waits
  (informational; it is 64 × the bot's CPU per ``/say``);
* ``throughput``: 200 ``/say`` from 200 users at once, the fake answering TTS in 500 ms;
* ``saturation``: 128 members, each sending its next ``/say`` as soon as the last is answered (the fake
  answering TTS in 100 ms) for 2 s of warm-up and 10 s counted: replies per second, and CPU per ``/say``
  of the bot processes (sum) and of the PostgreSQL server (its postmaster and children, from ``/proc``);
* ``cache``: the same ``/say`` again and again: NanoGPT calls and latency;
* ``voice_message``: ``/say voice_message:true`` → the voice message in the channel (informational);
* ``poller``: 1,000 open MiniMax clone jobs seeded in the database, the fake answering ``processing`` with
  ``X-Poll-After: 5`` for 20 s; status requests vs the minimum the headers allow, completion-notice lag;
* ``intake``: clone-audio normalisation times and event-loop lag (``bench/bench_audio.py``);
* ``startup``: only start the bot (start-up to ready, idle memory).

``--guilds G`` puts G guilds in the emulator (spread evenly over the shards) and every scenario's members
round-robin over them. ``--processes N`` runs N bot processes with ``SHARD_COUNT=N``, process i
``SHARD_IDS=i``, all on one PostgreSQL database: ``--database-url``'s, or a throwaway PostgreSQL 15 server
started for the run (``bench/postgres_server.py``) and stopped at the end. ``--compare`` runs SQLite ×1,
PostgreSQL ×1 and PostgreSQL ×2 one after the other, each on fresh fakes and a fresh database (a new schema on
the one server), by default with 64 guilds and the scenarios say64, burst64 and saturation, and prints them
side by side (the JSON has every configuration's figures and the comparison).

Prints a table (figure, target, PASS/FAIL) and writes everything to ``--json`` (default
``bench/results.json``). ``--quick`` shrinks every count for a smoke run (< 60 s). The fake's latencies are
options (``--tts-latency``, ``--throughput-latency``, ``--poll-after``, ``--complete-after``);
``--keep-logs DIR`` keeps the bot's logs, ``--profile-bot py-spy|cprofile`` profiles it (figures taken
under a profiler are slower). Exit code 0 when the benchmark ran (whatever the verdicts), 2 when it could
not run. What each figure means: ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import math
import os
import platform
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from aiohttp import web

# ``python bench/bench.py`` puts bench/ first on sys.path; the project root must come before it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import bench_audio
from bench.postgres_server import ServerCPU, ThrowawayPostgres, find_postmaster, fresh_schema
from bot.cloning import make_custom_voice_id
from bot.storage import Database
from tests.fakes.discord import DiscordEmulator
from tests.fakes.nanogpt import MINIMAX_CLONE_COST, CloneRun, FakeNanoGPT, Step, make_tone
from tests.fixtures_bot import World

log = logging.getLogger("bench")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / "bench" / "results.json"
SCENARIOS = ("startup", "say1", "say64", "burst64", "throughput", "saturation", "cache", "voice_message", "poller",
             "intake")
BOT_SCENARIOS = ("startup", "say1", "say64", "burst64", "throughput", "saturation", "cache", "voice_message")
#: What ``--compare`` runs in each configuration (unless ``--only`` says otherwise).
COMPARE_SCENARIOS = ("say64", "burst64", "saturation")

# The targets of issue #6.
SAY64_MEDIAN_MS = 15.0
SAY64_P99_MS = 60.0
THROUGHPUT_FACTOR = 2.0  # every reply within 2 × the fake's latency
CACHE_MEDIAN_MS = 10.0
POLL_RATIO_MAX = 1.10  # status requests ≤ 110 % of the minimum X-Poll-After allows
NOTICE_LAG_S = 1.0
LOOP_LAG_MS = 20.0
RSS_MB = 150.0

BOT_ENV = {
    "SAY_COOLDOWN_SECONDS": "0",
    "GUILD_DAILY_BUDGET_USD": "0",  # unlimited: budgets must not interfere
    "CLONE_DAILY_LIMIT": "3",
    "LOG_LEVEL": "INFO",  # the production default
}


@dataclass(frozen=True)
class Sizes:
    tts_latency: float  # the fake's TTS latency in say1 and burst64 (subtracted from the figures)
    say1: int
    say64_each: int  # /say per member at concurrency 64 (the first of each is a warm-up, not counted)
    say64_latency: float  # the fake's TTS latency at concurrency 64 (subtracted)
    burst64_rounds: int
    concurrency: int
    throughput: int
    throughput_latency: float
    saturation_members: int  # members each sending their next /say as soon as the last is answered
    saturation_warmup: float  # seconds before the counting window
    saturation_seconds: float  # the counting window
    saturation_latency: float  # the fake's TTS latency meanwhile
    cache: int
    voice_message: int
    poll_jobs: int
    poll_seconds: float
    poll_after: float
    intake_runs: int


FULL = Sizes(tts_latency=0.0, say1=100, say64_each=9, say64_latency=0.5, burst64_rounds=4, concurrency=64,
             throughput=200, throughput_latency=0.5,
             saturation_members=128, saturation_warmup=2.0, saturation_seconds=10.0, saturation_latency=0.1,
             cache=100, voice_message=20, poll_jobs=1000, poll_seconds=20.0, poll_after=5.0, intake_runs=3)
QUICK = Sizes(tts_latency=0.0, say1=5, say64_each=2, say64_latency=0.5, burst64_rounds=1, concurrency=64,
              throughput=50, throughput_latency=0.5,
              saturation_members=32, saturation_warmup=0.5, saturation_seconds=2.0, saturation_latency=0.1,
              cache=10, voice_message=3, poll_jobs=50, poll_seconds=4.0, poll_after=1.0, intake_runs=1)


# -- the fakes, instrumented -------------------------------------------------------------------------


class BenchEmulator(DiscordEmulator):
    """The emulator, stamping when an interaction is dispatched and when its reply becomes final."""

    def __init__(self, **kwargs: Any) -> None:
        self.injected_at: dict[str, float] = {}  # interaction token → perf_counter at dispatch
        self.final_at: dict[str, float] = {}  # token → perf_counter when the original stopped "thinking…"
        self.identified_at: list[float] = []
        self.message_at: dict[int, tuple[float, float]] = {}  # message id → (perf_counter, time.time)
        self.mention_notice_at: dict[int, float] = {}  # user id → time.time of the first bot message pinging them
        self._pending: set[str] = set()
        self._original_of: dict[int, str] = {}  # id of a message made for a pending interaction → its token
        self._dirty: set[int] = set()  # such messages created or edited since the last state change
        super().__init__(**kwargs)

    async def _inject(self, payload: dict[str, Any], user: Any, source_message: Any = None) -> Any:
        token = payload["token"]
        self._pending.add(token)
        self.injected_at[token] = time.perf_counter()
        return await super()._inject(payload, user, source_message)

    def _notify(self) -> None:
        # Only the interactions whose messages changed: scanning every pending one on every state change
        # cost the driver more CPU than the bot's own /say handling with 128 in flight.
        if self._dirty:
            now = time.perf_counter()
            for mid in self._dirty:
                token = self._original_of.get(mid)
                if token is None or token not in self._pending:
                    continue
                msg = self.original_response(token)
                if msg is not None and not msg.loading:
                    self.final_at[token] = now
                    self._pending.discard(token)
            self._dirty.clear()
        super()._notify()

    async def _edit_message(self, msg: Any, payload: dict[str, Any], files: dict[int, Any]) -> None:
        await super()._edit_message(msg, payload, files)
        if msg.id in self._original_of:
            self._dirty.add(msg.id)

    async def _identify(self, ws: Any, request: Any, d: dict[str, Any]) -> Any:
        self.identified_at.append(time.perf_counter())
        return await super()._identify(ws, request, d)

    def _new_message(self, channel_id: int, author: Any, **kwargs: Any) -> Any:
        msg = super()._new_message(channel_id, author, **kwargs)
        self.message_at[msg.id] = (time.perf_counter(), time.time())
        inter = kwargs.get("interaction")
        if inter is not None and inter.token in self._pending:
            self._original_of[msg.id] = inter.token
            self._dirty.add(msg.id)
        content = msg.content or ""
        if author.id == self.bot_user.id and content.startswith("<@") and ">" in content:
            with contextlib.suppress(ValueError):
                self.mention_notice_at.setdefault(int(content[2:content.index(">")].lstrip("!")), time.time())
        return msg


class BenchNanoGPT(FakeNanoGPT):
    """The fake NanoGPT on the wall clock (comparable with the bot's process), timing its /tts work."""

    def __init__(self) -> None:
        super().__init__(clock=time.time)
        self.tts_server_s: list[float] = []  # request received → response ready, per POST /tts
        self.tts_spans: list[tuple[float, float]] = []  # (received, answered) perf_counter, per POST /tts

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            return await super()._middleware(request, handler)
        finally:
            if request.method == "POST" and request.path.endswith("/api/tts"):
                ended = time.perf_counter()
                self.tts_server_s.append(ended - started)
                self.tts_spans.append((started, ended))

    def max_tts_in_flight(self, since: int = 0) -> int:
        """The most /tts requests the fake was handling at once (from ``tts_spans[since:]``)."""
        events = sorted([(a, 1) for a, _ in self.tts_spans[since:]] + [(b, -1) for _, b in self.tts_spans[since:]])
        current = peak = 0
        for _, step in events:
            current += step
            peak = max(peak, current)
        return peak

    def tts_count(self) -> int:
        return sum(1 for r in self.requests if r.method == "POST" and r.path == "/tts")


# -- the bot as a process --------------------------------------------------------------------------


_CLK_TCK = os.sysconf("SC_CLK_TCK")
_LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # discord.py colours its log inside Docker even on a pipe


def process_cpu_s(pid: int) -> float:
    """utime + stime of the process (all its threads) and of its reaped children (ffmpeg), seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return (utime + stime + cutime + cstime) / _CLK_TCK


def machine_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores, from ``/proc/stat``."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    idle = values[3] + values[4]
    total = sum(values)
    return (total - idle) / _CLK_TCK, total / _CLK_TCK


def process_memory_mb(pid: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = round(int(value.split()[0]) / 1024, 1)
    return {"rss_mb": out.get("VmRSS", float("nan")), "peak_rss_mb": out.get("VmHWM", float("nan"))}


class BotProcess:
    """``python -m bot run`` against the fakes, its log read line by line (stamped)."""

    READY_LINE = "logged in as"

    def __init__(self, world: World, log_path: Path, profile: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.profile = profile
        self.env = env or {}
        self.world = world
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.profiler: asyncio.subprocess.Process | None = None
        self.lines: list[tuple[float, str]] = []
        self.ready_at: float | None = None
        self._ready = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, timeout: float = 60.0) -> dict[str, float]:  # noqa: ASYNC109
        emu = self.world.emu
        identified = len(emu.identified_at)  # type: ignore[attr-defined]
        spawned = time.perf_counter()
        command = [sys.executable, "-m", "bot", "run"]
        if self.profile == "cprofile":
            command[1:1] = ["-m", "cProfile", "-o", f"{self.log_path.with_suffix('')}.cprofile"]
        self.proc = await asyncio.create_subprocess_exec(
            *command, cwd=str(self.world.tmp_path), env=self.world.process_env(**self.env),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        self._reader = asyncio.create_task(self._read())
        waiter = asyncio.create_task(self._ready.wait())
        exited = asyncio.create_task(self.proc.wait())
        done, _ = await asyncio.wait({waiter, exited}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        exited.cancel()
        if waiter not in done:
            await self.stop()
            tail = "\n".join(text for _, text in self.lines[-30:])
            raise RuntimeError(f"the bot did not become ready within {timeout} s:\n{tail}")
        assert self.ready_at is not None
        if self.profile == "py-spy":  # attach after start-up, so the profile shows the steady state
            py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            self.profiler = await asyncio.create_subprocess_exec(
                py_spy, "record", "--pid", str(self.pid), "--gil", "-r", "250", "-f", "raw",
                "-o", f"{self.log_path.with_suffix('')}.pyspy.txt", stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL)
            await asyncio.sleep(0.5)
        stamps = emu.identified_at[identified:]  # type: ignore[attr-defined]
        return {
            "to_identify_s": round(stamps[0] - spawned, 3) if stamps else float("nan"),
            "to_ready_s": round(self.ready_at - spawned, 3),
        }

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with self.log_path.open("a", encoding="utf-8") as out:
            async for raw in self.proc.stdout:
                text = _ANSI.sub("", raw.decode("utf-8", "replace").rstrip("\n"))
                now = time.perf_counter()
                self.lines.append((now, text))
                out.write(text + "\n")
                if self.ready_at is None and self.READY_LINE in text:
                    self.ready_at = now
                    self._ready.set()

    def cpu_s(self) -> float:
        return process_cpu_s(self.pid)

    def memory(self) -> dict[str, float]:
        return process_memory_mb(self.pid)

    def problems(self) -> list[str]:
        """Every ERROR record of the bot's log with its traceback, one string each."""
        out: list[str] = []
        current: list[str] | None = None
        for _, text in self.lines:
            is_record = bool(_LOG_RECORD.match(text))
            if is_record:
                if current:
                    out.append("\n".join(current))
                current = [text] if " ERROR " in text or " CRITICAL " in text else None
            elif current is not None:
                current.append(text)
        if current:
            out.append("\n".join(current))
        return out

    async def stop(self) -> None:
        if self.profiler is not None and self.profiler.returncode is None:
            self.profiler.send_signal(signal.SIGINT)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.profiler.wait(), 15)
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._reader, 5)


class BotFleet:
    """The bot processes of one configuration, started and stopped together: one plain process, or N
    processes on one PostgreSQL database with ``SHARD_COUNT=N`` and ``SHARD_IDS=i`` each. CPU time and
    memory are the sums over the processes."""

    def __init__(self, processes: list[BotProcess]) -> None:
        self.processes = processes

    async def start(self) -> dict[str, float]:
        timings = await asyncio.gather(*(p.start() for p in self.processes))
        # the configuration is ready when its slowest process is
        return {key: max(t[key] for t in timings) for key in ("to_identify_s", "to_ready_s")}

    async def stop(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.processes))

    def cpu_s(self) -> float:
        return sum(p.cpu_s() for p in self.processes)

    def memory(self) -> dict[str, Any]:
        each = [p.memory() for p in self.processes]
        return {"rss_mb": round(sum(m["rss_mb"] for m in each), 1),
                "peak_rss_mb": round(sum(m["peak_rss_mb"] for m in each), 1),
                **({"per_process_rss_mb": [m["rss_mb"] for m in each]} if len(each) > 1 else {})}

    def problems(self) -> list[str]:
        if len(self.processes) == 1:
            return self.processes[0].problems()
        return [f"process {i}: {line}" for i, p in enumerate(self.processes) for line in p.problems()]


# -- results ---------------------------------------------------------------------------------------


@dataclass
class Figure:
    scenario: str
    name: str
    value: float | None
    unit: str
    target: str = ""
    passed: bool | None = None  # None: informational (no target) or not measured
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "n/m"
        if self.passed is None:
            return "info"
        return "PASS" if self.passed else "FAIL"


@dataclass
class Results:
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    not_measured: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def add(self, scenario: str, name: str, value: float | None, unit: str, *, target: str = "",
            passed: bool | None = None, note: str = "") -> None:
        if isinstance(value, float) and math.isnan(value):
            value = None
        self.figures.append(Figure(scenario, name, None if value is None else round(value, 3), unit, target,
                                   passed if value is not None else None, note))


def percentile(values: Iterable[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def summary_ms(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {"n": 0}
    ms = [s * 1000 for s in seconds]
    return {"n": len(ms), "median_ms": round(statistics.median(ms), 2), "p90_ms": round(percentile(ms, 90), 2),
            "p99_ms": round(percentile(ms, 99), 2), "min_ms": round(min(ms), 2), "max_ms": round(max(ms), 2)}


# -- the driver ------------------------------------------------------------------------------------


def guild_id_on(emu: DiscordEmulator, shard: int, count: int) -> int:
    """A fresh guild id whose events Discord sends to ``shard`` of ``count`` (as in tests/wire/test_shards.py)."""
    flake = emu.snowflake()
    ms = flake >> 22
    ms += (shard - ms % count) % count
    return (ms << 22) | (flake & ((1 << 22) - 1))


class Bench:
    """One configuration: the fakes, ``guilds`` guilds (spread evenly over the shards), and ``processes``
    bot processes (more than one: ``SHARD_COUNT=processes``, process i ``SHARD_IDS=i``, on PostgreSQL)."""

    def __init__(self, sizes: Sizes, selected: set[str], tmp: Path, profile: str | None = None,
                 database_url: str | None = None, processes: int = 1, guilds: int = 1) -> None:
        if processes > 1 and not database_url:
            raise ValueError("several bot processes need a PostgreSQL database (DATABASE_URL)")
        self.profile = profile
        self.database_url = database_url
        self.processes = processes
        self.guilds = guilds
        self.sizes = sizes
        self.selected = selected
        self.tmp = tmp
        self.results = Results()
        self.emu = BenchEmulator()
        self.nano = BenchNanoGPT()
        self.world: World | None = None
        self.bot: BotFleet | None = None
        self.postgres: ServerCPU | None = None  # the PostgreSQL server's CPU, when it runs on this machine
        self.guild_channels: list[tuple[int, int]] = []  # (guild id, its text channel), the default guild first
        self._channel_of: dict[int, int] = {}  # member id → the channel of the guild it was made in
        self._members = 0
        self._starts = 0
        self._texts = 0
        self.delivered: dict[str, int] = {}  # shard → interactions its connection got ("all": unsharded)

    # -- plumbing ----------------------------------------------------------------------------

    async def open(self) -> None:
        await self.emu.start()
        await self.nano.start()
        self.nano.balance_usd = Decimal(1_000_000)
        self.nano.record_bodies = False
        env = dict(BOT_ENV)
        if self.database_url:  # the bot on PostgreSQL (DATABASE_PATH emptied: both set are refused)
            env |= {"DATABASE_URL": self.database_url, "DATABASE_PATH": ""}
            postmaster = await find_postmaster(self.database_url)
            self.postgres = ServerCPU(postmaster) if postmaster is not None else None
        if self.processes > 1:
            env["SHARD_COUNT"] = str(self.processes)
            self.emu.shard_count = self.processes
        self.world = World(emu=self.emu, nano=self.nano, tmp_path=self.tmp, env=env)
        self._add_guilds()

    def _add_guilds(self) -> None:
        """The default guild and ``guilds - 1`` more, before the bot connects (they come in GUILD_CREATE);
        with several processes each shard gets every n-th one, so the processes share the guilds evenly."""
        emu, n = self.emu, self.processes
        first = emu.guild_id
        self.guild_channels = [(first, emu.channel_id)]
        start = emu.shard_of(first, n)
        for i in range(1, self.guilds):
            gid = guild_id_on(emu, (start + i) % n, n) if n > 1 else None
            guild = emu.add_guild(gid, f"Bench Guild {i}")
            self.guild_channels.append((guild.id, next(iter(guild.channels))))

    async def close(self) -> None:
        await self.stop_bot()
        self.results.problems += [f"emulator: {e}" for e in self.emu.internal_errors]
        self.results.problems += [f"emulator: unknown route {r.method} {r.path}" for r in self.emu.unknown_routes]
        self.results.problems += [f"fake NanoGPT: {v}" for v in self.nano.schema_violations]
        await self.nano.close()
        await self.emu.close()

    async def start_bot(self, label: str) -> dict[str, float]:
        assert self.world is not None
        self._starts += 1
        if self.processes == 1:
            procs = [BotProcess(self.world, self.tmp / f"bot-{self._starts}.log", profile=self.profile)]
        else:
            procs = [BotProcess(self.world, self.tmp / f"bot-{self._starts}-shard{i}.log", profile=self.profile,
                                env={"SHARD_IDS": str(i)}) for i in range(self.processes)]
        self.bot = BotFleet(procs)
        timings = await self.bot.start()
        self.results.details.setdefault("startup", {})[label] = timings
        return timings

    async def stop_bot(self) -> None:
        if self.bot is not None:
            bot, self.bot = self.bot, None
            await bot.stop()
            self.results.problems += [f"bot: {line}" for line in bot.problems()]

    def text(self, what: str) -> str:
        self._texts += 1
        return f"Benchmark line {self._texts} {what} {uuid.uuid4().hex[:8]}, spoken once and never cached."

    async def say_batch(self, requests: list[tuple[Any, dict[str, Any]]], timeout: float = 60.0  # noqa: ASYNC109
                        ) -> tuple[list[float], int]:
        """Inject all ``/say`` at once; returns (latencies of the replies that arrived, failures)."""
        inters = await asyncio.gather(*(self.emu.slash(user, "say", options=opts,
                                                       channel_id=self._channel_of.get(user.id))
                                        for user, opts in requests))
        for inter in inters:
            self._count_delivery(inter)
        tokens = [i.token for i in inters]
        final = self.emu.final_at
        with contextlib.suppress(TimeoutError):
            await self.emu.wait_until(lambda: all(t in final for t in tokens), timeout, "the /say replies")
        latencies, failures = [], 0
        for inter in inters:
            if inter.token not in final:
                failures += 1
                continue
            msg = inter.original
            if msg is None or not msg.attachments:  # an error message, not speech
                failures += 1
                continue
            latencies.append(final[inter.token] - self.emu.injected_at[inter.token])
        return latencies, failures

    def _count_delivery(self, inter: Any) -> None:
        """Which shard's connection got the interaction ("all": an unsharded one)."""
        for shard in inter.delivered_to or [None]:
            key = "all" if shard is None else str(shard[0])
            self.delivered[key] = self.delivered.get(key, 0) + 1

    def users(self, n: int, prefix: str) -> list[Any]:
        """``n`` new members, spread round-robin over the guilds (all in the default guild with one)."""
        out = []
        for i in range(n):
            gid, cid = self.guild_channels[self._members % len(self.guild_channels)]
            self._members += 1
            user = self.emu.add_user(name=f"{prefix}{i}", guild_id=gid)
            self._channel_of[user.id] = cid
            out.append(user)
        return out

    def cpu(self) -> dict[str, float | None]:
        """CPU seconds so far: the bot processes (sum), the PostgreSQL server (None: not on this machine
        or SQLite), this process (the fakes and the driver)."""
        assert self.bot is not None
        return {"bot": self.bot.cpu_s(), "postgres": self.postgres.cpu_s() if self.postgres else None,
                "driver": time.process_time()}

    def cpu_per_say(self, before: dict[str, float | None], n: int) -> dict[str, float | None]:
        """Milliseconds of CPU per /say since ``before``, for each of :meth:`cpu`'s parts."""
        now = self.cpu()
        out: dict[str, float | None] = {}
        for key, then in before.items():
            value = now[key]
            out[f"{key}_cpu_ms_per_say"] = (None if then is None or value is None or not n
                                            else round((value - then) * 1000 / n, 3))
        return out

    # -- scenarios ---------------------------------------------------------------------------

    async def run(self) -> Results:
        r = self.results
        bot_work = [s for s in BOT_SCENARIOS if s in self.selected]
        if bot_work:
            timings = await self.start_bot("empty database")
            r.add("startup", "start-up to gateway IDENTIFY", timings["to_identify_s"], "s",
                  note="process spawn → IDENTIFY at the emulator (imports, config, DB, cogs, command sync)")
            r.add("startup", "start-up to ready (on_ready)", timings["to_ready_s"], "s",
                  note="includes discord.py's guild_ready_timeout (2 s after the last GUILD_CREATE)")
            await asyncio.sleep(1.0)
            idle = self.bot.memory()
            r.details["memory_idle"] = idle
            r.add("memory", "resident memory, idle after start", idle["rss_mb"], "MB", target=f"≤ {RSS_MB:.0f} MB",
                  passed=idle["rss_mb"] <= RSS_MB)
            for name in ("say1", "say64", "burst64", "throughput", "saturation", "cache", "voice_message"):
                if name in self.selected:
                    await self._timed(name, getattr(self, f"scenario_{name}"))
            if any(name != "startup" for name in bot_work):
                after = self.bot.memory()
                r.details["memory_after_say"] = after
                r.add("memory", "resident memory after the /say runs", after["rss_mb"], "MB",
                      target=f"≤ {RSS_MB:.0f} MB", passed=after["rss_mb"] <= RSS_MB,
                      note=f"peak (VmHWM) {after['peak_rss_mb']} MB")
            await self.stop_bot()
        if "poller" in self.selected:
            await self._timed("poller", self.scenario_poller)
        if "intake" in self.selected:
            await self._timed("intake", self.scenario_intake)
        return r

    async def _timed(self, name: str, scenario: Callable[[], Any]) -> None:
        cpu, wall = time.process_time(), time.perf_counter()
        try:
            await scenario()
        except Exception as exc:  # one broken scenario must not hide the others' figures
            log.exception("scenario %s failed", name)
            self.results.not_measured[name] = f"the scenario failed: {type(exc).__name__}: {exc}"
        self.results.details.setdefault(name, {}).update(
            {"wall_s": round(time.perf_counter() - wall, 3), "driver_cpu_s": round(time.process_time() - cpu, 3)})

    async def _warm_up(self) -> None:
        user = self.emu.add_user(name="warm-up")
        for _ in range(3):
            await self.say_batch([(user, {"text": self.text("warm-up")})], timeout=30)

    async def scenario_say1(self) -> None:
        await self._warm_up()
        self.nano.tts_latency = self.sizes.tts_latency
        users = self.users(self.sizes.say1, "c1-")
        server_before = len(self.nano.tts_server_s)
        latencies, failures = [], 0
        for user in users:
            got, failed = await self.say_batch([(user, {"text": self.text("at concurrency 1")})], timeout=30)
            latencies += got
            failures += failed
        self._overhead("say1", "concurrency 1", latencies, failures, server_before, self.sizes.tts_latency,
                       targets=False)
        self.nano.tts_latency = 0.0

    async def scenario_say64(self) -> None:
        """64 members, each sending its next /say when the last is answered: 64 always in flight."""
        if "say1" not in self.selected:
            await self._warm_up()
        latency, c = self.sizes.say64_latency, self.sizes.concurrency
        self.nano.tts_latency = latency
        server_before = len(self.nano.tts_server_s)
        latencies: list[float] = []
        failures = 0

        async def member(user: Any) -> None:
            nonlocal failures
            for i in range(self.sizes.say64_each):
                got, failed = await self.say_batch([(user, {"text": self.text(f"at concurrency {c}")})], timeout=30)
                failures += failed
                if i:  # the first round starts all 64 at the same instant: a burst, not the steady state
                    latencies.extend(got)

        cpu0 = self.cpu()
        await asyncio.gather(*(member(u) for u in self.users(c, "c64-")))
        self.results.details.setdefault("say64", {}).update(self.cpu_per_say(cpu0, c * self.sizes.say64_each))
        self._overhead("say64", f"concurrency {c} (fake TTS {latency * 1000:.0f} ms)", latencies, failures,
                       server_before, latency, targets=True)
        self.nano.tts_latency = 0.0

    async def scenario_burst64(self) -> None:
        """64 /say injected at the same instant, a few times."""
        self.nano.tts_latency = self.sizes.tts_latency
        c = self.sizes.concurrency
        server_before = len(self.nano.tts_server_s)
        latencies, failures = [], 0
        cpu0 = self.cpu()
        for rnd in range(self.sizes.burst64_rounds):
            batch = [(u, {"text": self.text(f"in a burst of {c}")}) for u in self.users(c, f"b64-{rnd}-")]
            got, failed = await self.say_batch(batch)
            latencies += got
            failures += failed
            await asyncio.sleep(0.2)
        self.results.details.setdefault("burst64", {}).update(self.cpu_per_say(cpu0, len(latencies)))
        self._overhead("burst64", f"{c} injected at once", latencies, failures, server_before,
                       self.sizes.tts_latency, targets=False)
        self.nano.tts_latency = 0.0

    def _overhead(self, key: str, label: str, latencies: list[float], failures: int, server_before: int,
                  configured: float, *, targets: bool) -> None:
        r = self.results
        overhead = [x - configured for x in latencies]
        stats = summary_ms(overhead)
        server = summary_ms(self.nano.tts_server_s[server_before:])
        r.details.setdefault(key, {}).update(
            {"overhead": stats, "failures": failures, "fake_latency_s": configured, "fake_tts_server_time": server})
        median, p99 = stats.get("median_ms"), stats.get("p99_ms")
        note = f"n={stats['n']}, failures {failures}; fake's own /tts handling median {server.get('median_ms')} ms"
        r.add(key, f"/say overhead median, {label}", median, "ms",
              target=f"≤ {SAY64_MEDIAN_MS:.0f} ms" if targets else "",
              passed=(median <= SAY64_MEDIAN_MS and failures == 0) if targets and median is not None else None,
              note=note)
        r.add(key, f"/say overhead p99, {label}", p99, "ms",
              target=f"≤ {SAY64_P99_MS:.0f} ms" if targets else "",
              passed=(p99 <= SAY64_P99_MS and failures == 0) if targets and p99 is not None else None)

    async def scenario_throughput(self) -> None:
        n, latency = self.sizes.throughput, self.sizes.throughput_latency
        users = self.users(n, "tp-")
        self.nano.tts_latency = latency
        tts_before = self.nano.tts_count()
        spans_before = len(self.nano.tts_spans)
        cpu0, cpu_parts = self.bot.cpu_s(), self.cpu()
        try:
            started = time.perf_counter()
            latencies, failures = await self.say_batch([(u, {"text": self.text("throughput")}) for u in users])
            wall = time.perf_counter() - started
        finally:
            self.nano.tts_latency = 0.0
        await asyncio.sleep(0.3)  # let the bot finish its bookkeeping after the last reply
        per_say = self.cpu_per_say(cpu_parts, n)
        cpu = self.bot.cpu_s() - cpu0
        worst = max(latencies) if latencies else None
        limit = THROUGHPUT_FACTOR * latency
        self.results.details["throughput"] = {
            "requests": n, "fake_latency_s": latency, "latency": summary_ms(latencies), "failures": failures,
            "wall_s": round(wall, 3), "tts_requests": self.nano.tts_count() - tts_before,
            "bot_cpu_s": round(cpu, 3),
            "max_tts_in_flight_at_fake": self.nano.max_tts_in_flight(spans_before),
            "tts_arrival_after_first_injection_ms": summary_ms(
                [a - started for a, _ in self.nano.tts_spans[spans_before:]]),
        } | per_say
        self.results.add("throughput", f"slowest of {n} concurrent /say (fake TTS {latency * 1000:.0f} ms)", worst,
                         "s", target=f"≤ {limit:.1f} s, all answered", passed=(
                             worst is not None and worst <= limit and failures == 0),
                         note=f"median {summary_ms(latencies).get('median_ms')} ms, failures {failures}, at most "
                              f"{self.results.details['throughput']['max_tts_in_flight_at_fake']} TTS calls in flight")
        self.results.add("throughput", "bot CPU time per /say", cpu * 1000 / max(1, n), "ms",
                         note=f"{cpu:.2f} s of bot CPU for {n} requests")

    async def scenario_saturation(self) -> None:
        """Throughput at saturation: many members over the guilds, each sending its next /say as soon as
        the last is answered (the fake answering TTS in 100 ms), for a fixed time; the replies that
        became final inside the counting window (after a warm-up) per second, and CPU per /say there."""
        s = self.sizes
        members = self.users(s.saturation_members, "sat-")
        self.nano.tts_latency = s.saturation_latency
        final = self.emu.final_at
        stop_at = time.perf_counter() + s.saturation_warmup + s.saturation_seconds
        tokens: list[tuple[str, float]] = []  # (token, injected at)
        failures = 0
        failed: list[str] = []  # what the failed ones got

        async def member(user: Any) -> None:
            nonlocal failures
            while time.perf_counter() < stop_at:
                inter = await self.emu.slash(user, "say", options={"text": self.text("at saturation")},
                                             channel_id=self._channel_of.get(user.id))
                tokens.append((inter.token, self.emu.injected_at[inter.token]))
                self._count_delivery(inter)
                try:
                    await self.emu.wait_until(lambda t=inter.token: t in final, 30, "a /say reply")
                except TimeoutError:
                    failures += 1
                    failed.append("no reply within 30 s")
                    continue
                msg = inter.original
                if msg is None or not msg.attachments:
                    failures += 1
                    failed.append("deleted" if msg is None else f"reply without speech: {msg.content[:200]!r}")

        try:
            runners = asyncio.gather(*(member(u) for u in members))
            await asyncio.sleep(s.saturation_warmup)
            window_start, cpu0, machine0 = time.perf_counter(), self.cpu(), machine_cpu_s()
            await asyncio.sleep(s.saturation_seconds)
            window_end, machine1 = time.perf_counter(), machine_cpu_s()
            in_window = sum(1 for t, _ in tokens if t in final and window_start <= final[t] < window_end)
            per_say = self.cpu_per_say(cpu0, in_window)
            await runners
        finally:
            self.nano.tts_latency = 0.0
        rate = in_window / (window_end - window_start)
        ours = sum(v for v in per_say.values() if v is not None) * rate / 1000  # bot + PostgreSQL + this process
        busy = (machine1[0] - machine0[0]) / (window_end - window_start)
        latencies = [final[t] - at for t, at in tokens if t in final and window_start <= final[t] < window_end]
        stats = summary_ms(latencies)
        self.results.details.setdefault("saturation", {}).update({
            "members": len(members), "guilds": len(self.guild_channels), "fake_latency_s": s.saturation_latency,
            "window_s": round(window_end - window_start, 3), "replies_in_window": in_window,
            "requests_per_s": round(rate, 1), "latency_in_window": stats, "failures": failures,
            "failed_samples": failed[:5],
            "requests": len(tokens),
            # how busy the whole machine was in the window (cores' worth; everything on it, not only the bench)
            "machine_busy_cores": round(busy, 2),
            "machine_busy_share": round((machine1[0] - machine0[0]) / max(1e-9, machine1[1] - machine0[1]), 3),
            "bench_cores": round(ours, 2), "other_cores": round(busy - ours, 2),  # other_cores: the rest of the machine
        } | per_say)
        self.results.add("saturation", f"/say throughput, {len(members)} members in {len(self.guild_channels)} "
                         f"guild(s) (fake TTS {s.saturation_latency * 1000:.0f} ms)", rate, "req/s",
                         note=f"{in_window} replies in {window_end - window_start:.1f} s, median latency "
                              f"{stats.get('median_ms')} ms, failures {failures}")
        for key, what in (("bot", "bot"), ("postgres", "PostgreSQL")):
            value = per_say[f"{key}_cpu_ms_per_say"]
            if key == "bot" or value is not None:
                self.results.add("saturation", f"{what} CPU time per /say at saturation", value, "ms",
                                 note="sum over the bot processes" if key == "bot"
                                 else "the server's processes (postmaster and its children)")

    async def scenario_cache(self) -> None:
        user = self.emu.add_user(name="cache")
        text = "The same cached sentence, every single time."
        await self.say_batch([(user, {"text": text})], timeout=30)  # fills the cache
        tts_before = self.nano.tts_count()
        latencies, failures = [], 0
        for _ in range(self.sizes.cache):
            got, failed = await self.say_batch([(user, {"text": text})], timeout=30)
            latencies += got
            failures += failed
        calls = self.nano.tts_count() - tts_before
        stats = summary_ms(latencies)
        self.results.details["cache"] = {"latency": stats, "failures": failures, "nanogpt_tts_calls": calls}
        median = stats.get("median_ms")
        self.results.add("cache", "NanoGPT calls for repeated /say", calls, "calls", target="0", passed=calls == 0,
                         note=f"{self.sizes.cache} repeats")
        self.results.add("cache", "cache-hit /say median", median, "ms", target=f"≤ {CACHE_MEDIAN_MS:.0f} ms",
                         passed=median is not None and median <= CACHE_MEDIAN_MS and failures == 0,
                         note=f"p99 {stats.get('p99_ms')} ms, n={stats['n']}")

    async def scenario_voice_message(self) -> None:
        emu = self.emu
        latencies: list[float] = []
        for user in self.users(self.sizes.voice_message, "vm-"):
            before = set(emu.messages)
            inter = await emu.slash(user, "say", options={"text": self.text("as a voice message"),
                                                          "voice_message": True})

            def posted(before: set[int] = before) -> int | None:
                for mid, msg in list(emu.messages.items()):
                    if mid not in before and msg.is_voice_message:
                        return mid
                return None

            with contextlib.suppress(TimeoutError):
                await emu.wait_until(lambda posted=posted: posted() is not None, 30, "the voice message")
            mid = posted()
            if mid is not None:
                latencies.append(emu.message_at[mid][0] - emu.injected_at[inter.token])
            # the bot then deletes its "thinking…" reply: let it finish before the next one (or the stop)
            with contextlib.suppress(TimeoutError):
                await inter.wait_until(lambda it: it.original is None or it.original.deleted, 10)
        stats = summary_ms(latencies)
        self.results.details["voice_message"] = {"latency": stats, "requested": self.sizes.voice_message}
        self.results.add("voice_message", "/say voice_message → voice message posted, median",
                         stats.get("median_ms"), "ms",
                         note=f"p99 {stats.get('p99_ms')} ms, n={stats['n']}; includes the OGG/Opus encode (ffmpeg)")

    async def scenario_poller(self) -> None:
        s, emu, nano, r = self.sizes, self.emu, self.nano, self.results
        assert self.world is not None
        await self.stop_bot()
        jobs = await self._seed_jobs(s.poll_jobs, s.poll_after)
        by_run = {run_id: uid for _, run_id, uid in jobs}
        timings = await self.start_bot(f"{s.poll_jobs} open clone jobs")
        r.add("poller", f"start-up to ready with {s.poll_jobs} open jobs", timings["to_ready_s"], "s")
        ready_wall = time.time()
        ready_at = ready_wall + s.poll_seconds
        for run_id in by_run:
            run = nano.runs[run_id]
            run.ready_at, run.poll_after = ready_at, s.poll_after
        cpu0 = self.bot.cpu_s()
        # Pure polling until just before the first completion: CPU per status request.
        await asyncio.sleep(max(0.0, ready_at - 0.25 - time.time()))
        cpu1, window_end = self.bot.cpu_s(), time.time()
        polls_in_window = sum(1 for run_id in by_run for t in nano.status_polls.get(run_id, ()) if t <= window_end)
        uids = set(by_run.values())
        with contextlib.suppress(TimeoutError):
            await emu.wait_until(lambda: uids <= emu.mention_notice_at.keys(), s.poll_seconds + 60,
                                 "every completion notice")
        await asyncio.sleep(0.5)
        cpu2 = self.bot.cpu_s()
        memory = self.bot.memory()

        actual = minimum = 0
        lags, detection, notice_lags, missing = [], [], [], 0
        # how much later than X-Poll-After allowed each poll came, while only polling / for the completing poll
        lateness: list[float] = []
        lateness_completing: list[float] = []
        first_polls = []  # first poll of each job after ready
        per_job_excess = 0
        for run_id, uid in by_run.items():
            run = nano.runs[run_id]
            polls = sorted(nano.status_polls.get(run_id, ()))
            actual += len(polls)
            for a, b in itertools.pairwise(polls):
                (lateness if b < ready_at else lateness_completing).append(b - a - s.poll_after)
            if polls:
                first = polls[0]
                first_polls.append(first - ready_wall)
                needed = 1 + max(0, math.ceil((run.ready_at - first) / s.poll_after - 1e-9))
                minimum += needed
                per_job_excess = max(per_job_excess, len(polls) - needed)
            notice = emu.mention_notice_at.get(uid)
            if run.first_completed_poll is None or notice is None:
                missing += 1
                continue
            lags.append(notice - run.first_completed_poll)
            detection.append(run.first_completed_poll - run.ready_at)
            # visible: the first moment the headers allowed a status request that would say "completed"
            before = [t for t in polls if t < run.first_completed_poll]
            visible = max(run.ready_at, before[-1] + s.poll_after) if before else run.ready_at
            notice_lags.append(notice - visible)
        ratio = actual / minimum if minimum else float("nan")
        lag_stats = summary_ms(lags)
        det_stats = summary_ms(detection)
        cpu_per_poll = (cpu1 - cpu0) / polls_in_window if polls_in_window else float("nan")
        r.details["poller"] = {
            "jobs": s.poll_jobs, "complete_after_s": s.poll_seconds, "x_poll_after_s": s.poll_after,
            "status_requests": actual, "minimum_status_requests": minimum, "ratio": round(ratio, 4),
            "max_extra_polls_one_job": per_job_excess,
            "notice_lag_after_completed_answer": lag_stats, "detection_after_ready": det_stats,
            "poll_lateness_vs_header": summary_ms(lateness),
            "completing_poll_lateness_vs_header": summary_ms(lateness_completing),
            "first_poll_after_ready": summary_ms(first_polls),
            "missing_notices": missing, "bot_cpu_polling_window_s": round(cpu1 - cpu0, 3),
            "status_requests_in_window": polls_in_window, "bot_cpu_total_s": round(cpu2 - cpu0, 3),
            "tts_sample_calls": nano.tts_count(), "memory_after": memory,
        }
        r.add("poller", f"status requests / minimum allowed ({s.poll_jobs} jobs)", ratio, "×",
              target=f"≤ {POLL_RATIO_MAX:.2f}", passed=minimum > 0 and ratio <= POLL_RATIO_MAX,
              note=f"{actual} requests, minimum {minimum}")
        notice_stats = summary_ms(notice_lags)
        worst = max(notice_lags) if notice_lags else None
        r.details["poller"]["notice_lag_after_visible"] = notice_stats
        r.add("poller", "completion visible → notice at Discord, worst", worst, "s",
              target=f"≤ {NOTICE_LAG_S:.0f} s, none missing",
              passed=worst is not None and worst <= NOTICE_LAG_S and missing == 0,
              note=f"visible = completed at the fake and a poll allowed by X-Poll-After; median "
                   f"{notice_stats.get('median_ms')} ms, missing {missing}")
        r.add("poller", "'completed' answer → notice at Discord, worst", max(lags) if lags else None, "s",
              note=f"median {lag_stats.get('median_ms')} ms")
        r.add("poller", "completion visible → first 'completed' answer, worst", max(detection) if detection else None,
              "s", note=f"bounded by X-Poll-After {s.poll_after:g} s; median {det_stats.get('median_ms')} ms")
        late, late_c = summary_ms(lateness), summary_ms(lateness_completing)
        r.add("poller", "poll later than X-Poll-After allows, p99 (polling only)", late.get("p99_ms"), "ms",
              note=f"median {late.get('median_ms')} ms, max {late.get('max_ms')} ms; first polls of all jobs "
                   f"within {summary_ms(first_polls).get('max_ms')} ms of ready")
        r.add("poller", "completing poll later than X-Poll-After allows, p99", late_c.get("p99_ms"), "ms",
              note=f"median {late_c.get('median_ms')} ms, max {late_c.get('max_ms')} ms: the completion burst "
                   f"(sample TTS + notice) shares the poller's slots")
        r.add("poller", "bot CPU time per status request", cpu_per_poll * 1000, "ms",
              note=f"{polls_in_window} requests before the first completion")
        r.add("poller", "bot CPU time per completed job (notice, sample)",
              ((cpu2 - cpu1) * 1000 / max(1, len(lags))), "ms", note="the completion, its speech sample and notice")
        r.add("memory", "resident memory after the poller run", memory["rss_mb"], "MB", target=f"≤ {RSS_MB:.0f} MB",
              passed=memory["rss_mb"] <= RSS_MB, note=f"peak (VmHWM) {memory['peak_rss_mb']} MB")
        await self.stop_bot()

    async def _seed_jobs(self, n: int, poll_after: float) -> list[tuple[int, str, int]]:
        """``n`` submitted MiniMax clone jobs: the fake's runs, and 'pending' rows due now."""
        assert self.world is not None
        emu, nano = self.emu, self.nano
        db = await Database(self.database_url or self.world.database_path).connect()
        now = time.time()
        preview = make_tone(1.0, "mp3")
        jobs = []
        try:
            for i in range(n):
                user = emu.add_user(name=f"poll-{i}")
                job_id, custom_voice_id = await db.jobs.create(
                    user_id=user.id, guild_id=emu.guild_id, channel_id=emu.channel_id, application_id=None,
                    interaction_token=None, token_expires_at=None, voice_name=f"Bench voice {i}",
                    provider="minimax", transcript=None, clone_model=None, now=now,
                    make_custom_voice_id=make_custom_voice_id,
                )
                run_id = nano._new_run_id("minimax")
                nano.runs[run_id] = CloneRun(
                    run_id, "minimax", now, MINIMAX_CLONE_COST, "USD",
                    {"customVoiceId": custom_voice_id, "name": f"Bench voice {i}"}, custom_voice_id,
                    steps=[Step("processing", poll_after=poll_after)],
                    preview_url=nano.put_storage(f"previews/{run_id}.mp3", preview, "audio/mpeg"),
                )
                await db.jobs.update(job_id, run_id=run_id, cost_micros=1_000_000, payment_source="USD",
                                     is_api_request=1, state="pending", submitted_at=now, next_poll_at=now)
                jobs.append((job_id, run_id, user.id))
        finally:
            await db.close()
        self.results.details.setdefault("poller", {})["seed_s"] = round(time.time() - now, 2)
        return jobs

    async def scenario_intake(self) -> None:
        # bench_audio in a fresh process: this one holds the fakes' whole history, and a garbage
        # collection of it would show up as event-loop lag that the bot would never have.
        out = self.tmp / "intake.json"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(Path(bench_audio.__file__)), "--runs", str(self.sizes.intake_runs), "--json",
            str(out), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=str(ROOT))
        output, _ = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"bench/bench_audio.py failed: {output.decode(errors='replace')[-2000:]}")
        result = json.loads(out.read_text())
        medians = result["median_s"]
        self.results.details["intake"] = result
        for name, seconds in medians.items():
            if name.startswith(("normalise 18 s", "normalise 60 s")):
                self.results.add("intake", f"{name}, median", seconds * 1000, "ms",
                                 note=f"of {self.sizes.intake_runs}")
        c = result["concurrent"]
        self.results.add("intake", f"event-loop lag, {c['jobs']} normalisations at once", c["max_loop_lag_ms"], "ms",
                         target=f"≤ {LOOP_LAG_MS:.0f} ms", passed=c["max_loop_lag_ms"] <= LOOP_LAG_MS,
                         note=f"{c['clip']}, {c['wall_s']:.2f} s wall")


# -- machine, table, entry point ---------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_gb = round(int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024, 1)
    import discord

    return {"cpu": model, "cpus": os.cpu_count(), "memory_gb": mem_gb, "os": platform.platform(),
            "python": platform.python_version(), "discord.py": discord.__version__}


def render_table(results: Results) -> str:
    rows = [("scenario", "figure", "value", "target", "result")]
    for f in results.figures:
        value = "—" if f.value is None else f"{f.value:g} {f.unit}"
        rows.append((f.scenario, f.name, value, f.target or "—", f.verdict))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    for name, why in results.not_measured.items():
        lines.append(f"not measured: {name}: {why}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts for a smoke run (< 60 s)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"write the results here ({DEFAULT_JSON})")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help=f"run only these scenarios (comma-separated or repeated): {', '.join(SCENARIOS)}")
    parser.add_argument("--tts-latency", type=float, metavar="S",
                        help="the fake's TTS latency in say1 and burst64 (default 0; subtracted)")
    parser.add_argument("--say64-latency", type=float, metavar="S",
                        help="the fake's TTS latency at concurrency 64 (default 0.5; subtracted)")
    parser.add_argument("--throughput-latency", type=float, metavar="S",
                        help="the fake's TTS latency in the throughput run (default 0.5)")
    parser.add_argument("--poll-after", type=float, metavar="S", help="X-Poll-After of the poller run (default 5)")
    parser.add_argument("--complete-after", type=float, metavar="S",
                        help="seconds until the poller run's clones complete (default 20)")
    parser.add_argument("--database-url", metavar="URL",
                        help="run the bot on this PostgreSQL database (an empty one: it is migrated) instead of SQLite")
    parser.add_argument("--processes", type=int, default=1, metavar="N",
                        help="N bot processes (SHARD_COUNT=N, process i SHARD_IDS=i) on one PostgreSQL database: "
                             "--database-url's, or a throwaway PostgreSQL 15 server started for the run (default 1)")
    parser.add_argument("--guilds", type=int, metavar="G",
                        help="G guilds in the emulator, spread over the shards, members round-robin over them "
                             "(default 1; 64 with --compare)")
    parser.add_argument("--compare", action="store_true",
                        help="run SQLite ×1, PostgreSQL ×1 and PostgreSQL ×2 one after the other (each on fresh "
                             f"fakes and a fresh database) and print them side by side; scenarios "
                             f"{','.join(COMPARE_SCENARIOS)} unless --only says otherwise")
    parser.add_argument("--repeat", type=int, default=1, metavar="R",
                        help="with --compare: run the configurations R times in rotation and compare the medians "
                             "(other work on a shared machine then skews every configuration alike; default 1)")
    parser.add_argument("--keep-logs", type=Path, metavar="DIR", help="copy the bot's logs (and profiles) here")
    parser.add_argument("--profile-bot", choices=("py-spy", "cprofile"),
                        help="profile the bot process (py-spy: attached after start-up, GIL-holding samples, "
                             "`pip install py-spy` first, not a project dependency); the profile lands next to "
                             "the logs (use with --keep-logs)")
    args = parser.parse_args(argv)
    only = {name.strip() for value in args.only for name in value.split(",") if name.strip()}
    unknown = only - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    if args.compare and args.processes != 1:
        parser.error("--compare runs 1 and 2 processes itself: leave out --processes")
    if args.repeat < 1 or (args.repeat > 1 and not args.compare):
        parser.error("--repeat needs --compare and must be at least 1")
    if args.guilds is None:
        args.guilds = 64 if args.compare else 1
    if args.guilds < 1:
        parser.error("--guilds must be at least 1")
    args.selected = only or set(COMPARE_SCENARIOS if args.compare else SCENARIOS)
    return args


async def run_bench(sizes: Sizes, selected: set[str], keep_logs: Path | None = None,
                    profile: str | None = None, database_url: str | None = None, processes: int = 1,
                    guilds: int = 1) -> Results:
    with tempfile.TemporaryDirectory(prefix="nanovoice-bench-") as tmp:
        bench = Bench(sizes, selected, Path(tmp), profile=profile, database_url=database_url, processes=processes,
                      guilds=guilds)
        await bench.open()
        try:
            return await bench.run()
        finally:
            await bench.close()
            bench.results.details["delivered_to_shards"] = bench.delivered
            if keep_logs is not None:
                _copy_logs(Path(tmp), keep_logs)


def _copy_logs(tmp: Path, keep_logs: Path) -> None:
    keep_logs.mkdir(parents=True, exist_ok=True)
    for path in tmp.glob("bot-*"):
        shutil.copy2(path, keep_logs / path.name)


@contextlib.asynccontextmanager
async def postgres_base(database_url: str | None) -> Any:
    """``database_url``, or a throwaway PostgreSQL 15 server's URL (started now, stopped at the end)."""
    if database_url:
        yield database_url, "given"
        return
    server = ThrowawayPostgres()
    await asyncio.to_thread(server.start)
    try:
        yield server.url, "throwaway"
    finally:
        await asyncio.to_thread(server.stop)


@dataclass(frozen=True)
class Configuration:
    name: str
    database: str  # "sqlite" or "postgres"
    processes: int


COMPARE = (Configuration("SQLite ×1", "sqlite", 1), Configuration("PostgreSQL ×1", "postgres", 1),
           Configuration("PostgreSQL ×2", "postgres", 2))


async def run_configurations(configurations: Iterable[Configuration], sizes: Sizes, selected: set[str],
                             guilds: int, keep_logs: Path | None = None, profile: str | None = None,
                             database_url: str | None = None, fresh: bool = True
                             ) -> tuple[list[tuple[Configuration, Results]], str | None]:
    """Each configuration in turn, on its own fakes; the PostgreSQL ones on one server (``database_url``'s,
    or a throwaway one), each in a fresh schema when ``fresh``. Returns the results and the server's origin."""
    configurations = list(configurations)
    out: list[tuple[Configuration, Results]] = []
    needs_postgres = any(c.database == "postgres" for c in configurations)
    async with contextlib.AsyncExitStack() as stack:
        base, origin = await stack.enter_async_context(postgres_base(database_url)) if needs_postgres else (None, None)
        for conf in configurations:
            logs = keep_logs / _slug(conf.name) if keep_logs is not None and len(configurations) > 1 else keep_logs
            if conf.database == "sqlite":
                results = await run_bench(sizes, selected, logs, profile, None, 1, guilds)
            elif fresh:
                async with fresh_schema(base) as url:
                    results = await run_bench(sizes, selected, logs, profile, url, conf.processes, guilds)
            else:
                results = await run_bench(sizes, selected, logs, profile, base, conf.processes, guilds)
            out.append((conf, results))
    return out, origin


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower().replace("×", "x")).strip("-")


def _get(details: dict[str, Any], *path: str) -> float | None:
    value: Any = details
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value if isinstance(value, int | float) else None


#: The comparison's rows: (label, unit, path into a configuration's details, better when "higher"/"lower").
COMPARE_ROWS = (
    ("/say throughput at saturation", "req/s", ("saturation", "requests_per_s"), "higher"),
    ("say64 median", "ms", ("say64", "overhead", "median_ms"), "lower"),
    ("say64 p99", "ms", ("say64", "overhead", "p99_ms"), "lower"),
    ("burst64 median", "ms", ("burst64", "overhead", "median_ms"), "lower"),
    ("burst64 p99", "ms", ("burst64", "overhead", "p99_ms"), "lower"),
    ("bot CPU per /say (sum of processes)", "ms", ("saturation", "bot_cpu_ms_per_say"), "lower"),
    ("PostgreSQL CPU per /say (server)", "ms", ("saturation", "postgres_cpu_ms_per_say"), "lower"),
    ("bot + PostgreSQL CPU per /say", "ms", ("saturation", "total_cpu_ms_per_say"), "lower"),
    ("driver + fakes CPU per /say", "ms", ("saturation", "driver_cpu_ms_per_say"), "lower"),
    ("machine busy at saturation (all processes)", "cores", ("saturation", "machine_busy_cores"), "lower"),
    ("… of which not the bench's (other work)", "cores", ("saturation", "other_cores"), "lower"),
)


def comparison(runs: list[tuple[Configuration, Results]]) -> dict[str, Any]:
    """The comparison's rows: per configuration the median of its runs (``--repeat``; all of them in
    ``runs``), and the last configuration against the one before it (PostgreSQL ×2 against ×1): a ratio
    for throughput, a change in per cent for the rest."""
    for _, results in runs:
        sat = results.details.get("saturation", {})
        if "bot_cpu_ms_per_say" in sat:
            parts = [sat.get("bot_cpu_ms_per_say"), sat.get("postgres_cpu_ms_per_say") or 0.0]
            sat["total_cpu_ms_per_say"] = None if parts[0] is None else round(sum(parts), 3)
    names = list(dict.fromkeys(conf.name for conf, _ in runs))
    by_name = {name: [results for conf, results in runs if conf.name == name] for name in names}
    rows = []
    for label, unit, path, better in COMPARE_ROWS:
        each = {name: [v for v in (_get(r.details, *path) for r in by_name[name]) if v is not None] for name in names}
        if not any(each.values()):
            continue
        values = {name: round(statistics.median(v), 3) if v else None for name, v in each.items()}
        row: dict[str, Any] = {"figure": label, "unit": unit, "better": better, "values": values,
                               "runs": each}
        if len(names) >= 2 and values[names[-1]] is not None and values[names[-2]]:
            a, b = values[names[-2]], values[names[-1]]
            row["last_vs_previous"] = (f"{b / a:.2f}×" if unit == "req/s" else f"{(b - a) / a * 100:+.0f} %")
        rows.append(row)
    failures = {name: sum(int(_get(r.details, key, "failures") or 0) for r in by_name[name]
                          for key in ("say64", "burst64", "saturation")) for name in names}
    return {"rows": rows, "failures": failures, "repeats": {name: len(by_name[name]) for name in names}}


def render_comparison(table: dict[str, Any]) -> str:
    names = list(table["failures"])
    repeats = max(table["repeats"].values(), default=1)
    last = f"{names[-1]} vs {names[-2]}" if len(names) >= 2 else ""
    header = ("figure" + (f" (median of {repeats} runs each)" if repeats > 1 else ""), *names,
              *((last,) if last else ()))
    lines_ = [header]
    for row in table["rows"]:
        cells = [f"{row['figure']} ({row['unit']})"]
        cells += ["—" if row["values"][n] is None else f"{row['values'][n]:g}" for n in names]
        if last:
            cells.append(row.get("last_vs_previous", "—"))
        lines_.append(tuple(cells))
    lines_.append(("failed /say (all runs)", *(str(table["failures"][n]) for n in names), *(("",) if last else ())))
    widths = [max(len(r[i]) for r in lines_) for i in range(len(header))]
    out = []
    for i, row in enumerate(lines_):
        out.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _results_json(results: Results) -> dict[str, Any]:
    return {"figures": [asdict(f) | {"verdict": f.verdict} for f in results.figures],
            "not_measured": results.not_measured, "problems": results.problems, "details": results.details}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sizes = QUICK if args.quick else FULL
    overrides = {"tts_latency": args.tts_latency, "say64_latency": args.say64_latency,
                 "throughput_latency": args.throughput_latency,
                 "poll_after": args.poll_after, "poll_seconds": args.complete_after}
    sizes = replace(sizes, **{k: v for k, v in overrides.items() if v is not None})
    if args.compare:  # in rotation, so that other work on the machine falls on every configuration alike
        configurations: list[Configuration] = list(COMPARE) * args.repeat
    elif args.processes > 1:
        configurations = [Configuration(f"PostgreSQL ×{args.processes}", "postgres", args.processes)]
    else:
        configurations = [Configuration("PostgreSQL ×1" if args.database_url else "SQLite ×1",
                                        "postgres" if args.database_url else "sqlite", 1)]
    started = time.perf_counter()
    load_before = os.getloadavg()
    try:
        # one configuration on a given --database-url: that database as it is (it must be empty), as before
        runs, origin = asyncio.run(run_configurations(
            configurations, sizes, args.selected, args.guilds, args.keep_logs, args.profile_bot, args.database_url,
            fresh=args.compare))
    except Exception as exc:
        log.exception("the benchmark could not run")
        print(f"bench: the benchmark could not run: {exc}", file=sys.stderr)
        return 2
    took = time.perf_counter() - started
    out: dict[str, Any] = {
        "command": "python -m bench.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "mode": "quick" if args.quick else "full",
        "scenarios": sorted(args.selected, key=SCENARIOS.index),
        "processes": args.processes, "guilds": args.guilds, "postgres_server": origin,
        "sizes": asdict(sizes),
        "machine": machine() | {"loadavg_1_5_15_before": [round(x, 2) for x in load_before],
                                "loadavg_1_5_15_after": [round(x, 2) for x in os.getloadavg()]},
        "took_s": round(took, 1),
    }
    if args.compare:
        table = comparison(runs)
        out["comparison"] = table
        out["configurations"] = [{"name": conf.name, "run": 1 + i // len(COMPARE), "database": conf.database,
                                  "processes": conf.processes} | _results_json(results)
                                 for i, (conf, results) in enumerate(runs)]
    else:
        out |= _results_json(runs[0][1])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")
    m = out["machine"]
    what = ", ".join(f"{c.name}" for c in configurations)
    print(f"nanovoice benchmark ({out['mode']}; {what}; {args.guilds} guild(s)) on {m['cpu']} ×{m['cpus']}, "
          f"{m['memory_gb']} GB, Python {m['python']}, discord.py {m['discord.py']}; took {took:.0f} s; load "
          f"average before {m['loadavg_1_5_15_before'][0]}, after {m['loadavg_1_5_15_after'][0]} (other work "
          f"skews the figures)\n")
    problems: list[str] = []
    for i, (conf, results) in enumerate(runs):
        if len(runs) > 1:
            print(f"== {conf.name}" + (f", run {1 + i // len(COMPARE)}" if args.repeat > 1 else ""))
        print(render_table(results) + ("\n" if len(runs) > 1 else ""))
        problems += [f"{conf.name}: {p}" if len(runs) > 1 else p for p in results.problems]
    if args.compare:
        print(render_comparison(out["comparison"]))
    if problems:
        print(f"\n{len(problems)} problem(s) seen during the run (see the JSON), first ones:")
        for line in problems[:5]:
            print(f"  {line[:200]}")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
