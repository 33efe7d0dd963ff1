"""Durable Qwen voices at the service level: which URL NanoGPT gets, the bot's own HTTP server, and
EMBEDDING_CHANNEL_ID re-hosting (with the Discord side replaced by plain callables).

The provider's storage is the fake NanoGPT's real ``/storage/…`` server; the bot's HTTP server is
real too, on a free local port.
"""

from __future__ import annotations

import logging
import math
import secrets
import socket
from collections import Counter
from dataclasses import replace

import aiohttp
import pytest

from bot.clock import Clock
from bot.config import Config, Secret
from bot.embeddings import (
    NO_DURABLE_STORAGE_WARNING,
    EmbeddingHost,
    EmbeddingUnavailable,
    parse_discord_expiry,
)
from bot.privacy import Privacy
from bot.storage import Database
from tests.fakes.nanogpt import fake_safetensors
from tests.fixtures_db import add_minimax_voice, add_qwen_voice, make_config

pytest_plugins = ["tests.fixtures_nanogpt"]

DAY = 86_400
T0 = 1_750_000_000.0
EMBEDDING = fake_safetensors()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def insert_qwen_voice(db: Database, user_id: int, name: str, *, embedding_url: str | None, now: float,
                            data: bytes = EMBEDDING, filename: str = "speaker-embedding.safetensors",
                            transcript: str | None = "hello there") -> int:
    """A completed Qwen voice as the clone service leaves it: stored file + provider URL + expiry."""
    return await add_qwen_voice(db, user_id, name, embedding_url=embedding_url, embedding=data, filename=filename,
                                transcript=transcript, guild_id=1, now=now, lifetime=7 * DAY)


async def insert_minimax_voice(db: Database, user_id: int, name: str, *, now: float,
                               voice_id: str = "nv1abcdef0123") -> int:
    return await add_minimax_voice(db, user_id, name, voice_id=voice_id, guild_id=1, now=now)


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def clock():
    return Clock(T0, frozen=True)


async def started(db, clock, session, **config) -> EmbeddingHost:
    host = EmbeddingHost(db, make_config(**config), clock, session, http_host="127.0.0.1")
    await host.start()
    return host


# -- no durable storage --------------------------------------------------------------------------


async def test_without_storage_warns_and_reports_when_the_voice_stops(db, clock, session, fake_nanogpt, caplog):
    url = fake_nanogpt.put_storage("embeddings/r1/speaker-embedding.safetensors", EMBEDDING,
                                   "application/octet-stream")
    with caplog.at_level(logging.WARNING, logger="bot.embeddings"):
        host = await started(db, clock, session)
    assert NO_DURABLE_STORAGE_WARNING in caplog.text
    assert "Qwen voices will stop working about 7 days after cloning" in caplog.text
    assert not host.durable and host.server is None
    voice = await db.voices.get(5, await insert_qwen_voice(db, 5, "Q", embedding_url=url, now=clock.now()))
    assert host.expires_at(voice) == T0 + 7 * DAY
    assert await host.url_for(voice) == url
    clock.advance(8 * DAY)  # nothing better exists: the provider URL is still what NanoGPT gets
    assert await host.url_for(voice) == url
    await host.close()


async def test_no_warning_when_storage_is_configured(db, clock, session, caplog):
    with caplog.at_level(logging.WARNING, logger="bot.embeddings"):
        host = await started(db, clock, session, embedding_channel_id=123)
    assert NO_DURABLE_STORAGE_WARNING not in caplog.text
    assert host.durable and host.mode == "discord"
    await host.close()


async def test_minimax_voices_have_no_embedding(db, clock, session):
    host = await started(db, clock, session)
    voice = await db.voices.get(5, await insert_minimax_voice(db, 5, "M", now=clock.now()))
    assert host.expires_at(voice) is None
    with pytest.raises(ValueError):
        await host.url_for(voice)
    await host.close()


async def test_a_voice_without_any_copy_says_so(db, clock, session):
    host = await started(db, clock, session)
    voice_id = await insert_qwen_voice(db, 5, "Gone", embedding_url=None, now=clock.now())
    with pytest.raises(EmbeddingUnavailable, match="clone it again"):
        await host.url_for(await db.voices.get(5, voice_id))
    await host.close()


# -- PUBLIC_BASE_URL ------------------------------------------------------------------------------


@pytest.fixture
async def http_host(db, clock, session):
    port = free_port()
    host = await started(db, clock, session, public_base_url=f"http://127.0.0.1:{port}", http_port=port)
    yield host
    await host.close()


