"""The server secret, and the bearer secrets derived from it: lease tokens and ticket ids.

Why (issue 12, item 6): a lease's token lets whoever has it renew and release the lease; a ticket's id lets
whoever has it collect the lease granted to it, or leave the queue in its place. Both used to be stored in
clear, so a copy of the database (a backup, a leaked dump) handed every one of them to its reader. Now the
database keeps nothing that is one, nor anything that makes one without the secret, which it never holds:

- A lease's token is `k_` + base64url(HMAC-SHA256(secret, "callme-lease-token|" + lease id)). It is not
  stored at all: a client that comes back with its ticket or its request_id gets it again (API.md promises
  the token, as often as asked) because it can be derived again, and a presented token is checked by deriving
  it and comparing in constant time. The `k_` prefix keeps it from starting with `-`, which a command line
  would take for an option.
- A ticket's id is `t_` + 20 random characters (the ticket's row id, stored) + `.` + a MAC of that row id
  (not stored). A row id read from a dump names no ticket: the MAC is checked before the store is asked.
- A request_id is stored as its SHA-256 (model.request_digest), which a repeat is looked up by: a dump gives
  none to replay. It needs no key: a request_id is the client's own random UUID, and one an attacker could
  guess he could send to the server just as well.

The secret is CALL_ME_SECRET, or the content of CALL_ME_SECRET_FILE; on SQLite, without either, the file
`<database>.secret` beside the database, made 0600 with 32 random bytes at first start. PostgreSQL refuses to
start without one: its replicas must share it, and the only place they share by themselves is the database,
where a secret would be in every copy of it. CALL_ME_SECRET_PREVIOUS keeps the secret before a rotation
verifying (never signing) while its tokens are still in use; without it, a changed secret makes every live
token `wrong_token` and every waiting ticket id unknown (README: Rotating the secret).

Rows from before schema 5 keep what they had until they end and are pruned: a lease that has a stored token
is checked against it (and it is what its holder is given again), and a ticket id of the old shape (no `.`) is
its own row id. An ended lease's token changes nothing any more (renew and release answer 403 or 410), so a
dump of those gives nothing either.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import secrets
from typing import TYPE_CHECKING

from . import private
from .constants import MIN_SECRET_LENGTH, SECRET_BYTES, SECRET_FILE_SUFFIX
from .errors import ConfigError
from .store import is_postgres

if TYPE_CHECKING:
    from .model import Lease, Ticket
    from .settings import Settings

log = logging.getLogger("callme.secret")

_TOKEN = b"callme-lease-token|"
_TICKET = b"callme-ticket|"
_TICKET_MAC_BYTES = 16  # 128 bits: far beyond guessing online, and a shorter id to carry
# Ticket ids made before schema 5 ("t_" + secrets.token_urlsafe(24)): their row id is the secret itself. A row id
# made since is 20 characters long, so it never has this shape and cannot pass for one.
_OLD_TICKET_ID = re.compile(r"t_[A-Za-z0-9_-]{32}")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def new_ticket_row_id() -> str:
    """The stored, public part of a new ticket's id."""
    return "t_" + secrets.token_urlsafe(15)


