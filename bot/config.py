"""Configuration: one frozen, typed object built once from the environment (and ``.env``).

Every name and default here is documented in README's configuration table (and docs/operating.md),
which operators' ``.env`` files follow, so none is ever renamed. Every variable has a documented range
or format there, checked completely here: ``load_config`` raises :class:`ConfigError`
with one printable line naming the offending variable and what it accepts (a secret's value is never
shown); ``bot.__main__`` turns that into exit code 2. Nothing out of range gets past start-up.
"""

from __future__ import annotations

import ipaddress
import os
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal
from pathlib import Path
from typing import overload

from yarl import URL

from bot.text import format_usd

DISCORD_GATEWAY_DEFAULT = "wss://gateway.discord.gg/"

# The TTS models NanoGPT documents for POST /tts (its model enum), in the spelling NanoGPT uses.
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
    #: DATABASE_URL: a PostgreSQL database shared by several processes instead of the SQLite file; it may
    #: hold a password, so it is a secret (never shown, never logged).
    database_url: Secret | None = field(default=None, repr=False)
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
    voice_idle_seconds: int = 300
    guild_daily_budget_micros: int = 5_000_000
    public_base_url: str | None = None
    http_port: int = 8080
    embedding_channel_id: int | None = None
    log_level: str = "INFO"
    # Operator controls. None / 0 mean "no restriction" as documented in README.
    allowed_guild_ids: frozenset[int] | None = None  # ALLOWED_GUILD_IDS; None: any server
    allowed_tts_models: tuple[str, ...] | None = None  # ALLOWED_TTS_MODELS; None: the documented set
    bot_daily_budget_micros: int = 0  # BOT_DAILY_BUDGET_USD, all servers together; 0: unlimited
    #: SHARD_COUNT: run as discord.py's AutoShardedBot over that many gateway shards; None: one plain Bot.
    shard_count: int | None = None
    #: SHARD_IDS: the shards this process runs (sorted); None: all of them (needs SHARD_COUNT).
    shard_ids: tuple[int, ...] | None = None

    def guild_allowed(self, guild_id: int) -> bool:
        """Whether the bot may serve this server: any without ALLOWED_GUILD_IDS; DEV_GUILD_ID always."""
        allowed = self.allowed_guild_ids
        return allowed is None or guild_id in allowed or guild_id == self.dev_guild_id

    @property
    def database_label(self) -> str:
        """Where the data lives, for messages: the SQLite file, or the PostgreSQL URL without its password."""
        if self.database_url:
            url = URL(self.database_url)
            return str(url.with_password("***")) if url.password else str(url)
        return str(self.database_path)

    @property
    def database_variable(self) -> str:
        """The variable that names the database (for "check …" advice)."""
        return "DATABASE_URL" if self.database_url else "DATABASE_PATH"

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values that must never appear in a log line or a message."""
        found = [str(self.discord_token), str(self.nanogpt_api_key)]
        if self.database_url:
            found.append(str(self.database_url))
            password = URL(self.database_url).password
            if password:
                found.append(password)
        return tuple(found)

    def __repr__(self) -> str:  # belt and braces: dataclass repr already hides the secrets
        shown = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.repr
        )
        return f"Config({shown})"


# -- parsing ---------------------------------------------------------------------------------------
# Every variable has a documented range or format (README's configuration table); anything else is a
# ConfigError: one printable line naming the variable and what it accepts. Raw values are shown only
# shortened and repr()-escaped (never a line break or a terminal escape), and secrets never.

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_SYNC_MODES = ("auto", "off", "always")

#: Discord ids ("snowflakes") of the present day have 17–20 digits and fit in 64 bits.
SNOWFLAKE_MIN, SNOWFLAKE_MAX = 10**16, 2**64 - 1
CLONE_DAILY_LIMIT_MAX = 100
SAY_MAX_CHARS_MAX = 10_000
SAY_COOLDOWN_MAX_SECONDS = 3600
VOICE_IDLE_MIN_SECONDS, VOICE_IDLE_MAX_SECONDS = 10, 86_400
#: A daily budget is 0 (unlimited) or between these, in micro-dollars ($0.001 and $10,000).
BUDGET_MIN_MICROS, BUDGET_MAX_MICROS = 1_000, 10_000 * 1_000_000
MONEY_DECIMALS = 6  # the bot counts in micro-dollars: a finer amount can't be honoured, so it is refused
VOICE_NAME_MAX = 64
SHARD_COUNT_MAX = 1024
SECRET_MAX = 512
URL_MAX = 2048
PATH_MAX = 4096
RAW_MAX = 4096  # longer than any valid value of any variable; refused before any parsing

_DIGITS = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"(?P<int>[0-9]*)(?:\.(?P<frac>[0-9]*))?")
_HOST_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_MODEL_BY_KEY = {m.casefold(): m for m in TTS_MODELS}


def canonical_model(name: str) -> str | None:
    """A documented TTS model in NanoGPT's spelling (case-insensitive), else None."""
    return _MODEL_BY_KEY.get(name.strip().casefold())


