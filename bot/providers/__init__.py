"""The clone providers: one module each (``minimax.py``, ``qwen.py``) behind :class:`CloneProvider`.

Every string that shows a price or a clip length (the ``/voice clone`` choices, the "Clone this voice"
select, the clone card, ``/help``), the audio checks (:mod:`bot.audio`), the price reserved before a
paid clone and every provider-specific step of cloning and speaking (:mod:`bot.cloning`, :mod:`bot.tts`)
go through the provider objects here, so a price, a rule or a provider's API changes in one place.
Prices: NanoGPT's documentation ($1.00 a MiniMax clone, $0.25 a Qwen3-TTS clone).

A new provider is one module (a :class:`CloneProvider` subclass and its ``PROVIDER``), its key in
:class:`ProviderKey`, and one line in :data:`PROVIDERS` below.
"""

from __future__ import annotations

from bot.providers import minimax, qwen
from bot.providers.base import CloneProvider, DurationRule, PollResult, ProviderKey

__all__ = [
    "PROVIDERS",
    "CloneProvider",
    "DurationRule",
    "PollResult",
    "ProviderKey",
    "choices",
    "find",
    "get",
    "keys_text",
    "label",
    "price_micros",
]

#: The registry, in the order people see the providers.
PROVIDERS: dict[str, CloneProvider] = {
    provider.key: provider
    for provider in (
        minimax.PROVIDER,
        qwen.PROVIDER,
    )
}


def find(key: str | None) -> CloneProvider | None:
    """The provider ``key`` (case-insensitive, surrounding spaces ignored), or None."""
    return PROVIDERS.get((key or "").strip().lower())


def get(key: str) -> CloneProvider:
    """The provider ``key`` (case-insensitive); ``ValueError`` for an unknown one."""
    provider = find(key)
    if provider is None:
        raise ValueError(f"unknown clone provider {key!r}")
    return provider


def label(key: str) -> str:
    """The name people see, or ``key`` itself for an unknown provider."""
    provider = PROVIDERS.get(key)
    return provider.label if provider is not None else key


def price_micros(key: str) -> int:
    """What one clone run with ``key`` costs: the amount reserved before submitting."""
    return get(key).price_micros


def choices() -> list[tuple[str, str]]:
    """``(name, value)`` of every provider, for the ``/voice clone`` choices and the clone select."""
    return [(provider.choice_name(), provider.key) for provider in PROVIDERS.values()]


def keys_text() -> str:
    """``minimax or qwen``: the option values, for a sentence."""
    return " or ".join(PROVIDERS)
