"""Pure pieces of the /voice cog: fuzzy name ranking, costs, pages, job lines."""

from __future__ import annotations

from bot.storage import CloneJob, Voice
from cogs.voices import PAGE_SIZE, format_cost, jobs_embed, list_pages, rank_names, shown


def _voice(i: int, name: str, provider: str = "qwen", last_used: float | None = None) -> Voice:
    return Voice(id=i, user_id=1, guild_id=1, name=name, provider=provider, provider_voice_id=None,
                 embedding_url=None, embedding_expires_at=None, embedding_file_id=None, transcript=None,
                 clone_model=None, created_at=1_700_000_000 + i, last_used_at=last_used)


def test_rank_names_is_fuzzy_and_capped():
    names = ["Grandma", "Grandpa Joe", "Narrator", "The Grand Wizard", "Bob"] + [f"Voice {i}" for i in range(40)]
    assert rank_names("grand", names)[:3] == ["Grandma", "Grandpa Joe", "The Grand Wizard"]
    assert rank_names("GRANDMA", names)[0] == "Grandma"
    assert rank_names("nrtr", names) == ["Narrator"]  # subsequence
    assert rank_names("Narator", names)[0] == "Narrator"  # typo
    assert rank_names("zzzz", names) == []
    assert len(rank_names("", names)) == 25
    assert len(rank_names("voice", names)) == 25


def test_format_cost_is_exact():
    assert format_cost(250_000, "USD") == "$0.25"
    assert format_cost(1_000_000, "USD") == "$1.00"
    assert format_cost(5_039, "USD") == "$0.0050"
    assert format_cost(1_500_000, "XNO") == "1.5 XNO"
    assert format_cost(None, None) == "unknown"


def test_shown_escapes_and_trims():
    assert shown("**bold**") == "“\\*\\*bold\\*\\*”"
    assert shown("x" * 100).endswith("…”")


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


def test_jobs_embed_shows_state_and_errors():
    def job(i, state, error=None):
        return CloneJob(id=i, run_id=f"r{i}", provider="qwen", user_id=1, guild_id=1, channel_id=1,
                        application_id=1, interaction_token=None, token_expires_at=None, voice_name=f"J{i}",
                        custom_voice_id=None, transcript=None, clone_model=None, cost_micros=250_000,
                        payment_source="USD", is_api_request=1, state=state, error=error, created_at=1_700_000_000,
                        submitted_at=1_700_000_005, next_poll_at=None, last_polled_at=None, poll_count=0,
                        failures=0, finished_at=None, voice_id=None, notified_at=None)

    embed = jobs_embed([job(1, "processing"), job(2, "failed", "bad audio"), job(3, "completed")])
    assert "**Processing**" in embed.description and "Failed" in embed.description
    assert "> bad audio" in embed.description and "<t:1700000005:R>" in embed.description
    assert embed.footer.text.startswith("1 running")
