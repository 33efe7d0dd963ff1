"""Text to speech: voice resolution, the TTS cache and synthesis through NanoGPT (:class:`TTSService`).

Nothing here knows Discord. ``cogs/say.py`` parses the interaction and renders; this module

* resolves the ``voice`` option (:meth:`TTSService.resolve_voice`): one of the user's saved voices
  (case-insensitive, only theirs), a stock voice ``<model>/<voice>``, else the user's default voice,
  else ``DEFAULT_TTS_MODEL``/``DEFAULT_TTS_VOICE``; and offers autocomplete choices
  (:meth:`TTSService.voice_choices`) without ever calling NanoGPT;
* checks and cleans the text before synthesis with :mod:`bot.say_text` (:meth:`TTSService.prepare_text`);
* synthesises (:meth:`TTSService.synthesize`): cache lookup → guild budget reservation → NanoGPT
  ``/tts`` (all three response forms, inside the client) → settle with the reported cost → cache.
  Identical requests (same voice identity, model, speed and normalised text) are answered from the
  ``tts_cache`` table without a NanoGPT call or a charge; concurrent identical requests wait for
  one synthesis instead of paying twice;
* encodes voice messages (:meth:`TTSService.voice_message`), remembering the last few encodings;
* tells the operator the balance when NanoGPT answers 402 (:meth:`TTSService.report_low_balance`).

Errors are :class:`~bot.errors.UserFacingError` (one sentence) or :class:`~bot.nanogpt.NanoGPTError`
(its ``user_message``); the global handler in ``bot.app`` shows them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import unicodedata
import weakref
from collections import OrderedDict
from dataclasses import dataclass

from bot import audio, fuzzy, providers
from bot.clock import Clock
from bot.config import TTS_MODELS, Config, canonical_model
from bot.embeddings import EmbeddingHost
from bot.errors import NotFound, UserFacingError
from bot.limits import (
    Cooldown,
    Limits,
    Reservation,
    SharedCooldown,
    cost_to_micros,
    estimate_tts_micros,
    format_usd,
    tts_price_text,
)
from bot.nanogpt import (
    InsufficientBalance,
    InvalidRequest,
    NanoGPTClient,
    NanoGPTError,
    SpeechResult,
    extension_for,
    voice_missing,
)
from bot.providers.base import TTSArguments
from bot.say_text import MentionNames, prepare_text
from bot.storage import Database, Voice
from bot.text import shorten

log = logging.getLogger(__name__)

MIB = 1024 * 1024

# The TTS cache: total size of the audio kept in ``tts_cache`` (least recently used entries go first).
TTS_CACHE_MAX_BYTES = 200 * MIB
CACHE_KEY_VERSION = "v1"  # bump to invalidate every cached entry after a change in what a key means
VOICE_MESSAGE_MEMORY = 32  # encoded voice messages remembered in memory (re-encoded from the cache otherwise)
BALANCE_LOG_INTERVAL = 60.0  # at most one /check-balance per minute after 402s

AUTOCOMPLETE_LIMIT = 25  # Discord's maximum number of choices
CHOICE_MAX = 100  # Discord's maximum length of a choice name and value
MIN_SPEED, MAX_SPEED = 0.5, 2.0

_KOKORO_VOICES = (
    "af_bella", "af_nova", "af_sarah", "am_adam", "am_onyx", "bf_emma", "bm_george",
    "af_heart", "af_alloy", "af_aoede", "af_jessica", "af_kore", "af_nicole", "af_river", "af_sky",
    "am_echo", "am_eric", "am_fenrir", "am_liam", "am_michael", "am_puck",
    "bf_alice", "bf_isabella", "bf_lily", "bm_daniel", "bm_fable", "bm_lewis",
)  # fmt: skip
_OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse")
_ELEVENLABS_VOICES = ("Rachel", "Adam", "Bella", "Brian", "Sarah")
# Stock voices offered by autocomplete (any non-empty voice is accepted for a known model: the lists
# upstream are longer than these). Kokoro first: it is the cheapest.
STOCK_VOICES: dict[str, tuple[str, ...]] = {
    "Kokoro-82m": _KOKORO_VOICES,
    "tts-1": _OPENAI_VOICES,
    "tts-1-hd": _OPENAI_VOICES,
    "gpt-4o-mini-tts": _OPENAI_VOICES,
    "Elevenlabs-Turbo-V2.5": _ELEVENLABS_VOICES,
}
STOCK_EXAMPLE = "Kokoro-82m/af_bella"
STOCK_EXAMPLE_2 = "tts-1/nova"



# -- voices ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResolvedVoice:
    """What to synthesise with. ``saved`` is the user's voice (None for stock voices)."""

    label: str  # for people: "Alice" or "Kokoro-82m/af_bella"
    model: str
    voice: str | None  # stock voice name, or a MiniMax customVoiceId
    identity: str  # stable identity for the cache key
    saved: Voice | None = None

    @property
    def provider(self) -> str | None:
        return self.saved.provider if self.saved is not None else None


