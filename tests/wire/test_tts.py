"""bot.tts without Discord: voice resolution, autocomplete, the TTS cache and the ledger, against the
real fake NanoGPT server (real HTTP, real SQLite, real ffmpeg). The pure text rules are in
``tests/unit/test_tts.py``."""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
from decimal import Decimal

import aiohttp
import pytest

from bot.audio import encode_voice_message
from bot.clock import Clock
from bot.config import Config, Secret
from bot.embeddings import EmbeddingHost
from bot.errors import UserFacingError
from bot.limits import LimitExceeded, Limits
from bot.nanogpt import AuthError, ContentPolicyError, InsufficientBalance, NanoGPTClient, RateLimited
from bot.storage import Database
from bot.tts import AUTOCOMPLETE_LIMIT, TTSService
from tests import fixtures_db
from tests.fakes.nanogpt import fake_safetensors, make_tone

pytest_plugins = ["tests.fixtures_nanogpt"]

T0 = 1_750_000_000.0
DAY = 86_400
ALICE, BOB, GUILD = 1001, 1002, 77
MINIMAX_ID = "nv1abcdef0123"
EMBEDDING = fake_safetensors()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def add_minimax_voice(db: Database, user_id: int, name: str, voice_id: str = MINIMAX_ID) -> int:
    return await fixtures_db.add_minimax_voice(db, user_id, name, voice_id=voice_id, guild_id=GUILD, now=T0)


async def add_qwen_voice(db: Database, user_id: int, name: str, url: str | None, transcript: str | None = "hi there",
                         now: float = T0) -> int:
    return await fixtures_db.add_qwen_voice(db, user_id, name, embedding_url=url, embedding=EMBEDDING,
                                            transcript=transcript, guild_id=GUILD, now=now, lifetime=7 * DAY)


class Env:
    """A TTSService wired to real parts: SQLite, Limits, EmbeddingHost, NanoGPTClient → fake."""

    def __init__(self, db, fake, service, clock, host) -> None:
        self.db, self.fake, self.svc, self.clock, self.host = db, fake, service, clock, host

    async def say(self, user_id: int, guild_id: int | None, text: str, voice: str | None = None,
                  speed: float | None = None):
        """What the /say cog does around its defer: resolve the voice, then synthesise."""
        return await self.svc.synthesize(user_id, guild_id, text, await self.svc.resolve_voice(user_id, voice), speed)

    async def ledger(self) -> list:
        return [(r["state"], r["amount_micros"], r["currency"]) for r in await fixtures_db.ledger_rows(self.db)]


@pytest.fixture
async def env(tmp_path, fake_nanogpt):
    yield await make_env(tmp_path, fake_nanogpt)


async def make_env(tmp_path, fake, **config) -> Env:
    db = await Database(tmp_path / "speech.sqlite3").connect()
    session = aiohttp.ClientSession()
    clock = Clock(T0, frozen=True)
    cfg = Config(discord_token=Secret("discord-token-x"), nanogpt_api_key=Secret(fake.api_key),
                 nanogpt_base_url=fake.base_url, **config)
    client = NanoGPTClient(session, fake.base_url, fake.api_key, tts_poll_interval=0.01, backoff_base=0.01)
    host = EmbeddingHost(db, cfg, clock, session, http_host="127.0.0.1")
    await host.start()
    service = TTSService(db, client, Limits(db, cfg, clock), clock, cfg, host)
    fake.voices[MINIMAX_ID] = "run-1"  # a completed MiniMax clone at the fake
    env = Env(db, fake, service, clock, host)
    _cleanups.append((db, session, host, service))
    return env


_cleanups: list = []


@pytest.fixture(autouse=True)
async def _close_envs():
    yield
    while _cleanups:
        db, session, host, service = _cleanups.pop()
        await service.close()
        await host.close()
        await session.close()
        await db.close()


# -- voice resolution ------------------------------------------------------------------------------