def _show(raw: str, limit: int = 40) -> str:
    """``raw`` for an error message: shortened, then repr()-escaped, so it is always one printable line."""
    return repr(raw if len(raw) <= limit else raw[: limit - 1] + "…")


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None:
        return None
    value = value.strip()
    if len(value) > RAW_MAX:
        raise ConfigError(f"{name} is {len(value):,} characters long; no valid value is longer than {RAW_MAX:,}")
    return value or None


def _required(env: Mapping[str, str], name: str) -> Secret:
    value = _get(env, name)
    if value is None:
        raise ConfigError(f"{name} is required but missing or empty")
    if len(value) > SECRET_MAX or not all("!" <= ch <= "~" for ch in value):
        # Never echo any part of a secret. A pasted token with a line break or "Bot " in front is a mistake.
        raise ConfigError(f"{name} must be the bare {'token' if 'TOKEN' in name else 'key'}: at most {SECRET_MAX} "
                          "printable ASCII characters, no spaces or line breaks inside; paste it again")
    return Secret(value)


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _get(env, name)
    if raw is None:
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false (also yes/no, on/off, 1/0), not {_show(raw)}")


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...], *, upper: bool) -> str:
    raw = _get(env, name)
    if raw is None:
        return default
    value = raw.upper() if upper else raw.lower()
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {_show(raw)}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int, maximum: int) -> int:
    raw = _get(env, name)
    if raw is None:
        return default
    allowed = f"a whole number from {minimum:,} to {maximum:,}"
    if not _DIGITS.fullmatch(raw):
        raise ConfigError(f"{name} must be {allowed} (digits only), not {_show(raw)}")
    if len(raw.lstrip("0")) > len(str(maximum)) or not minimum <= int(raw) <= maximum:
        raise ConfigError(f"{name} must be {allowed}, not {_show(raw)}")
    return int(raw)


def _is_snowflake(raw: str) -> bool:
    return bool(_DIGITS.fullmatch(raw)) and 17 <= len(raw) <= 20 and SNOWFLAKE_MIN <= int(raw) <= SNOWFLAKE_MAX


def _snowflake(env: Mapping[str, str], name: str) -> int | None:
    raw = _get(env, name)
    if raw is None:
        return None
    if not _is_snowflake(raw):
        raise ConfigError(f"{name} must be a Discord id (17 to 20 digits; in Discord turn on Developer Mode, then "
                          f"right-click → Copy ID), not {_show(raw)}")
    return int(raw)


def _decimal(raw: str) -> tuple[Decimal, int] | None:
    """Plain decimal text (digits, at most one point; no sign, exponent, nan or inf) → (value, decimals)."""
    match = _DECIMAL.fullmatch(raw)
    if match is None or not (match["int"] or match["frac"]):
        return None
    frac = match["frac"] or ""
    return Decimal(f"{match['int'] or '0'}.{frac or '0'}"), len(frac)


def _seconds(env: Mapping[str, str], name: str, default: float, *, maximum: int) -> float:
    raw = _get(env, name)
    if raw is None:
        return default
    parsed = _decimal(raw)
    if parsed is None or parsed[1] > 3 or parsed[0] > maximum:
        raise ConfigError(f"{name} must be a number of seconds from 0 to {maximum:,} (at most 3 decimals, "
                          f"such as 2.5), not {_show(raw)}")
    return float(parsed[0])


