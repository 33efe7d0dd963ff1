"""Durable Qwen voices: stored speaker-embedding files and the URL NanoGPT is given for them.

NanoGPT keeps a Qwen speaker embedding "at least 7 days, then it may vanish". The clone service
stores the file's bytes in ``stored_files`` the moment a clone completes; this module decides which
URL ``/say`` hands to NanoGPT as ``speaker_voice_embedding_file_url``:

1. the provider's own ``embedding_url`` while it is comfortably inside its 7 days (younger than about
   6 days), not reported dead, and — when we have an alternative — still answering a (cached) HEAD;
2. otherwise a URL of the bot's own for the stored bytes:
   * ``PUBLIC_BASE_URL`` set → ``{PUBLIC_BASE_URL}/embeddings/{token}/{filename}``, served by
     :class:`bot.web.EmbeddingServer` (``token`` is ``secrets.token_urlsafe(32)``);
   * else ``EMBEDDING_CHANNEL_ID`` set → the file re-hosted as an attachment in that private channel;
     Discord's signed CDN URL (``?ex=<hex unix>&is=…&hm=…``) is refreshed by re-fetching the message
     shortly before it expires, or re-uploaded when the message is gone.
3. with neither configured the provider URL is all there is: a WARNING at start-up, and
   :meth:`EmbeddingHost.expires_at` tells ``/voice info`` when the voice will stop working.

This module knows nothing about Discord: the Discord part is a pair (plus an optional delete) of
async callables that a cog installs with :meth:`EmbeddingHost.set_discord_hooks`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, urlsplit

import aiohttp

from bot import providers
from bot.clock import Clock
from bot.config import Config
from bot.errors import UserFacingError
from bot.storage import Database, StoredFile, Voice
from bot.web import EmbeddingServer

log = logging.getLogger(__name__)

NO_DURABLE_STORAGE_WARNING = (
    "Qwen voices will stop working about 7 days after cloning: set PUBLIC_BASE_URL or EMBEDDING_CHANNEL_ID"
)
DAY = 86_400.0
PROVIDER_RETENTION = 7 * DAY  # NanoGPT keeps the embedding at least this long after the clone
PROVIDER_TRUST_MARGIN = 1 * DAY  # stop relying on the provider's copy this long before its 7 days end
DISCORD_REFRESH_MARGIN = 3600.0  # refresh a signed Discord URL this long before its ``ex``
DISCORD_DEFAULT_LIFETIME = DAY  # when a CDN URL carries no ``ex`` (Discord signs for 24 h)
CHECK_INTERVAL = 600.0  # HEAD the provider URL at most this often per voice
CHECK_TIMEOUT = 5.0

# (data, filename) → (url, expires_at, message_id)
Rehost = Callable[[bytes, str], Awaitable[tuple[str, float | None, int]]]
# message_id → (url, expires_at); raise LookupError (or anything) when the message is gone
Refresh = Callable[[int], Awaitable[tuple[str, float | None]]]
# message_id → None (best effort)
DeleteCopy = Callable[[int], Awaitable[None]]


def _speaks_from_embedding(voice: Voice) -> bool:
    provider = providers.find(voice.provider)
    return provider is not None and provider.speaks_from_embedding


class EmbeddingUnavailable(UserFacingError):
    """No URL can be given for a Qwen voice (its provider copy is gone and nothing was stored)."""


def parse_discord_expiry(url: str) -> float | None:
    """The unix time in a Discord signed CDN URL's ``ex`` parameter (hex), or None."""
    try:
        values = parse_qs(urlsplit(url).query).get("ex")
        return float(int(values[0], 16)) if values else None
    except (ValueError, IndexError):
        return None


@dataclass(frozen=True, slots=True)
class _Check:
    url: str
    at: float
    alive: bool


