"""Clone jobs: one row per clone run, written before the paid request and followed until it finishes.

Claims (migration 0006): a job is followed by one bot process at a time, ``claimed_by`` (its
``bot_instances`` id) with a ``lease_until`` its heartbeat renews (:meth:`CloneJobRepository.renew`) and a
``lease_epoch`` raised at each adoption (:meth:`CloneJobRepository.adopt`, the orphan sweep). The writes
about a job take the :class:`~bot.storage.records.Claim` it was followed under (``claim=``): they change
the row only while that claim holds, and raise :class:`~bot.storage.records.LeaseLost` when another
process has claimed it since. ``claim=None`` writes unfenced (tests, tools that own the whole database).

Hand-over: :meth:`CloneJobRepository.release` (a clean stop) announces :data:`CLAIMS_TOPIC` when it commits
(``tx.notify``; PostgreSQL's LISTEN/NOTIFY), and so does :meth:`InstanceRepository.leave
<bot.storage.instances.InstanceRepository.leave>`, so the siblings sweep at once instead of at their next
``sweep_interval``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from bot.storage.base import Repository, Transaction, placeholders, row_to
from bot.storage.records import OPEN_JOB_STATES, Claim, CloneJob, DuplicateVoiceName, LeaseLost, name_key

_OPEN = f"state IN ({placeholders(OPEN_JOB_STATES)})"

#: The notification topic (``"clone_claims:<instance id>"``) of a process that hands its jobs back or leaves:
#: every sibling that hears it sweeps for orphans at once.
CLAIMS_TOPIC = "clone_claims"

#: A job the sweep may adopt (parameters: the sweeper's id twice, now): its notice is not claimed yet (open
#: jobs, finished ones still to announce: the partial index ``clone_jobs_claims``) and nobody follows it, or
#: its owner is not this process and its lease ran out or its owner is gone from ``bot_instances`` (the sweep
#: deletes the rows of dead instances first).
_ORPHAN = (
    "notified_at IS NULL AND (claimed_by IS NULL OR (claimed_by <> ? AND (lease_until IS NULL OR lease_until < ? "
    "OR NOT EXISTS (SELECT 1 FROM bot_instances i WHERE i.id = clone_jobs.claimed_by))))"
)


def _fence(claim: Claim | None) -> tuple[str, tuple[Any, ...]]:
    """The condition (and its parameters) that keeps a write to the claim it was made under."""
    if claim is None:
        return "", ()
    return " AND claimed_by = ? AND lease_epoch = ?", (claim.owner, claim.epoch)


class CloneJobRepository(Repository):
    data_name = "clone_jobs"

    async def get(self, job_id: int) -> CloneJob | None:
        return row_to(CloneJob, await self._db.fetchone("SELECT * FROM clone_jobs WHERE id = ?", (job_id,)))

    async def open(self) -> list[CloneJob]:
        rows = await self._db.fetchall(f"SELECT * FROM clone_jobs WHERE {_OPEN} ORDER BY next_poll_at",
                                       OPEN_JOB_STATES)
        return [row_to(CloneJob, r) for r in rows]

    async def unnotified_finished(self) -> list[CloneJob]:
        rows = await self._db.fetchall(
            "SELECT * FROM clone_jobs WHERE state IN ('completed', 'failed', 'lost') AND notified_at IS NULL"
        )
        return [row_to(CloneJob, r) for r in rows]

    async def for_user(self, user_id: int, limit: int = 10) -> list[CloneJob]:
        """The user's newest jobs first."""
        rows = await self._db.fetchall(
            "SELECT * FROM clone_jobs WHERE user_id = ? ORDER BY created_at DESC, id DESC LIMIT ?", (user_id, limit),
        )
        return [row_to(CloneJob, r) for r in rows]

    async def for_voice(self, user_id: int, voice_id: int) -> CloneJob | None:
        """The clone job that made ``voice_id``, only if both belong to ``user_id``."""
        row = await self._db.fetchone(
            "SELECT * FROM clone_jobs WHERE voice_id = ? AND user_id = ? ORDER BY id DESC LIMIT 1", (voice_id, user_id),
        )
        return row_to(CloneJob, row)

    async def user_job_ids(self, user_id: int) -> list[int]:
        return [r[0] for r in await self._db.fetchall("SELECT id FROM clone_jobs WHERE user_id = ?", (user_id,))]

    async def open_names(self, user_id: int) -> list[str]:
        """Voice names of the user's clone jobs that are still running."""
        rows = await self._db.fetchall(f"SELECT voice_name FROM clone_jobs WHERE user_id = ? AND {_OPEN}",
                                       (user_id, *OPEN_JOB_STATES))
        return [r[0] for r in rows]

    async def _check_claim(self, job_id: int, claim: Claim | None) -> None:
        """After a fenced write matched nothing: raise :class:`LeaseLost` if the job is claimed otherwise now
        (a claim never comes back, so a difference now means the write was fenced off)."""
        if claim is None:
            return
        row = await self._db.fetchone("SELECT claimed_by, lease_epoch FROM clone_jobs WHERE id = ?", (job_id,))
        if row is not None and (row[0], row[1]) != (claim.owner, claim.epoch):
            raise LeaseLost(job_id)

    async def update(self, job_id: int, *, claim: Claim | None = None, **changes: Any) -> None:
        """Set columns of a job (fenced by ``claim``: :class:`LeaseLost` when another process claims it)."""
        columns = set(CloneJob.__slots__) - {"id", "claimed_by", "lease_until", "lease_epoch"}
        unknown = set(changes) - columns
        if unknown:
            raise ValueError(f"unknown clone job columns {sorted(unknown)}")
        assignments = ", ".join(f"{c} = ?" for c in sorted(changes))  # names from the fixed set above
        fence, fenced = _fence(claim)
        if await self._db.execute(f"UPDATE clone_jobs SET {assignments} WHERE id = ?{fence}",
                                  (*(changes[c] for c in sorted(changes)), job_id, *fenced)) == 0:
            await self._check_claim(job_id, claim)

    async def mark_notified(self, job_id: int, now: float, *, claim: Claim | None = None) -> bool:
        """Claim the single notification of a finished job; False if it was already sent (:class:`LeaseLost`
        when another process follows the job now)."""
        fence, fenced = _fence(claim)
        if await self._db.execute(
            f"UPDATE clone_jobs SET notified_at = ? WHERE id = ? AND notified_at IS NULL{fence}",
            (now, job_id, *fenced),
        ) == 1:
            return True
        await self._check_claim(job_id, claim)
        return False

    async def unmark_notified(self, job_id: int, *, claim: Claim | None = None) -> None:
        """Give back a notification claim whose message could not be sent."""
        fence, fenced = _fence(claim)
        if await self._db.execute(f"UPDATE clone_jobs SET notified_at = NULL WHERE id = ?{fence}",
                                  (job_id, *fenced)) == 0:
            await self._check_claim(job_id, claim)

    # -- claims ----------------------------------------------------------------------------------

    async def adopt(self, owner: str, *, now: float, lease_until: float, lost_error: str) -> tuple[list[CloneJob],
                                                                                                   list[int]]:
        """The orphan sweep: claim every job nobody alive follows (see ``_ORPHAN``) for ``owner``, in one
        transaction; rows another sweeper is claiming right now are skipped (``FOR UPDATE SKIP LOCKED`` on
        PostgreSQL), so each orphan is adopted once. An orphan still 'submitting' (its owner died between
        writing the row and recording the run) becomes 'lost' with ``lost_error``: it is never resent.

        Returns the adopted jobs (as now stored, epoch raised) and the ids of the ones made 'lost'.
        """
        skip = self._db.dialect.skip_locked
        async with self._db.transaction() as tx:
            lost = [r[0] for r in await tx.fetchall(
                "UPDATE clone_jobs SET state = 'lost', error = ?, finished_at = ?, next_poll_at = NULL "
                f"WHERE id IN (SELECT id FROM clone_jobs WHERE state = 'submitting' AND {_ORPHAN}{skip}) "
                "RETURNING id",
                (lost_error, now, owner, now),
            )]
            adopted = [row_to(CloneJob, r) for r in await tx.fetchall(
                "UPDATE clone_jobs SET claimed_by = ?, lease_until = ?, lease_epoch = lease_epoch + 1 "
                f"WHERE id IN (SELECT id FROM clone_jobs WHERE {_ORPHAN}{skip}) RETURNING *",
                (owner, lease_until, owner, now),
            )]
        return sorted(adopted, key=lambda j: j.id), sorted(lost)

    async def renew(self, owner: str, lease_until: float) -> int:
        """The heartbeat: every job ``owner`` follows (notice not yet claimed) is leased until ``lease_until``
        (one UPDATE); returns how many."""
        return await self._db.execute(
            "UPDATE clone_jobs SET lease_until = ? WHERE claimed_by = ? AND notified_at IS NULL", (lease_until, owner),
        )

    async def release(self, owner: str) -> int:
        """A clean shutdown: ``owner`` gives up its jobs and says so (:data:`CLAIMS_TOPIC`), so a sibling's sweep
        (or the next start's) adopts them at once; returns how many."""
        async with self._db.transaction() as tx:
            released = await tx.execute(
                "UPDATE clone_jobs SET claimed_by = NULL, lease_until = NULL "
                "WHERE claimed_by = ? AND notified_at IS NULL",
                (owner,),
            )
            if released:
                await tx.notify(CLAIMS_TOPIC, owner)
        return released

    async def record_lost_run(self, job_id: int, *, run_id: str, cost_micros: int | None,
                              payment_source: str | None, is_api_request: bool, submitted_at: float,
                              now: float) -> bool:
        """A process whose submit was answered after a sibling had taken it for dead and marked the job 'lost'
        (its record-the-run write raised :class:`LeaseLost`): keep the run's id and cost on the 'lost' row for
        the operator (it was accepted, maybe charged) without reviving it, and try to claim the job's single
        notice (``notified_at``), unfenced since the claim moved: whoever claims it tells the user.

        Returns True when this caller claimed the notice (it must tell the user now), False when the sibling
        claimed it already, or the job is not 'lost' (the sibling's sweep has not marked it yet; it will, and
        tell the user) or is gone. The row's state, claim and lease are never changed."""
        async with self._db.transaction() as tx:
            claimed = await tx.execute(
                "UPDATE clone_jobs SET notified_at = ? WHERE id = ? AND state = 'lost' AND notified_at IS NULL",
                (now, job_id),
            ) == 1
            await tx.execute(
                "UPDATE clone_jobs SET run_id = ?, cost_micros = ?, payment_source = ?, is_api_request = ?, "
                "submitted_at = ? WHERE id = ? AND state = 'lost' AND run_id IS NULL",
                (run_id, cost_micros, payment_source, int(is_api_request), submitted_at, job_id),
            )
        return claimed

    async def create(self, *, user_id: int, guild_id: int | None, channel_id: int | None,
                     application_id: int | None, interaction_token: str | None, token_expires_at: float | None,
                     voice_name: str, provider: str, transcript: str | None, clone_model: str | None, now: float,
                     make_custom_voice_id: Callable[[], str] | None = None, owner: str | None = None,
                     lease_until: float | None = None) -> tuple[int, str | None]:
        """Insert a job in state 'submitting' (before the paid request); returns (job id, customVoiceId).

        In one transaction: the name must be free among the user's voices and open jobs (else
        :class:`DuplicateVoiceName`), and ``make_custom_voice_id`` is called until its id is unused. With
        ``owner`` the job is claimed by that bot process at epoch 1, leased until ``lease_until``; without,
        nobody follows it until a sweep adopts it.
        """
        key = name_key(voice_name)
        async with self._db.transaction() as tx:
            await tx.lock(f"user:{user_id}:voice-names")
            if await tx.fetchone("SELECT 1 FROM voices WHERE user_id = ? AND name_key = ?", (user_id, key)):
                raise DuplicateVoiceName(voice_name)
            rows = await tx.fetchall(f"SELECT voice_name FROM clone_jobs WHERE user_id = ? AND {_OPEN}",
                                     (user_id, *OPEN_JOB_STATES))
            if any(name_key(r[0]) == key for r in rows):
                raise DuplicateVoiceName(voice_name)
            custom_voice_id = None
            while make_custom_voice_id is not None:
                custom_voice_id = make_custom_voice_id()
                taken = await tx.fetchone(
                    "SELECT 1 FROM clone_jobs WHERE custom_voice_id = ? UNION ALL "
                    "SELECT 1 FROM voices WHERE provider_voice_id = ?", (custom_voice_id, custom_voice_id),
                )
                if not taken:
                    break
            job_id = await tx.insert(
                "INSERT INTO clone_jobs (provider, user_id, guild_id, channel_id, application_id, interaction_token, "
                "token_expires_at, voice_name, custom_voice_id, transcript, clone_model, state, created_at, "
                "claimed_by, lease_until, lease_epoch) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'submitting', ?, ?, ?, ?)",
                (provider, user_id, guild_id, channel_id, application_id, interaction_token, token_expires_at,
                 voice_name.strip(), custom_voice_id, transcript, clone_model, now, owner,
                 lease_until if owner is not None else None, 1 if owner is not None else 0),
            )
            return job_id, custom_voice_id

    async def finish(self, job_id: int, state: str, *, error: str | None, now: float, notified: bool = False,
                     claim: Claim | None = None) -> bool:
        """Move an open job to 'failed' or 'lost'; False when it was no longer open (:class:`LeaseLost` when
        another process follows it now)."""
        fence, fenced = _fence(claim)
        if await self._db.execute(
            "UPDATE clone_jobs SET state = ?, error = ?, finished_at = ?, next_poll_at = NULL, "
            f"notified_at = CASE WHEN ? = 1 THEN ? ELSE notified_at END WHERE id = ? AND {_OPEN}{fence}",
            (state, error, now, int(notified), now, job_id, *OPEN_JOB_STATES, *fenced),
        ) == 1:
            return True
        await self._check_claim(job_id, claim)
        return False

    async def complete(self, job_id: int, *, now: float, provider_voice_id: str | None = None,
                       embedding_url: str | None = None, embedding_expires_at: float | None = None,
                       embedding: tuple[str, str, str, bytes] | None = None,
                       max_name_length: int = 32, claim: Claim | None = None) -> tuple[int, str] | None:
        """In one transaction: store the embedding file (``(token, filename, content_type, data)``), save
        the voice (as "<name> (2)" … when the name was taken meanwhile) and mark the job completed.

        Returns ``(voice id, saved name)``, or None when the job was not open any more; raises
        :class:`LeaseLost` (saving nothing) when another process follows it now.
        """
        async with self._db.transaction() as tx:
            await tx.lock(f"job:{job_id}")  # two processes completing the same run: one saves the voice
            # The row lock (PostgreSQL) holds off a sweep adopting the job until this commits.
            job = row_to(CloneJob, await tx.fetchone(
                f"SELECT * FROM clone_jobs WHERE id = ?{self._db.dialect.lock_rows}", (job_id,)))
            if job is None:
                return None
            if claim is not None and job.claim != claim:
                raise LeaseLost(job_id)
            if not job.is_open:
                return None
            await tx.lock(f"user:{job.user_id}:voice-names")
            file_id = None
            if embedding is not None:
                token, filename, content_type, data = embedding
                file_id = await tx.insert(
                    "INSERT INTO stored_files (user_id, kind, token, filename, content_type, data, size, sha256, "
                    "created_at) VALUES (?, 'qwen_embedding', ?, ?, ?, ?, ?, ?, ?)",
                    (job.user_id, token, filename, content_type, data, len(data),
                     hashlib.sha256(data).hexdigest(), now),
                )
            name, number = job.voice_name, 1
            while await tx.fetchone("SELECT 1 FROM voices WHERE user_id = ? AND name_key = ?",
                                    (job.user_id, name_key(name))):
                number += 1
                suffix = f" ({number})"
                name = job.voice_name[: max_name_length - len(suffix)].rstrip() + suffix
            voice_id = await tx.insert(
                "INSERT INTO voices (user_id, guild_id, name, name_key, provider, provider_voice_id, embedding_url, "
                "embedding_expires_at, embedding_file_id, transcript, clone_model, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job.user_id, job.guild_id, name, name_key(name), job.provider, provider_voice_id, embedding_url,
                 embedding_expires_at, file_id, job.transcript, job.clone_model, now),
            )
            await tx.execute(
                "UPDATE clone_jobs SET state = 'completed', voice_id = ?, finished_at = ?, next_poll_at = NULL, "
                "error = NULL WHERE id = ?",
                (voice_id, now, job_id),
            )
            return voice_id, name

    async def count_user_data(self, user_id: int) -> int:
        return int(await self._db.fetchval("SELECT COUNT(*) FROM clone_jobs WHERE user_id = ?", (user_id,)))

    async def delete_user_data(self, user_id: int, tx: Transaction | None = None) -> int:
        return await self._on(tx).execute("DELETE FROM clone_jobs WHERE user_id = ?", (user_id,))
