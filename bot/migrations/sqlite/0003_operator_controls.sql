-- 0003: operator controls: /owner blocks and the bot-wide daily spend (docs/operating.md, "Costs and limits").
--
-- Blocks set by the bot's owner with /owner block: a user or a server that may no longer use the bot.
-- They have no user_id column on purpose: /forget-me must not lift a block.
CREATE TABLE blocks (
    kind        TEXT NOT NULL CHECK (kind IN ('user', 'guild')),
    target_id   INTEGER NOT NULL,
    reason      TEXT,
    blocked_by  INTEGER NOT NULL,
    created_at  REAL NOT NULL,
    PRIMARY KEY (kind, target_id)
);

-- The whole bot's spend per UTC day (BOT_DAILY_BUDGET_USD, /owner spend) is read inside every
-- reservation: a covering index, so the sum never reads the ledger rows themselves.
CREATE INDEX ledger_day_spend ON ledger (day, currency, state, amount_micros);
