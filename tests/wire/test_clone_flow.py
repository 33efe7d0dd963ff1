"""The clone flow over the wire: the real bot (in process, or as a real ``python -m bot`` subprocess)
against the Discord emulator and the fake NanoGPT. Assertions are on what a user sees in Discord and
on what reached NanoGPT."""

from __future__ import annotations

import asyncio
import re
import signal
import time

import pytest

from bot.cloning import LOST_AFTER_RESTART, RESTARTING
from cogs.cloning import CONSENT
from tests.fakes.nanogpt import Step
from tests.fixtures_bot import World
from tests.fixtures_db import add_qwen_voice, ledger_rows

pytest_plugins = ["tests.fixtures_nanogpt", "tests.fixtures_audio", "tests.fixtures_bot"]

VOICE_ID = re.compile(r"^[A-Za-z][A-Za-z0-9]{7,}$")
QUICK = [Step("pending", poll_after=0.1), Step("processing", poll_after=0.1), Step("processing", poll_after=0.1),
         Step("completed")]


# -- helpers ---------------------------------------------------------------------------------------------


def embed(msg) -> dict:
    return msg.embeds[0] if msg is not None and msg.embeds else {}


def fields(msg) -> dict[str, str]:
    return {f["name"]: f["value"] for f in embed(msg).get("fields", [])}


def buttons(msg) -> dict[str, dict]:
    found = {}
    for row in msg.components:
        for c in row.get("components", []):
            if c.get("type") == 2:
                found[c["label"]] = c
    return found


async def card(world: World, inter, predicate, timeout: float = 10.0):  # noqa: ASYNC109
    """The interaction's original response once ``predicate(message)`` holds."""
    await world.emu.wait_until(lambda: inter.original is not None and not inter.original.loading
                               and predicate(inter.original), timeout, "the clone card to change")
    return inter.original


def is_ready(msg) -> bool:
    return embed(msg).get("title", "").startswith("Voice ")


async def run_clone(world: World, user, data: bytes, filename: str, content_type: str | None, *, name: str,
                    provider: str, attachment_size_limit: int | None = None, **options):
    attachment = world.emu.add_attachment(data, filename, content_type)
    return await world.emu.slash(user, "voice", subcommand="clone",
                                 options={"audio": attachment, "name": name, "provider": provider, **options},
                                 attachment_size_limit=attachment_size_limit, validate=False)


async def one_sentence(inter) -> str:
    message = await inter.wait_final(10)
    assert not message.embeds or message.content, message
    text = message.content
    assert text.endswith(".") and "\n" not in text, text
    return text


# -- happy paths ------------------------------------------------------------------------------------------


async def test_minimax_clone_through_consent_polling_and_a_sample(world: World, audio_corpus):
    world.nano.clone_script = QUICK
    alice, bob = world.user("alice"), world.user("bob")
    inter = await run_clone(world, alice, audio_corpus("mp3", 12), "clip.mp3", "audio/mpeg", name="Alice Voice",
                            provider="minimax")
    confirm = await card(world, inter, lambda m: "Confirm" in buttons(m))
    assert CONSENT in embed(confirm)["description"]
    assert fields(confirm) == {"Provider": "MiniMax", "Price": "$1.00", "Duration": "12.0 s",
                               "MiniMax accepts": "10 s–5 min of audio"}
    assert buttons(confirm)["Confirm"]["style"] == 3 and not confirm.ephemeral
    assert world.nano.requests == []  # nothing is spent before consent

    intruder = await world.emu.click(bob, confirm, buttons(confirm)["Confirm"]["custom_id"])
    answer = await intruder.wait_response()
    assert answer["data"]["content"] == f"Only <@{alice.id}> can confirm this clone."
    assert answer["data"]["flags"] & 64 and world.nano.submits == []

    started = time.monotonic()
    await world.emu.click(alice, confirm, buttons(confirm)["Confirm"]["custom_id"])
    done = await card(world, inter, is_ready)
    print(f"\nMiniMax: Confirm → completion notice in {time.monotonic() - started:.2f} s")
    assert embed(done)["title"] == "Voice “Alice Voice” is ready" and fields(done)["State"] == "Completed"
    footer = "🔊 The attached sample is a synthetic voice: “Alice Voice”, cloned for you."
    assert embed(done)["footer"]["text"] == footer
    (sample,) = done.files
    assert sample.filename == "sample.mp3" and sample.data[:3] in (b"ID3", b"\xff\xfb", b"\xff\xf3")
    assert done.pinged_user_ids == [] and done.components == []

    (submit,) = world.nano.submits
    voice_id = submit.fields["customVoiceId"]
    assert VOICE_ID.match(voice_id) and any(ch.isdigit() for ch in voice_id)
    voice = await world.db.voices.by_name(alice.id, "alice voice")
    assert voice.provider_voice_id == voice_id and voice.provider == "minimax"
    assert world.nano.tts_requests[0]["voice"] == voice_id  # the sample: a real use of the new voice
    (job,) = await world.db.jobs.for_user(alice.id)
    assert job.state == "completed" and job.notified_at is not None