async def test_fresh_provider_url_then_own_url_after_six_days(http_host, db, clock, session, fake_nanogpt):
    url = fake_nanogpt.put_storage("embeddings/r2/speaker-embedding.safetensors", EMBEDDING,
                                   "application/octet-stream")
    voice = await db.voices.get(5, await insert_qwen_voice(db, 5, "Q", embedding_url=url, now=clock.now()))
    assert http_host.durable and http_host.expires_at(voice) is None
    assert await http_host.url_for(voice) == url
    clock.advance(5 * DAY + 23 * 3600)
    assert await http_host.url_for(voice) == url
    clock.advance(2 * 3600)  # past six days: no longer trust the provider's copy
    own = await http_host.url_for(voice)
    assert own.startswith(f"{http_host.config.public_base_url}/embeddings/")
    assert own.endswith("/speaker-embedding.safetensors")
    async with session.get(own) as resp:
        assert resp.status == 200
        assert await resp.read() == EMBEDDING
        assert resp.headers["Content-Type"] == "application/octet-stream"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"


async def test_reported_dead_url_switches_to_the_stored_copy(http_host, db, clock, session, fake_nanogpt):
    url = fake_nanogpt.put_storage("embeddings/r3/speaker-embedding.safetensors", EMBEDDING,
                                   "application/octet-stream")
    voice = await db.voices.get(5, await insert_qwen_voice(db, 5, "Q", embedding_url=url, now=clock.now()))
    assert await http_host.url_for(voice) == url
    assert await http_host.report_dead_url(voice) is True
    own = await http_host.url_for(voice)  # same (stale) Voice object, as a retrying /say holds it
    assert own != url and "/embeddings/" in own
    # Remembered in the database: a fresh read (or a restart) still avoids the dead URL.
    fresh = await db.voices.get(5, voice.id)
    assert fresh.embedding_expires_at == clock.now()
    assert await http_host.url_for(fresh) == own
    # Reporting the bot's own URL changes nothing.
    assert await http_host.report_dead_url(fresh) is False


async def test_provider_404_is_detected_after_a_restart(db, clock, session, fake_nanogpt):
    url = fake_nanogpt.put_storage("embeddings/r4/speaker-embedding.safetensors", EMBEDDING,
                                   "application/octet-stream")
    voice_id = await insert_qwen_voice(db, 5, "Q", embedding_url=url, now=clock.now())
    port = free_port()
    settings = dict(public_base_url=f"http://127.0.0.1:{port}", http_port=port)
    host = await started(db, clock, session, **settings)
    assert await host.url_for(await db.voices.get(5, voice_id)) == url
    await host.close()
    fake_nanogpt.expire_storage(url)
    host = await started(db, clock, session, **settings)  # a new process: nothing remembered in memory
    own = await host.url_for(await db.voices.get(5, voice_id))
    assert "/embeddings/" in own
    async with session.get(own) as resp:
        assert resp.status == 200 and await resp.read() == EMBEDDING
    assert (await db.voices.get(5, voice_id)).embedding_expires_at == clock.now()
    await host.close()


async def test_healthz_and_nothing_else_is_served(http_host, db, clock, session):
    base = http_host.config.public_base_url
    voice = await db.voices.get(5, await insert_qwen_voice(db, 5, "Q", embedding_url=None, now=clock.now()))
    own = await http_host.url_for(voice)
    token = own.split("/embeddings/")[1].split("/")[0]
    async with session.get(f"{base}/healthz") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/json")
        assert (await resp.json())["status"] == "ok"
    wrong_token = secrets.token_urlsafe(32)
    for path in ("/", "/embeddings", "/embeddings/", f"/embeddings/{token}", f"/embeddings/{token}/",
                 f"/embeddings/{wrong_token}/speaker-embedding.safetensors", f"/embeddings/{token}/other.bin",
                 f"/embeddings/{token[:-1]}/speaker-embedding.safetensors", "/embeddings/x/y",
                 "/embeddings/%2e%2e/%2e%2e", "/storage/"):
        async with session.get(base + path) as resp:
            assert resp.status == 404, path
            assert EMBEDDING not in await resp.read()
    async with session.post(own) as resp:
        assert resp.status in (404, 405)


async def test_tokens_are_unguessable(http_host, db, clock):
    tokens = []
    for i in range(20):
        voice = await db.voices.get(5, await insert_qwen_voice(db, 5, f"Q{i}", embedding_url=None, now=clock.now()))
        url = await http_host.url_for(voice)
        tokens.append(url.split("/embeddings/")[1].split("/")[0])
    assert len(set(tokens)) == len(tokens)
    for token in tokens:
        assert len(token) >= 43  # token_urlsafe(32): 256 random bits
        assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    letters = Counter("".join(tokens))
    total = sum(letters.values())
    entropy = -sum(c / total * math.log2(c / total) for c in letters.values())
    assert entropy > 5.5  # close to log2(64) = 6 bits per character


