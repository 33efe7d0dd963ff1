"""The Bot: the services, the cogs, command sync, and the gate in front of every command.

The resources come first (discord.py's ``examples/advanced_startup.py``): the command line opens the
HTTP session and the database, builds the NanoGPT client, and hands them to :class:`NanoVoice`, which
builds the services from them. ``close`` unloads the cogs (their tasks finish) and stops the embedding
host; the caller then closes the database and the session, in reverse order of opening.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from typing import TYPE_CHECKING, Any

import aiohttp
import discord
import yarl
from discord import app_commands
from discord.ext import commands

from bot import interactions
from bot.clock import Clock
from bot.cloning import CloneService
from bot.config import Config
from bot.embeddings import EmbeddingHost
from bot.limits import Limits
from bot.nanogpt import NanoGPTClient
from bot.playback import Playback
from bot.policy import GUILD_BLOCKED, Blocks
from bot.privacy import Privacy
from bot.storage import Database
from bot.tts import TTSService
from bot.voices import VoiceService

if TYPE_CHECKING:
    from cogs.cloning import Cloning

log = logging.getLogger(__name__)

EXTENSIONS: tuple[str, ...] = (
    "cogs.embedding_copies",
    "cogs.voices",
    "cogs.cloning",
    "cogs.say",
    "cogs.voice_channels",
    "cogs.usage",
    "cogs.admin",
    "cogs.owner",
    "cogs.help",
)

COMMAND_HASH_KEY = "global_command_hash"
GUILD_COMMAND_HASH_KEY = "guild_command_hash:{guild_id}"  # DEV_GUILD_ID's commands, on a shared database
COMMAND_SYNC_SECTION = "command-sync"  # Database.exclusive: one process compares and syncs at a time
#: Discord allows one IDENTIFY per bucket (shard id % max_concurrency) per this many seconds, across every
#: connection of the bot, whichever process opens it.
IDENTIFY_INTERVAL = 5.0
#: How long a process holds an IDENTIFY bucket, counted from taking its lock. discord.py has no hook after
#: the IDENTIFY is sent (``before_identify`` runs before the send; ``socket_raw_send`` needs debug events and
#: fires before the send too), so the hold starts a scheduler step or more before the IDENTIFY leaves, and
#: Discord sees two processes' IDENTIFYs with their own delays: held exactly 5 s, two IDENTIFYs of one
#: bucket arrived 4.9997 s apart once. The extra second covers a busy host; it costs 1 s per shard of one
#: bucket at start-up only.
IDENTIFY_HOLD = IDENTIFY_INTERVAL + 1.0
HTTP_CONNECTIONS = 512  # NanoGPT calls (and downloads) in flight at once


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
        return await nanovoice_of(interaction.client).admit(interaction)

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        await interactions.report_error(interaction, error)


def http_session() -> aiohttp.ClientSession:
    """The bot's one HTTP session (NanoGPT, downloads, the embedding host); whoever opens it closes it."""
    # aiohttp's default pool caps at 100 connections: /say calls beyond that would queue silently.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=HTTP_CONNECTIONS),
        timeout=aiohttp.ClientTimeout(total=60), headers={"User-Agent": "nanovoice"},
    )


def nanovoice_of(client: discord.Client) -> NanoVoice:
    """``interaction.client`` as the :class:`NanoVoice` it always is (discord.py types it as a plain Client)."""
    if not isinstance(client, NanoVoice):
        raise RuntimeError(f"expected the NanoVoice bot as the interaction's client, not {type(client).__name__}")
    return client


