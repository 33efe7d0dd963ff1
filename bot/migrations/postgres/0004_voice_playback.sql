-- 0004: a server can turn voice-channel playback off (twin of sqlite/0004_voice_playback.sql).
-- NULL (never set) or TRUE: /say also plays in the bot's voice channel; FALSE: it never does there.
ALTER TABLE guild_settings ADD COLUMN voice_playback BOOLEAN;
