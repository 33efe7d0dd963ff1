"""What every repository shares: the transaction object, the query surface and row helpers.

Repositories write one SQL text for both backends (:mod:`bot.storage.backends`): ``?`` placeholders
(the PostgreSQL backend numbers them ``$1, $2 …``), ``ON CONFLICT … DO UPDATE SET x = excluded.x`` upserts,
``UPDATE … RETURNING``, and :meth:`Transaction.insert` for a new row's id. Where the dialects differ, a
repository asks ``db.dialect`` (:class:`~bot.storage.backends.Dialect`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar, overload

import asyncpg

if TYPE_CHECKING:
    from bot.storage.database import Database


class Row(Protocol):
    """A result row: ``aiosqlite.Row`` on SQLite, ``asyncpg.Record`` on PostgreSQL. Both index by position
    and by column name, iterate over their values and give ``dict(row)``."""

    def __getitem__(self, key: Any, /) -> Any: ...
    def __iter__(self) -> Iterator[Any]: ...
    def keys(self) -> Any: ...


#: A constraint (unique, foreign key, check) refused a write, on either backend.
INTEGRITY_ERRORS: tuple[type[Exception], ...] = (sqlite3.IntegrityError, asyncpg.IntegrityConstraintViolationError)


class Queries(Protocol):
    """What a repository method runs its SQL on: the :class:`Database` itself (each write on its own) or a
    :class:`Transaction` (every statement inside one write transaction)."""

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int: ...
    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...
    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...
    async def fetchval(self, sql: str, params: Sequence[Any] = ()) -> Any: ...


class Transaction(Protocol):
    """One write transaction, handed out by :meth:`Database.transaction`; repositories take it as ``tx``.

    :meth:`lock` names what a check-then-write depends on (a user's quota, a guild's budget). SQLite needs
    nothing more than ``BEGIN IMMEDIATE``, which already serialises every write, so it is a no-op there;
    PostgreSQL takes transaction-scoped advisory locks (``pg_advisory_xact_lock``, in sorted order so two
    transactions never wait on each other in a cycle), held until commit or rollback.
    """

    async def lock(self, *keys: str) -> None:
        """Hold ``keys`` until the transaction ends (no-op on SQLite: the whole database is held)."""

    async def notify(self, channel: str, payload: str) -> None:
        """Tell every other process sharing the database, when this transaction commits (no-op on SQLite,
        whose database has one process)."""

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; returns the affected row count."""
        ...

    async def insert(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one INSERT into a table with an ``id`` key; returns the id of the new row."""
        ...

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...
    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...
    async def fetchval(self, sql: str, params: Sequence[Any] = ()) -> Any: ...


class Repository:
    """One aggregate's queries over the connection owner. Every repository can say how many rows it holds
    for a user and delete them (:mod:`bot.privacy` asks each one for /forget-me)."""

    #: The name /forget-me reports this repository's rows under.
    data_name: ClassVar[str]
    #: False where the user's rows are kept but detached from them (the ledger) instead of deleted.
    removes_rows: ClassVar[bool] = True
    #: False for short-lived bookkeeping that /forget-me deletes without listing it as stored data (the /say
    #: cooldown's row, gone within seconds anyway).
    listed: ClassVar[bool] = True

    def __init__(self, db: Database) -> None:
        self._db = db

    def _on(self, tx: Transaction | None) -> Queries:
        return tx if tx is not None else self._db

    async def count_user_data(self, user_id: int) -> int:
        """How many rows :meth:`delete_user_data` would delete (or detach) for ``user_id``."""
        raise NotImplementedError

    async def delete_user_data(self, user_id: int, tx: Transaction | None = None) -> int:
        """Delete (or detach) every row of ``user_id``; returns how many."""
        raise NotImplementedError


class _RowRecord(Protocol):
    """A slotted dataclass whose fields are the columns of a row (``Voice``, ``CloneJob``, …)."""

    __slots__: ClassVar[tuple[str, ...]]


_R = TypeVar("_R", bound=_RowRecord)


@overload
def row_to(cls: type[_R], row: Row) -> _R: ...
@overload
def row_to(cls: type[_R], row: Row | None) -> _R | None: ...
def row_to(cls: type[_R], row: Row | None) -> _R | None:
    if row is None:
        return None
    return cls(**{k: row[k] for k in cls.__slots__})


def present(row: Row | None, what: str) -> Row:
    """``row``, which the schema guarantees (a single-row table, an aggregate); RuntimeError if missing."""
    if row is None:
        raise RuntimeError(f"the database returned no row for {what}")
    return row


def placeholders(values: Iterable[Any]) -> str:
    return ",".join("?" for _ in values)
