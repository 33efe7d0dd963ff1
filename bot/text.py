"""Small wording helpers for what people read (messages, embeds, the command line). No Discord here."""

from __future__ import annotations


def plural(count: float, noun: str) -> str:
    """``1 voice``, ``2 voices``, ``0 voices``, ``2.5 seconds``: the count and its noun, in agreement."""
    return f"{count:g} {noun}" if count == 1 else f"{count:g} {noun}s"