async def test_resolution_order_and_isolation(env):
    db, svc = env.db, env.svc
    assert (await svc.resolve_voice(ALICE, None)).label == "Kokoro-82m/af_bella"
    voice_id = await add_minimax_voice(db, ALICE, "Narrator")
    mine = await svc.resolve_voice(ALICE, "nARRATOR")
    assert (mine.model, mine.voice, mine.label) == ("Minimax-Speech-02-HD", MINIMAX_ID, "Narrator")
    with pytest.raises(UserFacingError, match="You have no voice named “Narrator”"):
        await svc.resolve_voice(BOB, "Narrator")
    stock = await svc.resolve_voice(BOB, "Elevenlabs-Turbo-V2.5/Rachel")
    assert (stock.model, stock.voice, stock.saved) == ("Elevenlabs-Turbo-V2.5", "Rachel", None)
    await db.user_settings.set_default_voice(ALICE, voice_id, T0)
    assert (await svc.resolve_voice(ALICE, None)).voice == MINIMAX_ID
    assert (await svc.resolve_voice(BOB, None)).voice == "af_bella"  # Alice's default is hers only


async def test_autocomplete_lists_own_voices_first_never_others(env):
    db, svc = env.db, env.svc
    await add_minimax_voice(db, ALICE, "Bella Clone")
    await add_qwen_voice(db, BOB, "Bobs Secret", "https://x.invalid/e")
    choices = await svc.voice_choices(ALICE, "bel")
    assert choices[0] == ("Bella Clone (your MiniMax voice)", "Bella Clone")
    values = [v for _, v in choices]
    assert "Kokoro-82m/af_bella" in values and "Elevenlabs-Turbo-V2.5/Bella" in values
    everything = await svc.voice_choices(ALICE, "")
    assert len(everything) == AUTOCOMPLETE_LIMIT and everything[0][1] == "Bella Clone"
    assert everything[1][1] == "Kokoro-82m/af_bella"  # the configured default comes first among stock voices
    for query in ("", "bob", "secret", "Bobs Secret"):
        assert all("Bobs Secret" not in name for name, _ in await svc.voice_choices(ALICE, query))
    assert (await svc.voice_choices(ALICE, "afbel"))[0][1] == "Kokoro-82m/af_bella"  # subsequence
    assert (await svc.voice_choices(ALICE, "shimer"))[0][1].endswith("/shimmer")  # typo
    assert (await svc.voice_choices(ALICE, "Kokoro-82m/af_heart"))[0][1] == "Kokoro-82m/af_heart"
    typed = await svc.voice_choices(ALICE, "Kokoro-82m/zf_xiaobei")  # not listed, but a valid stock voice
    assert ("Kokoro-82m/zf_xiaobei · $0.001 per 1,000 characters", "Kokoro-82m/zf_xiaobei") in typed
    assert all(len(n) <= 100 and len(v) <= 100 for n, v in await svc.voice_choices(ALICE, "x" * 300))


# -- synthesis, the three response forms, the ledger --------------------------------------------------


@pytest.mark.parametrize(("mode", "fmt"), [("bytes", "mp3"), ("url", "wav"), ("ticket", "mp3")])
async def test_three_response_forms_give_the_exact_bytes(env, mode, fmt):
    env.fake.tts_mode, env.fake.tts_format = mode, fmt
    spoken = await env.say(ALICE, GUILD, "hello there", "Kokoro-82m/af_bella")
    assert spoken.audio == make_tone(1.0, fmt)
    assert spoken.filename == f"speech.{fmt}"
    assert not spoken.cached
    [request] = env.fake.tts_requests
    assert request == {"text": "hello there", "model": "Kokoro-82m", "voice": "af_bella"}
    assert await env.ledger() == [("charged", 11, "USD")]  # $0.001/1k × 11 chars, rounded


