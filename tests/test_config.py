"""Configuration: SPEC §2 names and defaults, exit code 2 with one line, secrets never shown."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import ConfigError, load_config

BASE = {"DISCORD_TOKEN": "discord-token-abcdef", "NANOGPT_API_KEY": "sk-nano-00000000-secret"}


def test_defaults_match_the_spec():
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
        "DEV_GUILD_ID": "123",
        "SYNC_COMMANDS": "off",
        "DEFAULT_TTS_MODEL": "tts-1",
        "DEFAULT_TTS_VOICE": "alloy",
        "MINIMAX_TTS_MODEL": "Minimax-Speech-2.8-HD",
        "QWEN_TTS_MODEL": "Qwen-X",
        "CLONE_CONFIRM": "false",
        "CLONE_DAILY_LIMIT": "0",
        "SAY_MAX_CHARS": "200",
        "SAY_COOLDOWN_SECONDS": "1.5",
        "GUILD_DAILY_BUDGET_USD": "0.10",
        "PUBLIC_BASE_URL": "https://bot.example.org",
        "HTTP_PORT": "9000",
        "EMBEDDING_CHANNEL_ID": "456",
        "LOG_LEVEL": "debug",
    })
    assert config.nanogpt_base_url == "http://127.0.0.1:9/api"
    assert str(config.database_path) == "/tmp/x.sqlite3"
    assert config.discord_gateway_url == "ws://127.0.0.1:9/gateway"
    assert config.dev_guild_id == 123 and config.embedding_channel_id == 456
    assert config.sync_commands == "off" and config.clone_confirm is False
    assert config.clone_daily_limit == 0 and config.say_max_chars == 200
    assert config.say_cooldown_seconds == 1.5
    assert config.guild_daily_budget_micros == 100_000
    assert config.public_base_url == "https://bot.example.org" and config.http_port == 9000
    assert config.log_level == "DEBUG"


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
