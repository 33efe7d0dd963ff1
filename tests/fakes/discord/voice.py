"""Voice: the gateway's op 4 (voice state), members moving between voice channels, and a voice server.

The voice server is what Discord runs at the ``endpoint`` of VOICE_SERVER_UPDATE:

- a **TLS** websocket (discord.py hard-codes ``wss://``) with a certificate from a ``trustme`` test CA;
  the bot trusts it through ``connector=aiohttp.TCPConnector(ssl=emu.voice_client_ssl_context())``;
- HELLO (8) → IDENTIFY (0) → READY (2) ``{ssrc, ip, port, modes}`` → SELECT_PROTOCOL (1) →
  SESSION_DESCRIPTION (4) ``{mode, secret_key, dave_protocol_version: 0}`` (0: DAVE negotiated off, so
  plain Opus travels inside the transport encryption; a DAVE/MLS handshake can't be served locally),
  SPEAKING (5), HEARTBEAT (3) → HEARTBEAT_ACK (6), RESUME (7) → RESUMED (9), and close codes on demand;
- a UDP socket: IP discovery (74-byte request/response) and RTP media, decrypted with the session key
  (``aead_xchacha20_poly1305_rtpsize``: 12-byte header as AAD, 4-byte nonce counter at the end).

The listener API says what someone in the channel would hear: :meth:`VoiceMixin.voice_frames` (every
decrypted Opus packet per guild, with arrival times), :meth:`VoiceMixin.heard_lines` (the packets split
into lines at discord.py's end-of-speech silence), :func:`opus_duration` (from each packet's TOC byte) and
:func:`ogg_opus` (an Ogg/Opus file of the packets, for decoding with ffmpeg).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import nacl.bindings
from aiohttp import WSMsgType, web

from .state import EmuUser

OPUS_SILENCE = b"\xf8\xff\xfe"  # discord.py's end-of-speech frames
VOICE_MODES = ["aead_xchacha20_poly1305_rtpsize", "aead_aes256_gcm_rtpsize"]
VOICE_HEARTBEAT_MS = 13750


@dataclass
class VoiceFrame:
    """One RTP packet as the voice server received it, decrypted."""

    guild_id: int
    ssrc: int
    sequence: int
    timestamp: int
    opus: bytes
    received_at: float  # time.perf_counter() when the socket read it

    @property
    def silence(self) -> bool:
        return self.opus == OPUS_SILENCE

    @property
    def header(self) -> bool:
        """An Ogg/Opus header packet sent as if it were audio (a listener's decoder would choke on it)."""
        return self.opus.startswith((b"OpusHead", b"OpusTags"))


@dataclass
class VoiceSession:
    """One voice websocket connection of the bot (a guild's voice session)."""

    guild_id: int
    user_id: int
    session_id: str
    token: str
    ssrc: int
    secret_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    ws: web.WebSocketResponse | None = None
    mode: str | None = None
    client_address: tuple[str, int] | None = None
    speaking: list[tuple[float, int]] = field(default_factory=list)  # (monotonic, speaking flags)
    heartbeats: int = 0
    resumed: int = 0
    connected_at: float = field(default_factory=time.monotonic)
    described_at: float | None = None


class _VoiceUDP:
    """The voice server's UDP socket, read by its own thread: each packet is stamped when it arrives,
    whatever the event loop (which also runs the emulator and the test) is busy with, then handled on
    the loop."""

    def __init__(self, emu: VoiceMixin, host: str, loop: asyncio.AbstractEventLoop) -> None:
        self.emu = emu
        self.loop = loop
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, name="emulator-voice-udp", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data, addr = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            stamp = time.perf_counter()
            with contextlib.suppress(RuntimeError):  # the loop is closing
                self.loop.call_soon_threadsafe(self._handle, data, addr, stamp)

    def _handle(self, data: bytes, addr: tuple[str, int], stamp: float) -> None:
        try:
            self.emu._udp_packet(data, addr, self, stamp)
        except Exception as exc:  # a bad packet is a finding, not a crash of the emulator
            self.emu.voice_errors.append(f"{type(exc).__name__}: {exc}")

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendto(data, addr)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(1)
        self.sock.close()


def opus_frame_seconds(packet: bytes) -> float:
    """Duration of one Opus packet from its TOC byte (RFC 6716 §3.1)."""
    if not packet:
        return 0.0
    toc = packet[0]
    config = toc >> 3
    if config < 12:  # SILK
        size = (10, 20, 40, 60)[config % 4]
    elif config < 16:  # hybrid
        size = (10, 20)[config % 2]
    else:  # CELT
        size = (2.5, 5, 10, 20)[config % 4]
    code = toc & 0x3
    if code == 0:
        count = 1
    elif code in (1, 2):
        count = 2
    else:
        count = packet[1] & 0x3F if len(packet) > 1 else 1
    return size * count / 1000


def opus_duration(frames: list[VoiceFrame]) -> float:
    """What the packets add up to, silence frames left out."""
    return sum(opus_frame_seconds(f.opus) for f in frames if not f.silence)


def _ogg_crc(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


def _ogg_page(serial: int, sequence: int, granule: int, packets: list[bytes], *, flags: int = 0) -> bytes:
    lacing = bytearray()
    for packet in packets:
        lacing += b"\xff" * (len(packet) // 255) + bytes([len(packet) % 255])
    header = struct.pack("<4sBBqIIIB", b"OggS", 0, flags, granule, serial, sequence, 0, len(lacing)) + bytes(lacing)
    page = bytearray(header + b"".join(packets))
    struct.pack_into("<I", page, 22, _ogg_crc(bytes(page)))
    return bytes(page)


def ogg_opus(frames: list[VoiceFrame], *, channels: int = 2) -> bytes:
    """An Ogg/Opus file holding the (non-silence) packets, one page each: what ffmpeg can decode."""
    serial = 0x6E766F63
    head = b"OpusHead" + struct.pack("<BBHIhB", 1, channels, 312, 48000, 0, 0)
    tags = b"OpusTags" + struct.pack("<I", 8) + b"emulator" + struct.pack("<I", 0)
    pages = [_ogg_page(serial, 0, 0, [head], flags=0x02), _ogg_page(serial, 1, 0, [tags])]
    granule = 0
    packets = [f.opus for f in frames if not f.silence]
    for i, packet in enumerate(packets):
        granule += round(opus_frame_seconds(packet) * 48000)
        pages.append(_ogg_page(serial, i + 2, granule, [packet], flags=0x04 if i == len(packets) - 1 else 0))
    return b"".join(pages)


class VoiceMixin:
    """Voice states, the voice websocket route and the UDP media socket (attributes in ``_voice_init``)."""

    # ---------------------------------------------------------------------------- set-up

    def _voice_init(self) -> None:
        self.voice_states: dict[int, dict[int, dict[str, Any]]] = {}  # guild → user → voice state
        self.voice_sessions: dict[int, VoiceSession] = {}  # guild → the bot's current voice session
        self.voice_session_log: list[VoiceSession] = []  # every voice session, in order
        self.frames: dict[int, list[VoiceFrame]] = {}
        self.voice_errors: list[str] = []  # packets the server could not decrypt or parse
        self.voice_op4: list[dict[str, Any]] = []  # every op 4 the bot sent
        self.voice_identify_close: dict[int, int] = {}  # guild → close code answering every IDENTIFY
        self.voice_server_answers = True  # False: op 4 gets no VOICE_SERVER_UPDATE (connect times out)
        self._pending_voice: dict[int, tuple[str, str]] = {}  # guild → (voice token, gateway session id)
        self._ssrcs = iter(range(1000, 1 << 31))
        self._udp: _VoiceUDP | None = None
        self.voice_port: int | None = None
        self.udp_port: int | None = None
        self._ca: Any = None
        self._server_ssl: ssl.SSLContext | None = None

    async def _voice_start(self, runner: web.AppRunner) -> None:
        import trustme

        self._ca = trustme.CA()
        cert = self._ca.issue_cert("127.0.0.1", "localhost")
        self._server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(self._server_ssl)
        site = web.TCPSite(runner, self.host, 0, ssl_context=self._server_ssl)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.voice_port = server.sockets[0].getsockname()[1]
        self._udp = _VoiceUDP(self, self.host, asyncio.get_running_loop())
        self.udp_port = self._udp.port

    async def _voice_close(self) -> None:
        for session in list(self.voice_sessions.values()):
            if session.ws is not None:
                with contextlib.suppress(Exception):
                    await session.ws.close(code=1001)
        if self._udp is not None:
            self._udp.close()
            self._udp = None

    def voice_client_ssl_context(self) -> ssl.SSLContext:
        """An SSL context trusting the emulator's test CA (give it to the bot's connector)."""
        ctx = ssl.create_default_context()
        self._ca.configure_trust(ctx)
        return ctx

    @property
    def voice_endpoint(self) -> str:
        return f"{self.host}:{self.voice_port}"

    # ---------------------------------------------------------------------------- voice channels and states

    async def create_voice_channel(self, name: str = "Lounge", *, guild_id: int | None = None,
                                   overwrites: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """A voice channel (type 2) made while the bot is connected: CHANNEL_CREATE."""
        channel = self.add_channel(name, type=2, guild_id=guild_id)
        channel["permission_overwrites"] = overwrites or []
        await self.dispatch("CHANNEL_CREATE", channel, guild_id=int(channel["guild_id"]))
        return channel

    async def update_channel(self, channel: dict[str, Any]) -> None:
        """Tell the bot a channel changed (e.g. its permission overwrites): CHANNEL_UPDATE."""
        await self.dispatch("CHANNEL_UPDATE", channel, guild_id=int(channel["guild_id"]))


    def voice_channel_of(self, user: EmuUser | int, guild_id: int | None = None) -> int | None:
        uid = user.id if isinstance(user, EmuUser) else int(user)
        state = self.voice_states.get(guild_id or self.guild_id, {}).get(uid)
        return int(state["channel_id"]) if state and state.get("channel_id") else None

    def voice_state_list(self, guild_id: int) -> list[dict[str, Any]]:
        """The guild's voice states as GUILD_CREATE carries them (no guild_id, no member)."""
        return [{k: v for k, v in s.items() if k not in ("guild_id", "member")}
                for s in self.voice_states.get(guild_id, {}).values()]

    def _voice_state(self, guild_id: int, user_id: int, channel_id: int | None, session_id: str, *,
                     self_deaf: bool = False, self_mute: bool = False) -> dict[str, Any]:
        member = self.member(user_id, guild_id)
        return {"guild_id": str(guild_id), "channel_id": str(channel_id) if channel_id else None,
                "user_id": str(user_id), "session_id": session_id, "deaf": False, "mute": False,
                "self_deaf": self_deaf, "self_mute": self_mute, "self_video": False, "self_stream": False,
                "suppress": False, "request_to_speak_timestamp": None,
                "member": self._member_dict(member)}

    def set_voice_state(self, user: EmuUser | int, channel_id: int | None, guild_id: int | None = None) -> None:
        """Put a user (the bot too) in a voice channel without telling anyone: for state that exists
        before the bot connects (GUILD_CREATE carries it), e.g. the bot "still in" a channel after a crash."""
        gid = guild_id or self.guild_id
        uid = user.id if isinstance(user, EmuUser) else int(user)
        states = self.voice_states.setdefault(gid, {})
        if channel_id is None:
            states.pop(uid, None)
        else:
            states[uid] = self._voice_state(gid, uid, channel_id, secrets.token_hex(16))

    async def move_member(self, user: EmuUser | int, channel_id: int | None, guild_id: int | None = None) -> None:
        """A member joins (or moves to) a voice channel, or leaves voice with ``None``: VOICE_STATE_UPDATE."""
        gid = guild_id or self.guild_id
        uid = user.id if isinstance(user, EmuUser) else int(user)
        state = self._voice_state(gid, uid, channel_id, secrets.token_hex(16))
        if channel_id is None:
            self.voice_states.get(gid, {}).pop(uid, None)
        else:
            self.voice_states.setdefault(gid, {})[uid] = state
        await self.dispatch("VOICE_STATE_UPDATE", state, guild_id=gid)
        self._notify()

    async def _voice_state_request(self, session: Any, d: dict[str, Any]) -> None:
        """Gateway op 4 from the bot: join, move or leave (``channel_id`` null)."""
        self.voice_op4.append(d)
        gid = int(d["guild_id"])
        channel_id = int(d["channel_id"]) if d.get("channel_id") else None
        bot_id = self.bot_user.id
        if channel_id is None:
            self.voice_states.get(gid, {}).pop(bot_id, None)
            await self._session_dispatch(session, "VOICE_STATE_UPDATE",
                                         self._voice_state(gid, bot_id, None, session.session_id))
            voice = self.voice_sessions.pop(gid, None)
            if voice is not None and voice.ws is not None and not voice.ws.closed:
                await voice.ws.close(code=4014, message=b"Disconnected.")
            self._notify()
            return
        state = self._voice_state(gid, bot_id, channel_id, session.session_id,
                                  self_deaf=bool(d.get("self_deaf")), self_mute=bool(d.get("self_mute")))
        self.voice_states.setdefault(gid, {})[bot_id] = state
        await self._session_dispatch(session, "VOICE_STATE_UPDATE", state)
        if self.voice_server_answers:
            token = secrets.token_hex(8)
            self._pending_voice[gid] = (token, session.session_id)
            await self._session_dispatch(session, "VOICE_SERVER_UPDATE",
                                         {"token": token, "guild_id": str(gid), "endpoint": self.voice_endpoint})
        self._notify()

    # ---------------------------------------------------------------------------- voice websocket

    async def _voice_ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        self._sockets.add(ws)
        session: VoiceSession | None = None
        seq = 0

        async def send(op: int, d: Any) -> None:
            nonlocal seq
            seq += 1
            if not ws.closed:
                await ws.send_str(json.dumps({"op": op, "d": d, "seq": seq}))

        try:
            await send(8, {"heartbeat_interval": VOICE_HEARTBEAT_MS, "v": 8})
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    continue
                payload = json.loads(msg.data)
                op, d = payload.get("op"), payload.get("d") or {}
                if op == 0:
                    session = await self._voice_identify(ws, d, send)
                elif op == 7:
                    session = await self._voice_resume(ws, d, send)
                elif session is None:
                    await ws.close(code=4003, message=b"Not authenticated.")
                elif op == 1:
                    data = d.get("data") or {}
                    if data.get("mode") not in VOICE_MODES:
                        await ws.close(code=4016, message=b"Unknown encryption mode.")
                        break
                    session.mode = data["mode"]
                    await send(4, {"mode": session.mode, "secret_key": list(session.secret_key),
                                   "dave_protocol_version": 0, "audio_codec": "opus", "video_codec": None,
                                   "media_session_id": secrets.token_hex(8)})
                    session.described_at = time.monotonic()
                elif op == 3:
                    session.heartbeats += 1
                    await send(6, {"t": d.get("t") if isinstance(d, dict) else d})
                elif op == 5:
                    session.speaking.append((time.monotonic(), int(d.get("speaking", 0))))
                self._notify()
        finally:
            self._sockets.discard(ws)
            if session is not None and session.ws is ws:
                session.ws = None
            self._notify()
        return ws

    async def _voice_identify(self, ws: web.WebSocketResponse, d: dict[str, Any], send: Any) -> VoiceSession | None:
        gid = int(d.get("server_id") or 0)
        pending = self._pending_voice.get(gid)
        if pending is None or d.get("token") != pending[0] or d.get("session_id") != pending[1] \
                or int(d.get("user_id") or 0) != self.bot_user.id:
            await ws.close(code=4004, message=b"Authentication failed.")
            return None
        if "max_dave_protocol_version" not in d:
            await ws.close(code=4017, message=b"E2EE/DAVE protocol required.")
            return None
        code = self.voice_identify_close.get(gid)
        if code is not None:
            await ws.close(code=code, message=b"emulator refused the voice session")
            return None
        old = self.voice_sessions.get(gid)
        ssrc = old.ssrc if old is not None and old.token == pending[0] else next(self._ssrcs)
        session = VoiceSession(gid, self.bot_user.id, pending[1], pending[0], ssrc, ws=ws)
        self.voice_sessions[gid] = session
        self.voice_session_log.append(session)
        await send(2, {"ssrc": ssrc, "ip": self.host, "port": self.udp_port, "modes": VOICE_MODES,
                       "heartbeat_interval": VOICE_HEARTBEAT_MS, "experiments": []})
        return session

    async def _voice_resume(self, ws: web.WebSocketResponse, d: dict[str, Any], send: Any) -> VoiceSession | None:
        session = self.voice_sessions.get(int(d.get("server_id") or 0))
        if session is None or d.get("token") != session.token or d.get("session_id") != session.session_id:
            await ws.close(code=4006, message=b"Session is no longer valid.")
            return None
        session.ws = ws
        session.resumed += 1
        await send(9, None)
        return session

    async def close_voice(self, code: int, guild_id: int | None = None) -> None:
        """Close the bot's voice websocket of a guild with ``code`` (4006, 4014, 4015, 4017, 4021, 4022, …)."""
        session = self.voice_sessions.get(guild_id or self.guild_id)
        if session is not None and session.ws is not None:
            await session.ws.close(code=code, message=b"emulator closed the voice session")

    async def move_voice_server(self, guild_id: int | None = None) -> None:
        """Discord moves the guild's voice to another server (a region change): a new VOICE_SERVER_UPDATE
        while the bot is connected (discord.py closes its voice websocket and connects again)."""
        gid = guild_id or self.guild_id
        session = next((s for s in self._sessions.values() if s.valid and s.ws is not None), None)
        if session is None:
            raise RuntimeError("no gateway session to send VOICE_SERVER_UPDATE on")
        token = secrets.token_hex(8)
        self._pending_voice[gid] = (token, session.session_id)
        await self._session_dispatch(session, "VOICE_SERVER_UPDATE",
                                     {"token": token, "guild_id": str(gid), "endpoint": self.voice_endpoint})

    async def kick_from_voice(self, guild_id: int | None = None) -> None:
        """A moderator disconnects the bot from voice: VOICE_STATE_UPDATE (channel null), then 4014."""
        gid = guild_id or self.guild_id
        self.voice_states.get(gid, {}).pop(self.bot_user.id, None)
        session_id = next((s.session_id for s in self._sessions.values() if s.valid), "")
        await self.dispatch("VOICE_STATE_UPDATE", self._voice_state(gid, self.bot_user.id, None, session_id),
                            guild_id=gid)
        voice = self.voice_sessions.pop(gid, None)
        if voice is not None and voice.ws is not None:
            await voice.ws.close(code=4014, message=b"Disconnected.")
        self._notify()

    # ---------------------------------------------------------------------------- UDP

    def _udp_packet(self, data: bytes, addr: tuple[str, int], udp: _VoiceUDP, received_at: float) -> None:
        if len(data) == 74 and data[:2] == b"\x00\x01":
            ssrc = struct.unpack_from(">I", data, 4)[0]
            answer = bytearray(74)
            struct.pack_into(">HHI", answer, 0, 2, 70, ssrc)
            ip = addr[0].encode()
            answer[8:8 + len(ip)] = ip
            struct.pack_into(">H", answer, 72, addr[1])
            for session in self.voice_sessions.values():
                if session.ssrc == ssrc:
                    session.client_address = addr
            udp.sendto(bytes(answer), addr)
            return
        if len(data) < 12 + 16 + 4 or data[0] & 0xC0 != 0x80:
            return
        ssrc = struct.unpack_from(">I", data, 8)[0]
        session = next((s for s in self.voice_sessions.values() if s.ssrc == ssrc), None)
        if session is None:
            self.voice_errors.append(f"RTP packet from unknown ssrc {ssrc}")
            return
        header, ciphertext, nonce = data[:12], data[12:-4], data[-4:]
        if session.mode != "aead_xchacha20_poly1305_rtpsize":
            self.voice_errors.append(f"RTP packet in mode {session.mode}, which the emulator does not decrypt")
            return
        opus = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            ciphertext, header, nonce + b"\x00" * 20, session.secret_key)
        sequence, timestamp = struct.unpack_from(">HI", data, 2)
        self.frames.setdefault(session.guild_id, []).append(
            VoiceFrame(session.guild_id, ssrc, sequence, timestamp, opus, received_at))
        self._notify()

    # ---------------------------------------------------------------------------- listener API

    def voice_frames(self, guild_id: int | None = None) -> list[VoiceFrame]:
        """Every Opus packet the bot sent in that guild's voice channel, in arrival order."""
        return list(self.frames.get(guild_id or self.guild_id, []))

    def heard_lines(self, guild_id: int | None = None) -> list[list[VoiceFrame]]:
        """The packets split into lines (discord.py ends each line with silence frames)."""
        lines: list[list[VoiceFrame]] = []
        current: list[VoiceFrame] = []
        for frame in self.voice_frames(guild_id):
            if frame.silence:
                if current:
                    lines.append(current)
                    current = []
            else:
                current.append(frame)
        if current:
            lines.append(current)
        return lines

    def heard_seconds(self, guild_id: int | None = None) -> list[float]:
        """How long each line heard in that guild lasted."""
        return [opus_duration(line) for line in self.heard_lines(guild_id)]

    async def wait_for_lines(self, count: int, guild_id: int | None = None, timeout: float = 10.0) -> list[float]:  # noqa: ASYNC109
        """Until ``count`` finished lines (each followed by silence) were heard; their durations."""
        gid = guild_id or self.guild_id

        def finished() -> int:
            frames = self.voice_frames(gid)
            ended = sum(1 for a, b in itertools.pairwise(frames) if not a.silence and b.silence)
            return ended

        await self.wait_until(lambda: finished() >= count, timeout, f"{count} line(s) heard in guild {gid}")
        return self.heard_seconds(gid)
