"""Command line: ``nanovoice [run]`` starts the bot; ``nanovoice check`` diagnoses the setup.

``python -m bot`` is the same program.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable

from bot.config import Config, ConfigError, load_config

log = logging.getLogger("bot")

EXIT_CONFIG = 2


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nanovoice", description="Voice-cloning Discord bot on NanoGPT.")
    parser.add_argument("command", nargs="?", default="run", choices=("run", "check"),
                        help="run the bot (default) or check the configuration, Discord, NanoGPT and ffmpeg")
    return parser.parse_args(argv)


async def _run(config: Config) -> None:
    from bot.app import NanoVoice

    async with NanoVoice(config) as client:
        loop = asyncio.get_running_loop()
        # SIGTERM (systemd, docker stop) closes the bot as cleanly as Ctrl+C: cogs, gateway, database.
        loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(client.close()))
        await client.start(str(config.discord_token))


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
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(_run(config))
    except KeyboardInterrupt:
        log.info("stopped")
    except Exception as exc:  # a login failure and the like: one line, no traceback for operators
        import discord

        if isinstance(exc, discord.LoginFailure):
            log.error("Discord rejected DISCORD_TOKEN; check the bot token")
            return 1
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