def _money(env: Mapping[str, str], name: str, default_micros: int) -> int:
    raw = _get(env, name)
    if raw is None:
        return default_micros
    parsed = _decimal(raw)
    if parsed is not None and parsed[1] <= MONEY_DECIMALS and parsed[0] <= BUDGET_MAX_MICROS // 1_000_000:
        micros = int(parsed[0] * 1_000_000)  # exact: at most 6 decimals and at most $10,000
        if micros == 0 or BUDGET_MIN_MICROS <= micros <= BUDGET_MAX_MICROS:
            return micros
    # Never rounded: an amount below the smallest budget is refused, so it can't become 0 = unlimited.
    raise ConfigError(f"{name} must be 0 (no limit) or a dollar amount from {format_usd(BUDGET_MIN_MICROS)} to "
                      f"{format_usd(BUDGET_MAX_MICROS)} written like 5.00 (digits, at most {MONEY_DECIMALS} decimals, "
                      f"no $ or sign), not {_show(raw)}")


@overload
def _url(env: Mapping[str, str], name: str, default: str, schemes: tuple[str, ...], example: str) -> str: ...
@overload
def _url(env: Mapping[str, str], name: str, default: None, schemes: tuple[str, ...], example: str) -> str | None: ...
def _url(env: Mapping[str, str], name: str, default: str | None, schemes: tuple[str, ...],
         example: str) -> str | None:
    raw = _get(env, name)
    if raw is None:
        return default
    allowed = f"a {' or '.join(s + '://' for s in schemes)} URL such as {example}"
    if len(raw) > URL_MAX or any(ch.isspace() or not ch.isprintable() for ch in raw):
        raise ConfigError(f"{name} must be {allowed} (no spaces or control characters), not {_show(raw)}")
    try:
        url = URL(raw)
        scheme, host, port = url.scheme, url.raw_host, url.explicit_port
        has_credentials = url.raw_user is not None or url.raw_password is not None
        extra = bool(url.raw_query_string or url.raw_fragment or "?" in raw or "#" in raw)
    except (ValueError, TypeError, UnicodeError):  # yarl: bad port, bad IPv6 literal, IDNA failure, …
        raise ConfigError(f"{name} must be {allowed}, not {_show(raw)}") from None
    if scheme not in schemes or not host or not _valid_host(host):
        raise ConfigError(f"{name} must be {allowed}, not {_show(raw)}")
    if has_credentials or "@" in raw.split("//", 1)[-1].split("/", 1)[0]:
        raise ConfigError(f"{name} must not carry a user name or password (user:password@host); "
                          "remove them from the URL")
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError(f"{name} must be {allowed} with a port from 1 to 65535, not {_show(raw)}")
    if extra:
        raise ConfigError(f"{name} must be {allowed} without ?query or #fragment, not {_show(raw)}")
    return raw.rstrip("/")


