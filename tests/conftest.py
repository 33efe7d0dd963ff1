"""Shared fixtures: a hermetic network guard (autouse), discord.py's global endpoints restored after every
test (autouse), the ``discord_emulator`` and ``captured_logs`` fixtures.

Feature fixtures live in their own ``tests/fixtures_*.py`` modules, registered with
``pytest_plugins = [...]`` in the test modules that use them.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from collections.abc import AsyncIterator, Iterator

import discord.gateway
import discord.http
import pytest
from hypothesis import settings

from tests.fakes.discord import DiscordEmulator
from tests.harness import LogCapture

# Property tests explore new examples on developers' machines; CI replays a fixed sequence, so a
# landing never depends on what a random draw happened to find that day.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

# Feature fixtures shared by many test modules.
pytest_plugins = ["tests.fixtures_postgres", "tests.fixtures_db", "tests.fixtures_nanogpt", "tests.fixtures_audio",
                  "tests.fixtures_bot", "tests.fixtures_processes"]

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


class NetworkAccessBlocked(RuntimeError):
    """A test tried to reach a host other than loopback."""


def _is_loopback(host: object) -> bool:
    if host is None:
        return True  # getaddrinfo(None, port): the local wildcard, used by servers binding
    if isinstance(host, bytes):
        host = host.decode()
    if not isinstance(host, str):
        return False
    host = host.strip("[]").split("%", 1)[0]
    if host.lower() in _LOOPBACK_NAMES or host == "":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class NetworkGuard:
    """Refuses DNS lookups and connections to anything but loopback; remembers what was tried."""

    def __init__(self) -> None:
        self.blocked: list[str] = []

    def refuse(self, what: str) -> NetworkAccessBlocked:
        self.blocked.append(what)
        return NetworkAccessBlocked(f"tests must not reach the network: {what} (only 127.0.0.1/localhost/::1)")

    def clear(self) -> list[str]:
        """Forget (and return) the blocked attempts, for a test that provokes them on purpose."""
        blocked, self.blocked = self.blocked, []
        return blocked


@pytest.fixture(autouse=True)
def network_guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[NetworkGuard]:
    """Autouse: any hostname or address other than loopback raises :class:`NetworkAccessBlocked` at once.

    Covers ``socket.getaddrinfo`` (so asyncio's ``loop.getaddrinfo``, aiohttp's resolver and
    ``socket.create_connection``) and ``socket.socket.connect``/``connect_ex`` (literal IPs, asyncio's
    ``sock_connect``). The test fails at teardown if anything was blocked, even when the code under test
    swallowed the error; call ``network_guard.clear()`` in a test that triggers it on purpose."""
    guard = NetworkGuard()
    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def guarded_getaddrinfo(host, *args, **kwargs):
        if not _is_loopback(host):
            raise guard.refuse(f"DNS lookup of {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    def check_address(sock: socket.socket, address: object) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple):
            if not _is_loopback(address[0]):
                raise guard.refuse(f"connection to {address!r}")

    def guarded_connect(self, address):
        check_address(self, address)
        return real_connect(self, address)

    def guarded_connect_ex(self, address):
        check_address(self, address)
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    yield guard
    assert not guard.blocked, f"the test tried to reach the network: {guard.blocked}"


@pytest.fixture(autouse=True)
def _restore_discord_endpoints() -> Iterator[None]:
    """discord.py's REST base and default gateway are process-global: put them back after each test."""
    base, gateway = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    yield
    discord.http.Route.BASE = base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = gateway


@pytest.fixture
async def discord_emulator() -> AsyncIterator[DiscordEmulator]:
    """A started :class:`tests.fakes.discord.DiscordEmulator`; at teardown no unknown route may have been hit
    and the emulator must not have failed internally."""
    emu = DiscordEmulator()
    await emu.start()
    try:
        yield emu
    finally:
        await emu.close()
    assert not emu.internal_errors, "the Discord emulator failed:\n" + "\n".join(emu.internal_errors)
    unknown = [f"{r.method} {r.path}" for r in emu.unknown_routes]
    assert not unknown, f"requests to routes the emulator does not know: {unknown}"


@pytest.fixture
def captured_logs() -> Iterator[LogCapture]:
    """Every log record of every logger (DEBUG and up) during the test, with formatted text."""
    capture = LogCapture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        root.setLevel(old_level)