async def test_qwen_clone_of_a_voice_message_through_the_context_menu(world: World, audio_corpus):
    world.nano.clone_script = QUICK
    alice = world.user("alice")
    ogg = audio_corpus("voice_ogg", 6)
    att = world.emu.add_attachment(ogg, "voice-message.ogg", "audio/ogg", duration_secs=6.0,
                                   waveform=bytes(range(0, 240, 4)))
    message = await world.emu.create_user_message(None, alice, attachments=[att], flags=8192)

    menu = await world.emu.message_context(alice, "Clone this voice", message)
    await menu.wait_response()
    modal = world.emu.last_modal(menu.token)
    assert modal is not None and modal["title"] == "Clone this voice"
    submitted = await world.emu.submit_modal(alice, modal["custom_id"], {
        "clone:name": "Whisper", "clone:provider": ["qwen"], "clone:transcript": "hello from my voice message"})
    confirm = await card(world, submitted, lambda m: "Confirm" in buttons(m))
    assert fields(confirm)["Provider"] == "Qwen3-TTS" and fields(confirm)["Price"] == "$0.25"
    await world.emu.click(alice, confirm, buttons(confirm)["Confirm"]["custom_id"])
    done = await card(world, submitted, is_ready)
    assert done.files[0].filename.startswith("sample.")

    (submit,) = world.nano.submits
    assert submit.provider == "qwen" and submit.fields["referenceText"] == "hello from my voice message"
    assert submit.files[0].data[:3] in (b"ID3", b"\xff\xfb")  # the OGG/Opus was transcoded to MP3
    voice = await world.db.voices.by_name(alice.id, "whisper")
    stored = await world.db.files.data(voice.embedding_file_id)
    assert stored == world.nano.storage[voice.embedding_url.rsplit("/storage/", 1)[1]][0]
    assert voice.transcript == "hello from my voice message"
    assert world.nano.tts_requests[0]["reference_text"] == "hello from my voice message"


async def test_context_menu_on_a_message_without_audio_says_so(world: World, audio_corpus):
    alice = world.user("alice")
    image = world.emu.add_attachment(audio_corpus("png"), "cat.png", "image/png")
    message = await world.emu.create_user_message(None, alice, "look", attachments=[image])
    menu = await world.emu.message_context(alice, "Clone this voice", message)
    answer = await menu.wait_response()
    assert answer["data"]["content"] == "That message has no audio attachment or voice message to clone."
    assert answer["data"]["flags"] & 64 and world.nano.requests == []


# -- rejections: one sentence, zero requests to NanoGPT -----------------------------------------------------


