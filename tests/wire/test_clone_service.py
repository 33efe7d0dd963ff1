"""CloneService without Discord: real SQLite (and PostgreSQL: every test runs on both), real audio, the real
NanoGPT client against the fake.

The user-visible flows (cards, buttons, modals, restarts of a real process) are in
``test_clone_flow.py``; here the service's money and polling rules are pinned down directly. Its pure
helpers (voice ids, names) are in ``tests/unit/test_clone_service.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time

import aiohttp
import pytest

from bot import providers
from bot.clock import Clock
from bot.cloning import (
    LOST_AFTER_RESTART,
    LOST_AFTER_TIMEOUT,
    ClipSource,
    CloneRequest,
    CloneService,
    InteractionRef,
    make_custom_voice_id,
)
from bot.config import Config, Secret
from bot.embeddings import EmbeddingHost
from bot.errors import UserFacingError
from bot.limits import LimitExceeded, Limits
from bot.nanogpt import InvalidRequest, NanoGPTClient
from bot.storage import Database
from bot.tts import TTSService
from bot.voices import VoiceService
from tests.fakes.nanogpt import Step
from tests.fixtures_db import add_qwen_voice, ledger_rows
from tests.fixtures_postgres import BACKENDS, fresh_schema

pytest_plugins = ["tests.fixtures_nanogpt", "tests.fixtures_audio"]

VOICE_ID = re.compile(r"^[A-Za-z][A-Za-z0-9]{7,}$")


class Recorder:
    """JobEvents that records what the user would see; ``fail`` makes the next deliveries raise."""

    def __init__(self) -> None:
        self.notices = []
        self.progress = []
        self.fail = 0
        self.failures = 0
        self._changed = asyncio.Event()

    async def show_progress(self, job) -> None:
        self.progress.append(job.state)

    async def deliver_notice(self, job, notice) -> None:
        if self.fail:
            self.fail -= 1
            self.failures += 1
            self._changed.set()
            raise RuntimeError("Discord is down")
        self.notices.append((job, notice))
        self._changed.set()

    async def wait(self, count: int = 1, seconds: float = 10.0, *, failures: int = 0):
        """The ``count``-th notice (or, with ``failures``, that many failed deliveries), within ``seconds``."""
        async with asyncio.timeout(seconds):
            while len(self.notices) < count if not failures else self.failures < failures:
                self._changed.clear()
                await self._changed.wait()
        return self.notices[count - 1] if not failures else None


class Env:
    def __init__(self, tmp_path, fake, audio_corpus, target=None) -> None:
        self.path = target if target is not None else tmp_path / "db.sqlite3"  # a file, or a PostgreSQL URL
        self.fake = fake
        self.corpus = audio_corpus
        self.clock = Clock()
        self.config = Config(discord_token=Secret("t"), nanogpt_api_key=Secret(fake.api_key),
                             nanogpt_base_url=fake.base_url, clone_daily_limit=3, guild_daily_budget_micros=0)
        self.pollers: list[asyncio.Task] = []

    async def start(self) -> CloneService:
        """A fresh process: new connection, client and service over the same database file."""
        self.session = aiohttp.ClientSession()
        self.db = await Database(self.path).connect()
        nanogpt = NanoGPTClient(self.session, self.fake.base_url, self.fake.api_key, timeout=5, backoff_base=0.01)
        self.limits = Limits(self.db, self.config, self.clock)
        embeddings = EmbeddingHost(self.db, self.config, self.clock, self.session)
        tts = TTSService(self.db, nanogpt, self.limits, self.clock, self.config, embeddings)
        voices = VoiceService(self.db, self.clock, embeddings)
        self.service = CloneService(self.db, nanogpt, self.limits, self.clock, self.config, tts, embeddings,
                                    voices)
        self.service.backoff_base = 0.05
        self.events = Recorder()
        self.pollers.append(asyncio.create_task(self.service.run_poller(self.events)))
        return self.service

    async def stop(self) -> None:
        """The process ends (the poller is cancelled mid-whatever)."""
        poller = self.pollers.pop()
        poller.cancel()
        await asyncio.gather(poller, return_exceptions=True)
        await self.db.close()
        await self.session.close()

    def request(self, name="Alice", provider="minimax", user_id=1, **kw) -> CloneRequest:
        return CloneRequest(user_id=user_id, guild_id=10, channel_id=20, name=name, provider=provider, **kw)

    def clip(self, kind="mp3", seconds=12.0) -> ClipSource:
        data = self.corpus(kind, seconds)

        async def read() -> bytes:
            return data

        return ClipSource(self.corpus.filename(kind, seconds), len(data), 10 * 1024 * 1024, read)

    async def prepare(self, request, clip):
        """What the clone cog does: the checks before its defer, then download and normalise."""
        return await self.service.prepare_audio(await self.service.check(request, clip), clip)

    async def clone(self, name="Alice", provider="minimax", kind="mp3", seconds=12.0, **kw):
        prepared = await self.prepare(self.request(name, provider, **kw), self.clip(kind, seconds))
        where = InteractionRef(30, f"token-{name}", self.clock.now() + 900)
        return await self.service.submit(prepared, where)

    async def ledger(self):
        return [{k: r[k] for k in ("kind", "state", "amount_micros")} for r in await ledger_rows(self.db)]


@pytest.fixture(params=BACKENDS)
async def database_target(request, tmp_path):
    """The database every "process" of a test opens: an SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield tmp_path / "db.sqlite3"
        return
    async with fresh_schema(request.getfixturevalue("postgres_server")) as url:
        yield url


