"""Spending limits: the daily clone limit, the guild's daily NanoGPT budget, the ledger, cooldowns (in memory,
or in the database for processes sharing one).

Every paid NanoGPT call goes through three steps:

1. ``reserve_clone`` / ``reserve_tts`` checks the limits and writes a 'reserved' ledger row with the
   estimated cost, in one write transaction (so concurrent requests can never overshoot a limit);
2. ``settle`` records the cost NanoGPT reported ('charged'), or
3. ``release`` frees the reservation when the call failed without a charge ('released', amount 0).

The guild budget is the server's own setting capped by ``GUILD_DAILY_BUDGET_USD``
(:func:`effective_guild_budget`); ``BOT_DAILY_BUDGET_USD`` caps every server and DM together, checked
in the same transaction.

Money is integer micro-units (micro-dollars for USD), never float. Days are UTC dates; limits reset
at UTC midnight. Nothing here knows about Discord, except that messages use Discord's ``<t:…:R>``
timestamp markup so each reader sees the reset time in their own time zone.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from bot import providers
from bot.clock import Clock
from bot.config import Config
from bot.errors import UserFacingError
from bot.storage import Database, Transaction
from bot.text import MICROS_PER_UNIT, format_money, format_usd

log = logging.getLogger(__name__)

# Documented TTS prices in micro-dollars per 1,000 characters, keyed by lower-cased model name.
# Models not listed (MiniMax and Qwen TTS: prices undocumented) use TTS_DEFAULT_MICROS_PER_1K, a
# deliberately high guess: the estimate only gates the budget, the settled cost is what NanoGPT reports.
TTS_MICROS_PER_1K_CHARS: dict[str, int] = {
    "kokoro-82m": 1_000,  # $0.001
    "gpt-4o-mini-tts": 600,  # $0.0006
    "tts-1": 15_000,  # $0.015
    "tts-1-hd": 30_000,  # $0.030
    "elevenlabs-turbo-v2.5": 60_000,  # $0.06
}
TTS_DEFAULT_MICROS_PER_1K = 100_000  # $0.10 per 1k characters


def effective_guild_budget(server_micros: int | None, ceiling_micros: int) -> int:
    """The daily budget enforced for a guild (0: unlimited).

    ``server_micros`` is the guild's own setting (None: not set), ``ceiling_micros`` the operator's
    ``GUILD_DAILY_BUDGET_USD`` (0: unlimited). A server may only tighten the operator's limit: the
    result is never above a ceiling > 0, whatever was stored (rows from before the ceiling existed,
    or a ceiling lowered later; a stored 0, "no limit", counts as the ceiling).
    """
    if server_micros is None:
        return ceiling_micros
    if ceiling_micros <= 0:
        return server_micros
    if server_micros <= 0:
        return ceiling_micros
    return min(server_micros, ceiling_micros)


def tts_price_text(model: str) -> str:
    """A model's price for people, from the price table: ``$0.001 per 1,000 characters``."""
    price = format_usd(estimate_tts_micros(model, 1000))
    if model.strip().lower() not in TTS_MICROS_PER_1K_CHARS:
        return f"up to {price} per 1,000 characters"  # undocumented price: the estimate is a ceiling
    return f"{price} per 1,000 characters"


def estimate_clone_micros(provider: str) -> int:
    """The price of one clone run with ``provider`` (a key of :mod:`bot.providers`)."""
    return providers.price_micros(provider)