async def test_minimax_voice_reaches_tts_and_is_touched(env):
    voice_id = await add_minimax_voice(env.db, ALICE, "Narrator")
    spoken = await env.say(ALICE, GUILD, "read this", "narrator", 1.25)
    assert env.fake.tts_requests == [{"text": "read this", "model": "Minimax-Speech-02-HD", "voice": MINIMAX_ID,
                                      "speed": 1.25}]
    assert spoken.voice.label == "Narrator" and spoken.speed == 1.25
    assert (await env.db.voices.get(ALICE, voice_id)).last_used_at == T0


async def test_qwen_voice_sends_embedding_url_and_transcript(env):
    url = env.fake.put_storage("emb/speaker-embedding.safetensors", EMBEDDING, "application/octet-stream")
    await add_qwen_voice(env.db, ALICE, "Me", url, transcript="the quick brown fox")
    await env.say(ALICE, GUILD, "hello", "me")
    assert env.fake.tts_requests == [{"text": "hello", "model": "Qwen-3-TTS-1.7B",
                                      "speaker_voice_embedding_file_url": url,
                                      "reference_text": "the quick brown fox"}]
    assert env.fake.embedding_fetches == [(url, 200)]


async def test_dead_provider_embedding_falls_back_to_the_bots_own_copy(tmp_path, fake_nanogpt):
    port = free_port()
    env = await make_env(tmp_path, fake_nanogpt, public_base_url=f"http://127.0.0.1:{port}", http_port=port)
    url = fake_nanogpt.put_storage("emb/e.safetensors", EMBEDDING, "application/octet-stream")
    voice_id = await add_qwen_voice(env.db, ALICE, "Me", url)
    assert await env.host.url_for(await env.db.voices.get(ALICE, voice_id)) == url  # checked alive (cached)
    fake_nanogpt.expire_storage(url)  # …and then it vanishes: NanoGPT cannot load it
    spoken = await env.say(ALICE, GUILD, "still me", "Me")
    assert spoken.audio
    first, second = fake_nanogpt.tts_requests
    assert first["speaker_voice_embedding_file_url"] == url
    assert second["speaker_voice_embedding_file_url"].startswith(f"http://127.0.0.1:{port}/embeddings/")
    assert [r[0] for r in await env.ledger()] == ["charged"]  # one reservation, charged once


async def test_cache_hit_makes_no_second_request_or_charge(env):
    first = await env.say(ALICE, GUILD, "same words", "Kokoro-82m/af_bella")
    again = await env.say(ALICE, GUILD, "same words", "kokoro-82m/af_bella")
    assert again.cached and again.audio == first.audio and again.content_type == first.content_type
    assert len(env.fake.tts_requests) == 1 and len(env.fake.charges) == 1
    assert len(await env.ledger()) == 1
    await env.say(ALICE, GUILD, "same words", "Kokoro-82m/af_bella", 1.5)  # another speed: another entry
    await env.say(ALICE, GUILD, "same words", "Kokoro-82m/af_nova")  # another voice
    assert len(env.fake.tts_requests) == 3
    count, _ = await env.db.cache.stats()
    assert count == 3


async def test_concurrent_identical_requests_pay_once(env):
    env.fake.tts_latency = 0.2
    results = await asyncio.gather(*(env.say(ALICE, GUILD, "together", None) for _ in range(5)))
    assert len(env.fake.tts_requests) == 1
    assert sum(not r.cached for r in results) == 1


async def test_cache_is_bounded_and_forget_me_removes_entries(env):
    env.svc.cache_max_bytes = len(make_tone(1.0, "mp3")) * 2
    for word in ("one", "two", "three", "four"):
        await env.say(ALICE, GUILD, word, None)
    count, size = await env.db.cache.stats()
    assert count == 2 and size <= env.svc.cache_max_bytes
    await env.say(ALICE, GUILD, "four", None)
    assert len(env.fake.tts_requests) == 4  # the newest survived eviction
    assert await env.db.cache.delete_user_data(ALICE) == 2
    assert await env.db.cache.stats() == (0, 0)


