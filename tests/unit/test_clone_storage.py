"""Clone-job storage: the name check at insert, unique customVoiceIds, lost submits, one-transaction completion."""

from __future__ import annotations

import pytest

from bot.storage import DuplicateVoiceName


async def _job(db, user_id=1, name="Alice", provider="minimax", ids=None):
    ids = iter(ids or ["nv1aaaaaaaa"])
    return await db.create_clone_job(
        user_id=user_id, guild_id=10, channel_id=20, application_id=30, interaction_token="tok",
        token_expires_at=1000.0, voice_name=name, provider=provider, transcript="hello there",
        clone_model=None, now=1.0, make_custom_voice_id=(lambda: next(ids)) if provider == "minimax" else None,
    )


async def test_create_job_checks_names_of_voices_and_open_jobs(db):
    job_id, cvid = await _job(db)
    assert cvid == "nv1aaaaaaaa"
    job = await db.get_job(job_id)
    assert job.state == "submitting" and job.run_id is None and job.interaction_token == "tok"
    with pytest.raises(DuplicateVoiceName):
        await _job(db, name="ALICE", ids=["nv2bbbbbbbb"])
    assert await db.open_job_names(1) == ["Alice"]
    # Another user may use the name; a finished job frees it.
    await _job(db, user_id=2, name="alice", ids=["nv3cccccccc"])
    assert await db.finish_clone_job(job_id, "failed", error="x", now=2.0, notified=True)
    assert not await db.finish_clone_job(job_id, "failed", error="x", now=2.0)  # not open any more
    assert (await db.get_job(job_id)).notified_at == 2.0
    await _job(db, name="alice", ids=["nv4dddddddd"])


async def test_custom_voice_id_is_regenerated_when_taken(db):
    await _job(db, name="one", ids=["nv1aaaaaaaa"])
    _, cvid = await _job(db, name="two", ids=["nv1aaaaaaaa", "nv1aaaaaaaa", "nv5eeeeeeee"])
    assert cvid == "nv5eeeeeeee"


async def test_submitting_jobs_become_lost_except_those_kept(db):
    a, _ = await _job(db, name="a", ids=["nv1aaaaaaaa"])
    b, _ = await _job(db, name="b", ids=["nv2aaaaaaaa"])
    c, _ = await _job(db, name="c", ids=["nv3aaaaaaaa"])
    await db.update_job(c, state="pending", run_id="run-c")
    assert await db.mark_submitting_jobs_lost("lost!", 5.0, keep=[b]) == [a]
    lost = await db.get_job(a)
    assert lost.state == "lost" and lost.error == "lost!" and lost.notified_at is None
    assert [j.id for j in await db.unnotified_finished_jobs()] == [a]
    assert await db.mark_job_notified(a, 6.0)
    await db.unmark_job_notified(a)
    assert await db.mark_job_notified(a, 7.0)
    assert not await db.mark_job_notified(a, 8.0)


async def test_complete_saves_voice_file_and_job_in_one_go_and_renames_on_conflict(db):
    job_id, _ = await _job(db, name="A" * 32, provider="qwen")
    async with db.transaction() as tx:
        await tx.execute(
            "INSERT INTO voices (user_id, name, name_key, provider, created_at) VALUES (1, ?, ?, 'qwen', 0)",
            ("A" * 32, ("A" * 32).casefold()),
        )
    voice_id, name = await db.complete_clone_job(
        job_id, now=100.0, embedding_url="https://x/e.safetensors", embedding_expires_at=200.0,
        embedding=("tok" * 10, "e.safetensors", "application/octet-stream", b"\x00embedding"),
    )
    assert name == "A" * 28 + " (2)" and len(name) == 32
    voice = await db.get_voice(1, voice_id)
    assert voice.embedding_url == "https://x/e.safetensors" and voice.transcript == "hello there"
    stored = await db.get_file(voice.embedding_file_id)
    assert stored.kind == "qwen_embedding" and stored.size == len(b"\x00embedding")
    assert await db.get_file_data(stored.id) == b"\x00embedding"
    job = await db.get_job(job_id)
    assert job.state == "completed" and job.voice_id == voice_id and job.finished_at == 100.0
    # A second completion (a racing poll) changes nothing.
    assert await db.complete_clone_job(job_id, now=101.0) is None
    assert await db.fetchval("SELECT COUNT(*) FROM voices") == 2
