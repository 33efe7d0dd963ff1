"""/voice list|info|rename|delete|default|jobs, /forget-me and durable Qwen voices over the wire: the
real bot against the Discord emulator and the fake NanoGPT. Voices are inserted directly into the
bot's database; assertions are on what the user (the emulator) and NanoGPT (the fake) observe.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from bot.embeddings import NO_DURABLE_STORAGE_WARNING
from tests import fixtures_db
from tests.fakes.discord import EmuInteraction, EmuMessage
from tests.fakes.nanogpt import make_tone
from tests.fixtures_bot import World
from tests.wire.test_embeddings import EMBEDDING, free_port, insert_minimax_voice, insert_qwen_voice

pytest_plugins = ["tests.fixtures_nanogpt", "tests.fixtures_bot"]

DAY = 86_400


# -- helpers --------------------------------------------------------------------------------------


async def run(world: World, user, sub: str | None, options: dict | None = None, *,
              command: str = "voice") -> tuple[EmuInteraction, EmuMessage]:
    inter = await world.emu.slash(user, command, subcommand=sub, options=options or {})
    message = await inter.wait_final(10)
    assert message.ephemeral, f"/{command} {sub or ''} must answer ephemerally"
    assert message.allowed_mentions == {"parse": []}
    assert inter.payload and inter.callback_type == 5  # deferred first
    return inter, message


def text_of(message: EmuMessage) -> str:
    parts = [message.content or ""]
    for embed in message.embeds:
        parts += [embed.get("title", ""), embed.get("description", "")]
        parts += [f"{f['name']}: {f['value']}" for f in embed.get("fields", [])]
        parts.append((embed.get("footer") or {}).get("text", ""))
    return "\n".join(parts)


def fields(message: EmuMessage) -> dict[str, str]:
    [embed] = message.embeds
    return {f["name"]: f["value"] for f in embed.get("fields", [])}


def button(message: EmuMessage, label: str) -> dict:
    def walk(items):
        for c in items:
            yield c
            yield from walk(c.get("components", []))

    for component in walk(message.components):
        if component.get("type") == 2 and component.get("label") == label:
            return component
    raise AssertionError(f"no button {label!r} on {message}: {message.components}")


async def press(world: World, user, message: EmuMessage, label: str) -> EmuInteraction:
    inter = await world.emu.click(user, message, button(message, label)["custom_id"])
    await inter.wait_response(5)
    return inter


async def add_job(world: World, user_id: int, name: str, *, state: str, provider: str = "qwen",
                  voice_id: int | None = None, error: str | None = None, cost_micros: int = 250_000,
                  created_at: float | None = None) -> int:
    """A clone job of ``user_id``; with ``voice_id``, the (paid) job that made that voice."""
    now = created_at if created_at is not None else world.clock.now()
    paid = {"cost_micros": cost_micros, "payment_source": "USD", "submitted_at": now}
    if voice_id is not None:  # the voice was saved by its own clone job (tests.fixtures_db): record what it cost
        job = await world.db.jobs.for_voice(user_id, voice_id)
        assert job is not None and job.state == state == "completed"
        await world.db.jobs.update(job.id, **paid)
        return job.id
    return await fixtures_db.add_job(world.db, user_id, name, state=state, provider=provider,
                                     guild_id=world.emu.guild_id, now=now, error=error, notified_at=now,
                                     finished_at=None if state in ("pending", "processing") else now, **paid)


def sync_emulator_clock(world: World) -> None:
    """Make the emulator's wall clock (it signs CDN URLs) agree with the bot's moved clock."""
    world.emu.clock_offset = world.clock.now() - time.time()


# -- /voice list ------------------------------------------------------------------------------------


async def test_list_empty_state_points_to_clone(world: World):
    _, message = await run(world, world.user("alice"), "list")
    assert "no saved voices" in message.content and "/voice clone" in message.content


async def test_list_shows_name_provider_created_default_and_last_use(world: World):
    alice, bob = world.user("alice"), world.user("bob")
    now = world.clock.now()
    narrator = await insert_minimax_voice(world.db, alice.id, "Narrator", now=now - DAY)
    await insert_qwen_voice(world.db, alice.id, "Grandma", embedding_url=None, now=now)
    await insert_minimax_voice(world.db, bob.id, "Bob's Secret", now=now, voice_id="nv9bobsecret1")
    await world.db.user_settings.set_default_voice(alice.id, narrator, now)
    await world.db.voices.touch(narrator, now - 60)
    _, message = await run(world, alice, "list")
    [embed] = message.embeds
    assert embed["title"] == "Your voices (2)"
    body = embed["description"]
    assert body.index("Grandma") < body.index("Narrator")
    assert "**Narrator** ⭐ default" in body and body.count("⭐") == 1
    assert f"<t:{int(now - DAY)}:d>" in body and f"last used <t:{int(now - 60)}:R>" in body
    assert "MiniMax" in body and "Qwen3-TTS" in body and "never used" in body
    assert "Secret" not in body
    assert not message.components  # one page: no buttons


async def test_list_paginates_with_author_only_buttons(world: World):
    alice, bob = world.user("alice"), world.user("bob")
    for i in range(23):
        await insert_minimax_voice(world.db, alice.id, f"Voice {i:02d}", now=world.clock.now(),
                                   voice_id=f"nv1voice{i:04d}")
    _, message = await run(world, alice, "list")
    [embed] = message.embeds
    assert embed["description"].count("**Voice") == 10 and "Voice 00" in embed["description"]
    assert embed["footer"]["text"].startswith("Page 1 of 3")
    assert button(message, "Previous").get("disabled") is True

    intruder = await press(world, bob, message, "Next")
    assert intruder.callback_type == 4 and "Only the person" in intruder.callback["data"]["content"]
    assert world.emu.messages[message.id].embeds[0]["footer"]["text"].startswith("Page 1 of 3")

    await press(world, alice, message, "Next")
    page2 = world.emu.messages[message.id]
    assert page2.embeds[0]["footer"]["text"].startswith("Page 2 of 3") and "Voice 10" in page2.embeds[0]["description"]
    await press(world, alice, page2, "Next")
    page3 = world.emu.messages[message.id]
    assert page3.embeds[0]["description"].count("**Voice") == 3
    assert button(page3, "Next").get("disabled") is True
    await press(world, alice, page3, "Previous")
    assert world.emu.messages[message.id].embeds[0]["footer"]["text"].startswith("Page 2 of 3")


# -- /voice info ------------------------------------------------------------------------------------


async def test_info_of_a_minimax_voice(world: World):
    alice = world.user("alice")
    voice_id = await insert_minimax_voice(world.db, alice.id, "Narrator", now=world.clock.now(),
                                          voice_id="nv3narrator99")
    await add_job(world, alice.id, "Narrator", state="completed", provider="minimax", voice_id=voice_id,
                  cost_micros=1_000_000)
    await world.db.user_settings.set_default_voice(alice.id, voice_id, world.clock.now())
    _, message = await run(world, alice, "info", {"name": "narrator"})
    info = fields(message)
    assert info["Provider"] == "MiniMax"
    assert info["MiniMax voice id"] == "`nv3narrator99`"
    assert info["Default"].startswith("Yes")
    assert info["Clone cost"] == "$1.00"
    assert info["Last used"] == "never"
    created = int((await world.db.voices.get(alice.id, voice_id)).created_at)
    deadline = created + 7 * 86_400
    assert info["Keeping it"] == (f"MiniMax deletes voices that go unused for 7 days. Use it with /say by "
                                  f"<t:{deadline}:f> (<t:{deadline}:R>) to keep it.")


async def test_info_of_a_qwen_voice_without_durable_storage_says_when_it_stops(world: World):
    alice = world.user("alice")
    now = world.clock.now()
    voice_id = await insert_qwen_voice(world.db, alice.id, "Grandma", embedding_url="http://127.0.0.1:9/e",
                                       now=now, transcript="the quick brown fox")
    await add_job(world, alice.id, "Grandma", state="completed", voice_id=voice_id)
    _, message = await run(world, alice, "info", {"name": "Grandma"})
    info = fields(message)
    assert info["Provider"] == "Qwen3-TTS" and info["Transcript"] == "the quick brown fox"
    assert info["Clone cost"] == "$0.25" and info["Default"] == "No"
    stops = int(now + 7 * DAY)
    assert info["Durable"] == (f"Stops working <t:{stops}:R> (<t:{stops}:f>). NanoGPT keeps Qwen3-TTS voices about "
                               "7 days, and I have nowhere to keep a copy. The bot's operator can give me one.")
    assert "_" not in info["Durable"]  # no environment-variable names for members


async def test_info_of_a_qwen_voice_with_durable_storage(world: World):
    port = free_port()
    await world.restart(PUBLIC_BASE_URL=f"http://127.0.0.1:{port}", HTTP_PORT=str(port))
    alice = world.user("alice")
    await insert_qwen_voice(world.db, alice.id, "Grandma", embedding_url="http://127.0.0.1:9/e",
                            now=world.clock.now())
    _, message = await run(world, alice, "info", {"name": "grandma"})
    assert fields(message)["Durable"] == "I keep a copy, so it keeps working after NanoGPT's copy expires."


# -- isolation and autocomplete ---------------------------------------------------------------------


async def test_another_users_voice_cannot_be_seen_renamed_deleted_or_made_default(world: World):
    alice, bob = world.user("alice"), world.user("bob")
    secret = await insert_minimax_voice(world.db, alice.id, "Secret Alice", now=world.clock.now())
    for sub, options in (("info", {"name": "Secret Alice"}),
                         ("rename", {"name": "Secret Alice", "new_name": "Mine now"}),
                         ("delete", {"name": "secret alice"}),
                         ("default", {"name": "Secret Alice"})):
        _, message = await run(world, bob, sub, options)
        assert message.content.startswith("You have no voice called “Secret Alice”") or \
            message.content.startswith("You have no voice called “secret alice”"), (sub, message.content)
        assert not message.components
    voice = await world.db.voices.get(alice.id, secret)
    assert voice is not None and voice.name == "Secret Alice"
    assert await world.db.user_settings.default_voice(bob.id) is None
    _, listing = await run(world, bob, "list")
    assert "Secret" not in text_of(listing)


async def test_autocomplete_offers_only_own_voices_fuzzily(world: World):
    alice, bob = world.user("alice"), world.user("bob")
    for i, name in enumerate(["Grandma", "Grandpa Joe", "Narrator", "The Grand Wizard"]):
        await insert_minimax_voice(world.db, alice.id, name, now=world.clock.now(), voice_id=f"nv1alice{i:04d}")
    for i in range(30):
        await insert_minimax_voice(world.db, bob.id, f"Grand Bob {i}", now=world.clock.now(),
                                   voice_id=f"nv1bob{i:06d}")
    for sub in ("info", "rename", "delete", "default"):
        choices = await world.emu.autocomplete(alice, "voice", sub, options={"name": "grand"}, focused="name")
        values = [c["value"] for c in choices]
        assert values == ["Grandma", "Grandpa Joe", "The Grand Wizard"], sub
    typo = await world.emu.autocomplete(alice, "voice", "info", options={"name": "narator"}, focused="name")
    assert typo[0]["value"] == "Narrator"
    everything = await world.emu.autocomplete(bob, "voice", "info", options={"name": ""}, focused="name")
    assert len(everything) == 25 and all(c["value"].startswith("Grand Bob") for c in everything)
    bob_grand = await world.emu.autocomplete(bob, "voice", "delete", options={"name": "grandma"}, focused="name")
    assert all(c["value"].startswith("Grand Bob") for c in bob_grand)


# -- /voice rename ----------------------------------------------------------------------------------


async def test_rename_rules(world: World):
    alice = world.user("alice")
    now = world.clock.now()
    first = await insert_minimax_voice(world.db, alice.id, "Narrator", now=now, voice_id="nv1narrator01")
    await insert_minimax_voice(world.db, alice.id, "Grandma", now=now, voice_id="nv1grandma001")

    _, message = await run(world, alice, "rename", {"name": "narrator", "new_name": "  The   Storyteller "})
    assert message.content == "Renamed “Narrator” to “The Storyteller”."
    assert (await world.db.voices.get(alice.id, first)).name == "The Storyteller"

    _, message = await run(world, alice, "rename", {"name": "The Storyteller", "new_name": "GRANDMA"})
    assert "You already have a voice called “GRANDMA”" in message.content

    _, message = await run(world, alice, "rename", {"name": "The Storyteller", "new_name": "Bad\u202ename"})
    assert "can't contain control, invisible or text-direction characters" in message.content
    _, message = await run(world, alice, "rename", {"name": "The Storyteller", "new_name": "zero\u200bwidth"})
    assert "can't contain" in message.content

    _, message = await run(world, alice, "rename", {"name": "The Storyteller", "new_name": "the storyteller"})
    assert message.content == "Renamed “The Storyteller” to “the storyteller”."  # a change of case is fine

    await add_job(world, alice.id, "Busy Name", state="processing")
    _, message = await run(world, alice, "rename", {"name": "the storyteller", "new_name": "busy name"})
    assert "in progress" in message.content
    assert (await world.db.voices.get(alice.id, first)).name == "the storyteller"


# -- /voice delete ----------------------------------------------------------------------------------


async def test_delete_asks_and_can_be_cancelled(world: World):
    alice, bob = world.user("alice"), world.user("bob")
    voice_id = await insert_minimax_voice(world.db, alice.id, "Narrator", now=world.clock.now())
    _, message = await run(world, alice, "delete", {"name": "Narrator"})
    body = text_of(message)
    assert "can't delete" not in body and "no way to delete the clone remotely" in body
    assert "MiniMax deletes voices that go unused for 7 days" in body and "frees the name" in body

    intruder = await press(world, bob, message, "Delete")
    assert intruder.callback_type == 4 and "Only the person" in intruder.callback["data"]["content"]
    assert await world.db.voices.get(alice.id, voice_id) is not None

    await press(world, alice, message, "Cancel")
    after = world.emu.messages[message.id]
    assert after.content == "Kept “Narrator”; nothing was deleted." and not after.components
    assert await world.db.voices.get(alice.id, voice_id) is not None


async def test_a_block_stops_the_delete_buttons_of_a_confirmation_already_shown(world: World):
    alice = world.user("alice")
    voice_id = await insert_minimax_voice(world.db, alice.id, "Narrator", now=world.clock.now())
    _, message = await run(world, alice, "delete", {"name": "Narrator"})
    await world.bot.blocks.block("user", alice.id, "spam", world.emu.owner.id, world.clock.now())
    refused = await press(world, alice, message, "Delete")
    assert refused.callback_type == 4 and refused.callback["data"]["flags"] & 64
    assert refused.callback["data"]["content"] == "You can't use this bot."
    assert await world.db.voices.get(alice.id, voice_id) is not None
    await world.bot.blocks.unblock("user", alice.id)
    await press(world, alice, message, "Delete")  # the same buttons work again once unblocked
    await world.emu.wait_until(lambda: world.emu.messages[message.id].content.startswith("Deleted"), 5,
                               "the deletion result")
    assert await world.db.voices.get(alice.id, voice_id) is None


async def test_delete_confirmed_frees_the_name_file_and_default(world: World):
    alice = world.user("alice")
    voice_id = await insert_qwen_voice(world.db, alice.id, "Grandma", embedding_url=None, now=world.clock.now())
    voice = await world.db.voices.get(alice.id, voice_id)
    await world.db.user_settings.set_default_voice(alice.id, voice_id, world.clock.now())
    _, message = await run(world, alice, "delete", {"name": "grandma"})
    body = text_of(message)
    assert "Qwen3-TTS voice expires after about 7 days. I delete my own copy now." in body
    assert "your default voice" in body
    confirm = await press(world, alice, message, "Delete")
    await world.emu.wait_until(lambda: world.emu.messages[message.id].content.startswith("Deleted"), 5,
                               "the deletion result")
    assert confirm.callback_type == 7
    assert world.emu.messages[message.id].content == "Deleted “Grandma”; the name is free again."
    assert await world.db.voices.get(alice.id, voice_id) is None
    assert await world.db.files.get(voice.embedding_file_id) is None
    assert await world.db.user_settings.default_voice(alice.id) is None
    assert not await world.db.voices.name_taken(alice.id, "Grandma")


# -- /voice default ---------------------------------------------------------------------------------


async def test_default_set_and_clear(world: World):
    alice = world.user("alice")
    voice_id = await insert_minimax_voice(world.db, alice.id, "Narrator", now=world.clock.now())
    _, message = await run(world, alice, "default", {"name": "NARRATOR"})
    assert message.content.startswith("“Narrator” is now your default voice") and "name:none" in message.content
    assert (await world.db.user_settings.default_voice(alice.id)).id == voice_id
    _, message = await run(world, alice, "default", {"name": "none"})
    assert message.content.startswith("Cleared your default voice") and "Kokoro-82m/af_bella" in message.content
    assert await world.db.user_settings.default_voice(alice.id) is None


# -- /voice jobs ------------------------------------------------------------------------------------


async def test_jobs_lists_open_and_recent_jobs_of_the_user_only(world: World):
    alice, bob = world.user("alice"), world.user("bob")
    _, empty = await run(world, alice, "jobs")
    assert "no clone jobs" in empty.content
    now = world.clock.now()
    await add_job(world, alice.id, "Done One", state="completed", created_at=now - 300)
    await add_job(world, alice.id, "Broken", state="failed", error="The audio was too noisy.", created_at=now - 200)
    await add_job(world, alice.id, "Running", state="processing", provider="minimax", created_at=now - 100)
    await add_job(world, bob.id, "Bob Job", state="processing")
    _, message = await run(world, alice, "jobs")
    body = message.embeds[0]["description"]
    assert body.index("Running") < body.index("Broken") < body.index("Done One")
    assert "**Processing**" in body and "MiniMax" in body and f"<t:{int(now - 100)}:R>" in body
    assert "> The audio was too noisy." in body and "Completed" in body
    assert "Bob Job" not in body
    assert message.embeds[0]["footer"]["text"].startswith("1 running")


# -- /forget-me -------------------------------------------------------------------------------------


async def test_forget_me_cancel_keeps_everything(world: World):
    alice = world.user("alice")
    await insert_minimax_voice(world.db, alice.id, "Narrator", now=world.clock.now())
    _, message = await run(world, alice, None, command="forget-me")
    assert "• 1 voice\n" in text_of(message) and "(s)" not in text_of(message)
    await press(world, alice, message, "Cancel")
    assert world.emu.messages[message.id].content == "Cancelled; nothing was deleted."
    stored = await world.bot.privacy.stored(alice.id)
    assert {k: n for k, n in stored.items() if n} == {"voices": 1, "clone_jobs": 1}  # the voice and its clone job


async def test_forget_me_with_nothing_stored(world: World):
    _, message = await run(world, world.user("alice"), None, command="forget-me")
    assert message.content == "I have nothing stored about you."


@pytest.mark.env(CLONE_CONFIRM="false")
async def test_forget_me_deletes_every_row_and_file_and_running_clones_do_not_come_back(world: World):
    world.bot.nanogpt.tts_poll_interval = 0.02
    alice, bob = world.user("alice"), world.user("bob")
    now = world.clock.now()
    await insert_qwen_voice(world.db, alice.id, "Grandma", embedding_url=None, now=now)
    narrator = await insert_minimax_voice(world.db, alice.id, "Narrator", now=now)
    await world.db.user_settings.set_default_voice(alice.id, narrator, now)
    await add_job(world, alice.id, "Narrator", state="completed", provider="minimax", voice_id=narrator)
    await world.db.cache.put("k-alice", alice.id, "audio/mpeg", b"speech", now, 10_000_000)
    await insert_qwen_voice(world.db, bob.id, "Bob Voice", embedding_url=None, now=now)
    # A real clone that is still running at NanoGPT when alice asks to be forgotten.
    world.nano.complete_after(0.6, poll_after=0.05)
    clip = world.emu.add_attachment(make_tone(4.0, "mp3"), "clip.mp3", "audio/mpeg")
    clone = await world.emu.slash(alice, "voice", subcommand="clone",
                                  options={"audio": clip, "name": "Late", "provider": "qwen"})
    await clone.wait_final(20)
    assert any(j.is_open for j in await world.db.jobs.for_user(alice.id))

    _, message = await run(world, alice, None, command="forget-me")
    body = text_of(message)
    # Clone job records: the two that made her voices and the running one.
    for expected in ("• 2 voices\n", "• 3 clone job records (", "• 1 cached speech clip\n", "your settings",
                     "• 1 stored file (voice embeddings)"):
        assert expected in body, (expected, body)
    await press(world, alice, message, "Delete everything")
    await world.emu.wait_until(lambda: world.emu.messages[message.id].content.startswith("Done"), 5,
                               "the forget-me result")
    assert world.emu.messages[message.id].content == (
        "Done: I deleted 2 voices, 3 clone job records, 1 cached speech clip, 1 setting and "
        "1 stored file.")
    assert not any((await world.bot.privacy.stored(alice.id)).values())
    assert await world.db.ledger.count_user_data(alice.id) == 0  # her spending is kept, detached from her
    assert await world.db.files.for_user(alice.id) == []

    await asyncio.sleep(1.2)  # the clone completes at NanoGPT meanwhile; the poller must let it go
    assert not any((await world.bot.privacy.stored(alice.id)).values())
    assert await world.db.ledger.count_user_data(alice.id) == 0
    assert await world.db.voices.list(alice.id) == []
    bobs = await world.bot.privacy.stored(bob.id)  # bob's voice, its job and its file are untouched
    assert {k: n for k, n in bobs.items() if n} == {"voices": 1, "clone_jobs": 1, "stored_files": 1}
    notices = [m for m in world.emu.channel_messages() if str(alice.id) in m.content]
    assert notices == []


@pytest.mark.env(SAY_COOLDOWN_SECONDS="60")
async def test_forget_me_empties_what_is_kept_in_memory_for_that_user_only(world: World):
    """Besides the rows: the embedding host's remembered URLs, the speech service's voice-message encodings
    and cooldown, and the clone service's notice samples go for alice; bob keeps his."""
    world.bot.nanogpt.tts_poll_interval = 0.02
    alice, bob = world.user("alice"), world.user("bob")
    tts, embeddings, clones = world.bot.tts, world.bot.embeddings, world.bot.clones
    voices, jobs, keys = {}, {}, {}
    for user in (alice, bob):
        url = world.nano.put_storage(f"emb/{user.id}.safetensors", EMBEDDING, "application/octet-stream")
        voices[user.id] = await insert_qwen_voice(world.db, user.id, "Mine", embedding_url=url, now=world.clock.now())
        said = await world.emu.slash(user, "say", options={"text": f"hello from {user.id}", "voice": "Mine",
                                                           "voice_message": True})
        await said.wait_final(10)
        keys[user.id] = set(await world.db.cache.user_keys(user.id))
        # A finished clone whose notice is still to be delivered keeps its sample (speech in the new voice).
        jobs[user.id] = (await world.db.jobs.for_voice(user.id, voices[user.id])).id
        clones._samples[jobs[user.id]] = (b"sample of " + str(user.id).encode(), "audio/mpeg")
    for user in (alice, bob):
        assert keys[user.id] and keys[user.id] <= set(tts._voice_messages), "the voice message was not kept"
        assert voices[user.id] in embeddings._last_url and user.id in tts.cooldown._last

    _, message = await run(world, alice, None, command="forget-me")
    await press(world, alice, message, "Delete everything")
    await world.emu.wait_until(lambda: world.emu.messages[message.id].content.startswith("Done"), 5,
                               "the forget-me result")

    assert not keys[alice.id] & set(tts._voice_messages) and keys[bob.id] <= set(tts._voice_messages)
    assert voices[alice.id] not in embeddings._last_url and voices[alice.id] not in embeddings._checks
    assert voices[bob.id] in embeddings._last_url
    assert jobs[alice.id] not in clones._samples and jobs[bob.id] in clones._samples
    assert alice.id not in tts.cooldown._last and bob.id in tts.cooldown._last