class NanoVoice(commands.Bot):
    """The nanovoice bot, built on resources its caller opened (and closes after it: see
    :func:`bot.__main__._run`); ``start``/``close`` as any discord.py bot."""

    def __init__(self, config: Config, *, session: aiohttp.ClientSession, db: Database, nanogpt: NanoGPTClient,
                 clock: Clock | None = None, http_host: str = "0.0.0.0", **options: Any) -> None:
        point_discord_at(config)
        # voice_states: who is in which voice channel (joining a channel waits for it, too).
        options.setdefault("intents", discord.Intents(guilds=True, voice_states=True))
        options.setdefault("allowed_mentions", discord.AllowedMentions.none())
        super().__init__(command_prefix=commands.when_mentioned, tree_cls=NanoVoiceTree,
                         help_command=None, **options)
        self.config = config
        self.clock = clock or Clock()
        self.http_host = http_host
        self.session = session
        self.db = db
        self.nanogpt = nanogpt
        self.limits = Limits(db, config, self.clock)
        self.embeddings = EmbeddingHost(db, config, self.clock, session, http_host=http_host)
        self.tts = TTSService(db, nanogpt, self.limits, self.clock, config, self.embeddings)
        self.voices = VoiceService(db, self.clock, self.embeddings)
        self.clones = CloneService(db, nanogpt, self.limits, self.clock, config, self.tts, self.embeddings,
                                   self.voices)
        self.blocks = Blocks(db)
        self.playback = Playback(self.clock, config.voice_idle_seconds)
        self.privacy = Privacy(db)  # /forget-me: the repositories, and these holders of user data
        self.privacy.register("embeddings", self.embeddings)
        self.privacy.register("tts", self.tts)
        self.privacy.register("clones", self.clones)
        self.privacy.register("voice queue", self.playback)
        self._clone_flow: Cloning | None = None  # the cloning cog registers itself when it loads
        self.synced: str = "not synced"
        self._leaving: set[int] = set()
        self._max_concurrency: int | None = None  # GET /gateway/bot's session_start_limit, fetched once
        self._identify_slots: set[asyncio.Task[None]] = set()  # each holds an IDENTIFY bucket for 6 s

    # -- lifecycle -----------------------------------------------------------------------------

    async def setup_hook(self) -> None:
        await self.embeddings.start()
        await self.blocks.start()  # on PostgreSQL it follows the blocks other processes give
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        await self.sync_commands()

    async def close(self) -> None:
        # Paid clone submits already sent get their answer first, while every cog (and Discord's HTTP) is
        # still there to refuse new clones in one sentence and update the cards (bot.__main__ did this
        # already on a signal; a second call returns at once).
        await self.clones.drain_submits()
        await super().close()  # unloads extensions (cogs cancel their tasks) and closes the gateway
        for slot in list(self._identify_slots):  # nothing more to identify: give the buckets back now
            slot.cancel()
        await asyncio.gather(*self._identify_slots, return_exceptions=True)
        await self.blocks.close()
        await self.embeddings.close()  # its HTTP server; the session and the database are the caller's

    # -- IDENTIFY rate limit across processes ---------------------------------------------------

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """Before each IDENTIFY: on a database shared with other processes (PostgreSQL), wait for this
        shard's bucket (``shard_id % max_concurrency``) and hold it for :data:`IDENTIFY_HOLD` seconds, in
        every process at once (an advisory lock per bucket), so one bucket's IDENTIFYs are at least
        :data:`IDENTIFY_INTERVAL` seconds apart. discord.py's own hook (kept on SQLite, where one process
        runs every shard) only spaces this process's IDENTIFYs by 5 s."""
        if not self.db.shared:
            await super().before_identify_hook(shard_id, initial=initial)
            return
        bucket = (shard_id or 0) % await self.max_concurrency()
        acquired: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        slot = asyncio.create_task(self._hold_identify_bucket(bucket, acquired), name=f"identify-bucket-{bucket}")
        self._identify_slots.add(slot)
        slot.add_done_callback(self._identify_slots.discard)
        try:
            await acquired
        except asyncio.CancelledError:
            slot.cancel()
            raise
        except Exception as exc:  # the database did not answer: space IDENTIFYs as discord.py does
            log.warning("could not take IDENTIFY bucket %d in the database (%s); waiting %.0f s instead",
                        bucket, type(exc).__name__, IDENTIFY_INTERVAL)
            await asyncio.sleep(IDENTIFY_INTERVAL)

    async def _hold_identify_bucket(self, bucket: int, acquired: asyncio.Future[None]) -> None:
        try:
            async with self.db.exclusive(f"identify:{self.application_id}:{bucket}"):
                acquired.set_result(None)
                await asyncio.sleep(IDENTIFY_HOLD)  # Discord's window is real time, not the bot's clock
        except Exception as exc:
            if not acquired.done():
                acquired.set_exception(exc)
            else:
                log.warning("releasing IDENTIFY bucket %d failed: %s", bucket, type(exc).__name__)
        finally:
            if not acquired.done():
                acquired.cancel()

    async def max_concurrency(self) -> int:
        """How many IDENTIFY buckets the bot has (``session_start_limit.max_concurrency`` of GET
        /gateway/bot; discord.py 2.7 does not keep it): fetched once, 1 until it could be."""
        if self._max_concurrency is None:
            try:
                _, _, limits = await self.http.get_bot_gateway()
                self._max_concurrency = max(1, int(limits["max_concurrency"]))
            except (discord.DiscordException, aiohttp.ClientError, OSError, KeyError, TypeError, ValueError) as exc:
                log.warning("could not read max_concurrency from GET /gateway/bot (%s): one IDENTIFY bucket",
                            type(exc).__name__)
                return 1
        return self._max_concurrency

    @property
    def clone_flow(self) -> Cloning:
        """The clone flow (``cogs.cloning``) that /voice clone hands its requests to."""
        if self._clone_flow is None:
            raise RuntimeError("the clone flow (cogs.cloning) is not loaded")
        return self._clone_flow

    def set_clone_flow(self, flow: Cloning | None) -> None:
        """Called by the cloning cog as it loads (``flow``) and unloads (None)."""
        self._clone_flow = flow

    # -- who may use the bot (ALLOWED_GUILD_IDS, /owner block) ----------------------------------

    def refusal(self, user_id: int | None, guild_id: int | None) -> str | None:
        """The one sentence refusing an interaction from this user in this server, or None to go ahead.

        Synchronous on purpose (the blocks are kept in memory): it runs in front of every interaction."""
        if guild_id is not None and not self.config.guild_allowed(guild_id):
            return GUILD_BLOCKED
        return self.blocks.refusal(user_id, guild_id)

    async def admit(self, interaction: discord.Interaction) -> bool:
        """True to go ahead; else the interaction was refused (one private sentence) and must not run.

        Asked by the tree for commands and autocomplete, and by every view and modal
        (:mod:`cogs.ui`) for buttons, selects and modal submits."""
        refusal = self.refusal(interaction.user.id, interaction.guild_id)
        if refusal is None:
            return True
        await interactions.refuse(interaction, refusal)
        return False

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

    def command_hash(self, guild: discord.abc.Snowflake | None = None) -> str:
        blob = json.dumps(self.command_payload(guild), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    async def sync_commands(self) -> str:
        """Sync per DEV_GUILD_ID and SYNC_COMMANDS; returns (and remembers) what was done.

        Compare-and-sync runs in :meth:`Database.exclusive`, so processes sharing one database and
        starting together sync a changed definition once: the others find the hash it stored."""
        if self.config.sync_commands == "off":
            self.synced = "sync off"
        else:
            async with self.db.exclusive(COMMAND_SYNC_SECTION):
                self.synced = await self._sync_commands(self.config.sync_commands)
        log.info("application commands: %s", self.synced)
        return self.synced

    async def _sync_commands(self, mode: str) -> str:
        if self.config.dev_guild_id is not None:
            guild = discord.Object(self.config.dev_guild_id)
            self.tree.copy_global_to(guild=guild)
            # One process syncs at every start; of several sharing a database, the first (hash per guild).
            key = GUILD_COMMAND_HASH_KEY.format(guild_id=guild.id)
            digest = self.command_hash(guild)
            if mode == "always" or not self.db.shared or await self.db.get_meta(key) != digest:
                await self.tree.sync(guild=guild)
                if self.db.shared:
                    await self.db.set_meta(key, digest)
                synced = f"synced to guild {self.config.dev_guild_id}"
            else:
                synced = f"commands of guild {self.config.dev_guild_id} unchanged"
            if mode == "always":
                await self.tree.sync()
                synced += " and globally"
            return synced
        digest = self.command_hash()
        if mode == "always" or await self.db.get_meta(COMMAND_HASH_KEY) != digest:
            await self.tree.sync()
            await self.db.set_meta(COMMAND_HASH_KEY, digest)
            return "synced globally"
        return "global commands unchanged"

    async def on_ready(self) -> None:
        log.info("logged in as %s (%s) in %d guild(s)", self.user, getattr(self.user, "id", "?"), len(self.guilds))
        if self.config.allowed_guild_ids is not None:
            for guild in list(self.guilds):
                await self.leave_if_not_allowed(guild)


class ShardedNanoVoice(NanoVoice, commands.AutoShardedBot):
    """The same bot over several gateway shards in this one process (SHARD_COUNT, SHARD_IDS): discord.py's
    ``AutoShardedBot``. ``on_ready`` comes once all of them are ready; ``latency`` is their average."""

    def __init__(self, config: Config, **kwargs: Any) -> None:
        if config.shard_count is None:
            raise ValueError("ShardedNanoVoice needs SHARD_COUNT")
        kwargs.setdefault("shard_count", config.shard_count)
        kwargs.setdefault("shard_ids", list(config.shard_ids) if config.shard_ids is not None else None)
        super().__init__(config, **kwargs)

    async def launch_shard(self, gateway: yarl.URL, shard_id: int, *, initial: bool = False) -> None:
        """discord.py's, except after :meth:`close`: a shard whose first connection failed is retried by
        calling this again 5 s later, forever; the command line closes the bot when the gateway can't be
        reached at all (:mod:`bot.__main__`), and then nothing is retried."""
        if self.is_closed():
            return
        await super().launch_shard(gateway, shard_id, initial=initial)


def build_bot(config: Config, **kwargs: Any) -> NanoVoice:
    """The bot the configuration asks for: :class:`ShardedNanoVoice` with SHARD_COUNT, else a plain
    :class:`NanoVoice` (one gateway connection, as discord.py's ``Bot``)."""
    if config.shard_count is None:
        return NanoVoice(config, **kwargs)
    return ShardedNanoVoice(config, **kwargs)
