"""Configuration: the fixed variable names and their defaults, exit code 2 with one line, secrets never shown."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import ConfigError, load_config

BASE = {"DISCORD_TOKEN": "discord-token-abcdef", "NANOGPT_API_KEY": "sk-nano-00000000-secret"}


def test_defaults_are_the_documented_ones():
    config = load_config(BASE)
    assert config.nanogpt_base_url == "https://nano-gpt.com/api"
    assert config.database_path == Path("data/nanovoice.sqlite3")
    assert config.discord_api_base == "https://discord.com/api/v10"
    assert config.dev_guild_id is None
    assert config.sync_commands == "auto"
    assert (config.default_tts_model, config.default_tts_voice) == ("Kokoro-82m", "af_bella")
    assert config.minimax_tts_model == "Minimax-Speech-02-HD"
    assert config.qwen_tts_model == "Qwen-3-TTS-1.7B"
    assert config.clone_confirm is True
    assert config.clone_daily_limit == 3
    assert config.say_max_chars == 1000
    assert config.say_cooldown_seconds == 3
    assert config.guild_daily_budget_micros == 5_000_000
    assert config.public_base_url is None
    assert config.http_port == 8080
    assert config.embedding_channel_id is None
    assert config.log_level == "INFO"


def test_every_variable_is_read():
    config = load_config({
        **BASE,
        "NANOGPT_BASE_URL": "http://127.0.0.1:9/api/",
        "DATABASE_PATH": "/tmp/x.sqlite3",
        "DISCORD_API_BASE": "http://127.0.0.1:9/api/v10",
        "DISCORD_GATEWAY_URL": "ws://127.0.0.1:9/gateway",
        "DEV_GUILD_ID": "1234567890123456789",
        "SYNC_COMMANDS": "off",
        "DEFAULT_TTS_MODEL": "tts-1",
        "DEFAULT_TTS_VOICE": "alloy",
        "MINIMAX_TTS_MODEL": "Minimax-Speech-2.8-HD",
        "QWEN_TTS_MODEL": "qwen-3-tts-1.7b",
        "CLONE_CONFIRM": "false",
        "CLONE_DAILY_LIMIT": "0",
        "SAY_MAX_CHARS": "200",
        "SAY_COOLDOWN_SECONDS": "1.5",
        "GUILD_DAILY_BUDGET_USD": "0.10",
        "PUBLIC_BASE_URL": "https://bot.example.org",
        "HTTP_PORT": "9000",
        "EMBEDDING_CHANNEL_ID": "98765432109876543",
        "LOG_LEVEL": "debug",
        "ALLOWED_GUILD_IDS": "1234567890123456789, 18446744073709551615 1234567890123456789",
        "ALLOWED_TTS_MODELS": "TTS-1,kokoro-82m tts-1",
        "BOT_DAILY_BUDGET_USD": "20.5",
    })
    assert config.nanogpt_base_url == "http://127.0.0.1:9/api"
    assert str(config.database_path) == "/tmp/x.sqlite3"
    assert config.discord_gateway_url == "ws://127.0.0.1:9/gateway"
    assert config.dev_guild_id == 1234567890123456789 and config.embedding_channel_id == 98765432109876543
    assert (config.default_tts_model, config.default_tts_voice) == ("tts-1", "alloy")
    assert config.minimax_tts_model == "Minimax-Speech-2.8-HD"
    assert config.qwen_tts_model == "Qwen-3-TTS-1.7B"  # NanoGPT's spelling
    assert config.sync_commands == "off" and config.clone_confirm is False
    assert config.clone_daily_limit == 0 and config.say_max_chars == 200
    assert config.say_cooldown_seconds == 1.5
    assert config.guild_daily_budget_micros == 100_000
    assert config.public_base_url == "https://bot.example.org" and config.http_port == 9000
    assert config.log_level == "DEBUG"
    assert config.allowed_guild_ids == frozenset({1234567890123456789, 2**64 - 1})
    assert config.allowed_tts_models == ("tts-1", "Kokoro-82m")
    assert config.bot_daily_budget_micros == 20_500_000


def test_new_operator_controls_default_to_no_restriction():
    config = load_config(BASE)
    assert config.allowed_guild_ids is None and config.allowed_tts_models is None
    assert config.bot_daily_budget_micros == 0


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({}, "DISCORD_TOKEN"),
        ({"DISCORD_TOKEN": "x"}, "NANOGPT_API_KEY"),
        ({**BASE, "DISCORD_TOKEN": "   "}, "DISCORD_TOKEN"),
        ({**BASE, "SYNC_COMMANDS": "sometimes"}, "SYNC_COMMANDS"),
        ({**BASE, "CLONE_DAILY_LIMIT": "-1"}, "CLONE_DAILY_LIMIT"),
        ({**BASE, "CLONE_CONFIRM": "maybe"}, "CLONE_CONFIRM"),
        ({**BASE, "GUILD_DAILY_BUDGET_USD": "five"}, "GUILD_DAILY_BUDGET_USD"),
        ({**BASE, "HTTP_PORT": "70000"}, "HTTP_PORT"),
        ({**BASE, "DEV_GUILD_ID": "abc"}, "DEV_GUILD_ID"),
        ({**BASE, "NANOGPT_BASE_URL": "ftp://x"}, "NANOGPT_BASE_URL"),
        ({**BASE, "DISCORD_GATEWAY_URL": "https://x"}, "DISCORD_GATEWAY_URL"),
        ({**BASE, "LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
    ],
)
def test_invalid_values_name_the_variable(env, named):
    with pytest.raises(ConfigError) as info:
        load_config(env)
    message = str(info.value)
    assert named in message and "\n" not in message


# Each of these passed start-up before and broke (or silently changed meaning) later.
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GUILD_DAILY_BUDGET_USD", "1e999"),  # was accepted, then "something went wrong" on the first reservation
        ("GUILD_DAILY_BUDGET_USD", "0.0000001"),  # was rounded to 0 = unlimited
        ("GUILD_DAILY_BUDGET_USD", "0.0004"),  # below the smallest budget: never "unlimited"
        ("GUILD_DAILY_BUDGET_USD", "10000.01"),
        ("GUILD_DAILY_BUDGET_USD", "-0"),
        ("GUILD_DAILY_BUDGET_USD", "+5"),
        ("GUILD_DAILY_BUDGET_USD", "$5"),
        ("GUILD_DAILY_BUDGET_USD", "NaN"),
        ("GUILD_DAILY_BUDGET_USD", "5.0000001"),
        ("BOT_DAILY_BUDGET_USD", "Infinity"),
        ("BOT_DAILY_BUDGET_USD", "1E+2"),
        ("BOT_DAILY_BUDGET_USD", "five"),
        ("SAY_COOLDOWN_SECONDS", "nan"),  # was: cooldown off
        ("SAY_COOLDOWN_SECONDS", "inf"),  # was: a crash on the next /say
        ("SAY_COOLDOWN_SECONDS", "-1"),
        ("SAY_COOLDOWN_SECONDS", "3601"),
        ("SAY_COOLDOWN_SECONDS", "1e1"),
        ("CLONE_DAILY_LIMIT", "101"),  # was unbounded
        ("CLONE_DAILY_LIMIT", "9" * 5000),
        ("CLONE_DAILY_LIMIT", "\u0663"),  # an Arabic-Indic 3: int() accepts it
        ("CLONE_DAILY_LIMIT", "1_0"),
        ("SAY_MAX_CHARS", "0"),
        ("SAY_MAX_CHARS", "10001"),
        ("VOICE_IDLE_SECONDS", "9"),
        ("VOICE_IDLE_SECONDS", "86401"),
        ("VOICE_IDLE_SECONDS", "2.5"),
        ("HTTP_PORT", "0"),
        ("HTTP_PORT", "65536"),
        ("DEV_GUILD_ID", "123"),  # not a Discord id
        ("DEV_GUILD_ID", "18446744073709551616"),  # 2**64: beyond 64 bits
        ("EMBEDDING_CHANNEL_ID", "-123456789012345678"),
        ("ALLOWED_GUILD_IDS", "123456789012345678,abc"),
        ("ALLOWED_GUILD_IDS", ", ,"),
        ("ALLOWED_TTS_MODELS", "Kokoro-82m,eleven"),
        ("ALLOWED_TTS_MODELS", ","),
        ("ALLOWED_TTS_MODELS", "tts-1"),  # DEFAULT_TTS_MODEL (Kokoro-82m) must be allowed
        ("DEFAULT_TTS_MODEL", "Kokoro-82"),
        ("MINIMAX_TTS_MODEL", "Kokoro-82m"),  # a MiniMax voice id means nothing to another model
        ("QWEN_TTS_MODEL", "Qwen-X"),
        ("DEFAULT_TTS_VOICE", "af bella"),
        ("DEFAULT_TTS_VOICE", "x" * 65),
        ("DEFAULT_TTS_VOICE", "af_\u200bbella"),
        ("NANOGPT_BASE_URL", "https://nano-gpt.com:99999/api"),  # yarl raised a bare ValueError
        ("NANOGPT_BASE_URL", "https://[::zz]/api"),
        ("NANOGPT_BASE_URL", "https://user:secret@nano-gpt.com/api"),
        ("NANOGPT_BASE_URL", "https://nano-gpt.com/api?x=1"),
        ("NANOGPT_BASE_URL", "https://nano gpt.com/api"),
        ("NANOGPT_BASE_URL", "https://\udcff.com/api"),  # an undecodable byte in the environment
        ("DISCORD_API_BASE", "discord.com/api/v10"),
        ("DISCORD_GATEWAY_URL", "wss://gateway..discord.gg"),
        ("PUBLIC_BASE_URL", "https://:8080"),
        ("DATABASE_PATH", "data/\x00db"),
        ("DATABASE_PATH", "data/"),
        ("SYNC_COMMANDS", "sometimes"),
        ("LOG_LEVEL", "LOUD\n\x1b[31m"),
        ("CLONE_CONFIRM", "maybe"),
    ],
)
def test_out_of_range_values_are_one_line_naming_the_variable(name, value):
    with pytest.raises(ConfigError) as info:
        load_config({**BASE, name: value})
    message = str(info.value)
    assert name in message
    assert message.isprintable(), message  # one line: no line break, no control character, no escape sequence


@pytest.mark.parametrize(
    ("name", "value", "field", "expected"),
    [
        ("GUILD_DAILY_BUDGET_USD", "0", "guild_daily_budget_micros", 0),
        ("GUILD_DAILY_BUDGET_USD", "0.001", "guild_daily_budget_micros", 1_000),
        ("GUILD_DAILY_BUDGET_USD", "10000", "guild_daily_budget_micros", 10_000_000_000),
        ("GUILD_DAILY_BUDGET_USD", "2.500001", "guild_daily_budget_micros", 2_500_001),
        ("GUILD_DAILY_BUDGET_USD", ".5", "guild_daily_budget_micros", 500_000),
        ("BOT_DAILY_BUDGET_USD", "0.00", "bot_daily_budget_micros", 0),
        ("BOT_DAILY_BUDGET_USD", "100", "bot_daily_budget_micros", 100_000_000),
        ("SAY_COOLDOWN_SECONDS", "0", "say_cooldown_seconds", 0.0),
        ("SAY_COOLDOWN_SECONDS", "3600", "say_cooldown_seconds", 3600.0),
        ("SAY_COOLDOWN_SECONDS", "0.25", "say_cooldown_seconds", 0.25),
        ("CLONE_DAILY_LIMIT", "100", "clone_daily_limit", 100),
        ("CLONE_DAILY_LIMIT", "007", "clone_daily_limit", 7),
        ("SAY_MAX_CHARS", "10000", "say_max_chars", 10_000),
        ("VOICE_IDLE_SECONDS", "10", "voice_idle_seconds", 10),
        ("VOICE_IDLE_SECONDS", "86400", "voice_idle_seconds", 86_400),
        ("HTTP_PORT", "65535", "http_port", 65535),
        ("DEV_GUILD_ID", "10000000000000000", "dev_guild_id", 10**16),
        ("DEV_GUILD_ID", "18446744073709551615", "dev_guild_id", 2**64 - 1),
        ("ALLOWED_TTS_MODELS", "kokoro-82m", "allowed_tts_models", ("Kokoro-82m",)),
        ("DEFAULT_TTS_MODEL", "ELEVENLABS-TURBO-V2.5", "default_tts_model", "Elevenlabs-Turbo-V2.5"),
        ("DEFAULT_TTS_VOICE", "Rachel", "default_tts_voice", "Rachel"),
        ("NANOGPT_BASE_URL", "http://[::1]:8080/api/", "nanogpt_base_url", "http://[::1]:8080/api"),
        ("DISCORD_API_BASE", "http://rest-proxy:8080/api/v10", "discord_api_base", "http://rest-proxy:8080/api/v10"),
        ("CLONE_CONFIRM", "Off", "clone_confirm", False),
        ("CLONE_CONFIRM", "YES", "clone_confirm", True),
        ("SYNC_COMMANDS", "ALWAYS", "sync_commands", "always"),
    ],
)
def test_values_at_the_documented_bounds_are_accepted(name, value, field, expected):
    assert getattr(load_config({**BASE, name: value}), field) == expected


def test_database_path_that_is_a_directory_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="DATABASE_PATH must be the path of the database file, not a directory"):
        load_config({**BASE, "DATABASE_PATH": str(tmp_path)})
    assert load_config({**BASE, "DATABASE_PATH": str(tmp_path / "db.sqlite3")}).database_path == tmp_path / "db.sqlite3"


@pytest.mark.parametrize("name", ["DISCORD_TOKEN", "NANOGPT_API_KEY"])
@pytest.mark.parametrize("pasted", ["{secret}\n", "Bot {secret}", "{secret}\nmore", "{secret}\u00e9", "{secret}\x00"])
def test_a_mangled_secret_is_refused_without_showing_it(name, pasted):
    secret = "s3cr3t-value-0123456789"
    value = pasted.format(secret=secret)
    if value.strip() == secret:  # a trailing line break is only whitespace around the value: stripped, fine
        assert str(getattr(load_config({**BASE, name: value}), name.lower())) == secret
        return
    with pytest.raises(ConfigError) as info:
        load_config({**BASE, name: value})
    message = str(info.value)
    assert name in message and message.isprintable()
    assert "s3cr3t" not in message and "0123456789" not in message


def test_secrets_never_in_repr():
    config = load_config(BASE)
    text = repr(config) + str(config)
    for secret in BASE.values():
        assert secret not in text


def test_dotenv_file_is_read(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("DISCORD_TOKEN=from-dotenv\nNANOGPT_API_KEY=sk-nano-dotenv\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    monkeypatch.delenv("NANOGPT_API_KEY", raising=False)
    config = load_config()
    assert str(config.discord_token) == "from-dotenv"


def _run_cli(args, tmp_path, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k not in {"DISCORD_TOKEN", "NANOGPT_API_KEY"}}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "bot", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


def test_python_m_bot_without_environment_exits_2_naming_the_token(tmp_path):
    result = _run_cli([], tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "DISCORD_TOKEN" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_database_url_selects_postgresql_and_is_never_shown():
    config = load_config({**BASE, "DATABASE_URL": "postgresql://nanovoice:s3cret-pw@db.internal:5432/nanovoice"})
    assert config.database_url == "postgresql://nanovoice:s3cret-pw@db.internal:5432/nanovoice"
    assert config.database_label == "postgresql://nanovoice:***@db.internal:5432/nanovoice"
    assert "s3cret-pw" in config.secrets and "s3cret-pw" not in repr(config)
    assert load_config(BASE).database_url is None


def test_database_url_and_database_path_together_are_refused():
    with pytest.raises(ConfigError) as info:
        load_config({**BASE, "DATABASE_URL": "postgresql://db/nanovoice", "DATABASE_PATH": "data/x.sqlite3"})
    assert str(info.value) == ("DATABASE_URL and DATABASE_PATH are both set: set DATABASE_URL for PostgreSQL or "
                               "DATABASE_PATH for an SQLite file, not both")


@pytest.mark.parametrize("value", ["mysql://db/x", "postgresql://", "postgresql://db:99999/x",
                                   "postgresql://u:pw@db/a/b", "postgresql://db/x y"])
def test_a_bad_database_url_is_one_line_without_its_value(value):
    with pytest.raises(ConfigError) as info:
        load_config({**BASE, "DATABASE_URL": value})
    message = str(info.value)
    assert message.startswith("DATABASE_URL must be a PostgreSQL URL") and "pw" not in message
    assert value not in message.replace("postgresql://nanovoice:PASSWORD@localhost", "")  # only the example


@pytest.mark.parametrize(("env", "count", "ids"), [
    ({}, None, None),
    ({"SHARD_COUNT": "1"}, 1, None),
    ({"SHARD_COUNT": "1024"}, 1024, None),
    ({"SHARD_COUNT": "4", "SHARD_IDS": "0-3"}, 4, (0, 1, 2, 3)),
    ({"SHARD_COUNT": "2", "SHARD_IDS": "1, 0"}, 2, (0, 1)),
    # A subset of the shards: the other processes share the PostgreSQL database.
    ({"SHARD_COUNT": "4", "SHARD_IDS": "0-1,3", "DATABASE_URL": "postgresql://db/nanovoice"}, 4, (0, 1, 3)),
])
def test_shard_count_and_shard_ids(env, count, ids):
    config = load_config({**BASE, **env})
    assert (config.shard_count, config.shard_ids) == (count, ids)


@pytest.mark.parametrize(("env", "message"), [
    ({"SHARD_IDS": "0,1"}, "SHARD_IDS needs SHARD_COUNT: set SHARD_COUNT to the total number of shards, then "
                           "SHARD_IDS to the ones this process runs"),
    ({"SHARD_COUNT": "0"}, "SHARD_COUNT must be a whole number from 1 to 1,024, not '0'"),
    ({"SHARD_COUNT": "1025"}, "SHARD_COUNT must be a whole number from 1 to 1,024, not '1025'"),
    ({"SHARD_COUNT": "2", "SHARD_IDS": "0,2"},
     "SHARD_IDS must list shard ids from 0 to 1 like 0,1 or 0-3: shard 2 does not exist with SHARD_COUNT=2"),
    ({"SHARD_COUNT": "4", "SHARD_IDS": "0-2,1"},
     "SHARD_IDS must list shard ids from 0 to 3 like 0,1 or 0-3, each once; listed more than once: 1"),
    ({"SHARD_COUNT": "4", "SHARD_IDS": "3-1"},
     "SHARD_IDS must list shard ids from 0 to 3 like 0,1 or 0-3 (a range goes from low to high), not '3-1'"),
    ({"SHARD_COUNT": "4", "SHARD_IDS": "one"}, "SHARD_IDS must list shard ids from 0 to 3 like 0,1 or 0-3, not 'one'"),
    # SQLite: another process would run the other shards on the same file.
    ({"SHARD_COUNT": "2", "SHARD_IDS": "0"},
     "SHARD_IDS 0 leaves shards of SHARD_COUNT=2 to another process, but the SQLite database allows only one "
     "process: run all shards in this process (unset SHARD_IDS), or share a PostgreSQL database (DATABASE_URL)"),
])
def test_bad_shard_settings_are_refused_in_one_line(env, message):
    with pytest.raises(ConfigError) as info:
        load_config({**BASE, **env})
    assert str(info.value) == message


def test_shard_ids_without_shard_count_exits_2_in_one_line(tmp_path):
    result = _run_cli([], tmp_path, {**BASE, "SHARD_IDS": "0-1"})
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["nanovoice: configuration error: SHARD_IDS needs SHARD_COUNT: set SHARD_COUNT to the total "
                     "number of shards, then SHARD_IDS to the ones this process runs"]
    assert "Traceback" not in result.stderr + result.stdout
