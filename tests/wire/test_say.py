"""/say, "Speak this message" and voice messages over the wire: the real bot (discord.py's REST
client, webhook adapter, gateway and command tree) against the Discord emulator and the fake NanoGPT.

Assertions are on what a user or NanoGPT would observe: the messages in the emulator, the requests
and charges at the fake NanoGPT.
"""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
from dataclasses import dataclass
from decimal import Decimal

import pytest

from tests.fakes.discord import SEND_MESSAGES, DiscordEmulator, EmuInteraction, EmuMessage
from tests.fakes.nanogpt import FakeNanoGPT, fake_safetensors, make_tone
from tests.fixtures_bot import World
from tests.fixtures_db import add_minimax_voice, add_qwen_voice, ledger_rows

pytest_plugins = ["tests.fixtures_nanogpt", "tests.fixtures_bot"]

MINIMAX_ID = "nv7Narrator01"
EMBEDDING = fake_safetensors()
MENTION = re.compile(r"<@!?&?\d+>|@everyone|@here")


@dataclass
class Live:
    """The lead's ``world`` plus /say helpers."""

    world: World

    @property
    def emu(self) -> DiscordEmulator:
        return self.world.emu

    @property
    def fake(self) -> FakeNanoGPT:
        return self.world.nano

    @property
    def bot(self):
        return self.world.bot

    @property
    def db(self):
        return self.world.db

    async def say(self, user, text: str, **options) -> EmuInteraction:
        return await self.emu.slash(user, "say", options={"text": text, **options})

    async def answer(self, inter: EmuInteraction, wait: float = 10.0) -> EmuMessage:
        """The final (non-"thinking…") original response."""
        return await inter.wait_final(wait)

    async def add_minimax_voice(self, user_id: int, name: str, voice_id: str = MINIMAX_ID) -> int:
        self.fake.voices[voice_id] = "run-1"
        return await add_minimax_voice(self.db, user_id, name, voice_id=voice_id, guild_id=self.emu.guild_id,
                                       now=self.bot.clock.now())

    async def add_qwen_voice(self, user_id: int, name: str, transcript: str | None) -> tuple[int, str]:
        url = self.fake.put_storage(f"emb/{secrets.token_hex(4)}.safetensors", EMBEDDING, "application/octet-stream")
        voice_id = await add_qwen_voice(self.db, user_id, name, embedding_url=url, embedding=EMBEDDING,
                                        filename="e.safetensors", transcript=transcript, guild_id=self.emu.guild_id,
                                        now=self.bot.clock.now())
        return voice_id, url


@pytest.fixture
def live(world: World) -> Live:
    world.bot.nanogpt.tts_poll_interval = 0.02  # the fake's TTS tickets are ready at once
    return Live(world)


def attachment_bytes(live: Live, message: EmuMessage) -> list[tuple[str, bytes]]:
    return [(f.filename, f.data) for f in message.files]


# -- voices reaching /tts ------------------------------------------------------------------------------


async def test_stock_voice_replies_with_exact_bytes_quoted_and_without_pings(live):
    alice = live.emu.add_user(name="alice")
    inter = await live.say(alice, "hello there", voice="Kokoro-82m/af_bella")
    reply = await live.answer(inter)
    assert live.fake.tts_requests == [{"text": "hello there", "model": "Kokoro-82m", "voice": "af_bella"}]
    assert attachment_bytes(live, reply) == [("speech.mp3", make_tone(1.0, "mp3"))]
    assert reply.content == f"> hello there\n-# 🔊 Synthetic stock voice “Kokoro-82m/af\\_bella” for {alice.mention}"
    assert not reply.ephemeral and reply.allowed_mentions == {"parse": []} and reply.pinged_user_ids == []


async def test_default_voice_and_fallback_stock_voice(live):
    alice = live.emu.add_user(name="alice")
    await (live.answer(await live.say(alice, "first")))
    assert live.fake.tts_requests[-1] == {"text": "first", "model": "Kokoro-82m", "voice": "af_bella"}
    voice_id = await live.add_minimax_voice(alice.id, "Narrator")
    await live.db.user_settings.set_default_voice(alice.id, voice_id, live.bot.clock.now())
    await live.answer(await live.say(alice, "second"))
    assert live.fake.tts_requests[-1] == {"text": "second", "model": "Minimax-Speech-02-HD", "voice": MINIMAX_ID}


