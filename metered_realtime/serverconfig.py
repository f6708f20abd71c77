"""Turn ``metered-realtime serve`` flags and a TOML config file into a ``ServerConfig``."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from metered_realtime.core.broker import (
    ALL_ACTIONS,
    Limits,
    PublishableKey,
    ServerConfig,
    SigningKey,
)
from metered_realtime.core.validation import compile_pattern

__all__ = [
    "DEV_KEY",
    "ConfigError",
    "is_loopback_host",
    "load_config_file",
    "parse_key",
    "parse_rate_limit",
    "parse_secret",
]

DEV_KEY = "pk_dev_local"
_ICE_SCHEMES = ("stun:", "stuns:", "turn:", "turns:")


class ConfigError(ValueError):
    """A flag or config-file value is invalid (the message never includes a secret)."""


def is_loopback_host(host: str) -> bool:
    """True for localhost and loopback addresses."""
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _actions(values: Sequence[str], where: str) -> frozenset[str]:
    actions = frozenset(v.strip() for v in values if v.strip())
    unknown = actions - ALL_ACTIONS
    if unknown:
        raise ConfigError(
            f"{where}: unknown permission(s) {sorted(unknown)}; use {sorted(ALL_ACTIONS)}"
        )
    return actions or ALL_ACTIONS


def parse_key(spec: str) -> PublishableKey:
    """``KEY[:perm,...]`` → a publishable key (all four permissions when none are given)."""
    key, _, perms = spec.partition(":")
    if not key or not re.fullmatch(r"[\x21-\x7e]{1,256}", key):
        raise ConfigError("--key: the key must be 1-256 printable characters without spaces")
    return PublishableKey(key, actions=_actions(perms.split(",") if perms else [], "--key"))


def parse_secret(spec: str) -> SigningKey:
    """``KID=SECRET`` → a signing key for HS256 JWTs."""
    kid, sep, secret = spec.partition("=")
    if not sep or not kid or not secret:
        raise ConfigError("--secret must look like KID=SECRET")
    return SigningKey(kid, secret)


def parse_rate_limit(spec: str) -> tuple[float, int]:
    """``PER_S[:BURST]`` → (rate per second, burst); burst defaults to twice the rate."""
    rate_text, _, burst_text = spec.partition(":")
    try:
        rate = float(rate_text)
        burst = int(burst_text) if burst_text else max(1, int(rate * 2))
    except ValueError:
        raise ConfigError("--rate-limit must look like PER_S[:BURST]") from None
    if not rate > 0 or burst < 1:
        raise ConfigError("--rate-limit needs a positive rate and burst")
    return rate, burst


def ice_server(url: str) -> dict[str, Any]:
    """One ``--ice-server`` URL → an ICE server entry."""
    if not url.lower().startswith(_ICE_SCHEMES) or len(url) > 512:
        raise ConfigError("--ice-server must be a stun:, stuns:, turn: or turns: URL")
    return {"urls": url}


_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def _snake(data: Any) -> Any:
    """Accept the camelCase names of PROTOCOL §6.2 as well as snake_case."""
    if isinstance(data, Mapping):
        return {_CAMEL.sub("_", str(k)).lower(): _snake(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_snake(v) for v in data]
    return data


def _ice_list(value: Any, where: str) -> tuple[Mapping[str, Any], ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(
        isinstance(v, Mapping) and "urls" in v for v in value
    ):
        raise ConfigError(f"{where}: ice_servers must be a list of tables with urls")
    return tuple(dict(v) for v in value)


def _patterns(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ("**",)
    if not isinstance(value, list) or not value or not all(isinstance(p, str) and p for p in value):
        raise ConfigError(f"{where}: channel_patterns must be a non-empty list of strings")
    for pattern in value:
        compile_pattern(pattern)
    return tuple(value)


def config_from_mapping(raw: Mapping[str, Any]) -> ServerConfig:
    """Build a ``ServerConfig`` from a parsed config document (§6.2 model)."""
    data = _snake(raw)
    keys = []
    for i, entry in enumerate(data.get("publishable_keys", [])):
        where = f"publishable_keys[{i}]"
        if (
            not isinstance(entry, Mapping)
            or not isinstance(entry.get("key"), str)
            or not entry["key"]
        ):
            raise ConfigError(f"{where}: needs a key string")
        keys.append(
            PublishableKey(
                entry["key"],
                channel_patterns=_patterns(entry.get("channel_patterns"), where),
                actions=_actions(entry.get("actions", sorted(ALL_ACTIONS)), where),
                allowed_origins=tuple(entry.get("allowed_origins", ())),
                ice_servers=_ice_list(entry.get("ice_servers"), where),
                enabled=bool(entry.get("enabled", True)),
            )
        )
    signing = []
    for i, entry in enumerate(data.get("secret_keys", [])):
        where = f"secret_keys[{i}]"
        if not isinstance(entry, Mapping) or not entry.get("kid") or not entry.get("secret"):
            raise ConfigError(f"{where}: needs kid and secret strings")
        signing.append(
            SigningKey(
                str(entry["kid"]),
                str(entry["secret"]),
                channel_patterns=_patterns(entry.get("channel_patterns"), where),
                actions=_actions(entry.get("actions", sorted(ALL_ACTIONS)), where),
                ice_servers=_ice_list(entry.get("ice_servers"), where),
                enabled=bool(entry.get("enabled", True)),
            )
        )
    limits_raw = data.get("limits", {})
    if not isinstance(limits_raw, Mapping):
        raise ConfigError("limits must be a table")
    known = set(Limits.__dataclass_fields__)
    aliases = {"rate_per_second": "rate_per_second"}
    limit_args: dict[str, Any] = {}
    for name, value in limits_raw.items():
        name = aliases.get(name, name)
        if name not in known:
            raise ConfigError(f"limits: unknown setting {name!r}")
        limit_args[name] = value
    try:
        limits = Limits(**limit_args)
    except TypeError as exc:
        raise ConfigError(f"limits: {exc}") from None
    return ServerConfig(
        keys=tuple(keys),
        signing_keys=tuple(signing),
        limits=limits,
        ice_servers=_ice_list(data.get("ice_servers"), "ice_servers"),
        suspended=bool(data.get("suspended", False)),
        close_on_unauthorized_channel=bool(data.get("close_on_unauthorized_channel", False)),
        app=str(data.get("app", "local")),
    )


def load_config_file(path: str | Path) -> ServerConfig:
    """Read a TOML config file (Python 3.11+, or 3.10 with ``tomli`` installed)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef,import-not-found,unused-ignore]
        except ModuleNotFoundError:
            raise ConfigError("--config needs Python 3.11+ or `pip install tomli`") from None
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return config_from_mapping(raw)


