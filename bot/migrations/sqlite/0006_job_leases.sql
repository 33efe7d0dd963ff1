-- 0006: clone jobs are claimed by the bot process that follows them (several processes may share one
-- PostgreSQL database; bot/cloning.py, "Claims"). Each running process registers in bot_instances and
-- beats its heartbeat; a job names its owner (claimed_by), how long the claim lasts without a heartbeat
-- (lease_until, unix time) and how often it changed hands (lease_epoch: every write about a job carries the
-- owner and epoch it was claimed with, so a process that lost its claim changes nothing).
CREATE TABLE bot_instances (
    id            TEXT PRIMARY KEY,              -- uuid4 hex, one per running process
    started_at    REAL NOT NULL,
    heartbeat_at  REAL NOT NULL,
    pid           INTEGER NOT NULL,
    host          TEXT NOT NULL,
    shard_ids     TEXT                           -- SHARD_IDS as configured ("0,1"); NULL: every shard
);

ALTER TABLE clone_jobs ADD COLUMN claimed_by TEXT;
ALTER TABLE clone_jobs ADD COLUMN lease_until REAL;
ALTER TABLE clone_jobs ADD COLUMN lease_epoch INTEGER NOT NULL DEFAULT 0;

-- The orphan sweep and the heartbeat look only at jobs whose notice is not claimed yet (every open job,
-- and finished ones still to announce): a few rows however many jobs the table keeps.
CREATE INDEX clone_jobs_claims ON clone_jobs (claimed_by, lease_until) WHERE notified_at IS NULL;