class ServerSecret:
    """Derives the lease tokens and ticket ids that the database never holds, and checks the ones presented."""

    def __init__(self, current: bytes, previous: bytes | None = None) -> None:
        # The first signs; every one verifies (the previous one only while a rotation lasts).
        self._keys = (current,) if previous is None or previous == current else (current, previous)

    @classmethod
    def generate(cls) -> ServerSecret:
        """A random secret of its own, for a service made without one (tests, benchmarks): it lives as long as
        the object, so tokens do not outlive it."""
        return cls(secrets.token_bytes(SECRET_BYTES))

    def __repr__(self) -> str:
        return f"ServerSecret(keys={len(self._keys)})"  # never the secret

    # -- lease tokens -----------------------------------------------------------------------------------

    def token(self, lease: Lease) -> str:
        """The token its holder got with the lease's 201."""
        if lease.token is not None:
            return lease.token  # granted before schema 5: its token was stored, and is the one its holder has
        return self._token(self._keys[0], lease.id)

    def token_matches(self, lease: Lease, presented: str | None) -> bool:
        """Whether `presented` is the lease's token; constant time in the token."""
        if presented is None:
            return False
        given = presented.encode("utf-8", "surrogatepass")
        if lease.token is not None:
            return hmac.compare_digest(given, lease.token.encode())
        return any(hmac.compare_digest(given, self._token(key, lease.id).encode()) for key in self._keys)

    def group_token(self, group_id: str) -> str:
        """The token of a group of leases (its 201 gives it): derived from the group's id as a lease's from its
        own (a group id and a lease id never coincide: `g_` and `l_`)."""
        return self._token(self._keys[0], group_id)

    def group_token_matches(self, group_id: str, presented: str | None) -> bool:
        if presented is None:
            return False
        given = presented.encode("utf-8", "surrogatepass")
        return any(hmac.compare_digest(given, self._token(key, group_id).encode()) for key in self._keys)

    @staticmethod
    def _token(key: bytes, lease_id: str) -> str:
        return "k_" + _b64(hmac.new(key, _TOKEN + lease_id.encode(), hashlib.sha256).digest())

    # -- ticket ids -------------------------------------------------------------------------------------

    def ticket_id(self, ticket: Ticket) -> str:
        """The id its requester got with the ticket's 202."""
        if _OLD_TICKET_ID.fullmatch(ticket.id):
            return ticket.id
        return f"{ticket.id}.{self._ticket_mac(self._keys[0], ticket.id)}"

    def ticket_row_id(self, presented: str) -> str | None:
        """The stored row id that a presented ticket id names, or None when its MAC does not check out."""
        if _OLD_TICKET_ID.fullmatch(presented):
            return presented
        row_id, dot, mac = presented.rpartition(".")
        if not dot:
            return None
        given = mac.encode("utf-8", "surrogatepass")
        if any(hmac.compare_digest(given, self._ticket_mac(key, row_id).encode()) for key in self._keys):
            return row_id
        return None

    @staticmethod
    def _ticket_mac(key: bytes, row_id: str) -> str:
        mac = hmac.new(key, _TICKET + row_id.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
        return _b64(mac[:_TICKET_MAC_BYTES])

    # -- secrets the server must keep (a webhook's): sealed ------------------------------------------------

    def seal(self, plain: str) -> str:
        """`plain` encrypted and authenticated with the server secret, for the database to keep.

        Encrypt-then-MAC from the standard library alone: a keystream of HMAC-SHA256(enc key, nonce | block
        number) blocks XORed with the text (HMAC as the PRF of a counter mode), then HMAC-SHA256(mac key, nonce |
        ciphertext) over it; both keys derived from the server secret, a random 128-bit nonce per seal."""
        nonce = secrets.token_bytes(_SEAL_NONCE_BYTES)
        data = plain.encode()
        enc, mac = _seal_keys(self._keys[0])
        cipher = bytes(a ^ b for a, b in zip(data, _keystream(enc, nonce, len(data)), strict=True))
        tag = hmac.new(mac, nonce + cipher, hashlib.sha256).digest()
        return _SEALED + _b64(nonce + cipher + tag)

    def unseal(self, sealed: str) -> str | None:
        """The text `seal` sealed, or None when no secret of this server sealed it (or it was altered)."""
        if not sealed.startswith(_SEALED):
            return None
        try:
            raw = base64.urlsafe_b64decode(sealed[len(_SEALED) :] + "=" * (-len(sealed) % 4))
        except ValueError:
            return None
        if len(raw) < _SEAL_NONCE_BYTES + _SEAL_TAG_BYTES:
            return None
        nonce, cipher, tag = raw[:_SEAL_NONCE_BYTES], raw[_SEAL_NONCE_BYTES:-_SEAL_TAG_BYTES], raw[-_SEAL_TAG_BYTES:]
        for key in self._keys:
            enc, mac = _seal_keys(key)
            if hmac.compare_digest(tag, hmac.new(mac, nonce + cipher, hashlib.sha256).digest()):
                plain = bytes(a ^ b for a, b in zip(cipher, _keystream(enc, nonce, len(cipher)), strict=True))
                return plain.decode("utf-8", "replace")
        return None


_SEALED = "s1."
_SEAL_NONCE_BYTES = 16
_SEAL_TAG_BYTES = 32


def _seal_keys(key: bytes) -> tuple[bytes, bytes]:
    return (
        hmac.new(key, b"callme-seal-encrypt", hashlib.sha256).digest(),
        hmac.new(key, b"callme-seal-authenticate", hashlib.sha256).digest(),
    )


def _keystream(key: bytes, nonce: bytes, length: int) -> bytes:
    blocks = (length + 31) // 32
    stream = b"".join(hmac.new(key, nonce + i.to_bytes(4, "big"), hashlib.sha256).digest() for i in range(blocks))
    return stream[:length]


# -- where the secret comes from --------------------------------------------------------------------------


def open_secret(settings: Settings) -> ServerSecret:
    """The server secret the settings name, made first (SQLite's own file) when there is none yet.

    Raises ConfigError, naming the setting, when there is none to be had or it is too short."""
    previous = settings.secret_previous.encode() if settings.secret_previous is not None else None
    if settings.secret is not None:
        return ServerSecret(settings.secret.encode(), previous)
    if is_postgres(settings.database):
        if settings.secret_file is None:
            raise ConfigError(
                "CALL_ME_SECRET: PostgreSQL needs a server secret that every replica shares (it derives lease tokens "
                "and ticket ids, and one kept in the database would be in every copy of it); set CALL_ME_SECRET, or "
                "CALL_ME_SECRET_FILE to a file holding it, on every replica, e.g. the output of "
                "`openssl rand -base64 32`"
            )
        # Never made here: each replica would make its own.
        return ServerSecret(_read(settings.secret_file, "CALL_ME_SECRET_FILE"), previous)
    path = settings.secret_file or settings.database + SECRET_FILE_SUFFIX
    setting = "CALL_ME_SECRET_FILE" if settings.secret_file else "the secret file"
    if not os.path.exists(path):
        _create(path, settings.database)
    return ServerSecret(_read(path, setting), previous)


def _read(path: str, setting: str) -> bytes:
    try:
        with open(path, "rb") as f:
            value = f.read().strip()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path!r}: {exc.strerror}") from None
    if len(value) < MIN_SECRET_LENGTH:
        raise ConfigError(
            f"{setting}: {path!r} holds {len(value)} characters, fewer than {MIN_SECRET_LENGTH}; put a secret of 32 "
            "random bytes in it (e.g. `openssl rand -base64 32`), or delete it to have one made at the next start "
            "(tokens given out under the one it held are then refused)"
        )
    private.warn_if_loose(path, "server secret")
    return value


