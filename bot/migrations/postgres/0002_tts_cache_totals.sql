-- 0002: keep the TTS cache's totals in one row kept by triggers (twin of sqlite/0002), and answer the
-- eviction order (least recently used, then oldest, then by key) from a covering index.

CREATE TABLE tts_cache_totals (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    entries  BIGINT NOT NULL,
    bytes    BIGINT NOT NULL
);
INSERT INTO tts_cache_totals (id, entries, bytes)
    SELECT 1, COUNT(*), COALESCE(SUM(size), 0) FROM tts_cache;

CREATE FUNCTION tts_cache_totals_follow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE tts_cache_totals SET entries = entries + 1, bytes = bytes + NEW.size WHERE id = 1;
    ELSIF TG_OP = 'DELETE' THEN
        UPDATE tts_cache_totals SET entries = entries - 1, bytes = bytes - OLD.size WHERE id = 1;
    ELSE
        UPDATE tts_cache_totals SET bytes = bytes - OLD.size + NEW.size WHERE id = 1;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER tts_cache_totals_insert AFTER INSERT ON tts_cache
    FOR EACH ROW EXECUTE FUNCTION tts_cache_totals_follow();
CREATE TRIGGER tts_cache_totals_delete AFTER DELETE ON tts_cache
    FOR EACH ROW EXECUTE FUNCTION tts_cache_totals_follow();
CREATE TRIGGER tts_cache_totals_resize AFTER UPDATE OF size ON tts_cache
    FOR EACH ROW EXECUTE FUNCTION tts_cache_totals_follow();

DROP INDEX tts_cache_lru;
CREATE INDEX tts_cache_lru ON tts_cache (last_used_at, created_at, key) INCLUDE (size);
