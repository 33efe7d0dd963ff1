"""Bad input over the wire: nasty /say texts, hostile voice names, oversized attachments.

The real bot runs against the Discord emulator and the fake NanoGPT with a fixed list of nasty inputs.
Every bad input gets one clear sentence and costs nothing: no request reaches NanoGPT, and an attachment
that is refused for its size is never even downloaded from Discord's CDN. The pure parts (``bot.audio`` on
arbitrary bytes, ``bot.say_text`` text hygiene) are fuzzed with Hypothesis in
``tests/unit/test_robustness_input.py``.
"""

from __future__ import annotations

import random
import re

import pytest

from tests.fakes.discord import EmuInteraction, EmuMessage
from tests.fixtures_bot import World
from tests.fixtures_db import add_minimax_voice, table_count
from tests.unit.test_robustness_input import FRAGMENTS, ID, RAW_MENTION, assert_sentence, invisible

SAY_MAX_CHARS = 1000  # the default
MIB = 1024 * 1024


# -- /say over the wire with a fixed list of nasty texts ------------------------------------------------


def nasty_texts(bob_id: int, role_id: int, channel_id: int) -> list[str]:
    rng = random.Random(20240611)  # a fixed seed: the same "random" texts on every run
    generated = ["".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(5, 30))) for _ in range(6)]
    return [
        "\u200b\u200c\u200d\ufeff\u2060",  # only zero-width characters
        "hello \u202eworld\u202c and \u2066isolated\u2069",  # RTL override and isolates
        "😀" * 2000,  # far over the limit
        "😀" * 999 + "a",
        f"@everyone @here hi <@{bob_id}> <@!{bob_id}> <@&{role_id}> <#{channel_id}> and @@everyone @@here",
        "**bold** __under__ ~~gone~~ ||secret|| `code` ```py\nprint('x')\n``` > quote\n# Title\n-# small",
        "nul\x00bytes\x00inside\x07 and a bell",
        "a " * 500,  # exactly the limit
        "b" * 1001,  # one over
        "[click me](https://evil.example/steal) https://x.y/z www.foo.bar",
        "h" + "\u0301" * 60 + "i zalgo",
        "line\n" * 150,
        f"</say:{ID}> at <t:99999999999999:R> on <t:0:F> in <id:customize>",
        "   \t  \n  ",
        "'; DROP TABLE tts_cache; -- \" OR 1=1",
        "مرحبا بالعالم שלום עולם",
        f"<a:dance:{ID}> <:party_time:{ID}> @everyone",
        *generated,
    ]


async def say(world: World, user, text: str) -> EmuInteraction:
    return await world.emu.slash(user, "say", options={"text": text})


def assert_no_pings_anywhere(world: World) -> None:
    """No message the bot ever wrote (any version of it, deleted or not) notified anyone."""
    messages = [*world.emu.messages.values(), *world.emu.deleted_messages.values()]
    for message in messages:
        if message.author_id != world.emu.bot_user_id:
            continue
        for version in (*message.history, message.data):
            assert version.get("mentions", []) == [], (message, version.get("content"))
            assert version.get("mention_roles", []) == [], (message, version.get("content"))
            assert not version.get("mention_everyone"), (message, version.get("content"))
        assert message.allowed_mentions == {"parse": []}, (message, message.allowed_mentions)


async def test_nasty_say_texts_get_speech_or_one_sentence_and_nanogpt_gets_clean_text(world: World):
    alice, bob = world.user("alice"), world.user("bob")
    role = world.emu.add_role("Moderators")
    await world.emu.dispatch("GUILD_ROLE_CREATE", {"guild_id": str(world.emu.guild_id), "role": role},
                             guild_id=world.emu.guild_id)
    failures = []
    for text in nasty_texts(bob.id, int(role["id"]), world.emu.channel_id):
        before = len(world.nano.tts_requests)
        inter = await say(world, alice, text)
        final = await inter.wait_final(10)
        sent = world.nano.tts_requests[before:]
        if final.files:
            assert [f.filename for f in final.files] == ["speech.mp3"], final
            assert final.content.startswith("> "), final
            assert len(final.content) <= 2000
            assert len(sent) <= 1  # at most one paid call (a repeated text is served from the cache)
        else:
            assert_sentence(final.content)
            assert sent == [], (text, final.content)
        for body in sent:
            spoken = body["text"]
            problems = []
            if RAW_MENTION.search(spoken):
                problems.append(f"raw mention {RAW_MENTION.search(spoken).group()!r}")
            if invisible(spoken):
                problems.append(f"invisible characters {invisible(spoken)}")
            if len(spoken) > SAY_MAX_CHARS:
                problems.append(f"{len(spoken)} characters")
            if problems:
                failures.append(f"{text[:60]!r} → NanoGPT got {spoken[:80]!r}: {', '.join(problems)}")
    assert not failures, "\n".join(failures)
    assert_no_pings_anywhere(world)


