"""bot.nanogpt against the fake NanoGPT (a real local server): every endpoint, every response form,
every error shape, the retry policy and the secret hygiene. Its pure helpers are in
``tests/unit/test_nanogpt.py``."""

from __future__ import annotations

import asyncio
import email.utils
import io
import json
import logging
import time
from decimal import Decimal

import aiohttp
import mutagen
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from bot.nanogpt import (
    AuthError,
    Balance,
    CloneStatus,
    CloneTicket,
    ContentPolicyError,
    DownloadTooLarge,
    GenerationFailed,
    InsufficientBalance,
    InvalidRequest,
    NanoGPTClient,
    NanoGPTError,
    RateLimited,
    SpeechResult,
    UpstreamUnavailable,
)
from tests.fakes.nanogpt import OPENAPI_FILE, FakeNanoGPT, Step, make_tone

pytest_plugins = ["tests.fixtures_nanogpt"]

pytestmark = pytest.mark.timeout(30)

VOICE_ID = "Voice2024abc"


class FastSleep:
    """Injected instead of asyncio.sleep: records the waits, yields once, returns at once."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        await asyncio.sleep(0)


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def sleeps() -> FastSleep:
    return FastSleep()


@pytest.fixture
def client(session, fake_nanogpt: FakeNanoGPT, sleeps: FastSleep) -> NanoGPTClient:
    return NanoGPTClient(session, fake_nanogpt.base_url, fake_nanogpt.api_key, timeout=2, tts_poll_interval=0.01,
                         tts_poll_timeout=2, sleep=sleeps)


def audio_info(data: bytes):
    info = mutagen.File(io.BytesIO(data))
    assert info is not None, "not decodable audio"
    return info.info


# -- clone submits ----------------------------------------------------------------------------------


async def test_minimax_multipart_submit(client: NanoGPTClient, fake_nanogpt: FakeNanoGPT) -> None:
    clip = make_tone(1.0, "mp3")
    ticket = await client.submit_minimax_clone(clip, "clip.mp3", custom_voice_id=VOICE_ID, model="speech-02-hd",
                                               noise_reduction=True)
    assert isinstance(ticket, CloneTicket)
    assert ticket.status == "pending"
    assert ticket.model == "MiniMax-Voice-Clone"
    assert ticket.cost == Decimal("1.0") and ticket.cost_micros == 1_000_000
    assert ticket.payment_source == "USD" and ticket.is_api_request is True
    assert ticket.file_name == "clip.mp3" and ticket.file_size == len(clip)
    assert ticket.run_id in fake_nanogpt.runs

    [submit] = fake_nanogpt.submits
    assert submit.provider == "minimax" and not submit.is_json and submit.run_id == ticket.run_id
    assert submit.fields == {"customVoiceId": VOICE_ID, "voiceCloneModel": "speech-02-hd",
                             "needNoiseReduction": "true", "needVolumeNormalization": "false"}
    [part] = submit.files
    assert (part.name, part.filename, part.content_type, part.size) == ("audio", "clip.mp3", "audio/mpeg", len(clip))
    assert part.bytes == clip
    [request] = fake_nanogpt.requests
    assert request.headers["Authorization"] == f"Bearer {fake_nanogpt.api_key}"
    assert [(c.kind, c.amount) for c in fake_nanogpt.charges] == [("clone_minimax", Decimal("1.0"))]


async def test_qwen_submits_multipart(client: NanoGPTClient, fake_nanogpt: FakeNanoGPT) -> None:
    clip = make_tone(1.0, "wav")
    first = await client.submit_qwen_clone(clip, "me.wav", reference_text="the quick brown fox")
    second = await client.submit_qwen_clone(clip, "again.wav")
    assert first.cost == Decimal("0.25") and first.cost_micros == 250_000
    assert first.model == "qwen-voice-clone" and first.run_id != second.run_id
    multipart, bare = fake_nanogpt.submits
    assert multipart.fields == {"referenceText": "the quick brown fox"}
    assert multipart.files[0].filename == "me.wav" and multipart.files[0].content_type == "audio/wav"
    assert not bare.is_json and bare.fields == {}  # no transcript: no referenceText field at all
    assert fake_nanogpt.total_charged == Decimal("0.50")


async def test_submit_arguments_are_checked_before_anything_is_sent(client: NanoGPTClient,
                                                                    fake_nanogpt: FakeNanoGPT) -> None:
    with pytest.raises(ValueError):
        await client.submit_minimax_clone(b"x", "a.mp3", custom_voice_id="1badId")
    with pytest.raises(ValueError):
        await client.submit_minimax_clone(b"x", "a.mp3", custom_voice_id="short")
    with pytest.raises(ValueError):
        await client.submit_qwen_clone(None, "a.mp3")
    assert fake_nanogpt.requests == []


async def test_duplicate_voice_id_is_an_invalid_request(client: NanoGPTClient, fake_nanogpt: FakeNanoGPT) -> None:
    await client.submit_minimax_clone(b"ID3audio", "a.mp3", custom_voice_id=VOICE_ID)
    with pytest.raises(InvalidRequest) as info:
        await client.submit_minimax_clone(b"ID3audio", "a.mp3", custom_voice_id=VOICE_ID)
    assert info.value.status == 400 and "already exists" in info.value.message
    assert info.value.user_message.startswith("NanoGPT refused the request: Voice id")
    assert len(fake_nanogpt.submits) == 2 and len(fake_nanogpt.charges) == 1


# -- clone status -----------------------------------------------------------------------------------


async def test_status_echoes_the_ticket_and_reads_poll_after(client: NanoGPTClient,
                                                             fake_nanogpt: FakeNanoGPT) -> None:
    ticket = await client.submit_minimax_clone(b"ID3audio", "a.mp3", custom_voice_id=VOICE_ID)
    first = await client.clone_status("minimax", ticket.run_id, cost=ticket.cost,
                                      payment_source=ticket.payment_source, is_api_request=ticket.is_api_request)
    assert isinstance(first, CloneStatus)
    assert first.status == "processing" and first.poll_after == 0.05 and first.audio_urls == []
    [poll] = fake_nanogpt.requests_to(r"^/voice-clone/minimax/status$")
    assert poll.json == {"runId": ticket.run_id, "cost": Decimal("1.0"), "paymentSource": "USD",
                         "isApiRequest": True}
    done = await client.clone_status("minimax", ticket.run_id, cost=ticket.cost,
                                     payment_source=ticket.payment_source, is_api_request=ticket.is_api_request)
    assert done.status == "completed" and done.poll_after is None and done.error is None
    [preview] = done.audio_urls
    data, content_type = await client.download(preview)
    assert content_type == "audio/mpeg" and audio_info(data).length == pytest.approx(1.0, abs=0.1)
    assert len(fake_nanogpt.status_polls[ticket.run_id]) == 2
    assert ticket.run_id in fake_nanogpt.completed_at
    assert fake_nanogpt.voices[VOICE_ID] == ticket.run_id


async def test_status_omits_unknown_echo_fields(client: NanoGPTClient, fake_nanogpt: FakeNanoGPT) -> None:
    ticket = await client.submit_qwen_clone(b"ID3audio", "a.mp3")
    await client.clone_status("qwen", ticket.run_id, cost=None, payment_source=None, is_api_request=None)
    assert fake_nanogpt.requests_to("/status$")[0].json == {"runId": ticket.run_id}


async def test_qwen_status_completes_with_an_embedding(client: NanoGPTClient, fake_nanogpt: FakeNanoGPT) -> None:
    ticket = await client.submit_qwen_clone(b"ID3audio", "a.mp3")
    fake_nanogpt.script_run(ticket.run_id, [Step("pending"), Step("completed")])
    assert (await client.clone_status("qwen", ticket.run_id, cost=ticket.cost)).status == "pending"
    status = await client.clone_status("qwen", ticket.run_id, cost=ticket.cost)
    assert status.status == "completed" and status.speaker_embedding_url
    data, content_type = await client.download(status.speaker_embedding_url)
    assert content_type == "application/octet-stream"
    header_length = int.from_bytes(data[:8], "little")
    assert "speaker_embedding" in json.loads(data[8:8 + header_length])


async def test_status_failed_carries_the_error(client: NanoGPTClient, fake_nanogpt: FakeNanoGPT) -> None:
    ticket = await client.submit_qwen_clone(b"ID3audio", "a.mp3")
    fake_nanogpt.script_run(ticket.run_id, [Step("failed", error="Audio too short")])
    status = await client.clone_status("qwen", ticket.run_id, cost=ticket.cost)
    assert (status.status, status.error) == ("failed", "Audio too short")


async def test_status_poll_after_from_retry_after_seconds_and_http_date(client: NanoGPTClient,
                                                                       fake_nanogpt: FakeNanoGPT) -> None:
    ticket = await client.submit_qwen_clone(b"ID3audio", "a.mp3")
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    fake_nanogpt.script_run(ticket.run_id, [Step("processing", retry_after=7), Step("processing", retry_after=later),
                                            Step("processing", poll_after=2.5, retry_after=9)])
    assert (await client.clone_status("qwen", ticket.run_id)).poll_after == 7
    assert (await client.clone_status("qwen", ticket.run_id)).poll_after == pytest.approx(30, abs=2)
    assert (await client.clone_status("qwen", ticket.run_id)).poll_after == 2.5  # X-Poll-After wins


async def test_time_mode_completes_after_the_given_seconds(client: NanoGPTClient, fake_nanogpt: FakeNanoGPT) -> None:
    fake_nanogpt.complete_after(0.3, poll_after=5)
    ticket = await client.submit_qwen_clone(b"ID3audio", "a.mp3")
    status = await client.clone_status("qwen", ticket.run_id)
    assert (status.status, status.poll_after) == ("processing", 5)
    await asyncio.sleep(0.35)
    assert (await client.clone_status("qwen", ticket.run_id)).status == "completed"
    run = fake_nanogpt.runs[ticket.run_id]
    assert fake_nanogpt.completed_at[ticket.run_id] == pytest.approx(run.submitted_at + 0.3)
    assert len(fake_nanogpt.status_polls[ticket.run_id]) == 2


async def test_status_retries_a_5xx_once_then_succeeds(client: NanoGPTClient, fake_nanogpt: FakeNanoGPT,
                                                       sleeps: FastSleep) -> None:
    ticket = await client.submit_qwen_clone(b"ID3audio", "a.mp3")
    fake_nanogpt.fail_next("/voice-clone/qwen/status", 503, headers={"Retry-After": "1"})
    status = await client.clone_status("qwen", ticket.run_id)
    assert status.status == "processing"
    assert len(fake_nanogpt.requests_to("/status$")) == 2
    assert sleeps.calls and sleeps.calls[0] >= 1  # Retry-After honoured


async def test_status_gives_up_after_bounded_attempts(client: NanoGPTClient, fake_nanogpt: FakeNanoGPT) -> None:
    ticket = await client.submit_qwen_clone(b"ID3audio", "a.mp3")
    fake_nanogpt.fail_next("/voice-clone/qwen/status", 502, times=10)
    with pytest.raises(UpstreamUnavailable) as info:
        await client.clone_status("qwen", ticket.run_id)
    assert info.value.status == 502 and info.value.maybe_charged is False
    assert info.value.user_message == "NanoGPT is not answering; try again in a moment."
    assert len(fake_nanogpt.requests_to("/status$")) == client.status_attempts == 2


async def test_status_rate_limit_with_a_long_retry_after_is_raised_at_once(client: NanoGPTClient,
                                                                           fake_nanogpt: FakeNanoGPT) -> None:
    ticket = await client.submit_qwen_clone(b"ID3audio", "a.mp3")
    fake_nanogpt.fail_next("/voice-clone/qwen/status", 429, headers={"Retry-After": "60"}, times=5)
    with pytest.raises(RateLimited) as info:
        await client.clone_status("qwen", ticket.run_id)
    assert info.value.retry_after == 60
    assert info.value.user_message == "NanoGPT is rate limiting; try again in 60 s."
    assert len(fake_nanogpt.requests_to("/status$")) == 1


async def test_status_of_an_unknown_run_is_definitive(client: NanoGPTClient, fake_nanogpt: FakeNanoGPT) -> None:
    with pytest.raises(InvalidRequest) as info:
        await client.clone_status("minimax", "no-such-run")
    assert info.value.status == 404 and info.value.message == "Run not found"
    assert info.value.request_id and info.value.request_id.startswith("req_")
    assert len(fake_nanogpt.requests) == 1


async def test_status_timeouts_are_retried_then_raised(session, fake_nanogpt: FakeNanoGPT, sleeps: FastSleep) -> None:
    client = NanoGPTClient(session, fake_nanogpt.base_url, fake_nanogpt.api_key, timeout=0.2, sleep=sleeps)
    ticket = await client.submit_qwen_clone(b"ID3audio", "a.mp3")
    fake_nanogpt.fail_next("/voice-clone/qwen/status", delay=1.0, times=2)
    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable) as info:
        await client.clone_status("qwen", ticket.run_id)
    assert time.monotonic() - started < 1.0
    assert "timed out" in info.value.message and not info.value.maybe_charged
    assert len(fake_nanogpt.requests_to("/status$")) == 2


# -- TTS --------------------------------------------------------------------------------------------


async def test_tts_bytes_form(client: NanoGPTClient, fake_nanogpt: FakeNanoGPT) -> None:
    fake_nanogpt.tts_content_type = "audio/mp3"  # as NanoGPT's OpenAPI spells it
    result = await client.tts("Hello there", model="Kokoro-82m", voice="af_bella", speed=1.25)
    assert isinstance(result, SpeechResult)
    assert result.content_type == "audio/mpeg" and result.extension == "mp3"
    assert result.audio == make_tone(1.0, "mp3")
    assert audio_info(result.audio).length == pytest.approx(1.0, abs=0.1)
    assert result.cost is None and result.model == "Kokoro-82m"
    assert fake_nanogpt.tts_requests == [{"text": "Hello there", "model": "Kokoro-82m", "voice": "af_bella",
                                          "speed": Decimal("1.25")}]


async def test_tts_bytes_wav(client: NanoGPTClient, fake_nanogpt: FakeNanoGPT) -> None:
    fake_nanogpt.tts_format = "wav"
    result = await client.tts("Hi", model="Kokoro-82m")
    assert (result.content_type, result.extension) == ("audio/wav", "wav")
    assert result.audio[:4] == b"RIFF" and audio_info(result.audio).length == pytest.approx(1.0, abs=0.05)


async def test_tts_url_form_downloads_without_credentials(client: NanoGPTClient, fake_nanogpt: FakeNanoGPT) -> None:
    fake_nanogpt.tts_mode = "url"
    result = await client.tts("Hello from a url", model="Kokoro-82m", voice="af_nova")
    assert result.content_type == "audio/mpeg" and result.audio == make_tone(1.0, "mp3")
    assert result.cost == Decimal("0.000016") and result.payment_source == "USD" and result.duration == 1.0
    assert result.cost == fake_nanogpt.charges[-1].amount
    [download] = fake_nanogpt.requests_to("^/storage/")
    assert not {"authorization", "x-api-key"} & {h.lower() for h in download.headers}
    assert fake_nanogpt.credential_leaks == []


async def test_tts_ticket_form_polls_tts_status(client: NanoGPTClient, fake_nanogpt: FakeNanoGPT,
                                                sleeps: FastSleep) -> None:
    fake_nanogpt.tts_mode = "ticket"
    fake_nanogpt.tts_ticket_polls = 2
    result = await client.tts("A qwen line", model="Qwen-3-TTS-1.7B", language="Auto",
                              speaker_voice_embedding_file_url=fake_nanogpt.put_storage(
                                  "mine.safetensors", b"x" * 100, "application/octet-stream"),
                              reference_text="the reference")
    assert result.audio == make_tone(1.0, "mp3") and result.content_type == "audio/mpeg"
    run = next(iter(fake_nanogpt.tts_runs.values()))
    assert result.cost == run.cost and result.payment_source == "USD"
    polls = fake_nanogpt.requests_to("^/tts/status$")
    assert len(polls) == 3
    assert polls[0].query == {"runId": run.run_id, "model": "Qwen-3-TTS-1.7B", "cost": str(run.cost),
                              "paymentSource": "USD", "isApiRequest": "true"}
    assert sleeps.calls[:3] == [0.01, 0.01, 0.01]
    assert fake_nanogpt.embedding_fetches and fake_nanogpt.embedding_fetches[0][1] == 200


async def test_tts_ticket_error_and_content_policy(client: NanoGPTClient, fake_nanogpt: FakeNanoGPT) -> None:
    fake_nanogpt.tts_mode = "ticket"
    fake_nanogpt.tts_ticket_result = "error"
    with pytest.raises(GenerationFailed) as failed:
        await client.tts("Hello", model="Elevenlabs-Turbo-V2.5", voice="Rachel")
    assert failed.value.message == "TTS generation failed. Please try again."
    assert failed.value.user_message == (
        "NanoGPT could not generate the speech: TTS generation failed. Please try again.")
    assert isinstance(failed.value, UpstreamUnavailable) and not failed.value.maybe_charged

    with pytest.raises(ContentPolicyError) as policy:
        await client.tts("some forbidden-content here", model="Elevenlabs-Turbo-V2.5", voice="Rachel")
    assert policy.value.code == "CONTENT_POLICY_VIOLATION"
    assert policy.value.user_message == policy.value.message
    assert policy.value.message.startswith("Content rejected by provider.")
    assert fake_nanogpt.total_charged == 0  # both refunded


async def test_tts_content_policy_on_the_post(client: NanoGPTClient, fake_nanogpt: FakeNanoGPT) -> None:
    with pytest.raises(ContentPolicyError) as info:
        await client.tts("forbidden-content", model="Kokoro-82m")
    assert info.value.status == 400 and info.value.user_message.startswith("Content rejected by provider.")
    assert len(fake_nanogpt.tts_requests) == 1 and fake_nanogpt.charges == []


async def test_tts_ticket_that_never_finishes_times_out(session, fake_nanogpt: FakeNanoGPT) -> None:
    client = NanoGPTClient(session, fake_nanogpt.base_url, fake_nanogpt.api_key, tts_poll_interval=0.02,
                           tts_poll_timeout=0.15)
    fake_nanogpt.tts_mode = "ticket"
    fake_nanogpt.tts_ticket_polls = 10_000
    with pytest.raises(UpstreamUnavailable) as info:
        await client.tts("Hello", model="Kokoro-82m")
    assert info.value.maybe_charged and "did not finish" in info.value.message
    assert 2 <= len(fake_nanogpt.requests_to("^/tts/status$")) <= 10


async def test_tts_ticket_polling_survives_a_transient_error(client: NanoGPTClient, fake_nanogpt: FakeNanoGPT) -> None:
    fake_nanogpt.tts_mode = "ticket"
    fake_nanogpt.fail_next("/tts/status", 500, times=1)
    result = await client.tts("Hello", model="Kokoro-82m")
    assert result.audio


async def test_tts_is_never_retried_on_a_5xx(client: NanoGPTClient, fake_nanogpt: FakeNanoGPT) -> None:
    fake_nanogpt.fail_next("/tts", 503)
    with pytest.raises(UpstreamUnavailable) as info:
        await client.tts("Hello", model="Kokoro-82m")
    assert not info.value.maybe_charged
    assert len(fake_nanogpt.tts_requests) == 1


async def test_tts_with_a_deleted_minimax_voice(client: NanoGPTClient, fake_nanogpt: FakeNanoGPT) -> None:
    with pytest.raises(InvalidRequest) as info:
        await client.tts("Hello", model="Minimax-Speech-02-HD", voice="NeverCloned1")
    assert info.value.code == "voice_not_found"


async def test_tts_text_over_the_model_limit(client: NanoGPTClient, fake_nanogpt: FakeNanoGPT) -> None:
    with pytest.raises(InvalidRequest) as info:
        await client.tts("a" * 4097, model="tts-1")
    assert info.value.status == 413 and "4096" in info.value.user_message


# -- error shapes -----------------------------------------------------------------------------------

ERROR_CASES = [
    # (status, body, headers, class, message, code, user_message)
    (401, {"error": {"message": "Invalid API key", "type": "authentication_error", "code": "invalid_api_key"}}, {},
     AuthError, "Invalid API key", "invalid_api_key",
     "The bot's NanoGPT key was rejected; please tell the bot's operator."),
    (403, "Forbidden", {}, AuthError, "Forbidden", None,
     "The bot's NanoGPT key was rejected; please tell the bot's operator."),
    (402, {"error": "Insufficient balance", "status": 402}, {}, InsufficientBalance, "Insufficient balance", None,
     "The bot's NanoGPT balance is too low; please tell the bot's operator."),
    (402, {"error": "Insufficient balance", "requiredBalance": 0.0035, "status": 402}, {}, InsufficientBalance,
     "Insufficient balance", None, "The bot's NanoGPT balance is too low; please tell the bot's operator."),
    (429, {"error": {"message": "Daily request limit exceeded (1000/1000). Resets at midnight UTC.",
                     "code": "daily_rpd_limit_exceeded", "type": "rate_limit_error"}}, {"Retry-After": "30"},
     RateLimited, "Daily request limit exceeded (1000/1000). Resets at midnight UTC.", "daily_rpd_limit_exceeded",
     "NanoGPT is rate limiting; try again in 30 s."),
    (429, {"error": {"message": "Too many", "code": "daily_usd_limit_exceeded"}}, {"Retry-After": "7200"},
     RateLimited, "Too many", "daily_usd_limit_exceeded", "NanoGPT is rate limiting; try again in 2 h."),
    (400, {"error": 400, "message": "Text is required"}, {}, InvalidRequest, "Text is required", None,
     "NanoGPT refused the request: Text is required."),
    (400, {"error": {"message": "Content rejected by provider. Try other words.", "code": "content_policy_violation",
                     "type": "invalid_request_error", "param": "text"}}, {}, ContentPolicyError,
     "Content rejected by provider. Try other words.", "content_policy_violation",
     "Content rejected by provider. Try other words."),
    (413, {"error": {"message": "Text exceeds model character limit"}}, {}, InvalidRequest,
     "Text exceeds model character limit", None, "NanoGPT refused the request: Text exceeds model character limit."),
    (501, {"error": 501, "message": "Model not implemented"}, {}, InvalidRequest, "Model not implemented", None,
     "NanoGPT refused the request: Model not implemented."),
    (500, "<html><body><h1>502 Bad Gateway</h1></body></html>", {"Content-Type": "text/html"}, UpstreamUnavailable,
     "HTTP 500 from NanoGPT.", None, "NanoGPT is not answering; try again in a moment."),
    (503, "upstream overloaded", {}, UpstreamUnavailable, "upstream overloaded", None,
     "NanoGPT is not answering; try again in a moment."),
    (409, {"error": ["odd", "shape"]}, {}, InvalidRequest, "HTTP 409 from NanoGPT.", None,
     "NanoGPT refused the request: HTTP 409 from NanoGPT."),
]


@pytest.mark.parametrize(("status", "body", "headers", "kind", "message", "code", "user_message"), ERROR_CASES,
                         ids=[f"{c[0]}-{c[3].__name__}-{i}" for i, c in enumerate(ERROR_CASES)])
async def test_error_shapes(client: NanoGPTClient, fake_nanogpt: FakeNanoGPT, status, body, headers, kind, message,
                            code, user_message) -> None:
    fake_nanogpt.fail_next("/tts", status, body, {**headers, "X-Request-ID": "req-abc-123"})
    with pytest.raises(NanoGPTError) as info:
        await client.tts("Hello", model="Kokoro-82m")
    error = info.value
    assert type(error) is kind
    assert (error.status, error.message, error.code, error.request_id) == (status, message, code, "req-abc-123")
    assert error.user_message == user_message
    assert "req-abc-123" in str(error)
    if kind is InsufficientBalance and "requiredBalance" in body:
        assert error.required_balance == Decimal("0.0035")
    if kind is RateLimited:
        assert error.retry_after == float(headers["Retry-After"])
    assert len(fake_nanogpt.tts_requests) == 1  # a paid call: never retried


async def test_a_wrong_key_is_an_auth_error(session, fake_nanogpt: FakeNanoGPT) -> None:
    client = NanoGPTClient(session, fake_nanogpt.base_url, "sk-nano-00000000-0000-0000-0000-000000000000")
    with pytest.raises(AuthError) as info:
        await client.check_balance()
    assert info.value.status == 401
    assert len(fake_nanogpt.requests) == 1  # 401 is not retried


async def test_a_real_insufficient_balance(client: NanoGPTClient, fake_nanogpt: FakeNanoGPT) -> None:
    fake_nanogpt.balance_usd = Decimal("0.10")
    with pytest.raises(InsufficientBalance) as info:
        await client.submit_minimax_clone(b"ID3audio", "a.mp3", custom_voice_id=VOICE_ID)
    assert info.value.required_balance == Decimal("1.0") and fake_nanogpt.charges == []


async def test_a_garbled_success_of_a_paid_call_may_have_been_charged(client: NanoGPTClient,
                                                                      fake_nanogpt: FakeNanoGPT) -> None:
    fake_nanogpt.fail_next("/voice-clone/qwen", 202, "{not json", {"Content-Type": "application/json"})
    with pytest.raises(UpstreamUnavailable) as info:
        await client.submit_qwen_clone(b"ID3audio", "a.mp3")
    assert info.value.maybe_charged
    fake_nanogpt.fail_next("/voice-clone/qwen", 202, {"status": "pending"})
    with pytest.raises(UpstreamUnavailable) as info:
        await client.submit_qwen_clone(b"ID3audio", "a.mp3")
    assert info.value.maybe_charged and "runId" in info.value.message
    assert len(fake_nanogpt.submits) == 2


# -- paid calls: timeouts, dropped connections, refused connections ---------------------------------


async def test_a_paid_submit_that_times_out_is_not_retried(session, fake_nanogpt: FakeNanoGPT) -> None:
    client = NanoGPTClient(session, fake_nanogpt.base_url, fake_nanogpt.api_key, timeout=0.2, sleep=FastSleep())
    fake_nanogpt.fail_next("/voice-clone/minimax", delay=0.5)  # reaches the fake, answers too late
    with pytest.raises(UpstreamUnavailable) as info:
        await client.submit_minimax_clone(b"ID3audio", "a.mp3", custom_voice_id=VOICE_ID)
    assert info.value.maybe_charged is True
    assert "may have been charged" in str(info.value)
    await asyncio.sleep(0.4)
    assert len(fake_nanogpt.submits) == 1
    assert len(fake_nanogpt.charges) == 1  # the job exists: the fake went on and charged it


async def test_a_paid_tts_whose_connection_drops_may_have_been_charged(client: NanoGPTClient,
                                                                       fake_nanogpt: FakeNanoGPT) -> None:
    fake_nanogpt.fail_next("/tts", drop=True)
    with pytest.raises(UpstreamUnavailable) as info:
        await client.tts("Hello", model="Kokoro-82m")
    assert info.value.maybe_charged
    assert len(fake_nanogpt.tts_requests) == 1


async def test_a_504_on_a_paid_call_may_have_been_charged(client: NanoGPTClient, fake_nanogpt: FakeNanoGPT) -> None:
    fake_nanogpt.fail_next("/voice-clone/qwen", 504)
    with pytest.raises(UpstreamUnavailable) as info:
        await client.submit_qwen_clone(b"ID3audio", "a.mp3")
    assert info.value.maybe_charged and len(fake_nanogpt.submits) == 1


async def test_a_refused_connection_is_retried_once(fake_nanogpt: FakeNanoGPT) -> None:
    connector, resolver, base_url = fake_nanogpt.refusing_connector(refusals=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        client = NanoGPTClient(session, base_url, fake_nanogpt.api_key, sleep=FastSleep())
        ticket = await client.submit_minimax_clone(b"ID3audio", "a.mp3", custom_voice_id=VOICE_ID)
    assert ticket.run_id and resolver.calls == 2
    assert len(fake_nanogpt.submits) == 1


async def test_a_connection_refused_twice_gives_up_uncharged(fake_nanogpt: FakeNanoGPT) -> None:
    connector, resolver, base_url = fake_nanogpt.refusing_connector(refusals=10)
    async with aiohttp.ClientSession(connector=connector) as session:
        client = NanoGPTClient(session, base_url, fake_nanogpt.api_key, sleep=FastSleep())
        with pytest.raises(UpstreamUnavailable) as info:
            await client.tts("Hello", model="Kokoro-82m")
    assert info.value.maybe_charged is False and resolver.calls == 2
    assert fake_nanogpt.requests == []


# -- downloads --------------------------------------------------------------------------------------


async def test_download_is_size_capped(client: NanoGPTClient, fake_nanogpt: FakeNanoGPT) -> None:
    url = fake_nanogpt.put_storage("big.bin", b"\0" * 200_000, "application/octet-stream")
    with pytest.raises(DownloadTooLarge):
        await client.download(url, max_bytes=100_000)
    fake_nanogpt.storage_chunked = True  # no Content-Length: the cap applies while streaming
    with pytest.raises(DownloadTooLarge):
        await client.download(url, max_bytes=100_000)
    data, _ = await client.download(url, max_bytes=200_000)
    assert len(data) == 200_000
    assert len(fake_nanogpt.requests_to("^/storage/")) == 3  # never retried


async def test_download_detects_truncation_and_retries(client: NanoGPTClient, fake_nanogpt: FakeNanoGPT) -> None:
    audio = make_tone(1.0, "mp3")
    url = fake_nanogpt.put_storage("speech.mp3", audio, "audio/mpeg")
    fake_nanogpt.fail_next("/storage/.*", truncate=True)
    data, content_type = await client.download(url)
    assert data == audio and content_type == "audio/mpeg"
    assert len(fake_nanogpt.requests_to("^/storage/")) == 2
    fake_nanogpt.fail_next("/storage/.*", truncate=True, times=10)
    with pytest.raises(UpstreamUnavailable):
        await client.download(url)
    assert len(fake_nanogpt.requests_to("^/storage/")) == 2 + client.safe_attempts


async def test_download_retries_5xx_but_not_404(client: NanoGPTClient, fake_nanogpt: FakeNanoGPT) -> None:
    url = fake_nanogpt.put_storage("x.wav", make_tone(1.0, "wav"), "audio/x-wav")
    fake_nanogpt.fail_next("/storage/x.wav", 503)
    data, content_type = await client.download(url + "?X-Amz-Signature=abc")
    assert content_type == "audio/wav" and data[:4] == b"RIFF"
    fake_nanogpt.expire_storage(url)
    with pytest.raises(InvalidRequest) as info:
        await client.download(url)
    assert info.value.status == 404
    assert len(fake_nanogpt.requests_to("^/storage/")) == 3


async def test_download_refuses_non_http_urls(client: NanoGPTClient) -> None:
    with pytest.raises(InvalidRequest):
        await client.download("file:///etc/passwd")


# -- balance ----------------------------------------------------------------------------------------


async def test_check_balance(client: NanoGPTClient, fake_nanogpt: FakeNanoGPT) -> None:
    fake_nanogpt.balance_usd = Decimal("129.46956147")
    assert await client.check_balance() == Balance(usd=Decimal("129.46956147"), nano=Decimal("26.71801147"))
    fake_nanogpt.fail_next("/check-balance", 500)
    assert (await client.check_balance()).usd == Decimal("129.46956147")  # retried


# -- secrets ----------------------------------------------------------------------------------------


async def test_the_key_never_appears_in_logs_errors_or_reprs(session, fake_nanogpt: FakeNanoGPT,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    key = fake_nanogpt.api_key
    caplog.set_level(logging.DEBUG)
    client = NanoGPTClient(session, fake_nanogpt.base_url, key, timeout=0.2, sleep=FastSleep())
    assert key not in repr(client) and key not in str(vars(client).get("base_url"))
    errors: list[BaseException] = []
    fake_nanogpt.fail_next("/tts", 401, {"error": {"message": f"Invalid API key {key}", "code": "invalid_api_key"}})
    fake_nanogpt.fail_next("/voice-clone/qwen", delay=0.5)
    fake_nanogpt.fail_next("/check-balance", 500, f"boom {key}", times=5)
    fake_nanogpt.fail_next("/voice-clone/minimax", 400, {"error": key})
    for call in (client.tts("Hi", model="Kokoro-82m"), client.submit_qwen_clone(b"ID3audio", "a.mp3"),
                 client.check_balance(),
                 client.submit_minimax_clone(b"ID3audio", "a.mp3", custom_voice_id=VOICE_ID)):
        with pytest.raises(NanoGPTError) as info:
            await call
        errors.append(info.value)
    fake_nanogpt.tts_mode = "url"
    await client.tts("Hello", model="Kokoro-82m")
    for error in errors:
        assert key not in str(error) and key not in repr(error) and key not in error.message
        assert key not in error.user_message
    assert caplog.records, "expected log lines"
    for record in caplog.records:
        assert key not in record.getMessage()
    assert key not in caplog.text
    assert fake_nanogpt.credential_leaks == []


# -- the fake itself --------------------------------------------------------------------------------


async def test_the_fake_answers_with_bodies_that_match_the_openapi(client: NanoGPTClient, session,
                                                                   fake_nanogpt: FakeNanoGPT) -> None:
    document = json.loads(OPENAPI_FILE.read_text())
    registry = Registry().with_resource("urn:doc", Resource.from_contents(document,
                                                                          default_specification=DRAFT202012))

    def check(schema_name: str, body: dict) -> None:
        validator = Draft202012Validator({"$ref": f"urn:doc#/components/schemas/{schema_name}"}, registry=registry)
        assert list(validator.iter_errors(body)) == [], (schema_name, body)

    minimax = await client.submit_minimax_clone(b"ID3audio", "a.mp3", custom_voice_id=VOICE_ID)
    qwen = await client.submit_qwen_clone(b"ID3audio", "a.mp3")
    check("VoiceCloneAsyncResponse", minimax.raw)
    check("VoiceCloneAsyncResponse", qwen.raw)
    for _ in range(2):
        check("VoiceCloneMinimaxStatusResponse", (await client.clone_status("minimax", minimax.run_id)).raw)
        check("VoiceCloneQwenStatusResponse", (await client.clone_status("qwen", qwen.run_id)).raw)
    fake_nanogpt.tts_mode = "url"
    async with session.post(f"{fake_nanogpt.base_url}/tts", json={"text": "Hi", "model": "Kokoro-82m"},
                            headers={"Authorization": f"Bearer {fake_nanogpt.api_key}"}) as resp:
        check("TTSResponse", json.loads(await resp.text()))
    async with session.post(f"{fake_nanogpt.base_url}/check-balance",
                            headers={"x-api-key": fake_nanogpt.api_key}) as resp:
        check("BalanceResponse", await resp.json())


async def test_the_fake_reports_schema_violations(session, fake_nanogpt: FakeNanoGPT) -> None:
    headers = {"Authorization": f"Bearer {fake_nanogpt.api_key}"}
    async with session.post(f"{fake_nanogpt.base_url}/tts", headers=headers,
                            json={"text": "Hi", "model": "not-a-model", "sped": 2}) as resp:
        await resp.read()
    async with session.post(f"{fake_nanogpt.base_url}/voice-clone/qwen/status", headers=headers,
                            json={"cost": 1}) as resp:
        assert resp.status == 400
    async with session.get(f"{fake_nanogpt.base_url}/tts/status", headers=headers) as resp:
        assert resp.status == 404
    violations = list(fake_nanogpt.schema_violations)
    fake_nanogpt.schema_violations.clear()
    assert any("not-a-model" in v for v in violations)
    assert any("'sped'" in v for v in violations)
    assert any("'runId' is a required property" in v for v in violations)
    assert any("missing query parameter runId" in v for v in violations)


async def test_the_fake_handles_many_concurrent_calls(client: NanoGPTClient, fake_nanogpt: FakeNanoGPT) -> None:
    fake_nanogpt.tts_latency = 0.05
    results = await asyncio.gather(*(client.tts(f"line {i}", model="Kokoro-82m") for i in range(200)))
    assert len({len(r.audio) for r in results}) == 1
    assert len(fake_nanogpt.charges) == 200
    matches = await fake_nanogpt.wait_for("^/tts$", count=200, timeout=1)
    assert len(matches) == 200