@pytest.mark.parametrize(("kind", "seconds", "name", "provider", "expected"), [
    ("mp3", 5, "Short", "minimax", "MiniMax needs at least 10 seconds"),
    ("mp3", 302, "Long", "minimax", "at most 5 minutes"),
    ("garbage", 12, "Noise", "minimax", "not audio I can read"),
    ("png", 12, "Picture", "minimax", "PNG image, not audio"),
    ("empty", 12, "Nothing", "qwen", "empty"),
    ("truncated_mp3", 12, "Cut", "minimax", "1.2 seconds long"),
    ("video_no_audio", 4, "Silent", "qwen", "no audio track"),
    ("mp3", 12, "x" * 33, "minimax", "1–32 characters"),
    ("mp3", 12, "evil\u202egnp.exe", "minimax", "text-direction"),
    ("mp3", 12, "bell\x07", "minimax", "control"),
])
async def test_bad_input_is_one_sentence_and_costs_nothing(world: World, audio_corpus, kind, seconds, name,
                                                           provider, expected):
    inter = await run_clone(world, world.user(), audio_corpus(kind, seconds), audio_corpus.filename(kind, seconds),
                            None, name=name, provider=provider)
    text = await one_sentence(inter)
    assert expected in text, text
    assert world.nano.requests == []


async def test_too_big_for_the_upload_limit_is_refused_before_download(world: World, audio_corpus):
    data = audio_corpus("wav", 40)  # ~1.9 MB
    mark = world.emu.mark()
    inter = await run_clone(world, world.user(), data, "big.wav", "audio/wav", name="Big", provider="qwen",
                            attachment_size_limit=1024 * 1024)
    text = await one_sentence(inter)
    assert "limit is 1" in text, text
    assert world.emu.find_requests("GET", r"attachments", since=mark) == []  # never downloaded
    assert world.nano.requests == []


async def test_a_duplicate_name_is_refused(world: World, audio_corpus):
    alice = world.user("alice")
    await add_qwen_voice(world.db, alice.id, "Narrator")
    inter = await run_clone(world, alice, audio_corpus("mp3", 12), "a.mp3", "audio/mpeg", name="NARRATOR ",
                            provider="qwen")
    assert "already have a voice called “NARRATOR”" in await one_sentence(inter)
    assert inter.original.ephemeral  # refused before the public defer: only alice sees it
    assert not any(r.path.startswith("/cdn/") for r in world.emu.requests)  # the clip was never downloaded
    assert world.nano.requests == []


# -- consent: cancel and expiry ------------------------------------------------------------------------------


async def test_cancel_and_expiry_cost_nothing(world: World, audio_corpus):
    world.bot.clone_flow.confirm_timeout = 0.5
    alice = world.user("alice")
    first = await run_clone(world, alice, audio_corpus("mp3", 12), "a.mp3", "audio/mpeg", name="One",
                            provider="minimax")
    confirm = await card(world, first, lambda m: "Confirm" in buttons(m))
    await world.emu.click(alice, confirm, buttons(confirm)["Cancel"]["custom_id"])
    cancelled = await card(world, first, lambda m: "Cancelled" in embed(m).get("description", ""))
    assert all(b.get("disabled") for b in buttons(cancelled).values())

    second = await run_clone(world, alice, audio_corpus("mp3", 12), "a.mp3", "audio/mpeg", name="Two",
                             provider="minimax")
    expired = await card(world, second, lambda m: "expired" in embed(m).get("description", ""), timeout=5)
    assert buttons(expired) and all(b.get("disabled") for b in buttons(expired).values())
    with pytest.raises(ValueError, match="disabled"):
        await world.emu.click(alice, expired, buttons(expired)["Confirm"]["custom_id"])

    assert world.nano.requests == []
    held = sum(r["state"] != "released" for r in await ledger_rows(world.db))
    assert held == 0 and await world.db.jobs.for_user(alice.id) == []


# -- limits ---------------------------------------------------------------------------------------------------


