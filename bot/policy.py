"""Who may clone where: the per-guild switch and clone role from ``/nanovoice settings``.

A guild's settings override the environment defaults (README's configuration table) for that guild only:

* ``clones_enabled`` — NULL (never set) or true: members may clone; false: nobody may clone there.
* ``clone_role_id`` — NULL: everyone may clone; a role id: only members holding that role.
* ``voice_playback`` — NULL (never set) or true: ``/say`` also plays in the bot's voice channel
  (:mod:`bot.playback`); false: it never plays there.
* ``daily_budget_micros`` — NULL: ``GUILD_DAILY_BUDGET_USD``; else the guild's own budget (0: unlimited).
  The operator's ``GUILD_DAILY_BUDGET_USD`` is a ceiling: when it is above 0 a server may only choose a
  budget up to it (:func:`parse_budget`), and what is enforced is never above it, whatever is stored
  (:func:`bot.limits.effective_guild_budget`). :class:`bot.limits.Limits` enforces it;
  :func:`effective_settings` only describes it.

Blocks (``/owner block``): :class:`Blocks` keeps every block in memory as well as in the database, so
the gate in front of every interaction (``bot.app``) answers without a database read; on PostgreSQL it
follows the blocks other processes give (LISTEN/NOTIFY, or reading them again while it can't listen).

Nothing here knows Discord: the clone flow passes the member's role ids, the admin cog renders
:class:`EffectiveSettings`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from bot.config import Config
from bot.errors import Forbidden, UserFacingError
from bot.limits import effective_guild_budget, format_usd
from bot.storage import Block, Database
from bot.text import shorten

log = logging.getLogger(__name__)

CLONES_DISABLED = "Voice cloning is turned off in this server."
MAX_BUDGET_MICROS = 10_000 * 1_000_000  # $10,000 a day (with no operator ceiling): anything above is a typo
MIN_BUDGET_MICROS = 10_000  # $0.01 a day
USER_BLOCKED = "You can't use this bot."
GUILD_BLOCKED = "This bot isn't available in this server."
#: How often the blocks are read again while this process can't hear the other processes' changes.
BLOCKS_POLL_SECONDS = 2.0
_THOUSANDS = re.compile(r"\d{1,3}(,\d{3})+(\.\d*)?")


def clone_role_message(role_id: int) -> str:
    # Shown with allowed_mentions none: the role is rendered, never pinged.
    return f"Only members with the <@&{role_id}> role can clone voices here."


async def ensure_clone_allowed(db: Database, guild_id: int | None, role_ids: Iterable[int]) -> None:
    """Raise :class:`bot.errors.Forbidden` with one sentence when this member may not clone here.

    ``role_ids`` are the member's roles. Outside a guild (``guild_id`` None) there is no guild policy.
    The @everyone role has the guild's own id, so a clone role equal to ``guild_id`` admits everyone.
    """
    if guild_id is None:
        return
    settings = await db.guilds.get(guild_id)
    if settings.clones_enabled is False:
        raise Forbidden(CLONES_DISABLED)
    role_id = settings.clone_role_id
    if role_id is not None and role_id != guild_id and role_id not in set(role_ids):
        raise Forbidden(clone_role_message(role_id))


@dataclass(frozen=True, slots=True)
class EffectiveSettings:
    """A guild's settings as they apply now, and where each value comes from."""

    guild_id: int
    daily_budget_micros: int  # what is enforced: min(server, ceiling); 0: unlimited
    clone_role_id: int | None  # None: everyone
    clones_enabled: bool
    clones_enabled_from_server: bool
    clone_daily_limit: int  # CLONE_DAILY_LIMIT (0: cloning disabled on the whole bot)
    voice_playback: bool = True  # /say also plays in the bot's voice channel
    server_budget_micros: int | None = None  # what the server stored (None: nothing); may exceed the ceiling
    budget_ceiling_micros: int = 0  # GUILD_DAILY_BUDGET_USD: the most a server may choose (0: no ceiling)

    @property
    def budget_from_server(self) -> bool:
        """The server chose its own budget (False: GUILD_DAILY_BUDGET_USD applies)."""
        return self.server_budget_micros is not None

    @property
    def budget_capped(self) -> bool:
        """The server's own budget is above the operator's ceiling, so the ceiling applies instead."""
        return self.budget_from_server and self.daily_budget_micros != self.server_budget_micros


async def effective_settings(db: Database, config: Config, guild_id: int) -> EffectiveSettings:
    stored = await db.guilds.get(guild_id)
    ceiling = config.guild_daily_budget_micros
    return EffectiveSettings(
        guild_id=guild_id,
        daily_budget_micros=effective_guild_budget(stored.daily_budget_micros, ceiling),
        server_budget_micros=stored.daily_budget_micros,
        budget_ceiling_micros=ceiling,
        clone_role_id=stored.clone_role_id,
        clones_enabled=stored.clones_enabled is not False,
        clones_enabled_from_server=stored.clones_enabled is not None,
        clone_daily_limit=config.clone_daily_limit,
        voice_playback=stored.voice_playback is not False,
    )


async def voice_playback_enabled(db: Database, guild_id: int) -> bool:
    """Whether this server lets ``/say`` play in the bot's voice channel (``/nanovoice settings``)."""
    return (await db.guilds.get(guild_id)).voice_playback is not False


