-- 0003: operator controls (twin of sqlite/0003): /owner blocks and the bot-wide daily spend's index.
-- Blocks have no user_id column on purpose: /forget-me must not lift a block.
CREATE TABLE blocks (
    kind        TEXT NOT NULL CHECK (kind IN ('user', 'guild')),
    target_id   BIGINT NOT NULL,
    reason      TEXT,
    blocked_by  BIGINT NOT NULL,
    created_at  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (kind, target_id)
);

CREATE INDEX ledger_day_spend ON ledger (day, currency, state, amount_micros);
