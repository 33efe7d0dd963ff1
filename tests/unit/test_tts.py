"""bot.say_text and bot.tts, the pure rules: text hygiene (mentions, links, markup, runs), the length
limit, quoting, stock voice parsing and the TTS cache key. The service against the fake NanoGPT is in
``tests/wire/test_tts.py``."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bot.errors import UserFacingError
from bot.say_text import MentionNames, clean_text, prepare_text, quote_text
from bot.tts import TTS_MODELS, cache_key, parse_stock_voice

NAMES = MentionNames(user=lambda i: {111111111111111111: "Bob"}.get(i),
                     role=lambda i: {333333333333333333: "Moderators"}.get(i),
                     channel=lambda i: {444444444444444444: "general"}.get(i))


@pytest.mark.parametrize(("raw", "spoken"), [
    ("hi <@111111111111111111> and <@!111111111111111111>", "hi @Bob and @Bob"),
    ("<@222222222222222222> is unknown", "someone is unknown"),
    ("ping <@&333333333333333333> in <#444444444444444444>", "ping @Moderators in #general"),
    ("@everyone and @here listen", "everyone and here listen"),
    ("nice <:pepe_laugh:123456789012345678> <a:wave:123456789012345678>", "nice pepe laugh wave"),
    ("see https://example.com/a?b=c and <https://x.y/z> or www.foo.org", "see link and link or link"),
    ("read [the docs](https://docs.example.com/x) now", "read the docs now"),
    ("sooooooo goooood!!!!!!!! ........", "sooo goood!!! ..."),
    ("pay 1000000 now", "pay 1000000 now"),
    ("  lots\n\n of \t space  ", "lots of space"),
    ("**bold** __under__ ~~gone~~ ||secret|| `code`", "bold under gone secret code"),
    ("# Title\n> quoted line\n-# small", "Title quoted line small"),
    ("zero\u200bwidth\u202eflip", "zerowidthflip"),
    ("at <t:1764115200:R>", "at 26 November 2025"),
])
def test_clean_text(raw, spoken):
    assert clean_text(raw, NAMES) == spoken


def test_length_is_checked_on_the_users_text_and_states_the_limit():
    with pytest.raises(UserFacingError) as err:
        prepare_text("a" * 1204, 1000)
    assert str(err.value) == "That text is 1,204 characters; the limit is 1,000."
    assert prepare_text("a" * 1000, 1000) == "aaa"  # the run cap applies after the length check


@pytest.mark.parametrize("raw", ["", "   ", "<https://x.y>"[:0], "!!!!", "``` ```", "\u200b\u200b"])
def test_nothing_to_say_is_refused(raw):
    with pytest.raises(UserFacingError, match="nothing to say"):
        prepare_text(raw, 1000)


def test_quote_fits_and_escapes():
    assert quote_text("hello *world*", 100) == "> hello \\*world\\*"
    long = quote_text("word " * 1000, 1990)
    assert len(long) <= 1990 and long.endswith("…") and long.startswith("> word")


def test_stock_voice_parsing():
    assert parse_stock_voice("kokoro-82M/af_bella") == ("Kokoro-82m", "af_bella")
    assert parse_stock_voice("tts-1-hd/nova") == ("tts-1-hd", "nova")
    with pytest.raises(UserFacingError) as refused:
        parse_stock_voice("gpt-5/alloy")
    assert str(refused.value) == ("“gpt-5” is not a speech model I know. Write a stock voice as model/voice, "
                                  "e.g. Kokoro-82m/af_bella or tts-1/nova; see /say's voice suggestions for more.")
    with pytest.raises(UserFacingError, match="Add a voice after the model"):
        parse_stock_voice("Kokoro-82m/ ")
    assert len(TTS_MODELS) == 11


async def test_cache_key_identity():
    base = ("stock:Kokoro-82m/af_bella", "Kokoro-82m")
    from bot.tts import ResolvedVoice
    voice = ResolvedVoice("x", base[1], "af_bella", base[0])
    assert cache_key(voice, 1.0, "hi") == cache_key(replace(voice, label="y"), 1.0, "hi")
    assert cache_key(voice, 1.0, "hi") != cache_key(voice, 1.01, "hi")
    assert cache_key(voice, 1.0, "hi") != cache_key(replace(voice, identity="minimax:abc"), 1.0, "hi")


def test_every_generated_clone_id_is_refused_as_a_stock_voice():
    from bot.cloning import make_custom_voice_id
    from bot.tts import BOT_VOICE_ID, parse_stock_voice

    for _ in range(200):
        voice_id = make_custom_voice_id()
        assert BOT_VOICE_ID.match(voice_id)
        with pytest.raises(UserFacingError, match="not a stock voice"):
            parse_stock_voice(f"Minimax-Speech-02-HD/{voice_id}")
