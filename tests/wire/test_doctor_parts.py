"""`nanovoice check` pieces against local servers: NanoGPT (the fake), the Docker health check asking the
bot's ``/healthz``, and checks that time out on a server that never answers. The pieces that need no server
are in ``tests/unit/test_doctor_parts.py``."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from aiohttp import ClientSession, web

from bot import doctor
from bot.config import Secret
from bot.doctor import check_nanogpt, health
from tests.fixtures_db import make_config

pytest_plugins = ["tests.fixtures_nanogpt"]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_nanogpt_balance(fake_nanogpt):
    fake_nanogpt.balance_usd = Decimal("12.3456789")
    config = make_config(nanogpt_base_url=fake_nanogpt.base_url, nanogpt_api_key=Secret(fake_nanogpt.api_key))
    result = await check_nanogpt(config)
    assert result.problems == 0
    assert result.lines == [f"ok: NanoGPT key accepted; balance $12.35 and {fake_nanogpt.balance_nano} XNO"]
    assert [r.path for r in fake_nanogpt.requests] == ["/check-balance"]


async def test_nanogpt_wrong_key(fake_nanogpt):
    config = make_config(nanogpt_base_url=fake_nanogpt.base_url, nanogpt_api_key=Secret("sk-nano-wrong-key"))
    result = await check_nanogpt(config)
    assert result.problems == 1
    assert result.lines[0].startswith("problem: NanoGPT rejected NANOGPT_API_KEY (HTTP 401)")
    assert "sk-nano-wrong-key" not in result.lines[0]


async def test_nanogpt_empty_balance_is_a_problem(fake_nanogpt):
    fake_nanogpt.balance_usd = Decimal(0)
    fake_nanogpt.balance_nano = Decimal(0)
    config = make_config(nanogpt_base_url=fake_nanogpt.base_url, nanogpt_api_key=Secret(fake_nanogpt.api_key))
    result = await check_nanogpt(config)
    assert result.lines == ["problem: NanoGPT key works but the balance is $0.00; top up at nano-gpt.com before "
                            "anyone clones or speaks"]


async def test_nanogpt_unreachable():
    base = f"http://127.0.0.1:{closed_port()}/api"
    result = await check_nanogpt(make_config(nanogpt_base_url=base))
    assert result.problems == 1
    assert result.lines[0].startswith(f"problem: NanoGPT at {base} is not answering (")


# -- the Docker HEALTHCHECK ------------------------------------------------------------------------


async def test_health_asks_healthz_when_the_http_server_runs(tmp_path):
    status = {"code": 200}

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"}, status=status["code"])

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    env = {"PUBLIC_BASE_URL": "https://voices.example.com", "HTTP_PORT": str(port),
           "DATABASE_PATH": str(tmp_path / "missing.sqlite3")}
    try:
        assert await asyncio.to_thread(health, env) == 0
        status["code"] = 503
        assert await asyncio.to_thread(health, env) == 1
    finally:
        await runner.cleanup()
    assert health({**env, "HTTP_PORT": str(closed_port())}) == 1


# -- every check is announced before it runs and given up after CHECK_TIMEOUT without an answer ------------


@pytest.fixture
async def silent_server() -> AsyncIterator[str]:
    """Accepts connections and reads requests but never answers: http://127.0.0.1:PORT."""
    writers: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_check_that_never_answers_is_a_timeout_problem_after_it_was_announced(
        monkeypatch, tmp_path, silent_server, fake_nanogpt):
    monkeypatch.setattr(doctor, "CHECK_TIMEOUT", 0.5)
    config = make_config(discord_api_base=f"{silent_server}/api/v10", nanogpt_base_url=fake_nanogpt.base_url,
                         nanogpt_api_key=Secret(fake_nanogpt.api_key), database_path=tmp_path / "db.sqlite3")
    loop = asyncio.get_running_loop()
    shown: list[tuple[float, str]] = []
    started = loop.time()
    code = await doctor.run_check(config, report=lambda line: shown.append((loop.time() - started, line)))
    lines = [line for _, line in shown]
    assert code == 1
    heading = f"checking Discord at {silent_server}/api/v10…"
    problem = (f"problem: Discord at {silent_server}/api/v10 didn't answer within 0.5 s; check DISCORD_API_BASE "
               "and the network")
    assert lines[lines.index(heading) + 1] == problem
    at = {line: when for when, line in shown}
    assert 0.45 <= at[problem] - at[heading] < 3
    assert [line for line in lines if line.startswith("problem:")] == [problem]
    assert lines[-1] == "nanovoice check: 1 problem found"
    assert lines.index(f"checking NanoGPT at {fake_nanogpt.base_url}…") == lines.index(problem) + 1


async def test_a_slow_but_answering_discord_is_no_timeout(monkeypatch, tmp_path, discord_emulator, fake_nanogpt):
    """Each Discord answer gives the check CHECK_TIMEOUT again: five answers 0.2 s apart take longer than
    the timeout in all, and that is fine; silence is what times out."""
    monkeypatch.setattr(doctor, "CHECK_TIMEOUT", 0.6)
    forwarded: list[str] = []

    async def slow_proxy(request: web.Request) -> web.Response:
        await asyncio.sleep(0.2)
        forwarded.append(request.path)
        async with ClientSession() as session, session.request(
                request.method, f"http://127.0.0.1:{discord_emulator.port}{request.path_qs}",
                headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
                data=await request.read()) as upstream:
            return web.Response(status=upstream.status, body=await upstream.read(),
                                content_type=upstream.content_type)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", slow_proxy)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    proxy = f"http://127.0.0.1:{runner.addresses[0][1]}/api/v10"
    try:
        config = make_config(discord_api_base=proxy, discord_token=Secret(discord_emulator.token),
                             nanogpt_base_url=fake_nanogpt.base_url, nanogpt_api_key=Secret(fake_nanogpt.api_key),
                             database_path=tmp_path / "db.sqlite3")
        lines: list[str] = []
        code = await doctor.run_check(config, report=lines.append)
    finally:
        await runner.cleanup()
    assert code == 0, lines
    assert len(forwarded) >= 5 and 0.2 * len(forwarded) > doctor.CHECK_TIMEOUT
    bot = discord_emulator.bot_user
    assert f"ok: logged in to Discord as {bot.name} ({bot.id}), in 1 server" in lines
