"""What every repository shares: the transaction object, the query surface and row helpers."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar, overload

import aiosqlite

if TYPE_CHECKING:
    from bot.storage.database import Database


class Queries(Protocol):
    """What a repository method runs its SQL on: the :class:`Database` itself (each write on its own) or a
    :class:`Transaction` (every statement inside one write transaction)."""

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int: ...
    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> aiosqlite.Row | None: ...
    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[aiosqlite.Row]: ...
    async def fetchval(self, sql: str, params: Sequence[Any] = ()) -> Any: ...


class Transaction:
    """One write transaction, handed out by :meth:`Database.transaction`; repositories take it as ``tx``.

    :meth:`lock` names what a check-then-write depends on (a user's quota, a guild's budget). SQLite needs
    nothing more than ``BEGIN IMMEDIATE``, which already serialises every write, so it is a no-op here; a
    backend with row-level concurrency takes its advisory locks there instead.
    """

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def lock(self, *keys: str) -> None:
        """Hold ``keys`` until the transaction ends (no-op on SQLite: the whole database is held)."""

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; returns the affected row count."""
        return (await self._conn.execute(sql, params)).rowcount

    async def insert(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one INSERT; returns the id of the new row."""
        return inserted_id(await self._conn.execute(sql, params))

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> aiosqlite.Row | None:
        return next(iter(await self._conn.execute_fetchall(sql, params)), None)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[aiosqlite.Row]:
        return list(await self._conn.execute_fetchall(sql, params))

    async def fetchval(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = await self.fetchone(sql, params)
        return None if row is None else row[0]


class Repository:
    """One aggregate's queries over the connection owner. Every repository can say how many rows it holds
    for a user and delete them (:mod:`bot.privacy` asks each one for /forget-me)."""

    #: The name /forget-me reports this repository's rows under.
    data_name: ClassVar[str]
    #: False where the user's rows are kept but detached from them (the ledger) instead of deleted.
    removes_rows: ClassVar[bool] = True

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
def row_to(cls: type[_R], row: aiosqlite.Row) -> _R: ...
@overload
def row_to(cls: type[_R], row: aiosqlite.Row | None) -> _R | None: ...
def row_to(cls: type[_R], row: aiosqlite.Row | None) -> _R | None:
    if row is None:
        return None
    return cls(**{k: row[k] for k in cls.__slots__})


def present(row: aiosqlite.Row | None, what: str) -> aiosqlite.Row:
    """``row``, which the schema guarantees (a single-row table, an aggregate); RuntimeError if missing."""
    if row is None:
        raise RuntimeError(f"the database returned no row for {what}")
    return row


def inserted_id(cursor: aiosqlite.Cursor) -> int:
    """The rowid an INSERT just created; RuntimeError if SQLite reports none."""
    if cursor.lastrowid is None:
        raise RuntimeError("the database did not report the id of an inserted row")
    return cursor.lastrowid


def placeholders(values: Iterable[Any]) -> str:
    return ",".join("?" for _ in values)
