"""The rows the storage layer hands out (frozen dataclasses) and the rules that belong to them."""

from __future__ import annotations

from dataclasses import dataclass

from bot import job_states

OPEN_JOB_STATES = job_states.OPEN_STATES  # bot.job_states: the one list of open states


def name_key(name: str) -> str:
    """The case-insensitive identity of a voice name."""
    return name.strip().casefold()


class DuplicateVoiceName(Exception):
    """The user already has a voice with this (case-insensitive) name."""


class LeaseLost(Exception):
    """A fenced write about a clone job matched nothing because the job is claimed by another process (or
    again, with a newer epoch): this process was taken for dead and must leave the job alone."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"clone job {job_id} is claimed by another process")
        self.job_id = job_id


@dataclass(frozen=True, slots=True)
class Claim:
    """Who follows a clone job: the owning bot process (``bot_instances.id``) and the claim's epoch (raised
    by one at every adoption). A write carrying a claim changes the job only while it is still this claim."""

    owner: str
    epoch: int


@dataclass(frozen=True, slots=True)
class Voice:
    id: int
    user_id: int
    guild_id: int | None
    name: str
    provider: str
    provider_voice_id: str | None
    embedding_url: str | None
    embedding_expires_at: float | None
    embedding_file_id: int | None
    transcript: str | None
    clone_model: str | None
    created_at: float
    last_used_at: float | None


@dataclass(frozen=True, slots=True)
class CloneJob:
    id: int
    run_id: str | None
    provider: str
    user_id: int
    guild_id: int | None
    channel_id: int | None
    application_id: int | None
    interaction_token: str | None
    token_expires_at: float | None
    voice_name: str
    custom_voice_id: str | None
    transcript: str | None
    clone_model: str | None
    cost_micros: int | None
    payment_source: str | None
    is_api_request: int | None
    state: str
    error: str | None
    created_at: float
    submitted_at: float | None
    next_poll_at: float | None
    last_polled_at: float | None
    poll_count: int
    failures: int
    finished_at: float | None
    voice_id: int | None
    notified_at: float | None
    claimed_by: str | None = None  # the bot process following it (migration 0006); None: nobody
    lease_until: float | None = None  # the claim lapses then unless its owner's heartbeat renews it
    lease_epoch: int = 0  # how many times it was claimed

    @property
    def is_open(self) -> bool:
        return job_states.is_open(self.state)

    @property
    def claim(self) -> Claim | None:
        return Claim(self.claimed_by, self.lease_epoch) if self.claimed_by is not None else None


@dataclass(frozen=True, slots=True)
class BotInstance:
    """A running bot process as ``bot_instances`` records it (migration 0006)."""

    id: str
    started_at: float
    heartbeat_at: float
    pid: int
    host: str
    shard_ids: str | None


@dataclass(frozen=True, slots=True)
class StoredFile:
    id: int
    user_id: int
    kind: str
    token: str
    filename: str
    content_type: str
    size: int
    sha256: str
    created_at: float
    discord_url: str | None
    discord_url_expires_at: float | None
    discord_message_id: int | None


@dataclass(frozen=True, slots=True)
class GuildSettings:
    guild_id: int
    daily_budget_micros: int | None
    clone_role_id: int | None
    clones_enabled: bool | None
    voice_playback: bool | None = None  # None: never set (on)


@dataclass(frozen=True, slots=True)
class Block:
    """A user or a server the bot's owner has blocked (``kind`` 'user' or 'guild')."""

    kind: str
    target_id: int
    reason: str | None
    blocked_by: int
    created_at: float


@dataclass(frozen=True, slots=True)
class CacheEntry:
    key: str
    content_type: str
    data: bytes
