"""Qwen3-TTS voice clones ($0.25, 3 s–5 min of audio, the first 30 s used): a voice is a speaker embedding.

A completed run points at a speaker-embedding file that NanoGPT keeps about 7 days; the file's bytes are
stored with the voice the moment the run completes, and :class:`bot.embeddings.EmbeddingHost` decides which
URL a ``/say`` hands NanoGPT (``speaker_voice_embedding_file_url``, with the transcript as reference text).
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiohttp

from bot.nanogpt import DownloadTooLarge, NanoGPTError, embedding_rejected
from bot.providers.base import (
    CloneOrder,
    CloneProvider,
    InfoField,
    ProviderKey,
    RetryLater,
    RunFailed,
    SavedVoice,
    Speaker,
    TimeText,
    TTSArguments,
)

if TYPE_CHECKING:
    from bot.config import Config
    from bot.embeddings import EmbeddingHost
    from bot.nanogpt import CloneStatus, CloneTicket, NanoGPTClient
    from bot.storage import CloneJob, Voice

__all__ = ["EMBEDDING_MAX_BYTES", "EMBEDDING_RETENTION", "Qwen"]

EMBEDDING_RETENTION = 7 * 24 * 3600  # NanoGPT keeps a Qwen embedding at least 7 days
EMBEDDING_MAX_BYTES = 20 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Qwen(CloneProvider):
    speaks_from_embedding = True

    async def submit(self, client: NanoGPTClient, order: CloneOrder) -> CloneTicket:
        return await client.submit_qwen_clone(order.audio, order.filename, reference_text=order.transcript)

    async def collect(self, client: NanoGPTClient, job: CloneJob, status: CloneStatus, now: float) -> SavedVoice:
        url = status.speaker_embedding_url
        if not url:
            raise RetryLater(RuntimeError("completed without a speakerEmbeddingUrl"))
        try:
            data, content_type = await client.download(url, max_bytes=EMBEDDING_MAX_BYTES)
        except DownloadTooLarge:
            raise RunFailed("The voice file NanoGPT produced is too large to store.") from None
        except (NanoGPTError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise RetryLater(exc) from exc  # the status is polled again; the URL may be fresh
        if not data:
            raise RetryLater(RuntimeError("empty speaker embedding"))
        filename = re.sub(r"[^A-Za-z0-9._-]", "_", posixpath.basename(urlsplit(url).path))[:100]
        if not filename.strip("._"):
            filename = "speaker-embedding.safetensors"
        return SavedVoice(
            embedding_url=url, embedding_expires_at=now + EMBEDDING_RETENTION,
            embedding=(secrets.token_urlsafe(32), filename, content_type or "application/octet-stream", data),
        )

    def tts_model(self, config: Config) -> str:
        return config.qwen_tts_model

    def speaker(self, voice: Voice, config: Config) -> Speaker:
        source = f"file{voice.embedding_file_id}" if voice.embedding_file_id is not None else f"voice{voice.id}"
        transcript = hashlib.sha256((voice.transcript or "").encode("utf-8")).hexdigest()[:16]
        return Speaker(model=self.tts_model(config), voice=None,
                       identity=f"qwen:{voice.user_id}:{source}:{transcript}")

    async def tts_arguments(self, voice: Voice, embeddings: EmbeddingHost) -> TTSArguments:
        arguments: TTSArguments = {"speaker_voice_embedding_file_url": await embeddings.url_for(voice)}
        if voice.transcript:
            arguments["reference_text"] = voice.transcript
        return arguments

    async def recover(self, voice: Voice, exc: NanoGPTError, sent: TTSArguments, embeddings: EmbeddingHost) -> bool:
        return embedding_rejected(exc) and await embeddings.report_dead_url(
            voice, sent.get("speaker_voice_embedding_file_url"))

    def explain(self, exc: NanoGPTError, name: str) -> str | None:
        if embedding_rejected(exc):
            return f"NanoGPT could not load the voice “{name}” (its speaker embedding is gone); clone it again."
        return None

    def info_fields(self, voice: Voice, *, now: float, expires_at: float | None, when: TimeText,
                    escape: Callable[[str], str]) -> list[InfoField]:
        transcript = voice.transcript or "none given"
        if expires_at is None:
            durability = "I keep a copy, so it keeps working after NanoGPT's copy expires."
        elif expires_at > now:
            durability = (f"Stops working {when(expires_at, 'R')} ({when(expires_at, 'f')}). NanoGPT keeps "
                          f"{self.label} voices about 7 days, and I have nowhere to keep a copy. The bot's operator "
                          "can give me one.")
        else:
            durability = (f"Stopped working {when(expires_at, 'R')}. NanoGPT's copy has expired and I have no copy "
                          "of my own; clone it again.")
        return [InfoField("Transcript", escape(transcript[:1000]), inline=False),
                InfoField("Durable", durability, inline=False)]

    def delete_note(self) -> str:
        return (f"NanoGPT offers no way to delete the clone remotely; its copy of the {self.label} voice expires "
                "after about 7 days. I delete my own copy now.")


PROVIDER = Qwen(ProviderKey.QWEN, "Qwen3-TTS", 250_000, min_s=3, max_s=300, trim_to=30)
