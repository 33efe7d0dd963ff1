"""/forget-me: every holder of a user's data forgets them.

Two kinds of holders answer: the storage repositories (``Database.repositories()``, each with
``count_user_data`` and ``delete_user_data``), and the services that keep something of a user in memory or
in another place (:class:`UserDataHolder`: the embedding host's re-hosted copies and URL checks, the TTS
service's voice-message encodings and cooldown, the clone service's notice samples). The bot registers the
services at start; :meth:`Privacy.forget` asks the services first (they look up what is the user's in the
database) and then deletes every repository's rows in one transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from bot.storage import Database

log = logging.getLogger(__name__)


class UserDataHolder(Protocol):
    """Something that keeps a user's data outside the database's rows (in memory, a Discord channel)."""

    async def forget_user(self, user_id: int) -> int:
        """Forget everything of ``user_id``; returns how many items were forgotten."""
        ...


@dataclass(frozen=True, slots=True)
class ForgetResult:
    """What /forget-me removed: rows per repository (``data_name``) and items per registered holder."""

    rows: Mapping[str, int]
    forgotten: Mapping[str, int] = field(default_factory=dict)

    def count(self, data_name: str) -> int:
        return self.rows.get(data_name, 0)


class Privacy:
    """The registry of everything that holds a user's data, and /forget-me over all of it."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._holders: dict[str, UserDataHolder] = {}

    def register(self, name: str, holder: UserDataHolder) -> None:
        """Ask ``holder`` too when a user is forgotten (one per name)."""
        if name in self._holders:
            raise ValueError(f"a user data holder named {name!r} is already registered")
        self._holders[name] = holder

    async def stored(self, user_id: int) -> dict[str, int]:
        """Rows per repository that :meth:`forget` would delete (the ledger, detached instead, and short-lived
        bookkeeping such as the /say cooldown, deleted too, are not counted)."""
        return {repo.data_name: await repo.count_user_data(user_id)
                for repo in self.db.repositories() if repo.removes_rows and repo.listed}

    async def forget(self, user_id: int) -> ForgetResult:
        """Every registered holder forgets ``user_id``, then every repository deletes (or detaches) their
        rows in one transaction."""
        forgotten: dict[str, int] = {}
        for name, holder in self._holders.items():
            forgotten[name] = await holder.forget_user(user_id)
        rows: dict[str, int] = {}
        async with self.db.transaction() as tx:
            await tx.lock(f"user:{user_id}")
            for repo in self.db.repositories():
                rows[repo.data_name] = await repo.delete_user_data(user_id, tx)
        log.debug("forgot user %s: rows %s, in memory %s", user_id, rows, forgotten)
        return ForgetResult(rows, forgotten)


__all__ = ["ForgetResult", "Privacy", "UserDataHolder"]
