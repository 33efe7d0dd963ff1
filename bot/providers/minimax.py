"""MiniMax voice clones ($1.00, 10 s–5 min of audio): we name the voice, NanoGPT's MiniMax keeps it while used.

The job reserves a ``customVoiceId`` before the paid submit (so a lost answer still names the voice), the
saved voice speaks as that voice id with ``MINIMAX_TTS_MODEL``, and MiniMax deletes voices that go unused
for 7 days (``/voice info`` says by when to use it).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.errors import UserFacingError
from bot.nanogpt import InvalidRequest, NanoGPTError, voice_missing
from bot.providers.base import (
    CloneOrder,
    CloneProvider,
    InfoField,
    ProviderKey,
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

__all__ = ["UNUSED_DAYS", "MiniMax", "make_custom_voice_id"]

UNUSED_DAYS = 7  # MiniMax deletes a voice that goes unused this long


def make_custom_voice_id() -> str:
    """A fresh MiniMax ``customVoiceId``: ``^[A-Za-z][A-Za-z0-9]{7,}$`` with a digit, 70 random bits.

    Its shape is ``bot.tts.BOT_VOICE_ID``, which /say refuses as a stock voice."""
    return f"nv{secrets.randbelow(10)}{secrets.token_hex(8)}"


@dataclass(frozen=True, slots=True)
class MiniMax(CloneProvider):
    takes_clone_model = True

    def voice_id_maker(self) -> Callable[[], str] | None:
        return make_custom_voice_id

    async def submit(self, client: NanoGPTClient, order: CloneOrder) -> CloneTicket:
        if order.custom_voice_id is None:
            raise RuntimeError("a MiniMax clone needs the custom voice id reserved with its job")
        return await client.submit_minimax_clone(
            order.audio, order.filename, custom_voice_id=order.custom_voice_id, model=order.model,
            noise_reduction=order.noise_reduction, normalize_volume=order.normalize_volume,
        )

    async def collect(self, client: NanoGPTClient, job: CloneJob, status: CloneStatus, now: float) -> SavedVoice:
        return SavedVoice(provider_voice_id=job.custom_voice_id)

    def tts_model(self, config: Config) -> str:
        return config.minimax_tts_model

    def speaker(self, voice: Voice, config: Config) -> Speaker:
        if not voice.provider_voice_id:
            raise UserFacingError(f"The voice “{voice.name}” is incomplete; clone it again.")
        return Speaker(model=self.tts_model(config), voice=voice.provider_voice_id,
                       identity=f"minimax:{voice.provider_voice_id}")

    async def tts_arguments(self, voice: Voice, embeddings: EmbeddingHost) -> TTSArguments:
        return {"voice": voice.provider_voice_id} if voice.provider_voice_id else {}

    def explain(self, exc: NanoGPTError, name: str) -> str | None:
        if isinstance(exc, InvalidRequest) and voice_missing(exc):
            return (f"MiniMax no longer has the voice “{name}” (voices unused for 7 days are deleted); "
                    "clone it again.")
        return None

    def keep_until(self, voice: Voice) -> float:
        return (voice.last_used_at or voice.created_at) + UNUSED_DAYS * 86_400

    def info_fields(self, voice: Voice, *, now: float, expires_at: float | None, when: TimeText,
                    escape: Callable[[str], str]) -> list[InfoField]:
        fields = [InfoField("MiniMax voice id", f"`{voice.provider_voice_id or 'unknown'}`")]
        if voice.clone_model:
            fields.append(InfoField("Clone model", voice.clone_model))
        deadline = self.keep_until(voice)
        if deadline > now:
            keeping = f"Use it with /say by {when(deadline, 'f')} ({when(deadline, 'R')}) to keep it."
        else:
            keeping = f"It went unused for 7 days ({when(deadline, 'R')}), so it may be gone."
        fields.append(InfoField("Keeping it", f"MiniMax deletes voices that go unused for 7 days. {keeping}",
                                inline=False))
        return fields

    def delete_note(self) -> str:
        return "NanoGPT offers no way to delete the clone remotely; MiniMax deletes voices that go unused for 7 days."


PROVIDER = MiniMax(ProviderKey.MINIMAX, "MiniMax", 1_000_000, min_s=10, max_s=300)
