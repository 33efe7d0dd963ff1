"""Clone-job storage: the name check at insert, unique customVoiceIds, lost submits, one-transaction completion."""

from __future__ import annotations

import pytest

from bot.storage import DuplicateVoiceName
from tests.fixtures_db import add_qwen_voice


async def _job(db, user_id=1, name="Alice", provider="minimax", ids=None):
    ids = iter(ids or ["nv1aaaaaaaa"])
    return await db.jobs.create(
        user_id=user_id, guild_id=10, channel_id=20, application_id=30, interaction_token="tok",
        token_expires_at=1000.0, voice_name=name, provider=provider, transcript="hello there",
        clone_model=None, now=1.0, make_custom_voice_id=(lambda: next(ids)) if provider == "minimax" else None,
    )


async def test_create_job_checks_names_of_voices_and_open_jobs(db):
    job_id, cvid = await _job(db)
    assert cvid == "nv1aaaaaaaa"
    job = await db.jobs.get(job_id)
    assert job.state == "submitting" and job.run_id is None and job.interaction_token == "tok"
    with pytest.raises(DuplicateVoiceName):
        await _job(db, name="ALICE", ids=["nv2bbbbbbbb"])
    assert await db.jobs.open_names(1) == ["Alice"]
    # Another user may use the name; a finished job frees it.
    await _job(db, user_id=2, name="alice", ids=["nv3cccccccc"])
    assert await db.jobs.finish(job_id, "failed", error="x", now=2.0, notified=True)
    assert not await db.jobs.finish(job_id, "failed", error="x", now=2.0)  # not open any more
    assert (await db.jobs.get(job_id)).notified_at == 2.0
    await _job(db, name="alice", ids=["nv4dddddddd"])


async def test_custom_voice_id_is_regenerated_when_taken(db):
    await _job(db, name="one", ids=["nv1aaaaaaaa"])
    _, cvid = await _job(db, name="two", ids=["nv1aaaaaaaa", "nv1aaaaaaaa", "nv5eeeeeeee"])
    assert cvid == "nv5eeeeeeee"


async def test_submitting_jobs_become_lost_except_those_kept(db):
    a, _ = await _job(db, name="a", ids=["nv1aaaaaaaa"])
    b, _ = await _job(db, name="b", ids=["nv2aaaaaaaa"])
    c, _ = await _job(db, name="c", ids=["nv3aaaaaaaa"])
    await db.jobs.update(c, state="pending", run_id="run-c")
    assert await db.jobs.mark_submitting_lost("lost!", 5.0, keep=[b]) == [a]
    lost = await db.jobs.get(a)
    assert lost.state == "lost" and lost.error == "lost!" and lost.notified_at is None
    assert [j.id for j in await db.jobs.unnotified_finished()] == [a]
    assert await db.jobs.mark_notified(a, 6.0)
    await db.jobs.unmark_notified(a)
    assert await db.jobs.mark_notified(a, 7.0)
    assert not await db.jobs.mark_notified(a, 8.0)


async def test_complete_saves_voice_file_and_job_in_one_go_and_renames_on_conflict(db):
    job_id, _ = await _job(db, name="A" * 32, provider="qwen")
    await db.voices.rename(1, await add_qwen_voice(db, 1, "other"), "A" * 32)  # the name was taken meanwhile
    voice_id, name = await db.jobs.complete(
        job_id, now=100.0, embedding_url="https://x/e.safetensors", embedding_expires_at=200.0,
        embedding=("tok" * 10, "e.safetensors", "application/octet-stream", b"\x00embedding"),
    )
    assert name == "A" * 28 + " (2)" and len(name) == 32
    voice = await db.voices.get(1, voice_id)
    assert voice.embedding_url == "https://x/e.safetensors" and voice.transcript == "hello there"
    stored = await db.files.get(voice.embedding_file_id)
    assert stored.kind == "qwen_embedding" and stored.size == len(b"\x00embedding")
    assert await db.files.data(stored.id) == b"\x00embedding"
    job = await db.jobs.get(job_id)
    assert job.state == "completed" and job.voice_id == voice_id and job.finished_at == 100.0
    # A second completion (a racing poll) changes nothing.
    assert await db.jobs.complete(job_id, now=101.0) is None
    assert [v.id for v in await db.voices.list(1)] == [voice_id, (await db.voices.by_name(1, "A" * 32)).id]
