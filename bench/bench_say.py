"""Benchmark /say end to end: the real bot against the Discord emulator and the fake NanoGPT.

    .venv/bin/python bench/bench_say.py [--runs 50] [--latency 0] [--json out.json]

Measures, at the emulator, the time from injecting the INTERACTION_CREATE for ``/say`` to:

* ``uncached``: the final reply (the "thinking…" message replaced by the speech file), new text each run;
* ``cached``: the same, for text already in the TTS cache (no NanoGPT call);
* ``voice_message``: the voice message posted in the channel (Create Message accepted), new text each
  run (includes the ffmpeg OGG/Opus encode), and ``voice_message_done``: until the deferred reply
  is deleted as well.

The fake NanoGPT answers at once (``--latency`` adds seconds to every TTS call), so the figures are
the bot's own overhead: discord.py gateway/REST, SQLite, the cache, ffmpeg. Prints median and p99
per scenario (ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fakes.discord import DiscordEmulator
from tests.fakes.nanogpt import FakeNanoGPT
from tests.fixtures_bot import World


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def summary(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {"runs": len(ms), "median_ms": round(statistics.median(ms), 2), "p99_ms": round(percentile(ms, 99), 2),
            "min_ms": round(min(ms), 2), "max_ms": round(max(ms), 2)}


async def measure(runs: int, one: Callable[[int], Awaitable[float]], warmup: int = 2) -> list[float]:
    for i in range(warmup):
        await one(-1 - i)
    return [await one(i) for i in range(runs)]


async def run(runs: int, latency: float) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        emu = await DiscordEmulator().start()
        nano = await FakeNanoGPT().start()
        nano.tts_latency = latency
        world = World(emu=emu, nano=nano, tmp_path=Path(tmp), env={})
        try:
            await world.start()
            user = world.user("bench")
            channel_id = emu.channel_id

            async def say(text: str, **options) -> tuple[float, object]:
                started = time.perf_counter()
                inter = await emu.slash(user, "say", options={"text": text, **options})
                return started, inter

            async def uncached(i: int) -> float:
                started, inter = await say(f"uncached run number {i} of the benchmark")
                await inter.wait_final(30)
                return time.perf_counter() - started

            async def cached(i: int) -> float:
                started, inter = await say("the same cached sentence every time")
                await inter.wait_final(30)
                return time.perf_counter() - started

            voice_done: list[float] = []

            async def voice_message(i: int) -> float:
                before = len([m for m in emu.channel_messages(channel_id) if m.is_voice_message])
                started, inter = await say(f"voice message number {i}", voice_message=True)
                await emu.wait_until(
                    lambda: len([m for m in emu.channel_messages(channel_id) if m.is_voice_message]) > before,
                    30, "the voice message")
                posted = time.perf_counter() - started
                await inter.wait_until(lambda it: it.original is None or it.original.deleted, 30)
                if i >= 0:
                    voice_done.append(time.perf_counter() - started)
                return posted

            results = {
                "uncached": summary(await measure(runs, uncached)),
                "cached": summary(await measure(runs, cached)),
                "voice_message": summary(await measure(runs, voice_message)),
            }
            results["voice_message_done"] = summary(voice_done)
            tts_calls = len(nano.tts_requests)
            results["_meta"] = {"tts_requests": tts_calls, "latency_s": latency,
                                "python": platform.python_version(), "machine": platform.machine()}
            return results
        finally:
            await world.stop()
            await nano.close()
            await emu.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds the fake NanoGPT waits per TTS call")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    results = asyncio.run(run(args.runs, args.latency))
    for name, figures in results.items():
        if name.startswith("_"):
            continue
        print(f"{name:20s} median {figures['median_ms']:8.2f} ms   p99 {figures['p99_ms']:8.2f} ms   "
              f"(min {figures['min_ms']:.2f}, max {figures['max_ms']:.2f}, n={figures['runs']})")
    meta = results["_meta"]
    print(f"NanoGPT /tts requests: {meta['tts_requests']} (latency {meta['latency_s']} s); "
          f"Python {meta['python']} on {meta['machine']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