async def test_saved_minimax_voice_with_speed(live):
    alice = live.emu.add_user(name="alice")
    voice_id = await live.add_minimax_voice(alice.id, "Narrator")
    reply = await live.answer(await live.say(alice, "read it", voice="narrator", speed=1.5))
    assert live.fake.tts_requests == [{"text": "read it", "model": "Minimax-Speech-02-HD", "voice": MINIMAX_ID,
                                       "speed": 1.5}]
    assert reply.content == f"> read it\n-# 🔊 Synthetic voice “Narrator” for {alice.mention} · 1.5× speed"
    assert (await live.db.voices.get(alice.id, voice_id)).last_used_at is not None


async def test_saved_qwen_voice_sends_embedding_and_transcript(live):
    alice = live.emu.add_user(name="alice")
    _, url = await live.add_qwen_voice(alice.id, "Me", "the reference words")
    reply = await live.answer(await live.say(alice, "in my voice", voice="Me"))
    assert live.fake.tts_requests == [{"text": "in my voice", "model": "Qwen-3-TTS-1.7B",
                                       "speaker_voice_embedding_file_url": url,
                                       "reference_text": "the reference words"}]
    assert reply.files[0].filename == "speech.mp3"


@pytest.mark.parametrize(("mode", "fmt"), [("bytes", "mp3"), ("url", "wav"), ("ticket", "mp3")])
async def test_three_response_forms(live, mode, fmt):
    live.fake.tts_mode, live.fake.tts_format = mode, fmt
    reply = await live.answer(await live.say(live.emu.add_user(name="alice"), f"form {mode}"))
    assert attachment_bytes(live, reply) == [(f"speech.{fmt}", make_tone(1.0, fmt))]


# -- errors the user sees ----------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "body", "headers", "sentence"), [
    (401, None, None, "The bot's NanoGPT key was rejected; please tell the bot's operator."),
    (402, {"error": "Insufficient balance", "status": 402}, None,
     "The bot's NanoGPT balance is too low; please tell the bot's operator."),
    (429, None, {"Retry-After": "12"}, "NanoGPT is rate limiting; try again in 12 s."),
])
async def test_nanogpt_errors_show_their_fixed_sentence(live, status, body, headers, sentence):
    live.fake.fail_next("/tts", status, body, headers=headers)
    inter = await live.say(live.emu.add_user(name="alice"), "hello")
    reply = await live.answer(inter)
    assert reply.content == sentence and not reply.files
    # Private: the public "thinking…" placeholder is removed and only alice sees the sentence.
    assert reply.ephemeral and inter.original is None
    assert not [m for m in live.emu.channel_messages() if m.content == sentence]
    if status == 402:
        await live.fake.wait_for("/check-balance")
        await asyncio.wait_for(live.bot.tts.close(), 3)
        assert any("NanoGPT balance too low: $100.00 left" in line for line in live.world.logs)


async def test_content_policy_message(live):
    reply = await live.answer(await live.say(live.emu.add_user(name="alice"), "please say forbidden-content"))
    assert reply.content.startswith("Content rejected by provider.")


# -- cache ---------------------------------------------------------------------------------------------


async def test_cache_hit_makes_no_second_request_or_charge(live):
    alice = live.emu.add_user(name="alice")
    first = await live.answer(await live.say(alice, "cache me"))
    second = await live.answer(await live.say(alice, "cache   me"))  # same once normalised
    assert len(live.fake.tts_requests) == 1 and len(live.fake.charges) == 1
    assert attachment_bytes(live, first) == attachment_bytes(live, second)
    assert len(await ledger_rows(live.db)) == 1


# -- hygiene and mention safety ------------------------------------------------------------------------


async def test_mentions_never_ping_and_become_names(live):
    alice = live.emu.add_user(name="alice")
    bob = live.emu.add_user(name="bob")
    role = live.emu.add_role("Moderators")
    await live.emu.dispatch("GUILD_ROLE_CREATE", {"guild_id": str(live.emu.guild_id), "role": role},
                            guild_id=live.emu.guild_id)
    text = f"@everyone @here hi {bob.mention} and <@&{role['id']}> <:party_time:123456789012345678> https://x.io/a"
    reply = await live.answer(await live.say(alice, text))
    spoken = live.fake.tts_requests[0]["text"]
    assert spoken == "everyone here hi @bob and @Moderators party time link"
    quote, footer = reply.content.split("\n")
    assert not MENTION.search(quote)  # the only mention is the requester's, in the attribution (never a ping)
    assert footer == f"-# 🔊 Synthetic stock voice “Kokoro-82m/af\\_bella” for {alice.mention}"
    assert reply.allowed_mentions == {"parse": []}
    assert reply.pinged_user_ids == [] and reply.data["mention_roles"] == [] and not reply.data["mention_everyone"]


