"""The gateway websocket: HELLO, heartbeats, IDENTIFY → READY and GUILD_CREATE, RESUME with replay,
member chunks, dispatches to every live session (buffered while disconnected), and the faults tests
inject (disconnects, op 7 reconnect, op 9 invalid session)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from .plumbing import _REC
from .protocol import INTENT_GUILD_MESSAGES, INTENT_MESSAGE_CONTENT, PRIVILEGED_INTENTS
from .state import EmuGuild, EmuMessage, EmuUser


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
    client: str | None = None  # the process that identified (RecordedRequest.client of its /gateway request)

    def handles_guild(self, guild_id: int | None) -> bool:
        """Discord's sharding: a guild's events go to shard ``(guild_id >> 22) % count``, DMs to shard 0;
        a session that sent no ``shard`` in IDENTIFY gets everything."""
        if not self.shard:
            return True
        shard_id, count = self.shard
        if guild_id is None:
            return shard_id == 0
        return (guild_id >> 22) % count == shard_id


class GatewayMixin:
    """The websocket route and every dispatch (see :class:`DiscordEmulator` for the attributes)."""

    # ---------------------------------------------------------------------------- websocket

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
                elif op == 4 and session is not None:
                    await self._voice_state_request(session, d)
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
        self.identifies.append((time.monotonic(), d.get("shard")))
        session = _GatewaySession(secrets.token_hex(16), intents, d.get("shard"), ws=ws, request=request)
        record = request.get(_REC)
        session.client = record.client if record is not None else None
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

    # ----------------------------------------------------------------------------- dispatch

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
                       intent: int | None = None) -> list[list[int] | None]:
        """Send a dispatch to every live session of the guild's shard (buffered for a RESUME while
        disconnected); returns those sessions' IDENTIFY ``shard`` values (None: unsharded)."""
        sessions = [s for s in self._sessions.values() if s.valid and s.handles_guild(guild_id)
                    and (intent is None or s.intents & intent)]
        for session in sessions:
            await self._session_dispatch(session, event, data)
        return [s.shard for s in sessions]

    def shard_of(self, guild_id: int | None, count: int) -> int:
        """The shard (of ``count``) Discord sends this guild's events to; DMs (None) go to shard 0."""
        return 0 if guild_id is None else (guild_id >> 22) % count

    @property
    def identified_shards(self) -> list[list[int] | None]:
        """The IDENTIFY ``shard`` of every valid session, connected or not."""
        return [s.shard for s in self._sessions.values() if s.valid]

    def shard_clients(self, *, connected: bool = True) -> list[tuple[list[int] | None, str | None]]:
        """(IDENTIFY ``shard``, identifying process per ``client_of``) of every valid session (only the
        connected ones unless ``connected=False``), in IDENTIFY order."""
        return [(s.shard, s.client) for s in self._sessions.values()
                if s.valid and (not connected or (s.ws is not None and not s.ws.closed))]

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

    async def join_guild(self, guild_id: int | None = None, name: str = "Joined Guild", *,
                         channel_name: str = "general", owner: EmuUser | None = None) -> EmuGuild:
        """The bot is added to a new guild while connected: :meth:`add_guild`, then GUILD_CREATE."""
        guild = self.add_guild(guild_id, name, channel_name=channel_name, owner=owner)
        data = self._guild_dict(guild, full=True)
        del data["unavailable"]  # a join, not an outage ending (discord.py: guild_join, not guild_available)
        await self.dispatch("GUILD_CREATE", data, guild_id=guild.id)
        return guild

    # ---------------------------------------------------------- connection state and faults

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
