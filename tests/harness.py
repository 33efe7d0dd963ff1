"""Run a real discord.py client against :class:`tests.fakes.discord.DiscordEmulator`.

    task = await start_client(bot, emu)     # logged in, gateway connected, READY dispatched
    ...
    await stop_client(bot)                  # closes it; raises if connect() had died

The recipe: point ``Route.BASE`` and
``DiscordWebSocket.DEFAULT_GATEWAY`` at the emulator (fine if the bot already did from its config),
no-op ``before_identify_hook``, a short ``guild_ready_timeout``, ``login`` then ``connect`` in a task,
and race ``wait_until_ready`` against that task so a crash in a gateway parser is not silent.
Also :class:`LogCapture`, the handler behind the ``captured_logs`` fixture.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import weakref

import discord
import discord.gateway
import discord.http
import yarl

from tests.fakes.discord import DiscordEmulator

_connect_tasks: weakref.WeakKeyDictionary[discord.Client, asyncio.Task[None]] = weakref.WeakKeyDictionary()


def point_discord_at(emu: DiscordEmulator) -> None:
    """Redirect discord.py's REST (incl. interaction callbacks and webhooks) and gateway to the emulator."""
    discord.http.Route.BASE = emu.api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(emu.gateway_url)


async def _no_identify_delay(shard_id: int | None, *, initial: bool = False) -> None:
    return None


async def start_client(client: discord.Client, emu: DiscordEmulator, timeout: float = 5.0,  # noqa: ASYNC109
                       *, token: str | None = None) -> asyncio.Task[None]:
    """Log ``client`` in to the emulator and connect it; returns once READY was dispatched.

    Raises ``RuntimeError`` (chained to the cause) when ``connect()`` ends before READY, and
    ``TimeoutError`` when READY does not come within ``timeout`` seconds; the client is closed then."""
    configured = discord.http.Route.BASE
    if configured not in ("https://discord.com/api/v10", emu.api_base):
        logging.getLogger(__name__).warning("client had Route.BASE=%s; using the emulator's %s", configured,
                                            emu.api_base)
    point_discord_at(emu)
    client.before_identify_hook = _no_identify_delay  # type: ignore[method-assign]
    state = client._connection
    state.guild_ready_timeout = min(state.guild_ready_timeout, 0.05)

    await client.login(token or emu.token)
    connect = asyncio.create_task(client.connect(reconnect=True), name=f"discord-connect-{id(client)}")
    _connect_tasks[client] = connect
    ready = asyncio.create_task(client.wait_until_ready())
    try:
        done, _ = await asyncio.wait({connect, ready}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not ready.done():
            ready.cancel()
    if ready in done and not connect.done():
        return connect
    error: BaseException | None = None
    if connect.done() and not connect.cancelled():
        error = connect.exception()
    await stop_client(client, raise_errors=False)
    if connect in done or connect.done():
        raise RuntimeError(f"discord.py's connect() ended before READY: {error!r}") from error
    raise TimeoutError(f"the client was not ready within {timeout}s")


def connect_task(client: discord.Client) -> asyncio.Task[None] | None:
    """The ``connect()`` task :func:`start_client` created for ``client``."""
    return _connect_tasks.get(client)


async def stop_client(client: discord.Client, *, raise_errors: bool = True) -> None:
    """Close the client and wait for its ``connect()`` task; re-raise what killed that task."""
    task = _connect_tasks.pop(client, None)
    if not client.is_closed():
        await client.close()
    if task is None:
        return
    try:
        await asyncio.wait_for(asyncio.shield(task), 5)
    except TimeoutError:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
    except asyncio.CancelledError:
        if not task.cancelled():
            raise
    except Exception as exc:
        if raise_errors:
            raise RuntimeError(f"discord.py's connect() task failed: {exc!r}") from exc


class LogCapture(logging.Handler):
    """Collects every record with its formatted text (including tracebacks)."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.records: list[logging.LogRecord] = []
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception as exc:  # a bad format string in the code under test is worth seeing, not crashing on
            text = f"{record.levelname} {record.name}: <unformattable {record.msg!r}: {exc!r}>"
        self.records.append(record)
        self.texts.append(text)

    def at_least(self, level: int) -> list[str]:
        return [t for r, t in zip(self.records, self.texts, strict=True) if r.levelno >= level]

    @property
    def errors(self) -> list[str]:
        """Texts of ERROR and CRITICAL records."""
        return self.at_least(logging.ERROR)

    @property
    def warnings(self) -> list[str]:
        return [t for r, t in zip(self.records, self.texts, strict=True) if r.levelno == logging.WARNING]

    def assert_no_errors(self, ignore: str | None = None) -> None:
        """Fail on any ERROR/CRITICAL record (those matching the ``ignore`` regex aside)."""
        errors = [t for t in self.errors if not (ignore and re.search(ignore, t))]
        assert not errors, "ERROR log records:\n" + "\n---\n".join(errors)

    def find(self, pattern: str) -> list[str]:
        """Texts matching the regex ``pattern``."""
        return [t for t in self.texts if re.search(pattern, t)]

    def leaks(self, *secrets: str) -> list[str]:
        """Texts containing any of ``secrets`` verbatim (empty strings ignored)."""
        wanted = [s for s in secrets if s]
        return [t for t in self.texts if any(s in t for s in wanted)]

    def clear(self) -> None:
        self.records.clear()
        self.texts.clear()
