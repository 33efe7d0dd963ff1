"""Users acting on the bot: slash commands (guild and DM), autocomplete, button clicks and selects, modal
submits, message and user context menus, injected as INTERACTION_CREATE; and the interaction callback the
bot answers with (:class:`EmuInteraction` tracks how it answered)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .protocol import (
    ALL_PERMISSIONS,
    DEFAULT_BOT_PERMISSIONS,
    FLAG_COMPONENTS_V2,
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    FLAG_SUPPRESS_EMBEDS,
    FLAG_SUPPRESS_NOTIFICATIONS,
    FLAG_VOICE_MESSAGE,
    OPTION_ATTACHMENT,
    OPTION_BOOLEAN,
    OPTION_CHANNEL,
    OPTION_GROUP,
    OPTION_INTEGER,
    OPTION_MENTIONABLE,
    OPTION_NUMBER,
    OPTION_ROLE,
    OPTION_STRING,
    OPTION_SUBCOMMAND,
    OPTION_USER,
    DiscordAPIError,
    _form_error,
)
from .state import EmuGuild, EmuMessage, EmuUser, _as_id, _perm_value, _walk_components

if TYPE_CHECKING:
    from .server import DiscordEmulator


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
        #: The IDENTIFY ``shard`` of each gateway session INTERACTION_CREATE went to (None: unsharded).
        self.delivered_to: list[list[int] | None] = []

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


class InteractionMixin:
    """Injecting interactions and answering their callbacks (see :class:`DiscordEmulator` for the attributes)."""

    # ---------------------------------------------------------------- interactions (inject)

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
        inter.delivered_to = await self.dispatch("INTERACTION_CREATE", payload, guild_id=inter.guild_id)
        return inter

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

    # ------------------------------------------------------------------ interactions (REST)

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
