"""Security over the wire: the real bot against the Discord emulator and the fake NanoGPT.

* Isolation: another user's voice is never resolvable through any command, autocomplete or context
  menu, and NanoGPT never receives one user's voice on another user's behalf.
* Secrets: after a busy run (speech, clones, NanoGPT errors that echo the key, an unexpected error),
  neither the Discord token nor the NanoGPT key is in any log line or traceback, any Discord message,
  any request to a host that is not NanoGPT's API, or the database file.
* Mentions: ``@everyone``, role and user mentions in text and in voice names never ping anyone.
* ``PUBLIC_BASE_URL``: embedding URLs are unguessable capability URLs; nothing is listable and path
  tricks get 404.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets

import aiohttp
import pytest

from tests.fakes.discord import EmuInteraction, EmuMessage
from tests.fakes.nanogpt import Step
from tests.fixtures_bot import World
from tests.fixtures_db import add_minimax_voice

QUICK = [Step("processing", poll_after=0.05), Step("completed")]
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{43,}$")


# -- helpers ----------------------------------------------------------------------------------------------


def card_embed(message: EmuMessage | None) -> dict:
    return message.embeds[0] if message is not None and message.embeds else {}


def buttons(message: EmuMessage) -> dict[str, dict]:
    found = {}
    for row in message.components:
        for c in row.get("components", []):
            if c.get("type") == 2:
                found[c.get("label")] = c
    return found


async def wait_ready(world: World, inter: EmuInteraction, timeout: float = 15.0) -> EmuMessage:  # noqa: ASYNC109
    await world.emu.wait_until(lambda: card_embed(inter.original).get("title", "").startswith("Voice "), timeout,
                               "the clone to be ready")
    return inter.original


async def clone(world: World, user, data: bytes, name: str, provider: str = "qwen", *,
                confirm: bool = False) -> EmuInteraction:
    attachment = world.emu.add_attachment(data, "clip.mp3", "audio/mpeg")
    inter = await world.emu.slash(user, "voice", subcommand="clone",
                                  options={"audio": attachment, "name": name, "provider": provider})
    if confirm:
        await world.emu.wait_until(lambda: inter.original is not None and "Confirm" in buttons(inter.original), 10,
                                   "the consent card")
        await world.emu.click(user, inter.original, buttons(inter.original)["Confirm"]["custom_id"])
    return inter


async def final(world: World, user, command: str, sub: str | None = None, **options) -> EmuMessage:
    inter = await world.emu.slash(user, command, subcommand=sub, options=options, validate=False)
    return await inter.wait_final(10)


def text_of(message: EmuMessage) -> str:
    return json.dumps({"content": message.content, "embeds": message.embeds, "components": message.components},
                      ensure_ascii=False)


# -- isolation --------------------------------------------------------------------------------------------


@pytest.mark.env(CLONE_CONFIRM="false")
async def test_another_users_voice_is_never_resolvable(world: World, audio_corpus):
    world.bot.nanogpt.tts_poll_interval = 0.02
    world.nano.clone_script = QUICK
    alice, bob = world.user("alice"), world.user("bob")
    await wait_ready(world, await clone(world, alice, audio_corpus("mp3", 12), "Alice Secret", "minimax"))
    await wait_ready(world, await clone(world, alice, audio_corpus("mp3", 4), "Alice Qwen"))
    secret = await world.db.voices.by_name(alice.id, "alice secret")
    qwen = await world.db.voices.by_name(alice.id, "alice qwen")
    assert (await final(world, alice, "voice", "default", name="Alice Secret")).content.startswith("“Alice Secret”")
    alice_message = await world.emu.create_user_message(None, alice, "hello from alice, read me out")
    alice_ids = {secret.provider_voice_id}
    mark = len(world.nano.requests)

    # /say with every spelling of alice's voices, and their provider ids.
    for typed in ("Alice Secret", "alice secret", " ALICE SECRET ", "Alice Qwen", secret.provider_voice_id):
        reply = await final(world, bob, "say", text="let me borrow it", voice=typed)
        assert not reply.files and reply.content.startswith("You have no voice named"), (typed, reply.content)
    # Management commands.
    for sub, options in (("info", {"name": "Alice Secret"}), ("rename", {"name": "Alice Secret", "new_name": "Bob"}),
                         ("delete", {"name": "alice secret"}), ("default", {"name": "Alice Qwen"}),
                         ("info", {"name": secret.provider_voice_id})):
        reply = await final(world, bob, "voice", sub, **options)
        assert reply.content.startswith("You have no voice called") and not reply.components, (sub, reply.content)
    for sub in ("list", "jobs"):
        reply = await final(world, bob, "voice", sub)
        assert "Alice" not in text_of(reply) and secret.provider_voice_id not in text_of(reply), sub
    # Autocomplete of every voice option.
    for typed in ("", "a", "alice", "secret", "qwen", secret.provider_voice_id, "nv"):
        choices = await world.emu.autocomplete(bob, "say", options={"text": "x", "voice": typed}, focused="voice")
        for sub in ("info", "rename", "delete", "default"):
            choices += await world.emu.autocomplete(bob, "voice", sub, options={"name": typed}, focused="name")
        shown = json.dumps(choices)
        assert "Alice" not in shown and secret.provider_voice_id not in shown, (typed, choices)
    # "Speak this message" on alice's message speaks in bob's (stock) voice, not alice's default.
    spoken = await (await world.emu.message_context(bob, "Speak this message", alice_message)).wait_final(10)
    assert spoken.files
    # Bob's own default cannot be set to alice's voice, so his /say stays on the stock voice.
    assert (await final(world, bob, "say", text="my own voice")).files

    sent = [r.json for r in world.nano.requests[mark:] if r.path == "/tts"]
    assert sent, "bob's speech reached NanoGPT"
    for body in sent:
        assert body.get("voice") not in alice_ids, body
        assert "speaker_voice_embedding_file_url" not in body, body
        assert body["model"] == "Kokoro-82m", body
    # Alice's voices are exactly as she left them.
    assert sorted(v.name for v in await world.db.voices.list(alice.id)) == ["Alice Qwen", "Alice Secret"]
    assert (await world.db.user_settings.default_voice(alice.id)).id == secret.id
    assert await world.db.voices.list(bob.id) == [] and await world.db.user_settings.default_voice(bob.id) is None
    assert qwen.embedding_file_id is not None


async def test_a_minimax_voice_id_cannot_be_borrowed_as_a_stock_voice(world: World):
    """A cloned MiniMax voice is alice's, even if bob learns its id (alice's /voice info shows it):
    writing it as a stock voice ``model/voice`` must not make NanoGPT speak in it for bob."""
    alice, bob = world.user("alice"), world.user("bob")
    voice_id = "nv7" + secrets.token_hex(8)
    world.nano.voices[voice_id] = "run-alice"
    await add_minimax_voice(world.db, alice.id, "Alice Secret", voice_id=voice_id, guild_id=world.emu.guild_id,
                            now=world.clock.now())
    for model in ("Minimax-Speech-02-HD", "minimax-speech-02-hd", "Minimax-Speech-2.8-Turbo"):
        reply = await final(world, bob, "say", text="borrowed voice", voice=f"{model}/{voice_id}")
        assert not reply.files, f"bob spoke in alice's voice through {model}/{voice_id}"
    assert all(r.get("voice") != voice_id for r in world.nano.tts_requests), world.nano.tts_requests


# -- secrets ----------------------------------------------------------------------------------------------


def _request_blobs_emulator(request) -> tuple[str, bytes]:
    headers = "\n".join(f"{k}: {v}" for k, v in request.headers.items() if k.lower() != "authorization")
    meta = f"{request.method} {request.raw_path}?{json.dumps(request.query)}\n{headers}"
    return meta, request.body


@pytest.mark.allow_unexpected_errors
@pytest.mark.env(CLONE_CONFIRM="false")
async def test_secrets_never_leave_their_place(world: World, audio_corpus, monkeypatch):
    discord_token, api_key = world.emu.token, world.nano.api_key
    world.bot.nanogpt.tts_poll_interval = 0.02
    world.bot.nanogpt.backoff_base = 0.01
    world.nano.clone_script = QUICK
    alice = world.user("alice")

    # Speech in every response form, including a download from third-party storage.
    for mode in ("bytes", "url", "ticket"):
        world.nano.tts_mode = mode
        assert (await final(world, alice, "say", text=f"speech as {mode}")).files
    world.nano.tts_mode = "bytes"
    # NanoGPT errors whose bodies echo the key back.
    world.nano.fail_next("/tts", 401, {"error": {"message": f"Invalid API key {api_key}", "type": "auth"}})
    rejected = await final(world, alice, "say", text="with a revoked key")
    assert rejected.content == "The bot's NanoGPT key was rejected; please tell the bot's operator."
    world.nano.fail_next("/tts", 500, f"upstream crashed handling Bearer {api_key}")
    assert (await final(world, alice, "say", text="upstream down")).content.startswith("NanoGPT is not answering")
    world.nano.fail_next("/tts", 400, {"error": {"message": f"bad request for key {api_key}", "type": "x"}})
    refused = await final(world, alice, "say", text="bad request")
    assert api_key not in refused.content and refused.content.startswith("NanoGPT refused the request")
    # A clone that completes (embedding downloaded from storage), and one refused with 401.
    await wait_ready(world, await clone(world, alice, audio_corpus("mp3", 4), "Kept"))
    world.nano.fail_next("/voice-clone/qwen", 401, {"error": f"key {api_key} is not valid"})
    told = await (await clone(world, alice, audio_corpus("mp3", 4), "Refused")).wait_final(10)
    assert "key was rejected" in told.content
    # An unexpected error: a short apology with an id, the traceback in the log.
    async def broken(*_args, **_kwargs):
        raise RuntimeError(f"database exploded near {world.database_path}")
    monkeypatch.setattr(world.bot.db.voices, "list", broken)
    apology = await final(world, alice, "voice", "list")
    error_id = re.search(r"error id `([0-9a-f]+)`", apology.content).group(1)
    assert any(error_id in line and "Traceback" in line for line in world.logs)
    monkeypatch.undo()
    assert (await final(world, alice, "usage")).embeds
    await asyncio.sleep(0.2)

    # 1. Every log line of the run, with tracebacks.
    leaking = [line[:200] for line in world.logs if discord_token in line or api_key in line]
    assert not leaking, leaking
    # 2. Every Discord message and every version of it.
    for message in [*world.emu.messages.values(), *world.emu.deleted_messages.values()]:
        for version in (*message.history, message.data):
            blob = json.dumps(version, ensure_ascii=False)
            assert discord_token not in blob and api_key not in blob, message
        for file in message.files:
            assert discord_token.encode() not in file.data and api_key.encode() not in file.data
    # 3. Requests to Discord never carry the NanoGPT key; the bot token only as the Authorization header.
    for request in world.emu.requests:
        meta, body = _request_blobs_emulator(request)
        assert api_key not in meta and api_key.encode() not in body, request.path
        assert discord_token not in meta and discord_token.encode() not in body, request.path
        assert api_key not in request.headers.get("Authorization", "")
    # On the gateway the token is sent only to identify or resume.
    sent = [p for d, p in world.emu.gateway_log if d == "in" and p.get("op") not in (2, 6)]
    assert all(discord_token not in json.dumps(p) for p in sent)
    # 4. NanoGPT never sees the Discord token; its storage (a third-party host) never sees any credential.
    storage = [r for r in world.nano.requests if r.path.startswith("/storage/")]
    assert len(storage) >= 2  # the audioUrl and the speaker embedding were downloaded
    for request in world.nano.requests:
        blob = json.dumps({"h": request.headers, "q": request.query, "j": request.json, "f": request.form},
                          default=str, ensure_ascii=False)
        assert discord_token not in blob, request.path
        files = b"".join(f.data for f in request.files)
        assert discord_token.encode() not in files and api_key.encode() not in files
        without_auth = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        assert api_key not in json.dumps([without_auth, request.query, request.json, request.form], default=str)
        if request.path.startswith("/storage/"):
            assert not {"authorization", "x-api-key", "cookie"} & {k.lower() for k in request.headers}
    assert not world.nano.credential_leaks
    # 5. Nothing secret is written to the database.
    await world.stop()
    for path in world.database_path.parent.glob(world.database_path.name + "*"):
        data = path.read_bytes()
        assert discord_token.encode() not in data and api_key.encode() not in data, path.name
    await world.start()


# -- mentions ---------------------------------------------------------------------------------------------


def assert_no_pings(world: World, allowed: dict[int, int]) -> None:
    """No message the bot wrote pinged anyone, except channel notices (``message id → owner id``)."""
    for message in [*world.emu.messages.values(), *world.emu.deleted_messages.values()]:
        if message.author_id != world.emu.bot_user_id:
            continue
        for version in (*message.history, message.data):
            mentioned = [int(u["id"]) for u in version.get("mentions", [])]
            expected = [allowed[message.id]] if message.id in allowed else []
            assert mentioned in ([], expected), (message, version.get("content"))
            assert version.get("mention_roles", []) == [], (message, version.get("content"))
            assert not version.get("mention_everyone"), (message, version.get("content"))


async def test_mentions_in_text_and_voice_names_never_ping(world: World, audio_corpus):
    world.bot.nanogpt.tts_poll_interval = 0.02
    world.nano.clone_script = QUICK
    alice, bob = world.user("alice"), world.user("bob")
    role = world.emu.add_role("Moderators")
    await world.emu.dispatch("GUILD_ROLE_CREATE", {"guild_id": str(world.emu.guild_id), "role": role},
                             guild_id=world.emu.guild_id)
    names = ["@everyone @here", f"<@{bob.id}>", f"<@&{role['id']}>"]
    clip = audio_corpus("mp3", 4)
    first = await clone(world, alice, clip, names[0])
    await world.emu.wait_until(lambda: first.original is not None and "Confirm" in buttons(first.original), 10,
                               "the consent card")
    # Bob presses alice's Confirm: refused, naming alice without pinging her.
    intruder = await world.emu.click(bob, first.original, buttons(first.original)["Confirm"]["custom_id"])
    await intruder.wait_response()
    await world.emu.click(alice, first.original, buttons(first.original)["Confirm"]["custom_id"])
    await wait_ready(world, first)
    await wait_ready(world, await clone(world, alice, clip, names[1], confirm=True))
    # The third finishes after the interaction token died: the notice goes to the channel, pinging alice only.
    world.nano.clone_script = [Step("processing", poll_after=0.3), Step("completed")]
    third = await clone(world, alice, clip, names[2], confirm=True)
    await world.emu.wait_until(lambda: "State" in json.dumps(card_embed(third.original)), 10, "the status card")
    world.clock.advance(16 * 60)
    world.emu.clock_offset = 16 * 60

    def notices() -> list[EmuMessage]:
        return [m for m in world.emu.channel_messages() if m.source == "channel" and "is ready" in m.content]
    await world.emu.wait_until(lambda: bool(notices()), 10, "the channel notice")
    (notice,) = notices()
    assert notice.pinged_user_ids == [alice.id]

    # Every command that shows a name, and /say with mentions in the text and in the voice name.
    await final(world, alice, "voice", "list")
    for name in names:
        await final(world, alice, "voice", "info", name=name)
        reply = await final(world, alice, "say", text=f"@everyone <@{bob.id}> <@&{role['id']}> hi", voice=name)
        assert reply.files, reply
    await final(world, alice, "voice", "default", name=names[1])
    await final(world, alice, "voice", "rename", name=names[2], new_name="@here")
    deleting = await final(world, alice, "voice", "delete", name="@here")
    await world.emu.click(alice, deleting, buttons(deleting)["Delete"]["custom_id"])
    await world.emu.wait_until(lambda: "Deleted" in (deleting.content if world.emu.messages.get(deleting.id) is None
                                                     else world.emu.messages[deleting.id].content), 5, "the delete")
    await final(world, alice, "voice", "jobs")
    assert_no_pings(world, {notice.id: alice.id})


# -- PUBLIC_BASE_URL: capability URLs ----------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def raw_get(port: int, path: str) -> tuple[int, bytes]:
    """A GET with the path exactly as written (no client-side normalisation)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, data


