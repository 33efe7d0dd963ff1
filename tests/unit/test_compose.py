"""The Docker Compose files: valid YAML, every variable they give the bot is one of README's configuration
variables, and the bot's configuration loader accepts what each bot service would run with. For
compose.sharded.yaml: its processes share one PostgreSQL database and one SHARD_COUNT and run each shard once."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from bot.config import Config, load_config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILES = sorted(p.name for p in ROOT.glob("compose*.yaml"))
DOTENV = {"DISCORD_TOKEN": "MTIz.abc.def", "NANOGPT_API_KEY": "sk-nano-test", "POSTGRES_PASSWORD": "s3cret"}
_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Z_][A-Z0-9_]*)(?::?[?-][^}]*)?\}")


def compose(name: str) -> dict[str, Any]:
    """The file as Compose reads it: YAML (merge keys included), ``${NAME}`` / ``${NAME:?message}`` taken from
    the test's ``.env``."""
    text = _INTERPOLATION.sub(lambda m: DOTENV[m.group("name")], (ROOT / name).read_text())
    data = yaml.safe_load(text)
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), name
    return data


def readme_variables() -> set[str]:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Configuration"):readme.index("## Performance")]
    return {m.group(1) for m in re.finditer(r"^\| `([A-Z_0-9]+)`", table, re.MULTILINE)}


def bot_services(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in data["services"].items() if str(s.get("image", "")).startswith("nanovoice")
            or "build" in s or name == "nanovoice"}


def bot_config(service: dict[str, Any]) -> Config:
    """The configuration the bot in this service's container loads: ``.env`` (env_file), the image's
    ``DATABASE_PATH``, then the service's ``environment`` (which wins)."""
    env = {**DOTENV, "DATABASE_PATH": "/app/data/nanovoice.sqlite3"}
    env.update({k: "" if v is None else str(v) for k, v in (service.get("environment") or {}).items()})
    return load_config(env, dotenv=False)


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_every_variable_given_to_the_bot_is_a_configuration_variable(name: str) -> None:
    known = readme_variables()
    assert {"DATABASE_URL", "SHARD_COUNT", "SHARD_IDS"} <= known
    services = bot_services(compose(name))
    assert services, f"{name} has no nanovoice service"
    for service_name, service in services.items():
        unknown = set(service.get("environment") or {}) - known
        assert not unknown, f"{name}: {service_name} sets {unknown}, which the bot does not read"


def test_the_sharded_compose_file_runs_each_shard_once_on_one_postgresql_database() -> None:
    data = compose("compose.sharded.yaml")
    services = bot_services(data)
    assert len(services) >= 2
    configs = {name: bot_config(service) for name, service in services.items()}
    counts = {c.shard_count for c in configs.values()}
    assert len(counts) == 1 and None not in counts  # one SHARD_COUNT for every process
    (count,) = counts
    assert count is not None
    shard_ids = [shard for c in configs.values() for shard in (c.shard_ids or ())]
    assert sorted(shard_ids) == list(range(count))  # each shard in exactly one process
    urls = {c.database_url for c in configs.values()}
    assert len(urls) == 1 and None not in urls  # one shared PostgreSQL database
    (url,) = urls
    assert url is not None
    parts = urlsplit(url)
    postgres = data["services"][parts.hostname]
    env = postgres["environment"]
    assert (parts.username, parts.password, parts.path.lstrip("/")) == (
        env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], env["POSTGRES_DB"])
    for name, service in services.items():
        assert service["depends_on"][parts.hostname] == {"condition": "service_healthy"}, name
        assert service["stop_signal"] == "SIGINT" and service["env_file"] == ".env", name
    assert "healthcheck" in postgres and any("/var/lib/postgresql/data" in v for v in postgres["volumes"])


def test_the_postgres_compose_file_on_top_of_compose_yaml_loads_a_postgresql_configuration() -> None:
    base, overlay = compose("compose.yaml")["services"]["nanovoice"], compose("compose.postgres.yaml")
    service = {**base, "environment": {**(base.get("environment") or {}),
                                       **overlay["services"]["nanovoice"]["environment"]}}
    config = bot_config(service)
    assert config.database_url is not None and urlsplit(config.database_url).hostname in overlay["services"]