@pytest.fixture
async def env(tmp_path, fake_nanogpt, audio_corpus, database_target):
    environment = Env(tmp_path, fake_nanogpt, audio_corpus, database_target)
    await environment.start()
    yield environment
    while environment.pollers:
        await environment.stop()


# -- the happy paths ---------------------------------------------------------------------------------


async def test_minimax_clone_is_recorded_polled_saved_and_sampled(env):
    job = await env.clone("Alice", "minimax")
    assert job.state == "pending" and job.run_id and job.cost_micros == 1_000_000
    (submit,) = env.fake.submits
    voice_id = submit.fields["customVoiceId"]
    assert VOICE_ID.match(voice_id) and any(c.isdigit() for c in voice_id) and voice_id == job.custom_voice_id
    assert submit.files[0].content_type in ("audio/mpeg", "audio/mp3")
    done, notice = await env.events.wait()
    assert notice.outcome == "completed" and notice.sample and notice.sample_filename == "sample.mp3"
    voice = await env.db.voices.by_name(1, "alice")
    assert voice.provider_voice_id == voice_id and done.voice_id == voice.id
    assert (await env.db.jobs.get(job.id)).notified_at is not None
    (tts,) = env.fake.tts_requests
    assert tts["voice"] == voice_id and tts["model"] == env.config.minimax_tts_model
    ledger = await env.ledger()
    assert len(ledger) == 2  # the check before consent reserves nothing
    assert ledger[0] == {"kind": "clone", "state": "charged", "amount_micros": 1_000_000}
    assert ledger[1]["kind"] == "tts" and ledger[1]["state"] == "charged"  # the sample, like any speech


async def test_qwen_clone_stores_the_embedding_and_sends_the_transcript(env):
    await env.clone("Bob", "qwen", kind="voice_ogg", seconds=5, transcript="  the quick   brown fox ")
    _, notice = await env.events.wait()
    assert notice.outcome == "completed"
    assert env.fake.submits[0].fields["referenceText"] == "the quick brown fox"
    voice = await env.db.voices.by_name(1, "bob")
    stored = await env.db.files.get(voice.embedding_file_id)
    embedding = env.fake.storage[voice.embedding_url.rsplit("/storage/", 1)[1]][0]
    assert await env.db.files.data(stored.id) == embedding and len(stored.token) >= 43
    assert voice.embedding_expires_at == pytest.approx(env.clock.now() + 7 * 86400, abs=60)
    assert voice.transcript == "the quick brown fox"
    assert env.fake.tts_requests[0]["reference_text"] == "the quick brown fox"


async def test_poll_after_header_is_honoured(env):
    """X-Poll-After: 2 for a run that takes 10 s: polls at 0, 2, 4, 6, 8, 10 s."""
    env.fake.complete_after(10, poll_after=2)
    started = time.monotonic()
    job = await env.clone("Patient", "qwen", seconds=4)
    await env.events.wait(seconds=15)
    polls = len(env.fake.status_polls[job.run_id])
    print(f"\nX-Poll-After 2 s for 10 s: {polls} polls, notice {time.monotonic() - started:.2f} s after submit")
    assert 5 <= polls <= 6


# -- faults --------------------------------------------------------------------------------------------


