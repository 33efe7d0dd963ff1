-- 0006: clone-job claims and the instance heartbeat table (the twin of sqlite/0006_job_leases.sql, which
-- explains the columns).
CREATE TABLE bot_instances (
    id            TEXT PRIMARY KEY,
    started_at    DOUBLE PRECISION NOT NULL,
    heartbeat_at  DOUBLE PRECISION NOT NULL,
    pid           INTEGER NOT NULL,
    host          TEXT NOT NULL,
    shard_ids     TEXT
);

ALTER TABLE clone_jobs ADD COLUMN claimed_by TEXT;
ALTER TABLE clone_jobs ADD COLUMN lease_until DOUBLE PRECISION;
ALTER TABLE clone_jobs ADD COLUMN lease_epoch INTEGER NOT NULL DEFAULT 0;

CREATE INDEX clone_jobs_claims ON clone_jobs (claimed_by, lease_until) WHERE notified_at IS NULL;