class EmbeddingHost:
    """Chooses the embedding URL for Qwen voices and serves or re-hosts the stored copies.

    Lifecycle: ``await start()`` (HTTP server when PUBLIC_BASE_URL is set; the start-up warning when
    no durable storage is configured), ``await close()``.
    """

    def __init__(self, db: Database, config: Config, clock: Clock, session: aiohttp.ClientSession, *,
                 http_host: str = "0.0.0.0") -> None:
        self.db = db
        self.config = config
        self.clock = clock
        self.session = session
        self.http_host = http_host
        self.server: EmbeddingServer | None = None
        self._rehost: Rehost | None = None
        self._refresh: Refresh | None = None
        self._delete: DeleteCopy | None = None
        self._checks: dict[int, _Check] = {}
        self._last_url: dict[int, str] = {}
        self._locks: dict[int, asyncio.Lock] = {}

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        """``"http"`` (PUBLIC_BASE_URL), ``"discord"`` (EMBEDDING_CHANNEL_ID) or ``"none"``."""
        if self.config.public_base_url:
            return "http"
        if self.config.embedding_channel_id is not None:
            return "discord"
        return "none"

    @property
    def durable(self) -> bool:
        """Whether Qwen voices keep working after the provider's copy of their embedding is gone."""
        return self.mode != "none"

    async def start(self) -> None:
        """Start the HTTP server when PUBLIC_BASE_URL is set; warn when voices cannot be made durable."""
        mode = self.mode
        if mode == "http":
            self.server = EmbeddingServer(self.db, self.http_host, self.config.http_port)
            await self.server.start()
            log.info("stored Qwen embeddings are served under %s/embeddings/…", self.config.public_base_url)
            if self.config.embedding_channel_id is not None:
                log.info("PUBLIC_BASE_URL is set, so EMBEDDING_CHANNEL_ID is not used")
        elif mode == "discord":
            log.info("stored Qwen embeddings are re-hosted in channel %s when needed",
                     self.config.embedding_channel_id)
        else:
            log.warning(NO_DURABLE_STORAGE_WARNING)

    async def close(self) -> None:
        """Stop the HTTP server, if any."""
        if self.server is not None:
            await self.server.close()
            self.server = None

    def set_discord_hooks(self, rehost: Rehost | None, refresh: Refresh | None,
                          delete: DeleteCopy | None = None) -> None:
        """Install (or, with Nones, remove) the Discord side of EMBEDDING_CHANNEL_ID re-hosting."""
        self._rehost, self._refresh, self._delete = rehost, refresh, delete

    # -- the URL for NanoGPT -------------------------------------------------------------------

    def public_url(self, file: StoredFile) -> str:
        """The bot's own URL of a stored file (needs PUBLIC_BASE_URL)."""
        base = (self.config.public_base_url or "").rstrip("/")
        return f"{base}/embeddings/{file.token}/{quote(file.filename, safe='')}"

    def provider_trusted_until(self, voice: Voice) -> float | None:
        """Until when the provider's URL is used without question (a day before its 7 days end)."""
        if not voice.embedding_url:
            return None
        expires = voice.embedding_expires_at
        if expires is None:
            expires = voice.created_at + PROVIDER_RETENTION
        return expires - PROVIDER_TRUST_MARGIN

    def expires_at(self, voice: Voice) -> float | None:
        """When a Qwen voice stops working, or None when it does not (durable, or no embedding voice)."""
        if not _speaks_from_embedding(voice):
            return None
        if self.durable and voice.embedding_file_id is not None:
            return None
        if voice.embedding_expires_at is not None:
            return voice.embedding_expires_at
        return voice.created_at + PROVIDER_RETENTION if voice.embedding_url else None

    async def url_for(self, voice: Voice) -> str:
        """The ``speaker_voice_embedding_file_url`` to send NanoGPT for a Qwen voice."""
        if not _speaks_from_embedding(voice):
            raise ValueError(f"voice {voice.id} does not speak from a speaker embedding")
        now = self.clock.now()
        trusted_until = self.provider_trusted_until(voice)
        provider_url = voice.embedding_url if trusted_until is not None and now < trusted_until else None
        stored = await self._stored_file(voice)
        fallback = stored if self.durable else None
        if provider_url and fallback is not None and not await self._provider_alive(voice, provider_url, now):
            provider_url = None
        if provider_url:
            return self._remember(voice, provider_url)
        if fallback is not None:
            url = await self._own_url(fallback)
            if url is not None:
                return self._remember(voice, url)
        if voice.embedding_url:
            # Nothing better: the provider's copy may still answer (NanoGPT keeps it "at least" 7 days).
            if self.durable and stored is None:
                log.warning("Qwen voice %s has no stored embedding; using the provider URL", voice.id)
            return self._remember(voice, voice.embedding_url)
        raise EmbeddingUnavailable(
            f"The voice “{voice.name}” can't be used any more: its speaker embedding is gone; clone it again."
        )

    async def report_dead_url(self, voice: Voice, url: str | None = None) -> bool:
        """NanoGPT could not load the embedding URL last given for ``voice`` (or ``url``).

        Marks the provider's copy as gone (persistently) or drops a stale Discord copy, so the next
        :meth:`url_for` answers differently. Returns True when retrying may help.
        """
        url = url or self._last_url.get(voice.id) or voice.embedding_url
        now = self.clock.now()
        if voice.embedding_url and url == voice.embedding_url:
            log.info("the provider's embedding URL of Qwen voice %s is gone; using the stored copy", voice.id)
            await self.db.voices.mark_embedding_expired(voice.id, now)
            self._checks[voice.id] = _Check(voice.embedding_url, now, False)
            stored = await self._stored_file(voice)
            return stored is not None and self.durable
        stored = await self._stored_file(voice)
        if stored is not None and stored.discord_url and url == stored.discord_url:
            log.info("the re-hosted embedding URL of Qwen voice %s failed; it will be refreshed", voice.id)
            await self.db.files.set_discord_copy(stored.id, None, None, stored.discord_message_id)
            return True
        return False

    # -- internals -----------------------------------------------------------------------------

    def _remember(self, voice: Voice, url: str) -> str:
        self._last_url[voice.id] = url
        return url

    async def _stored_file(self, voice: Voice) -> StoredFile | None:
        if voice.embedding_file_id is None:
            return None
        file = await self.db.files.get(voice.embedding_file_id)
        if file is None or file.user_id != voice.user_id:
            return None
        return file

    async def _provider_alive(self, voice: Voice, url: str, now: float) -> bool:
        """A HEAD of the provider URL ``url``, cached for CHECK_INTERVAL; a definite failure is persisted."""
        cached = self._checks.get(voice.id)
        if cached is not None and cached.url == url and now - cached.at < CHECK_INTERVAL:
            return cached.alive
        alive = await self._check_url(url)
        self._checks[voice.id] = _Check(url, now, alive)
        if not alive:
            log.info("the provider's embedding URL of Qwen voice %s does not answer; using the stored copy",
                     voice.id)
            await self.db.voices.mark_embedding_expired(voice.id, now)
        return alive

    async def _check_url(self, url: str) -> bool:
        timeout = aiohttp.ClientTimeout(total=CHECK_TIMEOUT)
        try:
            async with self.session.head(url, timeout=timeout, allow_redirects=True) as resp:
                if resp.status in (403, 405, 501):  # signed URLs often refuse HEAD: ask for one byte
                    async with self.session.get(url, timeout=timeout, headers={"Range": "bytes=0-0"}) as got:
                        return got.status < 400
                return resp.status < 400
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("embedding URL check failed: %s", type(exc).__name__)
            return False

    async def _own_url(self, file: StoredFile) -> str | None:
        if self.mode == "http":
            return self.public_url(file)
        if self.mode == "discord":
            return await self._discord_url(file)
        return None

    async def _discord_url(self, file: StoredFile) -> str | None:
        if self._rehost is None:
            log.warning("EMBEDDING_CHANNEL_ID is set but the Discord re-hosting is not ready")
            return None
        lock = self._locks.setdefault(file.id, asyncio.Lock())
        # One re-host of a file at a time: in this process (so its waiters hold no database connection),
        # then across every process sharing the database (two would each post a copy, and the one whose URL
        # is overwritten would stay in the channel, never deleted, not even by /forget-me).
        async with lock, self.db.exclusive(f"embedding-copy:{file.id}"):
            current = await self.db.files.get(file.id)
            if current is None:
                return None
            now = self.clock.now()
            if current.discord_url and self._fresh(current.discord_url_expires_at, now):
                return current.discord_url
            if current.discord_message_id is not None and self._refresh is not None:
                try:
                    url, expires = await self._refresh(current.discord_message_id)
                except Exception as exc:
                    log.info("re-hosted embedding %s could not be refreshed (%s); uploading it again",
                             file.id, type(exc).__name__)
                else:
                    expires = self._expiry(url, expires, now)
                    if self._fresh(expires, now):
                        await self.db.files.set_discord_copy(file.id, url, expires, current.discord_message_id)
                        return url
            data = await self.db.files.data(file.id)
            if data is None:
                return None
            url, expires, message_id = await self._rehost(data, current.filename)
            expires = self._expiry(url, expires, now)
            await self.db.files.set_discord_copy(file.id, url, expires, message_id)
            if current.discord_message_id is not None and current.discord_message_id != message_id:
                await self._delete_copy(current.discord_message_id)
            log.info("embedding %s re-hosted in the embedding channel (message %s)", file.id, message_id)
            return url

    @staticmethod
    def _fresh(expires_at: float | None, now: float) -> bool:
        return expires_at is not None and now < expires_at - DISCORD_REFRESH_MARGIN

    @staticmethod
    def _expiry(url: str, expires_at: float | None, now: float) -> float:
        if expires_at is None:
            expires_at = parse_discord_expiry(url)
        return expires_at if expires_at is not None else now + DISCORD_DEFAULT_LIFETIME

    async def _delete_copy(self, message_id: int) -> None:
        if self._delete is None:
            return
        try:
            await self._delete(message_id)
        except Exception:
            log.warning("could not delete the re-hosted embedding message %s", message_id, exc_info=True)

    # -- deleting ------------------------------------------------------------------------------

    async def delete_voice(self, user_id: int, voice_id: int) -> bool:
        """Delete one of ``user_id``'s voices with its stored file and any re-hosted copy."""
        voice = await self.db.voices.get(user_id, voice_id)
        if voice is None:
            return False
        file = await self._stored_file(voice)
        deleted = await self.db.voices.delete(user_id, voice_id)
        if deleted and file is not None and file.discord_message_id is not None:
            await self._delete_copy(file.discord_message_id)
        self._forget_cached(voice_id)
        return deleted

    async def forget_user(self, user_id: int) -> int:
        """For /forget-me (:mod:`bot.privacy`, before the rows go): delete the re-hosted copies of
        ``user_id``'s stored files and forget their voices' URL checks; returns how many items that was."""
        forgotten = 0
        for file in await self.db.files.for_user(user_id):
            if file.discord_message_id is not None:
                await self._delete_copy(file.discord_message_id)
                forgotten += 1
        for voice in await self.db.voices.list(user_id):
            forgotten += self._forget_cached(voice.id)
        return forgotten

    def _forget_cached(self, voice_id: int) -> int:
        """Drop what is remembered about ``voice_id``; returns how many entries there were."""
        return (self._checks.pop(voice_id, None) is not None) + (self._last_url.pop(voice_id, None) is not None)


__all__ = [
    "NO_DURABLE_STORAGE_WARNING",
    "EmbeddingHost",
    "EmbeddingUnavailable",
    "parse_discord_expiry",
]