@dataclass(frozen=True, slots=True)
class SpokenAudio:
    """Synthesised (or cached) speech: exactly the bytes NanoGPT produced."""

    audio: bytes
    content_type: str
    text: str  # what was spoken (cleaned)
    voice: ResolvedVoice
    speed: float
    cache_key: str
    cached: bool
    cost_micros: int | None = None
    currency: str | None = None

    @property
    def filename(self) -> str:
        return f"speech.{extension_for(self.content_type)}"


# The shape of the MiniMax voice ids the bot generates for clones (bot.cloning.make_custom_voice_id). A
# clone's id is never accepted as a "stock" voice: only its owner reaches it, by the voice's name.
BOT_VOICE_ID = re.compile(r"^nv\d[0-9a-f]{16}$", re.IGNORECASE)


def stock_examples(models: tuple[str, ...]) -> str:
    """Two stock voices of ``models`` for people (``Kokoro-82m/af_bella or tts-1/nova`` by default)."""
    if set(models) >= {STOCK_EXAMPLE.split("/")[0], STOCK_EXAMPLE_2.split("/")[0]}:
        return f"{STOCK_EXAMPLE} or {STOCK_EXAMPLE_2}"
    examples = [f"{m}/{STOCK_VOICES[m][0]}" for m in models if STOCK_VOICES.get(m)][:2]
    return " or ".join(examples) or STOCK_EXAMPLE


def parse_stock_voice(value: str, models: tuple[str, ...] = TTS_MODELS) -> tuple[str, str]:
    """``"kokoro-82m/af_bella"`` → ``("Kokoro-82m", "af_bella")``; a clear sentence otherwise (naming
    ``models``, the models this bot offers)."""
    model_part, _, voice_part = value.strip().partition("/")
    model = canonical_model(model_part)
    if model is None:
        raise UserFacingError(
            f"“{shorten(model_part, 40)}” is not a speech model I know. Write a stock voice as model/voice, "
            f"e.g. {stock_examples(models)}; see /say's voice suggestions for more."
        )
    voice = voice_part.strip()
    if not voice:
        raise UserFacingError(f"Add a voice after the model, e.g. {STOCK_EXAMPLE}.")
    if len(voice) > 64 or any(ch.isspace() or unicodedata.category(ch).startswith("C") for ch in voice):
        raise UserFacingError(f"“{shorten(voice, 40)}” is not a voice name; stock voices look like {STOCK_EXAMPLE}.")
    if BOT_VOICE_ID.match(voice):
        raise NotFound(f"“{shorten(voice, 40)}” is not a stock voice; use your own voices by their name (/voice list).")
    return model, voice


def _stock(model: str, voice: str) -> ResolvedVoice:
    label = f"{model}/{voice}"
    return ResolvedVoice(label=label, model=model, voice=voice, identity=f"stock:{label}")


def _speed_key(speed: float) -> str:
    return f"{speed:.2f}"


