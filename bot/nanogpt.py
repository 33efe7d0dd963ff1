"""The NanoGPT API client: every endpoint nanovoice uses, typed results, typed errors.

Nothing here knows Discord. The :class:`aiohttp.ClientSession` belongs to the caller (``bot.app``);
this module never creates or closes one.

Facts come from NanoGPT's published API documentation; the places that rest on inference instead
(observed or tolerated behaviour NanoGPT does not document) are marked ``[I]`` here, so each is one
place to change.

Money is :class:`~decimal.Decimal` end to end: JSON is parsed with ``parse_float=Decimal`` and
Decimals are written back into JSON with their exact text.

Retry policy
    *Safe* calls (clone status, TTS status, downloads, ``/check-balance``) retry with exponential
    backoff on 408/429/500/502/503/504, timeouts and connection errors, honouring ``Retry-After`` up to
    ``max_retry_wait``; a longer wait is raised at once (``retry_after`` on the error) for the caller
    to schedule. *Paid* calls (both clone submits and ``POST /tts``) are never repeated, except once
    when the request provably never left this process (the connection could not be opened). When
    a paid request was sent and the answer is lost (timeout, dropped connection, garbled 2xx body,
    504), the error carries ``maybe_charged = True``: the job may exist and may have been charged.

Secrets
    The key is sent only as ``Authorization: Bearer`` on API calls, never on downloads (third-party
    storage), and never appears in a log line, an exception or a ``repr``: NanoGPT's own error texts
    are scrubbed of it too. Download URLs are logged without their query string (signed URLs).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

log = logging.getLogger(__name__)

MIB = 1024 * 1024
CUSTOM_VOICE_ID_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]{7,}$")
PROVIDER_PATH_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")  # a provider key as it appears in /voice-clone/{key}/…
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
CONTENT_POLICY_CODES = frozenset({"content_policy_violation", "content_policy", "content_filter", "moderation"})
# TTS ticket statuses [I]: 'pending' is documented; the others are tolerated spellings.
TTS_WAITING = frozenset({"pending", "processing", "queued", "running", "in_progress", "in_queue", "starting"})
TTS_DONE = frozenset({"completed", "complete", "succeeded", "success", "done"})
TTS_FAILED = frozenset({"error", "failed", "failure", "cancelled", "canceled"})

_MICROS = Decimal(1_000_000)
_MESSAGE_LIMIT = 300
_REDACTED = "[redacted]"

# Content types as NanoGPT and storage hosts spell them → one canonical spelling.
_CONTENT_TYPE_ALIASES = {
    "audio/mp3": "audio/mpeg",
    "audio/mpeg3": "audio/mpeg",
    "audio/x-mp3": "audio/mpeg",
    "audio/x-mpeg": "audio/mpeg",
    "audio/mpg": "audio/mpeg",
    "audio/x-wav": "audio/wav",
    "audio/wave": "audio/wav",
    "audio/vnd.wave": "audio/wav",
    "audio/x-pn-wav": "audio/wav",
    "audio/x-flac": "audio/flac",
    "audio/x-aac": "audio/aac",
    "audio/aacp": "audio/aac",
    "audio/x-m4a": "audio/mp4",
    "audio/m4a": "audio/mp4",
    "audio/x-ogg": "audio/ogg",
    "application/ogg": "audio/ogg",
    "audio/l16": "audio/pcm",
}
_EXTENSIONS = {
    "audio/mpeg": "mp3",
    "audio/wav": "wav",
    "audio/ogg": "ogg",
    "audio/opus": "ogg",  # OpenAI's opus output is an Ogg Opus stream
    "audio/aac": "aac",
    "audio/flac": "flac",
    "audio/mp4": "m4a",
    "audio/webm": "webm",
    "audio/pcm": "pcm",
}
_UPLOAD_TYPES = {
    "mp3": "audio/mpeg", "wav": "audio/wav", "m4a": "audio/mp4", "mp4": "audio/mp4", "ogg": "audio/ogg",
    "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac", "webm": "audio/webm",
}


def normalize_content_type(value: str | None) -> str | None:
    """``"Audio/MP3; charset=x"`` → ``"audio/mpeg"``; None or empty → None."""
    if not value:
        return None
    base = value.split(";", 1)[0].strip().lower()
    if not base:
        return None
    return _CONTENT_TYPE_ALIASES.get(base, base)


def sniff_audio_type(data: bytes) -> str | None:
    """The audio content type recognisable from the first bytes, or None."""
    head = data[:16]
    if head.startswith(b"ID3") or (len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0
                                   and (head[1] & 0x06) != 0):
        return "audio/mpeg"
    if head.startswith(b"RIFF") and data[8:12] == b"WAVE":
        return "audio/wav"
    if head.startswith(b"OggS"):
        return "audio/ogg"
    if head.startswith(b"fLaC"):
        return "audio/flac"
    if len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xF6) == 0xF0:
        return "audio/aac"  # ADTS
    if data[4:8] == b"ftyp":
        return "audio/mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "audio/webm"
    return None


def extension_for(content_type: str | None) -> str:
    """File extension for an audio content type (``bin`` when unknown)."""
    return _EXTENSIONS.get(normalize_content_type(content_type) or "", "bin")


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` / ``X-Poll-After``: seconds (``"5"``, ``"1.5"``) or an HTTP date → seconds ≥ 0."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _to_decimal(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        amount = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        return None
    return amount if amount.is_finite() else None


def _to_micros(amount: Decimal | None) -> int | None:
    if amount is None:
        return None
    return int((amount * _MICROS).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _to_int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError, ArithmeticError):
        return None


def _to_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def _to_str(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    text = str(value).strip()
    return text or None


def _decimal_text(value: Decimal) -> str:
    text = format(value, "f")
    return text if text not in ("-0", "") else "0"


def dumps_json(obj: Any) -> str:
    """``json.dumps`` that writes Decimals with their exact text (no float round trip)."""
    decimals: dict[str, str] = {}

    def encode(value: Any) -> Any:
        if isinstance(value, Decimal):
            token = f"\x00dec{len(decimals)}\x00"
            decimals[token] = _decimal_text(value)
            return token
        if isinstance(value, dict):
            return {k: encode(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [encode(v) for v in value]
        return value

    text = json.dumps(encode(obj), separators=(",", ":"), ensure_ascii=False)
    for token, number in decimals.items():
        text = text.replace(json.dumps(token), number)
    return text


def loads_json(data: bytes | str) -> Any:
    """Parse JSON with every non-integer number as a Decimal."""
    return json.loads(data, parse_float=Decimal)


def _url_for_log(url: str) -> str:
    """A URL without query string or fragment (signed storage URLs carry tokens)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


