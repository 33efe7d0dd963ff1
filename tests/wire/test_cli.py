"""The command line as operators meet it, as real processes (``python -m bot``): ``--version``, one line and
exit code 2 for a bad configuration value, one line and exit code 1 when Discord can't be reached (REST,
gateway, DNS), and a start-up log without discord.py's voice-support warnings but with our version."""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import signal
import socket
import sys
import textwrap
from pathlib import Path

import pytest

from bot.__main__ import version

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.Gabcde.secret-token-value-0123456789"
KEY = "sk-nano-00000000-cli-secret"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bot_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "NANOGPT_"))}
    env.update({
        "DISCORD_TOKEN": TOKEN,
        "NANOGPT_API_KEY": KEY,
        "NANOGPT_BASE_URL": f"http://127.0.0.1:{closed_port()}/api",
        "DISCORD_API_BASE": f"http://127.0.0.1:{closed_port()}/api/v10",
        "DISCORD_GATEWAY_URL": f"ws://127.0.0.1:{closed_port()}/",
        "DATABASE_PATH": str(tmp_path / "data" / "nanovoice.sqlite3"),
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
    })
    env.update(overrides)
    return env


async def run_bot(tmp_path: Path, *args: str, env: dict[str, str], timeout: float = 60) -> tuple[int, str, str]:  # noqa: ASYNC109
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *args, cwd=str(tmp_path), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(f"python -m bot did not exit within {timeout} s: {err.decode()[-2000:]}") from None
    out_text, err_text = out.decode(), err.decode()
    for secret in (TOKEN, KEY, env.get("DISCORD_TOKEN", ""), env.get("NANOGPT_API_KEY", "")):
        if len(secret.strip()) >= 6:
            assert secret.strip() not in out_text + err_text, "a secret was printed"
    return proc.returncode, out_text, err_text


def nanovoice_lines(stderr: str) -> list[str]:
    """Our own lines on stderr (discord.py's log lines carry a timestamp and a level instead)."""
    return [line for line in stderr.splitlines() if line.startswith("nanovoice:")]


# -- --version -------------------------------------------------------------------------------------


async def test_version_prints_the_package_version_and_exits_0(tmp_path):
    code, out, err = await run_bot(tmp_path, "--version", env=bot_env(tmp_path))
    assert (code, err) == (0, "")
    assert out == f"nanovoice {importlib.metadata.version('nanovoice')}\n"
    assert version() == importlib.metadata.version("nanovoice") != "unknown"


def test_version_falls_back_to_pyproject_when_not_installed(monkeypatch):
    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert version() == "0.1.0" == _pyproject_version()


def _pyproject_version() -> str:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


# -- configuration errors: exit 2, exactly one line naming the variable -------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GUILD_DAILY_BUDGET_USD", "1e999"),
        ("GUILD_DAILY_BUDGET_USD", "0.0000001"),
        ("SAY_COOLDOWN_SECONDS", "nan"),
        ("SAY_COOLDOWN_SECONDS", "inf"),
        ("CLONE_DAILY_LIMIT", "1000000"),
        ("NANOGPT_BASE_URL", "https://nano-gpt.com:99999/api"),
        ("DEV_GUILD_ID", "42"),
        ("LOG_LEVEL", "loud\n\x1b[2J"),
        ("DISCORD_TOKEN", TOKEN + "\nsecond-line-of-paste"),
        ("ALLOWED_TTS_MODELS", "tts-1"),
    ],
)
async def test_bad_value_exits_2_with_one_line_naming_it(tmp_path, name, value):
    code, out, err = await run_bot(tmp_path, env=bot_env(tmp_path, **{name: value}))
    assert code == 2
    assert out == ""
    [line] = err.splitlines()
    assert line.startswith("nanovoice: configuration error: ") and name in line
    assert line.isprintable()
    assert "second-line-of-paste" not in err


# -- Discord unreachable: exit 1, one line, no traceback -------------------------------------------


async def test_discord_rest_unreachable_is_one_line(tmp_path):
    port = closed_port()
    code, _, err = await run_bot(tmp_path, env=bot_env(tmp_path, DISCORD_API_BASE=f"http://127.0.0.1:{port}/api/v10"))
    assert code == 1
    assert "Traceback" not in err
    assert nanovoice_lines(err) == [f"nanovoice: can't reach Discord at 127.0.0.1:{port}: connection refused"]