def merge_flags(
    base: ServerConfig,
    *,
    keys: Sequence[str] = (),
    secrets: Sequence[str] = (),
    ice_servers: Sequence[str] = (),
    max_message_size: int | None = None,
    rate_limit: str | None = None,
    connect_limit: int | None = None,
    max_connections: int | None = None,
    idle_timeout: float | None = None,
) -> ServerConfig:
    """Apply command-line flags over a config (flags win)."""
    config = base
    if keys:
        config = replace(config, keys=(*config.keys, *(parse_key(k) for k in keys)))
    if secrets:
        config = replace(
            config, signing_keys=(*config.signing_keys, *(parse_secret(s) for s in secrets))
        )
    if ice_servers:
        config = replace(config, ice_servers=tuple(ice_server(u) for u in ice_servers))
    limits = config.limits
    if max_message_size is not None:
        if max_message_size < 1024:
            raise ConfigError("--max-message-size must be at least 1024 bytes")
        limits = replace(
            limits, max_message_size=max_message_size, max_frame_bytes=max_message_size
        )
    if rate_limit is not None:
        rate, burst = parse_rate_limit(rate_limit)
        limits = replace(limits, rate_per_second=rate, rate_burst=burst)
    if connect_limit is not None:
        if connect_limit < 1:
            raise ConfigError("--connect-limit must be at least 1")
        limits = replace(limits, connect_attempts_per_ip_per_minute=connect_limit)
    if max_connections is not None:
        if max_connections < 1:
            raise ConfigError("--max-connections must be at least 1")
        limits = replace(limits, max_concurrent_connections=max_connections)
    if idle_timeout is not None:
        if not idle_timeout > 0:
            raise ConfigError("--idle-timeout must be positive")
        limits = replace(limits, idle_timeout=idle_timeout)
    return replace(config, limits=limits)


def with_dev_key(config: ServerConfig) -> tuple[ServerConfig, bool]:
    """Add the development key when no credential is configured; say whether it was added."""
    if config.keys or config.signing_keys:
        return config, False
    return replace(config, keys=(PublishableKey(DEV_KEY),)), True