async def test_status_faults_back_off_and_end_in_success(env):
    env.fake.clone_script = [
        Step("processing", poll_after=0.05), Step(http_status=500), Step(http_status=503), Step(http_status=500),
        Step(http_status=429, retry_after=0.2), Step(http_status=429, retry_after=0.2),
        Step("processing", delay=0.5, poll_after=0.05), Step("completed"),
    ]
    job = await env.clone("Sturdy", "qwen", seconds=4)
    _, notice = await env.events.wait()
    assert notice.outcome == "completed"
    assert len(env.fake.status_polls[job.run_id]) == 8 and len(env.fake.submits) == 1


async def test_failed_job_shows_nanogpts_reason(env):
    env.fake.clone_script = [Step("processing", poll_after=0.05), Step("failed", error="Audio contains no speech")]
    await env.clone("Mute", "qwen", seconds=4)
    job, notice = await env.events.wait()
    assert notice.outcome == "failed" and "Audio contains no speech" in notice.message
    assert job.state == "failed" and await env.db.voices.by_name(1, "Mute") is None


async def test_a_job_fails_after_30_minutes(env):
    env.fake.clone_script = [Step("processing", poll_after=0.1)]
    await env.clone("Slow", "qwen", seconds=4)
    await asyncio.sleep(0.3)
    env.clock.advance(31 * 60)
    _, notice = await env.events.wait()
    assert "30 minutes" in notice.message


async def test_submit_refused_releases_the_quota(env):
    env.fake.fail_next("/voice-clone/minimax", 400, {"error": "Invalid audio format"})
    with pytest.raises(InvalidRequest) as info:
        await env.clone("Nope", "minimax")
    assert "Invalid audio format" in info.value.user_message
    (job,) = await env.db.jobs.for_user(1)
    assert job.state == "failed" and job.notified_at is not None
    assert [r["state"] for r in await env.ledger()] == ["released"]


async def test_submit_answer_lost_marks_the_job_lost_and_keeps_the_reservation(env):
    env.fake.fail_next("/voice-clone/minimax", drop=True)
    with pytest.raises(UserFacingError) as info:
        await env.clone("Ghost", "minimax")
    assert str(info.value) == LOST_AFTER_TIMEOUT == (
        "NanoGPT stopped answering after I sent your clone, so I can't tell whether it got it and charged for it. "
        "I won't send it again, so nothing is charged twice; the bot's operator can check NanoGPT's dashboard.")
    (job,) = await env.db.jobs.for_user(1)
    assert job.state == "lost" and job.run_id is None
    assert [r["state"] for r in await env.ledger()] == ["reserved"]
    await asyncio.sleep(0.3)
    assert len(env.fake.submits) == 1 and env.events.notices == []  # the user saw it on the spot


async def test_notice_is_retried_when_discord_fails_and_sent_once(env):
    env.events.fail = 2
    await env.clone("Retry", "qwen", seconds=4)
    await env.events.wait()
    await asyncio.sleep(0.5)
    assert len(env.events.notices) == 1 and len(env.fake.tts_requests) == 1  # the sample was not paid twice


async def test_name_taken_while_cloning_is_saved_with_a_suffix(env):
    env.fake.clone_script = [Step("processing", poll_after=0.3), Step("completed")]
    job = await env.clone("Echo", "qwen", seconds=4)
    await env.db.voices.rename(1, await add_qwen_voice(env.db, 1, "Other"), "ECHO")  # a rename landed meanwhile
    _, notice = await env.events.wait()
    assert notice.voice_name == "Echo (2)" and "saved as “Echo (2)”" in notice.message
    assert (await env.db.voices.by_name(1, "echo (2)")).id == (await env.db.jobs.get(job.id)).voice_id


# -- limits and names -------------------------------------------------------------------------------------


async def test_ten_simultaneous_clones_against_a_limit_of_three(env):
    env.fake.clone_script = [Step("processing", poll_after=0.05), Step("completed")]
    results = await asyncio.gather(*(env.clone(f"v{i}", "qwen", seconds=4) for i in range(10)),
                                   return_exceptions=True)
    assert sum(not isinstance(r, BaseException) for r in results) == 3
    assert all(isinstance(r, LimitExceeded) for r in results if isinstance(r, BaseException))
    assert len(env.fake.submits) == 3
    await env.events.wait(3)


