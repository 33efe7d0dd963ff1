-- 0005: any registered clone provider can be saved (the twin of sqlite/0005_provider_open.sql). 0001 limited
-- `voices.provider` and `clone_jobs.provider` to ('minimax', 'qwen') with a column CHECK, so a third provider
-- module (bot/providers/) could not store its jobs or voices. PostgreSQL drops a CHECK in place; the
-- constraints carry PostgreSQL's default names for a column constraint (<table>_<column>_check).

ALTER TABLE voices DROP CONSTRAINT voices_provider_check;
ALTER TABLE clone_jobs DROP CONSTRAINT clone_jobs_provider_check;