def _create(path: str, database: str) -> None:
    """Write a new secret to `path`, 0600 from its creation, and make it durable before any token is given out."""
    value = base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).rstrip(b"=") + b"\n"
    try:
        # O_EXCL: never over a file that appeared meanwhile (a second server started at once reads that one, and
        # then stops on the database's lock anyway).
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, private.MODE)
    except FileExistsError:
        return
    except OSError as exc:
        raise ConfigError(
            f"the secret file: cannot create {path!r}: {exc.strerror}; make its folder writable, or set "
            "CALL_ME_SECRET or CALL_ME_SECRET_FILE"
        ) from None
    try:
        os.write(fd, value)
        os.fsync(fd)
    finally:
        os.close(fd)
    folder = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
    if os.path.exists(database) and os.path.getsize(database) > 0:
        log.warning(
            "event=secret_created file=%s database=%s: a new server secret was made for a database that already "
            "existed. Leases granted before this version keep their stored tokens; but if this database was used "
            "with another secret (a secret file lost, or not restored with a backup of the database), the tokens "
            "of its live leases are now refused (wrong_token) and its waiting tickets unknown: stop the server, "
            "put the old secret file back and start again",
            path, database,
        )  # fmt: skip
    else:
        log.info("event=secret_created file=%s; back it up apart from the database (README: The server secret)", path)
