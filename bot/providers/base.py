"""What a clone provider is: one frozen object that knows its price, clip rule, NanoGPT calls and voices.

:class:`CloneProvider` is the base every provider module (``minimax.py``, ``qwen.py``) subclasses. It
holds the facts people see (label, price, clip rule: the ``/voice clone`` choices, the "Clone this voice"
select, the clone card, ``/help``, the audio checks and the reserved price all read them) and the
behaviour that differs between providers:

* upload: the clip rule (:class:`DurationRule`) and the upload format (:class:`UploadFormat`) that
  :func:`bot.audio.normalize_clone_audio` applies;
* submit and status: which :class:`~bot.nanogpt.NanoGPTClient` call a paid clone and its polling use,
  and how a status answer reads (:class:`PollResult`); what a finished run leaves to save
  (:meth:`CloneProvider.collect`);
* speaking with a saved voice: the TTS model and voice (:class:`Speaker`, whose ``identity`` is the TTS
  cache's voice identity), the voice-dependent TTS arguments, recovering from and explaining failures;
* the ``/voice info`` lines (and how long an unused voice is kept) and the ``/voice delete`` note.

Nothing here knows Discord; the few formatting needs of ``/voice info`` (times, user text) are passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, ClassVar, TypedDict

from bot.text import format_usd

if TYPE_CHECKING:
    from bot.config import Config
    from bot.embeddings import EmbeddingHost
    from bot.nanogpt import CloneStatus, CloneTicket, NanoGPTClient, NanoGPTError
    from bot.storage import CloneJob, Voice

__all__ = [
    "MP3_UPLOAD",
    "CloneOrder",
    "CloneProvider",
    "DurationRule",
    "InfoField",
    "PollResult",
    "ProviderKey",
    "RetryLater",
    "RunFailed",
    "SavedVoice",
    "Speaker",
    "TTSArguments",
    "TimeText",
]


class ProviderKey(StrEnum):
    """The keys of the built-in providers: the option values, stored with jobs and voices."""

    MINIMAX = "minimax"
    QWEN = "qwen"


class PollResult(StrEnum):
    """What one status answer means for a clone run."""

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class DurationRule:
    """A provider's accepted clip length in seconds; ``trim_to`` cuts longer (accepted) clips."""

    min_s: float
    max_s: float
    trim_to: float | None = None

    @property
    def upload_s(self) -> float:
        """The longest part of an accepted clip that is uploaded."""
        return min(self.trim_to or self.max_s, self.max_s)


@dataclass(frozen=True, slots=True)
class UploadFormat:
    """The MP3 a provider's upload wants (mono): sample rate and bit rate."""

    sample_rate: int = 44_100
    bitrate: int = 128_000


MP3_UPLOAD = UploadFormat()


@dataclass(frozen=True, slots=True)
class CloneOrder:
    """One paid clone request: the normalised clip and what the user asked for."""

    audio: bytes
    filename: str
    custom_voice_id: str | None  # reserved with the job (providers whose voices we name)
    transcript: str | None = None
    model: str | None = None
    noise_reduction: bool = False
    normalize_volume: bool = False


@dataclass(frozen=True, slots=True)
class SavedVoice:
    """What a completed run leaves to save with the voice."""

    provider_voice_id: str | None = None
    embedding_url: str | None = None
    embedding_expires_at: float | None = None
    embedding: tuple[str, str, str, bytes] | None = None  # (token, filename, content type, data) to store


class RetryLater(Exception):
    """The run completed but what it left could not be fetched yet: poll it again later."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class RunFailed(Exception):
    """The run cannot give a voice; ``message`` is the sentence the user is told."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class Speaker:
    """How a saved voice is synthesised: the TTS model, the voice name (None: arguments carry it), and
    the voice's identity in the TTS cache key."""

    model: str
    voice: str | None
    identity: str


class TTSArguments(TypedDict, total=False):
    """The voice-dependent keyword arguments of :meth:`bot.nanogpt.NanoGPTClient.tts`."""

    voice: str
    speed: float
    speaker_voice_embedding_file_url: str
    reference_text: str


@dataclass(frozen=True, slots=True)
class InfoField:
    """One field of ``/voice info``."""

    name: str
    value: str
    inline: bool = True


#: Renders a time for people: ``(seconds since the epoch or None, style)`` → text (the cog's formatter).
TimeText = Callable[[float | None, str], str]


