"""bot.providers is the one source of clone prices and clip rules: every string and check follows it."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import AsyncIterator

import aiohttp
import mutagen.mp3
import pytest

from bot import audio, limits, providers
from bot.clock import Clock
from bot.cloning import ClipSource, CloneRequest, CloneService
from bot.embeddings import EmbeddingHost
from bot.errors import UserFacingError
from bot.limits import LimitExceeded, Limits, format_usd
from bot.nanogpt import NanoGPTClient
from bot.policy import effective_settings
from bot.providers.base import CloneProvider, UploadFormat
from bot.tts import TTSService
from bot.voices import VoiceService
from cogs import cloning, voices
from cogs.help import help_embed
from tests.fixtures_db import TEST_NANOGPT_KEY, make_config
from tests.unit.test_clone_cards import _fields, _prepared


def test_the_table_and_its_rendering():
    minimax, qwen = providers.get("minimax"), providers.get("Qwen")
    assert (minimax.label, minimax.price_micros, minimax.min_s, minimax.max_s, minimax.trim_to) == \
        ("MiniMax", 1_000_000, 10, 300, None)
    assert (qwen.label, qwen.price_micros, qwen.min_s, qwen.max_s, qwen.trim_to) == ("Qwen3-TTS", 250_000, 3, 300, 30)
    assert minimax.choice_name() == "MiniMax ($1.00, 10 s–5 min of audio)"
    assert qwen.choice_name() == "Qwen3-TTS ($0.25, 3 s–5 min of audio)"
    assert qwen.clip_rule() == "3 s–5 min of audio; only the first 30 s is used"
    with pytest.raises(ValueError):
        providers.get("nope")


def test_the_clone_choices_and_select_options_are_rendered_from_the_table():
    table = list(providers.PROVIDERS.values())
    assert [(c.name, c.value) for c in voices.PROVIDERS] == [
        (f"{p.label} ({format_usd(p.price_micros)}, {p.clip_range} of audio)", p.key) for p in table]
    modal = cloning.CloneModal(cog=None, attachment=None)
    assert [(o.label, o.value) for o in modal.provider_select.options] == [(p.choice_name(), p.key) for p in table]


def test_changing_a_price_in_the_table_changes_the_card_and_the_reserved_price(monkeypatch):
    cheaper = dataclasses.replace(providers.PROVIDERS["minimax"], price_micros=750_000, min_s=5)
    monkeypatch.setitem(providers.PROVIDERS, "minimax", cheaper)
    assert providers.price_micros("minimax") == 750_000  # what bot.cloning reserves
    prepared = _prepared("minimax", 12.3, 12.3, False)
    prepared = dataclasses.replace(prepared, price_micros=providers.price_micros("minimax"))
    card = cloning.confirm_embed(prepared)
    assert _fields(card)["Price"] == "$0.75" and "$0.75" in card.description
    assert _fields(card)["MiniMax accepts"] == "5 s–5 min of audio"
    assert audio.provider_rule("minimax") == audio.DurationRule(min_s=5, max_s=300, trim_to=None)
    assert providers.label("minimax") == "MiniMax"


# -- a third provider is one module plus a registry line ---------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Parrot(CloneProvider):
    """A provider that exists only in this test: no edits anywhere else make it work."""


PARROT = Parrot("parrot", "Parrot", 420_000, min_s=4, max_s=60, trim_to=20,
                upload=UploadFormat(sample_rate=22_050, bitrate=64_000))


@pytest.fixture
async def parrot_service(monkeypatch, db) -> AsyncIterator[CloneService]:
    monkeypatch.setitem(providers.PROVIDERS, PARROT.key, PARROT)  # the registry line
    config = make_config(bot_daily_budget_micros=400_000)  # less than a Parrot clone, more than a Qwen one
    clock = Clock()
    async with aiohttp.ClientSession() as session:  # the services need one; nothing is sent in these tests
        nanogpt = NanoGPTClient(session, config.nanogpt_base_url, TEST_NANOGPT_KEY)
        limits = Limits(db, config, clock)
        embeddings = EmbeddingHost(db, config, clock, session)
        tts = TTSService(db, nanogpt, limits, clock, config, embeddings)
        yield CloneService(db, nanogpt, limits, clock, config, tts, embeddings, VoiceService(db, clock, embeddings))


def _clip(data: bytes, filename: str = "clip.mp3") -> ClipSource:
    async def read() -> bytes:
        return data

    return ClipSource(filename, len(data), None, read)


async def test_a_registered_third_provider_shows_in_the_choices_select_and_help(parrot_service, db):
    assert providers.choices()[-1] == ("Parrot ($0.42, 4 s–1 min of audio)", "parrot")
    modal = cloning.CloneModal(cog=None, attachment=None)
    assert ("Parrot ($0.42, 4 s–1 min of audio)", "parrot") in [(o.label, o.value) for o in
                                                               modal.provider_select.options]
    config = make_config()
    card = help_embed(config, await effective_settings(db, config, 1))
    assert "Parrot: $0.42 a clone, 4 s–1 min of audio; only the first 20 s is used" in _fields(card)[
        "Clone prices and recordings"]


async def test_a_registered_third_provider_goes_through_the_checks_price_and_clip_rule(parrot_service, audio_corpus):
    service = parrot_service
    request = CloneRequest(user_id=1, guild_id=None, channel_id=3, name="Polly", provider=" Parrot ",
                           model="speech-02-hd")
    long_clip = _clip(audio_corpus("mp3", 30))
    # The price: 420,000 micros is over the bot's 400,000 budget, so the early check refuses Parrot...
    with pytest.raises(LimitExceeded):
        await service.check(request, long_clip)
    assert limits.estimate_clone_micros("parrot") == 420_000
    # ...and accepts the same request for a cheaper provider.
    assert (await service.check(dataclasses.replace(request, provider="qwen"), long_clip)).provider == "qwen"
    service.limits.config = make_config()  # no budget
    checked = await service.check(request, long_clip)
    assert (checked.provider, checked.model) == ("parrot", None)  # the MiniMax-only model option is dropped

    # The clip rule and upload format: 30 s is cut to the first 20 s, at the provider's sample and bit rate.
    prepared = await service.prepare_audio(checked, long_clip)
    assert prepared.price_micros == 420_000 and prepared.provider is PARROT
    assert prepared.audio.trimmed and prepared.audio.duration == pytest.approx(20, abs=0.2)
    info = mutagen.mp3.MP3(io.BytesIO(prepared.audio.mp3)).info
    assert (info.sample_rate, info.bitrate, info.channels) == (22_050, 64_000, 1)
    card = cloning.confirm_embed(prepared)
    assert _fields(card)["Parrot accepts"] == "4 s–1 min of audio; only the first 20 s is used"
    assert _fields(card)["Price"] == "$0.42" and _fields(card)["Provider"] == "Parrot"
    with pytest.raises(audio.BadDuration) as short:
        await service.prepare_audio(checked, _clip(audio_corpus("mp3", 3)))
    assert "Parrot needs at least 4 seconds" in str(short.value)
    assert audio.provider_rule("parrot") == audio.DurationRule(min_s=4, max_s=60, trim_to=20)


async def test_an_unknown_provider_is_refused_naming_the_registered_ones(parrot_service, audio_corpus):
    request = CloneRequest(user_id=1, guild_id=None, channel_id=3, name="Polly", provider="elevenlabs")
    with pytest.raises(UserFacingError) as refused:
        await parrot_service.check(request, _clip(audio_corpus("mp3", 12)))
    assert str(refused.value) == "Choose minimax or qwen or parrot as the provider."


async def test_a_registered_third_provider_s_job_and_voice_are_saved_and_read_back(parrot_service, db):
    """Migration 0005 dropped the provider CHECK of 0001: the new provider's rows are stored like any other."""
    service = parrot_service
    job_id, _ = await db.jobs.create(
        user_id=1, guild_id=2, channel_id=3, application_id=None, interaction_token=None, token_expires_at=None,
        voice_name="Polly", provider=PARROT.key, transcript=None, clone_model=None, now=10.0,
    )
    await db.jobs.update(job_id, state="processing", run_id="parrot-run-1")
    job = await db.jobs.get(job_id)
    assert job is not None and (job.provider, job.state, job.run_id) == ("parrot", "processing", "parrot-run-1")
    assert [j.id for j in await db.jobs.open()] == [job_id]

    saved = await db.jobs.complete(job_id, now=20.0, provider_voice_id="parrot-voice-1")
    assert saved is not None
    voice_id, name = saved
    voice = await db.voices.by_name(1, "polly")
    assert voice is not None and (voice.id, voice.name, voice.provider, voice.provider_voice_id) == (
        voice_id, name, "parrot", "parrot-voice-1")
    assert name == "Polly"
    info = await service.voices.info(1, "Polly")  # the base provider: kept whether used or not, never expires
    assert (info.voice.provider, info.keep_until, info.stops_at) == ("parrot", None, None)
    assert info.clone_job is not None and info.clone_job.id == job_id