# -- durable Qwen voices ----------------------------------------------------------------------------


async def test_start_up_warning_without_durable_storage(world: World):
    assert any(NO_DURABLE_STORAGE_WARNING in line and line.startswith("WARNING") for line in world.logs)
    assert world.bot.embeddings.durable is False and world.bot.embeddings.server is None


async def test_qwen_voice_keeps_speaking_after_the_provider_copy_404s_and_a_restart(world: World):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    await world.restart(PUBLIC_BASE_URL=base, HTTP_PORT=str(port))
    assert not any(NO_DURABLE_STORAGE_WARNING in line for line in world.logs[-50:])
    world.bot.nanogpt.tts_poll_interval = 0.02
    alice = world.user("alice")
    url = world.nano.put_storage("embeddings/run-x/speaker-embedding.safetensors", EMBEDDING,
                                 "application/octet-stream")
    await insert_qwen_voice(world.db, alice.id, "Grandma", embedding_url=url, now=world.clock.now())

    say = await world.emu.slash(alice, "say", options={"text": "first words", "voice": "Grandma"})
    reply = await say.wait_final(10)
    assert reply.files and world.nano.tts_requests[-1]["speaker_voice_embedding_file_url"] == url

    world.nano.expire_storage(url)
    await world.restart()
    world.bot.nanogpt.tts_poll_interval = 0.02
    say = await world.emu.slash(alice, "say", options={"text": "still my voice", "voice": "Grandma"})
    reply = await say.wait_final(10)
    assert reply.files, reply
    sent = world.nano.tts_requests[-1]["speaker_voice_embedding_file_url"]
    assert sent.startswith(f"{base}/embeddings/") and sent.endswith("/speaker-embedding.safetensors")
    assert world.nano.embedding_fetches[-1] == (sent, 200)

    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/healthz") as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "ok"
        async with session.get(sent) as resp:
            assert resp.status == 200 and await resp.read() == EMBEDDING
        token = sent.split("/embeddings/")[1].split("/")[0]
        assert len(token) >= 43
        for path in ("/embeddings/", "/embeddings", f"/embeddings/{token}/", f"/embeddings/{'A' * 43}/x",
                     f"/embeddings/{token[:-2]}xx/speaker-embedding.safetensors"):
            async with session.get(base + path) as resp:
                assert resp.status == 404, path


