"""Storage: one connection owner (:class:`Database`: SQLite, or PostgreSQL with ``DATABASE_URL``) and one
repository per aggregate.

All SQL lives in this package and is parameterised. ``db.voices``, ``db.user_settings``, ``db.jobs``,
``db.ledger``, ``db.cache``, ``db.files``, ``db.guilds``, ``db.blocks`` and ``db.cooldowns`` each hold one
aggregate's queries; every one of them can count and delete a user's rows (``delete_user_data``, for /forget-me).
``db.instances`` (the running bot processes, for clone-job claims) holds no user data.
"""

from bot.storage.base import Repository, Transaction
from bot.storage.cache import CACHE_EVICTION_ORDER
from bot.storage.database import Database, DatabaseInUse
from bot.storage.ledger import ANONYMOUS_USER
from bot.storage.records import (
    Block,
    BotInstance,
    CacheEntry,
    Claim,
    CloneJob,
    DuplicateVoiceName,
    GuildSettings,
    LeaseLost,
    StoredFile,
    Voice,
    name_key,
)

__all__ = [
    "ANONYMOUS_USER",
    "CACHE_EVICTION_ORDER",
    "Block",
    "BotInstance",
    "CacheEntry",
    "Claim",
    "CloneJob",
    "Database",
    "DatabaseInUse",
    "DuplicateVoiceName",
    "GuildSettings",
    "LeaseLost",
    "Repository",
    "StoredFile",
    "Transaction",
    "Voice",
    "name_key",
]
