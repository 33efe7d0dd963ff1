"""A fake NanoGPT: a real aiohttp server on 127.0.0.1 speaking the parts of the API nanovoice uses.

    fake = FakeNanoGPT()
    await fake.start()            # fake.base_url == "http://127.0.0.1:PORT/api", fake.api_key == "sk-nano-…"
    ...
    await fake.close()

Bodies are shaped as NanoGPT's own answers are; every request is validated against NanoGPT's own OpenAPI
(``tests/data/nanogpt-openapi-subset.json``) and problems land in ``fake.schema_violations``. The
fake's own storage (``/storage/…``) serves ``audioUrl`` files, clone previews and speaker embeddings
and notes in ``fake.credential_leaks`` any download that carried credentials. Both lists must stay
empty (the ``fake_nanogpt`` fixture asserts it).

Scripting (see the attributes in ``FakeNanoGPT.__init__``):

* clone runs: ``fake.clone_script = [Step("processing", poll_after=0.05), Step("completed")]`` is the
  default for new runs (the last step repeats), ``fake.script_run(run_id, steps)`` for one run,
  ``fake.complete_after(seconds, poll_after=5)`` for a time-based mode (processing with
  ``X-Poll-After`` until ``seconds`` after submit, then completed);
* faults: ``fake.fail_next(path, status, body=…, headers=…, times=…, delay=…, drop=…, truncate=…)``;
  ``release = fake.hold_next(path)`` holds the next request until ``release.set()``;
* TTS: ``fake.tts_mode = "bytes" | "url" | "ticket"``, ``fake.tts_latency``, ``fake.tts_ticket_polls``,
  ``fake.tts_ticket_result = "completed" | "error" | "content_policy"``, ``fake.content_policy_words``;
* money: ``fake.balance_usd`` (charges are deducted; 402 when too low), ``fake.charges``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import re
import socket
import struct
import subprocess
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import aiohttp.abc
import imageio_ffmpeg
from aiohttp import web
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

OPENAPI_FILE = Path(__file__).resolve().parent.parent / "data" / "nanogpt-openapi-subset.json"
API_PREFIX = "/api"
STORAGE_PREFIX = "/storage/"

MINIMAX_CLONE_COST = Decimal("1.0")
QWEN_CLONE_COST = Decimal("0.25")
CUSTOM_VOICE_ID_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]{7,}$")
# Prices per 1k characters: documented ones, and guesses for the models whose prices are not.
TTS_PRICES_PER_1K = {
    "Kokoro-82m": Decimal("0.001"),
    "gpt-4o-mini-tts": Decimal("0.0006"),
    "tts-1": Decimal("0.015"),
    "tts-1-hd": Decimal("0.030"),
    "Elevenlabs-Turbo-V2.5": Decimal("0.06"),
}
TTS_DEFAULT_PRICE_PER_1K = Decimal("0.10")  # MiniMax / Qwen: no published price, so a guess
TTS_CHAR_LIMITS = {"Kokoro-82m": 10_000, "Elevenlabs-Turbo-V2.5": 10_000, "tts-1": 4096, "tts-1-hd": 4096,
                   "gpt-4o-mini-tts": 4096}
TTS_DEFAULT_CHAR_LIMIT = 10_000
MINIMAX_SYSTEM_VOICES = frozenset({"Wise_Woman", "Calm_Woman", "Friendly_Person", "Deep_Voice_Man", "Casual_Guy"})
# Spellings NanoGPT's docs allow besides the OpenAPI property names.
FIELD_ALIASES = {
    "/voice-clone/minimax": {"custom_voice_id", "model", "previewText"},
    "/voice-clone/qwen": {"audio_url", "reference_text"},
}
SUBMIT_PATHS = {"/voice-clone/minimax": "minimax", "/voice-clone/qwen": "qwen"}
STATUS_PATHS = {"/voice-clone/minimax/status": "minimax", "/voice-clone/qwen/status": "qwen"}
CONTENT_POLICY_MESSAGE = "Content rejected by provider. Please modify your text and try again."
TTS_FAILED_MESSAGE = "TTS generation failed. Please try again."
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "cookie", "proxy-authorization")

# -- real audio, generated once per process --------------------------------------------------------

_FORMATS = {
    # name: (ffmpeg output arguments, content type)
    "mp3": (["-c:a", "libmp3lame", "-b:a", "64k", "-f", "mp3"], "audio/mpeg"),
    "wav": (["-c:a", "pcm_s16le", "-f", "wav"], "audio/wav"),
    "opus": (["-c:a", "libopus", "-b:a", "32k", "-ar", "48000", "-f", "ogg"], "audio/ogg"),
    "ogg": (["-c:a", "libopus", "-b:a", "32k", "-ar", "48000", "-f", "ogg"], "audio/ogg"),
    "aac": (["-c:a", "aac", "-b:a", "64k", "-f", "adts"], "audio/aac"),
    "flac": (["-c:a", "flac", "-f", "flac"], "audio/flac"),
    "pcm": (["-c:a", "pcm_s16le", "-f", "s16le"], "audio/pcm"),
    "m4a": (["-c:a", "aac", "-b:a", "64k", "-f", "ipod"], "audio/mp4"),
}


_TONES: dict[tuple[float, str, int, int], bytes] = {}


def make_tone(seconds: float = 1.0, fmt: str = "mp3", frequency: int = 440, sample_rate: int = 44100) -> bytes:
    """A real, decodable mono sine tone made by the bundled ffmpeg (cached per process).
    ``fmt``: mp3, wav, ogg/opus (Ogg Opus), aac (ADTS), flac, pcm (raw s16le), m4a."""
    key = (float(seconds), fmt, frequency, sample_rate)
    cached = _TONES.get(key)
    if cached is not None:
        return cached
    args, _ = _FORMATS[fmt]
    with tempfile.TemporaryDirectory() as tmp:  # a seekable output, so WAV/FLAC/M4A headers hold the real length
        out = Path(tmp) / f"tone.{fmt}"
        _ffmpeg(seconds, frequency, sample_rate, [*args, str(out)])
        data = out.read_bytes()
    _TONES[key] = data
    return data


async def make_tone_async(seconds: float = 1.0, fmt: str = "mp3") -> bytes:
    """``make_tone`` without blocking the event loop the first time."""
    cached = _TONES.get((float(seconds), fmt, 440, 44100))
    return cached if cached is not None else await asyncio.to_thread(make_tone, seconds, fmt)


def _ffmpeg(seconds: float, frequency: int, sample_rate: int, output: list[str]) -> bytes:
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-f", "lavfi",
               "-i", f"sine=frequency={frequency}:duration={seconds}:sample_rate={sample_rate}", "-ac", "1",
               *output]
    return subprocess.run(command, check=True, capture_output=True, timeout=60).stdout


def content_type_of(fmt: str) -> str:
    return _FORMATS[fmt][1]


def fake_safetensors() -> bytes:
    """A small but well-formed .safetensors file (one F32 tensor), standing in for a speaker embedding."""
    header = json.dumps({"__metadata__": {"format": "pt"},
                         "speaker_embedding": {"dtype": "F32", "shape": [1, 16], "data_offsets": [0, 64]}}).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + struct.pack("<16f", *(i / 16 for i in range(16)))


SAFETENSORS = fake_safetensors()

# -- records and scripts ---------------------------------------------------------------------------


@dataclass
class Step:
    """One scripted answer of a clone status poll."""

    status: str = "processing"  # pending | processing | completed | failed
    poll_after: float | None = None  # → X-Poll-After
    http_status: int = 200
    error: str | None = None  # failed: the error text; non-200: the error message
    retry_after: float | str | None = None  # → Retry-After
    delay: float = 0.0  # seconds before answering
    body: Any = None  # overrides the JSON body (dict/list) or the raw body (str/bytes)
    headers: dict[str, str] | None = None
    drop: bool = False  # close the connection without answering


@dataclass
class FilePart:
    name: str
    filename: str | None
    content_type: str | None
    size: int
    data: bytes = field(repr=False)

    @property
    def bytes(self) -> bytes:
        return self.data


@dataclass
class RecordedRequest:
    method: str
    path: str  # without the /api prefix: "/tts", "/voice-clone/qwen/status", "/storage/…"
    query: dict[str, str]
    headers: dict[str, str]
    json: Any
    form: dict[str, str]
    files: list[FilePart]
    time: float
    content_type: str | None = None
    body_size: int = 0
    status: int | None = None  # what the fake answered (None: dropped or not answered yet)


@dataclass
class Submit:
    """A request that reached a clone submit endpoint (paid or not: see ``charges``)."""

    provider: str
    fields: dict[str, Any]  # JSON body, or form fields (strings)
    files: list[FilePart]
    is_json: bool
    time: float
    run_id: str | None = None
    status: int | None = None


@dataclass
class Charge:
    kind: str  # clone_minimax | clone_qwen | tts | tts_refund
    amount: Decimal  # negative for refunds
    currency: str
    ref: str  # run id (clones, ticket TTS) or request id
    model: str | None = None
    chars: int | None = None
    time: float = 0.0


@dataclass
class Fault:
    path: str
    status: int | None
    body: Any
    headers: dict[str, str] | None
    remaining: int
    delay: float
    drop: bool
    truncate: bool
    release: asyncio.Event | None = None  # hold_next: wait for this before handling the request

    def matches(self, path: str) -> bool:
        return path == self.path or re.fullmatch(self.path, path) is not None


@dataclass
class CloneRun:
    run_id: str
    provider: str
    submitted_at: float
    cost: Decimal
    payment_source: str
    fields: dict[str, Any]
    custom_voice_id: str | None = None
    steps: list[Step] | None = None
    step_index: int = 0
    ready_at: float | None = None  # time mode
    poll_after: float | None = None  # time mode
    completed_at: float | None = None
    first_completed_poll: float | None = None
    preview_url: str | None = None
    embedding_url: str | None = None


@dataclass
class TtsRun:
    run_id: str
    model: str
    text: str
    cost: Decimal
    payment_source: str
    polls_left: int
    result: str
    audio_url: str
    content_type: str
    refunded: bool = False
    polls: list[float] = field(default_factory=list)


class RefusingResolver(aiohttp.abc.AbstractResolver):
    """Resolves any host to 127.0.0.1: to a closed port (connection refused) for the first
    ``refusals`` look-ups, then to ``port``. Use with ``TCPConnector(resolver=…, use_dns_cache=False)``."""

    def __init__(self, port: int, refusals: int = 1) -> None:
        self.port = port
        self.refusals = refusals
        self.calls = 0
        self.closed_port = _closed_port()

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict[str, Any]]:
        self.calls += 1
        target = self.closed_port if self.calls <= self.refusals else self.port
        return [{"hostname": host, "host": "127.0.0.1", "port": target, "family": socket.AF_INET, "proto": 0,
                 "flags": socket.AI_NUMERICHOST}]

    async def close(self) -> None:
        return None


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _dumps(obj: Any) -> str:
    """JSON with Decimals written exactly."""
    decimals: dict[str, str] = {}

    def encode(value: Any) -> Any:
        if isinstance(value, Decimal):
            token = f"\x00d{len(decimals)}\x00"
            decimals[token] = format(value, "f")
            return token
        if isinstance(value, dict):
            return {k: encode(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [encode(v) for v in value]
        return value

    text = json.dumps(encode(obj))
    for token, number in decimals.items():
        text = text.replace(json.dumps(token), number)
    return text


RECORD_KEY = web.RequestKey("nanogpt_record", RecordedRequest)
SUBMIT_KEY = web.RequestKey("nanogpt_submit", Submit)


class _Dropped(Exception):
    """The fake closed the connection on purpose."""


# -- the server ------------------------------------------------------------------------------------


class FakeNanoGPT:
    def __init__(self, *, api_key: str | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.api_key = api_key or f"sk-nano-{uuid.uuid4()}"
        self.clock = clock
        self.host = "127.0.0.1"
        self.port: int | None = None
        # clone runs
        self.clone_script: list[Step] = [Step("processing", poll_after=0.05), Step("completed")]
        self.runs: dict[str, CloneRun] = {}
        self.status_polls: dict[str, list[float]] = defaultdict(list)
        self.completed_at: dict[str, float] = {}
        self.voices: dict[str, str] = {}  # MiniMax customVoiceId → run id (completed clones)
        self.strict_voices = True  # MiniMax TTS needs a completed clone or a system voice
        self._complete_after: tuple[float, float | None] | None = None
        # TTS
        self.tts_mode = "bytes"  # bytes | url | ticket
        self.tts_latency = 0.0
        self.tts_seconds = 1.0  # length of the tone every TTS answer carries
        self.tts_format = "mp3"  # when the request names no response_format
        self.tts_content_type: str | None = None  # override the Content-Type of bytes answers ("audio/mp3")
        self.tts_ticket_polls = 1  # pending answers before the ticket's result
        self.tts_ticket_result = "completed"  # completed | error | content_policy
        self.tts_poll_after: float | None = None
        self.tts_prices = dict(TTS_PRICES_PER_1K)
        self.unimplemented_models: set[str] = set()  # → 501
        self.content_policy_words: set[str] = {"forbidden-content"}
        self.fetch_embeddings = True  # Qwen TTS fetches speaker_voice_embedding_file_url like NanoGPT does
        self.embedding_fetches: list[tuple[str, int | None]] = []
        self.tts_runs: dict[str, TtsRun] = {}
        # money
        self.balance_usd = Decimal("100.00")
        self.balance_nano = Decimal("26.71801147")
        self.payment_source = "USD"
        self.charges: list[Charge] = []
        # records
        self.requests: list[RecordedRequest] = []
        self.submits: list[Submit] = []
        self.schema_violations: list[str] = []
        self.credential_leaks: list[str] = []
        self.storage: dict[str, tuple[bytes, str]] = {}
        self.expired_storage: set[str] = set()
        self.storage_chunked = False  # serve storage files chunked, without Content-Length
        self.faults: list[Fault] = []
        self.record_bodies = True  # keep file bytes in the request log
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._closing = asyncio.Event()
        self._changed = asyncio.Event()
        self._validators = _load_validators()

    # -- life cycle -------------------------------------------------------------------------------

    async def start(self) -> FakeNanoGPT:
        await asyncio.gather(make_tone_async(1.0, "mp3"), make_tone_async(1.0, "wav"))
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._middleware])
        api = API_PREFIX
        app.router.add_post(f"{api}/voice-clone/minimax", self._submit_clone)
        app.router.add_post(f"{api}/voice-clone/qwen", self._submit_clone)
        app.router.add_post(f"{api}/voice-clone/minimax/status", self._clone_status)
        app.router.add_post(f"{api}/voice-clone/qwen/status", self._clone_status)
        app.router.add_post(f"{api}/tts", self._tts)
        app.router.add_get(f"{api}/tts/status", self._tts_status)
        app.router.add_post(f"{api}/check-balance", self._check_balance)
        app.router.add_get(STORAGE_PREFIX + "{name:.+}", self._storage)
        app.router.add_route("*", f"{api}/{{tail:.*}}", self._unknown)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0, backlog=2048)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        return self

    async def close(self) -> None:
        self._closing.set()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeNanoGPT:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.origin + API_PREFIX

    def refusing_connector(self, refusals: int = 1) -> tuple[aiohttp.TCPConnector, RefusingResolver, str]:
        """A connector whose first ``refusals`` connections are refused before anything is sent, its
        resolver (``.calls`` counts attempts) and the base URL to use with it."""
        assert self.port is not None, "start() first"
        resolver = RefusingResolver(self.port, refusals)
        connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False, force_close=True)
        return connector, resolver, f"http://nanogpt.test:{self.port}{API_PREFIX}"

    # -- scripting --------------------------------------------------------------------------------

    def script_run(self, run_id: str, steps: Iterable[Step]) -> None:
        run = self.runs[run_id]
        run.steps, run.step_index, run.ready_at = list(steps), 0, None

    def complete_after(self, seconds: float, poll_after: float | None = None, *, run_id: str | None = None) -> None:
        """Time mode: answer 'processing' (with X-Poll-After) until ``seconds`` after submit, then
        'completed'. For one run, or (no ``run_id``) for every run submitted from now on."""
        if run_id is not None:
            run = self.runs[run_id]
            run.ready_at, run.poll_after = run.submitted_at + seconds, poll_after
        else:
            self._complete_after = (seconds, poll_after)

    def use_script(self) -> None:
        """Back from time mode to ``clone_script`` for new runs."""
        self._complete_after = None

    def fail_next(self, path: str, status: int | None = None, body: Any = None, headers: dict[str, str] | None = None,
                  times: int = 1, delay: float = 0.0, drop: bool = False, truncate: bool = False) -> None:
        """The next ``times`` requests to ``path`` (exact, e.g. ``"/tts"``, or a regex such as
        ``"/storage/.*"``) answer ``status`` with ``body`` (dict → JSON; str/bytes raw; None → a typical
        error body). ``delay``: wait first (longer than a client timeout = a hang); ``drop``: close
        the connection without answering; ``status=None``: handle normally after the delay;
        ``truncate``: announce the full Content-Length but send only half the body."""
        self.faults.append(Fault(path, status, body, headers, times, delay, drop, truncate))

    def hold_next(self, path: str, times: int = 1) -> asyncio.Event:
        """The next ``times`` requests to ``path`` (as for :meth:`fail_next`) are held (they are recorded, then
        wait) until the returned event is set, then handled normally: NanoGPT still working on an answer for
        as long as a test needs."""
        release = asyncio.Event()
        self.faults.append(Fault(path, None, None, None, times, 0.0, False, False, release))
        return release

    def reset_faults(self) -> None:
        self.faults.clear()

    def put_storage(self, name: str, data: bytes, content_type: str) -> str:
        self.storage[name] = (data, content_type)
        return f"{self.origin}{STORAGE_PREFIX}{name}"

    def expire_storage(self, url_or_name: str) -> None:
        """The file vanishes (404), as NanoGPT's files do after their retention."""
        name = url_or_name.rsplit(STORAGE_PREFIX, 1)[-1]
        self.expired_storage.add(name)

    def expire_voice(self, custom_voice_id: str) -> None:
        """MiniMax deleted the voice (unused for 7 days): TTS with it now fails."""
        self.voices.pop(custom_voice_id, None)

    async def wait_for(
        self, path_regex: str, count: int = 1, timeout: float = 5.0  # noqa: ASYNC109 (this helper is a timeout)
    ) -> list[RecordedRequest]:
        """Wait until ``count`` requests whose path matches ``path_regex`` (re.search) have arrived."""
        pattern = re.compile(path_regex)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        matches: list[RecordedRequest] = []
        seen = 0
        while True:
            self._changed.clear()
            for request in self.requests[seen:]:
                if pattern.search(request.path):
                    matches.append(request)
            seen = len(self.requests)
            if len(matches) >= count:
                return matches
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"{len(matches)} of {count} requests matching {path_regex!r} after {timeout} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    # -- convenience views ------------------------------------------------------------------------

    @property
    def tts_requests(self) -> list[Any]:
        return [r.json for r in self.requests if r.path == "/tts" and r.method == "POST"]

    def requests_to(self, path_regex: str) -> list[RecordedRequest]:
        pattern = re.compile(path_regex)
        return [r for r in self.requests if pattern.search(r.path)]

    @property
    def total_charged(self) -> Decimal:
        return sum((c.amount for c in self.charges), Decimal(0))

    # -- middleware: record, validate, faults, auth -------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        path = request.path
        rel = path[len(API_PREFIX):] if path.startswith(API_PREFIX + "/") else path
        is_api = rel != path
        record = RecordedRequest(request.method, rel, dict(request.query), dict(request.headers), None, {}, [],
                                 self.clock(), request.content_type if request.body_exists else None)
        request[RECORD_KEY] = record
        try:
            await self._read_body(request, record)
        except ValueError as exc:
            self._violation(f"{request.method} {rel}: unreadable body: {exc}")
            self._append(record)
            return self._answer(record, self._error(400, "Invalid request body", "invalid_request_error"))
        self._append(record)
        if is_api:
            self._validate(request.method, rel, record)
        if rel in SUBMIT_PATHS and request.method == "POST":
            submit = Submit(SUBMIT_PATHS[rel], dict(record.json) if isinstance(record.json, dict) else
                            dict(record.form), list(record.files), record.json is not None, record.time)
            self.submits.append(submit)
            request[SUBMIT_KEY] = submit
        fault = self._take_fault(rel)
        try:
            if fault is not None:
                if fault.delay:
                    await self._pause(fault.delay)
                if fault.release is not None:
                    await self._held(fault.release)
                if fault.drop:
                    raise _Dropped
                if fault.status is not None:
                    response = self._fault_response(fault)
                    return await self._finish(request, record, response, fault.truncate)
            if is_api and not self._authorized(request):
                response = self._error(401, "Invalid or missing API key", "authentication_error", "invalid_api_key")
            else:
                response = await handler(request)
            return await self._finish(request, record, response, fault is not None and fault.truncate)
        except _Dropped:
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=499)

    async def _finish(self, request: web.Request, record: RecordedRequest, response: web.StreamResponse,
                      truncate: bool) -> web.StreamResponse:
        submit = request.get(SUBMIT_KEY)
        if submit is not None:
            submit.status = response.status
        if not truncate or not isinstance(response, web.Response):
            return self._answer(record, response)
        body = response.body if isinstance(response.body, bytes) else (response.text or "").encode()
        stream = web.StreamResponse(status=response.status, headers=response.headers)
        stream.content_length = len(body)
        record.status = response.status
        await stream.prepare(request)
        await stream.write(body[: len(body) // 2])
        if request.transport is not None:
            request.transport.close()
        return stream

    def _answer(self, record: RecordedRequest, response: web.StreamResponse) -> web.StreamResponse:
        record.status = response.status
        return response

    async def _read_body(self, request: web.Request, record: RecordedRequest) -> None:
        if not request.body_exists:
            return
        if request.content_type == "multipart/form-data":
            reader = await request.multipart()
            size = 0
            async for part in reader:
                if not isinstance(part, aiohttp.BodyPartReader):
                    continue
                data = await part.read()
                size += len(data)
                if part.filename is not None:
                    record.files.append(FilePart(part.name or "", part.filename,
                                                 part.headers.get("Content-Type"), len(data),
                                                 data if self.record_bodies else b""))
                else:
                    record.form[part.name or ""] = data.decode("utf-8")
            record.body_size = size
            return
        raw = await request.read()
        record.body_size = len(raw)
        if request.content_type == "application/json":
            record.json = json.loads(raw, parse_float=Decimal)
        elif raw:
            record.form = {"_raw": raw.decode("utf-8", "replace")}

    def _append(self, record: RecordedRequest) -> None:
        self.requests.append(record)
        self._changed.set()

    def _take_fault(self, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.matches(path):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self.faults.remove(fault)
                return fault
        return None

    def _fault_response(self, fault: Fault) -> web.Response:
        headers = dict(fault.headers or {})
        headers.setdefault("X-Request-ID", self._request_id())
        body = fault.body
        if body is None:
            body = _default_error_body(fault.status or 500)
        if isinstance(body, (dict, list)):
            return web.Response(status=fault.status, text=_dumps(body), content_type="application/json",
                                headers=headers)
        if isinstance(body, str):
            body = body.encode()
        headers.setdefault("Content-Type", "text/plain")
        return web.Response(status=fault.status, body=body, headers=headers)

    def _authorized(self, request: web.Request) -> bool:
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer ") and auth[7:].strip() == self.api_key:
            return True
        return request.headers.get("x-api-key", "") == self.api_key

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake (and drop the request) when the fake is closing."""
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)
        if self._closing.is_set():
            raise _Dropped

    async def _held(self, release: asyncio.Event) -> None:
        """Wait for ``release``, but wake (and drop the request) when the fake is closing."""
        closing = asyncio.ensure_future(self._closing.wait())
        released = asyncio.ensure_future(release.wait())
        try:
            await asyncio.wait({closing, released}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
            released.cancel()
        if not release.is_set():
            raise _Dropped

    # -- validation -------------------------------------------------------------------------------

    def _violation(self, text: str) -> None:
        self.schema_violations.append(text)

    def _validate(self, method: str, rel: str, record: RecordedRequest) -> None:
        where = f"{method} {rel}"
        operation = self._validators.get((method.lower(), rel))
        if rel == "/tts/status" and method == "GET":
            self._validate_tts_status_query(record)
            return
        if operation is None:
            self._violation(f"{where}: no such operation in NanoGPT's API")
            return
        content, required = operation
        if not content:
            if record.json is not None or record.form or record.files:
                self._violation(f"{where}: takes no request body")
            return
        ctype = record.content_type
        if ctype is None:
            if required:
                self._violation(f"{where}: request body required")
            return
        if ctype not in content:
            self._violation(f"{where}: content type {ctype} not accepted (expected one of {sorted(content)})")
            return
        validator, properties = content[ctype]
        if ctype == "multipart/form-data":
            instance: Any = _coerce_form(record.form, properties)
            for part in record.files:
                if properties.get(part.name, {}).get("format") != "binary":
                    self._violation(f"{where}: unexpected file part {part.name!r}")
                instance[part.name] = "<binary>"
        else:
            instance = record.json
        for error in validator.iter_errors(instance):
            location = "/".join(str(p) for p in error.absolute_path) or "(body)"
            self._violation(f"{where}: {location}: {error.message}")
        if isinstance(instance, dict):
            allowed = set(properties) | FIELD_ALIASES.get(rel, set())
            for name in instance:
                if name not in allowed:
                    self._violation(f"{where}: unknown field {name!r} (NanoGPT would ignore it)")

    def _validate_tts_status_query(self, record: RecordedRequest) -> None:
        query = record.query
        for name in ("runId", "model"):
            if not query.get(name):
                self._violation(f"GET /tts/status: missing query parameter {name}")
        if "cost" in query:
            try:
                Decimal(query["cost"])
            except InvalidOperation:
                self._violation(f"GET /tts/status: cost {query['cost']!r} is not a number")
        if query.get("isApiRequest") not in (None, "true", "false"):
            self._violation(f"GET /tts/status: isApiRequest {query['isApiRequest']!r} is not a boolean")
        for name in query:
            if name not in ("runId", "model", "cost", "paymentSource", "isApiRequest"):
                self._violation(f"GET /tts/status: unknown query parameter {name!r}")

    # -- helpers ----------------------------------------------------------------------------------

    def _request_id(self) -> str:
        return f"req_{next(self._ids):08d}"

    def _json(self, body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
        headers = dict(headers or {})
        headers.setdefault("X-Request-ID", self._request_id())
        return web.Response(status=status, text=_dumps(body), content_type="application/json", headers=headers)

    def _error(self, status: int, message: str, error_type: str = "invalid_request_error", code: str | None = None,
               headers: dict[str, str] | None = None) -> web.Response:
        error: dict[str, Any] = {"message": message, "type": error_type}
        if code:
            error["code"] = code
        return self._json({"error": error}, status, headers)

    def _charge(self, kind: str, amount: Decimal, ref: str, *, model: str | None = None,
                chars: int | None = None) -> Charge:
        self.balance_usd -= amount
        charge = Charge(kind, amount, self.payment_source, ref, model, chars, self.clock())
        self.charges.append(charge)
        return charge

    def _insufficient(self, required: Decimal) -> web.Response | None:
        if self.balance_usd >= required:
            return None
        return self._json({"error": "Insufficient balance", "requiredBalance": required, "status": 402}, 402)

    def _new_run_id(self, provider: str) -> str:
        token = uuid.uuid4().hex
        return f"vc_run_{token[:12]}" if provider == "qwen" else f"{token[:6]}-{token[6:12]}-{token[12:20]}"

    # -- handlers: voice clone ----------------------------------------------------------------------

    async def _submit_clone(self, request: web.Request) -> web.StreamResponse:
        record: RecordedRequest = request[RECORD_KEY]
        provider = SUBMIT_PATHS[record.path]
        fields: dict[str, Any] = record.json if isinstance(record.json, dict) else dict(record.form)
        audio = next((f for f in record.files if f.name == "audio"), None)
        audio_url = fields.get("audioUrl") or fields.get("audio_url")
        if audio is None and not audio_url:
            return self._error(400, "Either an audio file or audioUrl is required")
        if audio is not None and audio.size == 0:
            return self._error(400, "Invalid audio format")
        if audio is not None and audio.size > 20 * 1024 * 1024:
            return self._error(413, "Audio file exceeds the 20 MB limit")
        custom_voice_id = None
        if provider == "minimax":
            custom_voice_id = fields.get("customVoiceId") or fields.get("custom_voice_id")
            if not custom_voice_id:
                return self._error(400, "customVoiceId is required")
            if not CUSTOM_VOICE_ID_RE.match(str(custom_voice_id)):
                return self._error(400, "customVoiceId must start with a letter and be at least 8 letters or digits")
            if custom_voice_id in self.voices or any(r.custom_voice_id == custom_voice_id for r in
                                                     self.runs.values()):
                return self._error(400, f"Voice id {custom_voice_id} already exists")
        cost = MINIMAX_CLONE_COST if provider == "minimax" else QWEN_CLONE_COST
        refusal = self._insufficient(cost)
        if refusal is not None:
            return refusal
        run_id = self._new_run_id(provider)
        now = self.clock()
        run = CloneRun(run_id, provider, now, cost, self.payment_source, fields, custom_voice_id)
        if self._complete_after is not None:
            seconds, poll_after = self._complete_after
            run.ready_at, run.poll_after = now + seconds, poll_after
        else:
            run.steps = list(self.clone_script)
        if provider == "minimax":
            run.preview_url = self.put_storage(f"previews/{run_id}.mp3", make_tone(1.0, "mp3"), "audio/mpeg")
        else:
            run.embedding_url = self.put_storage(f"embeddings/{run_id}/speaker-embedding.safetensors", SAFETENSORS,
                                                 "application/octet-stream")
        self.runs[run_id] = run
        self._charge(f"clone_{provider}", cost, run_id)
        submit = request.get(SUBMIT_KEY)
        if submit is not None:
            submit.run_id = run_id
        file_name = (audio.filename if audio is not None else None) or "audio_file"
        body = {"status": "pending", "runId": run_id,
                "model": "MiniMax-Voice-Clone" if provider == "minimax" else "qwen-voice-clone",
                "cost": cost, "paymentSource": self.payment_source, "isApiRequest": True,
                "fileName": file_name, "fileSize": audio.size if audio is not None else 0}
        return self._json(body, 202)

    async def _clone_status(self, request: web.Request) -> web.StreamResponse:
        record: RecordedRequest = request[RECORD_KEY]
        provider = STATUS_PATHS[record.path]
        body = record.json if isinstance(record.json, dict) else {}
        run_id = body.get("runId")
        if not isinstance(run_id, str) or not run_id:
            return self._error(400, "runId is required")
        run = self.runs.get(run_id)
        if run is None or run.provider != provider:
            return self._error(404, "Run not found", code="run_not_found")
        now = self.clock()
        self.status_polls[run_id].append(now)
        if run.ready_at is not None:
            step = Step("processing", poll_after=run.poll_after) if now < run.ready_at else Step("completed")
        else:
            steps = run.steps or [Step("completed")]
            step = steps[min(run.step_index, len(steps) - 1)]
            run.step_index += 1
        if step.delay:
            await self._pause(step.delay)
        if step.drop:
            raise _Dropped
        headers = dict(step.headers or {})
        if step.poll_after is not None:
            headers["X-Poll-After"] = _header_number(step.poll_after)
        if step.retry_after is not None:
            headers["Retry-After"] = _header_number(step.retry_after)
        if step.http_status != 200:
            fault = Fault(record.path, step.http_status, step.body if step.body is not None else
                          ({"error": step.error} if step.error else None), headers, 0, 0, False, False)
            return self._fault_response(fault)
        if step.body is not None:
            if isinstance(step.body, (dict, list)):
                return self._json(step.body, headers=headers)
            return web.Response(body=step.body.encode() if isinstance(step.body, str) else step.body,
                                content_type="application/json", headers=headers)
        return self._json(self._status_body(run, step, now), headers=headers)

    def _status_body(self, run: CloneRun, step: Step, now: float) -> dict[str, Any]:
        if step.status == "completed":
            if run.completed_at is None:
                run.completed_at = run.ready_at if run.ready_at is not None else now
                run.first_completed_poll = now
                self.completed_at[run.run_id] = run.completed_at
                if run.custom_voice_id:
                    self.voices[run.custom_voice_id] = run.run_id
            if run.provider == "minimax":
                return {"status": "completed", "audioUrls": [run.preview_url],
                        "metadata": {"model": "MiniMax-Voice-Clone"}}
            return {"status": "completed", "speakerEmbeddingUrl": run.embedding_url,
                    "metadata": {"model": "qwen-voice-clone"}}
        if step.status == "failed":
            return {"status": "failed", "error": step.error or "Voice clone failed"}
        return {"status": step.status}

    # -- handlers: TTS ----------------------------------------------------------------------------

    async def _tts(self, request: web.Request) -> web.StreamResponse:
        record: RecordedRequest = request[RECORD_KEY]
        body = record.json if isinstance(record.json, dict) else None
        if body is None or not isinstance(body.get("text"), str) or not body["text"].strip():
            return self._error(400, "Text is required")
        text: str = body["text"]
        model = str(body.get("model") or "Kokoro-82m")
        if model in self.unimplemented_models:
            return self._error(501, f"Model {model} is not implemented yet", code="model_not_implemented")
        limit = TTS_CHAR_LIMITS.get(model, TTS_DEFAULT_CHAR_LIMIT)
        if len(text) > limit:
            return self._error(413, f"Text exceeds the {limit} character limit for {model}", code="text_too_long")
        voice = body.get("voice")
        if model.startswith("Minimax-") and self.strict_voices:
            if not voice:
                return self._error(400, "voice is required for MiniMax models")
            if voice not in self.voices and voice not in MINIMAX_SYSTEM_VOICES:
                return self._error(400, f"Voice {voice} not found", code="voice_not_found")
        embedding_url = body.get("speaker_voice_embedding_file_url")
        if embedding_url is not None and model != "Qwen-3-TTS-1.7B":
            self._violation(f"POST /tts: speaker_voice_embedding_file_url sent with model {model}")
        if embedding_url and self.fetch_embeddings:
            ok = await self._fetch_embedding(str(embedding_url))
            if not ok:
                return self._error(400, "Could not load the speaker embedding file", code="invalid_embedding")
        policy = any(word in text.lower() for word in self.content_policy_words)
        if policy and self.tts_mode != "ticket":
            return self._error(400, CONTENT_POLICY_MESSAGE, code="CONTENT_POLICY_VIOLATION")
        price = self.tts_prices.get(model, TTS_DEFAULT_PRICE_PER_1K)
        cost = max(Decimal("0.0000001"),
                   (price * len(text) / 1000).quantize(Decimal("0.0000001"), rounding=ROUND_HALF_UP)).normalize()
        refusal = self._insufficient(cost)
        if refusal is not None:
            return refusal
        if self.tts_latency:
            await self._pause(self.tts_latency)
        fmt = str(body.get("response_format") or self.tts_format)
        if fmt not in _FORMATS:
            fmt = "mp3"
        audio = await make_tone_async(self.tts_seconds, fmt)
        content_type = content_type_of(fmt)
        request_id = self._request_id()
        if self.tts_mode == "bytes":
            self._charge("tts", cost, request_id, model=model, chars=len(text))
            return web.Response(body=audio, headers={"Content-Type": self.tts_content_type or content_type,
                                                     "X-Request-ID": request_id})
        name = f"tts/{uuid.uuid4().hex}.{_extension(fmt)}"
        audio_url = self.put_storage(name, audio, content_type)
        if self.tts_mode == "url":
            self._charge("tts", cost, request_id, model=model, chars=len(text))
            answer = {"audioUrl": audio_url, "contentType": content_type, "model": model, "text": text,
                      "voice": voice, "speed": body.get("speed", 1), "duration": Decimal("1.0"), "cost": cost,
                      "currency": self.payment_source}
            return self._json({k: v for k, v in answer.items() if v is not None}, headers={"X-Request-ID": request_id})
        run_id = uuid.uuid4().hex
        result = "content_policy" if policy else self.tts_ticket_result
        self.tts_runs[run_id] = TtsRun(run_id, model, text, cost, self.payment_source, self.tts_ticket_polls, result,
                                       audio_url, content_type)
        self._charge("tts", cost, run_id, model=model, chars=len(text))
        return self._json({"status": "pending", "runId": run_id, "model": model, "charged": True, "cost": cost,
                           "paymentSource": self.payment_source, "isApiRequest": True}, 202,
                          headers={"X-Request-ID": request_id})

    async def _fetch_embedding(self, url: str) -> bool:
        assert self._session is not None
        try:
            async with self._session.get(url) as resp:
                data = await resp.read()
                self.embedding_fetches.append((url, resp.status))
                return resp.status == 200 and len(data) > 8
        except (aiohttp.ClientError, TimeoutError):
            self.embedding_fetches.append((url, None))
            return False

    async def _tts_status(self, request: web.Request) -> web.StreamResponse:
        run = self.tts_runs.get(request.query.get("runId", ""))
        if run is None:
            return self._error(404, "Run not found", code="run_not_found")
        run.polls.append(self.clock())
        headers = {"X-Poll-After": _header_number(self.tts_poll_after)} if self.tts_poll_after is not None else None
        if run.polls_left > 0:
            run.polls_left -= 1
            return self._json({"status": "pending", "runId": run.run_id, "queuePosition": run.polls_left + 1},
                              headers=headers)
        if run.result in ("error", "content_policy"):
            if not run.refunded:
                run.refunded = True
                self._charge("tts_refund", -run.cost, run.run_id, model=run.model, chars=len(run.text))
            if run.result == "content_policy":
                return self._json({"status": "error", "code": "CONTENT_POLICY_VIOLATION",
                                   "error": CONTENT_POLICY_MESSAGE})
            return self._json({"status": "error", "error": TTS_FAILED_MESSAGE})
        return self._json({"status": "completed", "runId": run.run_id, "audioUrl": run.audio_url,
                           "contentType": run.content_type, "model": run.model, "cost": run.cost,
                           "paymentSource": run.payment_source, "duration": Decimal("1.0")})

    # -- handlers: balance, storage, unknown ---------------------------------------------------------

    async def _check_balance(self, request: web.Request) -> web.StreamResponse:
        return self._json({"usd_balance": format(self.balance_usd, "f"), "nano_balance": format(self.balance_nano, "f"),
                           "nanoDepositAddress": "nano_1gx385nnj7rw67hsksa3pyxwnfr48zu13t35ncjmtnqb9zdebtjhh7ahks34"})

    async def _storage(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        leaks = [h for h in CREDENTIAL_HEADERS if h in {k.lower() for k in request.headers}]
        carried = [k for k, v in request.headers.items() if self.api_key in v]
        if self.api_key in request.query_string:
            carried.append("query string")
        if leaks or carried:
            self.credential_leaks.append(f"GET {request.path}: {sorted(set(leaks) | set(carried))}")
        item = self.storage.get(name)
        if item is None or name in self.expired_storage:
            return web.Response(status=404, text="Not Found")
        data, content_type = item
        if not self.storage_chunked:
            return web.Response(body=data, headers={"Content-Type": content_type})
        stream = web.StreamResponse(headers={"Content-Type": content_type})
        stream.enable_chunked_encoding()
        await stream.prepare(request)
        for start in range(0, len(data), 4096):
            await stream.write(data[start:start + 4096])
        await stream.write_eof()
        return stream

    async def _unknown(self, request: web.Request) -> web.StreamResponse:
        return self._error(404, f"Not found: {request.method} {request.path}")


def _extension(fmt: str) -> str:
    return {"opus": "ogg", "pcm": "pcm"}.get(fmt, fmt)


def _header_number(value: float | str) -> str:
    if isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _default_error_body(status: int) -> dict[str, Any]:
    if status == 401:
        return {"error": {"message": "Invalid API key", "type": "authentication_error", "code": "invalid_api_key"}}
    if status == 402:
        return {"error": "Insufficient balance", "status": 402}
    if status == 429:
        return {"error": {"message": "Rate limit exceeded. Please slow down.", "type": "rate_limit_error",
                          "code": "rate_limit_exceeded"}}
    if status >= 500:
        return {"error": {"message": "Internal server error", "type": "server_error"}}
    return {"error": {"message": f"Request failed with status {status}", "type": "invalid_request_error"}}


def _coerce_form(form: dict[str, str], properties: dict[str, Any]) -> dict[str, Any]:
    """Multipart fields are strings: give them the schema's types where they parse, so a wrong value
    still fails validation."""
    out: dict[str, Any] = {}
    for name, value in form.items():
        kind = properties.get(name, {}).get("type")
        if kind == "boolean" and value in ("true", "false"):
            out[name] = value == "true"
        elif kind == "number":
            try:
                out[name] = Decimal(value)
            except InvalidOperation:
                out[name] = value
        elif kind == "integer" and re.fullmatch(r"-?\d+", value):
            out[name] = int(value)
        else:
            out[name] = value
    return out


@functools.cache
def _openapi() -> dict[str, Any]:
    return json.loads(OPENAPI_FILE.read_text(encoding="utf-8"))


@functools.cache
def _load_validators() -> dict[tuple[str, str], tuple[dict[str, tuple[Draft202012Validator, dict]], bool]]:
    """(method, path) → ({content type: (validator, properties)}, body required), from the OpenAPI file."""
    document = _openapi()
    base = "urn:nanogpt-openapi"
    registry = Registry().with_resource(base, Resource.from_contents(document, default_specification=DRAFT202012))
    out: dict[tuple[str, str], tuple[dict[str, tuple[Draft202012Validator, dict]], bool]] = {}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            body = operation.get("requestBody") or {}
            content: dict[str, tuple[Draft202012Validator, dict]] = {}
            for ctype, media in (body.get("content") or {}).items():
                schema = media.get("schema") or {}
                ref = schema.get("$ref")
                resolved = _resolve(document, ref) if ref else schema
                nested = '"$ref"' in json.dumps(resolved)  # flat schemas skip $ref resolution per request
                validator = Draft202012Validator({"$ref": f"{base}{ref}"} if ref and nested else resolved,
                                                 registry=registry)
                content[ctype] = (validator, resolved.get("properties", {}))
            out[(method.lower(), path)] = (content, bool(body.get("required")))
    return out


def _resolve(document: dict[str, Any], ref: str) -> dict[str, Any]:
    node: Any = document
    for part in ref.lstrip("#/").split("/"):
        node = node[part]
    return node


def storage_name(url: str) -> str:
    """The storage key of one of the fake's URLs."""
    return urlsplit(url).path.removeprefix(STORAGE_PREFIX)
