"""Pure pieces of the /voice cog: pages, job lines, the info card."""

from __future__ import annotations

from bot.storage import CloneJob, Voice
from bot.voices import VoiceInfo
from cogs.voices import PAGE_SIZE, info_embed, jobs_embed, list_pages


def _voice(i: int, name: str, provider: str = "qwen", last_used: float | None = None) -> Voice:
    return Voice(id=i, user_id=1, guild_id=1, name=name, provider=provider, provider_voice_id=None,
                 embedding_url=None, embedding_expires_at=None, embedding_file_id=None, transcript=None,
                 clone_model=None, created_at=1_700_000_000 + i, last_used_at=last_used)


def test_list_pages_split_and_mark_the_default():
    voices = [_voice(i, f"V{i:02d}", "minimax" if i % 2 else "qwen", last_used=1_700_100_000 if i == 3 else None)
              for i in range(PAGE_SIZE * 2 + 3)]
    pages = list_pages(voices, default_id=3)
    assert len(pages) == 3
    assert pages[0].footer.text.startswith("Page 1 of 3")
    assert "⭐ default" in pages[0].description and pages[0].description.count("⭐") == 1
    assert "<t:1700100000:R>" in pages[0].description and "never used" in pages[0].description
    assert "<t:1700000000:d>" in pages[0].description and "MiniMax" in pages[0].description
    assert pages[2].description.count("**V") == 3
    single = list_pages(voices[:2], default_id=None)
    assert len(single) == 1 and not single[0].footer.text.startswith("Page")


def _job(i, state, error=None, *, cost_micros=250_000, payment_source="USD"):
    return CloneJob(id=i, run_id=f"r{i}", provider="qwen", user_id=1, guild_id=1, channel_id=1,
                    application_id=1, interaction_token=None, token_expires_at=None, voice_name=f"J{i}",
                    custom_voice_id=None, transcript=None, clone_model=None, cost_micros=cost_micros,
                    payment_source=payment_source, is_api_request=1, state=state, error=error,
                    created_at=1_700_000_000, submitted_at=1_700_000_005, next_poll_at=None, last_polled_at=None,
                    poll_count=0, failures=0, finished_at=None, voice_id=None, notified_at=None)


def test_jobs_embed_shows_state_and_errors():
    embed = jobs_embed([_job(1, "processing"), _job(2, "failed", "bad  audio\n*here*"), _job(3, "completed")])
    assert "**Processing**" in embed.description and "Failed" in embed.description
    assert "> bad audio \\*here\\*" in embed.description and "<t:1700000005:R>" in embed.description
    assert embed.footer.text.startswith("1 running")


def _fields(embed):
    return {field.name: field.value for field in embed.fields}


def test_info_card_of_a_minimax_voice():
    voice = _voice(1, "Mini*", "minimax")
    card = info_embed(VoiceInfo(voice=voice, is_default=True, clone_job=_job(1, "completed", cost_micros=1_000_000),
                                now=voice.created_at, keep_until=voice.created_at + 7 * 86_400, stops_at=None))
    fields = _fields(card)
    assert card.title == "Voice “Mini\\*”"
    assert fields["Provider"] == "MiniMax" and fields["Default"] == "Yes ⭐" and fields["Clone cost"] == "$1.00"
    assert fields["Keeping it"].startswith("MiniMax deletes voices that go unused for 7 days. Use it with /say by")
    gone = info_embed(VoiceInfo(voice=voice, is_default=False, clone_job=None, now=voice.created_at + 8 * 86_400,
                                keep_until=voice.created_at + 7 * 86_400, stops_at=None))
    assert _fields(gone)["Clone cost"] == "unknown" and "so it may be gone" in _fields(gone)["Keeping it"]


def test_info_card_of_a_qwen_voice():
    voice = _voice(2, "Q")
    paid_in_nano = _job(2, "completed", cost_micros=1_500_000, payment_source="XNO")
    durable = _fields(info_embed(VoiceInfo(voice=voice, is_default=False, clone_job=paid_in_nano, now=0,
                                           keep_until=None, stops_at=None)))
    assert durable["Clone cost"] == "1.5 XNO" and durable["Transcript"] == "none given"
    assert durable["Durable"].startswith("I keep a copy")
    expiring = _fields(info_embed(VoiceInfo(voice=voice, is_default=False, clone_job=None, now=0, keep_until=None,
                                            stops_at=100)))
    assert expiring["Durable"].startswith("Stops working <t:100:R>")