async def test_discord_gateway_unreachable_is_one_line(tmp_path, discord_emulator):
    port = closed_port()
    env = bot_env(tmp_path, DISCORD_TOKEN=discord_emulator.token, DISCORD_API_BASE=discord_emulator.api_base,
                  DISCORD_GATEWAY_URL=f"ws://127.0.0.1:{port}/")
    code, _, err = await run_bot(tmp_path, env=env, timeout=30)
    assert code == 1
    assert "Traceback" not in err and "Attempting a reconnect" not in err
    assert nanovoice_lines(err) == [
        f"nanovoice: can't reach the Discord gateway at 127.0.0.1:{port}: connection refused"]
    assert discord_emulator.identify_count == 0


async def test_sharded_bot_with_the_gateway_unreachable_is_one_line_too(tmp_path, discord_emulator):
    """discord.py's AutoShardedBot retries a shard's first connection every 5 s forever: the sharded bot
    ends like the plain one instead (one line, exit 1, no retry log)."""
    port = closed_port()
    env = bot_env(tmp_path, DISCORD_TOKEN=discord_emulator.token, DISCORD_API_BASE=discord_emulator.api_base,
                  DISCORD_GATEWAY_URL=f"ws://127.0.0.1:{port}/", SHARD_COUNT="2")
    code, _, err = await run_bot(tmp_path, env=env, timeout=30)
    assert code == 1
    assert "Traceback" not in err and "Failed to connect" not in err and "Retrying" not in err
    assert nanovoice_lines(err) == [
        f"nanovoice: can't reach the Discord gateway at 127.0.0.1:{port}: connection refused"]
    assert discord_emulator.identify_count == 0


async def test_rejected_token_is_one_line(tmp_path, discord_emulator):
    wrong = discord_emulator.token[:-4] + "AAAA"
    env = bot_env(tmp_path, DISCORD_TOKEN=wrong, DISCORD_API_BASE=discord_emulator.api_base,
                  DISCORD_GATEWAY_URL=discord_emulator.gateway_url)
    code, _, err = await run_bot(tmp_path, env=env)
    assert code == 1
    assert "Traceback" not in err
    assert nanovoice_lines(err) == ["nanovoice: Discord rejected DISCORD_TOKEN (HTTP 401); copy the bot token again "
                                    "from the Developer Portal (Bot → Reset Token)"]


# The process gets a resolver that knows only loopback names, answering everything else the way the
# system resolver does for an unknown name (gaierror EAI_NONAME): a DNS failure without any DNS query
# leaving the machine. asyncio's own event loop resolves through socket.getaddrinfo; uvloop would use
# libuv's resolver, so it is made unavailable here (the bot then runs on asyncio's loop, as on Windows).
OFFLINE_RESOLVER = textwrap.dedent("""
    import socket, sys

    sys.modules["uvloop"] = None
    _real = socket.getaddrinfo
    _LOCAL = {"localhost", "127.0.0.1", "::1", None}

    def getaddrinfo(host, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else host
        if name not in _LOCAL:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return _real(host, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo
""")


@pytest.mark.parametrize("which", ["rest", "gateway"])
async def test_dns_failure_is_one_line(tmp_path, discord_emulator, which):
    stub = tmp_path / "offline-resolver"
    stub.mkdir()
    (stub / "sitecustomize.py").write_text(OFFLINE_RESOLVER)
    env = bot_env(tmp_path, DISCORD_TOKEN=discord_emulator.token, PYTHONPATH=f"{stub}{os.pathsep}{ROOT}",
                  DISCORD_API_BASE=discord_emulator.api_base, DISCORD_GATEWAY_URL=discord_emulator.gateway_url)
    if which == "rest":
        env["DISCORD_API_BASE"] = "https://discord.invalid/api/v10"
        expected = ("nanovoice: can't reach Discord at discord.invalid:443: DNS lookup failed "
                    "(name or service not known)")
    else:
        env["DISCORD_GATEWAY_URL"] = "wss://gateway.discord.invalid/"
        expected = ("nanovoice: can't reach the Discord gateway at gateway.discord.invalid:443: DNS lookup failed "
                    "(name or service not known)")
    code, _, err = await run_bot(tmp_path, env=env, timeout=30)
    assert code == 1
    assert "Traceback" not in err
    assert nanovoice_lines(err) == [expected]


