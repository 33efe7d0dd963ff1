"""Who may clone where: the per-guild switch and clone role from ``/nanovoice settings``.

A guild's settings override the environment defaults (SPEC §2) for that guild only:

* ``clones_enabled`` — NULL (never set) or true: members may clone; false: nobody may clone there.
* ``clone_role_id`` — NULL: everyone may clone; a role id: only members holding that role.
* ``daily_budget_micros`` — NULL: ``GUILD_DAILY_BUDGET_USD``; else the guild's own budget (0: unlimited).
  :class:`bot.limits.Limits` enforces it; :func:`effective_settings` only describes it.

Nothing here knows Discord: the clone flow passes the member's role ids, the admin cog renders
:class:`EffectiveSettings`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from bot.config import Config
from bot.errors import Forbidden, UserFacingError
from bot.storage import Database

CLONES_DISABLED = "Voice cloning is turned off in this server."
MAX_BUDGET_MICROS = 1_000_000 * 1_000_000  # $1,000,000 a day: anything above is a typo
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
    settings = await db.get_guild_settings(guild_id)
    if settings.clones_enabled is False:
        raise Forbidden(CLONES_DISABLED)
    role_id = settings.clone_role_id
    if role_id is not None and role_id != guild_id and role_id not in set(role_ids):
        raise Forbidden(clone_role_message(role_id))


@dataclass(frozen=True, slots=True)
class EffectiveSettings:
    """A guild's settings as they apply now, and where each value comes from."""

    guild_id: int
    daily_budget_micros: int  # 0: unlimited
    budget_from_server: bool  # False: GUILD_DAILY_BUDGET_USD
    clone_role_id: int | None  # None: everyone
    clones_enabled: bool
    clones_enabled_from_server: bool
    clone_daily_limit: int  # CLONE_DAILY_LIMIT (0: cloning disabled on the whole bot)


async def effective_settings(db: Database, config: Config, guild_id: int) -> EffectiveSettings:
    stored = await db.get_guild_settings(guild_id)
    from_server = stored.daily_budget_micros is not None
    return EffectiveSettings(
        guild_id=guild_id,
        daily_budget_micros=stored.daily_budget_micros if from_server else config.guild_daily_budget_micros,
        budget_from_server=from_server,
        clone_role_id=stored.clone_role_id,
        clones_enabled=stored.clones_enabled is not False,
        clones_enabled_from_server=stored.clones_enabled is not None,
        clone_daily_limit=config.clone_daily_limit,
    )


def parse_budget(text: str) -> int:
    """A daily budget typed by a person ("2.50", "$2.50", "0") → exact micro-dollars.

    Raises :class:`UserFacingError` with one sentence on anything else (negative, not a number, more
    than six decimals, absurdly large). Never goes through float.
    """
    raw = (text or "").strip()
    if raw.startswith("$"):
        raw = raw[1:].strip()
    problem = UserFacingError(
        f"“{_shown(text)}” is not a dollar amount; write the daily budget like 2.50, or 0 for no limit."
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
    if micros_int > MAX_BUDGET_MICROS:
        raise UserFacingError("That budget is too large; use at most $1,000,000, or 0 for no limit.")
    return micros_int


def _shown(text: str, limit: int = 40) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
