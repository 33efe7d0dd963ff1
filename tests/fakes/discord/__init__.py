"""A local Discord: a real aiohttp server on 127.0.0.1 speaking the REST API, the gateway and a CDN.

A real discord.py client (REST client, webhook adapter, gateway websocket, command tree) runs against
it; see ``/work/shared/docs/discord-testing.md`` and ``tests/harness.py`` (``start_client``)::

    emu = DiscordEmulator()
    await emu.start()        # emu.api_base == "http://127.0.0.1:PORT/api/v10", emu.gateway_url == "ws://…/gateway"
    ...                      # start the bot with tests.harness.start_client(bot, emu)
    alice = emu.add_user(name="alice")
    audio = emu.add_attachment(b"…", "clip.mp3", "audio/mpeg")
    inter = await emu.slash(alice, "voice", subcommand="clone", options={"name": "Ann", "audio": audio})
    message = await inter.wait_final()              # the original response once it is not "thinking…"
    assert emu.followups(inter.token) == [...]
    await emu.close()

What a user would see is kept as state: ``emu.messages`` (id → :class:`EmuMessage`, latest version),
``emu.channel_messages(channel_id)``, ``emu.original_response(token)``, ``emu.followups(token)``.
Every request is in ``emu.requests`` (:class:`RecordedRequest`); unmatched routes answer 404 JSON and
land in ``emu.unknown_routes``. Faults: ``emu.fail_next(method, path_regex, status, json_body, …)``.
Time: ``emu.clock_offset`` (seconds) moves the emulator's clock (3 s interaction deadline, 15 min
tokens, signed CDN URLs) without sleeping.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import itertools
import json
import mimetypes
import re
import secrets
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote

from aiohttp import WSMsgType, web

API_PREFIX = "/api/v10"
DISCORD_EPOCH_MS = 1420070400000

# Permission bits (https://discord.com/developers/docs/topics/permissions)
ADD_REACTIONS = 1 << 6
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
MANAGE_MESSAGES = 1 << 13
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
USE_EXTERNAL_EMOJIS = 1 << 18
CONNECT = 1 << 20
SPEAK = 1 << 21
MANAGE_GUILD = 1 << 5
ADMINISTRATOR = 1 << 3
USE_APPLICATION_COMMANDS = 1 << 31
SEND_MESSAGES_IN_THREADS = 1 << 38
SEND_VOICE_MESSAGES = 1 << 46
ALL_PERMISSIONS = (1 << 51) - 1

DEFAULT_EVERYONE_PERMISSIONS = (
    ADD_REACTIONS | VIEW_CHANNEL | SEND_MESSAGES | EMBED_LINKS | ATTACH_FILES | READ_MESSAGE_HISTORY
    | USE_EXTERNAL_EMOJIS | CONNECT | SPEAK | USE_APPLICATION_COMMANDS | SEND_VOICE_MESSAGES
    | SEND_MESSAGES_IN_THREADS
)
THREAD_TYPES = (10, 11, 12)  # announcement, public and private threads (a forum post is a public thread)
FORUM_TYPES = (15, 16)  # forum and media channels: posts only, no messages of their own
DEFAULT_BOT_PERMISSIONS = DEFAULT_EVERYONE_PERMISSIONS

# Message flags
FLAG_SUPPRESS_EMBEDS = 1 << 2
FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7
FLAG_SUPPRESS_NOTIFICATIONS = 1 << 12
FLAG_VOICE_MESSAGE = 1 << 13
NONCE_WINDOW = 5 * 60  # seconds during which enforce_nonce makes Discord return the earlier message
FLAG_COMPONENTS_V2 = 1 << 15

# Gateway intents
INTENT_GUILD_MEMBERS = 1 << 1
INTENT_GUILD_PRESENCES = 1 << 8
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_MESSAGE_CONTENT = 1 << 15
PRIVILEGED_INTENTS = INTENT_GUILD_MEMBERS | INTENT_GUILD_PRESENCES | INTENT_MESSAGE_CONTENT

OPTION_SUBCOMMAND, OPTION_GROUP = 1, 2
OPTION_STRING, OPTION_INTEGER, OPTION_BOOLEAN, OPTION_USER = 3, 4, 5, 6
OPTION_CHANNEL, OPTION_ROLE, OPTION_MENTIONABLE, OPTION_NUMBER, OPTION_ATTACHMENT = 7, 8, 9, 10, 11

CALLBACK_NAMES = {1: "PONG", 4: "CHANNEL_MESSAGE_WITH_SOURCE", 5: "DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE",
                  6: "DEFERRED_UPDATE_MESSAGE", 7: "UPDATE_MESSAGE", 8: "APPLICATION_COMMAND_AUTOCOMPLETE_RESULT",
                  9: "MODAL"}

_MENTION_RE = re.compile(r"<@!?(\d+)>|<@&(\d+)>|@(everyone|here)")


def _dumps(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _as_id(value: Any) -> int:
    """An id from an int, a numeric string, an :class:`EmuUser`/:class:`EmuMessage` or a wire dict."""
    if isinstance(value, bool):
        raise TypeError(f"not an id: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return int(value)
    if isinstance(value, Mapping):
        return int(value["id"])
    if hasattr(value, "id"):
        return int(value.id)
    raise TypeError(f"not an id: {value!r}")


class DiscordAPIError(Exception):
    """Raised inside handlers; becomes a Discord-shaped JSON error response."""

    def __init__(self, status: int, code: int, message: str, errors: dict | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status, self.code, self.message, self.errors, self.headers = status, code, message, errors, headers

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors:
            body["errors"] = self.errors
        return body


def _form_error(field_path: str, code: str, message: str) -> DiscordAPIError:
    errors: dict[str, Any] = {"_errors": [{"code": code, "message": message}]}
    for part in reversed(field_path.split(".")):
        errors = {part: errors}
    return DiscordAPIError(400, 50035, "Invalid Form Body", errors)


# --------------------------------------------------------------------------------------------- records


@dataclass
class Part:
    """One multipart part as received."""

    name: str
    filename: str | None
    content_type: str | None
    data: bytes

    def text(self) -> str:
        return self.data.decode()


@dataclass
class RecordedRequest:
    index: int
    method: str
    path: str  # without the /api/v10 prefix for API routes ("/channels/1/messages"), else the raw path
    raw_path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any = None
    parts: list[Part] = field(default_factory=list)
    status: int | None = None
    response: Any = None
    faulted: bool = False
    time: float = 0.0

    @property
    def payload(self) -> Any:
        """The JSON body, or the parsed ``payload_json`` part of a multipart body."""
        if self.json is not None:
            return self.json
        for part in self.parts:
            if part.name == "payload_json":
                return json.loads(part.data)
        return None

    def part(self, name: str) -> Part | None:
        return next((p for p in self.parts if p.name == name), None)

    @property
    def files(self) -> list[Part]:
        return [p for p in self.parts if p.name.startswith("files[")]


_REC = web.RequestKey("rec", RecordedRequest)  # the record of the request being handled


@dataclass
class _Fault:
    method: str
    path_re: re.Pattern[str]
    status: int
    body: Any
    headers: dict[str, str]
    times: int
    after_effect: bool = False


@dataclass
class _Hold:
    method: str
    path_re: re.Pattern[str]
    seconds: float
    times: int
    where: Callable[[RecordedRequest], bool] | None = None


@dataclass
class EmuUser:
    id: int
    name: str
    bot: bool = False
    global_name: str | None = None

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": str(self.id), "username": self.name, "global_name": self.global_name,
                                "discriminator": "0", "avatar": None, "public_flags": 0, "flags": 0}
        if self.bot:
            data["bot"] = True
        return data


@dataclass
class EmuMember:
    user: EmuUser
    guild_id: int
    roles: list[int] = field(default_factory=list)
    permissions: int | None = None  # explicit override; None → computed from roles
    nick: str | None = None
    joined_at: float = field(default_factory=time.time)


@dataclass
class EmuGuild:
    id: int
    name: str
    owner_id: int
    roles: dict[int, dict[str, Any]] = field(default_factory=dict)
    channels: dict[int, dict[str, Any]] = field(default_factory=dict)
    members: dict[int, EmuMember] = field(default_factory=dict)
    threads: dict[int, dict[str, Any]] = field(default_factory=dict)  # active threads, in GUILD_CREATE


@dataclass
class AttachmentFile:
    filename: str
    content_type: str | None
    data: bytes


class EmuMessage:
    """A message as a user would see it; ``data`` is the latest wire object."""

    def __init__(self, data: dict[str, Any], *, source: str, allowed_mentions: dict | None,
                 interaction_token: str | None, emu: DiscordEmulator) -> None:
        self.data = data
        self.source = source  # "channel" (bot REST), "interaction" (callback/webhook), "user"
        self.allowed_mentions = allowed_mentions
        self.interaction_token = interaction_token
        self.history: list[dict[str, Any]] = []  # previous versions, oldest first
        self.deleted = False
        self._emu = emu
        self.created_at = emu.now()

    def __repr__(self) -> str:
        return (f"<EmuMessage id={self.id} source={self.source} flags={self.flags} content={self.content!r} "
                f"files={[a['filename'] for a in self.attachments]}>")

    id = property(lambda self: int(self.data["id"]))
    channel_id = property(lambda self: int(self.data["channel_id"]))
    content = property(lambda self: self.data.get("content", ""))
    embeds = property(lambda self: self.data.get("embeds", []))
    components = property(lambda self: self.data.get("components", []))
    attachments = property(lambda self: self.data.get("attachments", []))
    flags = property(lambda self: int(self.data.get("flags", 0)))
    author_id = property(lambda self: int(self.data["author"]["id"]))
    ephemeral = property(lambda self: bool(self.flags & FLAG_EPHEMERAL))
    loading = property(lambda self: bool(self.flags & FLAG_LOADING))
    is_voice_message = property(lambda self: bool(self.flags & FLAG_VOICE_MESSAGE))
    webhook = property(lambda self: "webhook_id" in self.data)
    edited = property(lambda self: bool(self.history))

    @property
    def pinged_user_ids(self) -> list[int]:
        """Users this message notified (after allowed_mentions)."""
        return [int(u["id"]) for u in self.data.get("mentions", [])]

    @property
    def files(self) -> list[AttachmentFile]:
        return [self._emu.attachment_file(a) for a in self.attachments]

    def custom_ids(self) -> list[str]:
        return [c["custom_id"] for c in _walk_components(self.components) if "custom_id" in c]

    def component(self, custom_id: str) -> dict[str, Any]:
        for c in _walk_components(self.components):
            if c.get("custom_id") == custom_id:
                return c
        raise KeyError(f"no component {custom_id!r} on message {self.id}: {self.custom_ids()}")

    def to_dict(self) -> dict[str, Any]:
        return self._emu._serialise_message(self)


def _walk_components(components: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    for c in components:
        yield c
        if "components" in c:
            yield from _walk_components(c["components"])
        if "component" in c:
            yield from _walk_components([c["component"]])
        if "accessory" in c:
            yield from _walk_components([c["accessory"]])


class EmuInteraction:
    """A user's interaction as injected by the emulator; tracks how the bot answered it."""

    def __init__(self, emu: DiscordEmulator, payload: dict[str, Any], user: EmuUser,
                 source_message: EmuMessage | None = None) -> None:
        self._emu = emu
        self.payload = payload
        self.user = user
        self.id = int(payload["id"])
        self.token: str = payload["token"]
        self.type: int = payload["type"]
        self.channel_id: int = int(payload["channel_id"])
        self.guild_id: int | None = int(payload["guild_id"]) if payload.get("guild_id") else None
        self.created_at = emu.now()
        self.source_message = source_message
        self.callback_type: int | None = None
        self.callback: dict[str, Any] | None = None  # the callback body the bot sent
        self.callback_error: DiscordAPIError | None = None
        self.original_message_id: int | None = None
        self.followup_ids: list[int] = []
        self.choices: list[dict[str, Any]] | None = None
        self.modal: dict[str, Any] | None = None
        self._first_followup_pending = False

    def __repr__(self) -> str:
        return f"<EmuInteraction id={self.id} type={self.type} callback={self.callback_type}>"

    @property
    def responded(self) -> bool:
        return self.callback_type is not None

    @property
    def deferred(self) -> bool:
        return self.callback_type in (5, 6)

    @property
    def original(self) -> EmuMessage | None:
        return self._emu.original_response(self.token)

    @property
    def followups(self) -> list[EmuMessage]:
        return self._emu.followups(self.token)

    async def wait_response(self, timeout: float = 5.0) -> dict[str, Any]:  # noqa: ASYNC109
        """The callback body, once the bot sent one (or its rejected attempt raised an API error)."""
        await self._emu.wait_until(lambda: self.responded or self.callback_error is not None, timeout,
                                   f"interaction {self.id} to get a callback")
        if self.callback is None:
            raise AssertionError(f"the bot's callback was rejected: {self.callback_error}")
        return self.callback

    @property
    def answer(self) -> EmuMessage | None:
        """What the user sees as the answer: the original response once it is a real message, or — when
        the bot deleted the "thinking…" placeholder and answered in a followup (a private error after a
        public defer) — that followup."""
        msg = self.original
        if msg is not None and not msg.loading:
            return msg
        if self.original_message_id in self._emu.deleted_messages and self.followups:
            return self.followups[-1]
        return None

    async def wait_final(self, timeout: float = 5.0) -> EmuMessage:  # noqa: ASYNC109
        """The answer (see :attr:`answer`) once there is one (not the "thinking…" placeholder)."""
        await self._emu.wait_until(lambda: self.answer is not None, timeout,
                                   f"interaction {self.id} to have a final answer")
        msg = self.answer
        assert msg is not None
        return msg

    async def wait_followups(self, count: int = 1, timeout: float = 5.0) -> list[EmuMessage]:  # noqa: ASYNC109
        await self._emu.wait_until(lambda: len(self.followups) >= count, timeout,
                                   f"{count} followup(s) on interaction {self.id}")
        return self.followups

    async def wait_until(self, predicate: Callable[[EmuInteraction], bool], timeout: float = 5.0) -> None:  # noqa: ASYNC109
        await self._emu.wait_until(lambda: predicate(self), timeout, f"condition on interaction {self.id}")


