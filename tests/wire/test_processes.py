"""Two real bot processes (``python -m bot run``, one shard each: ``SHARD_COUNT=2``, ``SHARD_IDS=0`` / ``1``) on
one Discord emulator, one fake NanoGPT and one PostgreSQL database (``DATABASE_URL``), as a sharded deployment
runs: each guild is answered by its own shard's process; limits hold across processes; when one process dies the
other finishes its clone jobs (with three processes, one of the two survivors does, once), and a restart never takes
a sibling's job from it. Assertions are on what users see
in Discord (answers, cards, notices, counted per job) and on what reached NanoGPT (paid submits)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from bot.cloning import LOST_AFTER_RESTART
from bot.policy import USER_BLOCKED
from tests.fakes.discord import DiscordEmulator, EmuInteraction, EmuMessage, EmuUser, RecordedRequest
from tests.fakes.nanogpt import Step
from tests.fixtures_processes import SHARD_COUNT, Cluster

pytest_plugins = ["tests.fixtures_nanogpt", "tests.fixtures_audio", "tests.fixtures_processes"]


async def test_each_guild_is_answered_by_the_process_of_its_shard(cluster: Cluster) -> None:
    emu = cluster.emu
    processes = await cluster.start()
    # Each process identified its own shard, on its own gateway connection, once.
    assert sorted(emu.shard_clients()) == sorted(([p.shard, SHARD_COUNT], p.name) for p in processes)

    for process in processes:
        guild = cluster.guilds[process.shard]
        assert emu.shard_of(guild, SHARD_COUNT) == process.shard
        alice = cluster.user(f"alice{process.shard}", guild)
        inter = await emu.slash(alice, "say", options={"text": f"hello shard {process.shard}"},
                                channel_id=cluster.channel(guild))
        # Discord sent the interaction to that shard's connection only, and that shard's process answered it.
        assert inter.delivered_to == [[process.shard, SHARD_COUNT]]
        reply = await inter.wait_final(15)
        (speech,) = reply.files  # the spoken line, as an audio file
        assert speech.filename == "speech.mp3" and speech.data[:3] in (b"ID3", b"\xff\xfb", b"\xff\xf3")
        assert f"for {alice.mention}" in reply.content
        assert cluster.clients_of(inter) == {process.name}
    assert [r["text"] for r in cluster.nano.tts_requests] == ["hello shard 0", "hello shard 1"]


async def test_dms_go_to_the_process_of_shard_0_and_the_owners_block_holds_in_every_process(cluster: Cluster) -> None:
    """The owner's DM commands reach shard 0's process only; a block given there must hold on every shard."""
    emu = cluster.emu
    processes = await cluster.start()
    shard0 = next(p for p in processes if p.shard == 0)
    alice = cluster.user("alice")  # a member of both guilds
    block = await emu.dm_slash(emu.owner, "owner", "block", {"user_id": str(alice.id), "reason": "spam"})
    assert block.delivered_to == [[0, SHARD_COUNT]]
    done = await block.wait_final(10)
    assert done.content.startswith(f"Blocked user <@{alice.id}>") and cluster.clients_of(block) == {shard0.name}
    await asyncio.sleep(0.5)  # time for the other process to hear of it
    for process in processes:
        guild = cluster.guilds[process.shard]
        inter = await emu.slash(alice, "say", options={"text": "still here?"}, channel_id=cluster.channel(guild))
        answer = await inter.wait_final(10)
        assert answer.content == USER_BLOCKED and answer.ephemeral, f"{process.name} let a blocked user in"
    assert cluster.nano.tts_requests == []


@pytest.mark.env(SAY_COOLDOWN_SECONDS="60")
async def test_the_say_cooldown_of_a_user_holds_across_guilds_on_two_processes(cluster: Cluster) -> None:
    """SAY_COOLDOWN_SECONDS is per user: speaking in a guild on the other shard does not start a new one."""
    emu = cluster.emu
    await cluster.start()
    alice = cluster.user("alice")
    first = await emu.slash(alice, "say", options={"text": "one"}, channel_id=cluster.channel(cluster.guilds[0]))
    assert (await first.wait_final(10)).files
    second = await emu.slash(alice, "say", options={"text": "two"}, channel_id=cluster.channel(cluster.guilds[1]))
    answer = await second.wait_final(10)
    assert answer.ephemeral and not answer.files
    assert answer.content.startswith("You're speaking too fast; try again <t:")
    assert [r["text"] for r in cluster.nano.tts_requests] == ["one"]


async def test_two_processes_starting_together_sync_commands_once_and_identify_5_s_apart_in_one_bucket(
        cluster: Cluster) -> None:
    """Discord allows one IDENTIFY per bucket (shard id % max_concurrency) every 5 s across all of a bot's
    processes, and one command sync is enough for all of them."""
    emu = cluster.emu
    emu.max_concurrency = 1  # one bucket for both shards
    processes = await cluster.start()
    assert emu.global_sync_count == 1 and len(emu.global_commands) > 0
    assert sorted(shard for _, shard in emu.identifies) == [[0, SHARD_COUNT], [1, SHARD_COUNT]]
    (first, _), (second, _) = sorted(emu.identifies)
    assert second - first >= 5.0
    logs = [p.log() for p in processes]
    assert sum("application commands: synced globally" in log for log in logs) == 1
    assert sum("application commands: global commands unchanged" in log for log in logs) == 1


# -- limits across processes --------------------------------------------------------------------------------


@pytest.mark.env(CLONE_CONFIRM="false", CLONE_DAILY_LIMIT="2")
async def test_one_user_cloning_in_two_guilds_on_two_processes_at_once_gets_exactly_the_limit(
        cluster: Cluster, audio_corpus) -> None:
    emu, nano = cluster.emu, cluster.nano
    nano.clone_script = QUICK
    await cluster.start()
    alice = cluster.user("alice")  # a member of both guilds, so her clones race on both processes
    clip = audio_corpus("mp3", 4)
    guilds = [cluster.guilds[shard] for shard in (0, 1, 0, 1, 0, 1)]
    inters = await asyncio.gather(*(clone(cluster, alice, guild, clip, name=f"Voice {i}")
                                    for i, guild in enumerate(guilds)))
    finals = await asyncio.gather(*(inter.wait_final(20) for inter in inters))
    refused = [(inter, m.content) for inter, m in zip(inters, finals, strict=True) if m.content]
    assert len(nano.submits) == 2 and len(refused) == 4  # exactly the limit's worth of paid runs
    assert all(text.startswith("You have used all 2 voice clones for today; the limit resets <t:")
               for _, text in refused)
    for inter, final in zip(inters, finals, strict=True):
        shard = emu.shard_of(inter.guild_id, SHARD_COUNT)
        assert inter.delivered_to == [[shard, SHARD_COUNT]]
        if not final.content:
            await card(emu, inter, is_ready, 20)
        assert cluster.clients_of(inter) == {f"shard{shard}"}  # answered by its guild's process, start to end
    db = await cluster.db()
    assert len(await db.voices.list(alice.id)) == 2
    assert sorted(job.state for job in await db.jobs.for_user(alice.id)) == ["completed", "completed"]


# -- a process dies, a process restarts -----------------------------------------------------------------------


@pytest.mark.env(CLONE_CONFIRM="false")
@pytest.mark.parametrize("stop", ["sigkill", "sigterm"])
async def test_when_one_process_dies_or_stops_with_jobs_in_flight_the_other_finishes_them_with_one_notice_each(
        cluster: Cluster, audio_corpus, stop: str) -> None:
    emu, nano = cluster.emu, cluster.nano
    nano.complete_after(5.0, poll_after=0.3)  # NanoGPT works on each run for 5 s
    doomed, survivor = await cluster.start()
    guild = cluster.guilds[doomed.shard]
    users = [cluster.user(f"user{i}", guild) for i in range(2)]
    inters = [await clone(cluster, user, guild, audio_corpus("mp3", 4), name=f"Orphan {i}")
              for i, user in enumerate(users)]
    for inter in inters:
        await card(emu, inter, lambda m: fields(m).get("State") in ("Queued", "Processing"))
    await nano.wait_for(r"/voice-clone/qwen/status", count=2, timeout=10)  # the doomed process polls them
    if stop == "sigkill":
        await cluster.kill(doomed)  # no clean-up at all: its database lock vanishes with it
    else:
        assert await cluster.terminate(doomed) == 0  # a clean stop hands its jobs back

    for inter in inters:
        done = await card(emu, inter, is_ready, 20)
        assert embed(done)["title"].startswith("Voice “Orphan ") and fields(done)["State"] == "Completed"
    await asyncio.sleep(1.0)  # time for a duplicate notice to show up, if one were coming
    for inter, user in zip(inters, users, strict=True):
        assert [r.client for r in ready_edits(emu, inter)] == [survivor.name]  # told once, by the survivor
        assert channel_notices(emu, user) == []
        assert LOST_AFTER_RESTART not in str([r.payload for r in requests_about(emu, inter)])
    assert len(nano.submits) == 2  # nothing was sent twice
    db = await cluster.db()
    for user in users:
        (voice,) = await db.voices.list(user.id)
        (job,) = await db.jobs.for_user(user.id)
        assert job.state == "completed" and job.notified_at is not None and voice.name.startswith("Orphan ")


@pytest.mark.env(CLONE_CONFIRM="false")
async def test_three_processes_when_one_dies_the_two_survivors_finish_each_of_its_jobs_once(
        cluster: Cluster, audio_corpus) -> None:
    """Both survivors sweep for orphans every 2 s: each job is adopted by one of them, whichever, and its
    user told once."""
    emu, nano = cluster.emu, cluster.nano
    cluster.use_shards(3)
    nano.complete_after(6.0, poll_after=0.3)
    doomed, *survivors = await cluster.start()
    assert sorted(emu.shard_clients()) == sorted(([p.shard, 3], p.name) for p in (doomed, *survivors))
    guild = cluster.guilds[doomed.shard]
    users = [cluster.user(f"user{i}", guild) for i in range(3)]
    inters = [await clone(cluster, user, guild, audio_corpus("mp3", 4), name=f"Orphan {i}")
              for i, user in enumerate(users)]
    for inter in inters:
        assert inter.delivered_to == [[doomed.shard, 3]]
        await card(emu, inter, lambda m: fields(m).get("State") in ("Queued", "Processing"))
    await cluster.kill(doomed)

    for inter in inters:
        done = await card(emu, inter, is_ready, 20)
        assert fields(done)["State"] == "Completed"
    await asyncio.sleep(1.0)  # time for a duplicate notice to show up, if one were coming
    for inter, user in zip(inters, users, strict=True):
        (notice,) = ready_edits(emu, inter)  # told once, by one of the survivors
        assert notice.client in {p.name for p in survivors}
        assert channel_notices(emu, user) == []
    assert len(nano.submits) == 3
    db = await cluster.db()
    for user in users:
        (job,) = await db.jobs.for_user(user.id)
        assert job.state == "completed" and job.notified_at is not None
        assert len(await db.voices.list(user.id)) == 1


@pytest.mark.env(CLONE_CONFIRM="false")
async def test_killed_mid_submit_the_user_is_told_once_that_the_clone_is_lost(cluster: Cluster, audio_corpus) -> None:
    """The process died (SIGKILL) after sending the paid request and before NanoGPT answered: nobody can know
    whether it was charged, so it is never sent again, and the user is told so once, by the survivor."""
    emu, nano = cluster.emu, cluster.nano
    doomed, survivor = await cluster.start()
    guild = cluster.guilds[doomed.shard]
    dave = cluster.user("dave", guild)
    nano.hold_next("/voice-clone/qwen")  # never answered while the process lives
    inter = await clone(cluster, dave, guild, audio_corpus("mp3", 4), name="Limbo")
    await nano.wait_for(r"^/voice-clone/qwen$", timeout=10)
    await cluster.kill(doomed)

    told = await card(emu, inter, lambda m: LOST_AFTER_RESTART in embed(m).get("description", ""), 15)
    assert fields(told)["State"] == "Not confirmed"
    await asyncio.sleep(1.0)
    lost_edits = [r for r in requests_about(emu, inter) if LOST_AFTER_RESTART in str(r.payload)]
    assert [r.client for r in lost_edits] == [survivor.name]  # told once, by the survivor
    assert len(nano.submits) == 1  # never resent
    db = await cluster.db()
    (job,) = await db.jobs.for_user(dave.id)
    assert job.state == "lost" and job.run_id is None and job.notified_at is not None


@pytest.mark.env(CLONE_CONFIRM="false")
async def test_stopped_mid_submit_the_answer_is_recorded_and_the_survivor_finishes_the_clone(
        cluster: Cluster, audio_corpus) -> None:
    """A clean stop (SIGTERM: a rolling restart) after the paid request was sent waits for NanoGPT's answer,
    records the run and shows it on the card, then hands the job back: the survivor polls it to the end and
    sends the one completion notice. Nothing is lost, nothing is sent twice."""
    emu, nano = cluster.emu, cluster.nano
    nano.clone_script = [Step("processing", poll_after=0.2)]  # the run finishes when the test says so
    doomed, survivor = await cluster.start()
    guild = cluster.guilds[doomed.shard]
    dave = cluster.user("dave", guild)
    release = nano.hold_next("/voice-clone/qwen")  # NanoGPT keeps the submit open until released
    inter = await clone(cluster, dave, guild, audio_corpus("mp3", 4), name="Rolling")
    await nano.wait_for(r"^/voice-clone/qwen$", timeout=10)
    stopping = asyncio.create_task(cluster.terminate(doomed))
    await asyncio.sleep(1.0)
    assert not stopping.done()  # the clean stop waits for NanoGPT's answer
    release.set()
    assert await stopping == 0
    recorded = await card(emu, inter, lambda m: fields(m).get("State") in ("Queued", "Processing"))
    assert embed(recorded)["title"] == "Cloning “Rolling”"  # shown by the stopping process before it closed
    (submit,) = nano.submits
    assert submit.run_id is not None
    nano.script_run(submit.run_id, [Step("completed")])

    done = await card(emu, inter, is_ready, 20)
    assert embed(done)["title"] == "Voice “Rolling” is ready"
    await asyncio.sleep(1.0)  # time for a duplicate or a "lost" notice to show up, if one were coming
    assert [r.client for r in ready_edits(emu, inter)] == [survivor.name]  # told once, by the survivor
    assert LOST_AFTER_RESTART not in str([r.payload for r in requests_about(emu, inter)])
    assert channel_notices(emu, dave) == [] and len(nano.submits) == 1
    db = await cluster.db()
    (job,) = await db.jobs.for_user(dave.id)
    assert job.state == "completed" and job.run_id == submit.run_id and job.notified_at is not None
    assert len(await db.voices.list(dave.id)) == 1


@pytest.mark.env(CLONE_CONFIRM="false")
async def test_a_restart_of_one_process_never_marks_a_siblings_jobs_lost(cluster: Cluster, audio_corpus) -> None:
    emu, nano = cluster.emu, cluster.nano
    nano.complete_after(2.0, poll_after=0.3)
    restarting, sibling = await cluster.start()
    guild = cluster.guilds[sibling.shard]
    bob, carol = cluster.user("bob", guild), cluster.user("carol", guild)
    pending = await clone(cluster, bob, guild, audio_corpus("mp3", 4), name="Pending")
    await nano.wait_for(r"^/voice-clone/qwen$", timeout=10)
    release = nano.hold_next("/voice-clone/qwen")  # NanoGPT keeps the next submit open until released
    submitting = await clone(cluster, carol, guild, audio_corpus("mp3", 4), name="Submitting")
    await nano.wait_for(r"^/voice-clone/qwen$", count=2, timeout=10)

    restarted = await cluster.restart(restarting)  # a clean stop, then a new process for that shard
    db = await cluster.db()
    await cluster.wait_registered(restarted)  # its start-up recovery: register, then adopt the orphans
    await asyncio.sleep(0.5)
    ((bobs,), (carols,)) = await db.jobs.for_user(bob.id), await db.jobs.for_user(carol.id)
    # The recovery ran while the sibling's submit was in flight (and its other job open), and left both alone.
    assert carols.state == "submitting" and bobs.state in ("pending", "processing", "completed")
    release.set()

    for inter, name in ((pending, "Pending"), (submitting, "Submitting")):
        done = await card(emu, inter, is_ready, 15)
        assert embed(done)["title"] == f"Voice “{name}” is ready"
    await asyncio.sleep(1.0)  # time for a duplicate or a "lost" notice to show up, if one were coming
    for inter, user in ((pending, bob), (submitting, carol)):
        assert [r.client for r in ready_edits(emu, inter)] == [sibling.name]
        assert LOST_AFTER_RESTART not in str([r.payload for r in requests_about(emu, inter)])
        assert channel_notices(emu, user) == []
    assert len(nano.submits) == 2
    for user in (bob, carol):
        (job,) = await db.jobs.for_user(user.id)
        assert job.state == "completed" and job.notified_at is not None
        assert len(await db.voices.list(user.id)) == 1


# -- helpers ----------------------------------------------------------------------------------------------------


QUICK = [Step("pending", poll_after=0.1), Step("processing", poll_after=0.1), Step("completed")]


async def clone(cluster: Cluster, user: EmuUser, guild_id: int, clip: bytes, *, name: str) -> EmuInteraction:
    """``/voice clone`` of ``clip`` (Qwen) in the guild's channel."""
    channel = cluster.channel(guild_id)
    attachment = cluster.emu.add_attachment(clip, "clip.mp3", "audio/mpeg", channel_id=channel)
    return await cluster.emu.slash(user, "voice", subcommand="clone", channel_id=channel, validate=False,
                                   options={"audio": attachment, "name": name, "provider": "qwen"})


