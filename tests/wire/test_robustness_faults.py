"""Robustness under faults, over the wire: the real bot against the Discord emulator and the fake NanoGPT.

NanoGPT faults (timeouts, 5xx, 429 storms, malformed JSON, truncated audio and downloads), Discord
faults (429 on followups and card edits, 10062 on the callback, a gateway disconnect and RESUME in the
middle of a clone job) and SIGKILL of a real ``python -m bot`` process with several users' jobs in
flight. After every fault the user has a final answer (never "thinking…") in one clear sentence, or
the job still finishes; paid requests are never sent twice and every job is told exactly once.

The single-job SIGKILL cases (during submit, during polling) live in ``tests/test_clone_flow.py``;
here they are combined across users and restarts.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from bot.cloning import LOST_AFTER_RESTART, LOST_AFTER_TIMEOUT
from tests.fakes.discord import EmuInteraction, EmuMessage
from tests.fakes.nanogpt import Step, make_tone
from tests.fixtures_bot import World
from tests.fixtures_db import ledger_rows

NOT_ANSWERING = "NanoGPT is not answering; try again in a moment."
KEY_REJECTED = "The bot's NanoGPT key was rejected; please tell the bot's operator."
QUICK = [Step("processing", poll_after=0.05), Step("completed")]


# -- helpers ------------------------------------------------------------------------------------------


def fast(world: World) -> None:
    """Short client timeouts and backoffs, so faults cost milliseconds instead of seconds."""
    nano = world.bot.nanogpt
    nano.timeout = 0.5
    nano.backoff_base = 0.01
    nano.backoff_max = 0.05
    nano.tts_poll_interval = 0.02
    world.bot.clones.backoff_base = 0.02
    world.bot.clones.backoff_cap = 0.2


async def say(world: World, user, text: str, **options) -> EmuMessage:
    inter = await world.emu.slash(user, "say", options={"text": text, **options})
    return await inter.wait_final(10)


def tts_posts(world: World) -> list:
    return [r for r in world.nano.requests if r.method == "POST" and r.path == "/tts"]


def assert_sentence(message: EmuMessage, expected: str | None = None) -> str:
    """A final answer that is one clear sentence (not the generic apology, no attachment)."""
    assert not message.loading, "left at thinking…"
    text = message.content
    assert text and "\n" not in text and text.endswith("."), message
    assert "error id" not in text and "Traceback" not in text, text
    assert not message.files, message
    if expected is not None:
        assert text == expected
    return text


def assert_speech(message: EmuMessage, text: str) -> None:
    assert [f.filename for f in message.files] == ["speech.mp3"], message
    assert message.content.startswith(f"> {text}")


def card_embed(message: EmuMessage | None) -> dict:
    return message.embeds[0] if message is not None and message.embeds else {}


def is_ready(message: EmuMessage | None) -> bool:
    return card_embed(message).get("title", "").startswith("Voice ")


async def clone(world: World, user, data: bytes, *, name: str, provider: str = "qwen") -> EmuInteraction:
    attachment = world.emu.add_attachment(data, "clip.mp3", "audio/mpeg")
    return await world.emu.slash(user, "voice", subcommand="clone",
                                 options={"audio": attachment, "name": name, "provider": provider})


async def wait_ready(world: World, inter: EmuInteraction, timeout: float = 15.0) -> EmuMessage:  # noqa: ASYNC109
    await world.emu.wait_until(lambda: is_ready(inter.original), timeout, f"clone card of {inter.id} to be ready")
    return inter.original


def notices_for(world: World, token: str) -> list:
    """Every request that told the user how the job ended (card edit to "ready"/lost/failed, or a channel post)."""
    def final(request) -> bool:
        payload = request.payload or {}
        embeds = payload.get("embeds") or []
        title = (embeds[0] or {}).get("title", "") if embeds else ""
        description = (embeds[0] or {}).get("description", "") if embeds else ""
        return (title.startswith("Voice ") or LOST_AFTER_RESTART in description
                or "failed:" in description) and (request.status or 0) < 300
    return world.emu.find_requests("PATCH", rf"/webhooks/\d+/{re.escape(token)}/messages/@original",
                                   predicate=final)


def channel_notices(world: World, user) -> list[EmuMessage]:
    return [m for m in world.emu.channel_messages() if m.source == "channel" and f"<@{user.id}>" in m.content]


# -- NanoGPT faults on /say --------------------------------------------------------------------------------


TTS_FAULTS = {
    "timeout": (dict(status=None, delay=3.0), NOT_ANSWERING),
    "500": (dict(status=500), NOT_ANSWERING),
    "502 html page": (dict(status=502, body="<html><body>Bad Gateway</body></html>",
                           headers={"Content-Type": "text/html"}), NOT_ANSWERING),
    "503 with retry-after": (dict(status=503, headers={"Retry-After": "2"}), NOT_ANSWERING),
    "504": (dict(status=504), NOT_ANSWERING),
    "dropped connection": (dict(drop=True), NOT_ANSWERING),
    "malformed json": (dict(status=200, body='{"audioUrl": "http://', headers={"Content-Type": "application/json"}),
                       NOT_ANSWERING),
    "json that is not an object": (dict(status=200, body=["audio"]), NOT_ANSWERING),
    "empty audio body": (dict(status=200, body=b"", headers={"Content-Type": "audio/mpeg"}), NOT_ANSWERING),
    "truncated audio": (dict(status=None, truncate=True), NOT_ANSWERING),
    "429": (dict(status=429, headers={"Retry-After": "7"}), "NanoGPT is rate limiting; try again in 7 s."),
    "401": (dict(status=401), KEY_REJECTED),
}


@pytest.mark.parametrize("fault", list(TTS_FAULTS))
async def test_say_answers_every_nanogpt_fault_with_one_sentence_and_never_repeats_the_paid_call(world: World,
                                                                                             fault: str):
    fast(world)
    kwargs, sentence = TTS_FAULTS[fault]
    alice = world.user("alice")
    world.nano.fail_next("/tts", **kwargs)
    message = await say(world, alice, f"fault {fault}")
    assert_sentence(message, sentence)
    assert len(tts_posts(world)) == 1  # a paid call is never sent twice
    held = sum(r["state"] == "reserved" for r in await ledger_rows(world.db))
    assert held == 0  # released or settled, never left hanging
    # The bot is fine afterwards: the next /say speaks.
    assert_speech(await say(world, alice, "after the fault"), "after the fault")


async def test_truncated_audio_downloads_are_retried_then_answered(world: World):
    fast(world)
    world.nano.tts_mode = "url"
    alice = world.user("alice")
    world.nano.fail_next(r"/storage/tts/.*", None, truncate=True)  # one cut-off download: retried, then fine
    reply = await say(world, alice, "cut once")
    assert_speech(reply, "cut once")
    assert reply.files[0].data == make_tone(1.0, "mp3")  # exactly NanoGPT's bytes, never a truncated file
    world.nano.fail_next(r"/storage/tts/.*", None, truncate=True, times=10)  # a storm: one sentence
    assert_sentence(await say(world, alice, "cut always"), NOT_ANSWERING)
    assert len(tts_posts(world)) == 2  # downloads are retried, the paid /tts never
    assert not world.nano.credential_leaks


async def test_tts_ticket_whose_status_keeps_failing_is_answered(world: World):
    fast(world)
    world.bot.nanogpt.tts_poll_timeout = 0.5
    world.nano.tts_mode = "ticket"
    world.nano.fail_next("/tts/status", 500, times=1000)
    assert_sentence(await say(world, world.user("alice"), "never ready"), NOT_ANSWERING)
    assert len(tts_posts(world)) == 1
    world.nano.reset_faults()
    assert_speech(await say(world, world.user("bob"), "ready now"), "ready now")


async def test_a_429_storm_answers_everyone_with_the_wait_then_recovers(world: World):
    fast(world)
    users = [world.user(f"storm{i}") for i in range(6)]
    world.nano.fail_next("/tts", 429, headers={"Retry-After": "3"}, times=6)
    inters = await asyncio.gather(*(world.emu.slash(u, "say", options={"text": f"storm {i}"})
                                    for i, u in enumerate(users)))
    finals = await asyncio.gather(*(i.wait_final(10) for i in inters))
    for final in finals:
        assert_sentence(final, "NanoGPT is rate limiting; try again in 3 s.")
    assert len(tts_posts(world)) == 6 and world.nano.charges == []
    assert_speech(await say(world, users[0], "storm over"), "storm over")


# -- NanoGPT faults on the clone flow ------------------------------------------------------------------------


SUBMIT_FAULTS = {
    "500": (dict(status=500), NOT_ANSWERING, "failed"),
    "429": (dict(status=429, headers={"Retry-After": "30"}), "NanoGPT is rate limiting; try again in 30 s.", "failed"),
    "401": (dict(status=401), KEY_REJECTED, "failed"),
    "timeout after sending": (dict(status=None, delay=3.0), LOST_AFTER_TIMEOUT, "lost"),
    "malformed json": (dict(status=200, body="{not json", headers={"Content-Type": "application/json"}),
                       LOST_AFTER_TIMEOUT, "lost"),
}


@pytest.mark.env(CLONE_CONFIRM="false")
@pytest.mark.parametrize("fault", list(SUBMIT_FAULTS))
async def test_clone_submit_faults_are_told_once_and_never_resubmitted(world: World, audio_corpus, fault: str):
    fast(world)
    kwargs, sentence, state = SUBMIT_FAULTS[fault]
    alice = world.user("alice")
    world.nano.fail_next("/voice-clone/qwen", **kwargs)
    inter = await clone(world, alice, audio_corpus("mp3", 4), name="Faulty")
    final = await inter.wait_final(10)
    assert_sentence(final, sentence)
    (job,) = await world.db.jobs.for_user(alice.id)
    assert job.state == state and job.notified_at is not None
    await asyncio.sleep(0.3)  # give the poller every chance to resubmit or to tell the user twice
    assert len(world.nano.submits) == 1
    # Told once, privately: the public "thinking…" placeholder is gone and one ephemeral answer remains.
    assert inter.original is None and len(inter.followups) == 1
    assert inter.answer.content == sentence and inter.answer.ephemeral
    assert not channel_notices(world, alice)
    assert await world.db.voices.list(alice.id) == []
    # And the user can go on: the next clone works.
    world.nano.clone_script = QUICK
    again = await clone(world, alice, audio_corpus("mp3", 4), name="Second try")
    await wait_ready(world, again)
    assert len(world.nano.submits) == 2


@pytest.mark.env(CLONE_CONFIRM="false")
async def test_clone_status_fault_storm_then_one_notice(world: World, audio_corpus):
    fast(world)
    world.nano.clone_script = [
        Step("processing", poll_after=0.05),
        Step(body="{oops"),  # malformed JSON
        Step(body=["not", "an", "object"]),
        Step(drop=True),
        Step("processing", delay=2.0),  # longer than the client timeout
        Step(http_status=500), Step(http_status=503),
        *[Step(http_status=429, retry_after=0.05) for _ in range(6)],
        Step(http_status=502, body="<html>bad gateway</html>"),
        Step("processing", poll_after=0.05),
        Step("completed"),
    ]
    # The embedding download is cut off twice: a truncated file must never be stored.
    world.nano.fail_next(r"/storage/embeddings/.*", None, truncate=True, times=2)
    alice = world.user("alice")
    inter = await clone(world, alice, audio_corpus("mp3", 4), name="Sturdy")
    done = await wait_ready(world, inter, timeout=30)
    assert card_embed(done)["title"] == "Voice “Sturdy” is ready"
    await asyncio.sleep(0.3)
    assert len(world.nano.submits) == 1
    assert len(notices_for(world, inter.token)) == 1
    voice = await world.db.voices.by_name(alice.id, "sturdy")
    run = next(iter(world.nano.runs.values()))
    stored = await world.db.files.data(voice.embedding_file_id)
    assert stored == world.nano.storage[run.embedding_url.split("/storage/", 1)[1]][0]


# -- Discord faults ---------------------------------------------------------------------------------------


def rate_limit_headers(retry_after: float) -> dict[str, str]:
    return {"Retry-After": "1", "X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset-After": f"{retry_after:.3f}", "X-RateLimit-Bucket": "abcd1234",
            "X-RateLimit-Scope": "user"}


async def test_discord_429_on_the_followup_is_retried_and_the_reply_arrives_once(world: World):
    alice = world.user("alice")
    world.emu.fail_next("POST", r"/webhooks/.*", 429,
                        {"message": "You are being rate limited.", "retry_after": 0.2, "global": False},
                        times=2, headers=rate_limit_headers(0.2))
    mark = world.emu.mark()
    reply = await say(world, alice, "rate limited reply")
    assert_speech(reply, "rate limited reply")
    posts = world.emu.find_requests("POST", r"^/webhooks/", since=mark)
    assert [p.status for p in posts] == [429, 429, 200]
    gap = posts[-1].time - posts[-2].time
    assert gap >= 0.15, f"retried after {gap:.3f} s, before retry_after"
    # One reply, not three.
    assert world.emu.followups(reply.interaction_token) == []
    assert [m.id for m in world.emu.channel_messages() if m.files] == [reply.id]


@pytest.mark.env(CLONE_CONFIRM="false")
async def test_discord_429_on_the_card_edits_still_delivers_one_notice(world: World, audio_corpus):
    fast(world)
    world.nano.clone_script = [Step("processing", poll_after=0.2), Step("completed")]
    alice = world.user("alice")
    world.emu.fail_next("PATCH", r"/webhooks/.*/messages/@original", 429,
                        {"message": "You are being rate limited.", "retry_after": 0.1, "global": False},
                        times=3, headers=rate_limit_headers(0.1))
    inter = await clone(world, alice, audio_corpus("mp3", 4), name="Patient")
    await wait_ready(world, inter)
    await asyncio.sleep(0.3)
    assert [r.status for r in world.emu.requests if r.faulted] == [429, 429, 429]
    assert len(notices_for(world, inter.token)) == 1
    assert len(world.nano.submits) == 1 and not channel_notices(world, alice)


async def test_unknown_interaction_on_the_callback_is_survived(world: World):
    """10062 on the defer (the bot was too slow or Discord lost it): logged, no crash, next commands work."""
    alice = world.user("alice")
    world.emu.fail_next("POST", r"^/interactions/\d+/[^/]+/callback", 404,
                        {"message": "Unknown interaction", "code": 10062}, times=2)
    inter = await world.emu.slash(alice, "say", options={"text": "too late"})
    await world.emu.wait_until(lambda: len(world.emu.find_requests(
        "POST", rf"^/interactions/{inter.id}/")) >= 1, 5, "the bot's callback attempt")
    await asyncio.sleep(0.3)
    assert world.bot.is_ready() and not world.bot.is_closed()
    assert tts_posts(world) == []  # nothing was paid for an answer nobody can receive
    assert any("10062" in line or "Unknown interaction" in line or str(inter.id) in line for line in world.logs)
    # Alice is told in the channel (the interaction is dead), and nobody else is pinged.
    await world.emu.wait_until(lambda: bool(channel_notices(world, alice)), 5, "alice to be told in the channel")
    (told,) = channel_notices(world, alice)
    assert told.pinged_user_ids == [alice.id] and not told.data["mention_everyone"]
    assert "error id" not in told.content, "an expired interaction is not an unexpected error"
    assert_speech(await say(world, alice, "next one works"), "next one works")


async def test_unknown_webhook_on_the_followup_falls_back_to_the_channel(world: World):
    """The token died between the defer and the answer (10015): the answer goes to the channel, pinging only
    the user who asked."""
    alice = world.user("alice")
    world.emu.fail_next("POST", r"^/webhooks/", 404, {"message": "Unknown Webhook", "code": 10015})
    inter = await world.emu.slash(alice, "say", options={"text": "lost token"})
    await world.emu.wait_until(lambda: bool(channel_notices(world, alice)), 10, "the channel fallback")
    (fallback,) = channel_notices(world, alice)
    assert fallback.pinged_user_ids == [alice.id] and not fallback.data["mention_everyone"]
    assert [f.filename for f in fallback.files] == ["speech.mp3"]
    assert inter.original is not None  # the deferred "thinking…" stays: Discord would expire it
    assert len(tts_posts(world)) == 1


@pytest.mark.env(CLONE_CONFIRM="false")
async def test_gateway_disconnect_and_resume_mid_job(world: World, audio_corpus):
    fast(world)
    world.nano.complete_after(1.2, poll_after=0.1)
    alice = world.user("alice")
    inter = await clone(world, alice, audio_corpus("mp3", 4), name="Resumed")
    await world.nano.wait_for(r"/voice-clone/qwen/status", timeout=10)
    resumes = world.emu.resume_count
    await world.emu.disconnect_gateway()
    await world.emu.wait_until(lambda: world.emu.resume_count > resumes, 10, "the bot to RESUME")
    await world.emu.wait_for_gateway()
    done = await wait_ready(world, inter)
    assert card_embed(done)["title"] == "Voice “Resumed” is ready"
    await asyncio.sleep(0.3)
    assert len(notices_for(world, inter.token)) == 1 and len(world.nano.submits) == 1
    assert world.emu.identify_count == 1  # resumed, not re-identified
    assert_speech(await say(world, alice, "after resume", voice="Resumed"), "after resume")
    # And an abrupt TCP drop (no close frame) is survived too.
    await world.emu.disconnect_gateway(code=None)
    await world.emu.wait_until(lambda: world.emu.gateway_connected, 15, "the bot to reconnect")
    assert_speech(await say(world, alice, "after a drop"), "after a drop")


# -- SIGKILL of a real process with several users' jobs in flight -----------------------------------------


@pytest.mark.env(CLONE_CONFIRM="false")
async def test_sigkill_with_jobs_in_every_phase_loses_nothing_and_tells_everyone_once(world: World, audio_corpus):
    await world.stop()
    world.nano.complete_after(2.0, poll_after=0.2)
    proc = await world.spawn()
    alice, bob, carol = world.user("alice"), world.user("bob"), world.user("carol")
    # Carol's MiniMax submit reaches NanoGPT but its answer is held: killed between send and record.
    world.nano.fail_next("/voice-clone/minimax", None, delay=4.0)
    carol_inter = await clone(world, carol, audio_corpus("mp3", 12), name="Carol", provider="minimax")
    await world.nano.wait_for(r"^/voice-clone/minimax$", timeout=20)
    alice_inter = await clone(world, alice, audio_corpus("mp3", 4), name="Alice")
    bob_inter = await clone(world, bob, audio_corpus("mp3", 4), name="Bob")
    await world.nano.wait_for(r"^/voice-clone/qwen/status$", count=2, timeout=20)  # both are being polled
    await world.kill(proc)
    process_log = proc.log_path.read_text(errors="replace")

    await world.start()  # in process: resumes polling, tells Carol honestly
    await wait_ready(world, alice_inter)
    await wait_ready(world, bob_inter)
    await world.emu.wait_until(lambda: LOST_AFTER_RESTART in card_embed(carol_inter.original).get("description", ""),
                               10, "carol to be told")
    await world.restart()  # another restart must not tell anyone twice nor resubmit
    await asyncio.sleep(0.5)

    assert len(world.nano.submits) == 3  # one per job, ever
    for user, inter in ((alice, alice_inter), (bob, bob_inter), (carol, carol_inter)):
        assert len(notices_for(world, inter.token)) == 1, user.name
        assert not channel_notices(world, user), user.name
        (job,) = await world.db.jobs.for_user(user.id)
        assert job.notified_at is not None
    assert [v.name for v in await world.db.voices.list(alice.id)] == ["Alice"]
    assert [v.name for v in await world.db.voices.list(bob.id)] == ["Bob"]
    (carol_job,) = await world.db.jobs.for_user(carol.id)
    assert carol_job.state == "lost" and await world.db.voices.list(carol.id) == []
    # The real process never wrote a secret to its log.
    assert world.emu.token not in process_log and world.nano.api_key not in process_log