async def test_forget_user_drops_only_that_users_voice_messages_and_cooldown(env):
    """The in-memory voice-message encodings and the cooldown are per user: forgetting alice leaves bob's."""
    mine = await env.say(ALICE, GUILD, "alice speaks", None)
    theirs = await env.say(BOB, GUILD, "bob speaks", None)
    await env.svc.voice_message(mine)
    await env.svc.voice_message(theirs)
    assert env.svc.cooldown.check(ALICE) is None and env.svc.cooldown.check(BOB) is None  # both just spoke
    assert await env.svc.forget_user(ALICE) == 1
    assert mine.cache_key not in env.svc._voice_messages and theirs.cache_key in env.svc._voice_messages
    assert env.svc.cooldown.check(ALICE) is None  # alice's last use is forgotten
    assert env.svc.cooldown.check(BOB) is not None  # bob is still cooling down
    assert await env.svc.forget_user(ALICE) == 0


# -- failures --------------------------------------------------------------------------------------


async def test_402_releases_and_logs_the_balance(env, caplog):
    env.fake.balance_usd = Decimal("0.0000123")
    with caplog.at_level(logging.WARNING, logger="bot.tts"), pytest.raises(InsufficientBalance) as err:
        await env.say(ALICE, GUILD, "expensive " * 20, "tts-1-hd/nova")
    assert err.value.user_message == "The bot's NanoGPT balance is too low; please tell the bot's operator."
    await asyncio.wait_for(env.svc.close(), 3)
    assert "NanoGPT balance too low: <$0.0001 left" in caplog.text
    assert [r[:2] for r in await env.ledger()] == [("released", 0)]


@pytest.mark.parametrize(("status", "body", "error", "sentence"), [
    (401, None, AuthError, "The bot's NanoGPT key was rejected; please tell the bot's operator."),
    (429, None, RateLimited, "NanoGPT is rate limiting; try again in 7 s."),
])
async def test_errors_carry_their_fixed_sentence(env, status, body, error, sentence):
    env.fake.fail_next("/tts", status, body, headers={"Retry-After": "7"} if status == 429 else None)
    with pytest.raises(error) as err:
        await env.say(ALICE, GUILD, "hello", None)
    assert err.value.user_message == sentence
    assert [r[0] for r in await env.ledger()] == ["released"]


async def test_content_policy_shows_its_own_message(env):
    with pytest.raises(ContentPolicyError) as err:
        await env.say(ALICE, GUILD, "some forbidden-content here", None)
    assert err.value.user_message.startswith("Content rejected by provider.")


async def test_deleted_minimax_voice_says_so(env):
    await add_minimax_voice(env.db, ALICE, "Old", voice_id="nvGone12345")
    with pytest.raises(UserFacingError, match="MiniMax no longer has the voice “Old”"):
        await env.say(ALICE, GUILD, "hello", "Old")


async def test_guild_budget_stops_speech(env):
    await env.db.guilds.update(GUILD, T0, daily_budget_micros=5)
    with pytest.raises(LimitExceeded, match="budget"):
        await env.say(ALICE, GUILD, "this is longer than five micro dollars " * 3, "tts-1/alloy")
    assert env.fake.tts_requests == []


async def test_cooldown_says_when_it_resets(env):
    await env.svc.check_cooldown(ALICE)
    with pytest.raises(UserFacingError, match=r"try again <t:\d+:R>"):
        await env.svc.check_cooldown(ALICE)
    await env.svc.check_cooldown(BOB)
    env.clock.advance(3)
    await env.svc.check_cooldown(ALICE)


# -- voice messages ----------------------------------------------------------------------------------


async def test_voice_message_encoding_is_remembered(env):
    spoken = await env.say(ALICE, GUILD, "voice note", None)
    encoded = await env.svc.voice_message(spoken)
    assert encoded.ogg.startswith(b"OggS") and 0.9 < encoded.duration < 1.2
    waveform = base64.b64decode(encoded.waveform_b64)
    assert 1 <= len(waveform) <= 256
    assert await env.svc.voice_message(spoken) is encoded
    assert (await encode_voice_message(spoken.audio)).duration == pytest.approx(encoded.duration)