def _valid_host(host: str) -> bool:
    """An IP address, or a DNS name (labels of letters, digits, - and _, at most 63 each, 253 in all)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    labels = host.removesuffix(".").split(".")
    return len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)


def _path(env: Mapping[str, str], name: str, default: str) -> Path:
    raw = _get(env, name)
    if raw is None:
        return Path(default)
    if len(raw) > PATH_MAX or any(unicodedata.category(ch) in {"Cc", "Cs"} for ch in raw):
        raise ConfigError(f"{name} must be a file path (no control characters or undecodable bytes, at most "
                          f"{PATH_MAX:,} characters), not {_show(raw)}")
    path = Path(raw)
    try:
        is_dir = raw.endswith(("/", os.sep)) or path.is_dir()
    except (OSError, ValueError):  # e.g. a name longer than the file system allows
        raise ConfigError(f"{name} must be a usable file path, not {_show(raw)}") from None
    if is_dir or path.name in {"", ".", ".."}:
        raise ConfigError(f"{name} must be the path of the database file, not a directory: {_show(raw)}")
    return path


_POSTGRES_SCHEMES = ("postgresql", "postgres")


def _database_url(env: Mapping[str, str], name: str) -> Secret | None:
    """A ``postgresql://`` URL (user, password, host, port, database, libpq query options); never echoed,
    since it may hold a password."""
    raw = _get(env, name)
    if raw is None:
        return None
    accepted = (f"{name} must be a PostgreSQL URL such as postgresql://nanovoice:PASSWORD@localhost:5432/nanovoice "
                f"(at most {URL_MAX:,} printable characters, no spaces)")
    if len(raw) > URL_MAX or any(ch.isspace() or not ch.isprintable() for ch in raw):
        raise ConfigError(accepted)
    try:
        url = URL(raw)
        scheme, host, port, path = url.scheme, url.raw_host, url.explicit_port, url.raw_path
        query = url.query
    except (ValueError, TypeError, UnicodeError):
        raise ConfigError(accepted) from None
    if scheme not in _POSTGRES_SCHEMES:
        raise ConfigError(f"{accepted}; it must start with postgresql://")
    if not host and "host" not in query:
        raise ConfigError(f"{accepted}; it names no host")
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError(f"{accepted}; its port must be 1-65535")
    if path.count("/") > 1 or url.raw_fragment:
        raise ConfigError(f"{accepted}; after the host only /DATABASE and ?options may follow")
    return Secret(raw)


def _model(env: Mapping[str, str], name: str, default: str, *, family: str = "") -> str:
    raw = _get(env, name)
    if raw is None:
        return default
    allowed = [m for m in TTS_MODELS if m.startswith(family)]
    model = canonical_model(raw)
    if model not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, not {_show(raw)}")
    return model


def _voice(env: Mapping[str, str], name: str, default: str) -> str:
    raw = _get(env, name)
    if raw is None:
        return default
    if len(raw) > VOICE_NAME_MAX or any(ch.isspace() or unicodedata.category(ch).startswith("C") for ch in raw):
        raise ConfigError(f"{name} must be a voice name such as af_bella (1 to {VOICE_NAME_MAX} characters, no "
                          f"spaces or control characters), not {_show(raw)}")
    return raw


def _id_set(env: Mapping[str, str], name: str) -> frozenset[int] | None:
    raw = _get(env, name)
    if raw is None:
        return None
    parts = raw.replace(",", " ").split()
    for part in parts:
        if not _is_snowflake(part):
            raise ConfigError(f"{name} must list server ids (Discord ids of 17 to 20 digits) separated by commas; "
                              f"{_show(part)} is not one")
    ids = frozenset(int(part) for part in parts)
    if not ids:
        raise ConfigError(f"{name} must list server ids separated by commas (or be unset for any server), "
                          f"not {_show(raw)}")
    return ids


def _model_list(env: Mapping[str, str], name: str) -> tuple[str, ...] | None:
    raw = _get(env, name)
    if raw is None:
        return None
    models: dict[str, None] = {}
    for part in raw.replace(",", " ").split():
        model = canonical_model(part)
        if model is None:
            raise ConfigError(f"{name} must list models separated by commas, each one of {', '.join(TTS_MODELS)}; "
                              f"not {_show(part)}")
        models[model] = None
    if not models:
        raise ConfigError(f"{name} must list models separated by commas (or be unset for all of them), "
                          f"not {_show(raw)}")
    return tuple(models)


_SHARD_PART = re.compile(r"(?P<first>[0-9]{1,4})(?:-(?P<last>[0-9]{1,4}))?")


def _shard_ids(env: Mapping[str, str], name: str, count: int | None) -> tuple[int, ...] | None:
    """``0,1`` or ``0-3`` (or both mixed: ``0-1,3``): distinct shard ids, each below SHARD_COUNT."""
    raw = _get(env, name)
    if raw is None:
        return None
    if count is None:
        raise ConfigError(f"{name} needs SHARD_COUNT: set SHARD_COUNT to the total number of shards, "
                          f"then {name} to the ones this process runs")
    accepted = f"{name} must list shard ids from 0 to {count - 1} like 0,1 or 0-3"
    ids: list[int] = []
    for part in raw.replace(" ", "").split(","):
        match = _SHARD_PART.fullmatch(part)
        if match is None:
            raise ConfigError(f"{accepted}, not {_show(raw)}")
        first = int(match["first"])
        last = int(match["last"]) if match["last"] is not None else first
        if last < first:
            raise ConfigError(f"{accepted} (a range goes from low to high), not {_show(raw)}")
        if last >= count:
            raise ConfigError(f"{accepted}: shard {last} does not exist with SHARD_COUNT={count}")
        ids.extend(range(first, last + 1))
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConfigError(f"{accepted}, each once; listed more than once: {', '.join(map(str, duplicates))}")
    return tuple(sorted(ids))


def load_config(env: Mapping[str, str] | None = None, *, dotenv: bool = True) -> Config:
    """Build the configuration from ``env`` (default: the process environment plus ``.env``)."""
    if env is None:
        if dotenv:
            from dotenv import load_dotenv

            load_dotenv(Path.cwd() / ".env", override=False)
        env = os.environ

    discord_token = _required(env, "DISCORD_TOKEN")
    nanogpt_api_key = _required(env, "NANOGPT_API_KEY")
    allowed_models = _model_list(env, "ALLOWED_TTS_MODELS")
    default_model = _model(env, "DEFAULT_TTS_MODEL", "Kokoro-82m")
    database_url = _database_url(env, "DATABASE_URL")
    if database_url is not None and _get(env, "DATABASE_PATH") is not None:
        raise ConfigError("DATABASE_URL and DATABASE_PATH are both set: set DATABASE_URL for PostgreSQL or "
                          "DATABASE_PATH for an SQLite file, not both")
    shard_count = _int(env, "SHARD_COUNT", 0, minimum=1, maximum=SHARD_COUNT_MAX) or None
    shard_ids = _shard_ids(env, "SHARD_IDS", shard_count)
    if shard_count is not None and shard_ids is not None and len(shard_ids) < shard_count and database_url is None:
        # Other processes would run the other shards on this same file: SQLite allows one process.
        raise ConfigError(f"SHARD_IDS {','.join(map(str, shard_ids))} leaves shards of SHARD_COUNT={shard_count} "
                          "to another process, but the SQLite database allows only one process: run all shards "
                          "in this process (unset SHARD_IDS), or share a PostgreSQL database (DATABASE_URL)")
    if allowed_models is not None and default_model not in allowed_models:
        raise ConfigError(f"DEFAULT_TTS_MODEL {default_model} is not in ALLOWED_TTS_MODELS; add it there or set "
                          f"DEFAULT_TTS_MODEL to one of {', '.join(allowed_models)}")

    return Config(
        discord_token=discord_token,
        nanogpt_api_key=nanogpt_api_key,
        nanogpt_base_url=_url(env, "NANOGPT_BASE_URL", "https://nano-gpt.com/api", ("https", "http"),
                              "https://nano-gpt.com/api"),
        database_path=_path(env, "DATABASE_PATH", "data/nanovoice.sqlite3"),
        database_url=database_url,
        discord_api_base=_url(env, "DISCORD_API_BASE", "https://discord.com/api/v10", ("https", "http"),
                              "https://discord.com/api/v10"),
        discord_gateway_url=_url(env, "DISCORD_GATEWAY_URL", DISCORD_GATEWAY_DEFAULT, ("wss", "ws"),
                                 DISCORD_GATEWAY_DEFAULT) or DISCORD_GATEWAY_DEFAULT,
        dev_guild_id=_snowflake(env, "DEV_GUILD_ID"),
        sync_commands=_choice(env, "SYNC_COMMANDS", "auto", _SYNC_MODES, upper=False),
        default_tts_model=default_model,
        default_tts_voice=_voice(env, "DEFAULT_TTS_VOICE", "af_bella"),
        minimax_tts_model=_model(env, "MINIMAX_TTS_MODEL", "Minimax-Speech-02-HD", family="Minimax-"),
        qwen_tts_model=_model(env, "QWEN_TTS_MODEL", "Qwen-3-TTS-1.7B", family="Qwen-"),
        clone_confirm=_bool(env, "CLONE_CONFIRM", True),
        clone_daily_limit=_int(env, "CLONE_DAILY_LIMIT", 3, minimum=0, maximum=CLONE_DAILY_LIMIT_MAX),
        say_max_chars=_int(env, "SAY_MAX_CHARS", 1000, minimum=1, maximum=SAY_MAX_CHARS_MAX),
        say_cooldown_seconds=_seconds(env, "SAY_COOLDOWN_SECONDS", 3.0, maximum=SAY_COOLDOWN_MAX_SECONDS),
        voice_idle_seconds=_int(env, "VOICE_IDLE_SECONDS", 300, minimum=VOICE_IDLE_MIN_SECONDS,
                                maximum=VOICE_IDLE_MAX_SECONDS),
        guild_daily_budget_micros=_money(env, "GUILD_DAILY_BUDGET_USD", 5_000_000),
        public_base_url=_url(env, "PUBLIC_BASE_URL", None, ("https", "http"), "https://nanovoice.example.com"),
        http_port=_int(env, "HTTP_PORT", 8080, minimum=1, maximum=65535),
        embedding_channel_id=_snowflake(env, "EMBEDDING_CHANNEL_ID"),
        log_level=_choice(env, "LOG_LEVEL", "INFO", _LOG_LEVELS, upper=True),
        allowed_guild_ids=_id_set(env, "ALLOWED_GUILD_IDS"),
        allowed_tts_models=allowed_models,
        bot_daily_budget_micros=_money(env, "BOT_DAILY_BUDGET_USD", 0),
        shard_count=shard_count,
        shard_ids=shard_ids,
    )
