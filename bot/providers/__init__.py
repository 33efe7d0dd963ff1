"""The clone providers: one frozen description each, the one source of their price and clip rules.

Every string that shows a price or a clip length (the ``/voice clone`` choices, the "Clone this voice"
select, the clone card, ``/help``), the audio checks (:mod:`bot.audio`) and the price reserved before a
paid clone (:mod:`bot.jobs`) read these descriptions, so a price or a rule changes in one place.
Prices: NanoGPT's documentation ($1.00 a MiniMax clone, $0.25 a Qwen3-TTS clone).
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.text import format_usd

__all__ = ["PROVIDERS", "Provider", "get", "label", "price_micros"]


@dataclass(frozen=True, slots=True)
class Provider:
    key: str  # the option value (``minimax`` / ``qwen``), stored with jobs and voices
    label: str  # the name people see
    price_micros: int  # one clone run, in micro-dollars
    min_s: float  # shortest accepted clip
    max_s: float  # longest accepted clip
    trim_to: float | None = None  # longer accepted clips are cut to this many seconds

    @property
    def price(self) -> str:
        return format_usd(self.price_micros)

    @property
    def clip_range(self) -> str:
        """``10 s–5 min``."""
        return f"{_seconds(self.min_s)}–{_seconds(self.max_s)}"

    def choice_name(self) -> str:
        """``MiniMax ($1.00, 10 s–5 min of audio)``: the /voice clone choice and the select option."""
        return f"{self.label} ({self.price}, {self.clip_range} of audio)"

    def clip_rule(self) -> str:
        """``3 s–5 min of audio; only the first 30 s is used``."""
        rule = f"{self.clip_range} of audio"
        if self.trim_to is not None:
            rule += f"; only the first {_seconds(self.trim_to)} is used"
        return rule


def _seconds(value: float) -> str:
    if value >= 60 and value % 60 == 0:
        return f"{value // 60:g} min"
    return f"{value:g} s"


PROVIDERS: dict[str, Provider] = {
    "minimax": Provider("minimax", "MiniMax", 1_000_000, min_s=10, max_s=300),
    "qwen": Provider("qwen", "Qwen3-TTS", 250_000, min_s=3, max_s=300, trim_to=30),
}


def get(key: str) -> Provider:
    """The provider ``key`` (case-insensitive); ``ValueError`` for an unknown one."""
    try:
        return PROVIDERS[key.lower()]
    except KeyError:
        raise ValueError(f"unknown clone provider {key!r}") from None


def label(key: str) -> str:
    """The name people see, or ``key`` itself for an unknown provider."""
    provider = PROVIDERS.get(key)
    return provider.label if provider is not None else key


def price_micros(key: str) -> int:
    """What one clone run with ``key`` costs: the amount reserved before submitting."""
    return get(key).price_micros