async def test_embedding_channel_rehosting_and_refresh(world: World):
    channel = world.emu.add_channel("nanovoice-storage")
    channel_id = int(channel["id"])
    await world.restart(EMBEDDING_CHANNEL_ID=str(channel_id))
    assert world.bot.embeddings.durable
    world.bot.nanogpt.tts_poll_interval = 0.02
    alice = world.user("alice")
    url = world.nano.put_storage("embeddings/run-y/speaker-embedding.safetensors", EMBEDDING,
                                 "application/octet-stream")
    voice_id = await insert_qwen_voice(world.db, alice.id, "Grandma", embedding_url=url, now=world.clock.now())

    world.clock.advance(6 * DAY + 60)  # the provider's copy is near its 7 days: re-host it
    sync_emulator_clock(world)
    reply = await (await world.emu.slash(alice, "say", options={"text": "one", "voice": "Grandma"})).wait_final(10)
    assert reply.files
    [stored] = world.emu.channel_messages(channel_id)
    assert [(f.filename, f.data) for f in stored.files] == [("speaker-embedding.safetensors", EMBEDDING)]
    sent = world.nano.tts_requests[-1]["speaker_voice_embedding_file_url"]
    assert sent == stored.attachments[0]["url"] and "/cdn/" in sent and "ex=" in sent
    assert world.nano.embedding_fetches[-1] == (sent, 200)

    # 23.5 hours later the signed URL is within an hour of its expiry: re-fetch the message.
    world.clock.advance(23.5 * 3600)
    sync_emulator_clock(world)
    mark = world.emu.mark()
    reply = await (await world.emu.slash(alice, "say", options={"text": "two", "voice": "Grandma"})).wait_final(10)
    assert reply.files
    assert world.emu.find_requests("GET", rf"/channels/{channel_id}/messages/{stored.id}$", since=mark)
    refreshed = world.nano.tts_requests[-1]["speaker_voice_embedding_file_url"]
    assert refreshed != sent and world.nano.embedding_fetches[-1] == (refreshed, 200)
    assert len(world.emu.channel_messages(channel_id)) == 1  # refreshed, not uploaded again

    # Deleting the voice deletes the copy in the channel.
    _, message = await run(world, alice, "delete", {"name": "Grandma"})
    await press(world, alice, message, "Delete")
    await world.emu.wait_until(lambda: stored.id in world.emu.deleted_messages, 5, "the re-hosted copy deleted")
    assert await world.db.voices.get(alice.id, voice_id) is None
