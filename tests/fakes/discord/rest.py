"""The REST routes the bot calls: login, application commands, channel messages (create, edit, delete,
voice messages and their rules), guilds, the CDN, and interaction webhooks (followups, @original)."""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import mimetypes
import re
import secrets
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from aiohttp import web

from .plumbing import _REC, Part
from .protocol import (
    ATTACH_FILES,
    FLAG_COMPONENTS_V2,
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    FLAG_SUPPRESS_EMBEDS,
    FLAG_SUPPRESS_NOTIFICATIONS,
    FLAG_VOICE_MESSAGE,
    FORUM_TYPES,
    MANAGE_MESSAGES,
    NONCE_WINDOW,
    SEND_MESSAGES,
    SEND_MESSAGES_IN_THREADS,
    SEND_VOICE_MESSAGES,
    THREAD_TYPES,
    VIEW_CHANNEL,
    DiscordAPIError,
    _form_error,
)
from .state import EmuMessage, _as_id, _iso, _normalise_embed, _number_components

if TYPE_CHECKING:
    from .interactions import EmuInteraction


class RestMixin:
    """Route handlers (registered in :meth:`DiscordEmulator.start`) and the message rules they share."""

    # ------------------------------------------------------------------ login, gateway REST

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
        return self._json({"url": self.gateway_url, "shards": self.shard_count, "session_start_limit": {
            "total": 1000, "remaining": 999, "reset_after": 14400000, "max_concurrency": self.max_concurrency}})

    # ----------------------------------------------------------------- application commands

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

    def find_dm_command(self, name: str, type: int = 1) -> dict[str, Any]:
        """The global command ``name`` as a user sees it in a DM with the bot (contexts include 1)."""
        visible = [c for c in self.global_commands if c.get("dm_permission") is not False
                   and (c.get("contexts") is None or 1 in c["contexts"])]
        for cmd in visible:
            if cmd["name"] == name and int(cmd.get("type", 1)) == type:
                return cmd
        raise LookupError(f"command {name!r} (type {type}) is not available in DMs; "
                          f"available: {sorted(c['name'] for c in visible)}")

    # --------------------------------------------------------------------- channel messages

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
        # Discord keeps voice metadata (duration, waveform) only when the part itself is audio/*
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

    # ------------------------------------------------------------------------------- guilds

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

    # ---------------------------------------------------------------------------------- CDN

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

    # ----------------------------------------------------------------- interaction webhooks

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