async def test_duplicate_names_are_refused_before_any_request(env):
    env.fake.clone_script = [Step("processing", poll_after=0.2), Step("completed")]
    await env.clone("Twin", "qwen", seconds=4)
    with pytest.raises(UserFacingError, match="already in progress"):
        await env.clone("TWIN", "qwen", seconds=4)
    await env.events.wait()
    with pytest.raises(UserFacingError, match="already have a voice"):
        await env.clone("twin", "qwen", seconds=4)
    assert len(env.fake.submits) == 1


# -- restarts ------------------------------------------------------------------------------------------------


async def test_restart_resumes_open_jobs_and_notifies_exactly_once(env):
    env.fake.clone_script = [Step("processing", poll_after=0.2)] * 3 + [Step("completed")]
    job = await env.clone("Phoenix", "minimax")
    await asyncio.sleep(0.1)
    await env.stop()  # the process dies mid-job
    assert env.fake.status_polls[job.run_id]
    await env.start()
    done, notice = await env.events.wait()
    assert notice.outcome == "completed" and done.id == job.id
    await asyncio.sleep(0.3)
    assert len(env.events.notices) == 1 and len(env.fake.submits) == 1
    assert len(await env.db.voices.list(1)) == 1


async def test_finished_but_unnotified_jobs_are_notified_after_a_restart(env):
    env.events.fail = 100  # Discord is unreachable until the process dies
    await env.clone("Late", "qwen", seconds=4)
    await env.events.wait(failures=2)
    assert (await env.db.jobs.for_user(1))[0].state == "completed"
    await env.stop()
    await env.start()
    _, notice = await env.events.wait()
    assert notice.outcome == "completed"
    await asyncio.sleep(0.3)
    assert len(env.events.notices) == 1


async def test_a_submit_cut_off_by_a_crash_is_lost_not_resubmitted(env):
    await env.stop()
    # What a crash between "row written" and "run id recorded" leaves behind.
    db = await Database(env.path).connect()
    await db.jobs.create(user_id=1, guild_id=10, channel_id=20, application_id=30, interaction_token="t",
                         token_expires_at=env.clock.now() + 900, voice_name="Limbo", provider="minimax",
                         transcript=None, clone_model=None, now=env.clock.now(),
                         make_custom_voice_id=make_custom_voice_id)
    await db.close()
    await env.start()
    job, notice = await env.events.wait()
    assert notice.outcome == "lost" and notice.message == LOST_AFTER_RESTART and job.state == "lost"
    assert LOST_AFTER_RESTART == (
        "I restarted while sending your clone, so I can't tell whether NanoGPT got it and charged for it. "
        "I won't send it again, so nothing is charged twice; the bot's operator can check NanoGPT's dashboard.")
    await env.stop()
    await env.start()  # and again: told once only
    await asyncio.sleep(0.3)
    assert env.events.notices == [] and env.fake.submits == []


# -- rejections (the audio and name cases are in test_clone_flow.py, over the wire) ---------------------------


async def test_guild_policy_and_daily_limit_refuse_before_any_request(env):
    await env.db.guilds.update(10, env.clock.now(), clones_enabled=False)
    with pytest.raises(UserFacingError):
        await env.clone("Blocked")
    await env.db.guilds.update(10, env.clock.now(), clones_enabled=None)
    env.fake.clone_script = [Step("completed")]
    for i in range(3):
        await env.clone(f"ok{i}", "qwen", seconds=4)
    with pytest.raises(LimitExceeded, match="resets"):
        await env.clone("one-too-many", "qwen", seconds=4)
    assert len(env.fake.submits) == 3


async def test_the_reserved_price_and_the_clip_rule_come_from_the_provider_table(env, monkeypatch):
    cheaper = dataclasses.replace(providers.PROVIDERS["minimax"], price_micros=700_000, min_s=15)
    monkeypatch.setitem(providers.PROVIDERS, "minimax", cheaper)
    with pytest.raises(UserFacingError) as short:  # 12 s was enough before, not with a 15 s minimum
        await env.prepare(env.request("Short"), env.clip("mp3", 12.0))
    assert "MiniMax needs at least 15 seconds" in str(short.value)
    env.fake.fail_next("/voice-clone/minimax", drop=True)  # the reservation stays, so we can read its amount
    with pytest.raises(UserFacingError):
        await env.clone("Priced", "minimax", seconds=16.0)
    assert await env.ledger() == [{"kind": "clone", "state": "reserved", "amount_micros": 700_000}]
