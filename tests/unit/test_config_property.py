"""Property: for every configuration variable, *any* text either stops start-up with one printable line
naming that variable, or gives a value inside the documented range that its consumer really accepts."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import unicodedata
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from yarl import URL

from bot.clock import Clock
from bot.config import (
    BUDGET_MAX_MICROS,
    BUDGET_MIN_MICROS,
    SNOWFLAKE_MAX,
    SNOWFLAKE_MIN,
    TTS_MODELS,
    Config,
    ConfigError,
    Secret,
    load_config,
)
from bot.limits import Cooldown, format_usd

BASE = {"DISCORD_TOKEN": "discord-token-abcdef", "NANOGPT_API_KEY": "sk-nano-00000000-secret"}

# Text an operator (or a broken deployment) might put in a variable: near-valid values and their
# mutations, numbers in every notation, and arbitrary unicode including control characters, line
# breaks, lone surrogates (undecodable bytes in the environment) and very long strings.
_SPECIAL = [
    "", " ", "0", "1", "-1", "-0", "+1", "00", "1e999", "1E-9", "nan", "NaN", "-nan", "inf", "-inf", "Infinity",
    "0.0000001", "0.0005", "0.001", "0.01", "5.00", "10000", "10000.000001", "1,000", "1_000", "$5", "5$", ".",
    "..", ".5", "5.", "3600", "3600.001", "65535", "65536", "100", "101", "10001", "9" * 30, "9" * 5000,
    "\u0663", "\uff15", "true", "False", "yes", "OFF", "maybe", "auto", "ALWAYS", "debug", "loud",
    "Kokoro-82m", "kokoro-82M", "tts-1", "Minimax-Speech-02-HD", "qwen-3-tts-1.7b", "Qwen-X",
    "af_bella", "af bella", "x" * 64, "x" * 65,
    "12345678901234567", "1234567890123456", "18446744073709551615", "18446744073709551616",
    "123456789012345678,123456789012345679", "123456789012345678 abc", ", ,",
    "https://nano-gpt.com/api", "http://127.0.0.1:9/api", "http://[::1]:8080/x", "https://h:99999/",
    "https://h:0/", "https://[zz]/", "https://user:pw@h/", "https://@h/", "https://h/?q", "https://h/#f",
    "wss://gateway.discord.gg/", "ws://127.0.0.1:1/", "ftp://x", "https://", "https:///x", "https://a..b/",
    "https://\udcff/", "https://\u2603.com/", "https://" + "a" * 64 + ".com", "data/nanovoice.sqlite3", "/",
    "data/", "a\x00b", "a\nb", "tok\r\nen", "\x1b[31mred", "\u2028", "\u202e", "\ud800",
]
_arbitrary = st.text(st.characters(codec=None, exclude_categories=()), max_size=80)  # surrogates included
_ascii = st.text(st.characters(min_codepoint=0, max_codepoint=127), max_size=40)
_numbers = st.one_of(
    st.integers().map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.integers(min_value=0, max_value=10**22).map(str),
    st.tuples(st.integers(0, 20_000), st.integers(0, 10**8)).map(lambda t: f"{t[0]}.{t[1]}"),
)
_near = st.tuples(st.sampled_from(_SPECIAL), _ascii, st.sampled_from(["", " ", ",", "\n", "/", "x", "0", "é"])).map(
    lambda t: t[0] + t[2] + t[1])
values = st.one_of(st.sampled_from(_SPECIAL), _arbitrary, _ascii, _numbers, _near,
                   st.lists(st.sampled_from(_SPECIAL), max_size=4).map(", ".join))


def _url_ok(value: str, schemes: tuple[str, ...]) -> None:
    url = URL(value)
    assert url.scheme in schemes and url.raw_host, value
    assert url.user is None and url.password is None and not url.query_string and not url.fragment
    assert url.port is None or 1 <= url.port <= 65535
    # what the consumers do with it: NanoGPT paths appended, discord.py's Route.BASE + path, the gateway query
    assert URL(value + "/check-balance").raw_host == url.raw_host
    assert URL(value).with_query(v=10, encoding="json").raw_host == url.raw_host
    assert value.isprintable() and not any(ch.isspace() for ch in value)


def _snowflake_ok(value: int | None) -> None:
    assert value is None or (type(value) is int and SNOWFLAKE_MIN <= value <= SNOWFLAKE_MAX)


def _budget_ok(micros: int) -> None:
    assert type(micros) is int and (micros == 0 or BUDGET_MIN_MICROS <= micros <= BUDGET_MAX_MICROS)
    assert format_usd(micros).startswith("$")


def _cooldown_ok(seconds: float) -> None:
    assert isinstance(seconds, float) and math.isfinite(seconds) and 0 <= seconds <= 3600
    clock = Clock()
    cooldown = Cooldown(seconds, clock)
    assert cooldown.check("member") is None
    wait = cooldown.check("member")
    assert (wait is None) if seconds == 0 else (0 < wait <= seconds)
    if wait is not None:
        assert cooldown.message(wait)


def _secret_ok(value: Secret) -> None:
    assert isinstance(value, Secret) and value and all("!" <= ch <= "~" for ch in value)
    f"Bot {value}".encode("latin-1")  # an HTTP header value


def _path_ok(path: Path) -> None:
    text = os.fspath(path)
    assert text and "\x00" not in text and not path.is_dir()
    os.fsencode(text)  # what sqlite3 / the file system is handed


def _postgres_url_ok(value: str) -> None:
    url = URL(value)
    assert url.scheme in ("postgresql", "postgres") and (url.raw_host or "host" in url.query), value
    assert url.port is None or 1 <= url.port <= 65535
    assert value.isprintable() and not any(ch.isspace() for ch in value)


def _model_ok(value: str, family: str = "") -> None:
    assert value in TTS_MODELS and value.startswith(family)


def _voice_ok(value: str) -> None:
    assert 1 <= len(value) <= 64
    assert not any(ch.isspace() or unicodedata.category(ch).startswith("C") for ch in value)
    json.dumps({"voice": value}, ensure_ascii=False).encode()  # the TTS request body


def _secret_messages(name: str) -> set[str]:
    messages = set()
    for sample in ("", "two words", "x" * 5000):
        with pytest.raises(ConfigError) as info:
            load_config({**BASE, name: sample})
        messages.add(re.sub(r"[0-9,]+ characters long", "N characters long", str(info.value)))
    return messages


CHECKS: dict[str, Callable[[Config], None]] = {
    "DISCORD_TOKEN": lambda c: _secret_ok(c.discord_token),
    "NANOGPT_API_KEY": lambda c: _secret_ok(c.nanogpt_api_key),
    "NANOGPT_BASE_URL": lambda c: _url_ok(c.nanogpt_base_url, ("http", "https")),
    "DATABASE_PATH": lambda c: _path_ok(c.database_path),
    "DATABASE_URL": lambda c: c.database_url is None or _postgres_url_ok(c.database_url),
    "DISCORD_API_BASE": lambda c: _url_ok(c.discord_api_base, ("http", "https")),
    "DISCORD_GATEWAY_URL": lambda c: _url_ok(c.discord_gateway_url, ("ws", "wss")),
    "DEV_GUILD_ID": lambda c: _snowflake_ok(c.dev_guild_id),
    "SYNC_COMMANDS": lambda c: c.sync_commands in {"auto", "off", "always"},
    "DEFAULT_TTS_MODEL": lambda c: _model_ok(c.default_tts_model),
    "DEFAULT_TTS_VOICE": lambda c: _voice_ok(c.default_tts_voice),
    "MINIMAX_TTS_MODEL": lambda c: _model_ok(c.minimax_tts_model, "Minimax-"),
    "QWEN_TTS_MODEL": lambda c: _model_ok(c.qwen_tts_model, "Qwen-"),
    "CLONE_CONFIRM": lambda c: c.clone_confirm in (True, False),
    "CLONE_DAILY_LIMIT": lambda c: type(c.clone_daily_limit) is int and 0 <= c.clone_daily_limit <= 100,
    "SAY_MAX_CHARS": lambda c: type(c.say_max_chars) is int and 1 <= c.say_max_chars <= 10_000,
    "SAY_COOLDOWN_SECONDS": lambda c: _cooldown_ok(c.say_cooldown_seconds),
    "VOICE_IDLE_SECONDS": lambda c: type(c.voice_idle_seconds) is int and 10 <= c.voice_idle_seconds <= 86_400,
    "GUILD_DAILY_BUDGET_USD": lambda c: _budget_ok(c.guild_daily_budget_micros),
    "PUBLIC_BASE_URL": lambda c: c.public_base_url is None or _url_ok(c.public_base_url, ("http", "https")),
    "HTTP_PORT": lambda c: type(c.http_port) is int and 1 <= c.http_port <= 65535,
    "EMBEDDING_CHANNEL_ID": lambda c: _snowflake_ok(c.embedding_channel_id),
    "LOG_LEVEL": lambda c: isinstance(logging.getLevelName(c.log_level), int),
    "ALLOWED_GUILD_IDS": lambda c: c.allowed_guild_ids is None or (
        isinstance(c.allowed_guild_ids, frozenset) and c.allowed_guild_ids
        and all(_snowflake_ok(i) is None for i in c.allowed_guild_ids)),
    "ALLOWED_TTS_MODELS": lambda c: c.allowed_tts_models is None or (
        isinstance(c.allowed_tts_models, tuple) and c.allowed_tts_models
        and len(set(c.allowed_tts_models)) == len(c.allowed_tts_models)
        and all(m in TTS_MODELS for m in c.allowed_tts_models) and c.default_tts_model in c.allowed_tts_models),
    "BOT_DAILY_BUDGET_USD": lambda c: _budget_ok(c.bot_daily_budget_micros),
    "SHARD_COUNT": lambda c: c.shard_count is None or (type(c.shard_count) is int and 1 <= c.shard_count <= 1024),
    "SHARD_IDS": lambda c: c.shard_ids is None or (
        c.shard_count is not None and c.shard_ids == tuple(sorted(set(c.shard_ids)))
        and all(0 <= i < c.shard_count for i in c.shard_ids)),
}


def test_every_config_field_has_a_property_check():
    assert len(CHECKS) == len(Config.__slots__)  # a new variable needs its range here (and in README)


@pytest.mark.parametrize("name", sorted(CHECKS))
@settings(max_examples=150, deadline=None)
@given(value=values)
@example(value="1e999")
@example(value="nan")
@example(value="\n")
def test_any_text_is_refused_in_one_line_or_usable(name, value):
    try:
        config = load_config({**BASE, name: value})
    except ConfigError as exc:
        message = str(exc)
        assert name in message, message
        assert message.isprintable(), repr(message)  # one line: no line break, control or escape character
        if name in BASE:  # never any part of the value: the message is one of the fixed sentences
            assert re.sub(r"[0-9,]+ characters long", "N characters long", message) in _secret_messages(name)
        return
    if CHECKS[name](config) is False:
        pytest.fail(f"{name}={value!r} gave an unusable {config!r}")


def test_readme_and_env_example_document_every_variable():
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    table = readme[readme.index("## Configuration"):readme.index("## Performance")]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    example = (root / ".env.example").read_text()
    for name in CHECKS:
        [row] = [r for r in rows if f"`{name}`" in r.split("|")[1]]
        assert len(row.split("|")) == 6, f"README's row for {name} needs name, default, allowed, meaning"
        assert f"\n{name}=" in example or f"\n#{name}=" in example, f".env.example lacks {name}"
    for model in TTS_MODELS:
        assert f"`{model}`" in table
