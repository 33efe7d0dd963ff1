"""Voices: what a user does with their saved voices (list, info, rename, delete, default), the rules a
voice name follows, and the check that a name is free. No Discord here: ``cogs/voices.py`` parses the
command and renders what this returns.

Every method takes the acting user's id and only ever sees that user's voices: nobody can name, see,
rename or delete another user's voice.
"""

from __future__ import annotations

import logging
import unicodedata
from dataclasses import dataclass

from bot import fuzzy, providers
from bot.clock import Clock
from bot.embeddings import EmbeddingHost
from bot.errors import NotFound, UserFacingError
from bot.storage import CloneJob, Database, DuplicateVoiceName, Voice, name_key
from bot.text import quoted

log = logging.getLogger(__name__)

NAME_MAX = 32
CHOICES_MAX = 25  # Discord shows at most 25 autocomplete choices
CLEAR_DEFAULT_WORDS = ("none", "off", "clear", "stock")

# Zero-width and text-direction characters that are not in Unicode category Cf everywhere.
_INVISIBLE = {"\u115f", "\u1160", "\u3164", "\uffa0", "\u2800"}


def validate_voice_name(raw: str) -> str:
    """The cleaned voice name, or a :class:`UserFacingError` saying what to change."""
    name = " ".join((raw or "").split()) if not _has_forbidden(raw or "") else None
    if name is None:
        raise UserFacingError(
            "Voice names can't contain control, invisible or text-direction characters; "
            "use letters, digits, spaces and punctuation."
        )
    if not 1 <= len(name) <= NAME_MAX:
        raise UserFacingError(f"Voice names must be 1–{NAME_MAX} characters long.")
    return name


def _has_forbidden(text: str) -> bool:
    for char in text:
        if char in " \t":
            continue
        category = unicodedata.category(char)
        # Cc: control (incl. newlines); Cf: format (zero-width, bidi overrides and isolates, BOM…);
        # Zl/Zp: line/paragraph separators; Co/Cs/Cn: private use, surrogates, unassigned.
        if category in {"Cc", "Cf", "Zl", "Zp", "Co", "Cs", "Cn"} or char in _INVISIBLE:
            return True
    return False


def no_such_voice(name: str) -> NotFound:
    return NotFound(f"You have no voice called {quoted(name)}; /voice list shows yours.")


@dataclass(frozen=True, slots=True)
class VoiceInfo:
    """What ``/voice info`` shows about one voice."""

    voice: Voice
    is_default: bool
    clone_job: CloneJob | None  # the clone that made it (its cost), when still on record
    now: float
    keep_until: float | None  # the provider may delete it after this unless used again (MiniMax)
    stops_at: float | None  # when it stops working (Qwen3-TTS; None: it does not, a copy is kept)


@dataclass(frozen=True, slots=True)
class Renamed:
    old: str
    new: str
    changed: bool  # False: the voice already had exactly this name


class VoiceService:
    """The user's voices. One per bot; holds nothing of its own beyond the shared database."""

    def __init__(self, db: Database, clock: Clock, embeddings: EmbeddingHost) -> None:
        self.db = db
        self.clock = clock
        self.embeddings = embeddings

    # -- reading -------------------------------------------------------------------------------

    async def list_voices(self, user_id: int) -> list[Voice]:
        """The user's voices, by name."""
        return await self.db.voices.list(user_id)

    async def default_voice(self, user_id: int) -> Voice | None:
        return await self.db.user_settings.default_voice(user_id)

    async def get(self, user_id: int, name: str) -> Voice:
        """The user's voice called ``name`` (any case), or :class:`NotFound` saying so."""
        voice = await self.db.voices.by_name(user_id, name)
        if voice is None:
            raise no_such_voice(name)
        return voice

    async def is_default(self, user_id: int, voice: Voice) -> bool:
        default = await self.default_voice(user_id)
        return default is not None and default.id == voice.id

    async def info(self, user_id: int, name: str) -> VoiceInfo:
        voice = await self.get(user_id, name)
        return VoiceInfo(voice=voice, is_default=await self.is_default(user_id, voice),
                         clone_job=await self.db.jobs.for_voice(user_id, voice.id), now=self.clock.now(),
                         keep_until=providers.get(voice.provider).keep_until(voice),
                         stops_at=self.embeddings.expires_at(voice))

    async def name_choices(self, user_id: int, current: str) -> list[Voice]:
        """Autocomplete: the user's voices whose names fuzzy-match ``current``, best first, at most 25."""
        by_name = {voice.name: voice for voice in await self.list_voices(user_id)}
        return [by_name[name] for name in fuzzy.rank(current, by_name, CHOICES_MAX)]

    async def recent_jobs(self, user_id: int, limit: int = 10) -> list[CloneJob]:
        """The user's clone jobs, newest first."""
        return await self.db.jobs.for_user(user_id, limit=limit)

    # -- the name rules ------------------------------------------------------------------------

    async def ensure_name_free(self, user_id: int, name: str) -> None:
        """Refuse ``name`` for a new voice: the user has a voice or a running clone called that (any case)."""
        if await self.db.voices.name_taken(user_id, name):
            raise UserFacingError(
                f"You already have a voice called “{name}”; pick another name or delete that one with /voice delete."
            )
        await self.ensure_no_clone_named(user_id, name)

    async def ensure_no_clone_named(self, user_id: int, name: str) -> None:
        """Refuse ``name`` while one of the user's clones of that name is still running."""
        key = name_key(name)
        if any(name_key(other) == key for other in await self.db.jobs.open_names(user_id)):
            raise UserFacingError(f"A clone called “{name}” is already in progress; pick another name.")

    # -- changing ------------------------------------------------------------------------------

    async def rename(self, user_id: int, name: str, new_name: str) -> Renamed:
        voice = await self.get(user_id, name)
        cleaned = validate_voice_name(new_name)
        if cleaned == voice.name:
            return Renamed(voice.name, cleaned, changed=False)
        if name_key(cleaned) != name_key(voice.name):  # a change of case alone keeps the voice's own name
            await self.ensure_no_clone_named(user_id, cleaned)
        try:
            await self.db.voices.rename(user_id, voice.id, cleaned)
        except DuplicateVoiceName:
            raise UserFacingError(
                f"You already have a voice called {quoted(cleaned)}; pick another name or delete that one first."
            ) from None
        return Renamed(voice.name, cleaned, changed=True)

    async def delete(self, user_id: int, voice_id: int) -> bool:
        """Delete one of the user's voices with its stored embedding; False when it was already gone."""
        deleted = await self.embeddings.delete_voice(user_id, voice_id)
        if deleted:
            log.info("user %s deleted voice %s", user_id, voice_id)
        return deleted

    async def set_default(self, user_id: int, name: str) -> Voice | None:
        """Make the voice called ``name`` the user's default; one of :data:`CLEAR_DEFAULT_WORDS` (when no
        voice has that name) clears it. Returns the new default, None when cleared."""
        voice = await self.db.voices.by_name(user_id, name)
        if voice is None and name.strip().casefold() in CLEAR_DEFAULT_WORDS:
            await self.db.user_settings.set_default_voice(user_id, None, self.clock.now())
            return None
        if voice is None:
            raise no_such_voice(name)
        await self.db.user_settings.set_default_voice(user_id, voice.id, self.clock.now())
        return voice


__all__ = [
    "CLEAR_DEFAULT_WORDS",
    "NAME_MAX",
    "Renamed",
    "VoiceInfo",
    "VoiceService",
    "validate_voice_name",
]