def cache_key(voice: ResolvedVoice, speed: float, text: str) -> str:
    """sha256 of (voice identity, model, speed, normalised text): equal requests, equal keys."""
    blob = json.dumps([CACHE_KEY_VERSION, voice.identity, voice.model, _speed_key(speed), text],
                      ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


# -- the service -----------------------------------------------------------------------------------


class TTSService:
    """Voice resolution, text hygiene, the TTS cache and synthesis. One per bot."""

    def __init__(self, db: Database, nanogpt: NanoGPTClient, limits: Limits, clock: Clock, config: Config,
                 embeddings: EmbeddingHost) -> None:
        self.db = db
        self.nanogpt = nanogpt
        self.limits = limits
        self.clock = clock
        self.config = config
        self.embeddings = embeddings
        # SAY_COOLDOWN_SECONDS per user: in the database when other processes share it (a user speaks through
        # any shard's process), in memory for one process alone.
        self.cooldown: Cooldown | SharedCooldown = (
            SharedCooldown(config.say_cooldown_seconds, clock, db) if db.shared
            else Cooldown(config.say_cooldown_seconds, clock))
        self.cache_max_bytes = TTS_CACHE_MAX_BYTES
        self._inflight: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._voice_messages: OrderedDict[str, audio.VoiceMessageAudio] = OrderedDict()
        self._last_balance_check = -BALANCE_LOG_INTERVAL
        self._tasks: set[asyncio.Task] = set()
        # ALLOWED_TTS_MODELS (None: every documented model) limits the stock voices; cloned voices use
        # MINIMAX_TTS_MODEL / QWEN_TTS_MODEL whatever it says.
        allowed = config.allowed_tts_models if config.allowed_tts_models is not None else TTS_MODELS
        self.allowed_models: frozenset[str] = frozenset(m.strip().casefold() for m in allowed)
        self.offered_models: tuple[str, ...] = tuple(m for m in TTS_MODELS if self.model_allowed(m))
        self.stock_choices: list[str] = [f"{m}/{v}" for m, voices in STOCK_VOICES.items() for v in voices
                                         if self.model_allowed(m)]
        default = f"{config.default_tts_model}/{config.default_tts_voice}"
        if default in self.stock_choices:
            self.stock_choices.remove(default)
        self.stock_choices.insert(0, default)  # the configuration guarantees its model is allowed

    # -- text ----------------------------------------------------------------------------------

    def prepare_text(self, text: str, names: MentionNames | None = None, *, what: str = "text") -> str:
        """:func:`prepare_text` with ``SAY_MAX_CHARS``."""
        return prepare_text(text or "", self.config.say_max_chars, names, what=what)

    async def check_cooldown(self, user_id: int) -> None:
        """Raise the cooldown sentence (with when it resets) if ``user_id`` spoke too recently; otherwise this
        line starts their cooldown."""
        retry_after = await self.cooldown.claim(user_id)
        if retry_after is not None:
            raise UserFacingError(self.cooldown.message(retry_after))

    async def release_cooldown(self, user_id: int) -> None:
        """The line was refused before anything was spoken: it does not count toward the cooldown."""
        try:
            await self.cooldown.release(user_id)
        except Exception as exc:  # the refusal the user is about to see matters more
            log.warning("could not release the /say cooldown of user %s (%s)", user_id, type(exc).__name__)

    # -- voices --------------------------------------------------------------------------------

    def model_allowed(self, model: str) -> bool:
        """Whether stock voices of ``model`` may be used on this bot (ALLOWED_TTS_MODELS)."""
        return model.strip().casefold() in self.allowed_models

    def check_stock_model(self, model: str) -> None:
        """One sentence, before any NanoGPT call, when the operator doesn't allow this stock voice's model."""
        if not self.model_allowed(model):
            raise UserFacingError(f"{model} voices are turned off on this bot; pick another voice, such as "
                                  f"{self.stock_choices[0]}.")

    def default_stock_voice(self) -> ResolvedVoice:
        model = canonical_model(self.config.default_tts_model) or self.config.default_tts_model
        return _stock(model, self.config.default_tts_voice)

    @staticmethod
    def stock_label(value: str) -> str:
        """An autocomplete entry for the stock voice ``model/voice``: the voice and its price (price table)."""
        model = value.partition("/")[0]
        return f"{value} · {tts_price_text(model)}"[:CHOICE_MAX]

    def voice_from_saved(self, voice: Voice) -> ResolvedVoice:
        """How one of the user's saved voices is synthesised (its provider says)."""
        provider = providers.find(voice.provider)
        if provider is None:
            raise UserFacingError(f"The voice “{voice.name}” uses an unknown provider; clone it again.")
        speaker = provider.speaker(voice, self.config)
        return ResolvedVoice(label=voice.name, model=speaker.model, voice=speaker.voice, identity=speaker.identity,
                             saved=voice)

    async def resolve_voice(self, user_id: int, value: str | None) -> ResolvedVoice:
        """The ``voice`` option: the user's saved voice of that name (case-insensitive; only theirs),
        else a stock voice ``model/voice``; without a value the user's default voice, else the
        configured stock voice."""
        value = (value or "").strip()
        if not value:
            saved = await self.db.user_settings.default_voice(user_id)
            return self.voice_from_saved(saved) if saved is not None else self.default_stock_voice()
        saved = await self.db.voices.by_name(user_id, value)
        if saved is not None:
            return self.voice_from_saved(saved)
        if "/" in value:
            model, voice = parse_stock_voice(value, self.offered_models)
            self.check_stock_model(model)
            if await self.db.voices.is_cloned_voice_id(voice):  # someone's clone, whatever its id looks like
                raise NotFound(f"“{shorten(voice, 40)}” is not a stock voice; use your own voices by their name "
                               "(/voice list).")
            return _stock(model, voice)
        raise NotFound(
            f"You have no voice named “{shorten(value, 40)}”; pick one of your voices (/voice list) or a stock voice "
            f"such as {self.default_stock_voice().label}."
        )

    async def voice_choices(self, user_id: int, current: str) -> list[tuple[str, str]]:
        """Autocomplete for ``voice``: ``(name, value)`` pairs, the user's own voices first, then stock
        voices, fuzzy-matched, at most 25. Reads SQLite only (never NanoGPT)."""
        current = (current or "")[:CHOICE_MAX]
        own = await self.db.voices.names_for_speech(user_id)
        mine: list[tuple[float, int, str, str]] = []
        for index, (name, provider, is_default) in enumerate(own):
            score = fuzzy.score(current, name)
            if score is None:
                continue
            marker = ", default" if is_default else ""
            label = f"{name} (your {providers.label(provider)} voice{marker})"
            bonus = 0.5 if is_default and not current else 0.0
            mine.append((score + bonus, -index, label[:CHOICE_MAX], name[:CHOICE_MAX]))
        mine.sort(reverse=True)
        stock: list[tuple[float, int, str]] = []
        for index, value in enumerate(self.stock_choices):
            model, _, voice = value.partition("/")
            score = fuzzy.score(current, value)
            voice_score = fuzzy.score(current, voice)
            best = max((s for s in (score, voice_score) if s is not None), default=None)
            if best is None:
                continue
            stock.append((best, -index, value))
        stock.sort(reverse=True)
        choices = [(label, value) for _, _, label, value in mine]
        choices += [(self.stock_label(value), value) for _, _, value in stock]
        if current and "/" in current and not any(v.casefold() == current.strip().casefold() for _, v in choices):
            # A stock voice we don't list (the upstream lists are longer): offer it as typed if it parses.
            try:
                model, voice = parse_stock_voice(current)
            except UserFacingError:
                pass
            else:
                if self.model_allowed(model):
                    typed = f"{model}/{voice}"[:CHOICE_MAX]
                    choices.insert(len(mine), (self.stock_label(typed), typed))
        return choices[:AUTOCOMPLETE_LIMIT]

    # -- synthesis -----------------------------------------------------------------------------

    async def synthesize(self, user_id: int, guild_id: int | None, text: str, voice: ResolvedVoice,
                         speed: float | None = None) -> SpokenAudio:
        """SpokenAudio for cleaned ``text``: from the cache, else a paid NanoGPT call inside a budget
        reservation (settled with the reported cost, released when nothing was charged)."""
        if not text:
            raise UserFacingError("There is nothing to say out loud in that text; add some words.")
        effective_speed = 1.0 if speed is None else float(speed)
        if not MIN_SPEED <= effective_speed <= MAX_SPEED:
            raise UserFacingError(f"Speed must be between {MIN_SPEED} and {MAX_SPEED}.")
        key = cache_key(voice, effective_speed, text)
        hit = await self._from_cache(key, text, voice, effective_speed)
        if hit is not None:
            return hit
        lock = self._inflight.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._inflight[key] = lock
        waited = lock.locked()
        async with lock:  # a concurrent identical request waits for this one and then hits the cache
            if waited:
                hit = await self._from_cache(key, text, voice, effective_speed)
                if hit is not None:
                    return hit
            result = await self._paid_tts(user_id, guild_id, text, voice, effective_speed, key)
            try:
                await self.db.cache.put(key, user_id, result.content_type, result.audio, self.clock.now(),
                                        self.cache_max_bytes)
            except Exception:
                log.exception("could not store speech in the cache")
        if voice.saved is not None:
            try:
                await self.db.voices.touch(voice.saved.id, self.clock.now())
            except Exception:
                log.exception("could not record the use of voice %s", voice.saved.id)
        return SpokenAudio(result.audio, result.content_type, text, voice, effective_speed, key, cached=False,
                      cost_micros=result.cost_micros, currency=result.payment_source)

    async def _from_cache(self, key: str, text: str, voice: ResolvedVoice, speed: float) -> SpokenAudio | None:
        entry = await self.db.cache.get(key, self.clock.now())
        if entry is None:
            return None
        log.debug("speech cache hit %s", key[:12])
        return SpokenAudio(entry.data, entry.content_type, text, voice, speed, key, cached=True)

    async def _paid_tts(self, user_id: int, guild_id: int | None, text: str, voice: ResolvedVoice, speed: float,
                        key: str) -> SpeechResult:
        estimate = estimate_tts_micros(voice.model, len(text))
        reservation = await self.limits.reserve_tts(user_id, guild_id, estimate, ref=f"say:{key[:16]}")
        retried = False
        while True:
            kwargs = await self._tts_arguments(voice, speed)
            try:
                result = await self.nanogpt.tts(text, model=voice.model, **kwargs)
            except NanoGPTError as exc:
                saved = voice.saved
                if (not retried and not exc.maybe_charged and saved is not None
                        and await providers.get(saved.provider).recover(saved, exc, kwargs, self.embeddings)):
                    retried = True
                    log.info("retrying speech for %s voice %s after repairing it", saved.provider, saved.id)
                    continue
                await self._failed(reservation, exc)
                raise self._explain(exc, voice) from exc
            except BaseException:
                await self._release_quietly(reservation)
                raise
            break
        try:
            actual = cost_to_micros(result.cost) if result.cost is not None else None
            await self.limits.settle(reservation, actual, currency=result.payment_source or "USD")
        except Exception:
            log.exception("could not settle the speech reservation #%d", reservation.id)
        log.info("synthesised %d characters with %s (%s, %s bytes, cost %s %s)", len(text), voice.model,
                 voice.identity.split(":", 1)[0], len(result.audio), result.cost, result.payment_source or "")
        return result

    async def _tts_arguments(self, voice: ResolvedVoice, speed: float) -> TTSArguments:
        kwargs: TTSArguments = {}
        if speed != 1.0:
            kwargs["speed"] = speed
        saved = voice.saved
        if saved is not None:
            kwargs.update(await providers.get(saved.provider).tts_arguments(saved, self.embeddings))
        elif voice.voice is not None:
            kwargs["voice"] = voice.voice
        return kwargs

    async def _failed(self, reservation: Reservation, exc: NanoGPTError) -> None:
        if exc.maybe_charged:
            log.warning("speech request may have been charged (%s); keeping the estimate on the ledger", exc)
            try:
                await self.limits.settle(reservation, None)
            except Exception:
                log.exception("could not settle the speech reservation #%d", reservation.id)
        else:
            await self._release_quietly(reservation)
        if isinstance(exc, InsufficientBalance):
            self.report_low_balance()

    async def _release_quietly(self, reservation: Reservation) -> None:
        try:
            await self.limits.release(reservation)
        except Exception:
            log.exception("could not release the speech reservation #%d", reservation.id)

    @staticmethod
    def _explain(exc: NanoGPTError, voice: ResolvedVoice) -> Exception:
        """A clearer sentence for the failures that are about the voice itself."""
        if voice.saved is not None:
            sentence = providers.get(voice.saved.provider).explain(exc, voice.label)
            if sentence is not None:
                return UserFacingError(sentence)
        if voice.saved is None and isinstance(exc, InvalidRequest) and voice_missing(exc):
            return UserFacingError(f"NanoGPT has no voice “{voice.voice}” for {voice.model}; pick a listed one.")
        return exc

    # -- voice messages ------------------------------------------------------------------------

    async def voice_message(self, spoken: SpokenAudio) -> audio.VoiceMessageAudio:
        """OGG/Opus, duration and waveform of ``spoken`` (remembered for the last few cache keys)."""
        encoded = self._voice_messages.get(spoken.cache_key)
        if encoded is not None:
            self._voice_messages.move_to_end(spoken.cache_key)
            return encoded
        encoded = await audio.encode_voice_message(spoken.audio)
        self._voice_messages[spoken.cache_key] = encoded
        while len(self._voice_messages) > VOICE_MESSAGE_MEMORY:
            self._voice_messages.popitem(last=False)
        return encoded

    async def forget_user(self, user_id: int) -> int:
        """For /forget-me (:mod:`bot.privacy`, before the rows go): drop the voice-message encodings of the
        user's cached clips and their cooldown; returns how many encodings were dropped."""
        dropped = 0
        for key in await self.db.cache.user_keys(user_id):
            dropped += self._voice_messages.pop(key, None) is not None
        await self.cooldown.release(user_id)  # this process's claim; the database's row goes with the rows
        return dropped

    # -- the operator --------------------------------------------------------------------------

    def report_low_balance(self) -> asyncio.Task | None:
        """After a 402: log the balance from ``/check-balance`` for the operator, in the background and
        at most once a minute. Returns the task (None when skipped)."""
        now = self.clock.now()
        if now - self._last_balance_check < BALANCE_LOG_INTERVAL:
            return None
        self._last_balance_check = now
        task = asyncio.create_task(self.log_balance(), name="nanovoice-balance-check")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def log_balance(self) -> None:
        """One WARNING with the NanoGPT balance: "NanoGPT balance too low: $0.0123 left"."""
        try:
            balance = await self.nanogpt.check_balance()
        except Exception as exc:
            log.warning("NanoGPT balance too low (the balance could not be read: %s)", exc)
            return
        usd = format_usd(cost_to_micros(balance.usd)) if balance.usd >= 0 else f"${balance.usd}"
        extra = f" (and {balance.nano.normalize():f} XNO)" if balance.nano else ""
        log.warning("NanoGPT balance too low: %s left%s", usd, extra)

    async def close(self) -> None:
        """Wait briefly for background balance checks."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=2)


__all__ = [
    "STOCK_VOICES",
    "TTS_CACHE_MAX_BYTES",
    "TTS_MODELS",
    "ResolvedVoice",
    "SpokenAudio",
    "TTSService",
    "cache_key",
    "canonical_model",
    "parse_stock_voice",
]
