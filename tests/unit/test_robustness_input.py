"""Bad input, the pure parts: property-based fuzzing with Hypothesis of ``bot.audio`` on arbitrary bytes
(through the bundled ffmpeg) and of ``bot.say_text``'s text hygiene. Every bad input gets one clear sentence,
never a crash. The same rules over the wire (the real bot, the Discord emulator, the fake NanoGPT) are in
``tests/wire/test_robustness_input.py``, which shares :func:`assert_sentence` and the text fragments.
"""

from __future__ import annotations

import asyncio
import functools
import random
import re
import unicodedata

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bot import audio
from bot.errors import UserFacingError
from bot.say_text import RUN_CAP, MentionNames, clean_text, prepare_text
from tests.fakes.nanogpt import make_tone

RAW_MENTION = re.compile(r"<@!?\d+>|<@&\d+>|<#\d+>|@everyone\b|@here\b")
LEAKS = ("Traceback", "ffmpeg", "errno", "pipe:", "/tmp", "error id", "Exception")


def assert_sentence(text: str) -> None:
    """One clear sentence for a person: no internals, a full stop at the end."""
    assert text and text == text.strip() and "\n" not in text, repr(text)
    assert text.endswith("."), repr(text)
    assert len(text) < 400, repr(text)
    for leak in LEAKS:
        assert leak not in text, repr(text)


def invisible(text: str) -> list[str]:
    return [f"U+{ord(c):04X}" for c in text if unicodedata.category(c) in ("Cc", "Cf") and c not in "\n"]


# -- Hypothesis: uploads through bot.audio ------------------------------------------------------------------

MAGICS = [b"ID3\x04\x00\x00\x00\x00\x00\x00", b"\xff\xfb\x90\x64", b"RIFF\xff\xff\xff\x7fWAVEfmt ", b"OggS\x00\x02",
          b"fLaC\x00\x00\x00\x22", b"\x00\x00\x00\x20ftypM4A ", b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01webm",
          b"\xff\xf1\x50\x80", b"FORM\x00\x00\x10\x00AIFF", b"#!AMR\n", b"caff\x00\x01"]


@functools.cache
def real_mp3() -> bytes:
    return make_tone(4.0, "mp3")  # 4 s: long enough for Qwen, too short for MiniMax


def _expand(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


# Up to 64 KB: small shrinkable byte strings, big seeded random blobs, and blobs behind a real magic number
# (so they get past the header sniff and reach ffmpeg).
upload_bytes = st.one_of(
    st.binary(max_size=2048),
    st.builds(_expand, st.integers(0, 2**32), st.integers(1, 64 * 1024)),
    st.builds(lambda magic, body: magic + body, st.sampled_from(MAGICS),
              st.builds(_expand, st.integers(0, 2**32), st.integers(0, 32 * 1024))),
)


@st.composite
def mutated_mp3(draw) -> bytes:
    """Structured damage to a real MP3: truncation, flipped header bytes, spliced junk, zeroed runs,
    foreign magic numbers in front, lying ID3 tags."""
    data = bytearray(real_mp3())
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["truncate", "flip", "splice", "zero", "prefix", "id3", "duplicate"]))
        size = len(data)
        if op == "truncate" and size:
            del data[draw(st.integers(0, size)):]
        elif op == "flip" and size:
            at = draw(st.integers(0, min(size, 4096) - 1))
            data[at] = draw(st.integers(0, 255))
        elif op == "splice":
            at = draw(st.integers(0, size))
            data[at:at] = draw(st.binary(min_size=1, max_size=512))
        elif op == "zero" and size:
            at = draw(st.integers(0, size - 1))
            data[at:at + draw(st.integers(1, 4096))] = bytes(min(4096, size - at))
        elif op == "prefix":
            data[0:0] = draw(st.sampled_from(MAGICS))
        elif op == "id3":  # an ID3v2 header claiming any (synchsafe) size, even past the end
            claimed = draw(st.integers(0, 2**28 - 1))
            synchsafe = bytes((claimed >> shift) & 0x7F for shift in (21, 14, 7, 0))
            data[0:0] = b"ID3\x04\x00" + bytes([draw(st.sampled_from([0, 0x10]))]) + synchsafe
        elif op == "duplicate" and size:
            data += data[: draw(st.integers(1, size))]
    return bytes(data)