@pytest.mark.env(CLONE_CONFIRM="false", CLONE_DAILY_LIMIT="3")
async def test_ten_simultaneous_clones_against_a_limit_of_three(world: World, audio_corpus):
    world.nano.clone_script = QUICK
    alice = world.user("alice")
    data = audio_corpus("mp3", 4)
    inters = await asyncio.gather(*(run_clone(world, alice, data, "a.mp3", "audio/mpeg", name=f"Voice {i}",
                                              provider="qwen") for i in range(10)))
    finals = await asyncio.gather(*(i.wait_final(20) for i in inters))
    refused = [m.content for m in finals if m.content]
    assert len(world.nano.submits) == 3 and len(refused) == 7
    assert all(text.startswith("You have used all 3 voice clones for today") for text in refused)
    for inter, final in zip(inters, finals, strict=True):
        if not final.content:
            await card(world, inter, is_ready)
    assert len(await world.db.voices.list(alice.id)) == 3


# -- NanoGPT's answers ------------------------------------------------------------------------------------


@pytest.mark.env(CLONE_CONFIRM="false")
async def test_status_faults_then_success_and_a_failed_job_with_its_reason(world: World, audio_corpus):
    world.bot.clones.backoff_base = 0.05
    world.nano.clone_script = [Step("processing", poll_after=0.05), Step(http_status=500), Step(http_status=502),
                               Step(http_status=500), Step(http_status=429, retry_after=1),
                               Step(http_status=429, retry_after=1),
                               Step("processing", delay=0.5, poll_after=0.05), Step("completed")]
    alice = world.user("alice")
    sturdy = await run_clone(world, alice, audio_corpus("mp3", 4), "a.mp3", "audio/mpeg", name="Sturdy",
                             provider="qwen")
    await card(world, sturdy, is_ready, timeout=20)
    assert len(world.nano.submits) == 1

    world.nano.clone_script = [Step("processing", poll_after=0.05),
                               Step("failed", error="Reference audio contains no speech")]
    doomed = await run_clone(world, alice, audio_corpus("mp3", 4), "a.mp3", "audio/mpeg", name="Doomed",
                             provider="qwen")
    failed = await card(world, doomed, lambda m: fields(m).get("State") == "Failed")
    assert "Reference audio contains no speech" in embed(failed)["description"]
    assert await world.db.voices.by_name(alice.id, "doomed") is None


@pytest.mark.env(CLONE_CONFIRM="false")
async def test_notice_goes_to_the_channel_once_the_token_has_expired(world: World, audio_corpus):
    world.nano.clone_script = [Step("processing", poll_after=0.3), Step("completed")]
    alice = world.user("alice")
    inter = await run_clone(world, alice, audio_corpus("mp3", 4), "a.mp3", "audio/mpeg", name="Later",
                            provider="qwen")
    await card(world, inter, lambda m: fields(m).get("State") in ("Queued", "Processing"))
    world.clock.advance(16 * 60)  # the interaction token is dead by the time the job completes
    world.emu.clock_offset = 16 * 60

    def notice():
        return [m for m in world.emu.channel_messages() if m.source == "channel" and f"<@{alice.id}>" in m.content]

    await world.emu.wait_until(lambda: notice(), 10, "the channel notice")
    (message,) = notice()
    assert message.pinged_user_ids == [alice.id] and "“Later” is ready" in message.content
    assert message.files and message.files[0].filename.startswith("sample.")
    label = f"The attached sample is a synthetic voice: “Later”, cloned for <@{alice.id}>."
    assert message.content.endswith(f"\n-# 🔊 {label}")
    assert message.attachments[0]["description"] == "Synthetic voice sample: Later"


# -- crashes: a real process, SIGKILL -------------------------------------------------------------------------


def ready_edits(world: World, token: str) -> list:
    return world.emu.find_requests("PATCH", rf"/webhooks/\d+/{re.escape(token)}/messages/@original",
                                   predicate=lambda r: embed_title(r).startswith("Voice "))


def embed_title(request) -> str:
    payload = request.payload or {}
    return ((payload.get("embeds") or [{}])[0] or {}).get("title", "")