async def test_limit_is_stated_for_over_long_text(world: World):
    final = await (await say(world, world.user("alice"), "😀" * 2000)).wait_final(10)
    assert final.content == "That text is 2,000 characters; the limit is 1,000."
    assert world.nano.requests == []


async def test_text_that_grows_when_cleaned_never_reaches_nanogpt_over_the_limit(world: World):
    """Mentions and timestamps are spoken as names and dates, which can be longer than what was typed:
    the spoken text must still respect SAY_MAX_CHARS (the cost cap)."""
    alice = world.user("alice")
    role = world.emu.add_role(("Very Important Moderators Of This Server " * 3)[:100])
    await world.emu.dispatch("GUILD_ROLE_CREATE", {"guild_id": str(world.emu.guild_id), "role": role},
                             guild_id=world.emu.guild_id)
    mention = f"<@&{role['id']}>"
    for text in ("<t:0>" * 200, mention * (SAY_MAX_CHARS // len(mention))):
        assert len(text) <= SAY_MAX_CHARS
        final = await (await say(world, alice, text)).wait_final(10)
        if not final.files:
            assert_sentence(final.content)
    too_long = [len(r["text"]) for r in world.nano.tts_requests if len(r["text"]) > SAY_MAX_CHARS]
    assert not too_long, f"NanoGPT was sent {too_long} characters with SAY_MAX_CHARS={SAY_MAX_CHARS}"


# -- voice names ----------------------------------------------------------------------------------------

BAD_NAMES = {
    "zero-width space": "Zero\u200bWidth",
    "zero-width joiner": "Zero\u200dJoiner",
    "byte order mark": "\ufeffBOM",
    "right-to-left override": "evil\u202egnp.exe",
    "left-to-right isolate": "iso\u2066late\u2069",
    "newline": "two\nlines",
    "null byte": "nul\x00l",
    "escape": "esc\x1b[31mred",
    "line separator": "line\u2028sep",
    "hangul filler": "\u3164",
    "only spaces": "   ",
    "too long": "x" * 33,
}


def cdn_downloads(world: World, since: int) -> list:
    return world.emu.find_requests("GET", r"^/cdn/", since=since)


async def test_hostile_clone_names_are_refused_before_download_and_money(world: World, audio_corpus):
    alice = world.user("alice")
    data = audio_corpus("mp3", 12)
    mark = world.emu.mark()
    for label, name in BAD_NAMES.items():
        attachment = world.emu.add_attachment(data, "clip.mp3", "audio/mpeg")
        inter = await world.emu.slash(alice, "voice", subcommand="clone", validate=False,
                                      options={"audio": attachment, "name": name, "provider": "minimax"})
        final = await inter.wait_final(10)
        assert_sentence(final.content)
        assert not final.components and not final.embeds, label
    assert world.nano.requests == []
    assert cdn_downloads(world, mark) == []  # the name is checked before the recording is fetched
    assert await world.db.jobs.for_user(alice.id) == []


async def test_hostile_names_through_the_context_menu_modal(world: World, audio_corpus):
    alice = world.user("alice")
    attachment = world.emu.add_attachment(audio_corpus("mp3", 12), "clip.mp3", "audio/mpeg")
    message = await world.emu.create_user_message(None, alice, attachments=[attachment])
    mark = world.emu.mark()
    for name in ("evil\u202egnp", "zero\u200bwidth", "nul\x00l"):
        menu = await world.emu.message_context(alice, "Clone this voice", message)
        await menu.wait_response()
        modal = world.emu.last_modal(menu.token)
        submitted = await world.emu.submit_modal(alice, modal["custom_id"],
                                                 {"clone:name": name, "clone:provider": ["qwen"]})
        assert_sentence((await submitted.wait_final(10)).content)
    assert world.nano.requests == [] and cdn_downloads(world, mark) == []


async def add_voice(world: World, user_id: int, name: str, voice_id: str) -> int:
    return await add_minimax_voice(world.db, user_id, name, voice_id=voice_id, guild_id=world.emu.guild_id,
                                   now=world.clock.now())


async def voice_command(world: World, user, sub: str, **options) -> EmuMessage:
    inter = await world.emu.slash(user, "voice", subcommand=sub, options=options, validate=False)
    return await inter.wait_final(10)


async def test_hostile_new_names_in_rename_are_refused(world: World):
    alice = world.user("alice")
    await add_voice(world, alice.id, "Mine", "nv1alice0001")
    for label, name in BAD_NAMES.items():
        final = await voice_command(world, alice, "rename", name="Mine", new_name=name)
        assert_sentence(final.content)
        assert final.content.startswith(("Voice names", "Your voice is already")), (label, final.content)
    assert [v.name for v in await world.db.voices.list(alice.id)] == ["Mine"]
    assert world.nano.requests == []


SQL_NAMES = ["'; DROP TABLE voices; --", "Robert'); DELETE FROM voices;--", "\" OR \"1\"=\"1", "%", "_", "a%",
             "Mine' OR '1'='1", "x\\", "[]*?"]


def as_shown(markdown: str) -> str:
    """What Discord shows for ``markdown`` whose punctuation is backslash-escaped: the characters themselves."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown)


async def test_sql_metacharacters_are_just_characters(world: World, audio_corpus):
    alice, bob = world.user("alice"), world.user("bob")
    # A clone with such a name reaches the consent card with the name as typed, and costs nothing until confirmed.
    attachment = world.emu.add_attachment(audio_corpus("mp3", 4), "clip.mp3", "audio/mpeg")
    inter = await world.emu.slash(alice, "voice", subcommand="clone",
                                  options={"audio": attachment, "name": SQL_NAMES[0], "provider": "qwen"})
    card = await inter.wait_final(10)
    assert card.embeds and SQL_NAMES[0] in as_shown(card.embeds[0]["title"]), card
    assert world.nano.requests == []
    await add_voice(world, alice.id, "Mine", "nv1alice0001")
    await add_voice(world, bob.id, "Abc", "nv1bob00001")
    await add_voice(world, bob.id, "Mine", "nv1bob00002")
    # Wildcards and quotes never find anything they don't spell exactly.
    for name in ("%", "_", "M%", "Min_", "' OR '1'='1", "Mine' --", "Abc"):
        final = await voice_command(world, alice, "info", name=name)
        assert final.content.startswith("You have no voice called"), (name, final.content)
    # Renaming to each of them works and stores the text as typed.
    current = "Mine"
    for name in SQL_NAMES:
        final = await voice_command(world, alice, "rename", name=current, new_name=name)
        assert final.content.startswith("Renamed"), (name, final.content)
        assert [v.name for v in await world.db.voices.list(alice.id)] == [name]
        info = await voice_command(world, alice, "info", name=name)
        assert info.embeds, (name, info.content)
        current = name
    # Nothing else moved: bob's voices are untouched, every table is still there.
    assert sorted(v.name for v in await world.db.voices.list(bob.id)) == ["Abc", "Mine"]
    assert await table_count(world.db, "voices") == 3
    assert_no_pings_anywhere(world)


# -- oversized attachments --------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "upload_limit", "shown_limit"), [
    (21 * MIB, 100 * MIB, "20"),  # over the 20 MB NanoGPT cap, in a boosted server
    (9 * MIB, 8 * MIB, "8"),  # over this interaction's upload limit
    (20 * MIB + 1, 500 * MIB, "20"),  # one byte over
])
async def test_oversized_recordings_are_refused_without_download_or_money(world: World, size: int,
                                                                          upload_limit: int, shown_limit: str):
    alice = world.user("alice")
    attachment = world.emu.add_attachment(b"\xff\xfb\x90\x64" + bytes(size - 4), "huge.mp3", "audio/mpeg")
    mark = world.emu.mark()
    inter = await world.emu.slash(alice, "voice", subcommand="clone", attachment_size_limit=upload_limit,
                                  options={"audio": attachment, "name": "Huge", "provider": "qwen"})
    final = await inter.wait_final(10)
    assert_sentence(final.content)
    assert f"the limit is {shown_limit}" in final.content, final.content
    assert cdn_downloads(world, mark) == []
    assert world.nano.requests == []
    assert await world.db.jobs.for_user(alice.id) == []


async def test_oversized_voice_message_through_the_context_menu(world: World):
    alice = world.user("alice")
    attachment = world.emu.add_attachment(b"OggS" + bytes(21 * MIB), "voice-message.ogg", "audio/ogg",
                                          duration_secs=600.0, waveform=bytes(range(0, 200, 4)))
    message = await world.emu.create_user_message(None, alice, attachments=[attachment], flags=8192)
    mark = world.emu.mark()
    menu = await world.emu.message_context(alice, "Clone this voice", message, attachment_size_limit=100 * MIB)
    await menu.wait_response()
    modal = world.emu.last_modal(menu.token)
    submitted = await world.emu.submit_modal(alice, modal["custom_id"],
                                             {"clone:name": "Big", "clone:provider": ["qwen"]})
    final = await submitted.wait_final(10)
    assert_sentence(final.content)
    assert "limit" in final.content
    assert cdn_downloads(world, mark) == [] and world.nano.requests == []
