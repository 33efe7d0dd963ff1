-- 0002: keep the TTS cache's totals without reading the cached audio.
--
-- In a tts_cache row the `size` column sits after the `data` blob, so SUM(size) or an LRU scan that
-- reads `size` walks every blob's overflow pages: storing one clip in a full 200 MB cache read the whole
-- 200 MB. The totals now live in one row kept by triggers, and the LRU order has a covering index.

CREATE TABLE tts_cache_totals (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    entries  INTEGER NOT NULL,
    bytes    INTEGER NOT NULL
);
INSERT INTO tts_cache_totals (id, entries, bytes)
    SELECT 1, COUNT(*), COALESCE(SUM(size), 0) FROM tts_cache;

CREATE TRIGGER tts_cache_totals_insert AFTER INSERT ON tts_cache BEGIN
    UPDATE tts_cache_totals SET entries = entries + 1, bytes = bytes + NEW.size WHERE id = 1;
END;
CREATE TRIGGER tts_cache_totals_delete AFTER DELETE ON tts_cache BEGIN
    UPDATE tts_cache_totals SET entries = entries - 1, bytes = bytes - OLD.size WHERE id = 1;
END;
CREATE TRIGGER tts_cache_totals_resize AFTER UPDATE OF size ON tts_cache BEGIN
    UPDATE tts_cache_totals SET bytes = bytes - OLD.size + NEW.size WHERE id = 1;
END;

-- Eviction order (least recently used first, then oldest, then first stored) answered from the index
-- alone: key and size are included, and every index ends with the rowid.
DROP INDEX tts_cache_lru;
CREATE INDEX tts_cache_lru ON tts_cache (last_used_at, created_at, size, key);