@pytest.mark.env(CLONE_CONFIRM="false")
async def test_sigkill_mid_job_then_restart_completes_once(world: World, audio_corpus):
    await world.stop()
    world.nano.complete_after(2.5, poll_after=0.2)
    proc = await world.spawn()
    alice = world.user("alice")
    inter = await run_clone(world, alice, audio_corpus("mp3", 12), "a.mp3", "audio/mpeg", name="Survivor",
                            provider="minimax")
    await world.nano.wait_for(r"/voice-clone/minimax/status", timeout=20)
    await world.kill(proc)  # SIGKILL while NanoGPT is still processing

    await world.start()  # the next start resumes the job
    done = await card(world, inter, is_ready, timeout=15)
    assert embed(done)["title"] == "Voice “Survivor” is ready"
    await asyncio.sleep(0.5)
    assert len(ready_edits(world, inter.token)) == 1
    assert len(world.nano.submits) == 1 and len(await world.db.voices.list(alice.id)) == 1
    (job,) = await world.db.jobs.for_user(alice.id)
    assert job.state == "completed" and job.notified_at is not None


@pytest.mark.env(CLONE_CONFIRM="false")
async def test_sigkill_between_sending_and_recording_the_submit_loses_the_job_honestly(world: World, audio_corpus):
    await world.stop()
    world.nano.fail_next("/voice-clone/minimax", None, delay=3.0)  # NanoGPT holds its answer
    proc = await world.spawn()
    alice = world.user("alice")
    inter = await run_clone(world, alice, audio_corpus("mp3", 12), "a.mp3", "audio/mpeg", name="Limbo",
                            provider="minimax")
    await world.nano.wait_for(r"^/voice-clone/minimax$", timeout=20)
    await world.kill(proc)  # the request was sent; its answer never recorded

    await world.start()
    told = await card(world, inter, lambda m: LOST_AFTER_RESTART in embed(m).get("description", ""))
    assert fields(told)["State"] == "Not confirmed"
    (job,) = await world.db.jobs.for_user(alice.id)
    assert job.state == "lost" and job.run_id is None and job.notified_at is not None
    await world.restart()
    await asyncio.sleep(0.5)
    lost_edits = world.emu.find_requests(
        "PATCH", rf"/webhooks/\d+/{re.escape(inter.token)}/messages/@original",
        predicate=lambda r: LOST_AFTER_RESTART in str(r.payload))
    assert len(lost_edits) == 1 and len(world.nano.submits) == 1  # told once; never resubmitted
    held = sum(r["kind"] == "clone" and r["state"] == "reserved" for r in await ledger_rows(world.db))
    assert held == 1  # it may have been charged: the reservation stays


@pytest.mark.env(CLONE_CONFIRM="false")
async def test_a_channel_notice_is_posted_once_when_discord_took_it_but_the_answer_was_lost(world: World,
                                                                                           audio_corpus):
    """Discord creates the notice but the connection drops before its answer: the bot can't know, so it tries
    again later. The notice's nonce is the job's (enforce_nonce), so Discord returns the first message instead
    of posting a second one."""
    world.bot.clones.backoff_base = 0.05
    world.bot.clones.backoff_cap = 0.2
    world.nano.clone_script = [Step("processing", poll_after=0.3), Step("completed")]
    alice = world.user("alice")
    inter = await run_clone(world, alice, audio_corpus("mp3", 4), "a.mp3", "audio/mpeg", name="Once",
                            provider="qwen")
    await card(world, inter, lambda m: fields(m).get("State") in ("Queued", "Processing"))
    world.clock.advance(16 * 60)  # the token is dead: the notice goes to the channel
    world.emu.clock_offset = 16 * 60
    world.emu.fail_next("POST", r"^/channels/\d+/messages$", 0, after_effect=True)
    posts = lambda: world.emu.find_requests("POST", r"^/channels/\d+/messages$")  # noqa: E731
    await world.emu.wait_until(lambda: any(r.status == 200 for r in posts()), 15, "the notice to be sent again")
    await asyncio.sleep(0.3)
    notices = [m for m in world.emu.channel_messages() if m.source == "channel" and f"<@{alice.id}>" in m.content]
    assert len(notices) == 1 and "“Once” is ready" in notices[0].content
    assert len(posts()) == 2 and world.emu.nonce_hits == 1
    assert {(r.payload["nonce"], r.payload["enforce_nonce"]) for r in posts()} == {(notices[0].data["nonce"], True)}
    (job,) = await world.db.jobs.for_user(alice.id)
    assert job.notified_at is not None


