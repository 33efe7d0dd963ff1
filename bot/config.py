"""Configuration: one frozen, typed object built once from the environment (and ``.env``).

Every name and default here is fixed by SPEC §2. ``load_config`` raises :class:`ConfigError` with one
line naming the offending variable; ``bot.__main__`` turns that into exit code 2.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal, InvalidOperation
from pathlib import Path

from yarl import URL

DISCORD_GATEWAY_DEFAULT = "wss://gateway.discord.gg/"

# The documented NanoGPT TTS model enum (docs/nanogpt-api.md), in the spelling NanoGPT uses.
TTS_MODELS: tuple[str, ...] = (
    "Kokoro-82m",
    "Elevenlabs-Turbo-V2.5",
    "tts-1",
    "tts-1-hd",
    "gpt-4o-mini-tts",
    "Minimax-Speech-02-HD",
    "Minimax-Speech-2.6-HD",
    "Minimax-Speech-2.6-Turbo",
    "Minimax-Speech-2.8-HD",
    "Minimax-Speech-2.8-Turbo",
    "Qwen-3-TTS-1.7B",
)


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message is one line naming it."""


class Secret(str):
    """A string whose repr never shows its value (tokens and keys)."""

    def __repr__(self) -> str:
        return "Secret('***')"


@dataclass(frozen=True, slots=True)
class Config:
    discord_token: Secret = field(repr=False)
    nanogpt_api_key: Secret = field(repr=False)
    nanogpt_base_url: str = "https://nano-gpt.com/api"
    database_path: Path = Path("data/nanovoice.sqlite3")
    discord_api_base: str = "https://discord.com/api/v10"
    discord_gateway_url: str = DISCORD_GATEWAY_DEFAULT
    dev_guild_id: int | None = None
    sync_commands: str = "auto"
    default_tts_model: str = "Kokoro-82m"
    default_tts_voice: str = "af_bella"
    minimax_tts_model: str = "Minimax-Speech-02-HD"
    qwen_tts_model: str = "Qwen-3-TTS-1.7B"
    clone_confirm: bool = True
    clone_daily_limit: int = 3
    say_max_chars: int = 1000
    say_cooldown_seconds: float = 3.0
    guild_daily_budget_micros: int = 5_000_000
    public_base_url: str | None = None
    http_port: int = 8080
    embedding_channel_id: int | None = None
    log_level: str = "INFO"
    # Operator controls (issue 9). None / 0 mean "no restriction" as documented in README.
    allowed_guild_ids: frozenset[int] | None = None  # ALLOWED_GUILD_IDS; None: any server
    allowed_tts_models: tuple[str, ...] | None = None  # ALLOWED_TTS_MODELS; None: the documented set
    bot_daily_budget_micros: int = 0  # BOT_DAILY_BUDGET_USD, all servers together; 0: unlimited

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values that must never appear in a log line or a message."""
        return (str(self.discord_token), str(self.nanogpt_api_key))

    def __repr__(self) -> str:  # belt and braces: dataclass repr already hides the secrets
        shown = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.repr
        )
        return f"Config({shown})"


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_LOG_LEVELS = {"CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"}


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _required(env: Mapping[str, str], name: str) -> Secret:
    value = _get(env, name)
    if value is None:
        raise ConfigError(f"{name} is required but missing or empty")
    return Secret(value)


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _get(env, name)
    if raw is None:
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false, not {raw!r}")


def _int(env: Mapping[str, str], name: str, default: int | None, *, minimum: int = 0,
         maximum: int | None = None) -> int | None:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {raw!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        raise ConfigError(f"{name} must be at least {minimum}{upper}, not {value}")
    return value


def _snowflake(env: Mapping[str, str], name: str) -> int | None:
    value = _int(env, name, None, minimum=1)
    return value


def _url(env: Mapping[str, str], name: str, default: str | None, schemes: tuple[str, ...]) -> str | None:
    raw = _get(env, name)
    if raw is None:
        return default
    url = URL(raw)
    if url.scheme not in schemes or not url.host:
        raise ConfigError(f"{name} must be a {'/'.join(schemes)} URL, not {raw!r}")
    return raw.rstrip("/")


def _id_set(env: Mapping[str, str], name: str) -> frozenset[int] | None:
    raw = _get(env, name)
    if raw is None:
        return None
    ids: set[int] = set()
    for part in raw.replace(",", " ").split():
        if not part.isdigit() or int(part) < 1:
            raise ConfigError(f"{name} must be server ids separated by commas, not {part!r}")
        ids.add(int(part))
    return frozenset(ids) or None


def _name_list(env: Mapping[str, str], name: str) -> tuple[str, ...] | None:
    raw = _get(env, name)
    if raw is None:
        return None
    names = tuple(dict.fromkeys(p.strip() for p in raw.split(",") if p.strip()))
    return names or None


def _money(env: Mapping[str, str], name: str, default: str) -> int:
    raw = _get(env, name) or default
    try:
        return usd_to_micros(raw)
    except (InvalidOperation, ValueError):
        raise ConfigError(f"{name} must be a dollar amount such as 5.00, not {raw!r}") from None


def usd_to_micros(text: str) -> int:
    """Parse a dollar amount exactly (no float) into integer micro-dollars."""
    amount = Decimal(text)
    if not amount.is_finite() or amount < 0:
        raise InvalidOperation(text)
    return int((amount * 1_000_000).to_integral_value())


def load_config(env: Mapping[str, str] | None = None, *, dotenv: bool = True) -> Config:
    """Build the configuration from ``env`` (default: the process environment plus ``.env``)."""
    if env is None:
        if dotenv:
            from dotenv import load_dotenv

            load_dotenv(Path.cwd() / ".env", override=False)
        env = os.environ

    sync = (_get(env, "SYNC_COMMANDS") or "auto").lower()
    if sync not in {"auto", "off", "always"}:
        raise ConfigError(f"SYNC_COMMANDS must be auto, off or always, not {sync!r}")

    log_level = (_get(env, "LOG_LEVEL") or "INFO").upper()
    if log_level not in _LOG_LEVELS:
        raise ConfigError(f"LOG_LEVEL must be one of {', '.join(sorted(_LOG_LEVELS))}, not {log_level!r}")

    raw_budget = _get(env, "GUILD_DAILY_BUDGET_USD") or "5.00"
    try:
        budget = usd_to_micros(raw_budget)
    except (InvalidOperation, ValueError):
        raise ConfigError(f"GUILD_DAILY_BUDGET_USD must be a dollar amount such as 5.00, not {raw_budget!r}") from None

    raw_cooldown = _get(env, "SAY_COOLDOWN_SECONDS") or "3"
    try:
        cooldown = float(Decimal(raw_cooldown))
        if cooldown < 0:
            raise ValueError
    except (InvalidOperation, ValueError):
        raise ConfigError(f"SAY_COOLDOWN_SECONDS must be a number of seconds, not {raw_cooldown!r}") from None

    return Config(
        discord_token=_required(env, "DISCORD_TOKEN"),
        nanogpt_api_key=_required(env, "NANOGPT_API_KEY"),
        nanogpt_base_url=_url(env, "NANOGPT_BASE_URL", "https://nano-gpt.com/api", ("http", "https")),
        database_path=Path(_get(env, "DATABASE_PATH") or "data/nanovoice.sqlite3"),
        discord_api_base=_url(env, "DISCORD_API_BASE", "https://discord.com/api/v10", ("http", "https")),
        discord_gateway_url=_url(env, "DISCORD_GATEWAY_URL", DISCORD_GATEWAY_DEFAULT, ("ws", "wss"))
        or DISCORD_GATEWAY_DEFAULT,
        dev_guild_id=_snowflake(env, "DEV_GUILD_ID"),
        sync_commands=sync,
        default_tts_model=_get(env, "DEFAULT_TTS_MODEL") or "Kokoro-82m",
        default_tts_voice=_get(env, "DEFAULT_TTS_VOICE") or "af_bella",
        minimax_tts_model=_get(env, "MINIMAX_TTS_MODEL") or "Minimax-Speech-02-HD",
        qwen_tts_model=_get(env, "QWEN_TTS_MODEL") or "Qwen-3-TTS-1.7B",
        clone_confirm=_bool(env, "CLONE_CONFIRM", True),
        clone_daily_limit=_int(env, "CLONE_DAILY_LIMIT", 3),
        say_max_chars=_int(env, "SAY_MAX_CHARS", 1000, minimum=1, maximum=10_000),
        say_cooldown_seconds=cooldown,
        guild_daily_budget_micros=budget,
        public_base_url=_url(env, "PUBLIC_BASE_URL", None, ("http", "https")),
        http_port=_int(env, "HTTP_PORT", 8080, minimum=1, maximum=65535),
        embedding_channel_id=_snowflake(env, "EMBEDDING_CHANNEL_ID"),
        log_level=log_level,
        allowed_guild_ids=_id_set(env, "ALLOWED_GUILD_IDS"),
        allowed_tts_models=_name_list(env, "ALLOWED_TTS_MODELS"),
        bot_daily_budget_micros=_money(env, "BOT_DAILY_BUDGET_USD", "0"),
    )