# -- results -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CloneTicket:
    """The 202 answer of a clone submit: the run to poll and what it cost."""

    run_id: str
    status: str
    model: str | None
    cost: Decimal | None
    payment_source: str | None
    is_api_request: bool | None
    file_name: str | None
    file_size: int | None
    raw: dict = field(repr=False, compare=False)

    @property
    def cost_micros(self) -> int | None:
        """``cost`` in integer micro-units of ``payment_source`` (exact, rounded half up)."""
        return _to_micros(self.cost)


@dataclass(frozen=True, slots=True)
class CloneStatus:
    """One answer of a clone status endpoint. ``poll_after``: seconds NanoGPT asked us to wait."""

    status: str
    error: str | None
    audio_urls: list[str]
    speaker_embedding_url: str | None
    poll_after: float | None
    raw: dict = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class SpeechResult:
    """Synthesised speech: exactly the bytes NanoGPT produced, with a canonical content type."""

    audio: bytes = field(repr=False)
    content_type: str
    cost: Decimal | None
    payment_source: str | None
    model: str | None
    duration: float | None

    @property
    def extension(self) -> str:
        """``mp3``, ``wav``, ``ogg``, ``aac``, ``flac``, … (``bin`` when the type is unknown)."""
        return extension_for(self.content_type)

    @property
    def cost_micros(self) -> int | None:
        return _to_micros(self.cost)

    @property
    def currency(self) -> str | None:
        """Alias of ``payment_source`` (``USD`` or ``XNO``)."""
        return self.payment_source


@dataclass(frozen=True, slots=True)
class Balance:
    usd: Decimal
    nano: Decimal


# -- errors --------------------------------------------------------------------------------------


class NanoGPTError(Exception):
    """NanoGPT refused or failed a request. ``message`` is NanoGPT's own text (or ours, when it sent
    none); ``user_message`` is the one sentence to show a Discord user: what went wrong and, where they
    can do something about it, what to do."""

    default_message = "NanoGPT returned an error."

    def __init__(self, message: str | None = None, *, status: int | None = None, code: str | None = None,
                 request_id: str | None = None, retry_after: float | None = None, maybe_charged: bool = False,
                 method: str | None = None, path: str | None = None, error_type: str | None = None) -> None:
        self.message = (message or "").strip() or self.default_message
        self.status = status
        self.code = code
        self.error_type = error_type
        self.request_id = request_id
        self.retry_after = retry_after
        self.maybe_charged = maybe_charged
        self.method = method
        self.path = path
        super().__init__(self.message)

    def __str__(self) -> str:
        details = []
        if self.method and self.path:
            details.append(f"{self.method} {self.path}")
        if self.status is not None:
            details.append(f"HTTP {self.status}")
        if self.code:
            details.append(f"code {self.code}")
        if self.request_id:
            details.append(f"request {self.request_id}")
        if self.maybe_charged:
            details.append("may have been charged")
        return f"{self.message} ({', '.join(details)})" if details else self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status={self.status!r}, code={self.code!r})"

    @property
    def user_message(self) -> str:
        return f"NanoGPT could not do that: {_sentence(self.message)}"