@pytest.mark.env(CLONE_CONFIRM="false")
async def test_shutdown_while_a_notice_is_being_sent_waits_for_it_and_never_repeats_it(world: World, audio_corpus):
    """Stopping the bot while Discord is still answering the card's final edit: the bot waits for that answer
    instead of cancelling it (which would leave it unknown whether the user was told), and the next start
    does not tell the user again."""
    world.nano.clone_script = [Step("processing", poll_after=0.2), Step("completed")]
    world.emu.hold_next("PATCH", r"/messages/@original$", 1.0, where=lambda r: embed_title(r).startswith("Voice "))
    alice = world.user("alice")
    inter = await run_clone(world, alice, audio_corpus("mp3", 4), "a.mp3", "audio/mpeg", name="Held",
                            provider="qwen")
    await world.emu.wait_until(lambda: bool(world.emu.held), 20, "the notice to reach Discord")
    await world.stop()
    assert embed(inter.original)["title"] == "Voice “Held” is ready"  # the edit finished before the bot stopped
    await world.start()
    await asyncio.sleep(1.0)
    assert len(ready_edits(world, inter.token)) == 1
    (job,) = await world.db.jobs.for_user(alice.id)
    assert job.state == "completed" and job.notified_at is not None


# -- a clean stop while a paid submit is in flight -----------------------------------------------------------


def lost_edits(world: World, token: str) -> list:
    return world.emu.find_requests("PATCH", rf"/webhooks/\d+/{re.escape(token)}/messages/@original",
                                   predicate=lambda r: LOST_AFTER_RESTART in str(r.payload))


@pytest.mark.env(CLONE_CONFIRM="false")
async def test_a_clean_stop_waits_for_a_submit_in_flight_and_the_next_start_completes_it(world: World,
                                                                                         audio_corpus):
    """SIGTERM (a rolling restart) while NanoGPT is still answering the paid submit: the stop waits for the
    answer, records the run and updates the card; the next start adopts the job and tells the user once."""
    world.nano.complete_after(1.5, poll_after=0.2)
    world.nano.fail_next("/voice-clone/minimax", None, delay=1.0)  # NanoGPT holds its answer for 1 s
    alice = world.user("alice")
    inter = await run_clone(world, alice, audio_corpus("mp3", 12), "a.mp3", "audio/mpeg", name="Drained",
                            provider="minimax")
    await world.nano.wait_for(r"^/voice-clone/minimax$", timeout=20)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await world.stop()
    assert loop.time() - started >= 0.5  # the stop waited for NanoGPT's answer
    assert embed(inter.original)["title"] == "Cloning “Drained”"  # the status card, before Discord's HTTP closed
    assert fields(inter.original)["State"] in ("Queued", "Processing", "Completed")

    await world.start()
    done = await card(world, inter, is_ready, timeout=15)
    assert embed(done)["title"] == "Voice “Drained” is ready"
    await asyncio.sleep(0.5)
    assert len(ready_edits(world, inter.token)) == 1 and lost_edits(world, inter.token) == []
    (submit,) = world.nano.submits
    (job,) = await world.db.jobs.for_user(alice.id)
    assert job.state == "completed" and job.run_id == submit.run_id and job.notified_at is not None
    assert len(await world.db.voices.list(alice.id)) == 1
    clones = [r for r in await ledger_rows(world.db) if r["kind"] == "clone"]
    assert [(r["state"], r["amount_micros"]) for r in clones] == [("charged", 1_000_000)]
    assert len([c for c in world.nano.charges if c.kind.startswith("clone")]) == 1


