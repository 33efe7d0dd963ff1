"""Small wording helpers for what people read (messages, embeds, the command line): counts, money and
names people typed. No Discord here, and nothing of the bot's own, so every module (configuration
included) can use them."""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal

MICROS_PER_UNIT = 1_000_000  # money is integer micro-units (micro-dollars for USD), never float
_MARKDOWN = re.compile(r"([\\*_~`|>#\-\[\]()])")


def plural(count: float, noun: str) -> str:
    """``1 voice``, ``2 voices``, ``0 voices``, ``2.5 seconds``: the count and its noun, in agreement."""
    shown = str(count) if isinstance(count, int) else f"{count:g}"  # 3.0 → "3"; ints never as 1e+06
    return f"{shown} {noun}" if count == 1 else f"{shown} {noun}s"


def shorten(text: str, limit: int) -> str:
    """``text`` on one line (runs of white space, line breaks included, become one space), cut to ``limit``
    characters with "…" at the end when it is longer."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_usd(micros: int) -> str:
    """Dollars for people: ``$1.00``, ``$0.25``, ``$0.0035``, ``$1,234.50``.

    From a dollar up: two decimals. Below a dollar: up to four decimals (trailing zeros dropped, at
    least two kept) so sub-cent TTS costs stay visible. Rounded half up; exact (Decimal, no float).
    A positive amount too small to show becomes ``<$0.0001``.
    """
    sign = "-" if micros < 0 else ""
    amount = Decimal(abs(int(micros))) / MICROS_PER_UNIT
    if amount >= 1:
        text = f"{amount.quantize(Decimal('0.01'), rounding=ROUND_HALF_UP):,.2f}"
    else:
        shown = amount.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)
        if shown == 0 and amount > 0:
            return f"{sign}<$0.0001"
        text = f"{shown:.4f}"
        while text.endswith("0") and len(text.split(".")[1]) > 2:
            text = text[:-1]
    return f"{sign}${text}"


def format_money(micros: int, currency: str = "USD") -> str:
    """:func:`format_usd` for USD; other payment sources (XNO) as ``0.5 XNO`` with up to 6 decimals."""
    if currency.upper() == "USD":
        return format_usd(micros)
    amount = Decimal(int(micros)) / MICROS_PER_UNIT
    text = f"{amount:f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text} {currency.upper()}"


def escape_markdown(text: str) -> str:
    """``text`` with every markdown marker backslash-escaped, so chat shows it literally."""
    return _MARKDOWN.sub(r"\\\1", text)


def quoted(name: str, limit: int = 40) -> str:
    """A name someone typed, safe to put in a message: on one line, cut to ``limit``, markdown shown
    literally, in curly quotes (``“Grandma”``)."""
    return f"“{escape_markdown(shorten(name, limit))}”"
