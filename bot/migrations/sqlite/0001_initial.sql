-- 0001: the initial schema. Times are UTC unix seconds (REAL); money is integer micro-units of the
-- payment source (micro-dollars for USD), never float.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Files the bot stores itself (Qwen speaker embeddings). `token` is the unguessable part of the
-- public URL; `discord_url`/`discord_url_expires_at` track a re-hosted copy in EMBEDDING_CHANNEL_ID.
CREATE TABLE stored_files (
    id                     INTEGER PRIMARY KEY,
    user_id                INTEGER NOT NULL,
    kind                   TEXT NOT NULL,
    token                  TEXT NOT NULL UNIQUE,
    filename               TEXT NOT NULL,
    content_type           TEXT NOT NULL,
    data                   BLOB NOT NULL,
    size                   INTEGER NOT NULL,
    sha256                 TEXT NOT NULL,
    created_at             REAL NOT NULL,
    discord_url            TEXT,
    discord_url_expires_at REAL,
    discord_message_id     INTEGER
);
CREATE INDEX stored_files_user ON stored_files (user_id);

CREATE TABLE voices (
    id                   INTEGER PRIMARY KEY,
    user_id              INTEGER NOT NULL,
    guild_id             INTEGER,
    name                 TEXT NOT NULL,
    name_key             TEXT NOT NULL,          -- casefolded name: uniqueness is case-insensitive
    provider             TEXT NOT NULL CHECK (provider IN ('minimax', 'qwen')),
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

CREATE TABLE user_settings (
    user_id          INTEGER PRIMARY KEY,
    default_voice_id INTEGER REFERENCES voices (id) ON DELETE SET NULL,
    updated_at       REAL NOT NULL
);

CREATE TABLE guild_settings (
    guild_id              INTEGER PRIMARY KEY,
    daily_budget_micros   INTEGER,              -- NULL: GUILD_DAILY_BUDGET_USD
    clone_role_id         INTEGER,              -- NULL: everyone may clone
    clones_enabled        INTEGER,              -- NULL or 1: allowed; 0: disabled in this guild
    updated_at            REAL NOT NULL
);

-- One row per clone run. It is written (state 'submitting') before the paid request is sent and
-- updated with the run id right after, so a crash at any point leaves a record and a run is never
-- submitted twice. Everything needed to resume polling and to notify after a restart is here.
CREATE TABLE clone_jobs (
    id                 INTEGER PRIMARY KEY,
    run_id             TEXT UNIQUE,
    provider           TEXT NOT NULL CHECK (provider IN ('minimax', 'qwen')),
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
CREATE INDEX clone_jobs_user ON clone_jobs (user_id, created_at);
CREATE INDEX clone_jobs_open ON clone_jobs (state, next_poll_at);

-- The spend ledger. A paid call first reserves its estimate ('reserved'), inside the same
-- transaction that checks the limits; afterwards the row is settled with the actual cost
-- ('charged') or released ('released', amount 0) when the call failed without a charge.
CREATE TABLE ledger (
    id             INTEGER PRIMARY KEY,
    user_id        INTEGER NOT NULL,
    guild_id       INTEGER,
    kind           TEXT NOT NULL CHECK (kind IN ('clone', 'tts')),
    ref            TEXT,                         -- run id or job id
    state          TEXT NOT NULL CHECK (state IN ('reserved', 'charged', 'released')),
    amount_micros  INTEGER NOT NULL,
    currency       TEXT NOT NULL DEFAULT 'USD',
    day            TEXT NOT NULL,                -- UTC date, YYYY-MM-DD
    created_at     REAL NOT NULL,
    settled_at     REAL
);
CREATE INDEX ledger_user_day ON ledger (user_id, day);
CREATE INDEX ledger_guild_day ON ledger (guild_id, day);

-- Synthesised speech, keyed by (voice, model, speed, normalised text).
CREATE TABLE tts_cache (
    key           TEXT PRIMARY KEY,
    user_id       INTEGER NOT NULL,
    content_type  TEXT NOT NULL,
    data          BLOB NOT NULL,
    size          INTEGER NOT NULL,
    created_at    REAL NOT NULL,
    last_used_at  REAL NOT NULL
);
CREATE INDEX tts_cache_lru ON tts_cache (last_used_at);
CREATE INDEX tts_cache_user ON tts_cache (user_id);
