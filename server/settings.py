"""Settings, read once at start-up from the environment and the optional TOML file into frozen objects."""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import validation, webhooks
from .constants import (
    ADMIN_KEY_NAME,
    DEFAULT_AUTO_FORGET_DAYS,
    DEFAULT_DATABASE,
    DEFAULT_HELD_TOO_LONG,
    DEFAULT_HISTORY_DAYS,
    DEFAULT_HOST,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_TTL,
    DEFAULT_MAX_WAIT,
    DEFAULT_MAYBE_TTL,
    DEFAULT_PORT,
    DEFAULT_READ_TIMEOUT,
    DEFAULT_SSE_HEARTBEAT,
    DEFAULT_TICKET_GRACE,
    DEFAULT_TTL,
    DEFAULT_WAITING_TOO_LONG,
    DEFAULT_WEBHOOK_ATTEMPTS,
    DEFAULT_WEBHOOK_BACKOFF,
    DEFAULT_WEBHOOK_BACKOFF_MAX,
    DEFAULT_WEBHOOK_TIMEOUT,
    MAX_PRIORITY,
    MAX_RETENTION_DAYS,
    MAX_WEBHOOKS,
    MIN_ALERT_THRESHOLD,
    MIN_KEY_LENGTH,
    MIN_SECRET_LENGTH,
    NO_AUTH_HOST,
    ROLES,
)
from .errors import ConfigError, Invalid
from .model import Role
from .validation import EnvironmentChange
from .webhooks import WebhookChange

_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class KeyConfig:
    name: str
    role: Role
    max_priority: int = 0
    sha256: bytes = field(default=b"", repr=False)  # the digest only; the key itself is never kept


@dataclass(frozen=True)
class EnvironmentConfig:
    name: str
    change: EnvironmentChange


@dataclass(frozen=True)
class WebhookConfig:
    name: str
    change: WebhookChange


@dataclass(frozen=True)
class Settings:
    port: int = DEFAULT_PORT
    host: str = DEFAULT_HOST
    database: str = field(default=DEFAULT_DATABASE, repr=False)  # a PostgreSQL URL may carry a password
    config_path: str | None = None
    default_ttl: int = DEFAULT_TTL
    max_ttl: int = DEFAULT_MAX_TTL
    maybe_ttl: int = DEFAULT_MAYBE_TTL
    max_wait: float = DEFAULT_MAX_WAIT
    ticket_grace: float = DEFAULT_TICKET_GRACE
    auto_create: bool = True
    no_auth: bool = False
    sse_heartbeat: float = DEFAULT_SSE_HEARTBEAT
    # PostgreSQL only: LISTEN/NOTIFY wake-ups across replicas; off behind PgBouncer's transaction pooling.
    pg_listen: bool = True
    # SQLite only: start on a new or different database although the high-water mark beside it says another one
    # was used there (store/sqlite_file.py); fences then start above the old ones.
    allow_new_database: bool = False
    # Events, ended leases and ended tickets are pruned this many days after they happened or ended; an
    # auto-created environment without a lease, a ticket or a change for auto_forget_days is forgotten.
    history_days: int = DEFAULT_HISTORY_DAYS
    auto_forget_days: int = DEFAULT_AUTO_FORGET_DAYS
    # What a connection may cost before it is authenticated (server/connections.py). A request in flight (a
    # parked long-poll, an SSE stream) runs under neither timeout.
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    read_timeout: float = DEFAULT_READ_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    # Where the server secret comes from (secret.py: open_secret reads it, or makes SQLite's file, at start-up):
    # its value, or a file that holds it; and the one before a rotation, still accepted.
    secret: str | None = field(default=None, repr=False)
    secret_file: str | None = None
    secret_previous: str | None = field(default=None, repr=False)
    # Webhooks (webhooks.py, delivery.py): the thresholds of the time-based events where an environment sets
    # none, and how deliveries are attempted.
    held_too_long: float = DEFAULT_HELD_TOO_LONG
    waiting_too_long: float = DEFAULT_WAITING_TOO_LONG
    webhook_timeout: float = DEFAULT_WEBHOOK_TIMEOUT
    webhook_backoff: float = DEFAULT_WEBHOOK_BACKOFF
    webhook_backoff_max: float = DEFAULT_WEBHOOK_BACKOFF_MAX
    webhook_attempts: int = DEFAULT_WEBHOOK_ATTEMPTS
    keys: tuple[KeyConfig, ...] = ()
    environments: tuple[EnvironmentConfig, ...] = ()
    webhooks: tuple[WebhookConfig, ...] = ()


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}: expected a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}: must be from {low} to {high}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}: expected a number of seconds, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}: must be from {low:g} to {high:g}, got {raw}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}: expected true or false, got {raw!r}")


