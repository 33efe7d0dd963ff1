-- 0007: the /say cooldown (SAY_COOLDOWN_SECONDS) shared by every bot process on one PostgreSQL database
-- (bot/limits.py, SharedCooldown): one row per user who spoke recently, the unix time of their last line.
-- One process alone (SQLite) keeps the cooldown in memory; the table is here so both dialects have one
-- schema. Rows older than the cooldown mean nothing and are pruned; /forget-me deletes the user's row.
CREATE TABLE say_cooldowns (
    user_id  INTEGER PRIMARY KEY,
    last_at  REAL NOT NULL
);
