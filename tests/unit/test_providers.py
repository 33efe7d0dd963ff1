"""bot.providers is the one source of clone prices and clip rules: every string and check follows it."""

from __future__ import annotations

import dataclasses

import pytest

from bot import audio, providers
from bot.limits import format_usd
from cogs import clone_jobs, voices
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
    modal = clone_jobs.CloneModal(cog=None, attachment=None)
    assert [(o.label, o.value) for o in modal.provider_select.options] == [(p.choice_name(), p.key) for p in table]


def test_changing_a_price_in_the_table_changes_the_card_and_the_reserved_price(monkeypatch):
    cheaper = dataclasses.replace(providers.PROVIDERS["minimax"], price_micros=750_000, min_s=5)
    monkeypatch.setitem(providers.PROVIDERS, "minimax", cheaper)
    assert providers.price_micros("minimax") == 750_000  # what bot.jobs reserves
    prepared = _prepared("minimax", 12.3, 12.3, False)
    prepared = dataclasses.replace(prepared, price_micros=providers.price_micros("minimax"))
    card = clone_jobs.confirm_embed(prepared)
    assert _fields(card)["Price"] == "$0.75" and "$0.75" in card.description
    assert _fields(card)["MiniMax accepts"] == "5 s–5 min of audio"
    assert audio.provider_rule("minimax") == audio.DurationRule(min_s=5, max_s=300, trim_to=None)
    assert providers.label("minimax") == "MiniMax"
