-- 0007: the /say cooldown shared by every bot process on this database (twin of sqlite/0007): one row per
-- user who spoke recently, the unix time of their last line; claimed by one atomic upsert per /say.
CREATE TABLE say_cooldowns (
    user_id  BIGINT PRIMARY KEY,
    last_at  DOUBLE PRECISION NOT NULL
);
