"""The Bot: owner of every long-lived resource, command sync, and the one app-command error handler.

Resources open in order in ``setup_hook`` (HTTP session → database → NanoGPT client → services →
extensions) and close in reverse in ``close`` after discord.py has unloaded the cogs, so background
tasks finish before the session and the database go away.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
from typing import TYPE_CHECKING, Any, TypeVar, cast

import aiohttp
import discord
import yarl
from discord import app_commands
from discord.ext import commands

from bot import interactions
from bot.clock import Clock
from bot.config import Config
from bot.embeddings import EmbeddingHost
from bot.errors import UserFacingError
from bot.jobs import CloneService
from bot.limits import Limits
from bot.nanogpt import NanoGPTClient, NanoGPTError
from bot.playback import Playback
from bot.policy import GUILD_BLOCKED, Blocks
from bot.privacy import Privacy
from bot.speech import SpeechService
from bot.storage import Database

if TYPE_CHECKING:
    from discord.types.interactions import Interaction as InteractionPayload

    from cogs.clone_jobs import CloneJobs

log = logging.getLogger(__name__)

EXTENSIONS: tuple[str, ...] = (
    "cogs.voices",
    "cogs.clone_jobs",
    "cogs.speech",
    "cogs.voice_channels",
    "cogs.usage",
    "cogs.admin",
    "cogs.owner",
    "cogs.help",
)

COMMAND_HASH_KEY = "global_command_hash"
HTTP_CONNECTIONS = 512  # NanoGPT calls (and downloads) in flight at once
EXPIRED_INTERACTION_CODES = {10062, 10015}  # Unknown interaction, Unknown webhook


def point_discord_at(config: Config) -> None:
    """Send discord.py's REST and gateway traffic to the configured hosts (proxies, emulator).

    These are process-wide class attributes in discord.py; the Bot is the one place that sets them.
    """
    discord.http.Route.BASE = config.discord_api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(config.discord_gateway_url)


class NanoVoiceTree(app_commands.CommandTree):
    """Maps every app-command failure to one friendly, ephemeral sentence, and refuses commands and
    autocomplete from blocked users and from servers the bot may not serve before anything runs."""

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        client = interaction.client
        refusal = client.refusal(interaction.user.id, interaction.guild_id) if isinstance(client, NanoVoice) else None
        if refusal is None:
            return True
        await refuse(interaction, refusal)
        return False

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        await report_error(interaction, error)


async def refuse(interaction: discord.Interaction, message: str) -> None:
    """Answer a refused interaction with one private sentence (autocomplete: no choices), and nothing else."""
    log.info("refused interaction %s (type %s) from user %s in guild %s: %s", interaction.id,
             interaction.type.value, interaction.user.id, interaction.guild_id, message)
    try:
        if interaction.type is discord.InteractionType.autocomplete:
            await interaction.response.autocomplete([])
        else:
            await interactions.send_error(interaction, message)
    except discord.HTTPException:
        log.warning("could not deliver a refusal for interaction %s", interaction.id, exc_info=True)


async def report_error(interaction: discord.Interaction, error: BaseException) -> None:
    """Tell the user what went wrong in one sentence; log unexpected errors with an id."""
    original = getattr(error, "original", error)
    if interaction.client.is_closed():
        # Shutting down: the session and the gateway are gone, so this is no bug and nobody can be told.
        log.info("/%s was interrupted by shutdown: %s", interaction.command.qualified_name if interaction.command
                 else "?", original.__class__.__name__)
        return
    now = discord.utils.utcnow().timestamp()
    if isinstance(original, discord.NotFound) and original.code in EXPIRED_INTERACTION_CODES:
        # Discord gave up on the interaction (we were too slow, or it was already answered elsewhere):
        # nothing went wrong in the bot; the channel fallback tells the user to try again.
        log.warning("interaction %s expired before /%s could answer (Discord code %s)", interaction.id,
                    interaction.command.qualified_name if interaction.command else "?", original.code)
        message = "I couldn't answer in time; please try again."
    elif isinstance(error, app_commands.CommandOnCooldown):
        message = f"Slow down a little: you can use this again <t:{int(now + error.retry_after) + 1}:R>."
    elif isinstance(error, app_commands.MissingPermissions):
        message = "You need the Manage Server permission to do that."
    elif isinstance(error, app_commands.NoPrivateMessage):
        message = "This command only works in a server channel."
    elif isinstance(error, app_commands.CheckFailure) and not isinstance(error, app_commands.CommandInvokeError):
        message = str(error) or "You can't use this command here."
    elif isinstance(original, UserFacingError):
        message = str(original)
    elif isinstance(original, NanoGPTError):
        message = original.user_message
    else:
        error_id = secrets.token_hex(4)
        command = interaction.command.qualified_name if interaction.command else "?"
        log.error("unexpected error %s in /%s", error_id, command, exc_info=original)
        message = f"Sorry, something went wrong on my side (error id `{error_id}`)."
    try:
        await interactions.send_error(interaction, message)
    except discord.HTTPException:
        log.warning("could not deliver an error message for interaction %s", interaction.id, exc_info=True)


_T = TypeVar("_T")


def _opened(resource: _T | None, what: str) -> _T:
    """A resource of the bot that only exists between ``setup_hook`` and ``close``."""
    if resource is None:
        raise RuntimeError(f"the bot's {what} is not open: setup_hook has not run yet, or close() has")
    return resource


def nanovoice_of(client: discord.Client) -> NanoVoice:
    """``interaction.client`` as the :class:`NanoVoice` it always is (discord.py types it as a plain Client)."""
    if not isinstance(client, NanoVoice):
        raise RuntimeError(f"expected the NanoVoice bot as the interaction's client, not {type(client).__name__}")
    return client


class NanoVoice(commands.Bot):
    """The nanovoice bot. Construct with a :class:`Config`; ``start``/``close`` as any discord.py bot."""

    def __init__(self, config: Config, *, clock: Clock | None = None, http_host: str = "0.0.0.0",
                 **options: Any) -> None:
        point_discord_at(config)
        # voice_states: who is in which voice channel (joining a channel waits for it, too).
        options.setdefault("intents", discord.Intents(guilds=True, voice_states=True))
        options.setdefault("allowed_mentions", discord.AllowedMentions.none())
        super().__init__(command_prefix=commands.when_mentioned, tree_cls=NanoVoiceTree,
                         help_command=None, **options)
        self.config = config
        self.clock = clock or Clock()
        self.http_host = http_host
        self.session: aiohttp.ClientSession | None = None
        # Opened in setup_hook; read through the properties below, which say so when one is missing.
        self._db: Database | None = None
        self._nanogpt: NanoGPTClient | None = None
        self._limits: Limits | None = None
        self._embeddings: EmbeddingHost | None = None
        self._speech: SpeechService | None = None
        self._clones: CloneService | None = None
        self._blocks: Blocks | None = None
        self._privacy: Privacy | None = None
        self.playback = Playback(self.clock, config.voice_idle_seconds)
        self._clone_flow: CloneJobs | None = None  # the clone-jobs cog registers itself when it loads
        self.synced: str = "not synced"
        self._refusals: set[asyncio.Task] = set()
        self._leaving: set[int] = set()
        self._gate_components()

    # -- lifecycle -----------------------------------------------------------------------------

    async def setup_hook(self) -> None:
        # aiohttp's default pool caps at 100 connections: /say calls beyond that would queue silently.
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=HTTP_CONNECTIONS),
            timeout=aiohttp.ClientTimeout(total=60), headers={"User-Agent": "nanovoice"},
        )
        self._db = await Database(self.config.database_path).connect()
        self._nanogpt = NanoGPTClient(self.session, self.config.nanogpt_base_url, self.config.nanogpt_api_key)
        self._limits = Limits(self.db, self.config, self.clock)
        self._embeddings = EmbeddingHost(self.db, self.config, self.clock, self.session, http_host=self.http_host)
        await self.embeddings.start()
        self._speech = SpeechService(self.db, self.nanogpt, self.limits, self.clock, self.config, self.embeddings)
        self._clones = CloneService(self.db, self.nanogpt, self.limits, self.clock, self.config, self.speech,
                                    self.embeddings)
        self._blocks = await Blocks(self.db).load()
        self._privacy = Privacy(self.db)  # /forget-me: the repositories, and these holders of user data
        self.privacy.register("embeddings", self.embeddings)
        self.privacy.register("speech", self.speech)
        self.privacy.register("clones", self.clones)
        self.privacy.register("voice queue", self.playback)
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        await self.sync_commands()

    async def close(self) -> None:
        await super().close()  # unloads extensions (cogs cancel their tasks) and closes the gateway
        if self._embeddings is not None:
            await self._embeddings.close()
        if self._db is not None:
            await self._db.close()
            self._db = None
        if self.session is not None:
            await self.session.close()
            self.session = None

    # -- the resources setup_hook opens ---------------------------------------------------------

    @property
    def db(self) -> Database:
        return _opened(self._db, "database")

    @property
    def nanogpt(self) -> NanoGPTClient:
        return _opened(self._nanogpt, "NanoGPT client")

    @property
    def limits(self) -> Limits:
        return _opened(self._limits, "limits service")

    @property
    def embeddings(self) -> EmbeddingHost:
        return _opened(self._embeddings, "embedding host")

    @property
    def speech(self) -> SpeechService:
        return _opened(self._speech, "speech service")

    @property
    def clones(self) -> CloneService:
        return _opened(self._clones, "clone service")

    @property
    def blocks(self) -> Blocks:
        return _opened(self._blocks, "block list")

    @property
    def privacy(self) -> Privacy:
        return _opened(self._privacy, "privacy service")

    @property
    def clone_flow(self) -> CloneJobs:
        """The clone flow (``cogs.clone_jobs``) that /voice clone hands its requests to."""
        return _opened(self._clone_flow, "clone flow (cogs.clone_jobs)")

    def set_clone_flow(self, flow: CloneJobs | None) -> None:
        """Called by the clone-jobs cog as it loads (``flow``) and unloads (None)."""
        self._clone_flow = flow

    # -- who may use the bot (ALLOWED_GUILD_IDS, /owner block) ----------------------------------

    def refusal(self, user_id: int | None, guild_id: int | None) -> str | None:
        """The one sentence refusing an interaction from this user in this server, or None to go ahead.

        Synchronous on purpose (the blocks are kept in memory): it runs in front of every interaction."""
        if guild_id is not None and not self.config.guild_allowed(guild_id):
            return GUILD_BLOCKED
        return self._blocks.refusal(user_id, guild_id) if self._blocks is not None else None

    def _gate_components(self) -> None:
        """Refuse buttons, selects and modal submits from blocked users and servers before any view sees them.

        Application commands and autocomplete go through the tree's ``interaction_check``; components
        and modals are dispatched by discord.py straight to the views, so the gate sits in front of the
        INTERACTION_CREATE parser (one place for every view, present and future)."""
        parsers = self._connection.parsers
        parse = parsers["INTERACTION_CREATE"]

        def gated(data: dict[str, Any]) -> None:
            if data.get("type") in (3, 5):  # component, modal submit
                user = (data.get("member") or {}).get("user") or data.get("user") or {}
                guild_id = int(data["guild_id"]) if data.get("guild_id") else None
                refusal = self.refusal(int(user["id"]) if user.get("id") else None, guild_id)
                if refusal is not None:
                    # The raw INTERACTION_CREATE payload discord.py would have parsed into this very object.
                    payload = cast("InteractionPayload", data)
                    interaction = discord.Interaction(data=payload, state=self._connection)
                    task = asyncio.create_task(refuse(interaction, refusal), name=f"refuse-{interaction.id}")
                    self._refusals.add(task)
                    task.add_done_callback(self._refusals.discard)
                    return
            parse(data)

        parsers["INTERACTION_CREATE"] = gated

    async def leave_if_not_allowed(self, guild: discord.Guild) -> bool:
        """Leave a server that is not in ALLOWED_GUILD_IDS; True when it was left."""
        if self.config.guild_allowed(guild.id) or guild.id in self._leaving or self.get_guild(guild.id) is None:
            return False  # allowed, being left, or already gone (GUILD_DELETE)
        self._leaving.add(guild.id)  # on_ready and a guild event may both see it
        try:
            await guild.leave()
        except discord.HTTPException as exc:
            log.warning("could not leave server %s (not in ALLOWED_GUILD_IDS): HTTP %s", guild.id, exc.status)
            return False
        finally:
            self._leaving.discard(guild.id)
        log.warning("left server %s: it is not in ALLOWED_GUILD_IDS", guild.id)
        return True

    async def on_guild_join(self, guild: discord.Guild) -> None:
        await self.leave_if_not_allowed(guild)

    async def on_guild_available(self, guild: discord.Guild) -> None:
        if self.is_ready():  # at start-up on_ready goes through every guild once
            await self.leave_if_not_allowed(guild)

    # -- command sync --------------------------------------------------------------------------

    def command_payload(self, guild: discord.abc.Snowflake | None = None) -> list[dict[str, Any]]:
        commands_ = self.tree.get_commands(guild=guild)
        return sorted((c.to_dict(self.tree) for c in commands_), key=lambda d: (d.get("type", 1), d["name"]))

    def command_hash(self) -> str:
        blob = json.dumps(self.command_payload(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    async def sync_commands(self) -> str:
        """Sync per DEV_GUILD_ID and SYNC_COMMANDS; returns (and remembers) what was done."""
        mode = self.config.sync_commands
        if mode == "off":
            self.synced = "sync off"
        elif self.config.dev_guild_id is not None:
            guild = discord.Object(self.config.dev_guild_id)
            self.tree.copy_global_to(guild=guild)
            await self.tree.sync(guild=guild)
            self.synced = f"synced to guild {self.config.dev_guild_id}"
            if mode == "always":
                await self.tree.sync()
                self.synced += " and globally"
        else:
            digest = self.command_hash()
            if mode == "always" or await self.db.get_meta(COMMAND_HASH_KEY) != digest:
                await self.tree.sync()
                await self.db.set_meta(COMMAND_HASH_KEY, digest)
                self.synced = "synced globally"
            else:
                self.synced = "global commands unchanged"
        log.info("application commands: %s", self.synced)
        return self.synced

    async def on_ready(self) -> None:
        log.info("logged in as %s (%s) in %d guild(s)", self.user, getattr(self.user, "id", "?"), len(self.guilds))
        if self.config.allowed_guild_ids is not None:
            for guild in list(self.guilds):
                await self.leave_if_not_allowed(guild)