def check_normalise(data: bytes, provider: str) -> None:
    try:
        result = asyncio.run(audio.normalize_clone_audio(data, provider, filename="fuzz.mp3", timeout=20))
    except audio.AudioError as exc:
        assert isinstance(exc, UserFacingError)
        assert_sentence(str(exc))
        return
    # Accepted: then it really is a usable clip for that provider.
    low = 3.0 if provider == "qwen" else 10.0
    assert low - 0.6 <= result.duration <= 300.5, result.duration
    assert result.mp3[:3] == b"ID3" or result.mp3[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"), result.mp3[:4]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=upload_bytes, provider=st.sampled_from(["qwen", "minimax"]))
def test_fuzzed_uploads_only_ever_raise_audio_errors(data: bytes, provider: str) -> None:
    try:
        audio.precheck(data, "fuzz.mp3")
    except audio.AudioError as exc:
        assert_sentence(str(exc))
    check_normalise(data, provider)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=mutated_mp3(), provider=st.sampled_from(["qwen", "minimax"]))
def test_damaged_mp3s_only_ever_raise_audio_errors(data: bytes, provider: str) -> None:
    check_normalise(data, provider)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.one_of(upload_bytes, mutated_mp3()))
def test_voice_message_encoding_of_garbage_only_raises_audio_errors(data: bytes) -> None:
    """Speech from NanoGPT is re-encoded for voice messages; a garbled answer must not escape as a crash."""
    try:
        encoded = asyncio.run(audio.encode_voice_message(data))
    except audio.AudioError as exc:
        assert_sentence(str(exc))
        return
    assert encoded.ogg.startswith(b"OggS") and encoded.duration > 0


# -- Hypothesis: /say text hygiene ------------------------------------------------------------------------

ID = "123456789012345678"
FRAGMENTS = [
    "@", "@everyone", "@here", "everyone", "<@", "<@!", "<@&", "<#", ">", "<", ID, f"<@{ID}>", f"<@!{ID}>",
    f"<@&{ID}>", f"<#{ID}>", f"<:party_time:{ID}>", f"<a:dance:{ID}>", f"</say:{ID}>", "<t:0>", "<t:99999999999999:R>",
    "<id:customize>", "\u200b", "\u200d", "\ufeff", "\u202e", "\u2066", "\x00", "\x07", "\n", "\r\n", "\t", "**", "__",
    "~~", "||", "`", "```py\n", "> ", ">>> ", "# ", "-# ", "https://evil.example/a?b=c", "www.x.yz",
    "[click](https://evil.example)", "😀", "👍🏽", "a", "aaaaaa", "!!!!!!", "é", "\u0301", "مرحبا", "שלום", " ",
    "'; DROP TABLE voices; --", "%", "_", "\\", "0", "1111111",
]


say_text = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)), max_size=40).map("".join)
NAMES = MentionNames(user=lambda uid: "Bob" if uid == int(ID) else None,
                     role=lambda rid: "Moderators" if rid == int(ID) else None,
                     channel=lambda cid: "general" if cid == int(ID) else None)


@settings(max_examples=300, deadline=None)
@given(text=say_text, resolve=st.booleans())
@example(text="@@everyone @@here", resolve=False)  # one pass of the @everyone rule leaves a new one behind
@example(text="@**@everyone", resolve=False)  # stripping markdown must not reassemble a mention
@example(text="<@0> ", resolve=False)  # Discord renders any id as a mention, not only snowflake-sized ones
def test_cleaned_text_has_no_mentions_invisibles_or_long_runs(text: str, resolve: bool) -> None:
    names = NAMES if resolve else None
    cleaned = clean_text(text, names)
    assert not RAW_MENTION.search(cleaned), (text, cleaned)
    assert not invisible(cleaned) and "\n" not in cleaned, (text, cleaned)
    assert cleaned == cleaned.strip() and "  " not in cleaned, (text, cleaned)
    runs = re.findall(rf"([^\d\s])\1{{{RUN_CAP},}}", cleaned)
    assert not runs, (text, cleaned)


LONG_NAMES = MentionNames(user=lambda uid: "Ulysses Everdeen The Third Of Yo",
                         role=lambda rid: ("Very Important Moderators Of This Server " * 3)[:100],
                         channel=lambda cid: ("announcements-and-news-" * 5)[:100])


@settings(max_examples=300, deadline=None)
@given(text=say_text, limit=st.sampled_from([20, 100, 1000]), long_names=st.booleans())
@example(text="<t:0>" * 4, limit=20, long_names=False)  # dates are spoken longer than they are typed
@example(text=f"<@&{ID}>" * 4, limit=100, long_names=True)  # and so are (long) role names
def test_prepared_text_is_refused_in_one_sentence_or_fits_the_limit(text: str, limit: int, long_names: bool) -> None:
    try:
        spoken = prepare_text(text, limit, LONG_NAMES if long_names else NAMES)
    except UserFacingError as exc:
        assert_sentence(str(exc))
        return
    assert any(ch.isalnum() for ch in spoken)
    assert len(spoken) <= limit, f"{len(text)} characters typed became {len(spoken)} spoken, over {limit}"