async def test_too_long_text_is_refused_with_the_limit(live):
    inter = await live.say(live.emu.add_user(name="alice"), "x" * 1204)
    response = await inter.wait_response()
    assert response["type"] == 4 and response["data"]["flags"] & 64  # ephemeral, before any defer
    assert response["data"]["content"] == "That text is 1,204 characters; the limit is 1,000."
    assert live.fake.tts_requests == []


@pytest.mark.env(SAY_COOLDOWN_SECONDS="30")
async def test_cooldown_says_when_it_resets(live):
    alice = live.emu.add_user(name="alice")
    await live.answer(await live.say(alice, "one"))
    response = await (await live.say(alice, "two")).wait_response()
    content = response["data"]["content"]
    assert re.fullmatch(r"You're speaking too fast; try again <t:\d+:R>\.", content)
    assert 0 < int(re.search(r"\d+", content).group()) - live.bot.clock.now() <= 31
    assert response["data"]["flags"] & 64
    await live.answer(await live.say(live.emu.add_user(name="bob"), "three"))  # per user
    live.world.clock.advance(30)
    await live.answer(await live.say(alice, "four"))
    assert [r["text"] for r in live.fake.tts_requests] == ["one", "three", "four"]


# -- isolation -----------------------------------------------------------------------------------------


async def test_another_users_voice_is_invisible(live):
    alice = live.emu.add_user(name="alice")
    bob = live.emu.add_user(name="bob")
    await live.add_minimax_voice(alice.id, "Secret Alice")
    reply = await live.answer(await live.say(bob, "hi", voice="secret alice"))
    assert reply.content.startswith("You have no voice named “secret alice”")
    assert reply.ephemeral  # refused before the public defer: only bob sees it
    assert live.fake.tts_requests == []
    for typed in ("", "sec", "alice", "Secret Alice"):
        choices = await live.emu.autocomplete(bob, "say", options={"text": "x"}, focused="voice")
        choices = await live.emu.autocomplete(bob, "say", options={"text": "x", "voice": typed}, focused="voice")
        assert all("Secret" not in c["name"] and "Secret" not in c["value"] for c in choices)
    mine = await live.emu.autocomplete(alice, "say", options={"text": "x", "voice": "sec"}, focused="voice")
    assert mine[0]["value"] == "Secret Alice"
    stock = await live.emu.autocomplete(alice, "say", options={"text": "x", "voice": "bella"}, focused="voice")
    assert "Kokoro-82m/af_bella" in [c["value"] for c in stock] and len(stock) <= 25


# -- voice messages ------------------------------------------------------------------------------------


async def test_voice_message_payload(live):
    alice = live.emu.add_user(name="alice")
    mark = live.emu.mark()
    inter = await live.say(alice, "a real voice message", voice_message=True)
    request = await live.emu.wait_for_request("POST", rf"^/channels/{live.emu.channel_id}/messages$", timeout=10,
                                              since=mark)
    payload = request.payload
    assert payload["flags"] == 8192 and not payload.get("content")
    [part] = request.files
    assert part.content_type == "audio/ogg" and part.data.startswith(b"OggS")
    [entry] = payload["attachments"]
    assert 0.9 < entry["duration_secs"] < 1.2
    waveform = base64.b64decode(entry["waveform"])
    assert 1 <= len(waveform) <= 256 and len(set(waveform)) > 1  # never a flat line
    [message] = [m for m in live.emu.channel_messages() if m.is_voice_message]
    assert message.files[0].content_type == "audio/ogg" and message.allowed_mentions == {"parse": []}
    # The voice message can carry no text, so it replies to the interaction's answer, which says who asked
    # for it and that the voice is synthetic (no ping).
    answer = inter.original
    assert answer is not None and not answer.deleted and not answer.loading and not answer.ephemeral
    assert answer.content == f"🔊 Synthetic stock voice “Kokoro-82m/af\\_bella” for {alice.mention}"
    assert answer.pinged_user_ids == [] and message.pinged_user_ids == []
    assert int(payload["message_reference"]["message_id"]) == answer.id
    assert message.data["message_reference"]["message_id"] == payload["message_reference"]["message_id"]