@dataclass(frozen=True, slots=True)
class CloneProvider:
    """One clone provider. Subclasses override the behaviour; the fields are the facts people see."""

    key: str  # the option value, stored with jobs and voices
    label: str  # the name people see
    price_micros: int  # one clone run, in micro-dollars
    min_s: float  # shortest accepted clip
    max_s: float  # longest accepted clip
    trim_to: float | None = None  # longer accepted clips are cut to this many seconds
    upload: UploadFormat = MP3_UPLOAD

    #: The ``/voice clone`` ``model`` option applies to this provider.
    takes_clone_model: ClassVar[bool] = False
    #: Saved voices speak from a speaker embedding that :class:`bot.embeddings.EmbeddingHost` keeps.
    speaks_from_embedding: ClassVar[bool] = False

    # -- facts for people ------------------------------------------------------------------------

    @property
    def price(self) -> str:
        return format_usd(self.price_micros)

    @property
    def rule(self) -> DurationRule:
        return DurationRule(min_s=self.min_s, max_s=self.max_s, trim_to=self.trim_to)

    @property
    def clip_range(self) -> str:
        """``10 s–5 min``."""
        return f"{seconds_text(self.min_s)}–{seconds_text(self.max_s)}"

    def choice_name(self) -> str:
        """``MiniMax ($1.00, 10 s–5 min of audio)``: the /voice clone choice and the select option."""
        return f"{self.label} ({self.price}, {self.clip_range} of audio)"

    def clip_rule(self) -> str:
        """``3 s–5 min of audio; only the first 30 s is used``."""
        rule = f"{self.clip_range} of audio"
        if self.trim_to is not None:
            rule += f"; only the first {seconds_text(self.trim_to)} is used"
        return rule

    # -- cloning ---------------------------------------------------------------------------------

    def voice_id_maker(self) -> Callable[[], str] | None:
        """Makes the provider-side voice id reserved with the job before the submit (None: the
        provider names the voice itself)."""
        return None

    async def submit(self, client: NanoGPTClient, order: CloneOrder) -> CloneTicket:
        """Send the paid clone request (never retried once sent)."""
        raise NotImplementedError(f"{self.label} clones cannot be submitted")

    async def status(self, client: NanoGPTClient, job: CloneJob) -> CloneStatus:
        """Poll the job's run, echoing the ticket's cost/paymentSource/isApiRequest."""
        if job.run_id is None:
            raise ValueError(f"clone job {job.id} has no run id to poll")
        return await client.clone_status(self.key, job.run_id, cost=micros_to_units(job.cost_micros),
                                         payment_source=job.payment_source,
                                         is_api_request=bool(job.is_api_request))

    def interpret(self, status: CloneStatus) -> PollResult:
        """What a status answer means."""
        state = (status.status or "").lower()
        if state == "completed":
            return PollResult.COMPLETED
        if state in ("failed", "error"):
            return PollResult.FAILED
        return PollResult.PROCESSING if state == "processing" else PollResult.PENDING

    async def collect(self, client: NanoGPTClient, job: CloneJob, status: CloneStatus, now: float) -> SavedVoice:
        """What a completed run leaves to save; raises :class:`RetryLater` or :class:`RunFailed`."""
        return SavedVoice()

    # -- speaking with a saved voice -------------------------------------------------------------

    def tts_model(self, config: Config) -> str | None:
        """The TTS model this provider's saved voices speak with (``/help`` shows its price); None when
        they do not speak through one configured model."""
        return None

    def speaker(self, voice: Voice, config: Config) -> Speaker:
        """The TTS model, voice and cache identity of ``voice``; ``UserFacingError`` when unusable."""
        raise NotImplementedError(f"{self.label} voices cannot speak")

    async def tts_arguments(self, voice: Voice, embeddings: EmbeddingHost) -> TTSArguments:
        """The voice-dependent arguments of the TTS call for ``voice``."""
        return {}

    async def recover(self, voice: Voice, exc: NanoGPTError, sent: TTSArguments, embeddings: EmbeddingHost) -> bool:
        """After a TTS failure that was not charged: True when trying once more may succeed (the cause
        was repaired)."""
        return False

    def explain(self, exc: NanoGPTError, name: str) -> str | None:
        """A clearer sentence for a TTS failure that is about the voice ``name`` itself, or None."""
        return None

    # -- /voice info, /voice delete --------------------------------------------------------------

    def keep_until(self, voice: Voice) -> float | None:
        """When the provider may delete ``voice`` unless it is used again before (None: it keeps voices
        whether they are used or not)."""
        return None

    def info_fields(self, voice: Voice, *, now: float, expires_at: float | None, when: TimeText,
                    escape: Callable[[str], str]) -> list[InfoField]:
        """The provider's own ``/voice info`` fields. ``expires_at``: when the voice stops working
        (:meth:`bot.embeddings.EmbeddingHost.expires_at`); ``when`` renders times, ``escape`` user text."""
        return []

    def delete_note(self) -> str:
        """What happens to the provider's copy when a voice is deleted."""
        return "NanoGPT offers no way to delete the clone remotely."


def seconds_text(value: float) -> str:
    """``30 s``, ``5 min``."""
    if value >= 60 and value % 60 == 0:
        return f"{value // 60:g} min"
    return f"{value:g} s"


def micros_to_units(micros: int | None) -> Decimal | None:
    """Turn stored micro-units back into the ``cost`` NanoGPT reported (exactly)."""
    return None if micros is None else Decimal(micros) / 1_000_000
