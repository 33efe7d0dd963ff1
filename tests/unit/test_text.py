"""Wording helpers: money in every payment source, names people typed."""

from __future__ import annotations

from bot.text import escape_markdown, format_money, quoted


def test_format_money_for_usd_and_nano():
    assert format_money(250_000, "USD") == "$0.25"
    assert format_money(1_000_000) == "$1.00"
    assert format_money(5_039, "usd") == "$0.005"  # sub-cent amounts keep their digits (format_usd)
    assert format_money(1_500_000, "XNO") == "1.5 XNO"
    assert format_money(1_000_000, "XNO") == "1 XNO"
    assert format_money(1_234, "xno") == "0.001234 XNO"


def test_quoted_escapes_trims_and_keeps_one_line():
    assert quoted("**bold**") == "“\\*\\*bold\\*\\*”"
    assert quoted("x" * 100).endswith("…”") and len(quoted("x" * 100)) == 42
    assert quoted("two\nlines   here") == "“two lines here”"
    assert quoted("Grandma") == "“Grandma”"


def test_escape_markdown_shows_every_marker_literally():
    assert escape_markdown("a_b *c* `d` ~e~ |f| > # - [g](h) \\") == (
        "a\\_b \\*c\\* \\`d\\` \\~e\\~ \\|f\\| \\> \\# \\- \\[g\\]\\(h\\) \\\\")