def embed(msg: EmuMessage | None) -> dict:
    return msg.embeds[0] if msg is not None and msg.embeds else {}


def fields(msg: EmuMessage | None) -> dict[str, str]:
    return {f["name"]: f["value"] for f in embed(msg).get("fields", [])}


def is_ready(msg: EmuMessage | None) -> bool:
    return embed(msg).get("title", "").startswith("Voice ")


async def card(emu: DiscordEmulator, inter: EmuInteraction, predicate: Callable[[EmuMessage], bool],
               timeout: float = 10.0) -> EmuMessage:  # noqa: ASYNC109
    """The interaction's original response (the clone card) once ``predicate(card)`` holds."""
    await emu.wait_until(lambda: inter.original is not None and not inter.original.loading
                         and predicate(inter.original), timeout, "the clone card to change")
    assert inter.original is not None
    return inter.original


def requests_about(emu: DiscordEmulator, inter: EmuInteraction) -> list[RecordedRequest]:
    return [r for r in emu.requests if f"/interactions/{inter.id}/" in r.path or f"/{inter.token}" in r.path]


def ready_edits(emu: DiscordEmulator, inter: EmuInteraction) -> list[RecordedRequest]:
    """The edits of the clone card that told the user the voice is ready (the completion notice)."""
    return [r for r in requests_about(emu, inter) if r.method == "PATCH" and r.path.endswith("/messages/@original")
            and embed_title(r).startswith("Voice ")]


def channel_notices(emu: DiscordEmulator, user: EmuUser) -> list[EmuMessage]:
    """Notices posted in a channel for ``user`` (when the card could not be edited)."""
    return [m for m in emu.channel_messages() if m.source == "channel" and user.mention in m.content]


def embed_title(request: RecordedRequest) -> str:
    payload = request.payload or {}
    return ((payload.get("embeds") or [{}])[0] or {}).get("title", "")
