-- 0004: a server can turn voice-channel playback off (/nanovoice settings voice_playback).
-- NULL (never set) or 1: /say also plays in the bot's voice channel; 0: it never does there.
ALTER TABLE guild_settings ADD COLUMN voice_playback INTEGER;
