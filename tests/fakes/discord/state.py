"""What the emulated Discord knows, with no HTTP in it: users, guilds, roles, members and permissions,
channels, threads and DMs, messages as a user sees them, attachments on the fake CDN, snowflakes and the
clock, and waiting for any of it to change."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import itertools
import json
import mimetypes
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .protocol import (
    ADMINISTRATOR,
    ALL_PERMISSIONS,
    DEFAULT_BOT_PERMISSIONS,
    DEFAULT_EVERYONE_PERMISSIONS,
    DISCORD_EPOCH_MS,
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    FLAG_VOICE_MESSAGE,
    FORUM_TYPES,
    DiscordAPIError,
)

if TYPE_CHECKING:
    from .interactions import EmuInteraction
    from .server import DiscordEmulator

_MENTION_RE = re.compile(r"<@!?(\d+)>|<@&(\d+)>|@(everyone|here)")


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


class StateMixin:
    """Users, guilds, channels, messages and attachments (see :class:`DiscordEmulator` for the attributes)."""

    # ----------------------------------------------------------- clock, snowflakes, waiting

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

    # ------------------------------------------------------------------------ users, guilds

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

    def _resolve_user(self, user: EmuUser | int) -> EmuUser:
        uid = _as_id(user)
        if uid not in self.users:
            return self.add_user(uid)
        return self.users[uid]

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

    def dm_channel(self, user: EmuUser | int) -> dict[str, Any]:
        """The DM channel (type 1) between ``user`` and the bot (made on first use)."""
        user = self._resolve_user(user)
        channel = self.dm_channels.get(user.id)
        if channel is None:
            channel = {"id": str(self.snowflake()), "type": 1, "last_message_id": None, "flags": 0,
                       "recipients": [user.to_dict()]}
            self.dm_channels[user.id] = channel
        return channel

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
                "presences": [], "voice_states": self.voice_state_list(guild.id),
                "stage_instances": [], "guild_scheduled_events": [], "soundboard_sounds": [],
            })
        return data

    # -------------------------------------------------------------------- attachments / CDN

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

    # ----------------------------------------------------------------------------- messages

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

    def _message_obj(self, message: EmuMessage | Mapping | int) -> EmuMessage:
        if isinstance(message, EmuMessage):
            return self.messages.get(message.id, message)
        mid = _as_id(message)
        if mid not in self.messages:
            raise LookupError(f"unknown message {mid}")
        return self.messages[mid]

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