@pytest.mark.env(CLONE_CONFIRM="false")
async def test_a_submit_unanswered_after_the_drain_is_lost_with_one_message(world: World, audio_corpus):
    world.bot.clones.submit_drain_seconds = 0.3
    world.nano.fail_next("/voice-clone/minimax", None, delay=3.0)  # longer than the drain
    alice = world.user("alice")
    inter = await run_clone(world, alice, audio_corpus("mp3", 12), "a.mp3", "audio/mpeg", name="Limbo",
                            provider="minimax")
    await world.nano.wait_for(r"^/voice-clone/minimax$", timeout=20)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await world.stop()
    assert loop.time() - started < 2.5  # the drain's limit, not NanoGPT's 3 s
    await world.start()
    told = await card(world, inter, lambda m: LOST_AFTER_RESTART in embed(m).get("description", ""))
    assert fields(told)["State"] == "Not confirmed"
    await world.restart()
    await asyncio.sleep(0.5)
    assert len(lost_edits(world, inter.token)) == 1 and len(world.nano.submits) == 1  # once; never resent
    (job,) = await world.db.jobs.for_user(alice.id)
    assert job.state == "lost" and job.run_id is None and job.notified_at is not None
    held = [r["state"] for r in await ledger_rows(world.db) if r["kind"] == "clone"]
    assert held == ["reserved"]  # it may have been charged: the reservation stays


async def test_a_confirm_pressed_during_the_drain_is_refused_and_nothing_is_sent(world: World, audio_corpus):
    alice, bob = world.user("alice"), world.user("bob")
    first = await run_clone(world, alice, audio_corpus("mp3", 12), "a.mp3", "audio/mpeg", name="First",
                            provider="minimax")
    second = await run_clone(world, bob, audio_corpus("mp3", 12), "b.mp3", "audio/mpeg", name="Second",
                             provider="minimax")
    confirm_a = await card(world, first, lambda m: "Confirm" in buttons(m))
    confirm_b = await card(world, second, lambda m: "Confirm" in buttons(m))
    world.nano.fail_next("/voice-clone/minimax", None, delay=3.0)
    await world.emu.click(alice, confirm_a, buttons(confirm_a)["Confirm"]["custom_id"])
    await world.nano.wait_for(r"^/voice-clone/minimax$", timeout=20)
    bot = world.bot
    stopping = asyncio.create_task(world.stop())
    await world.emu.wait_until(lambda: bot.clones.stopping, 5, "the clean stop to begin")
    await world.emu.click(bob, confirm_b, buttons(confirm_b)["Confirm"]["custom_id"])
    refused = await card(world, second, lambda m: embed(m).get("description") == RESTARTING)
    assert refused.components == [] and not stopping.done()  # answered while the stop still waits for alice
    await stopping
    assert len(world.nano.submits) == 1  # bob's clone never reached NanoGPT
    await world.start()
    assert await world.db.jobs.for_user(bob.id) == []
    assert [r["state"] for r in await ledger_rows(world.db) if r["user_id"] == bob.id] == []
    (job,) = await world.db.jobs.for_user(alice.id)
    assert job.run_id is not None and job.state != "lost"


@pytest.mark.env(CLONE_CONFIRM="false")
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_stop_signal_mid_submit_lets_the_answer_in_and_the_next_start_completes_it(world: World, audio_corpus,
                                                                                           stop_signal):
    """SIGTERM (systemd, a rolling restart) or SIGINT (Ctrl+C, the image's STOPSIGNAL)."""
    await world.stop()
    world.nano.complete_after(1.0, poll_after=0.2)
    world.nano.fail_next("/voice-clone/minimax", None, delay=2.0)  # NanoGPT holds its answer
    proc = await world.spawn()
    alice = world.user("alice")
    inter = await run_clone(world, alice, audio_corpus("mp3", 12), "a.mp3", "audio/mpeg", name="Rolling",
                            provider="minimax")
    await world.nano.wait_for(r"^/voice-clone/minimax$", timeout=20)
    proc.send_signal(stop_signal)
    assert await asyncio.wait_for(proc.wait(), 20) == 0
    log_text = proc.log_path.read_text()  # type: ignore[attr-defined]
    assert "every clone submit in flight was answered" in log_text and "marking it lost" not in log_text

    await world.start()
    done = await card(world, inter, is_ready, timeout=15)
    assert embed(done)["title"] == "Voice “Rolling” is ready"
    await asyncio.sleep(0.5)
    assert len(ready_edits(world, inter.token)) == 1 and lost_edits(world, inter.token) == []
    assert len(world.nano.submits) == 1
    assert len([c for c in world.nano.charges if c.kind.startswith("clone")]) == 1
    (job,) = await world.db.jobs.for_user(alice.id)
    assert job.state == "completed" and job.notified_at is not None


