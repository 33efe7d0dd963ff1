"""Clone jobs: one row per clone run, written before the paid request and followed until it finishes."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any

from bot.job_states import JobState
from bot.storage.base import Repository, Transaction, placeholders, row_to
from bot.storage.records import OPEN_JOB_STATES, CloneJob, DuplicateVoiceName, name_key

_OPEN = f"state IN ({placeholders(OPEN_JOB_STATES)})"


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

    async def update(self, job_id: int, **changes: Any) -> None:
        columns = set(CloneJob.__slots__) - {"id"}
        unknown = set(changes) - columns
        if unknown:
            raise ValueError(f"unknown clone job columns {sorted(unknown)}")
        assignments = ", ".join(f"{c} = ?" for c in sorted(changes))  # names from the fixed set above
        await self._db.execute(f"UPDATE clone_jobs SET {assignments} WHERE id = ?",
                               (*(changes[c] for c in sorted(changes)), job_id))

    async def mark_notified(self, job_id: int, now: float) -> bool:
        """Claim the single notification of a finished job; False if it was already sent."""
        return await self._db.execute(
            "UPDATE clone_jobs SET notified_at = ? WHERE id = ? AND notified_at IS NULL", (now, job_id)
        ) == 1

    async def unmark_notified(self, job_id: int) -> None:
        """Give back a notification claim whose message could not be sent."""
        await self._db.execute("UPDATE clone_jobs SET notified_at = NULL WHERE id = ?", (job_id,))

    async def create(self, *, user_id: int, guild_id: int | None, channel_id: int | None,
                     application_id: int | None, interaction_token: str | None, token_expires_at: float | None,
                     voice_name: str, provider: str, transcript: str | None, clone_model: str | None, now: float,
                     make_custom_voice_id: Callable[[], str] | None = None) -> tuple[int, str | None]:
        """Insert a job in state 'submitting' (before the paid request); returns (job id, customVoiceId).

        In one transaction: the name must be free among the user's voices and open jobs (else
        :class:`DuplicateVoiceName`), and ``make_custom_voice_id`` is called until its id is unused.
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
                "token_expires_at, voice_name, custom_voice_id, transcript, clone_model, state, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'submitting', ?)",
                (provider, user_id, guild_id, channel_id, application_id, interaction_token, token_expires_at,
                 voice_name.strip(), custom_voice_id, transcript, clone_model, now),
            )
            return job_id, custom_voice_id

    async def finish(self, job_id: int, state: str, *, error: str | None, now: float, notified: bool = False) -> bool:
        """Move an open job to 'failed' or 'lost'; False when it was no longer open."""
        return await self._db.execute(
            "UPDATE clone_jobs SET state = ?, error = ?, finished_at = ?, next_poll_at = NULL, "
            f"notified_at = CASE WHEN ? = 1 THEN ? ELSE notified_at END WHERE id = ? AND {_OPEN}",
            (state, error, now, int(notified), now, job_id, *OPEN_JOB_STATES),
        ) == 1

    async def mark_submitting_lost(self, error: str, now: float, *, keep: Iterable[int] = ()) -> list[int]:
        """After a restart: jobs still 'submitting' (no run id recorded) become 'lost'; returns their ids."""
        keep = set(keep)
        lost, state = [], JobState.LOST
        for row in await self._db.fetchall("SELECT id FROM clone_jobs WHERE state = 'submitting'"):
            if row[0] not in keep and await self.finish(row[0], state, error=error, now=now):
                lost.append(row[0])
        return lost

    async def complete(self, job_id: int, *, now: float, provider_voice_id: str | None = None,
                       embedding_url: str | None = None, embedding_expires_at: float | None = None,
                       embedding: tuple[str, str, str, bytes] | None = None,
                       max_name_length: int = 32) -> tuple[int, str] | None:
        """In one transaction: store the embedding file (``(token, filename, content_type, data)``), save
        the voice (as "<name> (2)" … when the name was taken meanwhile) and mark the job completed.

        Returns ``(voice id, saved name)``, or None when the job was not open any more.
        """
        async with self._db.transaction() as tx:
            await tx.lock(f"job:{job_id}")  # two processes completing the same run: one saves the voice
            job = row_to(CloneJob, await tx.fetchone("SELECT * FROM clone_jobs WHERE id = ?", (job_id,)))
            if job is None or not job.is_open:
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