async def test_voice_message_falls_back_to_a_file_on_50173(live):
    live.emu.refuse_voice_messages[live.emu.channel_id] = True
    alice = live.emu.add_user(name="alice")
    inter = await live.say(alice, "no voice here", voice_message=True)
    await live.emu.wait_until(lambda: inter.original is not None and inter.original.files, 10, "the file answer")
    reply = inter.original
    assert attachment_bytes(live, reply) == [("speech.mp3", make_tone(1.0, "mp3"))]
    assert reply.content == ("> no voice here\n-# Voice messages aren't allowed here, so here is the audio as a file."
                             f"\n-# 🔊 Synthetic stock voice “Kokoro-82m/af\\_bella” for {alice.mention}")
    assert not [m for m in live.emu.channel_messages() if m.is_voice_message]
    # One answer: the attribution line became the file answer (no stray line left behind).
    assert [m.id for m in live.emu.channel_messages()] == [reply.id]


async def test_voice_message_without_permission_sends_a_file(live):
    live.emu.set_member_permissions(live.emu.bot_user, SEND_MESSAGES | (1 << 10) | (1 << 15))
    reply = await live.answer(await live.say(live.emu.add_user(name="alice"), "no perms", voice_message=True))
    assert reply.files[0].filename == "speech.mp3"
    assert not live.emu.find_requests("POST", r"^/channels/\d+/messages$")


# -- speak this message --------------------------------------------------------------------------------


async def test_speak_this_message_uses_the_default_voice_and_cleans(live):
    alice = live.emu.add_user(name="alice")
    bob = live.emu.add_user(name="bob")
    voice_id = await live.add_minimax_voice(alice.id, "Narrator")
    await live.db.user_settings.set_default_voice(alice.id, voice_id, live.bot.clock.now())
    target = await live.emu.create_user_message(None, bob, f"hey {alice.mention} look at https://example.com !!!!!!")
    reply = await live.answer(await live.emu.message_context(alice, "Speak this message", target))
    assert live.fake.tts_requests == [{"text": "hey @alice look at link !!!", "model": "Minimax-Speech-02-HD",
                                       "voice": MINIMAX_ID}]
    quote, footer = reply.content.split("\n")
    assert reply.files[0].filename == "speech.mp3" and not MENTION.search(quote)
    assert footer == f"-# 🔊 Synthetic voice “Narrator” for {alice.mention}" and reply.pinged_user_ids == []


async def test_speak_this_message_without_text(live):
    alice = live.emu.add_user(name="alice")
    target = await live.emu.create_user_message(None, alice, "", embeds=[{"title": "only an embed"}])
    response = await (await live.emu.message_context(alice, "Speak this message", target)).wait_response()
    assert response["data"]["content"] == "That message has no text I can read out."
    assert live.fake.tts_requests == [] and Decimal(0) == live.fake.total_charged


async def test_voice_message_403_falls_back_to_a_file(live):
    # The interaction claims the permission, Create Message disagrees (403 50013): a file instead.
    live.emu.set_member_permissions(live.emu.bot_user, SEND_MESSAGES | (1 << 10) | (1 << 15))
    inter = await live.emu.slash(live.emu.add_user(name="alice"), "say",
                                 options={"text": "refused", "voice_message": True}, app_permissions=(1 << 47) - 1)
    await live.emu.wait_until(lambda: inter.original is not None and inter.original.files, 10, "the file answer")
    reply = inter.original
    assert "-# 🔊 Synthetic stock voice" in reply.content and reply.content.startswith("> refused\n")
    assert attachment_bytes(live, reply) == [("speech.mp3", make_tone(1.0, "mp3"))]
    assert live.emu.find_requests("POST", r"^/channels/\d+/messages$")[0].status == 403


async def test_speech_over_the_upload_limit_says_so(live):
    inter = await live.emu.slash(live.emu.add_user(name="alice"), "say", options={"text": "big"},
                                 attachment_size_limit=1000)
    reply = await live.answer(inter)
    assert reply.content.startswith("The speech came out at") and "upload limit" in reply.content
    assert not reply.files
