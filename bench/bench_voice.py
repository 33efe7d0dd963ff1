"""Benchmark speech in voice channels: the real bot process against the emulator's voice server.

    .venv/bin/python -m bench.bench_voice [--quick] [--json PATH]

The bot runs as operators start it (``python -m bot run``, via :class:`bench.bench.BotProcess`), pointed at
the Discord emulator and the fake NanoGPT in this process; it trusts the emulator's TLS test CA through
``SSL_CERT_FILE`` (no code path of its own for tests). Every line is a real ``/say`` (each its own text,
never cached); the fake answers TTS at once with a tone of ``--clip`` seconds.

* **first packet**: ``/say`` injected → first Opus packet at the voice server, and NanoGPT's answer sent →
  first Opus packet (the bot's own part: reply, queue, ffmpeg start, discord.py's player), median and p99,
  one line after another in one server (target: ≤ 150 ms after NanoGPT's answer);
* **CPU per played second**: the bot process's CPU (its threads and reaped ffmpeg children) over those
  lines, divided by the seconds of audio the voice server received;
* **8 servers at once**: the bot in a voice channel in each of 8 servers, one ``/say`` in each at the same
  instant; the interval between consecutive packets per server, p99 and worst (target: p99 ≤ 40 ms;
  discord.py sends one 20 ms packet every 20 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench import BOT_ENV, BenchEmulator, BenchNanoGPT, BotProcess, percentile
from tests.fakes.discord.voice import opus_duration
from tests.fixtures_bot import World

FIRST_PACKET_TARGET_MS = 150.0
INTERVAL_P99_TARGET_MS = 40.0
SERVERS = 8


def _ms(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    if not ms:
        return {"n": 0}
    return {"n": len(ms), "median_ms": round(statistics.median(ms), 1), "p99_ms": round(percentile(ms, 99), 1),
            "max_ms": round(max(ms), 1)}


class VoiceBench:
    def __init__(self, tmp: Path, lines: int, clip: float) -> None:
        self.tmp = tmp
        self.lines = lines
        self.clip = clip
        self.emu = BenchEmulator()
        self.nano = BenchNanoGPT()
        self.bot: BotProcess | None = None
        self.guilds: list[dict[str, Any]] = []  # {"id", "text", "voice", "member"}

    async def open(self) -> None:
        for i in range(SERVERS):
            guild = self.emu.add_guild(name=f"Server {i}") if i else self.emu.guilds[self.emu.guild_id]
            text_id = next(iter(guild.channels))
            voice = self.emu.add_channel("Lounge", type=2, guild_id=guild.id)
            member = self.emu.add_user(name=f"speaker{i}", guild_id=guild.id)
            self.emu.set_voice_state(member, int(voice["id"]), guild.id)
            self.guilds.append({"id": guild.id, "text": text_id, "voice": int(voice["id"]), "member": member})
        await self.emu.start()
        await self.nano.start()
        self.nano.balance_usd = Decimal(1_000_000)
        self.nano.record_bodies = False
        self.nano.tts_seconds = self.clip
        ca = self.tmp / "voice-ca.pem"
        self.emu._ca.cert_pem.write_to_path(str(ca))
        env = dict(BOT_ENV) | {"SSL_CERT_FILE": str(ca)}
        world = World(emu=self.emu, nano=self.nano, tmp_path=self.tmp, env=env)
        self.bot = BotProcess(world, self.tmp / "bot-voice.log")
        await self.bot.start()

    async def close(self) -> list[str]:
        problems: list[str] = []
        if self.bot is not None:
            await self.bot.stop()
            problems += [f"bot: {line}" for line in self.bot.problems()]
        problems += [f"voice server: {e}" for e in self.emu.voice_errors]
        problems += [f"emulator: {e}" for e in self.emu.internal_errors]
        await self.nano.close()
        await self.emu.close()
        return problems

    async def join(self, g: dict[str, Any]) -> None:
        inter = await self.emu.slash(g["member"], "join", channel_id=g["text"])
        answer = await inter.wait_final(30)
        if "Joined" not in answer.content:
            raise RuntimeError(f"/join in {g['id']} answered {answer.content!r}")
        await self.emu.wait_until(lambda: g["id"] in self.emu.voice_sessions
                                  and self.emu.voice_sessions[g["id"]].described_at is not None, 10)

    async def say(self, g: dict[str, Any]) -> Any:
        text = f"Voice benchmark line {uuid.uuid4().hex[:8]}, never cached."
        return await self.emu.slash(g["member"], "say", options={"text": text}, channel_id=g["text"])

    def _audio_frames(self, guild_id: int) -> list[Any]:
        return [f for f in self.emu.voice_frames(guild_id) if not f.silence]

    async def first_packet(self) -> dict[str, Any]:
        g = self.guilds[0]
        await self.join(g)
        from_say, from_answer = [], []
        assert self.bot is not None
        cpu_before = self.bot.cpu_s()
        heard_before = opus_duration(self.emu.voice_frames(g["id"]))
        for _ in range(self.lines + 1):  # the first line warms up ffmpeg and the page cache
            frames_before = len(self._audio_frames(g["id"]))
            tts_before = len(self.nano.tts_spans)
            inter = await self.say(g)
            await self.emu.wait_until(lambda n=frames_before: len(self._audio_frames(g["id"])) > n, 10,
                                      "a first packet")
            first = self._audio_frames(g["id"])[frames_before].received_at
            answered = self.nano.tts_spans[tts_before][1]
            if tts_before:  # not the warm-up
                from_say.append(first - self.emu.injected_at[inter.token])
                from_answer.append(first - answered)
            ended = len(self.emu.heard_lines(g["id"]))
            await self.emu.wait_for_lines(ended, g["id"], timeout=10 + 2 * self.clip)
            await asyncio.sleep(0.15)  # discord.py's trailing silence frames
        cpu = self.bot.cpu_s() - cpu_before
        played = opus_duration(self.emu.voice_frames(g["id"])) - heard_before
        return {"say_to_first_packet": _ms(from_say), "nanogpt_answer_to_first_packet": _ms(from_answer),
                "bot_cpu_s": round(cpu, 3), "played_s": round(played, 2),
                "cpu_ms_per_played_s": round(cpu / played * 1000, 1) if played else float("nan")}

    async def parallel(self) -> dict[str, Any]:
        for g in self.guilds[1:]:
            await self.join(g)
        before = {g["id"]: len(self.emu.voice_frames(g["id"])) for g in self.guilds}
        assert self.bot is not None
        cpu_before = self.bot.cpu_s()
        await asyncio.gather(*(self.say(g) for g in self.guilds))
        for g in self.guilds:
            await self.emu.wait_until(
                lambda g=g: sum(1 for f in self.emu.voice_frames(g["id"])[before[g["id"]]:] if f.silence) >= 1,
                20 + 2 * self.clip, "every server's line to end")
        cpu = self.bot.cpu_s() - cpu_before
        intervals: list[float] = []
        per_server = {}
        played = 0.0
        for g in self.guilds:
            frames = [f for f in self.emu.voice_frames(g["id"])[before[g["id"]]:] if not f.silence]
            gaps = [b.received_at - a.received_at for a, b in itertools.pairwise(frames)]
            intervals += gaps
            played += opus_duration(frames)
            per_server[str(g["id"])] = {"packets": len(frames), "interval": _ms(gaps)}
        starts = [self.emu.voice_frames(g["id"])[before[g["id"]]].received_at for g in self.guilds]
        return {"interval": _ms(intervals), "per_server": per_server, "bot_cpu_s": round(cpu, 3),
                "played_s": round(played, 2), "start_spread_ms": round((max(starts) - min(starts)) * 1000, 1)}


async def run(lines: int, clip: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="nanovoice-bench-voice-") as tmp:
        bench = VoiceBench(Path(tmp), lines, clip)
        try:
            await bench.open()
            first = await bench.first_packet()
            parallel = await bench.parallel()
        finally:
            problems = await bench.close()
    return {"first_packet": first, "parallel": parallel, "problems": problems}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 lines instead of 30")
    parser.add_argument("--clip", type=float, default=None, help="seconds of audio per line (default 1, quick 0.5)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    lines = 5 if args.quick else 30
    clip = args.clip or (0.5 if args.quick else 1.0)
    started = time.perf_counter()
    result = asyncio.run(run(lines, clip))
    first, parallel = result["first_packet"], result["parallel"]
    say, answer, gap = first["say_to_first_packet"], first["nanogpt_answer_to_first_packet"], parallel["interval"]
    ok = "PASS" if answer.get("p99_ms", float("inf")) <= FIRST_PACKET_TARGET_MS else "FAIL"
    ok_gap = "PASS" if gap.get("p99_ms", float("inf")) <= INTERVAL_P99_TARGET_MS else "FAIL"
    print(f"voice benchmark: {lines} lines of {clip:g} s, then {SERVERS} servers at once; took "
          f"{time.perf_counter() - started:.0f} s")
    print(f"/say → first Opus packet at the voice server: median {say.get('median_ms')} ms, p99 {say.get('p99_ms')} ms")
    print(f"NanoGPT's answer → first Opus packet: median {answer.get('median_ms')} ms, p99 {answer.get('p99_ms')} ms"
          f" (target ≤ {FIRST_PACKET_TARGET_MS:g} ms) {ok}")
    print(f"bot CPU per played second: {first['cpu_ms_per_played_s']} ms (one server)")
    print(f"{SERVERS} servers at once: packet interval median {gap.get('median_ms')} ms, p99 {gap.get('p99_ms')} ms, "
          f"worst {gap.get('max_ms')} ms (target p99 ≤ {INTERVAL_P99_TARGET_MS:g} ms) {ok_gap}; "
          f"bot CPU {parallel['bot_cpu_s']} s for {parallel['played_s']} s of audio")
    if result["problems"]:
        print(f"{len(result['problems'])} problem(s): " + "; ".join(p[:200] for p in result["problems"][:5]))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
