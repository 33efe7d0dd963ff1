"""Benchmark bot.audio: normalisation time and event-loop lag under concurrent transcodes.

    .venv/bin/python bench/bench_audio.py [--runs 5] [--json out.json]

Prints the median time to normalise an 18 s OGG/Opus voice message and a 60 s clip for MiniMax,
the median time to encode a 10 s MP3 as a voice message, and the worst event-loop lag (a 1 ms
ticker) while 4 normalisations of the 60 s clip run at once. Target: lag < 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot import audio
from tests.audio_corpus import corpus

LAG_TARGET_MS = 20.0


async def _timed(make_call, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        await make_call()
        times.append(time.perf_counter() - started)
    return times


async def _max_lag_during(work) -> tuple[float, float]:
    """Run ``work()`` while a 1 ms ticker measures the loop's worst lateness; returns (lag_s, wall_s)."""
    stop = asyncio.Event()
    worst = 0.0

    async def ticker() -> None:
        nonlocal worst
        interval = 0.001
        while not stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(interval)
            worst = max(worst, time.perf_counter() - before - interval)

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    try:
        await work()
    finally:
        wall = time.perf_counter() - started
        stop.set()
        await task
    return worst, wall


async def run(runs: int) -> dict[str, object]:
    voice_18 = corpus("voice_ogg", 18)
    clip_60 = corpus("voice_ogg", 60)
    tts_10 = corpus("mp3", 10)
    await audio.ffmpeg_exe()
    await audio.normalize_clone_audio(voice_18, "minimax")  # warm-up (page cache, first exec)

    rows: dict[str, list[float]] = {
        "normalise 18 s OGG/Opus voice message (MiniMax)": await _timed(
            lambda: audio.normalize_clone_audio(voice_18, "minimax", filename="voice-message.ogg"), runs
        ),
        "normalise 60 s OGG/Opus clip (MiniMax)": await _timed(
            lambda: audio.normalize_clone_audio(clip_60, "minimax", filename="clip.ogg"), runs
        ),
        "normalise 60 s OGG/Opus clip (Qwen, trimmed to 30 s)": await _timed(
            lambda: audio.normalize_clone_audio(clip_60, "qwen", filename="clip.ogg"), runs
        ),
        "voice message from 10 s MP3 (OGG/Opus + waveform)": await _timed(
            lambda: audio.encode_voice_message(tts_10), runs
        ),
    }

    async def four_at_once() -> None:
        await asyncio.gather(*(audio.normalize_clone_audio(clip_60, "minimax") for _ in range(4)))

    lag, wall = await _max_lag_during(four_at_once)
    return {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "ffmpeg": await audio.ffmpeg_exe()},
        "runs": runs,
        "median_s": {name: statistics.median(times) for name, times in rows.items()},
        "all_s": rows,
        "concurrent": {
            "jobs": 4,
            "clip": "60 s OGG/Opus → MP3 (MiniMax)",
            "wall_s": wall,
            "max_loop_lag_ms": lag * 1000,
            "target_ms": LAG_TARGET_MS,
            "within_target": lag * 1000 < LAG_TARGET_MS,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    result = asyncio.run(run(args.runs))

    width = max(len(name) for name in result["median_s"])
    out = sys.stdout
    out.write(f"{'job':<{width}}  median   (of {args.runs})\n")
    out.write(f"{'-' * width}  -------\n")
    for name, seconds in result["median_s"].items():
        out.write(f"{name:<{width}}  {seconds * 1000:5.0f} ms\n")
    c = result["concurrent"]
    verdict = "ok" if c["within_target"] else "OVER TARGET"
    out.write(
        f"\n{c['jobs']} × {c['clip']} at once: {c['wall_s']:.2f} s wall, "
        f"max event-loop lag {c['max_loop_lag_ms']:.1f} ms (target < {c['target_ms']:.0f} ms: {verdict})\n"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        out.write(f"wrote {args.json}\n")


if __name__ == "__main__":
    main()
