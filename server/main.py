"""`call-me-server`: read the settings, open the store, serve until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import logging
import os
import sys

log = logging.getLogger("callme.server")


_USAGE = """\
Serve call-me: a lock server for shared test environments.

Configured by environment variables (a bad value stops start-up with one line naming it):
  PORT                   port to serve on (8000)
  API_KEY                one admin key, as the original call-me had
  CALL_ME_HOST           address to bind (0.0.0.0)
  CALL_ME_DATABASE       a SQLite file (call-me.db) or a postgresql:// URL for several replicas
  CALL_ME_CONFIG         a TOML file of keys (with roles) and environments
  CALL_ME_DEFAULT_TTL, CALL_ME_MAX_TTL, CALL_ME_MAYBE_TTL   lease lengths (3600, 86400, 21600 s)
  CALL_ME_MAX_WAIT       seconds a long-poll is held at most (25)
  CALL_ME_TICKET_GRACE   seconds a waiter may be away between polls (60)
  CALL_ME_AUTO_CREATE    create unknown environments on first request (true)
  CALL_ME_NO_AUTH        run without keys, for local trials only (false)
  CALL_ME_SSE_HEARTBEAT  seconds between heartbeats on /v1/events (15)
  CALL_ME_PG_LISTEN      PostgreSQL: LISTEN/NOTIFY wake-ups, false to poll (true)
  CALL_ME_HISTORY_DAYS   days events, ended leases and ended tickets are kept (90, at least 1)
  CALL_ME_AUTO_FORGET_DAYS  days an auto-created environment may go unused before it is forgotten (30)
  CALL_ME_MAX_CONNECTIONS  connections served at once, parked long-polls included; beyond it a new one
                         gets 503 at once (16384, lowered to what the open-file limit allows)
  CALL_ME_READ_TIMEOUT   seconds a client may take to send a request, headers and body, from its first
                         byte (10); a parked long-poll or an event stream is not cut by it
  CALL_ME_IDLE_TIMEOUT   seconds a connection may stay open with no request on it (30)
  CALL_ME_ALLOW_NEW_DATABASE  SQLite: start although the database that was used here is gone (false)
  CALL_ME_SECRET         the server secret that lease tokens and ticket ids are derived from, so that the
                         database never holds them: at least 32 characters (`openssl rand -base64 32`).
                         Required with PostgreSQL, the same on every replica. On SQLite, without it, the
                         file <database>.secret is made (0600) at first start: back it up apart from the
                         database. A changed secret makes live leases' tokens wrong_token.
  CALL_ME_SECRET_FILE    a file that holds the secret instead (made at first start on SQLite if missing)
  CALL_ME_SECRET_PREVIOUS  the secret before a rotation: its tokens and ticket ids are still accepted

Run it behind a TLS proxy whose timeouts towards it exceed CALL_ME_MAX_WAIT (README: Behind a TLS proxy).

Example: API_KEY=change-me-please call-me-server
"""


def _arguments(argv: list[str]) -> None:
    """`--help` and `--version` answer and exit; anything else is a usage error (settings come from the
    environment, so a stray argument is more likely a mistake than a wish)."""
    parser = argparse.ArgumentParser(
        prog="call-me-server", description=_USAGE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="show the version and exit")
    parser.parse_args(argv)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("call-me")
    except PackageNotFoundError:
        return "unknown"


class _Version(argparse.Action):
    """--version, read from the installed metadata only when asked (importlib.metadata costs a start-up)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        print(f"{parser.prog} {_version()}")
        parser.exit()


def main(argv: list[str] | None = None) -> None:
    _arguments(sys.argv[1:] if argv is None else argv)
    # Imported once the arguments are read: `--help` answers without loading the server.
    import asyncio

    from .constants import MIN_KEY_LENGTH
    from .errors import ConfigError
    from .logfilter import RepeatLimit
    from .secret import open_secret
    from .serving import listen, loop_factory, serve
    from .settings import load
    from .store.base import redact

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # httpx logs every request's URL at INFO: a webhook's URL may be its receiver's secret (Slack's and Teams'
    # are), so only the deliverer's own lines say what happened (delivery.py), naming the hook, never its URL.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    repeats = RepeatLimit()
    for handler in logging.getLogger().handlers:
        handler.addFilter(repeats)
    try:
        settings = load()
    except ConfigError as exc:
        print(f"call-me-server: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    api_key = os.environ.get("API_KEY") or ""
    if 0 < len(api_key) < MIN_KEY_LENGTH:
        # Refused in the config file; API_KEY keeps working as the original's did, but not quietly.
        log.warning("API_KEY is shorter than %d characters: anyone who can try keys will guess it", MIN_KEY_LENGTH)
    if settings.no_auth:
        log.warning("AUTHENTICATION IS OFF (CALL_ME_NO_AUTH): anyone who reaches this port is an admin")
    log.info("starting on %s:%s with database %s", settings.host, settings.port, redact(settings.database))
    try:
        # Before anything is written (the secret, the database): a port in use leaves no files behind.
        listener = listen(settings.host, settings.port)
    except OSError as exc:
        print(f"call-me-server: {exc.strerror}", file=sys.stderr)
        raise SystemExit(1) from None
    try:
        # Before the store opens: on SQLite its file is made (and durable) before any token is given out.
        secret = open_secret(settings)
    except ConfigError as exc:
        print(f"call-me-server: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        code = runner.run(serve(settings, secret, listener))
    raise SystemExit(code)


if __name__ == "__main__":
    main()
