"""The assembled emulator: :class:`DiscordEmulator` holds every knob and piece of state (``__init__``),
registers the routes and runs the aiohttp server on 127.0.0.1; its behaviour comes from the mixins, one
per concern (state, HTTP plumbing, REST, gateway, interactions)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import secrets
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .gateway import GatewayMixin, _GatewaySession
from .interactions import EmuInteraction, InteractionMixin
from .plumbing import PlumbingMixin, RecordedRequest, _Fault, _Hold
from .protocol import API_PREFIX, PRIVILEGED_INTENTS
from .rest import RestMixin
from .state import EmuGuild, EmuMessage, EmuUser, StateMixin
from .voice import VoiceMixin


class DiscordEmulator(InteractionMixin, RestMixin, GatewayMixin, VoiceMixin, PlumbingMixin, StateMixin):
    """See the package docstring (:mod:`tests.fakes.discord`)."""

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
        self.shard_count = 1  # what GET /gateway/bot recommends; a session's IDENTIFY "shard" decides its events
        self.max_concurrency = 1  # GET /gateway/bot's session_start_limit.max_concurrency (IDENTIFY buckets)
        self.allowed_privileged_intents = PRIVILEGED_INTENTS
        self.refuse_voice_messages: dict[int, bool] = {}
        self.locale = "en-US"
        # Names the local process behind a client's TCP port (RecordedRequest.client), e.g. which of several bot
        # processes sent a request; None: not recorded.
        self.client_of: Callable[[int], str | None] | None = None

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
        self.identifies: list[tuple[float, list[int] | None]] = []  # (time.monotonic(), "shard") per IDENTIFY
        self.resume_count = 0
        self._faults: list[_Fault] = []
        self._sessions: dict[str, _GatewaySession] = {}
        self._sockets: set[web.WebSocketResponse] = set()
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._voice_init()

        guild = self.add_guild(name=guild_name, channel_name=channel_name)
        self.guild_id = guild.id
        self.channel_id = next(iter(guild.channels))

    # ---------------------------------------------------------------------------- lifecycle

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
        r.add_get("/", self._voice_ws)  # the voice server's websocket (served over TLS on voice_port)
        r.add_route("*", "/{tail:.*}", self._unknown)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        await self._voice_start(self._runner)
        return self

    async def close(self) -> None:
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=1001, message=b"emulator closing")
        await self._voice_close()
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