@dataclass
class _GatewaySession:
    session_id: str
    intents: int
    shard: list[int] | None
    seq: int = 0
    ws: web.WebSocketResponse | None = None
    request: web.Request | None = None
    buffer: list[dict[str, Any]] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    valid: bool = True

    def handles_guild(self, guild_id: int | None) -> bool:
        if guild_id is None or not self.shard:
            return True
        shard_id, count = self.shard
        return (guild_id >> 22) % count == shard_id


# --------------------------------------------------------------------------------------------- emulator


class DiscordEmulator:
    """See the module docstring."""

    def __init__(self, *, host: str = "127.0.0.1", bot_name: str = "NanoVoice", guild_name: str = "Emulated Guild",
                 channel_name: str = "general") -> None:
        self.host = host
        self.port: int | None = None
        self._counter = itertools.count()
        self._cdn_secret = secrets.token_bytes(16)

        self.bot_user = EmuUser(self.snowflake(), bot_name, bot=True)
        self.application_id = self.bot_user.id
        self.token = (base64.b64encode(str(self.bot_user.id).encode()).decode().rstrip("=") + "."
                      + secrets.token_urlsafe(4) + "." + secrets.token_urlsafe(28))
        self.owner = EmuUser(self.snowflake(), "guild-owner")
        self.users: dict[int, EmuUser] = {self.bot_user.id: self.bot_user, self.owner.id: self.owner}

        # behaviour knobs
        self.clock_offset: float = 0.0
        self.interaction_deadline = 3.0
        self.token_lifetime = 15 * 60.0
        self.attachment_url_ttl = 24 * 3600.0
        self.attachment_size_limit = 10 * 1024 * 1024  # the interaction's upload limit (non-boosted guild)
        self.upload_limit = 10 * 1024 * 1024  # what Create Message / webhooks accept per file
        self.heartbeat_interval_ms = 41250
        self.allowed_privileged_intents = PRIVILEGED_INTENTS
        self.refuse_voice_messages: dict[int, bool] = {}
        self.locale = "en-US"

        # state
        self.guilds: dict[int, EmuGuild] = {}
        self.messages: dict[int, EmuMessage] = {}
        self.deleted_messages: dict[int, EmuMessage] = {}
        self.interactions: dict[int, EmuInteraction] = {}
        self._by_token: dict[str, EmuInteraction] = {}
        self._files: dict[int, tuple[dict[str, Any], bytes]] = {}  # attachment id → (object, bytes)
        self.global_commands: list[dict[str, Any]] = []
        self.guild_commands: dict[int, list[dict[str, Any]]] = {}
        self.syncs: list[int | None] = []  # one entry per bulk PUT: None (global) or the guild id
        self._command_ids: dict[tuple[int | None, str, int], int] = {}
        self.dm_channels: dict[int, dict[str, Any]] = {}  # user id → the DM channel between them and the bot
        self.left_guilds: list[int] = []  # guilds the bot left (DELETE /users/@me/guilds/{id}), in order

        self.requests: list[RecordedRequest] = []
        self.unknown_routes: list[RecordedRequest] = []
        self.internal_errors: list[str] = []  # exceptions inside the emulator's handlers (should stay empty)
        self._holds: list[_Hold] = []
        self.held: list[RecordedRequest] = []  # requests that arrived and were kept waiting (hold_next)
        self.answers_in_flight = 0  # REST answers decided but not yet written to the bot's socket
        self.nonce_hits = 0  # Create Message calls answered with an earlier message (enforce_nonce)
        # How long a person takes to react to a message before clicking on it. Discord.py stores a message's
        # view only once it has read the answer that created the message; no human clicks faster than that.
        self.reaction_time = 0.05
        self.gateway_log: list[tuple[str, dict[str, Any]]] = []  # ("in"|"out", payload)
        self.identify_count = 0
        self.resume_count = 0
        self._faults: list[_Fault] = []
        self._sessions: dict[str, _GatewaySession] = {}
        self._sockets: set[web.WebSocketResponse] = set()
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None

        guild = self.add_guild(name=guild_name, channel_name=channel_name)
        self.guild_id = guild.id
        self.channel_id = next(iter(guild.channels))

    # ------------------------------------------------------------------------------------- lifecycle

    async def start(self) -> DiscordEmulator:
        app = web.Application(client_max_size=256 * 1024 * 1024, middlewares=[self._middleware])
        api = API_PREFIX
        r = app.router
        r.add_get("/gateway", self._gateway)
        r.add_get("/cdn/{tail:.*}", self._cdn)
        r.add_get(f"{api}/users/@me", self._get_me)
        r.add_get(f"{api}/users/{{user_id:\\d+}}", self._get_user)
        r.add_get(f"{api}/oauth2/applications/@me", self._get_application)
        r.add_get(f"{api}/applications/@me", self._get_application)
        r.add_get(f"{api}/gateway", self._get_gateway)
        r.add_get(f"{api}/gateway/bot", self._get_gateway_bot)
        r.add_put(f"{api}/applications/{{app}}/commands", self._put_commands)
        r.add_get(f"{api}/applications/{{app}}/commands", self._get_commands)
        r.add_put(f"{api}/applications/{{app}}/guilds/{{guild_id}}/commands", self._put_commands)
        r.add_get(f"{api}/applications/{{app}}/guilds/{{guild_id}}/commands", self._get_commands)
        r.add_post(f"{api}/interactions/{{iid}}/{{token}}/callback", self._interaction_callback)
        r.add_post(f"{api}/webhooks/{{app}}/{{token}}", self._webhook_execute)
        r.add_route("*", f"{api}/webhooks/{{app}}/{{token}}/messages/{{mid}}", self._webhook_message)
        r.add_get(f"{api}/channels/{{cid}}", self._get_channel)
        r.add_post(f"{api}/channels/{{cid}}/typing", self._typing)
        r.add_get(f"{api}/channels/{{cid}}/messages", self._get_channel_messages)
        r.add_post(f"{api}/channels/{{cid}}/messages", self._create_message)
        r.add_route("*", f"{api}/channels/{{cid}}/messages/{{mid}}", self._channel_message)
        r.add_get(f"{api}/users/@me/guilds", self._get_my_guilds)
        r.add_delete(f"{api}/users/@me/guilds/{{guild_id}}", self._leave_guild)
        r.add_get(f"{api}/guilds/{{guild_id}}", self._get_guild)
        r.add_get(f"{api}/guilds/{{guild_id}}/channels", self._get_guild_channels)
        r.add_get(f"{api}/guilds/{{guild_id}}/members/{{user_id}}", self._get_member)
        r.add_post(f"{api}/attachments/refresh-urls", self._refresh_urls)
        r.add_route("*", "/{tail:.*}", self._unknown)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=1001, message=b"emulator closing")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> DiscordEmulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_base(self) -> str:
        return f"{self.base_url}{API_PREFIX}"

    @property
    def gateway_url(self) -> str:
        return f"ws://{self.host}:{self.port}/gateway"

    @property
    def bot_user_id(self) -> int:
        return self.bot_user.id

    # ------------------------------------------------------------------------------------- helpers

    def now(self) -> float:
        """The emulator's wall clock (``time.time() + clock_offset``)."""
        return time.time() + self.clock_offset

    def snowflake(self) -> int:
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        return (ms << 22) | (1 << 17) | (next(self._counter) & 0xFFF)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:  # noqa: ASYNC109
        """Wait until ``predicate()`` holds; re-checked on every emulator state change."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.25))

    def mark(self) -> int:
        """The index of the next request, for ``wait_for_request(..., since=emu.mark())``."""
        return len(self.requests)

    def find_requests(self, method: str, path_regex: str, *, since: int = 0,
                      predicate: Callable[[RecordedRequest], bool] | None = None) -> list[RecordedRequest]:
        pattern = re.compile(path_regex)
        return [r for r in self.requests[since:]
                if (method == "*" or r.method == method.upper()) and pattern.search(r.path)
                and (predicate is None or predicate(r))]

    async def wait_for_request(self, method: str, path_regex: str, timeout: float = 5.0, predicate:  # noqa: ASYNC109
                               Callable[[RecordedRequest], bool] | None = None, *, since: int = 0) -> RecordedRequest:
        """The first handled request at index >= ``since`` matching method (``"*"`` = any) and path regex."""
        found: list[RecordedRequest] = []

        def check() -> bool:
            found[:] = self.find_requests(method, path_regex, since=since, predicate=predicate)
            return bool(found)
        await self.wait_until(check, timeout, f"request {method} {path_regex}")
        return found[0]

    def hold_next(self, method: str, path_regex: str, seconds: float, times: int = 1,
                  where: Callable[[RecordedRequest], bool] | None = None) -> None:
        """Keep the next ``times`` matching requests (and ``where(request)``) waiting ``seconds`` before they
        are handled (a slow Discord); each appears in :attr:`held` as soon as it arrives."""
        self._holds.append(_Hold(method.upper(), re.compile(path_regex), seconds, times, where))

    def fail_next(self, method: str, path_regex: str, status: int, json_body: Any = None, times: int = 1,
                  headers: dict[str, str] | None = None, *, after_effect: bool = False) -> None:
        """Answer the next ``times`` requests matching (method or ``"*"``, regex searched in the path
        without the /api/v10 prefix) with ``status``. A 429 gets Discord's rate-limit headers and body
        unless given. ``after_effect``: the request takes effect first and only its answer is the error
        (a proxy or Discord failing after the message was created); with status 0 the connection drops
        instead of answering."""
        hdrs = dict(headers or {})
        if status == 429:
            body = json_body if json_body is not None else {
                "message": "You are being rate limited.", "retry_after": 0.05, "global": False}
            retry_after = float(body.get("retry_after", 0.05)) if isinstance(body, dict) else 0.05
            defaults = {
                "Retry-After": str(max(1, int(retry_after + 0.999))),
                "X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": f"{time.time() + retry_after:.3f}",
                "X-RateLimit-Reset-After": f"{retry_after:.3f}",
                "X-RateLimit-Bucket": secrets.token_hex(16),
                "X-RateLimit-Scope": "user" if not (isinstance(body, dict) and body.get("global")) else "global",
            }
            if isinstance(body, dict) and body.get("global"):
                defaults["X-RateLimit-Global"] = "true"
            hdrs = {**defaults, **hdrs}
        else:
            body = json_body if json_body is not None else {"message": f"{status}: emulated failure", "code": 0}
        self._faults.append(_Fault(method.upper(), re.compile(path_regex), status, body, hdrs, times, after_effect))

    # ------------------------------------------------------------------------------------- users, guilds

    def add_guild(self, guild_id: int | None = None, name: str = "Guild", *, channel_name: str = "general",
                  owner: EmuUser | None = None) -> EmuGuild:
        """A guild with @everyone, a bot role, one text channel, the owner and the bot as members.
        Add guilds before the bot connects (they are sent in GUILD_CREATE at IDENTIFY)."""
        gid = guild_id or self.snowflake()
        owner = owner or self.owner
        guild = EmuGuild(gid, name, owner.id)
        guild.roles[gid] = self._role_dict(gid, "@everyone", DEFAULT_EVERYONE_PERMISSIONS, position=0)
        bot_role_id = self.snowflake()
        bot_role = self._role_dict(bot_role_id, self.bot_user.name, DEFAULT_BOT_PERMISSIONS, position=1)
        bot_role["managed"] = True
        bot_role["tags"] = {"bot_id": str(self.bot_user.id)}
        guild.roles[bot_role_id] = bot_role
        self.guilds[gid] = guild
        self.add_channel(channel_name, guild_id=gid)
        guild.members[owner.id] = EmuMember(owner, gid)
        guild.members[self.bot_user.id] = EmuMember(self.bot_user, gid, roles=[bot_role_id])
        return guild

    @staticmethod
    def _role_dict(role_id: int, name: str, permissions: int, position: int) -> dict[str, Any]:
        return {"id": str(role_id), "name": name, "color": 0, "colors": {"primary_color": 0}, "hoist": False,
                "icon": None, "unicode_emoji": None, "position": position, "permissions": str(permissions),
                "managed": False, "mentionable": False, "flags": 0}

    def add_channel(self, name: str, *, type: int = 0, guild_id: int | None = None) -> dict[str, Any]:
        gid = guild_id or self.guild_id
        guild = self.guilds[gid]
        cid = self.snowflake()
        channel = {"id": str(cid), "type": type, "guild_id": str(gid), "name": name, "position": len(guild.channels),
                   "permission_overwrites": [], "parent_id": None, "nsfw": False, "topic": None,
                   "last_message_id": None, "rate_limit_per_user": 0, "flags": 0}
        if type == 2:
            channel.update(bitrate=64000, user_limit=0, rtc_region=None)
        if type in FORUM_TYPES:
            channel.update(available_tags=[], default_reaction_emoji=None, default_sort_order=None,
                           default_forum_layout=0, default_thread_rate_limit_per_user=0)
        guild.channels[cid] = channel
        return channel

    def add_thread(self, name: str, *, parent_id: int | None = None, type: int = 11,
                   owner: EmuUser | int | None = None, guild_id: int | None = None) -> dict[str, Any]:
        """An active thread in ``parent_id`` (default: the default channel), sent in GUILD_CREATE's ``threads``.
        A thread whose parent is a forum channel (type 15) is a forum post. Add threads before the bot connects."""
        gid = guild_id or self.guild_id
        guild = self.guilds[gid]
        parent = guild.channels[parent_id or self.channel_id]
        tid = self.snowflake()
        now = _iso(self.now())
        thread = {"id": str(tid), "type": type, "guild_id": str(gid), "name": name, "parent_id": parent["id"],
                  "owner_id": str(_as_id(owner) if owner is not None else self.owner.id),
                  "last_message_id": None, "rate_limit_per_user": 0, "flags": 0, "message_count": 0,
                  "member_count": 1, "total_message_sent": 0, "nsfw": False,
                  "thread_metadata": {"archived": False, "auto_archive_duration": 1440, "archive_timestamp": now,
                                      "locked": False, "invitable": type != 12, "create_timestamp": now}}
        if parent["type"] in FORUM_TYPES:
            thread["applied_tags"] = []
        guild.threads[tid] = thread
        return thread

    def add_role(self, name: str, permissions: int | str = 0, *, guild_id: int | None = None) -> dict[str, Any]:
        guild = self.guilds[guild_id or self.guild_id]
        rid = self.snowflake()
        guild.roles[rid] = self._role_dict(rid, name, _perm_value(permissions), position=len(guild.roles))
        return guild.roles[rid]

    def add_user(self, user_id: int | None = None, name: str | None = None, *, bot: bool = False,
                 guild_id: int | None = None, roles: Iterable[int | Mapping] = (),
                 permissions: int | str | None = None) -> EmuUser:
        """A user, also a member of the (default) guild."""
        uid = user_id or self.snowflake()
        user = self.users.get(uid) or EmuUser(uid, name or f"user{uid % 10000}", bot=bot)
        self.users[uid] = user
        gid = guild_id or self.guild_id
        member = self.guilds[gid].members.get(uid) or EmuMember(user, gid)
        member.roles = [_as_id(r) for r in roles] or member.roles
        if permissions is not None:
            member.permissions = _perm_value(permissions)
        self.guilds[gid].members[uid] = member
        return user

    def member(self, user: EmuUser | int, guild_id: int | None = None) -> EmuMember:
        guild = self.guilds[guild_id or self.guild_id]
        uid = _as_id(user)
        if uid not in guild.members:
            self.add_user(uid, guild_id=guild.id)
        return guild.members[uid]

    def set_member_permissions(self, user: EmuUser | int, permissions: int | str | None,
                               guild_id: int | None = None) -> None:
        """Override a member's (channel) permissions; ``None`` goes back to the roles' permissions.
        Use it on ``emu.bot_user`` to change ``app_permissions`` and what the bot may do."""
        self.member(user, guild_id).permissions = None if permissions is None else _perm_value(permissions)

    def set_member_roles(self, user: EmuUser | int, roles: Iterable[int | Mapping],
                         guild_id: int | None = None) -> None:
        self.member(user, guild_id).roles = [_as_id(r) for r in roles]

    def member_permissions(self, user: EmuUser | int, guild_id: int | None = None) -> int:
        guild = self.guilds[guild_id or self.guild_id]
        member = self.member(user, guild.id)
        if member.permissions is not None:
            return member.permissions
        if member.user.id == guild.owner_id:
            return ALL_PERMISSIONS
        perms = int(guild.roles[guild.id]["permissions"])
        for rid in member.roles:
            if rid in guild.roles:
                perms |= int(guild.roles[rid]["permissions"])
        return ALL_PERMISSIONS if perms & ADMINISTRATOR else perms

    def _member_dict(self, member: EmuMember, *, with_user: bool = True, permissions: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {"roles": [str(r) for r in member.roles], "nick": member.nick, "avatar": None,
                                "banner": None, "joined_at": _iso(member.joined_at), "premium_since": None,
                                "deaf": False, "mute": False, "flags": 0, "pending": False,
                                "communication_disabled_until": None}
        if with_user:
            data["user"] = member.user.to_dict()
        if permissions:
            data["permissions"] = str(self.member_permissions(member.user, member.guild_id))
        return data

    def _guild_of_channel(self, channel_id: int) -> EmuGuild | None:
        return next((g for g in self.guilds.values() if channel_id in g.channels or channel_id in g.threads), None)

    def _channel(self, channel_id: int) -> dict[str, Any]:
        """A channel or a thread."""
        guild = self._guild_of_channel(channel_id)
        if guild is None:
            raise DiscordAPIError(404, 10003, "Unknown Channel")
        return guild.channels.get(channel_id) or guild.threads[channel_id]

    def _guild_dict(self, guild: EmuGuild, *, full: bool) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(guild.id), "name": guild.name, "icon": None, "splash": None, "discovery_splash": None,
            "banner": None, "description": None, "owner_id": str(guild.owner_id), "region": "deprecated",
            "afk_channel_id": None, "afk_timeout": 300, "verification_level": 0, "default_message_notifications": 0,
            "explicit_content_filter": 0, "roles": list(guild.roles.values()), "emojis": [], "stickers": [],
            "features": [], "mfa_level": 0, "application_id": None, "system_channel_id": None,
            "system_channel_flags": 0, "rules_channel_id": None, "public_updates_channel_id": None,
            "safety_alerts_channel_id": None, "vanity_url_code": None, "premium_tier": 0,
            "premium_subscription_count": 0, "preferred_locale": self.locale, "nsfw_level": 0, "nsfw": False,
            "max_members": 500000, "max_video_channel_users": 25, "premium_progress_bar_enabled": False,
            "incidents_data": None,
        }
        if full:
            bot_member = guild.members.get(self.bot_user.id)
            data.update({
                "joined_at": _iso(bot_member.joined_at if bot_member else time.time()), "large": False,
                "unavailable": False, "member_count": len(guild.members),
                "members": [self._member_dict(m) for m in guild.members.values()],
                "channels": list(guild.channels.values()), "threads": list(guild.threads.values()),
                "presences": [], "voice_states": [],
                "stage_instances": [], "guild_scheduled_events": [], "soundboard_sounds": [],
            })
        return data

    # ------------------------------------------------------------------------------------- attachments / CDN

    def add_attachment(self, data: bytes, filename: str, content_type: str | None = None, *,
                       duration_secs: float | None = None, waveform: str | bytes | None = None,
                       channel_id: int | None = None, description: str | None = None) -> dict[str, Any]:
        """Store bytes on the fake CDN; returns the attachment object (as in ``resolved.attachments``)."""
        if isinstance(waveform, bytes | bytearray):
            waveform = base64.b64encode(waveform).decode()
        return self._store_file(data, filename, content_type, channel_id or self.channel_id,
                                duration_secs=duration_secs, waveform=waveform, description=description)

    def _store_file(self, data: bytes, filename: str, content_type: str | None, channel_id: int, *,
                    duration_secs: float | None = None, waveform: str | None = None,
                    description: str | None = None) -> dict[str, Any]:
        aid = self.snowflake()
        filename = re.sub(r"[^\w.\-]", "_", filename) or "unknown"
        if content_type is None:
            content_type = mimetypes.guess_type(filename)[0]
        att: dict[str, Any] = {"id": str(aid), "filename": filename, "size": len(data)}
        if content_type:
            att["content_type"] = content_type
        if description is not None:
            att["description"] = description
        if duration_secs is not None:
            att["duration_secs"] = duration_secs
        if waveform is not None:
            att["waveform"] = waveform
        att["_cdn_path"] = f"attachments/{channel_id}/{aid}/{quote(filename)}"
        self._files[aid] = (att, data)
        return self._signed_attachment(att)

    def _sign(self, cdn_path: str, expires: int) -> str:
        return hmac.new(self._cdn_secret, f"{cdn_path}:{expires}".encode(), hashlib.sha256).hexdigest()[:64]

    def _signed_attachment(self, att: dict[str, Any]) -> dict[str, Any]:
        """A wire copy of the attachment with freshly signed CDN URLs."""
        out = {k: v for k, v in att.items() if not k.startswith("_")}
        path = att["_cdn_path"]
        issued = int(self.now())
        expires = int(issued + self.attachment_url_ttl)
        query = f"ex={expires:x}&is={issued:x}&hm={self._sign(path, expires)}&"
        out["url"] = f"{self.base_url}/cdn/{path}?{query}"
        out["proxy_url"] = f"{self.base_url}/cdn/media/{path}?{query}"
        return out

    def attachment_file(self, attachment: Mapping[str, Any] | int | str) -> AttachmentFile:
        """The stored bytes of an attachment (object, id or CDN URL)."""
        if isinstance(attachment, str) and "/cdn/" in attachment:
            aid = int(attachment.split("/cdn/", 1)[1].split("?")[0].removeprefix("media/").split("/")[2])
        else:
            aid = _as_id(attachment)
        att, data = self._files[aid]
        return AttachmentFile(att["filename"], att.get("content_type"), data)

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        tail = request.match_info["tail"].removeprefix("media/")
        m = re.fullmatch(r"attachments/(\d+)/(\d+)/([^/]+)", tail)
        entry = self._files.get(int(m.group(2))) if m else None
        if entry is None or (entry[0]["_cdn_path"] != tail and unquote(entry[0]["_cdn_path"]) != unquote(tail)):
            return web.Response(status=404, text="Not Found")
        try:
            expires = int(request.query["ex"], 16)
            valid = hmac.compare_digest(request.query["hm"], self._sign(entry[0]["_cdn_path"], expires))
        except (KeyError, ValueError):
            valid, expires = False, 0
        if not valid or expires < self.now():
            return web.Response(status=404, text="This content is no longer available.")
        att, data = entry
        return web.Response(body=data, content_type=att.get("content_type") or "application/octet-stream")

    async def _refresh_urls(self, request: web.Request) -> web.Response:
        self._require_bot(request)
        urls = (await request.json()).get("attachment_urls", [])
        refreshed = []
        for url in urls:
            try:
                aid = _as_id(url.split("/cdn/", 1)[1].split("?")[0].removeprefix("media/").split("/")[2])
                att = self._files[aid][0]
            except (KeyError, IndexError, ValueError):
                continue
            refreshed.append({"original": url, "refreshed": self._signed_attachment(att)["url"]})
        return self._json({"refreshed_urls": refreshed})

    # ------------------------------------------------------------------------------------- HTTP plumbing

    @staticmethod
    def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
        # body= (not text=) keeps Content-Type exactly "application/json": discord.py needs that value.
        return web.Response(status=status, body=_dumps(body), content_type="application/json", headers=headers)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        rec = await self._record(request)
        request[_REC] = rec
        if request.path == "/gateway":
            self.requests.append(rec)
            self._notify()
            return await handler(request)
        hold = next((h for h in self._holds if (h.method in ("*", rec.method)) and h.path_re.search(rec.path)
                     and (h.where is None or h.where(rec))), None)
        if hold is not None:
            hold.times -= 1
            if hold.times <= 0:
                self._holds.remove(hold)
            self.held.append(rec)
            self._notify()
            await asyncio.sleep(hold.seconds)
        fault = next((f for f in self._faults if (f.method in ("*", rec.method)) and f.path_re.search(rec.path)), None)
        response: web.StreamResponse
        if fault is not None and fault.after_effect:
            with contextlib.suppress(Exception):
                await handler(request)
            if fault.status == 0:  # the connection drops before the answer: the bot can't know it worked
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
                rec.faulted = True
                self.requests.append(rec)
                self._notify()
                if request.transport is not None:
                    request.transport.abort()
                raise asyncio.CancelledError
        if fault is not None:
            fault.times -= 1
            if fault.times <= 0:
                self._faults.remove(fault)
            rec.faulted = True
            response = self._json(fault.body, fault.status, fault.headers)
            rec.response = fault.body
        else:
            try:
                response = await handler(request)
            except DiscordAPIError as e:
                rec.response = e.body()
                response = self._json(e.body(), e.status, e.headers)
            except web.HTTPException:
                raise
            except Exception as e:  # an emulator bug: answer 400 at once (a 5xx would make discord.py retry)
                self.internal_errors.append(f"{rec.method} {rec.path}: {e!r}\n{traceback.format_exc()}")
                rec.response = {"message": f"emulator internal error: {e!r}", "code": 0}
                response = self._json(rec.response, 400)
        if request.path.startswith(API_PREFIX):
            response.headers.setdefault("Via", "1.1 google")
        rec.status = response.status
        self.requests.append(rec)
        self._notify()
        # Write the answer here (not after returning) so that "the bot has been sent every answer" is knowable:
        # interactions aimed at a message wait for it (see _before_user_acts_on_a_message).
        self.answers_in_flight += 1
        try:
            await response.prepare(request)
            await response.write_eof()
        finally:
            self.answers_in_flight -= 1
            self._notify()
        return response

    async def _record(self, request: web.Request) -> RecordedRequest:
        path = request.path
        short = path[len(API_PREFIX):] if path.startswith(API_PREFIX + "/") else path
        body = b"" if path == "/gateway" else await request.read()
        rec = RecordedRequest(index=len(self.requests), method=request.method, path=short, raw_path=path,
                              query=dict(request.query), headers=dict(request.headers), body=body, time=time.time())
        ctype = request.headers.get("Content-Type", "")
        if body and ctype.startswith("application/json"):
            with contextlib.suppress(ValueError):
                rec.json = json.loads(body)
        elif body and ctype.startswith("multipart/form-data"):
            rec.parts = _parse_multipart(body, ctype)
        return rec

    async def _unknown(self, request: web.Request) -> web.Response:
        rec: RecordedRequest = request[_REC]
        self.unknown_routes.append(rec)
        return self._json({"message": f"404: Not Found (emulator has no route for {request.method} {rec.path})",
                           "code": 0}, 404)

    def _require_bot(self, request: web.Request) -> None:
        if request.headers.get("Authorization") != f"Bot {self.token}":
            raise DiscordAPIError(401, 0, "401: Unauthorized")

    @staticmethod
    def _body(request: web.Request) -> tuple[dict[str, Any], dict[int, Part]]:
        """(JSON payload, {file index: part}) of a JSON or multipart request."""
        rec: RecordedRequest = request[_REC]
        payload = rec.payload
        if payload is None:
            payload = {}
        if not isinstance(payload, dict):
            raise DiscordAPIError(400, 50109, "The request body contains invalid JSON.")
        files: dict[int, Part] = {}
        for part in rec.parts:
            m = re.fullmatch(r"files\[(\d+)\]|file(\d*)", part.name)
            if m:
                files[int(m.group(1) or m.group(2) or 0)] = part
        return payload, files

    # ------------------------------------------------------------------------------------- login, gateway REST

    async def _get_me(self, request: web.Request) -> web.Response:
        self._require_bot(request)
        return self._json({**self.bot_user.to_dict(), "verified": True, "mfa_enabled": False, "locale": "en-US",
                           "email": None, "bio": "", "banner": None, "accent_color": None})

    async def _get_user(self, request: web.Request) -> web.Response:
        self._require_bot(request)
        user = self.users.get(int(request.match_info["user_id"]))
        if user is None:
            raise DiscordAPIError(404, 10013, "Unknown User")
        return self._json(user.to_dict())

    async def _get_application(self, request: web.Request) -> web.Response:
        self._require_bot(request)
        return self._json({
            "id": str(self.application_id), "name": self.bot_user.name, "icon": None,
            "description": "Emulated application", "summary": "", "type": None, "bot_public": True,
            "bot_require_code_grant": False, "verify_key": secrets.token_hex(32), "flags": 0,
            "owner": self.owner.to_dict(), "team": None, "bot": self.bot_user.to_dict(),
            "interactions_endpoint_url": None, "redirect_uris": [], "rpc_origins": [], "tags": [],
            "approximate_guild_count": len(self.guilds), "integration_types_config": {"0": {}},
        })

    async def _get_gateway(self, request: web.Request) -> web.Response:
        return self._json({"url": self.gateway_url})

    async def _get_gateway_bot(self, request: web.Request) -> web.Response:
        self._require_bot(request)
        return self._json({"url": self.gateway_url, "shards": 1, "session_start_limit": {
            "total": 1000, "remaining": 999, "reset_after": 14400000, "max_concurrency": 1}})

    # ------------------------------------------------------------------------------------- application commands

    def _check_app(self, request: web.Request) -> int | None:
        self._require_bot(request)
        if request.match_info["app"] != str(self.application_id):
            raise DiscordAPIError(403, 50001, "Missing Access")
        gid = request.match_info.get("guild_id")
        if gid is None:
            return None
        if int(gid) not in self.guilds:
            raise DiscordAPIError(403, 50001, "Missing Access")
        return int(gid)

    async def _put_commands(self, request: web.Request) -> web.Response:
        guild_id = self._check_app(request)
        payload = request[_REC].json
        if not isinstance(payload, list):
            raise _form_error("_errors", "BASE_TYPE_ARRAY", "Must be an array")
        seen: set[tuple[str, int]] = set()
        out = []
        version = str(self.snowflake())
        for i, cmd in enumerate(payload):
            ctype = int(cmd.get("type", 1))
            name = cmd.get("name", "")
            if (name, ctype) in seen:
                raise _form_error(f"{i}.name", "APPLICATION_COMMANDS_DUPLICATE_NAME",
                                  f"Application command names must be unique ({name})")
            seen.add((name, ctype))
            if ctype == 1 and not re.fullmatch(r"[-_\w]{1,32}", name):
                raise _form_error(f"{i}.name", "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid")
            key = (guild_id, name, ctype)
            cid = self._command_ids.setdefault(key, self.snowflake())
            echoed = {"id": str(cid), "application_id": str(self.application_id), "version": version,
                      "type": ctype, "default_member_permissions": None, "nsfw": False, "description": "", **cmd}
            if guild_id is not None:
                echoed["guild_id"] = str(guild_id)
            out.append(echoed)
        if guild_id is None:
            self.global_commands = out
        else:
            self.guild_commands[guild_id] = out
        self.syncs.append(guild_id)
        return self._json(out)

    async def _get_commands(self, request: web.Request) -> web.Response:
        guild_id = self._check_app(request)
        return self._json(self.global_commands if guild_id is None else self.guild_commands.get(guild_id, []))

    @property
    def global_sync_count(self) -> int:
        return self.syncs.count(None)

    def guild_sync_count(self, guild_id: int | None = None) -> int:
        return self.syncs.count(guild_id or self.guild_id)

    def find_command(self, name: str, type: int = 1, guild_id: int | None = None) -> dict[str, Any]:
        """The synced definition the user would see in ``guild_id`` (guild commands first; global commands
        whose ``contexts`` leave out guilds (0) are not shown in a guild, as in Discord's client)."""
        gid = guild_id or self.guild_id
        visible = [*self.guild_commands.get(gid, []),
                   *(c for c in self.global_commands if c.get("contexts") is None or 0 in c["contexts"])]
        for cmd in visible:
            if cmd["name"] == name and int(cmd.get("type", 1)) == type:
                return cmd
        known = sorted({c["name"] for c in visible})
        raise LookupError(f"command {name!r} (type {type}) is not synced for guild {gid}; synced: {known}")

    # ------------------------------------------------------------------------------------- gateway

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        self._sockets.add(ws)
        session: _GatewaySession | None = None
        try:
            await self._ws_send(ws, {"op": 10, "s": None, "t": None, "d": {
                "heartbeat_interval": self.heartbeat_interval_ms, "_trace": ["emulator"]}})
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    continue
                payload = json.loads(msg.data)
                self.gateway_log.append(("in", payload))
                self._notify()
                op, d = payload.get("op"), payload.get("d")
                if op == 1:
                    await self._ws_send(ws, {"op": 11, "s": None, "t": None, "d": None})
                elif op == 2:
                    if session is not None:
                        await ws.close(code=4005, message=b"Already authenticated.")
                        break
                    session = await self._identify(ws, request, d)
                elif op == 6:
                    session = await self._resume(ws, request, d)
                elif op == 8:
                    await self._request_members(ws, session, d)
        finally:
            self._sockets.discard(ws)
            if session is not None and session.ws is ws:
                session.ws = None
                session.request = None
            self._notify()
        return ws

    async def _ws_send(self, ws: web.WebSocketResponse, payload: dict[str, Any]) -> None:
        self.gateway_log.append(("out", payload))
        if not ws.closed:
            await ws.send_str(json.dumps(payload, separators=(",", ":")))

    async def _identify(self, ws: web.WebSocketResponse, request: web.Request,
                        d: dict[str, Any]) -> _GatewaySession | None:
        if d.get("token") != self.token:
            await ws.close(code=4004, message=b"Authentication failed.")
            return None
        intents = int(d.get("intents", 0))
        if intents & PRIVILEGED_INTENTS & ~self.allowed_privileged_intents:
            await ws.close(code=4014, message=b"Disallowed intent(s).")
            return None
        self.identify_count += 1
        session = _GatewaySession(secrets.token_hex(16), intents, d.get("shard"), ws=ws, request=request)
        self._sessions[session.session_id] = session
        guilds = [g for g in self.guilds.values() if session.handles_guild(g.id)]
        ready: dict[str, Any] = {
            "v": 10, "user": {**self.bot_user.to_dict(), "verified": True, "mfa_enabled": False, "email": None},
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
            "session_id": session.session_id, "session_type": "normal", "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.application_id), "flags": 0}, "private_channels": [],
            "relationships": [], "presences": [], "user_settings": {}, "geo_ordered_rtc_regions": [],
            "guild_join_requests": [], "auth_session_id_hash": "", "_trace": ["emulator"],
        }
        if session.shard:
            ready["shard"] = session.shard
        await self._session_dispatch(session, "READY", ready)
        for guild in guilds:
            await self._session_dispatch(session, "GUILD_CREATE", self._guild_dict(guild, full=True))
        return session

    async def _resume(self, ws: web.WebSocketResponse, request: web.Request,
                      d: dict[str, Any]) -> _GatewaySession | None:
        session = self._sessions.get(d.get("session_id", ""))
        if d.get("token") != self.token:
            await ws.close(code=4004, message=b"Authentication failed.")
            return None
        if session is None or not session.valid:
            await self._ws_send(ws, {"op": 9, "s": None, "t": None, "d": False})
            return None
        self.resume_count += 1
        async with session.lock:
            if session.ws is not None and session.ws is not ws:
                with contextlib.suppress(Exception):
                    await session.ws.close(code=4000)
            session.ws, session.request = ws, request
            last = int(d.get("seq") or 0)
            for payload in session.buffer:
                if payload["s"] > last:
                    await self._ws_send(ws, payload)
        await self._session_dispatch(session, "RESUMED", {"_trace": ["emulator"]})
        return session

    async def _request_members(self, ws: web.WebSocketResponse, session: _GatewaySession | None,
                               d: dict[str, Any]) -> None:
        if session is None:
            return
        guild = self.guilds.get(int(d.get("guild_id", 0)))
        if guild is None:
            return
        members = list(guild.members.values())
        if d.get("user_ids"):
            wanted = {int(u) for u in d["user_ids"]}
            members = [m for m in members if m.user.id in wanted]
        elif d.get("query"):
            members = [m for m in members if m.user.name.lower().startswith(d["query"].lower())]
        chunk: dict[str, Any] = {"guild_id": str(guild.id), "members": [self._member_dict(m) for m in members],
                                 "chunk_index": 0, "chunk_count": 1, "not_found": []}
        if d.get("nonce"):
            chunk["nonce"] = d["nonce"]
        await self._session_dispatch(session, "GUILD_MEMBERS_CHUNK", chunk)

    async def _session_dispatch(self, session: _GatewaySession, event: str, data: dict[str, Any]) -> None:
        async with session.lock:
            session.seq += 1
            payload = {"op": 0, "s": session.seq, "t": event, "d": data}
            session.buffer.append(payload)
            del session.buffer[:-1000]
            ws = session.ws
            if ws is not None and not ws.closed:
                try:
                    await self._ws_send(ws, payload)
                except (ConnectionError, RuntimeError):
                    pass  # buffered: a RESUME replays it
            else:
                self.gateway_log.append(("buffered", payload))

    async def dispatch(self, event: str, data: dict[str, Any], *, guild_id: int | None = None,
                       intent: int | None = None) -> None:
        """Send a dispatch to every live session (buffered for a RESUME while disconnected)."""
        sessions = [s for s in self._sessions.values() if s.valid and s.handles_guild(guild_id)
                    and (intent is None or s.intents & intent)]
        for session in sessions:
            await self._session_dispatch(session, event, data)

    @property
    def gateway_connected(self) -> bool:
        return any(s.valid and s.ws is not None and not s.ws.closed for s in self._sessions.values())

    async def wait_for_gateway(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Until a bot session is identified and connected."""
        await self.wait_until(lambda: self.gateway_connected, timeout, "a connected gateway session")

    async def wait_for_gateway_op(self, op: int, *, direction: str = "in", event: str | None = None,
                                  since: int = 0, timeout: float = 5.0) -> dict[str, Any]:  # noqa: ASYNC109
        """The first gateway payload at index >= ``since`` of ``gateway_log`` with that op (and event name)."""
        found: list[dict[str, Any]] = []

        def check() -> bool:
            found[:] = [p for d, p in self.gateway_log[since:]
                        if d == direction and p.get("op") == op and (event is None or p.get("t") == event)]
            return bool(found)
        await self.wait_until(check, timeout, f"gateway op {op} ({direction})")
        return found[0]

    async def disconnect_gateway(self, code: int | None = 4000) -> None:
        """Drop every gateway connection: a close frame with ``code`` (4000 → discord.py RESUMEs), or
        ``code=None`` to abort the TCP connection without a close frame. Sessions stay resumable."""
        for session in self._sessions.values():
            ws, request = session.ws, session.request
            if ws is None:
                continue
            session.ws = session.request = None
            if code is None and request is not None and request.transport is not None:
                request.transport.abort()
            else:
                with contextlib.suppress(Exception):
                    await ws.close(code=code or 1000, message=b"emulator disconnect")
        self._notify()

    async def send_reconnect(self) -> None:
        """Gateway op 7: discord.py closes and RESUMEs."""
        for session in self._sessions.values():
            if session.ws is not None:
                await self._ws_send(session.ws, {"op": 7, "s": None, "t": None, "d": None})

    async def invalidate_sessions(self, resumable: bool = False) -> None:
        """Gateway op 9; with ``resumable=False`` the sessions are forgotten and discord.py re-IDENTIFYs."""
        for session in list(self._sessions.values()):
            if not resumable:
                session.valid = False
            if session.ws is not None:
                await self._ws_send(session.ws, {"op": 9, "s": None, "t": None, "d": resumable})

    # ------------------------------------------------------------------------------------- messages

    def _new_message(self, channel_id: int, author: EmuUser, *, source: str, content: str = "",
                     embeds: list | None = None, components: list | None = None,
                     attachments: list[dict[str, Any]] | None = None, flags: int = 0,
                     allowed_mentions: dict | None = None, interaction: EmuInteraction | None = None,
                     webhook: bool = False, message_type: int = 0) -> EmuMessage:
        mid = self.snowflake()
        data: dict[str, Any] = {
            "id": str(mid), "type": message_type, "channel_id": str(channel_id), "author": author.to_dict(),
            "content": content, "timestamp": _iso(self.now()), "edited_timestamp": None, "tts": False,
            "mention_everyone": False, "mentions": [], "mention_roles": [], "attachments": attachments or [],
            "embeds": [_normalise_embed(e) for e in embeds or []],
            "components": _number_components(components or []), "flags": flags, "pinned": False,
            "reactions": [],
        }
        if webhook:
            data["webhook_id"] = str(self.application_id)
            data["application_id"] = str(self.application_id)
        if interaction is not None:
            data["interaction_metadata"] = {
                "id": str(interaction.id), "type": interaction.type, "user": interaction.user.to_dict(),
                "authorizing_integration_owners": interaction.payload.get("authorizing_integration_owners", {}),
            }
            if interaction.type == 3 and interaction.source_message is not None:
                data["interaction_metadata"]["interacted_message_id"] = str(interaction.source_message.id)
        msg = EmuMessage(data, source=source, allowed_mentions=allowed_mentions,
                         interaction_token=interaction.token if interaction else None, emu=self)
        self._apply_mentions(msg)
        self.messages[mid] = msg
        guild = self._guild_of_channel(channel_id)
        if guild is not None:
            where = self._channel(channel_id)
            where["last_message_id"] = str(mid)
            if channel_id in guild.threads:  # threads count their messages
                where["message_count"] += 1
                where["total_message_sent"] += 1
        return msg

    def _apply_mentions(self, msg: EmuMessage) -> None:
        """Fill mentions/mention_roles/mention_everyone from the content as allowed_mentions permits."""
        am = msg.allowed_mentions
        parse = set(am.get("parse", [])) if am is not None else {"users", "roles", "everyone"}
        allowed_users = {int(u) for u in am.get("users", [])} if am else set()
        allowed_roles = {int(r) for r in am.get("roles", [])} if am else set()
        users, roles, everyone = [], [], False
        for m in _MENTION_RE.finditer(msg.content or ""):
            if m.group(1):
                uid = int(m.group(1))
                if ("users" in parse or uid in allowed_users) and uid in self.users and uid not in users:
                    users.append(uid)
            elif m.group(2):
                rid = int(m.group(2))
                if ("roles" in parse or rid in allowed_roles) and rid not in roles:
                    roles.append(rid)
            elif "everyone" in parse:
                everyone = True
        msg.data["mentions"] = [self.users[u].to_dict() for u in users]
        msg.data["mention_roles"] = [str(r) for r in roles]
        msg.data["mention_everyone"] = everyone

    def _serialise_message(self, msg: EmuMessage) -> dict[str, Any]:
        """The wire object with freshly signed attachment URLs."""
        data = dict(msg.data)
        atts = []
        for a in data.get("attachments", []):
            entry = self._files.get(int(a["id"]))
            atts.append(self._signed_attachment(entry[0]) if entry else a)
        data["attachments"] = atts
        return data

    def _gateway_message(self, msg: EmuMessage, session_intents: int | None = None) -> dict[str, Any]:
        data = self._serialise_message(msg)
        guild = self._guild_of_channel(msg.channel_id)
        if guild is not None:
            data["guild_id"] = str(guild.id)
            if msg.author_id in guild.members and "webhook_id" not in data:
                data["member"] = self._member_dict(guild.members[msg.author_id], with_user=False)
        return data

    async def _dispatch_message(self, event: str, msg: EmuMessage) -> None:
        if msg.ephemeral:
            return
        guild = self._guild_of_channel(msg.channel_id)
        gid = guild.id if guild else None
        for session in [s for s in self._sessions.values() if s.valid and s.handles_guild(gid)
                        and s.intents & INTENT_GUILD_MESSAGES]:
            data = self._gateway_message(msg)
            if (not session.intents & INTENT_MESSAGE_CONTENT and msg.author_id != self.bot_user.id
                    and self.bot_user.id not in msg.pinged_user_ids):
                data.update(content="", embeds=[], attachments=[], components=[])
            await self._session_dispatch(session, event, data)

    async def _dispatch_delete(self, msg: EmuMessage) -> None:
        if msg.ephemeral:
            return
        guild = self._guild_of_channel(msg.channel_id)
        data = {"id": str(msg.id), "channel_id": str(msg.channel_id)}
        if guild:
            data["guild_id"] = str(guild.id)
        await self.dispatch("MESSAGE_DELETE", data, guild_id=guild.id if guild else None, intent=INTENT_GUILD_MESSAGES)

    def _build_attachments(self, payload: dict[str, Any], files: dict[int, Part], channel_id: int,
                           existing: list[dict[str, Any]] | None = None, *, voice: bool = False) -> list[dict] | None:
        """Attachments of a create/edit body: new uploads (files[n] + attachments[].id == n) and kept ones.
        Returns None when the body does not touch attachments (edit keeps them)."""
        if "attachments" not in payload and not files:
            return None
        existing_by_id = {a["id"]: a for a in existing or []}
        result: list[dict[str, Any]] = []
        used: set[int] = set()
        entries = payload.get("attachments")
        if entries is None:
            entries = [{"id": i} for i in sorted(files)] if not existing else (
                [{"id": a["id"]} for a in existing] + [{"id": i} for i in sorted(files)])
        for i, entry in enumerate(entries):
            raw_id = entry.get("id")
            if raw_id is not None and str(raw_id) in existing_by_id and not (
                    isinstance(raw_id, int) and raw_id in files):
                result.append(existing_by_id[str(raw_id)])
                continue
            try:
                index = int(raw_id)
            except (TypeError, ValueError):
                raise _form_error(f"attachments.{i}.id", "BASE_TYPE_REQUIRED", "This field is required") from None
            part = files.get(index)
            if part is None:
                raise _form_error(f"attachments.{i}", "ATTACHMENT_NOT_FOUND", f"Attachment data not found ({index})")
            used.add(index)
            result.append(self._upload(part, entry, channel_id, voice=voice))
        for index in sorted(set(files) - used):
            result.append(self._upload(files[index], {}, channel_id, voice=voice))
        if len(result) > 10:
            raise _form_error("attachments", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
        return result

    def _upload(self, part: Part, entry: dict[str, Any], channel_id: int, *, voice: bool) -> dict[str, Any]:
        if len(part.data) > self.upload_limit:
            raise DiscordAPIError(413, 40005, "Request entity too large")
        filename = entry.get("filename") or part.filename or "unknown"
        part_type = (part.content_type or "").split(";")[0].strip()
        content_type = part_type if part_type.startswith("audio/") else mimetypes.guess_type(filename)[0]
        # Discord keeps voice metadata only when the part itself is audio/* (see the testing doc)
        keep_meta = voice and part_type.startswith("audio/")
        return self._store_file(part.data, filename, content_type, channel_id,
                                duration_secs=entry.get("duration_secs") if keep_meta else None,
                                waveform=entry.get("waveform") if keep_meta else None,
                                description=entry.get("description"))

    def _validate_content(self, payload: dict[str, Any], attachments: list | None, *, edit: bool = False) -> None:
        content = payload.get("content")
        if content is not None and len(content) > 2000:
            raise _form_error("content", "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length.")
        embeds = payload.get("embeds") or []
        if len(embeds) > 10:
            raise _form_error("embeds", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
        components = payload.get("components") or []
        if not int(payload.get("flags") or 0) & FLAG_COMPONENTS_V2 and len(components) > 5:
            raise _form_error("components", "BASE_TYPE_MAX_LENGTH", "Must be 5 or fewer in length.")
        if not edit and not (content or embeds or components or attachments or payload.get("sticker_ids")
                             or payload.get("poll")):
            raise DiscordAPIError(400, 50006, "Cannot send an empty message")

    def _check_voice(self, channel_id: int, payload: dict[str, Any], files: dict[int, Part]) -> None:
        """Discord's rules for IS_VOICE_MESSAGE (flag 8192)."""
        if self.refuse_voice_messages.get(channel_id):
            raise DiscordAPIError(403, 50173, "Cannot send voice messages in this channel")
        if not self.member_permissions(self.bot_user, self._guild_of_channel(channel_id).id) & SEND_VOICE_MESSAGES:
            raise DiscordAPIError(403, 50013, "Missing Permissions")
        if payload.get("content") or payload.get("embeds") or payload.get("components") or payload.get("poll") \
                or payload.get("sticker_ids"):
            raise DiscordAPIError(400, 50159, "Voice messages do not support additional content.")
        entries = payload.get("attachments") or []
        if len(files) != 1 or len(entries) > 1:
            raise DiscordAPIError(400, 50160, "Voice messages must have a single audio attachment.")
        part = next(iter(files.values()))
        entry = entries[0] if entries else {}
        if not (part.content_type or "").startswith("audio/") or "duration_secs" not in entry \
                or "waveform" not in entry:
            raise DiscordAPIError(400, 50161, "Voice messages must have supporting metadata.")
        try:
            waveform = base64.b64decode(entry["waveform"], validate=True)
            duration = float(entry["duration_secs"])
        except (binascii.Error, TypeError, ValueError):
            raise _form_error("attachments.0.waveform", "BASE_TYPE_BAD_BASE64", "Invalid waveform") from None
        if len(waveform) > 256 or not waveform or duration <= 0:
            raise _form_error("attachments.0.waveform", "BASE_TYPE_BAD_LENGTH", "Waveform must be 1-256 bytes")

    def _check_send_permissions(self, channel_id: int, files: dict[int, Part]) -> None:
        guild = self._guild_of_channel(channel_id)
        if guild is None:
            raise DiscordAPIError(404, 10003, "Unknown Channel")
        perms = self.member_permissions(self.bot_user, guild.id)
        if not perms & VIEW_CHANNEL:
            raise DiscordAPIError(403, 50001, "Missing Access")
        kind = self._channel(channel_id)["type"]
        if kind in FORUM_TYPES:  # messages go into a post (a thread), never into the forum itself
            raise DiscordAPIError(400, 50008, "Cannot send messages in a non-text channel")
        # Discord: in a thread, Send Messages in Threads is what counts, not Send Messages.
        needed = SEND_MESSAGES_IN_THREADS if kind in THREAD_TYPES else SEND_MESSAGES
        if not perms & needed or (files and not perms & ATTACH_FILES):
            raise DiscordAPIError(403, 50013, "Missing Permissions")

    async def _create_message(self, request: web.Request) -> web.Response:
        self._require_bot(request)
        cid = int(request.match_info["cid"])
        self._channel(cid)
        payload, files = self._body(request)
        flags = int(payload.get("flags") or 0)
        if flags & ~(FLAG_SUPPRESS_EMBEDS | FLAG_SUPPRESS_NOTIFICATIONS | FLAG_VOICE_MESSAGE | FLAG_COMPONENTS_V2):
            raise _form_error("flags", "MESSAGE_FLAGS_INVALID", "Invalid flags for Create Message")
        self._check_send_permissions(cid, files)
        voice = bool(flags & FLAG_VOICE_MESSAGE)
        if voice:
            self._check_voice(cid, payload, files)
        nonce = payload.get("nonce")
        if nonce is not None and len(str(nonce)) > 25:
            raise _form_error("nonce", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
        if nonce is not None and payload.get("enforce_nonce"):
            # Discord: the same author and nonce within a few minutes returns that message, creates none.
            for earlier in reversed(list(self.messages.values())):
                if (earlier.channel_id == cid and earlier.data.get("nonce") == str(nonce)
                        and earlier.author_id == self.bot_user.id and self.now() - earlier.created_at < NONCE_WINDOW):
                    self.nonce_hits += 1
                    return self._json(earlier.to_dict())
        attachments = self._build_attachments(payload, files, cid, voice=voice)
        self._validate_content(payload, attachments)
        msg = self._new_message(cid, self.bot_user, source="channel", content=payload.get("content") or "",
                                embeds=payload.get("embeds"), components=payload.get("components"),
                                attachments=attachments, flags=flags, allowed_mentions=payload.get("allowed_mentions"))
        if payload.get("message_reference"):
            msg.data["message_reference"] = payload["message_reference"]
            msg.data["type"] = 19
        if nonce is not None:
            msg.data["nonce"] = str(nonce)
        await self._dispatch_message("MESSAGE_CREATE", msg)
        return self._json(msg.to_dict())

    def _message_in_channel(self, cid: int, mid: int) -> EmuMessage:
        self._channel(cid)
        msg = self.messages.get(mid)
        if msg is None or msg.channel_id != cid or msg.ephemeral:
            raise DiscordAPIError(404, 10008, "Unknown Message")
        return msg

    async def _channel_message(self, request: web.Request) -> web.Response:
        self._require_bot(request)
        cid, mid = int(request.match_info["cid"]), int(request.match_info["mid"])
        msg = self._message_in_channel(cid, mid)
        if request.method == "GET":
            return self._json(msg.to_dict())
        if request.method == "DELETE":
            if msg.author_id != self.bot_user.id and not self.member_permissions(
                    self.bot_user, self._guild_of_channel(cid).id) & MANAGE_MESSAGES:
                raise DiscordAPIError(403, 50013, "Missing Permissions")
            await self._delete_message(msg)
            return web.Response(status=204)
        if request.method == "PATCH":
            if msg.author_id != self.bot_user.id:
                raise DiscordAPIError(403, 50005, "Cannot edit a message authored by another user")
            payload, files = self._body(request)
            await self._edit_message(msg, payload, files)
            return self._json(msg.to_dict())
        raise DiscordAPIError(405, 0, "405: Method Not Allowed")

    async def _edit_message(self, msg: EmuMessage, payload: dict[str, Any], files: dict[int, Part]) -> None:
        if msg.is_voice_message:
            raise DiscordAPIError(400, 50162, "Voice messages cannot be edited.")
        attachments = self._build_attachments(payload, files, msg.channel_id, existing=msg.attachments)
        self._validate_content(payload, attachments, edit=True)
        if "flags" in payload and payload["flags"] is not None:
            new_flags = int(payload["flags"])
            if new_flags & FLAG_VOICE_MESSAGE:
                raise DiscordAPIError(400, 50162, "Voice messages cannot be edited.")
            changeable = FLAG_SUPPRESS_EMBEDS | FLAG_COMPONENTS_V2
            flags = (msg.flags & ~changeable) | (new_flags & changeable)
        else:
            flags = msg.flags
        if msg.loading:
            flags &= ~FLAG_LOADING
        data = json.loads(json.dumps(msg.data))
        data["flags"] = flags
        if "content" in payload:
            data["content"] = payload["content"] or ""
        if "embeds" in payload:
            data["embeds"] = [_normalise_embed(e) for e in payload["embeds"] or []]
        if "components" in payload:
            data["components"] = _number_components(payload["components"] or [])
        if attachments is not None:
            data["attachments"] = attachments
        if not (data["content"] or data["embeds"] or data["components"] or data["attachments"]):
            raise DiscordAPIError(400, 50006, "Cannot send an empty message")
        data["edited_timestamp"] = _iso(self.now())
        msg.history.append(msg.data)
        msg.data = data
        if "allowed_mentions" in payload:
            msg.allowed_mentions = payload["allowed_mentions"]
        self._apply_mentions(msg)
        await self._dispatch_message("MESSAGE_UPDATE", msg)

    async def _delete_message(self, msg: EmuMessage) -> None:
        msg.deleted = True
        self.messages.pop(msg.id, None)
        self.deleted_messages[msg.id] = msg
        await self._dispatch_delete(msg)

    async def _get_channel(self, request: web.Request) -> web.Response:
        self._require_bot(request)
        return self._json(self._channel(int(request.match_info["cid"])))

    async def _typing(self, request: web.Request) -> web.Response:
        self._require_bot(request)
        self._channel(int(request.match_info["cid"]))
        return web.Response(status=204)

    async def _get_channel_messages(self, request: web.Request) -> web.Response:
        self._require_bot(request)
        cid = int(request.match_info["cid"])
        self._channel(cid)
        limit = int(request.query.get("limit", 50))
        msgs = sorted(self.channel_messages(cid), key=lambda m: m.id, reverse=True)
        if "before" in request.query:
            msgs = [m for m in msgs if m.id < int(request.query["before"])]
        if "after" in request.query:
            msgs = [m for m in msgs if m.id > int(request.query["after"])]
        return self._json([m.to_dict() for m in msgs[:limit]])

    async def _get_my_guilds(self, request: web.Request) -> web.Response:
        """Get Current User Guilds: the guilds the bot is in, by id, with ``limit``/``after``."""
        self._require_bot(request)
        limit = int(request.query.get("limit", 200))
        after = int(request.query.get("after", 0))
        guilds = sorted((g for g in self.guilds.values() if self.bot_user.id in g.members and g.id > after),
                        key=lambda g: g.id)[:limit]
        return self._json([
            {"id": str(g.id), "name": g.name, "icon": None, "banner": None,
             "owner": g.owner_id == self.bot_user.id,
             "permissions": str(self.member_permissions(self.bot_user, g.id)), "features": []}
            for g in guilds
        ])

    async def _leave_guild(self, request: web.Request) -> web.Response:
        """Leave Guild: the bot stops being a member; GUILD_DELETE (no ``unavailable``) follows."""
        self._require_bot(request)
        gid = int(request.match_info["guild_id"])
        guild = self.guilds.get(gid)
        if guild is None or self.bot_user.id not in guild.members:
            raise DiscordAPIError(404, 10004, "Unknown Guild")
        del guild.members[self.bot_user.id]
        self.left_guilds.append(gid)
        self._notify()
        await self.dispatch("GUILD_DELETE", {"id": str(gid)}, guild_id=gid)
        return web.Response(status=204)

    async def join_guild(self, guild_id: int | None = None, name: str = "Joined Guild", *,
                         channel_name: str = "general", owner: EmuUser | None = None) -> EmuGuild:
        """The bot is added to a new guild while connected: :meth:`add_guild`, then GUILD_CREATE."""
        guild = self.add_guild(guild_id, name, channel_name=channel_name, owner=owner)
        data = self._guild_dict(guild, full=True)
        del data["unavailable"]  # a join, not an outage ending (discord.py: guild_join, not guild_available)
        await self.dispatch("GUILD_CREATE", data, guild_id=guild.id)
        return guild

    def dm_channel(self, user: EmuUser | int) -> dict[str, Any]:
        """The DM channel (type 1) between ``user`` and the bot (made on first use)."""
        user = self._resolve_user(user)
        channel = self.dm_channels.get(user.id)
        if channel is None:
            channel = {"id": str(self.snowflake()), "type": 1, "last_message_id": None, "flags": 0,
                       "recipients": [user.to_dict()]}
            self.dm_channels[user.id] = channel
        return channel

    def find_dm_command(self, name: str, type: int = 1) -> dict[str, Any]:
        """The global command ``name`` as a user sees it in a DM with the bot (contexts include 1)."""
        visible = [c for c in self.global_commands if c.get("dm_permission") is not False
                   and (c.get("contexts") is None or 1 in c["contexts"])]
        for cmd in visible:
            if cmd["name"] == name and int(cmd.get("type", 1)) == type:
                return cmd
        raise LookupError(f"command {name!r} (type {type}) is not available in DMs; "
                          f"available: {sorted(c['name'] for c in visible)}")

    async def dm_slash(self, user: EmuUser | int, command: str, subcommand: str | None = None,
                       options: Mapping[str, Any] | None = None, *, validate: bool = True) -> EmuInteraction:
        """``user`` runs ``/command`` in their DM with the bot: context 1, ``user`` instead of ``member``, no
        ``guild_id``, a ``channel`` of type 1 (string, number and boolean options)."""
        user = self._resolve_user(user)
        cmd = self.find_dm_command(command)
        path, defs = self._command_path(cmd, subcommand)
        nowhere = EmuGuild(0, "", 0)  # DMs have no roles or members to resolve
        resolved: dict[str, dict] = {}
        leaf = self._convert_options(defs, dict(options or {}), nowhere, resolved, focused=None, validate=validate)
        data: dict[str, Any] = {"id": cmd["id"], "name": cmd["name"], "type": 1,
                                "options": self._wrap_path(path, leaf, cmd)}
        if resolved:
            data["resolved"] = resolved
        channel = self.dm_channel(user)
        payload: dict[str, Any] = {
            "id": str(self.snowflake()), "application_id": str(self.application_id), "type": 2,
            "token": "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(96), "version": 1,
            "channel_id": channel["id"], "channel": dict(channel), "user": user.to_dict(), "data": data,
            "app_permissions": str(DEFAULT_BOT_PERMISSIONS), "locale": self.locale,
            "entitlements": [], "entitlement_sku_ids": [],
            "authorizing_integration_owners": {"0": "0"}, "context": 1,
            "attachment_size_limit": self.attachment_size_limit,
        }
        return await self._inject(payload, user)

    async def _get_guild(self, request: web.Request) -> web.Response:
        self._require_bot(request)
        guild = self.guilds.get(int(request.match_info["guild_id"]))
        if guild is None:
            raise DiscordAPIError(404, 10004, "Unknown Guild")
        return self._json(self._guild_dict(guild, full=False))

    async def _get_guild_channels(self, request: web.Request) -> web.Response:
        self._require_bot(request)
        guild = self.guilds.get(int(request.match_info["guild_id"]))
        if guild is None:
            raise DiscordAPIError(404, 10004, "Unknown Guild")
        return self._json(list(guild.channels.values()))

    async def _get_member(self, request: web.Request) -> web.Response:
        self._require_bot(request)
        guild = self.guilds.get(int(request.match_info["guild_id"]))
        if guild is None:
            raise DiscordAPIError(404, 10004, "Unknown Guild")
        member = guild.members.get(int(request.match_info["user_id"]))
        if member is None:
            raise DiscordAPIError(404, 10007, "Unknown Member")
        return self._json(self._member_dict(member))

    def channel_messages(self, channel_id: int | None = None, *, include_ephemeral: bool = False) -> list[EmuMessage]:
        """Messages in a channel, oldest first (ephemeral ones only on request)."""
        cid = channel_id or self.channel_id
        return [m for m in sorted(self.messages.values(), key=lambda m: m.id)
                if m.channel_id == cid and (include_ephemeral or not m.ephemeral)]

    async def create_user_message(self, channel_id: int | None, author: EmuUser | int, content: str = "",
                                  attachments: Iterable[dict[str, Any]] = (), flags: int = 0,
                                  embeds: list | None = None) -> EmuMessage:
        """A message posted by a user (e.g. the target of a message context menu); dispatched as
        MESSAGE_CREATE. ``attachments`` come from :meth:`add_attachment` (flags=8192 → voice message)."""
        cid = channel_id or self.channel_id
        self._channel(cid)
        user = self.users[_as_id(author)]
        msg = self._new_message(cid, user, source="user", content=content, embeds=embeds,
                                attachments=[{k: v for k, v in a.items() if k not in ("url", "proxy_url")}
                                             for a in attachments], flags=flags)
        await self._dispatch_message("MESSAGE_CREATE", msg)
        return msg

    # ------------------------------------------------------------------------------------- interactions (inject)

    def _interaction_payload(self, itype: int, user: EmuUser, data: dict[str, Any] | None, *,
                             channel_id: int | None, attachment_size_limit: int | None,
                             app_permissions: int | str | None, locale: str | None,
                             message: EmuMessage | None = None) -> dict[str, Any]:
        cid = channel_id or self.channel_id
        channel = self._channel(cid)
        guild = self._guild_of_channel(cid)
        assert guild is not None
        member = self.member(user, guild.id)
        perms = self.member_permissions(user, guild.id)
        app_perms = self.member_permissions(self.bot_user, guild.id) if app_permissions is None \
            else _perm_value(app_permissions)
        payload: dict[str, Any] = {
            "id": str(self.snowflake()), "application_id": str(self.application_id), "type": itype,
            "token": "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(96), "version": 1,
            "guild_id": str(guild.id), "guild": {"id": str(guild.id), "locale": self.locale, "features": []},
            "channel_id": str(cid), "channel": {**channel, "permissions": str(perms)},
            "member": {**self._member_dict(member, permissions=True)},
            "app_permissions": str(app_perms), "locale": locale or self.locale, "guild_locale": self.locale,
            "entitlements": [], "entitlement_sku_ids": [],
            "authorizing_integration_owners": {"0": str(guild.id)}, "context": 0,
            "attachment_size_limit": self.attachment_size_limit if attachment_size_limit is None
            else attachment_size_limit,
        }
        if data is not None:
            payload["data"] = data
        if message is not None:
            payload["message"] = message.to_dict()
        return payload

    async def _inject(self, payload: dict[str, Any], user: EmuUser, source_message: EmuMessage | None = None
                      ) -> EmuInteraction:
        if not any(s.valid for s in self._sessions.values()):
            raise RuntimeError("no bot is connected to the emulator's gateway "
                               "(start it with tests.harness.start_client)")
        inter = EmuInteraction(self, payload, user, source_message)
        self.interactions[inter.id] = inter
        self._by_token[inter.token] = inter
        await self.dispatch("INTERACTION_CREATE", payload, guild_id=inter.guild_id)
        return inter

    def _resolve_user(self, user: EmuUser | int) -> EmuUser:
        uid = _as_id(user)
        if uid not in self.users:
            return self.add_user(uid)
        return self.users[uid]

    def _command_path(self, command: dict[str, Any], subcommand: str | None) -> tuple[list[str], list[dict]]:
        """(names of the group/subcommand path, the leaf's option definitions)."""
        defs = command.get("options") or []
        path = subcommand.split() if subcommand else []
        for name in path:
            match = next((o for o in defs
                          if o["name"] == name and o["type"] in (OPTION_SUBCOMMAND, OPTION_GROUP)), None)
            if match is None:
                raise LookupError(f"/{command['name']} has no subcommand {name!r}: "
                                  f"{[o['name'] for o in defs if o['type'] in (1, 2)]}")
            defs = match.get("options") or []
        if any(o["type"] in (OPTION_SUBCOMMAND, OPTION_GROUP) for o in defs):
            raise LookupError(f"/{command['name']} {subcommand or ''} needs a subcommand: {[o['name'] for o in defs]}")
        return path, defs

    def _wrap_path(self, path: list[str], leaf: list[dict[str, Any]], command: dict[str, Any]) -> list[dict]:
        options = leaf
        types = []
        defs = command.get("options") or []
        for name in path:
            o = next(o for o in defs if o["name"] == name)
            types.append(o["type"])
            defs = o.get("options") or []
        for name, otype in reversed(list(zip(path, types, strict=True))):
            options = [{"name": name, "type": otype, "options": options}]
        return options

    def _convert_options(self, defs: list[dict[str, Any]], values: Mapping[str, Any], guild: EmuGuild,
                         resolved: dict[str, dict], *, focused: str | None, validate: bool) -> list[dict[str, Any]]:
        by_name = {d["name"]: d for d in defs}
        out = []
        for name, value in values.items():
            if value is None:
                continue
            d = by_name.get(name)
            if d is None:
                raise KeyError(f"option {name!r} is not in the synced definition: {list(by_name)}")
            t = d["type"]
            entry: dict[str, Any] = {"name": name, "type": t}
            if name == focused:
                entry.update(value=value, focused=True)
                out.append(entry)
                continue
            entry["value"] = self._option_value(d, value, guild, resolved, validate=validate)
            out.append(entry)
        if validate and focused is None:
            missing = [d["name"] for d in defs if d.get("required") and d["name"] not in values]
            if missing:
                raise ValueError(f"required options missing (Discord's client would not send this): {missing}")
        return out

    def _option_value(self, d: dict[str, Any], value: Any, guild: EmuGuild, resolved: dict[str, dict], *,
                      validate: bool) -> Any:
        t, name = d["type"], d["name"]
        if t == OPTION_STRING:
            if not isinstance(value, str):
                raise TypeError(f"option {name!r} is a string option, got {value!r}")
            if validate and not (d.get("min_length", 0) <= len(value) <= d.get("max_length", 6000)):
                raise ValueError(f"option {name!r}: length {len(value)} outside {d.get('min_length', 0)}"
                                 f"–{d.get('max_length', 6000)}")
        elif t in (OPTION_INTEGER, OPTION_NUMBER):
            if isinstance(value, bool) or not isinstance(value, int | float) or (t == OPTION_INTEGER
                                                                                and not isinstance(value, int)):
                raise TypeError(f"option {name!r} (type {t}) got {value!r}")
            if validate and (("min_value" in d and value < d["min_value"]) or
                             ("max_value" in d and value > d["max_value"])):
                raise ValueError(f"option {name!r}: {value} outside {d.get('min_value')}–{d.get('max_value')}")
        elif t == OPTION_BOOLEAN:
            if not isinstance(value, bool):
                raise TypeError(f"option {name!r} is a boolean option, got {value!r}")
        elif t in (OPTION_USER, OPTION_MENTIONABLE) and (isinstance(value, EmuUser) or _as_id(value) in self.users):
            user = self._resolve_user(value)
            resolved.setdefault("users", {})[str(user.id)] = user.to_dict()
            if user.id in guild.members:
                resolved.setdefault("members", {})[str(user.id)] = self._member_dict(
                    guild.members[user.id], with_user=False, permissions=True)
            return str(user.id)
        elif t in (OPTION_ROLE, OPTION_MENTIONABLE):
            rid = _as_id(value)
            if rid not in guild.roles:
                raise LookupError(f"option {name!r}: unknown role {rid}")
            resolved.setdefault("roles", {})[str(rid)] = guild.roles[rid]
            return str(rid)
        elif t == OPTION_CHANNEL:
            cid = _as_id(value)
            channel = self._channel(cid)
            if validate and d.get("channel_types") and channel["type"] not in d["channel_types"]:
                raise ValueError(f"option {name!r}: channel type {channel['type']} not in {d['channel_types']}")
            resolved.setdefault("channels", {})[str(cid)] = {
                k: channel[k] for k in ("id", "name", "type", "parent_id", "nsfw", "flags", "guild_id",
                                        "rate_limit_per_user", "topic", "position", "permission_overwrites",
                                        "last_message_id")} | {"permissions": str(ALL_PERMISSIONS)}
            return str(cid)
        elif t == OPTION_ATTACHMENT:
            aid = _as_id(value)
            if aid not in self._files:
                raise LookupError(f"option {name!r}: attachment {aid} was not made with emu.add_attachment")
            resolved.setdefault("attachments", {})[str(aid)] = self._signed_attachment(self._files[aid][0])
            return str(aid)
        else:
            raise TypeError(f"option {name!r}: unsupported option type {t}")
        if validate and d.get("choices") and value not in [c["value"] for c in d["choices"]]:
            raise ValueError(f"option {name!r}: {value!r} is not one of the choices "
                             f"{[c['value'] for c in d['choices']]}")
        return value

    async def slash(self, user: EmuUser | int, command: str, subcommand: str | None = None,
                    options: Mapping[str, Any] | None = None, attachments: Mapping[str, Any] | None = None, *,
                    channel_id: int | None = None, attachment_size_limit: int | None = None,
                    app_permissions: int | str | None = None, locale: str | None = None,
                    validate: bool = True) -> EmuInteraction:
        """A user runs ``/command [subcommand] option:value…`` (``subcommand`` may be ``"group sub"``).
        Option types come from the synced definition; pass plain Python values, :class:`EmuUser`, role/
        channel dicts or ids, attachment objects from :meth:`add_attachment`."""
        return await self._command_interaction(2, user, command, subcommand, {**(options or {}), **(attachments or {})},
                                               focused=None, channel_id=channel_id, validate=validate,
                                               attachment_size_limit=attachment_size_limit,
                                               app_permissions=app_permissions, locale=locale)

    async def _command_interaction(self, itype: int, user: EmuUser | int, command: str, subcommand: str | None,
                                   values: Mapping[str, Any], *, focused: str | None, channel_id: int | None,
                                   validate: bool, attachment_size_limit: int | None,
                                   app_permissions: int | str | None, locale: str | None) -> EmuInteraction:
        user = self._resolve_user(user)
        cid = channel_id or self.channel_id
        guild = self._guild_of_channel(cid)
        assert guild is not None
        cmd = self.find_command(command, 1, guild.id)
        path, defs = self._command_path(cmd, subcommand)
        resolved: dict[str, dict] = {}
        leaf = self._convert_options(defs, values, guild, resolved, focused=focused, validate=validate)
        data: dict[str, Any] = {"id": cmd["id"], "name": cmd["name"], "type": 1,
                                "options": self._wrap_path(path, leaf, cmd)}
        if resolved:
            data["resolved"] = resolved
        if cmd.get("guild_id"):
            data["guild_id"] = cmd["guild_id"]
        payload = self._interaction_payload(itype, user, data, channel_id=cid,
                                            attachment_size_limit=attachment_size_limit,
                                            app_permissions=app_permissions, locale=locale)
        return await self._inject(payload, user)

    async def autocomplete(self, user: EmuUser | int, command: str, subcommand: str | None = None,
                           options: Mapping[str, Any] | None = None, focused: str | None = None, *,
                           channel_id: int | None = None, timeout: float = 5.0) -> list[dict[str, Any]]:  # noqa: ASYNC109
        """The user types into option ``focused``; returns the choices the bot answered (callback type 8)."""
        values = dict(options or {})
        if focused is None:
            raise ValueError("autocomplete needs focused=<option name>")
        values.setdefault(focused, "")
        inter = await self._command_interaction(4, user, command, subcommand, values, focused=focused,
                                                channel_id=channel_id, validate=False, attachment_size_limit=None,
                                                app_permissions=None, locale=None)
        await inter.wait_response(timeout)
        if inter.callback_type != 8:
            raise AssertionError(f"autocomplete answered with callback type {inter.callback_type}")
        return inter.choices or []

    def _message_obj(self, message: EmuMessage | Mapping | int) -> EmuMessage:
        if isinstance(message, EmuMessage):
            return self.messages.get(message.id, message)
        mid = _as_id(message)
        if mid not in self.messages:
            raise LookupError(f"unknown message {mid}")
        return self.messages[mid]

    async def click(self, user: EmuUser | int, message: EmuMessage | Mapping | int, custom_id: str, *,
                    component_type: int = 2, values: list[str] | None = None) -> EmuInteraction:
        """The user presses the button ``custom_id`` on ``message`` (or picks ``values`` in a select)."""
        msg = self._message_obj(message)
        component = msg.component(custom_id)
        if component.get("disabled"):
            raise ValueError(f"component {custom_id!r} is disabled: a user cannot use it")
        if component_type == 2 and component.get("type") != 2:
            component_type = component.get("type", 2)
        user = self._resolve_user(user)
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": component_type}
        if "id" in component:
            data["id"] = component["id"]
        if values is not None:
            data["values"] = values
        payload = self._interaction_payload(3, user, data, channel_id=msg.channel_id, attachment_size_limit=None,
                                            app_permissions=None, locale=None, message=msg)
        await self._before_user_acts_on_a_message()
        return await self._inject(payload, user, source_message=msg)

    async def _before_user_acts_on_a_message(self) -> None:
        """A person clicks (or submits a modal) only after seeing the message, and Discord has answered the
        request that made it by then: wait until every answer is written to the bot, then a reaction time."""
        await self.wait_until(lambda: self.answers_in_flight == 0, 5.0, "the emulator's answers to be sent")
        await asyncio.sleep(self.reaction_time)

    async def select(self, user: EmuUser | int, message: EmuMessage | Mapping | int, custom_id: str,
                     values: list[str]) -> EmuInteraction:
        return await self.click(user, message, custom_id, component_type=3, values=values)

    def last_modal(self, token: str | None = None, custom_id: str | None = None) -> dict[str, Any] | None:
        """The modal the bot opened (callback type 9) for ``token``, else the latest with ``custom_id``/any."""
        if token is not None:
            inter = self._by_token.get(token)
            return inter.modal if inter else None
        for inter in reversed(list(self.interactions.values())):
            if inter.modal is not None and (custom_id is None or inter.modal["custom_id"] == custom_id):
                return inter.modal
        return None

    async def submit_modal(self, user: EmuUser | int, custom_id: str, values: Mapping[str, Any] | None = None, *,
                           token: str | None = None, channel_id: int | None = None,
                           validate: bool = True) -> EmuInteraction:
        """The user submits the modal ``custom_id`` the bot opened, with ``{text_input_custom_id: value}``
        (select / file-upload fields take lists). Fields not given keep their default value."""
        await self._before_user_acts_on_a_message()
        modal = self.last_modal(token, custom_id) if token else self.last_modal(None, custom_id)
        if modal is None:
            raise LookupError(f"the bot never opened a modal with custom_id {custom_id!r}")
        values = dict(values or {})
        resolved: dict[str, dict] = {}

        def convert(c: dict[str, Any]) -> dict[str, Any] | None:
            t = c.get("type")
            if t == 1:
                return {"type": 1, "id": c.get("id"), "components": [x for x in map(convert, c["components"]) if x]}
            if t == 18:
                inner = convert(c["component"])
                return {"type": 18, "id": c.get("id"), "component": inner}
            if t == 10:
                return {"type": 10, "id": c.get("id")}
            cid = c.get("custom_id")
            if cid is None:
                return None
            if t == 4:
                value = values.get(cid, c.get("value") or "")
                if validate and c.get("required", True) and not value:
                    raise ValueError(f"text input {cid!r} is required")
                if validate and not (c.get("min_length", 0) <= len(value) <= c.get("max_length", 4000)) and value:
                    raise ValueError(f"text input {cid!r}: length {len(value)} out of bounds")
                return {"type": 4, "id": c.get("id"), "custom_id": cid, "value": value}
            chosen = values.get(cid, [])
            if t == 19:
                ids = []
                for a in chosen:
                    aid = _as_id(a)
                    resolved.setdefault("attachments", {})[str(aid)] = self._signed_attachment(self._files[aid][0])
                    ids.append(str(aid))
                chosen = ids
            return {"type": t, "id": c.get("id"), "custom_id": cid, "values": [str(v) for v in chosen]}

        fields = {c["custom_id"] for c in _walk_components(modal["components"]) if "custom_id" in c}
        unknown = set(values) - fields
        if unknown:
            raise KeyError(f"modal {custom_id!r} has no fields {sorted(unknown)}; fields: {sorted(fields)}")
        components = [x for x in map(convert, modal["components"]) if x]
        source = self._by_token.get(modal["_token"])
        user = self._resolve_user(user)
        data: dict[str, Any] = {"custom_id": modal["custom_id"], "components": components}
        if resolved:
            data["resolved"] = resolved
        message = source.source_message if source and source.source_message else None
        channel_id = channel_id or (source.channel_id if source else None)
        payload = self._interaction_payload(5, user, data, channel_id=channel_id,
                                            attachment_size_limit=None, app_permissions=None, locale=None,
                                            message=message)
        return await self._inject(payload, user, source_message=message)

    async def message_context(self, user: EmuUser | int, name: str, message: EmuMessage | Mapping | int, *,
                              attachment_size_limit: int | None = None) -> EmuInteraction:
        """The user picks the message context menu ``name`` (Apps → name) on ``message``."""
        msg = self._message_obj(message)
        user = self._resolve_user(user)
        guild = self._guild_of_channel(msg.channel_id)
        cmd = self.find_command(name, 3, guild.id if guild else None)
        target = self._gateway_message(msg)
        data: dict[str, Any] = {"id": cmd["id"], "name": cmd["name"], "type": 3, "target_id": str(msg.id),
                                "resolved": {"messages": {str(msg.id): target}}}
        if cmd.get("guild_id"):
            data["guild_id"] = cmd["guild_id"]
        payload = self._interaction_payload(2, user, data, channel_id=msg.channel_id,
                                            attachment_size_limit=attachment_size_limit, app_permissions=None,
                                            locale=None)
        return await self._inject(payload, user)

    async def user_context(self, user: EmuUser | int, name: str, target: EmuUser | int) -> EmuInteraction:
        """The user picks the user context menu ``name`` on ``target``."""
        user, target_user = self._resolve_user(user), self._resolve_user(target)
        guild = self.guilds[self.guild_id]
        cmd = self.find_command(name, 2, guild.id)
        resolved = {"users": {str(target_user.id): target_user.to_dict()}}
        if target_user.id in guild.members:
            resolved["members"] = {str(target_user.id): self._member_dict(guild.members[target_user.id],
                                                                          with_user=False, permissions=True)}
        data = {"id": cmd["id"], "name": name, "type": 2, "target_id": str(target_user.id), "resolved": resolved}
        payload = self._interaction_payload(2, user, data, channel_id=None, attachment_size_limit=None,
                                            app_permissions=None, locale=None)
        return await self._inject(payload, user)

    def interaction(self, token_or_id: str | int) -> EmuInteraction:
        if isinstance(token_or_id, int):
            return self.interactions[token_or_id]
        return self._by_token[token_or_id]

    def original_response(self, token: str) -> EmuMessage | None:
        inter = self._by_token.get(token)
        if inter is None or inter.original_message_id is None:
            return None
        return self.messages.get(inter.original_message_id)

    def followups(self, token: str) -> list[EmuMessage]:
        inter = self._by_token.get(token)
        if inter is None:
            return []
        return [self.messages[m] for m in inter.followup_ids if m in self.messages]

    # ------------------------------------------------------------------------------------- interactions (REST)

    async def _interaction_callback(self, request: web.Request) -> web.Response:
        inter = self.interactions.get(int(request.match_info["iid"])) if request.match_info["iid"].isdigit() else None
        if inter is None or inter.token != request.match_info["token"]:
            raise DiscordAPIError(404, 10062, "Unknown interaction")
        try:
            return await self._handle_callback(request, inter)
        except DiscordAPIError as e:
            if inter.callback is None:
                inter.callback_error = e
                self._notify()
            raise

    async def _handle_callback(self, request: web.Request, inter: EmuInteraction) -> web.Response:
        if inter.responded:
            raise DiscordAPIError(400, 40060, "Interaction has already been acknowledged.")
        if self.now() - inter.created_at > self.interaction_deadline:
            raise DiscordAPIError(404, 10062, "Unknown interaction")
        body, files = self._body(request)
        ctype = body.get("type")
        data = body.get("data") or {}
        allowed = {2: (4, 5, 9), 3: (4, 5, 6, 7, 9), 4: (8,), 5: (4, 5, 6, 7)}[inter.type]
        if ctype not in allowed:
            raise _form_error("type", "INTERACTION_RESPONSE_TYPE_INVALID",
                              f"Interaction response type {ctype} is not valid for interaction type {inter.type}")
        message: EmuMessage | None = None
        is_component = inter.source_message is not None and inter.type in (3, 5)
        if ctype == 4:
            flags = int(data.get("flags") or 0)
            if flags & ~(FLAG_EPHEMERAL | FLAG_SUPPRESS_EMBEDS | FLAG_SUPPRESS_NOTIFICATIONS | FLAG_VOICE_MESSAGE
                         | FLAG_COMPONENTS_V2):
                raise _form_error("data.flags", "MESSAGE_FLAGS_INVALID", "Invalid flags")
            voice = bool(flags & FLAG_VOICE_MESSAGE)
            if voice:
                self._check_voice(inter.channel_id, data, files)
            attachments = self._build_attachments(data, files, inter.channel_id, voice=voice)
            self._validate_content(data, attachments)
            message = self._new_message(inter.channel_id, self.bot_user, source="interaction",
                                        content=data.get("content") or "", embeds=data.get("embeds"),
                                        components=data.get("components"), attachments=attachments, flags=flags,
                                        allowed_mentions=data.get("allowed_mentions"), interaction=inter,
                                        webhook=True, message_type=20 if inter.type == 2 else 0)
            inter.original_message_id = message.id
        elif ctype == 5:
            flags = FLAG_LOADING | (int(data.get("flags") or 0) & FLAG_EPHEMERAL)
            message = self._new_message(inter.channel_id, self.bot_user, source="interaction", flags=flags,
                                        interaction=inter, webhook=True, message_type=20 if inter.type == 2 else 0)
            inter.original_message_id = message.id
            inter._first_followup_pending = True
        elif ctype in (6, 7):
            if not is_component:
                raise _form_error("type", "INTERACTION_RESPONSE_TYPE_INVALID", "Not a component interaction")
            message = self.messages.get(inter.source_message.id)
            if message is None:
                raise DiscordAPIError(404, 10008, "Unknown Message")
            inter.original_message_id = message.id
            if ctype == 7:
                await self._edit_message(message, data, files)
        elif ctype == 8:
            choices = data.get("choices")
            if not isinstance(choices, list) or len(choices) > 25:
                raise _form_error("data.choices", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
            for i, c in enumerate(choices):
                if not (1 <= len(str(c.get("name", ""))) <= 100):
                    raise _form_error(f"data.choices.{i}.name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100")
                if isinstance(c.get("value"), str) and len(c["value"]) > 100:
                    raise _form_error(f"data.choices.{i}.value", "BASE_TYPE_BAD_LENGTH", "Must be 100 or fewer")
            inter.choices = choices
        elif ctype == 9:
            if not data.get("custom_id") or not data.get("title") or not 1 <= len(data.get("components") or []) <= 5:
                raise _form_error("data", "MODAL_INVALID", "A modal needs custom_id, title and 1-5 components")
            if len(data["title"]) > 45:
                raise _form_error("data.title", "BASE_TYPE_MAX_LENGTH", "Must be 45 or fewer in length.")
            inter.modal = {**data, "_token": inter.token}
        inter.callback_type = ctype
        inter.callback = body
        self._notify()
        if message is not None and ctype in (4, 5):
            await self._dispatch_message("MESSAGE_CREATE", message)
        answer: dict[str, Any] = {"interaction": {"id": str(inter.id), "type": inter.type,
                                                  "activity_instance_id": None,
                                                  "response_message_id": str(message.id) if message else None,
                                                  "response_message_loading": ctype == 5,
                                                  "response_message_ephemeral": bool(message and message.ephemeral)},
                                  "resource": {"type": ctype}}
        if message is not None and ctype in (4, 5, 7):
            answer["resource"]["message"] = message.to_dict()
        return self._json(answer)

    def _webhook_interaction(self, request: web.Request) -> EmuInteraction:
        if request.match_info["app"] != str(self.application_id):
            raise DiscordAPIError(404, 10015, "Unknown Webhook")
        inter = self._by_token.get(request.match_info["token"])
        if inter is None:
            raise DiscordAPIError(404, 10015, "Unknown Webhook")
        if self.now() - inter.created_at > self.token_lifetime:
            raise DiscordAPIError(401, 50027, "Invalid Webhook Token")
        if not inter.responded:
            raise DiscordAPIError(404, 10015, "Unknown Webhook")
        return inter

    async def _webhook_execute(self, request: web.Request) -> web.StreamResponse:
        inter = self._webhook_interaction(request)
        payload, files = self._body(request)
        flags = int(payload.get("flags") or 0)
        if flags & ~(FLAG_EPHEMERAL | FLAG_SUPPRESS_EMBEDS | FLAG_SUPPRESS_NOTIFICATIONS | FLAG_COMPONENTS_V2):
            raise _form_error("flags", "MESSAGE_FLAGS_INVALID",
                              "Followups accept only EPHEMERAL, SUPPRESS_EMBEDS, SUPPRESS_NOTIFICATIONS and "
                              "IS_COMPONENTS_V2 (voice messages are not documented for webhooks)")
        original = self.messages.get(inter.original_message_id) if inter.original_message_id else None
        if inter._first_followup_pending and original is not None and original.loading:
            # the first followup after a "thinking" defer replaces the loading message
            inter._first_followup_pending = False
            await self._edit_message(original, payload, files)
            msg = original
        else:
            attachments = self._build_attachments(payload, files, inter.channel_id)
            self._validate_content(payload, attachments)
            msg = self._new_message(inter.channel_id, self.bot_user, source="interaction",
                                    content=payload.get("content") or "", embeds=payload.get("embeds"),
                                    components=payload.get("components"), attachments=attachments, flags=flags,
                                    allowed_mentions=payload.get("allowed_mentions"), interaction=inter,
                                    webhook=True, message_type=0)
            inter.followup_ids.append(msg.id)
            await self._dispatch_message("MESSAGE_CREATE", msg)
        self._notify()
        if request.query.get("wait") in ("1", "true", "True"):
            return self._json(msg.to_dict())
        return web.Response(status=204)

    async def _webhook_message(self, request: web.Request) -> web.StreamResponse:
        inter = self._webhook_interaction(request)
        mid_raw = request.match_info["mid"]
        if mid_raw == "@original":
            mid = inter.original_message_id
        else:
            mid = int(mid_raw) if mid_raw.isdigit() else None
            if mid not in inter.followup_ids and mid != inter.original_message_id:
                mid = None
        msg = self.messages.get(mid) if mid is not None else None
        if msg is None:
            raise DiscordAPIError(404, 10008, "Unknown Message")
        if request.method == "GET":
            return self._json(msg.to_dict())
        if request.method == "DELETE":
            await self._delete_message(msg)
            self._notify()
            return web.Response(status=204)
        if request.method == "PATCH":
            payload, files = self._body(request)
            if msg.id == inter.original_message_id:
                inter._first_followup_pending = False
            await self._edit_message(msg, payload, files)
            self._notify()
            return self._json(msg.to_dict())
        raise DiscordAPIError(405, 0, "405: Method Not Allowed")


# --------------------------------------------------------------------------------------------- utilities


def _perm_value(permissions: Any) -> int:
    if hasattr(permissions, "value"):
        return int(permissions.value)
    return int(permissions)


def _normalise_embed(embed: dict[str, Any]) -> dict[str, Any]:
    out = dict(embed)
    out.setdefault("type", "rich")
    return out


def _number_components(components: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copy components and give each a numeric ``id`` as Discord does."""
    counter = itertools.count(1)
    used = {c["id"] for c in _walk_components(components) if isinstance(c.get("id"), int)}

    def walk(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for c in items:
            c = dict(c)
            if "id" not in c:
                n = next(counter)
                while n in used:
                    n = next(counter)
                c["id"] = n
            if "components" in c:
                c["components"] = walk(c["components"])
            if "component" in c:
                c["component"] = walk([c["component"]])[0]
            if "accessory" in c:
                c["accessory"] = walk([c["accessory"]])[0]
            out.append(c)
        return out
    return walk(json.loads(json.dumps(components)))


_PARAM_RE = re.compile(r';\s*([\w*]+)=("(?:[^"\\]|\\.)*"|[^;]*)')


def _parse_multipart(body: bytes, content_type: str) -> list[Part]:
    """Split a multipart/form-data body exactly (binary-safe)."""
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    if not m:
        return []
    delimiter = b"--" + m.group(1).encode()
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        chunk = chunk.removeprefix(b"\r\n")
        head, _, data = chunk.partition(b"\r\n\r\n")
        data = data.removesuffix(b"\r\n")
        headers: dict[str, str] = {}
        for line in head.decode("utf-8", "replace").split("\r\n"):
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        disposition = headers.get("content-disposition", "")
        params = {k.lower(): v.strip('"') for k, v in _PARAM_RE.findall(disposition)}
        filename = params.get("filename")
        if "filename*" in params:
            filename = unquote(params["filename*"].split("''", 1)[-1])
        parts.append(Part(params.get("name", ""), filename, headers.get("content-type"), data))
    return parts