async def test_http_port_zero_is_not_needed_but_a_busy_port_fails_loudly(db, clock, session):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        host = EmbeddingHost(db, make_config(public_base_url=f"http://127.0.0.1:{port}", http_port=port), clock,
                             session, http_host="127.0.0.1")
        with pytest.raises(OSError):
            await host.start()
        await host.close()


# -- EMBEDDING_CHANNEL_ID -----------------------------------------------------------------------


class FakeChannel:
    """The Discord side as the cog provides it: upload, re-fetch and delete messages."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.messages: dict[int, tuple[bytes, str]] = {}
        self.uploads = 0
        self.refreshes = 0
        self.deleted: list[int] = []
        self._ids = iter(range(1000, 10_000))

    def _url(self, message_id: int, filename: str) -> tuple[str, float]:
        expires = int(self.clock.now()) + DAY
        return (f"https://cdn.example/attachments/1/{message_id}/{filename}?ex={expires:x}&is={int(self.clock.now()):x}"
                f"&hm=abc", float(expires))

    async def rehost(self, data: bytes, filename: str) -> tuple[str, float | None, int]:
        self.uploads += 1
        message_id = next(self._ids)
        self.messages[message_id] = (data, filename)
        url, _ = self._url(message_id, filename)
        return url, None, message_id  # the host parses ``ex`` itself

    async def refresh(self, message_id: int) -> tuple[str, float | None]:
        self.refreshes += 1
        if message_id not in self.messages:
            raise LookupError(message_id)
        url, expires = self._url(message_id, self.messages[message_id][1])
        return url, expires

    async def delete(self, message_id: int) -> None:
        self.deleted.append(message_id)
        self.messages.pop(message_id, None)


async def test_channel_rehosting_and_refresh(db, clock, session, fake_nanogpt):
    host = await started(db, clock, session, embedding_channel_id=777)
    channel = FakeChannel(clock)
    host.set_discord_hooks(channel.rehost, channel.refresh, channel.delete)
    url = fake_nanogpt.put_storage("embeddings/r5/speaker-embedding.safetensors", EMBEDDING,
                                   "application/octet-stream")
    voice_id = await insert_qwen_voice(db, 5, "Q", embedding_url=url, now=clock.now())
    voice = await db.voices.get(5, voice_id)
    assert await host.url_for(voice) == url and channel.uploads == 0  # fresh: no upload yet
    clock.advance(6 * DAY + 1)
    first = await host.url_for(voice)
    assert first.startswith("https://cdn.example/") and channel.uploads == 1
    assert list(channel.messages.values()) == [(EMBEDDING, "speaker-embedding.safetensors")]
    assert parse_discord_expiry(first) == int(clock.now()) + DAY
    assert await host.url_for(voice) == first and channel.uploads == 1  # cached while fresh
    clock.advance(DAY - 1800)  # within the refresh margin of ``ex``
    second = await host.url_for(voice)
    assert second != first and channel.refreshes == 1 and channel.uploads == 1
    # The message was deleted in the channel: upload again, and forget the old one.
    channel.messages.clear()
    clock.advance(DAY)
    third = await host.url_for(voice)
    assert channel.uploads == 2 and third not in (first, second)
    stored = await db.files.get(voice.embedding_file_id)
    assert stored.discord_url == third and stored.discord_message_id in channel.messages
    # A reported dead CDN URL is refreshed on the next call.
    assert await host.report_dead_url(voice, third) is True
    assert (await db.files.get(voice.embedding_file_id)).discord_url is None
    await host.url_for(voice)
    assert channel.refreshes == 3
    # Deleting the voice deletes its copy in the channel.
    message_id = (await db.files.get(voice.embedding_file_id)).discord_message_id
    assert await host.delete_voice(5, voice_id)
    assert message_id in channel.deleted and await db.files.get(voice.embedding_file_id) is None
    await host.close()


async def test_channel_mode_without_hooks_falls_back_to_the_provider(db, clock, session):
    host = await started(db, clock, session, embedding_channel_id=777)
    voice = await db.voices.get(5, await insert_qwen_voice(db, 5, "Q", embedding_url="http://127.0.0.1:9/x",
                                                         now=clock.now()))
    clock.advance(8 * DAY)
    assert await host.url_for(voice) == "http://127.0.0.1:9/x"
    await host.close()


async def test_forget_user_removes_files_and_channel_copies(db, clock, session):
    host = await started(db, clock, session, embedding_channel_id=777)
    channel = FakeChannel(clock)
    host.set_discord_hooks(channel.rehost, channel.refresh, channel.delete)
    mine = await db.voices.get(5, await insert_qwen_voice(db, 5, "Q", embedding_url=None, now=clock.now()))
    theirs = await db.voices.get(6, await insert_qwen_voice(db, 6, "Q", embedding_url=None, now=clock.now()))
    await host.url_for(mine)
    await host.url_for(theirs)
    assert len(channel.messages) == 2
    privacy = Privacy(db)
    privacy.register("embeddings", host)
    done = await privacy.forget(5)
    assert done.count("voices") == 1 and done.count("stored_files") == 1 and done.forgotten["embeddings"] >= 1
    assert not any((await privacy.stored(5)).values()) and await db.files.for_user(5) == []
    assert len(channel.messages) == 1 and len(await db.files.for_user(6)) == 1
    # Only user 6's URL is still remembered; forgetting 5 again finds nothing of theirs.
    assert mine.id not in host._last_url and theirs.id in host._last_url
    assert await host.forget_user(5) == 0
    await host.close()


async def test_a_voice_never_resolves_another_users_file(http_host, db, clock):
    other = await db.voices.get(6, await insert_qwen_voice(db, 6, "Q", embedding_url=None, now=clock.now()))
    mine = await db.voices.get(5, await insert_qwen_voice(db, 5, "Q", embedding_url=None, now=clock.now()))
    forged = replace(mine, embedding_file_id=other.embedding_file_id)
    with pytest.raises(EmbeddingUnavailable):
        await http_host.url_for(forged)


def test_parse_discord_expiry():
    assert parse_discord_expiry("https://cdn.discordapp.com/a/1/2/f.bin?ex=6846a1b2&is=1&hm=2") == 0x6846A1B2
    assert parse_discord_expiry("https://cdn.discordapp.com/a/1/2/f.bin") is None
    assert parse_discord_expiry("https://cdn.discordapp.com/a/1/2/f.bin?ex=zz") is None


async def test_qwen_voice_speaks_after_the_provider_copy_is_gone_and_a_restart(tmp_path, fake_nanogpt):
    """Real TTSService + NanoGPTClient against the fake: after the provider's URL 404s and the bot
    restarts, /say's TTS request carries the bot's own URL, which NanoGPT (the fake) downloads."""
    from bot.limits import Limits
    from bot.nanogpt import NanoGPTClient
    from bot.tts import TTSService

    port = free_port()
    settings = dict(public_base_url=f"http://127.0.0.1:{port}", http_port=port,
                    nanogpt_base_url=fake_nanogpt.base_url)
    clock = Clock(T0, frozen=True)
    url = fake_nanogpt.put_storage("embeddings/r9/speaker-embedding.safetensors", EMBEDDING,
                                   "application/octet-stream")

    async def boot():
        db = await Database(tmp_path / "restart.sqlite3").connect()
        session = aiohttp.ClientSession()
        cfg = Config(discord_token=Secret("discord-token-x"), nanogpt_api_key=Secret(fake_nanogpt.api_key),
                     **settings)
        host = EmbeddingHost(db, cfg, clock, session, http_host="127.0.0.1")
        await host.start()
        client = NanoGPTClient(session, fake_nanogpt.base_url, fake_nanogpt.api_key, tts_poll_interval=0.01,
                               backoff_base=0.01)
        service = TTSService(db, client, Limits(db, cfg, clock), clock, cfg, host)

        async def shutdown():
            await service.close()
            await host.close()
            await session.close()
            await db.close()

        return db, service, shutdown

    db, service, shutdown = await boot()
    await insert_qwen_voice(db, 5, "Me", embedding_url=url, now=clock.now())
    await service.synthesize(5, 1, "first words", await service.resolve_voice(5, "Me"))
    assert fake_nanogpt.tts_requests[-1]["speaker_voice_embedding_file_url"] == url
    await shutdown()

    fake_nanogpt.expire_storage(url)
    clock.advance(3 * DAY)  # well inside the 6 days: only the check notices that the copy is gone
    db, service, shutdown = await boot()
    try:
        spoken = await service.synthesize(5, 1, "still my voice", await service.resolve_voice(5, "Me"))
        assert spoken.audio
        sent = fake_nanogpt.tts_requests[-1]["speaker_voice_embedding_file_url"]
        assert sent.startswith(f"http://127.0.0.1:{port}/embeddings/")
        assert len(fake_nanogpt.tts_requests) == 2  # no failed attempt with the dead URL first
        assert fake_nanogpt.embedding_fetches[-1] == (sent, 200)
    finally:
        await shutdown()