# -- a started bot's log ---------------------------------------------------------------------------------


async def test_started_bot_logs_its_version_and_no_voice_support_warnings(world):
    await world.stop()  # the process below is the SQLite file's one user
    proc = await world.spawn()
    try:
        await world.emu.wait_until(lambda: "logged in as" in proc.log_path.read_text(), timeout=15,
                                   what="the bot process to log that it is ready")
    finally:
        await world.terminate(proc)
    text = proc.log_path.read_text()
    assert proc.returncode == 0, text
    assert f"nanovoice {version()} starting" in text
    assert "voice will NOT be supported" not in text
    assert "PyNaCl" not in text and "davey" not in text
    assert "Traceback" not in text


async def test_sigterm_closes_the_bot_then_its_database(world):
    await world.stop()  # the in-process bot lets go of the database file; the process below is the only user
    proc = await world.spawn()
    await world.emu.wait_until(lambda: "logged in as" in proc.log_path.read_text(), timeout=15,
                               what="the bot process to log that it is ready")
    proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(proc.wait(), 30)
    text = proc.log_path.read_text()
    assert proc.returncode == 0, text
    assert "Traceback" not in text
    # SQLite folds its write-ahead log back into the file when the last connection closes: the command line
    # closed the database after the bot, as it opened it before.
    wal = world.database_path.with_name(world.database_path.name + "-wal")
    assert world.database_path.exists() and not wal.exists()


# -- the bot's own set-up failing: one line, exit 1 --------------------------------------------------


async def test_unusable_database_path_is_one_line(tmp_path, discord_emulator):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the database's directory should be")
    path = blocker / "nanovoice.sqlite3"
    env = bot_env(tmp_path, DISCORD_TOKEN=discord_emulator.token, DISCORD_API_BASE=discord_emulator.api_base,
                  DISCORD_GATEWAY_URL=discord_emulator.gateway_url, DATABASE_PATH=str(path))
    code, _, err = await run_bot(tmp_path, env=env)
    assert code == 1
    assert "Traceback" not in err
    assert nanovoice_lines(err) == [f"nanovoice: can't open the database {path}: {blocker} is a file, not a "
                                    "directory; check DATABASE_PATH"]


async def test_a_file_that_is_no_database_is_one_line(tmp_path, discord_emulator):
    path = tmp_path / "nanovoice.sqlite3"
    path.write_bytes(b"this is not an SQLite database" * 100)
    env = bot_env(tmp_path, DISCORD_TOKEN=discord_emulator.token, DISCORD_API_BASE=discord_emulator.api_base,
                  DISCORD_GATEWAY_URL=discord_emulator.gateway_url, DATABASE_PATH=str(path))
    log_path = tmp_path / "bot.log"
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", cwd=str(tmp_path), env=env,
                                                    stdout=log_file, stderr=log_file)
    expected = f"nanovoice: can't open the database {path}: file is not a database; check DATABASE_PATH"
    try:
        await asyncio.wait_for(proc.wait(), 30)  # the process exits: no connection thread keeps it alive
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = log_path.read_text()
    assert proc.returncode == 1
    assert "Traceback" not in text
    assert nanovoice_lines(text) == [expected]


async def test_http_port_in_use_is_one_line(tmp_path, discord_emulator):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = bot_env(tmp_path, DISCORD_TOKEN=discord_emulator.token, DISCORD_API_BASE=discord_emulator.api_base,
                      DISCORD_GATEWAY_URL=discord_emulator.gateway_url, PUBLIC_BASE_URL="https://voices.example.com",
                      HTTP_PORT=str(port))
        code, _, err = await run_bot(tmp_path, env=env)
    assert code == 1
    assert "Traceback" not in err
    assert nanovoice_lines(err) == [f"nanovoice: can't serve HTTP on port {port}: address already in use; choose "
                                    "another HTTP_PORT"]
    assert discord_emulator.identify_count == 0
