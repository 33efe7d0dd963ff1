-- 0005: any registered clone provider can be saved. 0001 limited `voices.provider` and
-- `clone_jobs.provider` to ('minimax', 'qwen') with a CHECK, so a third provider module (bot/providers/)
-- could not store its jobs or voices. SQLite cannot drop a CHECK in place: both tables are rebuilt
-- without it by the documented 12-step ALTER procedure (https://www.sqlite.org/lang_altertable.html,
-- "Making Other Kinds Of Table Schema Changes"). The migration runner turns foreign keys off around
-- every migration and runs PRAGMA foreign_key_check before it commits, so rows that point at these
-- tables (user_settings.default_voice_id, clone_jobs.voice_id) keep their references. The
-- columns, their order, the other CHECKs and the indexes are those of 0001; these tables have no
-- triggers or views.

CREATE TABLE voices_new (
    id                   INTEGER PRIMARY KEY,
    user_id              INTEGER NOT NULL,
    guild_id             INTEGER,
    name                 TEXT NOT NULL,
    name_key             TEXT NOT NULL,          -- casefolded name: uniqueness is case-insensitive
    provider             TEXT NOT NULL,          -- a key of bot/providers/ (the registry checks it)
    provider_voice_id    TEXT,                   -- MiniMax customVoiceId
    embedding_url        TEXT,                   -- Qwen speakerEmbeddingUrl as NanoGPT returned it
    embedding_expires_at REAL,                   -- when the provider's copy may vanish (7 days)
    embedding_file_id    INTEGER REFERENCES stored_files (id) ON DELETE SET NULL,
    transcript           TEXT,
    clone_model          TEXT,
    created_at           REAL NOT NULL,
    last_used_at         REAL,
    UNIQUE (user_id, name_key)
);
INSERT INTO voices_new (id, user_id, guild_id, name, name_key, provider, provider_voice_id, embedding_url,
                        embedding_expires_at, embedding_file_id, transcript, clone_model, created_at, last_used_at)
    SELECT id, user_id, guild_id, name, name_key, provider, provider_voice_id, embedding_url,
           embedding_expires_at, embedding_file_id, transcript, clone_model, created_at, last_used_at
    FROM voices;
DROP TABLE voices;
ALTER TABLE voices_new RENAME TO voices;

CREATE TABLE clone_jobs_new (
    id                 INTEGER PRIMARY KEY,
    run_id             TEXT UNIQUE,
    provider           TEXT NOT NULL,            -- a key of bot/providers/ (the registry checks it)
    user_id            INTEGER NOT NULL,
    guild_id           INTEGER,
    channel_id         INTEGER,
    application_id     INTEGER,
    interaction_token  TEXT,
    token_expires_at   REAL,
    voice_name         TEXT NOT NULL,
    custom_voice_id    TEXT UNIQUE,
    transcript         TEXT,
    clone_model        TEXT,
    cost_micros        INTEGER,
    payment_source     TEXT,
    is_api_request     INTEGER,
    state              TEXT NOT NULL CHECK (state IN
                         ('submitting', 'pending', 'processing', 'completed', 'failed', 'lost')),
    error              TEXT,
    created_at         REAL NOT NULL,
    submitted_at       REAL,
    next_poll_at       REAL,
    last_polled_at     REAL,
    poll_count         INTEGER NOT NULL DEFAULT 0,
    failures           INTEGER NOT NULL DEFAULT 0,
    finished_at        REAL,
    voice_id           INTEGER REFERENCES voices (id) ON DELETE SET NULL,
    notified_at        REAL
);
INSERT INTO clone_jobs_new (id, run_id, provider, user_id, guild_id, channel_id, application_id, interaction_token,
                            token_expires_at, voice_name, custom_voice_id, transcript, clone_model, cost_micros,
                            payment_source, is_api_request, state, error, created_at, submitted_at, next_poll_at,
                            last_polled_at, poll_count, failures, finished_at, voice_id, notified_at)
    SELECT id, run_id, provider, user_id, guild_id, channel_id, application_id, interaction_token,
           token_expires_at, voice_name, custom_voice_id, transcript, clone_model, cost_micros,
           payment_source, is_api_request, state, error, created_at, submitted_at, next_poll_at,
           last_polled_at, poll_count, failures, finished_at, voice_id, notified_at
    FROM clone_jobs;
DROP TABLE clone_jobs;
ALTER TABLE clone_jobs_new RENAME TO clone_jobs;
CREATE INDEX clone_jobs_user ON clone_jobs (user_id, created_at);
CREATE INDEX clone_jobs_open ON clone_jobs (state, next_poll_at);