def parse_budget(text: str, ceiling_micros: int = 0) -> int:
    """A daily budget typed by a person ("2.50", "$2.50", "0") → exact micro-dollars.

    ``ceiling_micros`` is the operator's ``GUILD_DAILY_BUDGET_USD``: above 0, a server may choose from
    $0.01 up to it, and neither "0" (no limit) nor more; at 0 (unlimited), anything from $0.01 up to
    :data:`MAX_BUDGET_MICROS`, or 0 for no limit. Raises :class:`UserFacingError` with one sentence on
    anything else (negative, not a number, more than six decimals). Never goes through float.
    """
    raw = (text or "").strip()
    if raw.startswith("$"):
        raw = raw[1:].strip()
    example = "2.50" if ceiling_micros <= 0 or ceiling_micros >= 2_500_000 else format_usd(ceiling_micros)[1:]
    problem = UserFacingError(
        f"“{shorten(text or '', 40)}” is not a dollar amount; write the daily budget like {example}"
        + (", or 0 for no limit." if ceiling_micros <= 0 else ".")
    )
    if "," in raw:
        # Only as a thousands separator ("1,000.50"); "2,50" (a decimal comma) is refused, never read as 250.
        if not _THOUSANDS.fullmatch(raw):
            raise problem
        raw = raw.replace(",", "")
    if not raw or not all(c.isdigit() or c == "." for c in raw):
        raise problem
    try:
        amount = Decimal(raw)
    except InvalidOperation:
        raise problem from None
    if not amount.is_finite():
        raise problem
    micros = amount * 1_000_000
    if micros != micros.to_integral_value():
        raise UserFacingError("Budgets can have at most six decimals (a millionth of a dollar); use e.g. 2.50.")
    micros_int = int(micros)
    if ceiling_micros > 0:
        if micros_int <= 0 or micros_int > ceiling_micros:
            raise UserFacingError(f"This server's budget can be at most {format_usd(ceiling_micros)} a day.")
    elif micros_int > MAX_BUDGET_MICROS:
        raise UserFacingError(f"This server's budget can be at most {format_usd(MAX_BUDGET_MICROS)} a day, "
                              "or 0 for no limit.")
    if 0 < micros_int < MIN_BUDGET_MICROS:
        raise UserFacingError(f"This server's budget must be at least {format_usd(MIN_BUDGET_MICROS)} a day.")
    return micros_int


class Blocks:
    """The owner's blocks: stored by :class:`Database`, mirrored in memory for the interaction gate.

    On a database other processes share (PostgreSQL) the mirror follows their changes: every block and
    unblock is announced (:meth:`bot.storage.blocks.BlockRepository.watch`), and one background task reads the
    blocks again when it hears of one, or every :data:`BLOCKS_POLL_SECONDS` while this process can't hear the
    others (its listening connection is being restored). The gate itself never waits for the database.
    """

    def __init__(self, db: Database, *, poll_seconds: float = BLOCKS_POLL_SECONDS) -> None:
        self.db = db
        self.poll_seconds = poll_seconds
        self._blocked: dict[tuple[str, int], Block] = {}
        self._changed = asyncio.Event()
        self._generation = 0  # bumped by this process's own changes: a read that raced one is read again
        self._follower: asyncio.Task[None] | None = None
        db.blocks.watch(self._changed.set)

    async def load(self) -> Blocks:
        generation = self._generation
        blocked = {(b.kind, b.target_id): b for b in await self.db.blocks.list()}
        if generation == self._generation:
            self._blocked = blocked
        else:  # a block or unblock here raced the read: it may be missing from it
            self._changed.set()
        return self

    async def start(self) -> Blocks:
        """Load the blocks and, on a shared database, follow the other processes' changes until :meth:`close`."""
        await self.load()
        if self.db.shared and self._follower is None:
            self._follower = asyncio.create_task(self._follow(), name="nanovoice-blocks")
        return self

    async def close(self) -> None:
        follower, self._follower = self._follower, None
        if follower is not None:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)

    async def _follow(self) -> None:
        while True:
            timeout = None if self.db.caches_safely else self.poll_seconds
            try:
                await asyncio.wait_for(self._changed.wait(), timeout)
            except TimeoutError:
                pass  # not listening: read them again anyway
            self._changed.clear()
            try:
                await self.load()
            except Exception as exc:  # the database did not answer: keep what we have, try again soon
                log.warning("could not read the owner's blocks again (%s); retrying in %.0f s",
                            type(exc).__name__, self.poll_seconds)
                await asyncio.sleep(self.poll_seconds)
                self._changed.set()

    def refusal(self, user_id: int | None, guild_id: int | None) -> str | None:
        """The sentence for a blocked user (first) or a blocked server; None when neither is blocked."""
        if user_id is not None and ("user", user_id) in self._blocked:
            return USER_BLOCKED
        if guild_id is not None and ("guild", guild_id) in self._blocked:
            return GUILD_BLOCKED
        return None

    def all(self) -> list[Block]:
        return sorted(self._blocked.values(), key=lambda b: (b.created_at, b.kind, b.target_id))

    async def block(self, kind: str, target_id: int, reason: str | None, blocked_by: int, now: float) -> Block:
        if kind not in ("user", "guild"):
            raise ValueError(f"unknown block kind {kind!r}")
        self._generation += 1
        block = await self.db.blocks.add(kind, target_id, reason, blocked_by, now)
        self._generation += 1
        self._blocked[(kind, target_id)] = block
        return block

    async def unblock(self, kind: str, target_id: int) -> bool:
        self._generation += 1
        removed = await self.db.blocks.remove(kind, target_id)
        self._generation += 1
        self._blocked.pop((kind, target_id), None)
        return removed