@pytest.mark.env(CLONE_CONFIRM="false")
async def test_embedding_urls_are_unguessable_and_nothing_is_listable(world: World, audio_corpus):
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    await world.restart(PUBLIC_BASE_URL=base, HTTP_PORT=str(port))
    world.bot.nanogpt.tts_poll_interval = 0.02
    world.nano.clone_script = QUICK
    alice, bob = world.user("alice"), world.user("bob")
    await wait_ready(world, await clone(world, alice, audio_corpus("mp3", 4), "Mine"))
    await wait_ready(world, await clone(world, bob, audio_corpus("mp3", 4), "Mine"))
    voice = await world.db.voices.by_name(alice.id, "mine")
    other = await world.db.voices.by_name(bob.id, "mine")
    embedding = await world.db.files.data(voice.embedding_file_id)

    # Once NanoGPT's copy is near its 7 days, NanoGPT is handed the bot's own URL.
    world.clock.advance(6.5 * 86_400)
    world.emu.clock_offset = 6.5 * 86_400
    assert (await final(world, alice, "say", text="in my kept voice", voice="Mine")).files
    url = world.nano.tts_requests[-1]["speaker_voice_embedding_file_url"]
    assert url.startswith(f"{base}/embeddings/"), url
    token, filename = url.removeprefix(f"{base}/embeddings/").split("/")
    assert TOKEN_RE.match(token), token
    assert world.nano.embedding_fetches[-1] == (url, 200)
    bob_token = (await world.db.files.get(other.embedding_file_id)).token
    assert TOKEN_RE.match(bob_token) and bob_token != token
    digest = hashlib.sha256(embedding).hexdigest()
    assert str(alice.id) not in token and digest[:12] not in token  # not derived from who or what
    run_ids = set(world.nano.runs)
    assert not any(run_id in token or token in run_id for run_id in run_ids)
    # The capability URL is in no Discord message and no log line.
    assert not any(token in text_of(m) for m in world.emu.messages.values())
    # (aiosqlite's own DEBUG lines echo every SQL parameter; they are off unless LOG_LEVEL=DEBUG.)
    leaking = [line[:300] for line in world.logs
               if (token in line or bob_token in line) and not line.startswith("DEBUG aiosqlite")]
    assert not leaking, leaking

    async with aiohttp.ClientSession() as session:
        async with session.get(url) as resp:
            assert resp.status == 200 and await resp.read() == embedding
            assert resp.headers.get("Content-Type", "").startswith("application/octet-stream")
    probes = [
        "/", "/embeddings", "/embeddings/", f"/embeddings/{token}", f"/embeddings/{token}/",
        f"/embeddings/{token}/x", f"/embeddings/{token}/{filename}x", f"/embeddings/{token[:32]}/{filename}",
        f"/embeddings/{token}x/{filename}", f"/embeddings/{token.swapcase()}/{filename}",
        f"/embeddings/{secrets.token_urlsafe(32)}/{filename}", f"/embeddings/*/{filename}",
        f"/embeddings/%2A/{filename}", f"/embeddings/{token}%00/{filename}",
        "/embeddings/../../data/nanovoice.sqlite3", "/embeddings/%2e%2e/%2e%2e/data/nanovoice.sqlite3",
        "/embeddings/..%2f..%2fdata%2fnanovoice.sqlite3/x", f"/embeddings/{token}/..%2f..%2f..%2fetc%2fpasswd",
        f"/embeddings/{token}/%2e%2e%2f%2e%2e%2fdata%2fnanovoice.sqlite3", "/data/nanovoice.sqlite3",
        "/nanovoice.sqlite3", "/.git/config", "/.env", "/embeddings/.", "/embeddings/..",
        f"/embeddings/{token}/{filename}/..", "/embeddings/%2e%2e/",
    ]
    for path in probes:
        status, body = await raw_get(port, path)
        assert status in (400, 404), (path, status, body[:200])
        assert embedding not in body and b"SQLite format 3" not in body and b"root:" not in body, path
        assert token.encode() not in body and bob_token.encode() not in body, path
    # Other methods never list or change anything.
    async with aiohttp.ClientSession() as session:
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            async with session.request(method, url, data=b"x") as resp:
                assert resp.status in (404, 405), (method, resp.status)
        async with session.get(url) as resp:
            assert resp.status == 200 and await resp.read() == embedding