@pytest.mark.env(CLONE_CONFIRM="false")
async def test_a_second_sigterm_stops_waiting_for_the_submit(world: World, audio_corpus):
    await world.stop()
    world.nano.fail_next("/voice-clone/minimax", None, delay=8.0)  # far past the point of a second signal
    proc = await world.spawn()
    alice = world.user("alice")
    inter = await run_clone(world, alice, audio_corpus("mp3", 12), "a.mp3", "audio/mpeg", name="Impatient",
                            provider="minimax")
    await world.nano.wait_for(r"^/voice-clone/minimax$", timeout=20)
    loop = asyncio.get_running_loop()
    proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.5)
    assert proc.returncode is None  # the first signal waits for NanoGPT's answer
    started = loop.time()
    proc.send_signal(signal.SIGTERM)  # the operator does not want to wait
    assert await asyncio.wait_for(proc.wait(), 20) == 0
    assert loop.time() - started < 5
    assert "second stop signal" in proc.log_path.read_text()  # type: ignore[attr-defined]

    await world.start()
    await card(world, inter, lambda m: LOST_AFTER_RESTART in embed(m).get("description", ""))
    await asyncio.sleep(0.5)
    assert len(lost_edits(world, inter.token)) == 1 and len(world.nano.submits) == 1
    (job,) = await world.db.jobs.for_user(alice.id)
    assert job.state == "lost" and job.run_id is None


async def test_clones_asked_for_while_a_process_stops_get_the_restarting_sentence(world: World, audio_corpus):
    """During a real process's clean stop (SIGTERM) every command still works: /voice clone and a Confirm
    pressed on a card shown before the stop are answered with one sentence, and nothing reaches NanoGPT."""
    await world.stop()
    proc = await world.spawn()
    alice, bob, carol = world.user("alice"), world.user("bob"), world.user("carol")
    first = await run_clone(world, alice, audio_corpus("mp3", 12), "a.mp3", "audio/mpeg", name="First",
                            provider="minimax")
    waiting = await run_clone(world, bob, audio_corpus("mp3", 12), "b.mp3", "audio/mpeg", name="Second",
                              provider="minimax")
    confirm_a = await card(world, first, lambda m: "Confirm" in buttons(m), timeout=20)
    confirm_b = await card(world, waiting, lambda m: "Confirm" in buttons(m), timeout=20)
    world.nano.fail_next("/voice-clone/minimax", None, delay=3.0)
    await world.emu.click(alice, confirm_a, buttons(confirm_a)["Confirm"]["custom_id"])
    await world.nano.wait_for(r"^/voice-clone/minimax$", timeout=20)
    proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    new = await run_clone(world, carol, audio_corpus("mp3", 12), "c.mp3", "audio/mpeg", name="Third",
                          provider="minimax")
    assert await one_sentence(new) == RESTARTING
    await world.emu.click(bob, confirm_b, buttons(confirm_b)["Confirm"]["custom_id"])
    refused = await card(world, waiting, lambda m: embed(m).get("description") == RESTARTING)
    assert refused.components == [] and proc.returncode is None  # answered while the stop still waits
    assert await asyncio.wait_for(proc.wait(), 20) == 0
    assert len(world.nano.submits) == 1  # alice's only

    await world.start()
    assert await world.db.jobs.for_user(bob.id) == [] and await world.db.jobs.for_user(carol.id) == []
    (job,) = await world.db.jobs.for_user(alice.id)
    assert job.run_id is not None and job.state != "lost"