class AuthError(NanoGPTError):
    """401/403: the operator's key is wrong, revoked or not allowed."""

    default_message = "Invalid API key."

    @property
    def user_message(self) -> str:
        return "The bot's NanoGPT key was rejected; please tell the bot's operator."


class InsufficientBalance(NanoGPTError):
    """402: the operator's balance cannot pay for this."""

    default_message = "Insufficient balance."

    def __init__(self, message: str | None = None, *, required_balance: Decimal | None = None,
                 **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.required_balance = required_balance

    @property
    def user_message(self) -> str:
        return "The bot's NanoGPT balance is too low; please tell the bot's operator."


class RateLimited(NanoGPTError):
    """429 (also the per-key daily limits); ``retry_after`` in seconds when NanoGPT said."""

    default_message = "Rate limit exceeded."

    @property
    def user_message(self) -> str:
        if self.retry_after is None:
            return "NanoGPT is rate limiting; try again in a moment."
        return f"NanoGPT is rate limiting; try again in {_format_wait(self.retry_after)}."


class ContentPolicyError(NanoGPTError):
    """The provider rejected the content; never retry. The user sees NanoGPT's own message."""

    default_message = "Content rejected by provider."

    @property
    def user_message(self) -> str:
        return _sentence(self.message)


class InvalidRequest(NanoGPTError):
    """A definitive 4xx other than auth, balance and rate limits (400, 404, 409, 413, 501, …)."""

    @property
    def user_message(self) -> str:
        return f"NanoGPT refused the request: {_sentence(self.message)}"


class UpstreamUnavailable(NanoGPTError):
    """Timeouts, connection errors, 5xx, malformed or unexpected answers: try again later.
    ``maybe_charged`` is True when a paid request was sent and its answer lost."""

    default_message = "NanoGPT is not answering."

    @property
    def user_message(self) -> str:
        return "NanoGPT is not answering; try again in a moment."


class GenerationFailed(UpstreamUnavailable):
    """An accepted TTS job ended with ``status: "error"`` (not a content-policy rejection)."""

    default_message = "TTS generation failed."

    @property
    def user_message(self) -> str:
        return f"NanoGPT could not generate the speech: {_sentence(self.message)}"


class DownloadTooLarge(UpstreamUnavailable):
    """A download was larger than its cap (never retried)."""

    @property
    def user_message(self) -> str:
        return "The audio NanoGPT produced is too large to fetch."


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    if text and text[-1] not in ".!?":
        text += "."
    return text


def _format_wait(seconds: float) -> str:
    whole = max(1, math.ceil(seconds))
    if whole < 120:
        return f"{whole} s"
    if whole < 2 * 3600:
        return f"{math.ceil(whole / 60)} min"
    return f"{math.ceil(whole / 3600)} h"


@dataclass(slots=True)
class _ParsedError:
    message: str | None = None
    code: str | None = None
    error_type: str | None = None
    required_balance: Decimal | None = None


def parse_error_body(body: bytes, content_type: str | None = None) -> _ParsedError:
    """NanoGPT's message, code and required balance from any error shape it is known to send:
    ``{"error":{"message","type","code","param"}}``, ``{"error":"…","status":402}``,
    ``{"error":"…","requiredBalance":…}``, ``{"error":<int>,"message":"…"}``, or a non-JSON body."""
    parsed = _ParsedError()
    text = body.decode("utf-8", "replace").strip()
    try:
        data = loads_json(text) if text else None
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        top_message = _to_str(data.get("message"))
        if isinstance(error, dict):
            parsed.message = _to_str(error.get("message")) or _to_str(error.get("error")) or top_message
            parsed.code = _to_str(error.get("code"))
            parsed.error_type = _to_str(error.get("type"))
            parsed.required_balance = _to_decimal(error.get("requiredBalance"))
        elif isinstance(error, str) and error.strip():
            parsed.message = error.strip()
        elif isinstance(error, (int, Decimal)) and not isinstance(error, bool):
            parsed.message = top_message or f"Error {error}."
        else:
            parsed.message = top_message
        parsed.message = parsed.message or _to_str(data.get("detail"))
        parsed.code = parsed.code or _to_str(data.get("code"))
        parsed.error_type = parsed.error_type or _to_str(data.get("type"))
        if parsed.required_balance is None:
            parsed.required_balance = _to_decimal(data.get("requiredBalance"))
    elif isinstance(data, str):
        parsed.message = _to_str(data)
    elif text and not text.lstrip().startswith("<"):  # plain text; HTML error pages say nothing useful
        parsed.message = text
    if parsed.message and len(parsed.message) > _MESSAGE_LIMIT:
        parsed.message = parsed.message[: _MESSAGE_LIMIT - 1] + "…"
    return parsed


def _error_text(exc: NanoGPTError) -> str:
    return f"{exc.code or ''} {exc.error_type or ''} {exc.message}".casefold()


def voice_missing(exc: NanoGPTError) -> bool:
    """NanoGPT says the voice does not exist [I: the real wording is undocumented]."""
    text = _error_text(exc)
    return "voice_not_found" in text or ("voice" in text and ("not found" in text or "does not exist" in text))


def embedding_rejected(exc: NanoGPTError) -> bool:
    """NanoGPT could not fetch the speaker embedding URL [I: the real wording is undocumented]."""
    if not isinstance(exc, InvalidRequest):
        return False
    return any(word in _error_text(exc) for word in ("embedding", "speaker_voice"))


def _is_content_policy(code: str | None, error_type: str | None, message: str | None) -> bool:
    for value in (code, error_type):
        if value and value.strip().lower() in CONTENT_POLICY_CODES:
            return True
    return False


def _is_insufficient_balance(code: str | None, message: str | None) -> bool:
    if code and code.strip().lower() in ("insufficient_balance", "insufficient_funds", "insufficient_quota"):
        return True
    return bool(message and message.strip().lower().startswith("insufficient balance"))


def error_for_status(status: int, parsed: _ParsedError, *, request_id: str | None = None,
                     retry_after: float | None = None, maybe_charged: bool = False, method: str | None = None,
                     path: str | None = None) -> NanoGPTError:
    """The typed error for an HTTP status and a parsed error body."""
    kwargs: dict[str, Any] = dict(status=status, code=parsed.code, request_id=request_id, retry_after=retry_after,
                                  maybe_charged=maybe_charged, method=method, path=path,
                                  error_type=parsed.error_type)
    message = parsed.message
    if _is_content_policy(parsed.code, parsed.error_type, message):
        return ContentPolicyError(message, **kwargs)
    if status in (401, 403):
        return AuthError(message, **kwargs)
    if status == 402 or (400 <= status < 500 and status != 429 and _is_insufficient_balance(parsed.code, message)):
        return InsufficientBalance(message, required_balance=parsed.required_balance, **kwargs)
    if status == 429:
        return RateLimited(message, **kwargs)
    if status == 501:  # model not implemented: definitive
        return InvalidRequest(message or "That model is not available.", **kwargs)
    if status == 408 or status >= 500 or status < 400:
        return UpstreamUnavailable(message or f"HTTP {status} from NanoGPT.", **kwargs)
    return InvalidRequest(message or f"HTTP {status} from NanoGPT.", **kwargs)


# -- the client ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Response:
    status: int
    headers: Mapping[str, str]
    body: bytes
    content_type: str | None
    request_id: str | None


class _Retry(Exception):
    """Internal: a safe call may be tried again after ``delay`` seconds (``error`` if not)."""

    def __init__(self, error: NanoGPTError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


class NanoGPTClient:
    """Every NanoGPT endpoint nanovoice uses. One instance per process; safe for concurrent use."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, api_key: str, *, timeout: float = 30,
                 tts_poll_interval: float = 2.0, tts_poll_timeout: float = 180, max_download_bytes: int = 25 * MIB,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep, safe_attempts: int = 3,
                 status_attempts: int = 2, backoff_base: float = 0.5, backoff_max: float = 8.0,
                 max_retry_wait: float = 10.0) -> None:
        if not api_key:
            raise ValueError("a NanoGPT API key is required")
        self._session = session
        self.base_url = base_url.rstrip("/")
        self._api_key = str(api_key)
        self.timeout = timeout
        self.tts_poll_interval = tts_poll_interval
        self.tts_poll_timeout = tts_poll_timeout
        self.max_download_bytes = max_download_bytes
        self._sleep = sleep
        self.safe_attempts = max(1, safe_attempts)
        self.status_attempts = max(1, status_attempts)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_wait = max_retry_wait

    def __repr__(self) -> str:
        return f"NanoGPTClient(base_url={self.base_url!r})"

    # -- public API ------------------------------------------------------------------------------

    async def submit_minimax_clone(self, audio: bytes, filename: str, *, custom_voice_id: str,
                                   model: str | None = None, noise_reduction: bool = False,
                                   normalize_volume: bool = False) -> CloneTicket:
        """Start a paid MiniMax clone run ($1.00): multipart with the ``audio`` file. Never retried once sent."""
        if not CUSTOM_VOICE_ID_RE.match(custom_voice_id or ""):
            raise ValueError("custom_voice_id must match ^[A-Za-z][A-Za-z0-9]{7,}$")
        fields: dict[str, Any] = {
            "customVoiceId": custom_voice_id,
            "voiceCloneModel": model,
            "needNoiseReduction": bool(noise_reduction),
            "needVolumeNormalization": bool(normalize_volume),
        }
        return await self._submit_clone("/voice-clone/minimax", audio, filename, fields)

    async def submit_qwen_clone(self, audio: bytes, filename: str, *, reference_text: str | None = None) -> CloneTicket:
        """Start a paid Qwen clone run ($0.25): multipart with the ``audio`` file. Never retried once sent."""
        return await self._submit_clone("/voice-clone/qwen", audio, filename, {"referenceText": reference_text})

    async def clone_status(self, provider: str, run_id: str, *, cost: Decimal | None = None,
                           payment_source: str | None = None, is_api_request: bool | None = None) -> CloneStatus:
        """Poll a clone run, echoing the ticket's cost/paymentSource/isApiRequest (they help refunds).

        Retried briefly inside (``status_attempts``); the poller owns longer backoff. ``poll_after`` is
        ``X-Poll-After`` (else ``Retry-After``) in seconds."""
        if not PROVIDER_PATH_RE.match(provider or ""):
            raise ValueError(f"not a clone provider key: {provider!r}")
        if not run_id:
            raise ValueError("run_id is required")
        body = _without_none({"runId": run_id, "cost": cost, "paymentSource": payment_source,
                              "isApiRequest": is_api_request})
        path = f"/voice-clone/{provider}/status"
        response = await self._safe_api_call("POST", path, json_body=body, attempts=self.status_attempts)
        data = self._json_object(response, "POST", path)
        status = _to_str(data.get("status"))
        if status is None:
            raise self._malformed("POST", path, response, "a status answer without a status")
        audio_urls = data.get("audioUrls")
        if isinstance(audio_urls, str):
            audio_urls = [audio_urls]
        elif not isinstance(audio_urls, list):
            audio_urls = []
        error = data.get("error")
        if isinstance(error, dict):
            error = error.get("message")
        return CloneStatus(
            status=status.lower(),
            error=self._scrub(_to_str(error)) if error is not None else None,
            audio_urls=[u for u in (str(x) for x in audio_urls if isinstance(x, str)) if u],
            speaker_embedding_url=_to_str(data.get("speakerEmbeddingUrl") or data.get("speaker_embedding_url")),
            poll_after=self._poll_after(response.headers),
            raw=data,
        )

    async def tts(self, text: str, *, model: str, voice: str | None = None, speed: float | None = None,
                  speaker_voice_embedding_file_url: str | None = None, reference_text: str | None = None,
                  language: str | None = None) -> SpeechResult:
        """Synthesise ``text`` (paid, never retried once sent), whichever of the three documented
        forms NanoGPT answers with: audio bytes, JSON with ``audioUrl``, or a 202 ticket to poll."""
        body = _without_none({
            "text": text, "model": model, "voice": voice, "speed": speed,
            "speaker_voice_embedding_file_url": speaker_voice_embedding_file_url,
            "reference_text": reference_text, "language": language,
        })
        path = "/tts"
        response = await self._paid_api_call("POST", path, json_body=body)
        ctype = response.content_type
        if response.status == 200 and ctype and ctype != "application/json" and not ctype.endswith("+json") \
                and not _looks_like_json(response.body):
            if not response.body:
                raise self._malformed("POST", path, response, "an empty audio body", maybe_charged=True)
            content_type = _pick_audio_type(ctype, response.body)
            return SpeechResult(response.body, content_type, None, None, model, None)
        data = self._json_object(response, "POST", path, maybe_charged=True)
        try:
            if data.get("audioUrl") or data.get("audio_url"):
                return await self._speech_from_url(data, model, None)
            run_id = _to_str(data.get("runId"))
            status = (_to_str(data.get("status")) or "").lower()
            if run_id and (response.status == 202 or status in TTS_WAITING):
                return await self._wait_for_tts(run_id, data, model)
            if status in TTS_FAILED:
                raise self._tts_failure(data, "POST", path, response.request_id)
            raise self._malformed("POST", path, response, "a TTS answer with neither audio, audioUrl nor runId",
                                  maybe_charged=True)
        except NanoGPTError as exc:
            if not isinstance(exc, (GenerationFailed, ContentPolicyError)):
                exc.maybe_charged = True  # the request was accepted: it may well have been charged
            raise

    async def download(self, url: str, *, max_bytes: int | None = None) -> tuple[bytes, str]:
        """GET a storage URL (``audioUrl``, preview audio, ``speakerEmbeddingUrl``) with no credentials:
        size-capped, truncation-checked, retried on timeouts/5xx. Returns the bytes and the
        (normalised) content type, ``application/octet-stream`` when none was given."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidRequest("not a downloadable URL", method="GET", path=_url_for_log(url))
        cap = self.max_download_bytes if max_bytes is None else max_bytes
        shown = _url_for_log(url)

        async def attempt() -> tuple[bytes, str]:
            try:
                async with self._session.get(url, timeout=self._client_timeout(), allow_redirects=True,
                                             headers=_no_credentials_headers()) as resp:
                    if resp.status != 200:
                        await resp.read()
                        error = error_for_status(
                            resp.status, _ParsedError(message=f"download failed with HTTP {resp.status}"),
                            request_id=resp.headers.get("X-Request-ID"),
                            retry_after=parse_retry_after(resp.headers.get("Retry-After")), method="GET", path=shown)
                        if resp.status in RETRYABLE_STATUSES:
                            raise _Retry(error, error.retry_after)
                        raise error
                    expected = resp.content_length
                    if expected is not None and expected > cap:
                        raise DownloadTooLarge(f"download is {expected} bytes, more than the {cap} allowed",
                                               method="GET", path=shown, status=resp.status)
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in resp.content.iter_chunked(64 * 1024):
                        size += len(chunk)
                        if size > cap:
                            raise DownloadTooLarge(f"download exceeds the {cap} bytes allowed", method="GET",
                                                   path=shown, status=resp.status)
                        chunks.append(chunk)
                    if expected is not None and size != expected:
                        raise _Retry(UpstreamUnavailable(
                            f"download truncated: {size} of {expected} bytes", method="GET", path=shown,
                            status=resp.status))
                    content_type = normalize_content_type(resp.headers.get("Content-Type"))
                    return b"".join(chunks), content_type or "application/octet-stream"
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise _Retry(UpstreamUnavailable(_describe(exc, "download"), method="GET", path=shown)) from None

        return await self._with_retries("GET", shown, attempt, self.safe_attempts)

    async def check_balance(self) -> Balance:
        """``POST /check-balance``: the account's USD and Nano balances (sent as strings)."""
        path = "/check-balance"
        response = await self._safe_api_call("POST", path, attempts=self.safe_attempts)
        data = self._json_object(response, "POST", path)
        usd = _to_decimal(data.get("usd_balance"))
        nano = _to_decimal(data.get("nano_balance"))
        if usd is None:
            raise self._malformed("POST", path, response, "a balance answer without usd_balance")
        return Balance(usd=usd, nano=nano if nano is not None else Decimal(0))

    # -- clone submits ---------------------------------------------------------------------------

    async def _submit_clone(self, path: str, audio: bytes, filename: str, fields: dict[str, Any]) -> CloneTicket:
        fields = _without_none(fields)
        if not audio:
            raise ValueError("audio is empty")

        def form() -> aiohttp.FormData:
            data = aiohttp.FormData()
            name = filename or "audio.mp3"
            extension = name.rsplit(".", 1)[-1].lower() if "." in name else ""
            data.add_field("audio", audio, filename=name,
                           content_type=_UPLOAD_TYPES.get(extension, "application/octet-stream"))
            for key, value in fields.items():
                data.add_field(key, ("true" if value else "false") if isinstance(value, bool) else str(value))
            return data

        response = await self._paid_api_call("POST", path, form=form)
        data = self._json_object(response, "POST", path, maybe_charged=True)
        run_id = _to_str(data.get("runId") or data.get("run_id"))
        if run_id is None:
            raise self._malformed("POST", path, response, "a clone ticket without runId", maybe_charged=True)
        ticket = CloneTicket(
            run_id=run_id,
            status=(_to_str(data.get("status")) or "pending").lower(),
            model=_to_str(data.get("model")),
            cost=_to_decimal(data.get("cost")),
            payment_source=_to_str(data.get("paymentSource")),
            is_api_request=_to_bool(data.get("isApiRequest")),
            file_name=_to_str(data.get("fileName")),
            file_size=_to_int(data.get("fileSize")),
            raw=data,
        )
        log.info("NanoGPT %s accepted: run %s, cost %s %s (request %s)", path, ticket.run_id, ticket.cost,
                 ticket.payment_source, response.request_id)
        return ticket

    # -- TTS -------------------------------------------------------------------------------------

    async def _speech_from_url(self, data: dict, model: str, ticket: dict | None) -> SpeechResult:
        url = str(data.get("audioUrl") or data.get("audio_url"))
        audio, downloaded_type = await self.download(url)
        if not audio:
            raise UpstreamUnavailable("the audio file NanoGPT pointed to is empty", method="GET",
                                      path=_url_for_log(url), maybe_charged=True)
        declared = normalize_content_type(_to_str(data.get("contentType")))
        content_type = _pick_audio_type(declared if declared and declared.startswith("audio/") else downloaded_type,
                                        audio)
        source = ticket or {}
        cost = _to_decimal(source.get("cost"))
        if cost is None:
            cost = _to_decimal(data.get("cost"))
        payment_source = (_to_str(source.get("paymentSource")) or _to_str(data.get("paymentSource"))
                          or _to_str(data.get("currency")))
        duration = _to_decimal(data.get("duration"))
        return SpeechResult(audio, content_type, cost, payment_source,
                            _to_str(data.get("model")) or _to_str(source.get("model")) or model,
                            float(duration) if duration is not None else None)

    async def _wait_for_tts(self, run_id: str, ticket: dict, model: str) -> SpeechResult:
        path = "/tts/status"
        params = _without_none({
            "runId": run_id,
            "model": _to_str(ticket.get("model")) or model,
            "cost": _decimal_text(c) if (c := _to_decimal(ticket.get("cost"))) is not None else None,
            "paymentSource": _to_str(ticket.get("paymentSource")),
            "isApiRequest": "true",
        })
        started = time.monotonic()
        waited = 0.0  # counts injected sleeps too, so a fake clock cannot make this loop forever
        delay = self.tts_poll_interval
        last_error: NanoGPTError | None = None
        while True:
            elapsed = max(waited, time.monotonic() - started)
            if elapsed >= self.tts_poll_timeout:
                reason = f"TTS run {run_id} did not finish within {self.tts_poll_timeout:g} s"
                if last_error is not None:
                    reason += f" (last error: {last_error.message})"
                log.warning("NanoGPT GET %s: %s", path, reason)
                raise UpstreamUnavailable(reason, method="GET", path=path, maybe_charged=True)
            delay = max(0.0, min(delay, self.tts_poll_timeout - elapsed))
            await self._sleep(delay)
            waited += delay
            delay = self.tts_poll_interval
            try:
                response = await self._safe_api_call("GET", path, params=params, attempts=self.safe_attempts)
            except (UpstreamUnavailable, RateLimited) as exc:
                last_error = exc  # the run exists and is paid for: keep polling until the deadline
                if exc.retry_after:
                    delay = max(delay, exc.retry_after)
                continue
            data = self._json_object(response, "GET", path, maybe_charged=True)
            status = (_to_str(data.get("status")) or "").lower()
            poll_after = self._poll_after(response.headers)
            if poll_after is not None:
                delay = max(0.0, poll_after)
            if status in TTS_DONE:
                if not (data.get("audioUrl") or data.get("audio_url")):
                    raise self._malformed("GET", path, response, "a completed TTS run without audioUrl",
                                          maybe_charged=True)
                return await self._speech_from_url(data, model, ticket)
            if status in TTS_FAILED:
                raise self._tts_failure(data, "GET", path, response.request_id)
            if status not in TTS_WAITING:
                log.warning("NanoGPT GET %s: unknown TTS status %r for run %s; still waiting", path, status, run_id)

    def _tts_failure(self, data: dict, method: str, path: str, request_id: str | None) -> NanoGPTError:
        error = data.get("error")
        parsed = _ParsedError(code=_to_str(data.get("code")), error_type=_to_str(data.get("type")))
        if isinstance(error, dict):
            parsed.message = _to_str(error.get("message"))
            parsed.code = parsed.code or _to_str(error.get("code"))
            parsed.error_type = parsed.error_type or _to_str(error.get("type"))
        elif isinstance(error, str):
            parsed.message = _to_str(error)
        message = self._scrub(parsed.message or _to_str(data.get("message")) or "TTS generation failed.")
        kwargs: dict[str, Any] = dict(code=parsed.code, request_id=request_id, method=method, path=path)
        if _is_content_policy(parsed.code, parsed.error_type, message):
            exc: NanoGPTError = ContentPolicyError(message, **kwargs)
        else:
            exc = GenerationFailed(message, **kwargs)
        log.warning("NanoGPT %s %s: TTS run failed (%s): %s", method, path, parsed.code or "no code", message)
        return exc

    # -- transport -------------------------------------------------------------------------------

    def _client_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self.timeout, connect=min(self.timeout, 10.0))

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}", "Accept": "application/json, audio/*;q=0.9, */*;q=0.5"}

    def _scrub(self, text: str | None) -> str:
        text = text or ""
        return text.replace(self._api_key, _REDACTED) if self._api_key in text else text

    async def _send(self, method: str, path: str, *, json_body: Any = None,
                    form: Callable[[], aiohttp.FormData] | None = None,
                    params: Mapping[str, str] | None = None) -> _Response:
        """One request to the API; raises aiohttp/timeout errors untouched."""
        headers = self._auth_headers()
        data: Any = None
        if form is not None:
            data = form()
        elif json_body is not None:
            data = dumps_json(json_body).encode()
            headers["Content-Type"] = "application/json"
        async with self._session.request(method, self.base_url + path, data=data, params=params, headers=headers,
                                         timeout=self._client_timeout(), allow_redirects=False) as resp:
            body = await resp.read()
            return _Response(resp.status, resp.headers, body, normalize_content_type(resp.headers.get("Content-Type")),
                             resp.headers.get("X-Request-ID"))

    def _raise_for_status(self, response: _Response, method: str, path: str, *, paid: bool) -> None:
        if 200 <= response.status < 300:
            return
        parsed = parse_error_body(response.body, response.content_type)
        parsed.message = self._scrub(parsed.message) if parsed.message else None
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        error = error_for_status(response.status, parsed, request_id=response.request_id, retry_after=retry_after,
                                 maybe_charged=paid and response.status == 504, method=method, path=path)
        log.warning("NanoGPT %s %s failed: HTTP %s, request id %s, code %s: %s", method, path, response.status,
                    response.request_id or "-", error.code or "-", error.message)
        raise error

    async def _paid_api_call(self, method: str, path: str, *, json_body: Any = None,
                             form: Callable[[], aiohttp.FormData] | None = None) -> _Response:
        """A charged request: sent at most once, except one retry when the connection could not even
        be opened (nothing reached NanoGPT)."""
        for attempt in (1, 2):
            try:
                response = await self._send(method, path, json_body=json_body, form=form)
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                # Raised while opening the connection: the request was provably never sent.
                if attempt == 1:
                    log.warning("NanoGPT %s %s: could not connect (%s); retrying once", method, path,
                                type(exc).__name__)
                    await self._sleep(self._backoff(0))
                    continue
                log.warning("NanoGPT %s %s: could not connect (%s)", method, path, type(exc).__name__)
                raise UpstreamUnavailable(_describe(exc, "connection"), method=method, path=path) from None
            except (TimeoutError, aiohttp.ClientError) as exc:
                # Sent (at least partly) and the answer was lost: it may have been charged.
                log.warning("NanoGPT %s %s: no answer after sending (%s); it may have been charged", method, path,
                            type(exc).__name__)
                raise UpstreamUnavailable(_describe(exc, "request"), method=method, path=path,
                                          maybe_charged=True) from None
            self._raise_for_status(response, method, path, paid=True)
            return response
        raise AssertionError("unreachable")

    async def _safe_api_call(self, method: str, path: str, *, json_body: Any = None,
                             params: Mapping[str, str] | None = None, attempts: int) -> _Response:
        async def attempt() -> _Response:
            try:
                response = await self._send(method, path, json_body=json_body, params=params)
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise _Retry(UpstreamUnavailable(_describe(exc, "request"), method=method, path=path)) from None
            try:
                self._raise_for_status(response, method, path, paid=False)
            except NanoGPTError as exc:
                if response.status in RETRYABLE_STATUSES and not isinstance(exc, ContentPolicyError):
                    raise _Retry(exc, exc.retry_after) from None
                raise
            return response

        return await self._with_retries(method, path, attempt, attempts)

    async def _with_retries(self, method: str, path: str, attempt: Callable[[], Awaitable[Any]],
                            attempts: int) -> Any:
        for number in range(attempts):
            try:
                return await attempt()
            except _Retry as retry:
                error = retry.error
                last = number + 1 >= attempts
                too_long = retry.retry_after is not None and retry.retry_after > self.max_retry_wait
                if last or too_long:
                    log.warning("NanoGPT %s %s: giving up after %d attempt(s): %s", method, path, number + 1, error)
                    raise error from None
                delay = self._backoff(number)
                if retry.retry_after is not None:
                    delay = max(delay, retry.retry_after)
                log.info("NanoGPT %s %s: attempt %d failed (%s); retrying in %.2f s", method, path, number + 1,
                         error.message, delay)
                await self._sleep(delay)
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int) -> float:
        base = min(self.backoff_max, self.backoff_base * (2 ** attempt))
        return base * random.uniform(0.5, 1.0)

    # -- parsing ---------------------------------------------------------------------------------

    @staticmethod
    def _poll_after(headers: Mapping[str, str]) -> float | None:
        value = parse_retry_after(headers.get("X-Poll-After"))
        return value if value is not None else parse_retry_after(headers.get("Retry-After"))

    def _json_object(self, response: _Response, method: str, path: str, *, maybe_charged: bool = False) -> dict:
        try:
            data = loads_json(response.body)
        except ValueError:
            raise self._malformed(method, path, response, "a body that is not JSON",
                                  maybe_charged=maybe_charged) from None
        if not isinstance(data, dict):
            raise self._malformed(method, path, response, "a JSON body that is not an object",
                                  maybe_charged=maybe_charged)
        return data

    def _malformed(self, method: str, path: str, response: _Response, what: str, *,
                   maybe_charged: bool = False) -> UpstreamUnavailable:
        log.warning("NanoGPT %s %s: unexpected answer (%s): HTTP %s, %s, %d bytes, request id %s", method, path,
                    what, response.status, response.content_type or "no content type", len(response.body),
                    response.request_id or "-")
        return UpstreamUnavailable(f"NanoGPT sent {what}.", status=response.status, request_id=response.request_id,
                                   method=method, path=path, maybe_charged=maybe_charged)


def _without_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _no_credentials_headers() -> dict[str, str]:
    return {"Accept": "*/*"}


def _looks_like_json(body: bytes) -> bool:
    head = body[:64].lstrip()
    return head.startswith(b"{")


def _pick_audio_type(declared: str | None, data: bytes) -> str:
    declared = normalize_content_type(declared)
    if declared and (declared.startswith("audio/") or declared == "application/ogg"):
        return declared
    return sniff_audio_type(data) or declared or "application/octet-stream"


def _describe(exc: BaseException, what: str) -> str:
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return f"NanoGPT {what} timed out."
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"Could not connect to NanoGPT ({exc.os_error.strerror or type(exc.os_error).__name__})."
    if isinstance(exc, aiohttp.ClientPayloadError):
        return f"NanoGPT {what} was cut off."
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return f"NanoGPT closed the connection during the {what}."
    return f"NanoGPT {what} failed ({type(exc).__name__})."
