"""Clone jobs: checks before money is spent, the paid submit, status polling and completion.

The clone-jobs cog drives this service and only renders; nothing here knows Discord.

* :meth:`CloneService.check` runs every free check that needs no download, cheapest first (name, open
  jobs, guild policy, daily limit and budget, size); :meth:`CloneService.prepare_audio` then downloads,
  decodes and normalises the clip for its provider. A rejection is one
  :class:`~bot.errors.UserFacingError` sentence and no request reaches NanoGPT.
* :meth:`CloneService.submit` is reserve → record → send → record the run: it reserves the quota,
  writes the job row ('submitting') *before* the paid request, sends it (the provider object of
  :mod:`bot.providers` chooses the NanoGPT call), records the run ('pending') and settles the
  reservation, then hands the job to the poller. A process that dies between send and record leaves a
  'submitting' row without run id: whoever adopts it (the next start, or a sibling process) marks it
  'lost' and tells the user; it is never resubmitted (it may have been charged). States and their
  moves: :mod:`bot.job_states`.
* A clean stop (:meth:`CloneService.drain_submits`: the command line's stop signal handler calls it
  before the bot closes, while every cog still answers; the cog's unload again for a close that did not,
  before its poller stops and before Discord's HTTP closes) refuses new submits with one sentence
  (:data:`RESTARTING`; nothing reserved or sent) and gives the submits already sent up to
  ``submit_drain_seconds`` to be answered and recorded ('pending'); the claims are then handed back and
  whoever adopts the job finishes it. Only a submit still unanswered after that wait is cancelled and
  'lost'.
* :meth:`CloneService.run_poller` (a task owned by the cog) polls every open job this process claims
  at its due time through a :class:`bot.scheduler.Scheduler` (the database is the source of truth at
  start-up), with bounded concurrency, honouring ``X-Poll-After``/``Retry-After``, backing off on
  transient errors, and finishing jobs: the voice is saved and the job completed in one transaction, a
  short sample is synthesised, and the user is told exactly once through :class:`JobEvents`
  (implemented by the cog).

Claims (several bot processes may share one PostgreSQL database): each job is followed by one process,
the :class:`bot.instances.Instance` that created it or adopted it (``claimed_by``, with a ``lease_epoch``
raised at every adoption). Only that process polls the job and tells the user: every write about the job
carries its claim (:class:`bot.storage.Claim`); a write refused because the claim moved
(:class:`bot.storage.LeaseLost`: this process was taken for dead) drops the job here, without a notice.
One exception: a submit answered after a sibling marked its job 'lost' settles the quota at the run's
cost, records the run on the lost row, and tells the user only if it claims the notice (``notified_at``)
before the sibling does; else :meth:`CloneService.submit` raises :class:`CloneHandedOver` (say nothing).
The heartbeat (``heartbeat_interval``) renews the ``lease_until`` of every job the process claims; the
orphan sweep (at start-up, then every ``sweep_interval`` on PostgreSQL) adopts the jobs whose owner is
dead (row gone, heartbeat older than ``lease_seconds``, liveness lock released), whose lease ran out or
that nobody claims, in one transaction (``FOR UPDATE SKIP LOCKED``: two sweepers never adopt one job).
So a start never touches a live sibling's jobs. A clean stop hands the jobs back
(:meth:`CloneService.release_claims`) and announces it (NOTIFY), so the siblings sweep at once (the
periodic sweep covers a missed notification). A failing heartbeat or sweep is retried, logged once. On
SQLite one process uses the file, so the start-up sweep adopts every job of an earlier run and there is
nothing to sweep later.

Notification is claim → send → unclaim-on-failure (``mark_job_notified`` first). A crash in the
instant between the claim commit and Discord accepting the message loses that one notice (the job
and the voice are saved; ``/voice jobs`` shows them); the other order would risk a duplicate notice
after every crash between send and claim instead. An interrupted send keeps its claim for the same
reason, so a clean shutdown first lets the notices being sent finish; channel notices also carry a
per-job ``nonce`` with ``enforce_nonce``, so Discord itself drops a resend of one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn, Protocol

import aiohttp

from bot import audio, providers
from bot.clock import Clock
from bot.config import Config
from bot.embeddings import EmbeddingHost
from bot.errors import UserFacingError
from bot.instances import Instance
from bot.job_states import LABELS as STATE_LABELS
from bot.job_states import JobState, NoticeOutcome, check_move
from bot.limits import Limits, Reservation
from bot.nanogpt import (
    CloneStatus,
    CloneTicket,
    ContentPolicyError,
    InsufficientBalance,
    InvalidRequest,
    NanoGPTClient,
    NanoGPTError,
)
from bot.policy import ensure_clone_allowed
from bot.providers.base import CloneOrder, CloneProvider, PollResult, RetryLater, RunFailed
from bot.providers.minimax import make_custom_voice_id
from bot.scheduler import Scheduler, backoff
from bot.storage import Claim, CloneJob, Database, DuplicateVoiceName, LeaseLost, Voice, name_key
from bot.storage.jobs import CLAIMS_TOPIC
from bot.text import shorten
from bot.tts import TTSService
from bot.voices import NAME_MAX, VoiceService, validate_voice_name

log = logging.getLogger(__name__)

TRANSCRIPT_MAX = 1000
INTERACTION_TOKEN_LIFETIME = 15 * 60  # Discord interaction tokens live 15 minutes
SAMPLE_TEXT = "Hello! This is my new voice. How do I sound?"

LOST_AFTER_RESTART = (
    "I restarted while sending your clone, so I can't tell whether NanoGPT got it and charged for it. "
    "I won't send it again, so nothing is charged twice; the bot's operator can check NanoGPT's dashboard."
)
LOST_AFTER_TIMEOUT = (
    "NanoGPT stopped answering after I sent your clone, so I can't tell whether it got it and charged for it. "
    "I won't send it again, so nothing is charged twice; the bot's operator can check NanoGPT's dashboard."
)
RESTARTING = "I'm restarting right now; nothing was charged — try again in a minute."
TIMED_OUT = "NanoGPT did not finish the clone within 30 minutes."
FAILED_WITHOUT_REASON = "NanoGPT reported that the clone failed without giving a reason."

def format_elapsed(seconds: float) -> str:
    seconds = max(0, int(seconds))
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"


# -- values passed between the cog and the service ---------------------------------------------


@dataclass(frozen=True, slots=True)
class CloneRequest:
    """What the user asked for (from /voice clone or the context menu's modal)."""

    user_id: int
    guild_id: int | None
    channel_id: int | None
    name: str
    provider: str
    role_ids: tuple[int, ...] = ()
    transcript: str | None = None
    model: str | None = None
    noise_reduction: bool = False
    normalize_volume: bool = False


@dataclass(frozen=True, slots=True)
class ClipSource:
    """The uploaded recording, not yet downloaded: the size is checked before ``read`` is called."""

    filename: str
    size: int
    upload_limit: int | None
    read: Callable[[], Awaitable[bytes]]


@dataclass(frozen=True, slots=True)
class PreparedClone:
    """A request that passed every check, with its normalised audio; ready for consent and submit."""

    request: CloneRequest
    audio: audio.NormalizedAudio
    price_micros: int

    @property
    def provider(self) -> CloneProvider:
        return providers.get(self.request.provider)

    @property
    def provider_label(self) -> str:
        return providers.label(self.request.provider)


@dataclass(frozen=True, slots=True)
class InteractionRef:
    """Where the live status card is: the interaction that deferred (its webhook token lives 15 min)."""

    application_id: int | None
    token: str | None
    expires_at: float | None


@dataclass(frozen=True, slots=True)
class CloneNotice:
    """The single message that tells the user how a job ended."""

    outcome: NoticeOutcome
    message: str
    voice_name: str | None = None
    sample: bytes | None = field(default=None, repr=False)
    sample_content_type: str | None = None

    @property
    def sample_filename(self) -> str:
        ext = {"audio/mpeg": "mp3", "audio/mp3": "mp3", "audio/wav": "wav", "audio/x-wav": "wav",
               "audio/ogg": "ogg", "audio/opus": "opus", "audio/aac": "aac", "audio/flac": "flac"}
        return f"sample.{ext.get((self.sample_content_type or '').split(';')[0].strip().lower(), 'mp3')}"


class JobEvents(Protocol):
    """How the poller reaches the user (implemented by the clone-jobs cog)."""

    async def show_progress(self, job: CloneJob) -> None:
        """Refresh the live status card (called only while the interaction token lives)."""

    async def deliver_notice(self, job: CloneJob, notice: CloneNotice) -> None:
        """Tell the user how the job ended; raise to have it retried later."""


class CloneHandedOver(Exception):
    """Raised by :meth:`CloneService.submit` when another bot process took the job over while its paid
    request was in flight and tells the user itself: say nothing more about it."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"clone job {job_id} is followed by another bot process")
        self.job_id = job_id


# -- the service -----------------------------------------------------------------------------


class CloneService:
    """Checks, paid submit, polling and completion of voice clones."""

    # Poller tuning; tests shorten the backoff. Times in seconds.
    default_poll_after = 3.0
    min_poll_after = 0.05
    backoff_base = 1.0
    backoff_cap = 60.0
    concurrency = 64  # status requests in flight at once (1,000 jobs at X-Poll-After 5 s: 200 a second)
    job_deadline = 30 * 60
    progress_interval = 10.0  # at most one elapsed-time refresh of a card per this many seconds
    idle_recheck = 1.0  # the poller peeks at its heap at least this often (cheap; no database scan)
    notice_attempts = 8
    notice_drain_seconds = 10.0  # at shutdown, how long notices already being sent may take to finish
    notice_concurrency = 16  # notices (sample synthesis + Discord message) in flight at once
    submit_drain_seconds = 20.0  # at a clean stop, how long submits already sent may take to be answered
    # Claims (several processes on one PostgreSQL database; see the module's docstring).
    lease_seconds = 60.0  # a claim lapses this long after its owner's last heartbeat
    heartbeat_interval = 10.0  # the instance row's heartbeat and the renewal of every claim
    sweep_interval = 2.0  # how often a process adopts the jobs of dead siblings (PostgreSQL only)

    def __init__(self, db: Database, nanogpt: NanoGPTClient, limits: Limits, clock: Clock, config: Config,
                 tts: TTSService, embeddings: EmbeddingHost, voices: VoiceService) -> None:
        self.db = db
        self.nanogpt = nanogpt
        self.limits = limits
        self.clock = clock
        self.config = config
        self.tts = tts
        self._notice_slots = asyncio.Semaphore(self.notice_concurrency)
        self.embeddings = embeddings
        self.voices = voices
        self.events: JobEvents | None = None
        self._scheduler: Scheduler[int] = Scheduler(self._turn, name="clone-job")  # keys: job ids
        self.instance = Instance(db, clock, shard_ids=config.shard_ids)
        self._claims: dict[int, int] = {}  # job id → the epoch this process claimed it at
        self._recovered = False  # the start-up sweep ran (and the claims are not handed back since)
        self._progress_shown: dict[int, tuple[str, float]] = {}
        self._samples: dict[int, tuple[bytes, str] | None] = {}
        self._notice_failures: dict[int, int] = {}
        self._sweep_soon = asyncio.Event()  # a sibling handed jobs back (or notices may have been missed)
        # Clean stop (:meth:`drain_submits`): the tasks preparing or submitting a clone now, and whether new
        # ones are refused; ``_cut_drain`` ends the wait for them early (a second stop signal).
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._cut_drain = asyncio.Event()
        db.subscribe(CLAIMS_TOPIC, self._on_notification)

    # -- checks ----------------------------------------------------------------------------------

    async def check_quota(self, request: CloneRequest) -> None:
        """Raise :class:`bot.limits.LimitExceeded` now if the limit or budget would refuse the clone.

        Asked early so the user is not asked to confirm a clone that cannot run; the real, atomic
        reservation happens right before the submit.
        """
        await self.limits.check_clone(request.user_id, request.guild_id, providers.price_micros(request.provider))

    async def check(self, request: CloneRequest, clip: ClipSource) -> CloneRequest:
        """The checks that need no download (name, policy, limits, size): fast enough to run before a
        Discord defer. Returns the request with its fields normalised."""
        self._ensure_accepting()
        name = validate_voice_name(request.name)
        provider = providers.find(request.provider)
        if provider is None:
            raise UserFacingError(f"Choose {providers.keys_text()} as the provider.")
        transcript = " ".join((request.transcript or "").split()) or None
        if transcript is not None and len(transcript) > TRANSCRIPT_MAX:
            raise UserFacingError(f"The transcript can be at most {TRANSCRIPT_MAX} characters long.")
        request = replace(request, name=name, provider=provider.key, transcript=transcript,
                          model=request.model if provider.takes_clone_model else None)
        await self.voices.ensure_name_free(request.user_id, name)
        await ensure_clone_allowed(self.db, request.guild_id, request.role_ids)
        await self.check_quota(request)
        # AudioError is a UserFacingError: one sentence.
        audio.check_size(clip.size, clip.upload_limit)
        return request

    async def prepare_audio(self, request: CloneRequest, clip: ClipSource) -> PreparedClone:
        """Download and normalise the clip of a request that passed :meth:`check`. A clean stop that began
        meanwhile refuses it (:data:`RESTARTING`): nothing was reserved or sent."""
        self._ensure_accepting()
        with self._tracked():
            data = await clip.read()  # normalize_clone_audio sniffs the header first
            normalized = await audio.normalize_clone_audio(data, request.provider, filename=clip.filename)
        self._ensure_accepting()
        return PreparedClone(request, normalized, providers.price_micros(request.provider))

    # -- a clean stop: submits already sent get their answer ---------------------------------------

    @property
    def stopping(self) -> bool:
        """A clean stop began: new clone submits are refused with :data:`RESTARTING`."""
        return self._stopping

    def _ensure_accepting(self) -> None:
        if self._stopping:
            raise UserFacingError(RESTARTING)

    @contextlib.contextmanager
    def _tracked(self) -> Iterator[None]:
        """The current task prepares or submits a clone: a clean stop waits for it (:meth:`drain_submits`)."""
        task = asyncio.current_task()
        if task is None:
            yield
            return
        self._in_flight.add(task)
        try:
            yield
        finally:
            self._in_flight.discard(task)

    def accept_submits(self) -> None:
        """Accept clone submits again (the cog calls it as it loads; a service is built accepting)."""
        self._stopping = False
        self._cut_drain.clear()

    def cut_drain(self) -> None:
        """Stop waiting for the submits in flight now (a second stop signal): they are cancelled and 'lost'."""
        self._cut_drain.set()

    async def drain_submits(self) -> None:
        """A clean stop, before the poller stops and before Discord's HTTP closes: refuse new clone submits
        (:data:`RESTARTING`), then give the submits already sent up to ``submit_drain_seconds`` to be
        answered, so their run is recorded ('pending'), the quota settled and their card updated (the poller,
        or the sibling or the next start that adopts the job, finishes it). Clips still being downloaded or
        transcoded are refused when that ends. What is still unanswered after the wait (or after
        :meth:`cut_drain`) is cancelled: its job becomes 'lost', never resent, and the user is told once."""
        self._stopping = True
        waiting = {task for task in self._in_flight if not task.done()}
        if not waiting:
            return
        log.info("clean stop: waiting up to %.0f s for %d clone submit(s) in flight", self.submit_drain_seconds,
                 len(waiting))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.submit_drain_seconds
        cut = asyncio.ensure_future(self._cut_drain.wait())
        try:
            while waiting and not cut.done():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                await asyncio.wait(waiting | {cut}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                waiting = {task for task in waiting if not task.done()}
        finally:
            cut.cancel()
        if not waiting:
            log.info("clean stop: every clone submit in flight was answered")
            return
        log.warning("clean stop: %d clone submit(s) still unanswered; cancelling them (they become lost)",
                    len(waiting))
        for task in waiting:
            task.cancel()
        await asyncio.wait(waiting, timeout=self.notice_drain_seconds)

    # -- submit: reserve → record → send → record the run ----------------------------------------

    async def submit(self, prepared: PreparedClone, where: InteractionRef, *,
                     on_recorded: Callable[[CloneJob], Awaitable[object]] | None = None) -> CloneJob:
        """Reserve, record, send the paid request, record the run; returns the 'pending' job.

        ``on_recorded`` runs once the run is safely in the database (to render the status card) and
        before the poller first looks at the job. Raises ``UserFacingError`` (limits, name taken
        meanwhile, job lost) or ``NanoGPTError`` (the job is then failed and the quota released).
        """
        self._ensure_accepting()
        with self._tracked():
            return await self._submit(prepared, where, on_recorded)

    async def _submit(self, prepared: PreparedClone, where: InteractionRef,
                      on_recorded: Callable[[CloneJob], Awaitable[object]] | None) -> CloneJob:
        reservation = await self._reserve(prepared)
        job_id, custom_voice_id = await self._record(prepared, where, reservation)
        if self._stopping:  # the stop began while reserving: nothing was sent, nothing is charged
            await self.limits.release(reservation)
            await self._finish_submit(job_id, JobState.FAILED, RESTARTING, notified=True)
            raise UserFacingError(RESTARTING)
        ticket = await self._send(job_id, prepared, custom_voice_id, reservation)
        try:
            await self._record_run(job_id, ticket)
        except LeaseLost:
            await self._submit_lost(job_id, ticket, reservation)  # raises
        try:
            await self.limits.settle(reservation, ticket.cost_micros, currency=ticket.payment_source or "USD",
                                     ref=ticket.run_id)
        except Exception:
            log.exception("clone job %s: could not settle ledger row #%d", job_id, reservation.id)
        job = await self.db.jobs.get(job_id)
        if job is None:  # /forget-me ran while the request was in flight: keep nothing of theirs
            log.info("clone job %s was deleted by /forget-me during its submit; run %s is not followed",
                     job_id, ticket.run_id)
            raise UserFacingError("Your data was deleted while this clone was being submitted, "
                                  "so the new voice will not be saved.")
        log.info("clone job %s submitted: %s run %s for user %s", job_id, job.provider, job.run_id, job.user_id)
        try:
            if on_recorded is not None:
                await on_recorded(job)
                self._progress_shown[job_id] = (job.state, asyncio.get_running_loop().time())
        except Exception:  # the run is safe and will be polled; only its card may lag behind
            log.warning("clone job %s: could not show the status card", job_id, exc_info=True)
        finally:
            self._scheduler.schedule(job_id, 0.0)
        return job

    async def _submit_lost(self, job_id: int, ticket: CloneTicket, reservation: Reservation) -> NoReturn:
        """The run was accepted, but this process was taken for dead while it sent the request: a sibling
        adopted the job and marked it 'lost' (never resent). The money is settled at the run's real cost, the
        run's id and cost go on the 'lost' row for the operator, and whoever claims the job's notice tells
        the user (exactly one message): this process raises ``UserFacingError`` when it claimed it, else
        :class:`CloneHandedOver` (say nothing; the sibling tells the user)."""
        self._lease_lost(job_id)
        try:
            await self.limits.settle(reservation, ticket.cost_micros, currency=ticket.payment_source or "USD",
                                     ref=ticket.run_id)
        except Exception:
            log.exception("clone job %s: could not settle ledger row #%d", job_id, reservation.id)
        speaks = False
        try:
            now = self.clock.now()
            speaks = await self.db.jobs.record_lost_run(
                job_id, run_id=ticket.run_id, cost_micros=ticket.cost_micros, payment_source=ticket.payment_source,
                is_api_request=bool(ticket.is_api_request), submitted_at=now, now=now,
            )
        except Exception:  # the notice stays the sibling's to claim
            log.exception("clone job %s: could not record run %s on the lost job", job_id, ticket.run_id)
        log.warning("clone job %s: claimed by another process while its submit was in flight; run %s is not "
                    "followed (%s tells the user)", job_id, ticket.run_id, "this process" if speaks else "the other")
        if speaks:
            raise UserFacingError(LOST_AFTER_RESTART)
        raise CloneHandedOver(job_id)

    async def _reserve(self, prepared: PreparedClone) -> Reservation:
        """Reserve the clone's price against the user's limit and the budgets (atomic)."""
        request = prepared.request
        return await self.limits.reserve_clone(request.user_id, request.guild_id, prepared.price_micros)

    async def _record(self, prepared: PreparedClone, where: InteractionRef,
                      reservation: Reservation) -> tuple[int, str | None]:
        """Write the 'submitting' job (and its provider-side voice id) before anything is sent;
        releases the reservation when that fails."""
        request = prepared.request
        try:
            await self.instance.register()  # before a row names it: a claim by an unregistered owner is orphaned
            now = self.clock.now()
            job_id, custom_voice_id = await self.db.jobs.create(
                user_id=request.user_id, guild_id=request.guild_id, channel_id=request.channel_id,
                application_id=where.application_id, interaction_token=where.token,
                token_expires_at=where.expires_at, voice_name=request.name, provider=request.provider,
                transcript=request.transcript, clone_model=request.model, now=now,
                make_custom_voice_id=prepared.provider.voice_id_maker(), owner=self.instance.id,
                lease_until=now + self.lease_seconds,
            )
            self._claims[job_id] = 1
            return job_id, custom_voice_id
        except DuplicateVoiceName:
            await self.limits.release(reservation)
            raise UserFacingError(
                f"You already have a voice or a running clone called “{request.name}”; pick another name."
            ) from None
        except BaseException:
            await self.limits.release(reservation)
            raise

    async def _send(self, job_id: int, prepared: PreparedClone, custom_voice_id: str | None,
                    reservation: Reservation) -> CloneTicket:
        """Send the paid request once. A refusal fails the job and releases the quota; an answer that
        never came (it may have been charged) or an interruption makes the job 'lost', never resent."""
        request, clip = prepared.request, prepared.audio
        order = CloneOrder(audio=clip.mp3, filename=clip.filename, custom_voice_id=custom_voice_id,
                           transcript=request.transcript, model=request.model,
                           noise_reduction=request.noise_reduction, normalize_volume=request.normalize_volume)
        try:
            return await prepared.provider.submit(self.nanogpt, order)
        except NanoGPTError as exc:
            if getattr(exc, "maybe_charged", False):
                # Sent but unanswered: it may have been charged. Keep the reservation, never resubmit.
                log.warning("clone job %s: submit timed out after sending; marking it lost", job_id)
                await self._finish_submit(job_id, JobState.LOST, LOST_AFTER_TIMEOUT, notified=True)
                raise UserFacingError(LOST_AFTER_TIMEOUT) from exc
            log.info("clone job %s: NanoGPT refused the submit: %s", job_id, exc)
            if isinstance(exc, InsufficientBalance):
                self.tts.report_low_balance()  # tell the operator how low the balance is
            await self.limits.release(reservation)
            await self._finish_submit(job_id, JobState.FAILED, exc.user_message, notified=True)
            raise
        except BaseException as exc:
            # A bug or a shutdown mid-request: we cannot know whether it reached NanoGPT. Never
            # resubmit; the poller (or the next start) tells the user honestly.
            if self._stopping and isinstance(exc, asyncio.CancelledError):
                log.warning("clone job %s: submit still unanswered when the stop stopped waiting; marking it lost",
                            job_id)
            else:
                log.exception("clone job %s: submit interrupted; marking it lost", job_id)
            await asyncio.shield(self._finish_submit(job_id, JobState.LOST, LOST_AFTER_RESTART))
            with contextlib.suppress(RuntimeError):
                self._scheduler.schedule(job_id, 0.0)
            raise

    async def _finish_submit(self, job_id: int, state: JobState, error: str, *, notified: bool = False) -> None:
        """End a job whose submit failed; a sibling that adopted it meanwhile has told the user already."""
        try:
            await self.db.jobs.finish(job_id, state, error=error, now=self.clock.now(), notified=notified,
                                      claim=self._claim(job_id))
        except LeaseLost:
            self._lease_lost(job_id)

    async def _record_run(self, job_id: int, ticket: CloneTicket) -> None:
        """The run is accepted: record its id and cost; the job is 'pending' and due for its first poll."""
        now = self.clock.now()
        await self.db.jobs.update(
            job_id, run_id=ticket.run_id, cost_micros=ticket.cost_micros, payment_source=ticket.payment_source,
            is_api_request=int(bool(ticket.is_api_request)), state=check_move(JobState.SUBMITTING, JobState.PENDING),
            submitted_at=now, next_poll_at=now, claim=self._claim(job_id),
        )

    # -- the poller ------------------------------------------------------------------------------

    def _claim(self, job_id: int) -> Claim | None:
        """The claim this process follows ``job_id`` under (None: it does not follow it)."""
        epoch = self._claims.get(job_id)
        return Claim(self.instance.id, epoch) if epoch is not None else None

    def _lease_lost(self, job_id: int) -> None:
        """Another process claimed the job (this one was taken for dead): forget it here, never notify."""
        if self._claims.pop(job_id, None) is not None:
            log.warning("clone job %s: another bot process follows it now; this one leaves it alone", job_id)
        self._forget_job(job_id)

    def _forget_job(self, job_id: int) -> None:
        """Drop what this process keeps in memory about a job it no longer follows or has announced."""
        self._samples.pop(job_id, None)
        self._notice_failures.pop(job_id, None)
        self._progress_shown.pop(job_id, None)

    async def recover(self) -> None:
        """At start-up (the cog calls it before Discord is ready; :meth:`run_poller` when nobody did): the
        database is the truth. Register this process, then adopt the jobs nobody alive follows (see
        :meth:`sweep`). A sibling's jobs are left alone."""
        await self.instance.register()
        await self.sweep()
        self._recovered = True

    async def sweep(self) -> list[CloneJob]:
        """Adopt the orphans: jobs of dead instances (deleted from ``bot_instances`` first), jobs whose lease
        ran out and jobs nobody claimed. An adopted 'submitting' job (its owner died between recording the
        job and recording the run) becomes 'lost' and is announced; it is never resent. Adopted open jobs
        are due at their next poll, finished ones for their notice. Returns the adopted jobs."""
        await self.instance.reap(self.lease_seconds)
        now = self.clock.now()
        adopted, lost = await self.db.jobs.adopt(self.instance.id, now=now, lease_until=now + self.lease_seconds,
                                                 lost_error=LOST_AFTER_RESTART)
        for job_id in lost:
            log.warning("clone job %s was being submitted when its bot process stopped; marked lost", job_id)
        for job in adopted:
            self._claims[job.id] = job.lease_epoch
            if job.is_open:
                self._scheduler.schedule(job.id, (job.next_poll_at or now) - now)
            else:
                self._scheduler.schedule(job.id, 0.0)
        if adopted:
            still_open = sum(job.is_open for job in adopted)
            log.info("clone poller adopted %d open job(s) and %d undelivered notice(s)", still_open,
                     len(adopted) - still_open)
        return adopted

    def _on_notification(self, owner: str | None) -> None:
        """A sibling handed its jobs back or left (:data:`~bot.storage.jobs.CLAIMS_TOPIC`), or notifications
        may have been missed (None): sweep now rather than at the next ``sweep_interval``."""
        if owner != self.instance.id:
            self._sweep_soon.set()

    async def _keep_claims(self) -> None:
        """While the poller runs on a shared (PostgreSQL) database: the heartbeat (the instance row and the
        lease of every job this process follows, one UPDATE) every ``heartbeat_interval``, and the orphan
        sweep every ``sweep_interval`` and at once when a sibling hands its jobs back (a notification), so a
        sibling's jobs are adopted within seconds of its death and at once after its clean stop. On SQLite
        no other process exists to die: the start-up sweep is all there is.

        A failing heartbeat or sweep (the database away for a moment) is retried at the next turn; each
        logs one warning when it starts failing and one line when it works again."""
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + self.heartbeat_interval
        beat_failing = sweep_failing = False
        while True:
            wait = max(0.0, min(self.sweep_interval, next_beat - loop.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sweep_soon.wait(), wait)
            self._sweep_soon.clear()
            if loop.time() >= next_beat:
                try:
                    await self.instance.beat()
                    await self.db.jobs.renew(self.instance.id, self.clock.now() + self.lease_seconds)
                except Exception as exc:
                    # due again soon: a lease must not run out because one beat met a database restart
                    next_beat = loop.time() + min(self.sweep_interval, self.heartbeat_interval)
                    if not beat_failing:
                        log.warning("clone job claims: heartbeat failed (%s: %s); retrying until it works",
                                    type(exc).__name__, exc, exc_info=True)
                    beat_failing = True
                else:
                    next_beat = loop.time() + self.heartbeat_interval
                    if beat_failing:
                        log.info("clone job claims: heartbeat works again")
                    beat_failing = False
            try:
                await self.sweep()
            except Exception as exc:
                if not sweep_failing:
                    log.warning("clone job claims: orphan sweep failed (%s: %s); retrying until it works",
                                type(exc).__name__, exc, exc_info=True)
                sweep_failing = True
            else:
                if sweep_failing:
                    log.info("clone job claims: orphan sweep works again")
                sweep_failing = False

    async def release_claims(self) -> None:
        """A clean stop (after the poller drained): hand every job back and delete this instance's row, so a
        sibling (told by a notification; else at its next sweep) or the next start adopts them at once."""
        self._recovered = False
        if not self.instance.registered:
            return
        try:
            released = await self.db.jobs.release(self.instance.id)
            await self.instance.unregister()
        except Exception:
            log.warning("clone job claims: could not hand the jobs back at shutdown; they are adopted when "
                        "their lease runs out", exc_info=True)
            return
        finally:
            self._claims.clear()
        if released:
            log.info("clone poller handed %d job(s) back at shutdown", released)

    async def run_poller(self, events: JobEvents) -> None:
        """Poll due jobs until cancelled. One job's error never stops the loop. At shutdown, notices
        already being sent get ``notice_drain_seconds`` to finish (see :meth:`_notify`), then this
        process's claims are handed back."""
        self.events = events
        scheduler = self._scheduler
        scheduler.concurrency = self.concurrency
        scheduler.idle_recheck = self.idle_recheck
        scheduler.drain_seconds = self.notice_drain_seconds
        try:
            if not self._recovered:  # the cog recovers before Discord is ready
                await self.recover()
            if self.db.backend.shared:
                scheduler.spawn(self._keep_claims(), name="clone-job-claims")
            await scheduler.run()
        finally:
            await self.release_claims()

    async def _turn(self, job_id: int) -> None:
        try:
            claim = self._claim(job_id)
            if claim is None:
                return  # not this process's job (any more)
            job = await self.db.jobs.get(job_id)
            if job is None:
                self._claims.pop(job_id, None)
                return  # deleted (/forget-me)
            if job.claim != claim:
                self._lease_lost(job_id)
                return
            if job.state == JobState.SUBMITTING:
                return  # its submit is still running in this process
            if job.is_open:
                await self._poll(job)
            elif job.notified_at is None:
                await self._notify(job)
        except asyncio.CancelledError:
            raise
        except LeaseLost:
            self._lease_lost(job_id)
        except Exception:
            log.exception("clone job %s: unexpected error in the poller; retrying in %.0f s", job_id, self.backoff_cap)
            self._scheduler.schedule(job_id, self.backoff_cap)

    def _backoff(self, failures: int) -> float:
        return backoff(failures, base=self.backoff_base, cap=self.backoff_cap)

    async def _poll(self, job: CloneJob) -> None:
        now = self.clock.now()
        started = job.submitted_at or job.created_at
        if now - started > self.job_deadline:
            await self._finish(job, JobState.FAILED, TIMED_OUT)
            return
        if job.run_id is None:
            raise RuntimeError(f"clone job {job.id} is {job.state} but has no run id to poll")
        provider = providers.get(job.provider)
        try:
            status = await provider.status(self.nanogpt, job)
        except (InvalidRequest, ContentPolicyError) as exc:  # a definitive 4xx about this run
            log.warning("clone job %s: NanoGPT refused the status request: %s", job.id, exc)
            await self._finish(job, JobState.FAILED, exc.user_message)
            return
        except (NanoGPTError, aiohttp.ClientError, TimeoutError) as exc:
            # Timeouts, 5xx, 429 (Retry-After), and 401/402 (an operator problem, not this run's): back
            # off and retry until the job's deadline.
            await self._retry_later(job, now, exc)
            return
        result = provider.interpret(status)
        if result is PollResult.COMPLETED:
            await self._complete(job, provider, status, now)
        elif result is PollResult.FAILED:
            await self._finish(job, JobState.FAILED, shorten(status.error or "", 300) or FAILED_WITHOUT_REASON)
        else:
            new_state = check_move(job.state, JobState.PROCESSING if result is PollResult.PROCESSING
                                   else JobState.PENDING)
            delay = self.default_poll_after if status.poll_after is None else float(status.poll_after)
            delay = max(self.min_poll_after, delay)
            changes: dict[str, Any] = dict(state=new_state, poll_count=job.poll_count + 1, last_polled_at=now,
                                           failures=0, next_poll_at=now + delay)
            await self.db.jobs.update(job.id, **changes, claim=self._claim(job.id))
            self._scheduler.schedule(job.id, delay)
            await self._show_progress(replace(job, **changes), changed=new_state != job.state)

    async def _retry_later(self, job: CloneJob, now: float, exc: BaseException) -> None:
        failures = job.failures + 1
        delay = self._backoff(failures)
        retry_after = getattr(exc, "retry_after", None)
        if retry_after:
            delay = max(delay, float(retry_after))
        log.info("clone job %s: status check failed (%s: %s); retry %d in %.2f s", job.id, type(exc).__name__,
                 exc, failures, delay)
        await self.db.jobs.update(job.id, failures=failures, poll_count=job.poll_count + 1, last_polled_at=now,
                                  next_poll_at=now + delay, claim=self._claim(job.id))
        self._scheduler.schedule(job.id, delay)

    async def _complete(self, job: CloneJob, provider: CloneProvider, status: CloneStatus, now: float) -> None:
        try:
            saved = await provider.collect(self.nanogpt, job, status, now)
        except RetryLater as later:
            await self._retry_later(job, now, later.cause)
            return
        except RunFailed as failed:
            await self._finish(job, JobState.FAILED, failed.message)
            return
        check_move(job.state, JobState.COMPLETED)
        result = await self.db.jobs.complete(
            job.id, now=now, provider_voice_id=saved.provider_voice_id, embedding_url=saved.embedding_url,
            embedding_expires_at=saved.embedding_expires_at, embedding=saved.embedding, max_name_length=NAME_MAX,
            claim=self._claim(job.id),
        )
        if result is None:
            return
        voice_id, saved_name = result
        log.info("clone job %s completed: voice #%s “%s” for user %s", job.id, voice_id, saved_name, job.user_id)
        self._hand_off_notice(job.id)

    async def _finish(self, job: CloneJob, state: JobState, error: str) -> None:
        check_move(job.state, state)
        if await self.db.jobs.finish(job.id, state, error=error, now=self.clock.now(), claim=self._claim(job.id)):
            log.info("clone job %s %s: %s", job.id, state, error)
        self._hand_off_notice(job.id)

    def _hand_off_notice(self, job_id: int) -> None:
        """Deliver a finished job's notice (sample synthesis included) outside the polling slots, so a
        burst of completions never delays the polls that would find the next ones."""
        self._scheduler.spawn(self._notify_later(job_id), name=f"clone-notice-{job_id}")

    async def _notify_later(self, job_id: int) -> None:
        async with self._notice_slots:
            try:
                claim = self._claim(job_id)
                job = await self.db.jobs.get(job_id) if claim is not None else None
                if job is not None and job.claim != claim:
                    self._lease_lost(job_id)
                elif job is not None and job.notified_at is None:
                    await self._notify(job)
            except asyncio.CancelledError:
                raise
            except LeaseLost:
                self._lease_lost(job_id)
            except Exception:  # the job is finished and saved; only its notice waits for another turn
                log.exception("clone job %s: unexpected error while notifying; retrying in %.0f s", job_id,
                              self.backoff_cap)
                self._scheduler.schedule(job_id, self.backoff_cap)

    async def _show_progress(self, job: CloneJob, *, changed: bool) -> None:
        """Refresh the job's status card (``job`` as just written), at most every ``progress_interval``."""
        if self.events is None or not self.token_alive(job):
            return
        loop_now = asyncio.get_running_loop().time()
        shown = self._progress_shown.get(job.id)
        if not changed and shown is not None and loop_now - shown[1] < self.progress_interval:
            return
        self._progress_shown[job.id] = (job.state, loop_now)
        try:
            await self.events.show_progress(job)
        except Exception:
            log.warning("clone job %s: could not refresh the status card", job.id, exc_info=True)

    def token_alive(self, job: CloneJob, margin: float = 10.0) -> bool:
        """Whether the job's interaction token can still edit its status card."""
        return bool(job.interaction_token and job.application_id and job.token_expires_at
                    and self.clock.now() < job.token_expires_at - margin)

    # -- notices ---------------------------------------------------------------------------------

    async def _notify(self, job: CloneJob) -> None:
        if self.events is None:
            return
        notice = await self.build_notice(job)
        claim = self._claim(job.id)
        if not await self.db.jobs.mark_notified(job.id, self.clock.now(), claim=claim):
            return  # someone else told the user already
        try:
            # A notice cancelled mid-request may or may not have reached Discord, and its claim is kept
            # (a duplicate is worse than a lost notice), so shutdown lets it finish first.
            with self._scheduler.finishing():
                await self.events.deliver_notice(job, notice)
        except asyncio.CancelledError:
            # The request may already have reached Discord: keep the claim (lost, never twice). Shutdown
            # drains deliveries first, so this is only a delivery that hung.
            log.warning("clone job %s: notice interrupted while being sent; it may not have arrived", job.id)
            raise
        except Exception:
            await self.db.jobs.unmark_notified(job.id, claim=claim)
            failures = self._notice_failures.get(job.id, 0) + 1
            self._notice_failures[job.id] = failures
            if failures >= self.notice_attempts:
                log.exception("clone job %s: giving up on its notice after %d attempts", job.id, failures)
                await self.db.jobs.mark_notified(job.id, self.clock.now(), claim=claim)
            else:
                log.warning("clone job %s: notice not delivered (attempt %d); retrying", job.id, failures,
                            exc_info=True)
                self._scheduler.schedule(job.id, self._backoff(failures))
            return
        self._forget_job(job.id)

    async def forget_user(self, user_id: int) -> int:
        """For /forget-me (:mod:`bot.privacy`, before the rows go): drop the notice samples (speech in the
        user's new voices) kept for their jobs; returns how many were dropped."""
        dropped = 0
        for job_id in await self.db.jobs.user_job_ids(user_id):
            if job_id in self._samples:
                del self._samples[job_id]
                dropped += 1
        return dropped

    async def build_notice(self, job: CloneJob) -> CloneNotice:
        if job.state == JobState.LOST:
            return CloneNotice(NoticeOutcome.LOST, job.error or LOST_AFTER_RESTART)
        if job.state != JobState.COMPLETED:
            reason = job.error or FAILED_WITHOUT_REASON
            return CloneNotice(NoticeOutcome.FAILED, f"Cloning “{job.voice_name}” failed: {reason}")
        voice = await self.db.voices.get(job.user_id, job.voice_id) if job.voice_id is not None else None
        name = voice.name if voice is not None else job.voice_name
        message = f"Your voice “{name}” is ready: use it with /say voice:{name}."
        if name_key(name) != name_key(job.voice_name):
            message += f" You already had a voice called “{job.voice_name}”, so this one is saved as “{name}”."
        sample = None
        if voice is not None:
            if job.id not in self._samples:
                self._samples[job.id] = await self._make_sample(job, voice)
            sample = self._samples[job.id]
        if sample is None:
            return CloneNotice(NoticeOutcome.COMPLETED, message, voice_name=name)
        return CloneNotice(NoticeOutcome.COMPLETED, message, voice_name=name, sample=sample[0],
                           sample_content_type=sample[1])

    async def _make_sample(self, job: CloneJob, voice: Voice) -> tuple[bytes, str] | None:
        """A short line in the new voice through the TTS service (budget, ledger and cache like any
        speech; for MiniMax also the real use that keeps the voice alive). A failure only means a
        notice without a sample."""
        try:
            spoken = await self.tts.synthesize(job.user_id, job.guild_id, SAMPLE_TEXT,
                                               self.tts.voice_from_saved(voice))
        except Exception as exc:
            log.warning("clone job %s: no sample: %s", job.id, exc)
            return None
        return spoken.audio, spoken.content_type


__all__ = [
    "STATE_LABELS",
    "ClipSource",
    "CloneHandedOver",
    "CloneNotice",
    "CloneRequest",
    "CloneService",
    "InteractionRef",
    "JobEvents",
    "PreparedClone",
    "make_custom_voice_id",
]
