"""A local Discord: a real aiohttp server on 127.0.0.1 speaking the REST API, the gateway and a CDN.

A real discord.py client (REST client, webhook adapter, gateway websocket, command tree) runs against
it; ``tests/harness.py`` (``start_client``) points discord.py at it and starts the client::

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

Layout, one module per concern (``DiscordEmulator`` is assembled from their mixins in ``server.py``):

- ``protocol.py`` — Discord's numbers (permission bits, flags, intents, option types) and its error body
- ``state.py`` — users, guilds, members and permissions, channels, threads, DMs, messages, attachments,
  snowflakes, the clock, ``wait_until``
- ``plumbing.py`` — the HTTP middleware: recorded requests, multipart parsing, ``fail_next``/``hold_next``
- ``rest.py`` — REST routes: login, application commands, channel messages, guilds, the CDN, webhooks
- ``gateway.py`` — the websocket: IDENTIFY/RESUME, dispatch, disconnects and invalid sessions
- ``voice.py`` — voice: op 4 and voice states, and a voice server (TLS websocket, UDP, RTP decryption)
  with a listener API (``emu.heard_lines()``, ``emu.wait_for_lines(n)``); the bot trusts its test CA
  through ``connector=aiohttp.TCPConnector(ssl=emu.voice_client_ssl_context())``
- ``interactions.py`` — injecting slash commands, clicks, modals, autocomplete, context menus, and the
  interaction callback
- ``server.py`` — ``DiscordEmulator``: its knobs and state, the route table, start and close
"""

from __future__ import annotations

from .interactions import EmuInteraction
from .plumbing import Part, RecordedRequest
from .protocol import (
    ADD_REACTIONS,
    ADMINISTRATOR,
    ALL_PERMISSIONS,
    API_PREFIX,
    ATTACH_FILES,
    CALLBACK_NAMES,
    CONNECT,
    DEFAULT_BOT_PERMISSIONS,
    DEFAULT_EVERYONE_PERMISSIONS,
    DISCORD_EPOCH_MS,
    EMBED_LINKS,
    FLAG_COMPONENTS_V2,
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    FLAG_SUPPRESS_EMBEDS,
    FLAG_SUPPRESS_NOTIFICATIONS,
    FLAG_VOICE_MESSAGE,
    FORUM_TYPES,
    INTENT_GUILD_MEMBERS,
    INTENT_GUILD_MESSAGES,
    INTENT_GUILD_PRESENCES,
    INTENT_MESSAGE_CONTENT,
    MANAGE_GUILD,
    MANAGE_MESSAGES,
    NONCE_WINDOW,
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
    PRIVILEGED_INTENTS,
    READ_MESSAGE_HISTORY,
    SEND_MESSAGES,
    SEND_MESSAGES_IN_THREADS,
    SEND_VOICE_MESSAGES,
    SPEAK,
    THREAD_TYPES,
    USE_APPLICATION_COMMANDS,
    USE_EXTERNAL_EMOJIS,
    VIEW_CHANNEL,
    DiscordAPIError,
)
from .server import DiscordEmulator
from .state import AttachmentFile, EmuGuild, EmuMember, EmuMessage, EmuUser

__all__ = [
    "ADD_REACTIONS",
    "ADMINISTRATOR",
    "ALL_PERMISSIONS",
    "API_PREFIX",
    "ATTACH_FILES",
    "CALLBACK_NAMES",
    "CONNECT",
    "DEFAULT_BOT_PERMISSIONS",
    "DEFAULT_EVERYONE_PERMISSIONS",
    "DISCORD_EPOCH_MS",
    "EMBED_LINKS",
    "FLAG_COMPONENTS_V2",
    "FLAG_EPHEMERAL",
    "FLAG_LOADING",
    "FLAG_SUPPRESS_EMBEDS",
    "FLAG_SUPPRESS_NOTIFICATIONS",
    "FLAG_VOICE_MESSAGE",
    "FORUM_TYPES",
    "INTENT_GUILD_MEMBERS",
    "INTENT_GUILD_MESSAGES",
    "INTENT_GUILD_PRESENCES",
    "INTENT_MESSAGE_CONTENT",
    "MANAGE_GUILD",
    "MANAGE_MESSAGES",
    "NONCE_WINDOW",
    "OPTION_ATTACHMENT",
    "OPTION_BOOLEAN",
    "OPTION_CHANNEL",
    "OPTION_GROUP",
    "OPTION_INTEGER",
    "OPTION_MENTIONABLE",
    "OPTION_NUMBER",
    "OPTION_ROLE",
    "OPTION_STRING",
    "OPTION_SUBCOMMAND",
    "OPTION_USER",
    "PRIVILEGED_INTENTS",
    "READ_MESSAGE_HISTORY",
    "SEND_MESSAGES",
    "SEND_MESSAGES_IN_THREADS",
    "SEND_VOICE_MESSAGES",
    "SPEAK",
    "THREAD_TYPES",
    "USE_APPLICATION_COMMANDS",
    "USE_EXTERNAL_EMOJIS",
    "VIEW_CHANNEL",
    "AttachmentFile",
    "DiscordAPIError",
    "DiscordEmulator",
    "EmuGuild",
    "EmuInteraction",
    "EmuMember",
    "EmuMessage",
    "EmuUser",
    "Part",
    "RecordedRequest",
]
