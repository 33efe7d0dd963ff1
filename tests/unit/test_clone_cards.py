"""What the clone flow shows: the consent card, the live status card, and which attachment is cloned."""

from __future__ import annotations

from types import SimpleNamespace

import discord

from bot.audio import NormalizedAudio
from bot.cloning import CloneNotice, CloneRequest, PreparedClone
from bot.storage import CloneJob
from cogs.cloning import CONSENT, confirm_embed, find_audio, notice_embed, status_embed


def _prepared(provider="qwen", duration=30.0, source=95.0, trimmed=True, name="Zoë *bold*"):
    request = CloneRequest(user_id=1, guild_id=2, channel_id=3, name=name, provider=provider)
    clip = NormalizedAudio(b"mp3", duration, source, trimmed)
    return PreparedClone(request, clip, 250_000 if provider == "qwen" else 1_000_000)


def _job(**changes) -> CloneJob:
    values = dict(id=1, run_id="run", provider="minimax", user_id=1, guild_id=2, channel_id=3, application_id=4,
                  interaction_token="t", token_expires_at=1900.0, voice_name="Alice", custom_voice_id="nv1abcdefgh",
                  transcript=None, clone_model=None, cost_micros=1_000_000, payment_source="USD", is_api_request=1,
                  state="processing", error=None, created_at=1000.0, submitted_at=1001.0, next_poll_at=None,
                  last_polled_at=None, poll_count=3, failures=0, finished_at=None, voice_id=None, notified_at=None)
    values.update(changes)
    return CloneJob(**values)


def _fields(embed: discord.Embed) -> dict[str, str]:
    return {f.name: f.value for f in embed.fields}


def test_consent_card_shows_provider_price_duration_and_the_sentence():
    embed = confirm_embed(_prepared())
    assert CONSENT in embed.description and "$0.25" in embed.description
    assert _fields(embed) == {"Provider": "Qwen3-TTS", "Price": "$0.25",
                              "Duration": "95.0 s, trimmed to the first 30 s",
                              "Qwen3-TTS accepts": "3 s–5 min of audio; only the first 30 s is used"}
    assert "\\*bold\\*" in embed.title  # names are not markdown
    minimax = confirm_embed(_prepared("minimax", 12.3, 12.3, False))
    assert _fields(minimax) == {"Provider": "MiniMax", "Price": "$1.00", "Duration": "12.3 s",
                                "MiniMax accepts": "10 s–5 min of audio"}


def test_status_card_shows_state_and_elapsed_time():
    embed = status_embed(_job(), now=1066.0)
    assert _fields(embed)["State"] == "Processing" and _fields(embed)["Elapsed"] == "1m 05s"
    assert _fields(status_embed(_job(state="pending"), now=1004.0))["State"] == "Queued"
    done = _job(state="completed", finished_at=1031.0)
    notice = CloneNotice("completed", "Your voice “Alice” is ready.", voice_name="Alice")
    card = notice_embed(done, notice, now=5000.0)
    assert card.title == "Voice “Alice” is ready" and _fields(card)["Elapsed"] == "30s"
    assert _fields(card)["State"] == "Completed" and card.colour == discord.Colour.green()


def _attachment(filename, content_type, **extra):
    data = {"id": 1, "filename": filename, "size": 100, "url": "https://cdn/x", "proxy_url": "https://cdn/x",
            "content_type": content_type, **extra}
    return discord.Attachment(data=data, state=SimpleNamespace(http=None))


def test_the_message_audio_is_found_or_refused():
    image = _attachment("cat.png", "image/png")
    video = _attachment("clip.mp4", "video/mp4")
    voice = _attachment("voice-message.ogg", "audio/ogg", duration_secs=5.2, waveform="AAAA")
    song = _attachment("song.mp3", "audio/mpeg")
    untyped = _attachment("old.m4a", None)
    assert find_audio(SimpleNamespace(attachments=[image, voice, song])) is voice
    assert find_audio(SimpleNamespace(attachments=[image, song])) is song
    assert find_audio(SimpleNamespace(attachments=[untyped])) is untyped
    assert find_audio(SimpleNamespace(attachments=[image, video])) is None
    assert find_audio(SimpleNamespace(attachments=[])) is None