def _secret(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    value = raw.strip()  # as a secret file's content is read: the same secret either way
    if len(value) < MIN_SECRET_LENGTH:
        raise ConfigError(
            f"{name}: must be at least {MIN_SECRET_LENGTH} characters, got {len(value)}; "
            "use 32 random bytes, e.g. the output of `openssl rand -base64 32`"
        )  # never the value itself
    return value


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _key(entry: Any, index: int) -> KeyConfig:
    where = f"keys[{index}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a table")
    unknown = set(entry) - {"name", "key", "key_sha256", "role", "max_priority"}
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown setting")
    name = entry.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= 100:
        raise ConfigError(f"{where}.name: expected a name of 1 to 100 characters")
    role = entry.get("role", "client")
    if role not in ROLES:
        raise ConfigError(f"{where}.role: expected one of {', '.join(ROLES)}, got {role!r}")
    max_priority = entry.get("max_priority", 0)
    if isinstance(max_priority, bool) or not isinstance(max_priority, int) or abs(max_priority) > MAX_PRIORITY:
        raise ConfigError(f"{where}.max_priority: expected a whole number up to {MAX_PRIORITY}")
    key, key_sha256 = entry.get("key"), entry.get("key_sha256")
    if (key is None) == (key_sha256 is None):
        raise ConfigError(f"{where}: give exactly one of key and key_sha256 (for key {name!r})")
    if key is not None:
        if not isinstance(key, str) or len(key) < MIN_KEY_LENGTH:
            raise ConfigError(
                f"{where}.key: expected a string of at least {MIN_KEY_LENGTH} characters (for key {name!r})"
            )
        sha = digest(key)
    else:
        if not isinstance(key_sha256, str) or not _SHA256.fullmatch(key_sha256.lower()):
            raise ConfigError(f"{where}.key_sha256: expected 64 hexadecimal digits (for key {name!r})")
        sha = bytes.fromhex(key_sha256)
    return KeyConfig(name=name, role=role, max_priority=max_priority, sha256=sha)


def _environment(entry: Any, index: int) -> EnvironmentConfig:
    where = f"environments[{index}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a table")
    body = dict(entry)
    try:
        name = validation.name("name", body.pop("name", None))
        return EnvironmentConfig(name=name, change=validation.environment_change(body))
    except Invalid as exc:
        raise ConfigError(f"{where}.{exc.detail}") from None


def _webhook(entry: Any, index: int) -> WebhookConfig:
    where = f"webhooks[{index}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a table")
    body = dict(entry)
    try:
        name = webhooks.hook_name(body.pop("name", f"hook-{index + 1}"))
        return WebhookConfig(name=name, change=webhooks.change(body))
    except Invalid as exc:
        raise ConfigError(f"{where}.{exc.detail}") from None  # the detail names the field, never the secret


ConfigFile = tuple[tuple[KeyConfig, ...], tuple[EnvironmentConfig, ...], tuple[WebhookConfig, ...]]


