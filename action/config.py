"""Where the server is and which key to use: flags, then CALL_ME_*, then the original's names."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from .client import Client
from .constants import ENV_API_KEY, ENV_ORIGINAL_API_KEY, ENV_ORIGINAL_HOST, ENV_RETRY_FOR, ENV_URL, RETRY_FOR
from .errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Settings:
    url: str
    api_key: str = dataclasses.field(repr=False)
    retry_for: float = RETRY_FOR

    def client(self) -> Client:
        """A `Client` for this server and key: the one way the CLI and the Action build one."""
        return Client(self.url, self.api_key, retry_for=self.retry_for)


def resolve(
    environ: Mapping[str, str],
    *,
    url: str | None = None,
    api_key: str | None = None,
    retry_for: float | None = None,
) -> Settings:
    """Settings from flags (given here) over CALL_ME_URL / CALL_ME_API_KEY over HOST / API_KEY."""
    raw_url = url or environ.get(ENV_URL) or environ.get(ENV_ORIGINAL_HOST)
    if not raw_url:
        raise ConfigError(f"no server to talk to: neither --url, {ENV_URL} nor {ENV_ORIGINAL_HOST} is set")
    key = api_key or environ.get(ENV_API_KEY) or environ.get(ENV_ORIGINAL_API_KEY)
    if not key:
        raise ConfigError(f"no API key: neither --api-key, {ENV_API_KEY} nor {ENV_ORIGINAL_API_KEY} is set")
    if retry_for is None:
        retry_for = _seconds(environ.get(ENV_RETRY_FOR), ENV_RETRY_FOR, RETRY_FOR)
    return Settings(url=normalize_url(raw_url), api_key=key, retry_for=retry_for)


def normalize_url(value: str) -> str:
    """`host:port` as the original's HOST had it means http://host:port."""
    value = value.strip().rstrip("/")
    if "://" not in value:
        value = "http://" + value
    return value


def _seconds(raw: str | None, name: str, default: float) -> float:
    if raw is None or raw == "":
        return default
    try:
        seconds = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number of seconds") from None
    if seconds < 0:
        raise ConfigError(f"{name}={raw!r} is negative")
    return seconds