def estimate_tts_micros(model: str, chars: int) -> int:
    """A conservative estimate of synthesising ``chars`` characters with ``model`` (at least 1 micro)."""
    per_1k = TTS_MICROS_PER_1K_CHARS.get(model.strip().lower(), TTS_DEFAULT_MICROS_PER_1K)
    return max(1, -(-per_1k * max(0, chars) // 1000))  # integer ceiling division: no float


def cost_to_micros(cost: float | int | str | Decimal) -> int:
    """Convert a cost as NanoGPT reports it (e.g. ``0.0050388``) to integer micro-units.

    The value goes through its shortest decimal text (``str(float)``), never binary float arithmetic,
    and is rounded half up to the micro-unit: 0.0050388 → 5039, 0.0000005 → 1, 1.0 → 1_000_000.
    """
    try:
        amount = cost if isinstance(cost, Decimal) else Decimal(str(cost).strip())
    except InvalidOperation:
        raise ValueError(f"not a cost: {cost!r}") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"not a cost: {cost!r}")
    return int((amount * MICROS_PER_UNIT).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def discord_relative(ts: float) -> str:
    """Discord's relative timestamp markup (``<t:1764115200:R>``), rounded up to the second."""
    return f"<t:{math.ceil(ts)}:R>"


class LimitExceeded(UserFacingError):
    """A daily limit or budget stops this paid call; ``str()`` is one sentence with the reset time.

    ``reason`` is one of ``clones_disabled``, ``clone_limit``, ``guild_budget``, ``bot_budget``; ``resets_at`` is the
    unix time the limit resets (None when it never does, e.g. cloning turned off).
    """

    def __init__(self, message: str, *, reason: str, resets_at: float | None) -> None:
        super().__init__(message)
        self.reason = reason
        self.resets_at = resets_at


@dataclass(frozen=True, slots=True)
class Reservation:
    """A ledger row holding an estimated cost until it is settled or released."""

    id: int
    kind: str  # 'clone' or 'tts'
    amount_micros: int
    day: str  # UTC date the reservation counts against


@dataclass(frozen=True, slots=True)
class Usage:
    """What ``/usage`` shows. USD figures in micro-dollars; reserved (in-flight) costs count as spent."""

    clones_today: int
    clone_limit: int  # 0: cloning disabled
    user_spend_today_micros: int
    user_spend_total_micros: int
    user_spend_total_xno_micros: int  # charges NanoGPT took in Nano (XNO) instead of USD; micro-XNO
    guild_spend_today_micros: int | None  # None outside a guild (DMs)
    guild_budget_micros: int | None  # effective budget; 0: unlimited; None outside a guild
    resets_at: float  # next UTC midnight


class Limits:
    """Daily clone limit, guild budget and the spend ledger."""

    def __init__(self, db: Database, config: Config, clock: Clock) -> None:
        self.db = db
        self.config = config
        self.clock = clock

    # -- checks and reservations ---------------------------------------------------------------

    async def guild_budget_micros(self, guild_id: int) -> int:
        """The guild's effective daily budget (0: unlimited): see :func:`effective_guild_budget`."""
        settings = await self.db.guilds.get(guild_id)
        return effective_guild_budget(settings.daily_budget_micros, self.config.guild_daily_budget_micros)

    async def reserve_clone(self, user_id: int, guild_id: int | None, estimate_micros: int, *,
                            ref: str | None = None) -> Reservation:
        """Check the user's daily clone limit and the guild budget, then reserve ``estimate_micros``."""
        return await self._reserve("clone", user_id, guild_id, estimate_micros, ref)

    async def reserve_tts(self, user_id: int, guild_id: int | None, estimate_micros: int, *,
                          ref: str | None = None) -> Reservation:
        """Check the guild budget, then reserve ``estimate_micros`` for a line of speech."""
        return await self._reserve("tts", user_id, guild_id, estimate_micros, ref)

    async def check_clone(self, user_id: int, guild_id: int | None, estimate_micros: int) -> None:
        """Raise :class:`LimitExceeded` now if a clone would be refused; reserves nothing.

        For asking early (before a confirmation); the real, atomic check is :meth:`reserve_clone`."""
        now = self.clock.now()
        guild_budget = 0 if guild_id is None else await self.guild_budget_micros(guild_id)
        await self._check("clone", user_id, guild_id, estimate_micros, self.clock.utc_day(now),
                          self.clock.next_utc_midnight(now), guild_budget, tx=None)

    async def _check(self, kind: str, user_id: int, guild_id: int | None, estimate_micros: int, day: str,
                     resets_at: float, guild_budget: int, *, tx: Transaction | None) -> None:
        if estimate_micros < 0:
            raise ValueError("a cost estimate cannot be negative")
        limit = self.config.clone_daily_limit
        if kind == "clone" and limit <= 0:
            raise LimitExceeded("Voice cloning is turned off on this bot.", reason="clones_disabled", resets_at=None)
        if kind == "clone":
            used = await self.db.ledger.count(user_id, "clone", day, tx=tx)
            if used >= limit:
                log.info("user %s reached the daily clone limit (%d)", user_id, limit)
                raise LimitExceeded(_clone_limit_message(limit, resets_at), reason="clone_limit",
                                    resets_at=resets_at)
        bot_budget = self.config.bot_daily_budget_micros
        if bot_budget > 0:
            spent = await self.db.ledger.total_spend(day, tx=tx)  # same transaction as the reservation
            if spent + estimate_micros > bot_budget:
                log.warning("the bot's daily budget stops a %s: spent %d + %d > %d micros (BOT_DAILY_BUDGET_USD)",
                            kind, spent, estimate_micros, bot_budget)
                raise LimitExceeded(_bot_budget_message(kind, bot_budget, spent, resets_at), reason="bot_budget",
                                    resets_at=resets_at)
        if guild_id is not None:
            budget = guild_budget
            if budget > 0:
                spent = await self.db.ledger.guild_spend(guild_id, day, tx=tx)
                if spent + estimate_micros > budget:
                    log.info("guild %s budget stops a %s: spent %d + %d > %d micros",
                             guild_id, kind, spent, estimate_micros, budget)
                    raise LimitExceeded(_budget_message(kind, budget, spent, estimate_micros, resets_at),
                                        reason="guild_budget", resets_at=resets_at)

    async def _reserve(self, kind: str, user_id: int, guild_id: int | None, estimate_micros: int,
                       ref: str | None) -> Reservation:
        now = self.clock.now()
        day = self.clock.utc_day(now)
        resets_at = self.clock.next_utc_midnight(now)
        # The guild's budget is a setting, not money: read (cached) before the transaction, so the
        # transaction holds one connection and its locks only as long as the ledger needs them.
        guild_budget = 0 if guild_id is None else await self.guild_budget_micros(guild_id)
        async with self.db.transaction() as tx:
            # Hold what the check reads until the insert (advisory locks on PostgreSQL, no-op on SQLite): the
            # user's clone count, the guild's spend under a budget, the bot's spend under BOT_DAILY_BUDGET_USD.
            await tx.lock(*self._lock_keys(kind, user_id, guild_id, guild_budget))
            await self._check(kind, user_id, guild_id, estimate_micros, day, resets_at, guild_budget, tx=tx)
            entry_id = await self.db.ledger.reserve(
                tx, user_id=user_id, guild_id=guild_id, kind=kind, ref=ref, amount_micros=estimate_micros,
                day=day, now=now,
            )
        log.debug("reserved %s #%d: %d micros for user %s in guild %s", kind, entry_id, estimate_micros,
                  user_id, guild_id)
        return Reservation(entry_id, kind, estimate_micros, day)

    def _lock_keys(self, kind: str, user_id: int, guild_id: int | None, guild_budget: int) -> list[str]:
        """The locks a reservation's check needs: only what it reads, so unrelated reservations (another
        user's speech in another guild without a budget) don't wait on each other."""
        keys = []
        if kind == "clone":
            keys.append(f"ledger:user:{user_id}")
        if guild_id is not None and guild_budget > 0:
            keys.append(f"ledger:guild:{guild_id}")
        if self.config.bot_daily_budget_micros > 0:
            keys.append("ledger:bot")
        return keys

    async def settle(self, reservation: Reservation, actual_micros: int | None, *, currency: str = "USD",
                     ref: str | None = None) -> None:
        """Record the cost NanoGPT reported (None: keep the estimate) and mark the row charged.

        ``actual_micros`` is in micro-units of ``currency`` (``cost_to_micros`` converts NanoGPT's
        ``cost``). Charges in another currency than USD (XNO) no longer count toward the USD budget.
        """
        amount = reservation.amount_micros if actual_micros is None else int(actual_micros)
        if amount < 0:
            raise ValueError("a charge cannot be negative")
        currency = (currency or "USD").upper()
        if not await self.db.ledger.settle(reservation.id, amount, currency, ref, self.clock.now()):
            log.warning("ledger row #%d was not settled: it was already released or does not exist", reservation.id)
            return
        log.debug("settled %s #%d: %d %s micros", reservation.kind, reservation.id, amount, currency)

    async def release(self, reservation: Reservation) -> None:
        """The call failed without a charge: the reservation no longer counts."""
        if not await self.db.ledger.release(reservation.id, self.clock.now()):
            log.warning("ledger row #%d was not released: it was already settled or released", reservation.id)
            return
        log.debug("released %s #%d", reservation.kind, reservation.id)

    # -- reporting -----------------------------------------------------------------------------

    async def usage(self, user_id: int, guild_id: int | None) -> Usage:
        now = self.clock.now()
        day = self.clock.utc_day(now)
        guild_spend: int | None = None
        guild_budget: int | None = None
        if guild_id is not None:
            guild_spend = await self.db.ledger.guild_spend(guild_id, day)
            guild_budget = await self.guild_budget_micros(guild_id)
        return Usage(
            clones_today=await self.db.ledger.count(user_id, "clone", day),
            clone_limit=self.config.clone_daily_limit,
            user_spend_today_micros=await self.db.ledger.user_spend(user_id, day=day),
            user_spend_total_micros=await self.db.ledger.user_spend(user_id),
            user_spend_total_xno_micros=await self.db.ledger.user_spend(user_id, currency="XNO"),
            guild_spend_today_micros=guild_spend,
            guild_budget_micros=guild_budget,
            resets_at=self.clock.next_utc_midnight(now),
        )


def _clone_limit_message(limit: int, resets_at: float) -> str:
    used = f"all {limit} voice clones" if limit != 1 else "your 1 voice clone"
    return f"You have used {used} for today; the limit resets {discord_relative(resets_at)}."


def _bot_budget_message(kind: str, budget: int, spent: int, resets_at: float) -> str:
    when = discord_relative(resets_at)
    if spent >= budget:
        return f"This bot's daily budget is used up; it resets {when}."
    what = "this voice clone" if kind == "clone" else "this speech"
    return f"This bot's daily budget doesn't have enough left for {what}; it resets {when}."


def _budget_message(kind: str, budget: int, spent: int, estimate: int, resets_at: float) -> str:
    when = discord_relative(resets_at)
    if spent >= budget:
        return f"This server has reached its {format_usd(budget)} daily NanoGPT budget; it resets {when}."
    what = "this voice clone" if kind == "clone" else "this speech"
    return (
        f"This server has only {format_usd(budget - spent)} left of its {format_usd(budget)} daily NanoGPT "
        f"budget, not enough for {what} ({format_usd(estimate)}); it resets {when}."
    )


class Cooldown:
    """A per-key cooldown (e.g. ``SAY_COOLDOWN_SECONDS`` per user), in memory, on the injected clock: the
    ``/say`` cooldown of one process alone (SQLite). Processes sharing a database use :class:`SharedCooldown`;
    both answer :meth:`claim` and :meth:`release`."""

    def __init__(self, seconds: float, clock: Clock) -> None:
        self.seconds = float(seconds)
        self.clock = clock
        self._last: dict[object, float] = {}

    def check(self, key: object) -> float | None:
        """Seconds to wait if ``key`` is still cooling down; otherwise record this use and return None."""
        if self.seconds <= 0:
            return None
        now = self.clock.now()
        last = self._last.get(key)
        if last is not None:
            retry_after = last + self.seconds - now
            if retry_after > 0:
                return retry_after
        self._last[key] = now
        if len(self._last) > 1024:
            self._prune(now)
        return None

    def reset(self, key: object) -> None:
        """Forget ``key``'s last use (e.g. the request was refused before any work was done)."""
        self._last.pop(key, None)

    async def claim(self, user_id: int) -> float | None:
        """:meth:`check` for one user."""
        return self.check(user_id)

    async def release(self, user_id: int) -> None:
        """:meth:`reset` for one user."""
        self.reset(user_id)

    def message(self, retry_after: float) -> str:
        return cooldown_message(self.clock, retry_after)

    def _prune(self, now: float) -> None:
        for key in [k for k, t in self._last.items() if t + self.seconds <= now]:
            del self._last[key]


class SharedCooldown:
    """The per-user cooldown in the database (``db.cooldowns``), for processes sharing one (PostgreSQL): a
    user alternating between servers on different shards, or racing through several, gets one line per
    cooldown. :meth:`claim` is one atomic round trip (two when the user is cooling down: when it ends)."""

    def __init__(self, seconds: float, clock: Clock, db: Database) -> None:
        self.seconds = float(seconds)
        self.clock = clock
        self.db = db
        self._claimed: dict[int, float] = {}  # this process's latest claim per user (released by it only)
        self._pruned_at = clock.now()

    async def claim(self, user_id: int) -> float | None:
        """Seconds to wait if the user spoke less than :attr:`seconds` ago through any process; otherwise
        record this line and return None."""
        if self.seconds <= 0:
            return None
        for _ in range(3):  # a row released or expired between the claim and the read: claim again
            now = self.clock.now()
            if await self.db.cooldowns.claim(user_id, now, self.seconds):
                self._claimed[user_id] = now
                if len(self._claimed) > 1024:
                    self._claimed = {u: t for u, t in self._claimed.items() if t + self.seconds > now}
                await self._prune(now)
                return None
            last = await self.db.cooldowns.last(user_id)
            if last is not None and last + self.seconds > now:
                return min(last + self.seconds - now, self.seconds)  # another host's clock may run ahead
        return None

    async def release(self, user_id: int) -> None:
        """Forget this process's claim for the user (the request was refused before any work was done);
        a later claim, by another process, stays."""
        claimed_at = self._claimed.pop(user_id, None)
        if claimed_at is not None:
            await self.db.cooldowns.release(user_id, claimed_at)

    def message(self, retry_after: float) -> str:
        return cooldown_message(self.clock, retry_after)

    async def _prune(self, now: float) -> None:
        """Every :data:`COOLDOWN_PRUNE_SECONDS`, delete the rows whose cooldown is over (any process's)."""
        if now - self._pruned_at < COOLDOWN_PRUNE_SECONDS:
            return
        self._pruned_at = now
        pruned = await self.db.cooldowns.prune(now - self.seconds)
        log.debug("pruned %d finished /say cooldowns", pruned)


#: How often a process deletes the finished cooldowns' rows (:class:`SharedCooldown`).
COOLDOWN_PRUNE_SECONDS = 600.0


def cooldown_message(clock: Clock, retry_after: float) -> str:
    """The one sentence of a user still cooling down, with when they may speak again."""
    return f"You're speaking too fast; try again {discord_relative(clock.now() + retry_after)}."


__all__ = [
    "TTS_DEFAULT_MICROS_PER_1K",
    "TTS_MICROS_PER_1K_CHARS",
    "Cooldown",
    "LimitExceeded",
    "Limits",
    "Reservation",
    "SharedCooldown",
    "Usage",
    "cost_to_micros",
    "discord_relative",
    "effective_guild_budget",
    "estimate_clone_micros",
    "estimate_tts_micros",
    "format_money",
    "format_usd",
    "tts_price_text",
]