def _config_file(path: str) -> ConfigFile:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"CALL_ME_CONFIG: cannot read {path!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"CALL_ME_CONFIG: {path!r} is not valid TOML: {exc}") from None
    unknown = set(data) - {"keys", "environments", "webhooks"}
    if unknown:
        raise ConfigError(f"CALL_ME_CONFIG: unknown section {sorted(unknown)[0]!r} in {path!r}")
    raw_keys, raw_envs = data.get("keys", []), data.get("environments", [])
    if not isinstance(raw_keys, list) or not isinstance(raw_envs, list):
        raise ConfigError(f"CALL_ME_CONFIG: keys and environments must be arrays of tables ([[keys]]) in {path!r}")
    raw_hooks = data.get("webhooks", [])
    if not isinstance(raw_hooks, list) or len(raw_hooks) > MAX_WEBHOOKS:
        raise ConfigError(f"CALL_ME_CONFIG: webhooks must be an array of at most {MAX_WEBHOOKS} tables ([[webhooks]])")
    hooks = tuple(_webhook(entry, i) for i, entry in enumerate(raw_hooks))
    hook_names = [h.name for h in hooks]
    for i, hook in enumerate(hooks):
        if hook.name in hook_names[:i]:
            raise ConfigError(f"webhooks[{i}].name: {hook.name!r} is declared twice")
    keys = tuple(_key(entry, i) for i, entry in enumerate(raw_keys))
    envs = tuple(_environment(entry, i) for i, entry in enumerate(raw_envs))
    names = [k.name for k in keys]
    for i, key in enumerate(keys):
        if key.name in names[:i] or key.name == ADMIN_KEY_NAME:
            raise ConfigError(f"keys[{i}].name: {key.name!r} is used twice (or reserved for API_KEY)")
        if key.sha256 in [k.sha256 for k in keys[:i]]:
            raise ConfigError(f"keys[{i}]: key {key.name!r} has the same secret as another key")
    env_names = [e.name for e in envs]
    for i, env in enumerate(envs):
        if env.name in env_names[:i]:
            raise ConfigError(f"environments[{i}].name: {env.name!r} is declared twice")
    return keys, envs, hooks


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Read the settings; raises ConfigError naming the first bad setting."""
    env = os.environ if env is None else env
    max_ttl = _int(env, "CALL_ME_MAX_TTL", DEFAULT_MAX_TTL, 1, 10 * 365 * 86400)
    no_auth = _bool(env, "CALL_ME_NO_AUTH", False)
    settings = Settings(
        port=_int(env, "PORT", DEFAULT_PORT, 0, 65535),
        # Without keys anyone who reaches the port is an admin: loopback only, unless the host is set on purpose.
        host=env.get("CALL_ME_HOST") or (NO_AUTH_HOST if no_auth else DEFAULT_HOST),
        database=env.get("CALL_ME_DATABASE") or DEFAULT_DATABASE,
        config_path=env.get("CALL_ME_CONFIG") or None,
        default_ttl=_int(env, "CALL_ME_DEFAULT_TTL", DEFAULT_TTL, 1, max_ttl),
        max_ttl=max_ttl,
        maybe_ttl=_int(env, "CALL_ME_MAYBE_TTL", DEFAULT_MAYBE_TTL, 1, 10 * 365 * 86400),
        max_wait=_float(env, "CALL_ME_MAX_WAIT", DEFAULT_MAX_WAIT, 0, 3600),
        ticket_grace=_float(env, "CALL_ME_TICKET_GRACE", DEFAULT_TICKET_GRACE, 0.1, 86400),
        auto_create=_bool(env, "CALL_ME_AUTO_CREATE", True),
        no_auth=no_auth,
        pg_listen=_bool(env, "CALL_ME_PG_LISTEN", True),
        allow_new_database=_bool(env, "CALL_ME_ALLOW_NEW_DATABASE", False),
        sse_heartbeat=_float(env, "CALL_ME_SSE_HEARTBEAT", DEFAULT_SSE_HEARTBEAT, 0.05, 3600),
        history_days=_int(env, "CALL_ME_HISTORY_DAYS", DEFAULT_HISTORY_DAYS, 1, MAX_RETENTION_DAYS),
        auto_forget_days=_int(env, "CALL_ME_AUTO_FORGET_DAYS", DEFAULT_AUTO_FORGET_DAYS, 1, MAX_RETENTION_DAYS),
        max_connections=_int(env, "CALL_ME_MAX_CONNECTIONS", DEFAULT_MAX_CONNECTIONS, 1, 1_000_000),
        read_timeout=_float(env, "CALL_ME_READ_TIMEOUT", DEFAULT_READ_TIMEOUT, 0.1, 3600),
        idle_timeout=_float(env, "CALL_ME_IDLE_TIMEOUT", DEFAULT_IDLE_TIMEOUT, 0.1, 86400),
        secret=_secret(env, "CALL_ME_SECRET"),
        secret_file=env.get("CALL_ME_SECRET_FILE") or None,
        secret_previous=_secret(env, "CALL_ME_SECRET_PREVIOUS"),
        held_too_long=_float(env, "CALL_ME_HELD_TOO_LONG", DEFAULT_HELD_TOO_LONG, MIN_ALERT_THRESHOLD, 1e9),
        waiting_too_long=_float(env, "CALL_ME_WAITING_TOO_LONG", DEFAULT_WAITING_TOO_LONG, MIN_ALERT_THRESHOLD, 1e9),
        webhook_timeout=_float(env, "CALL_ME_WEBHOOK_TIMEOUT", DEFAULT_WEBHOOK_TIMEOUT, 0.1, 300),
        webhook_backoff=_float(env, "CALL_ME_WEBHOOK_BACKOFF", DEFAULT_WEBHOOK_BACKOFF, 0.05, 3600),
        webhook_backoff_max=_float(env, "CALL_ME_WEBHOOK_BACKOFF_MAX", DEFAULT_WEBHOOK_BACKOFF_MAX, 0.05, 86400),
        webhook_attempts=_int(env, "CALL_ME_WEBHOOK_ATTEMPTS", DEFAULT_WEBHOOK_ATTEMPTS, 1, 100),
    )
    if settings.secret is not None and settings.secret_file is not None:
        raise ConfigError("CALL_ME_SECRET_FILE: set either CALL_ME_SECRET or CALL_ME_SECRET_FILE, not both")
    keys: tuple[KeyConfig, ...] = ()
    envs: tuple[EnvironmentConfig, ...] = ()
    hooks: tuple[WebhookConfig, ...] = ()
    if settings.config_path:
        keys, envs, hooks = _config_file(settings.config_path)
    api_key = env.get("API_KEY")
    if api_key is not None and api_key != "":
        admin = KeyConfig(name=ADMIN_KEY_NAME, role="admin", max_priority=MAX_PRIORITY, sha256=digest(api_key))
        if admin.sha256 in [k.sha256 for k in keys]:
            raise ConfigError("API_KEY: the same secret is also a key of CALL_ME_CONFIG")
        keys = (admin, *keys)
    if not keys and not settings.no_auth:
        raise ConfigError(
            "API_KEY: no key is configured; set API_KEY (or keys in CALL_ME_CONFIG), "
            "or CALL_ME_NO_AUTH=true for a local trial without authentication"
        )
    return Settings(**{**settings.__dict__, "keys": keys, "environments": envs, "webhooks": hooks})
