"""Fuzzy matching of what someone is typing against names (autocomplete): one scorer, one threshold.

Tiers, best first: the same name, a prefix, a prefix of one of its words (split at spaces, ``/``, ``_``,
``.``, ``-``), a substring, a subsequence (``afbel`` → ``af_bella``), then a similar spelling (a typo).
Within a tier the candidate the query covers more of ranks higher."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

SIMILARITY_THRESHOLD = 0.7  # difflib ratio a typo needs to still match
_WORD_SEPARATORS = re.compile(r"[\s/_.\-]+")


def score(query: str, candidate: str) -> float | None:
    """How well ``query`` matches ``candidate`` (higher is better, case-insensitive); None when it does not.
    An empty query matches everything equally (0)."""
    q, c = " ".join(query.split()).casefold(), candidate.casefold()
    if not q:
        return 0.0
    if c == q:
        return 10.0
    cover = len(q) / len(c) if c else 0.0
    if c.startswith(q):
        return 8.0 + cover
    words = [w for w in _WORD_SEPARATORS.split(c) if w]
    if any(w.startswith(q) for w in words):
        return 7.0 + cover
    if q in c:
        return 6.0 + cover
    it = iter(c)
    if all(ch in it for ch in q):
        return 4.0 + cover
    ratio = difflib.SequenceMatcher(None, q, c).ratio()
    best_word = max((difflib.SequenceMatcher(None, q, w).ratio() for w in words), default=0.0)
    ratio = max(ratio, best_word)
    return ratio * 3.0 if ratio >= SIMILARITY_THRESHOLD else None


def rank(query: str, names: Iterable[str], limit: int) -> list[str]:
    """The names matching ``query``, best first (ties and an empty query: alphabetically), at most ``limit``."""
    scored = [(s, name) for name in names if (s := score(query, name)) is not None]
    scored.sort(key=lambda pair: (-pair[0], pair[1].casefold(), pair[1]))
    return [name for _, name in scored[:limit]]
