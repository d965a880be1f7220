"""The dashboard's defences against cross-site request forgery, after the OWASP CSRF Prevention Cheat Sheet
(Fetch Metadata headers, verifying the origin with standard headers, the signed double-submit cookie, cookie
prefixes).

- `check_origin`: a state-changing form must come from the dashboard's own pages. A browser says where a request
  comes from in `Sec-Fetch-Site` and `Origin`, and no page's script can set either. Anything but `same-origin`
  (or `none`, the user's own navigation) is refused, `same-site` too: a sibling subdomain is another party, and
  the one placed to plant cookies. An `Origin` must name this server as the browser addressed it: `Host`, or
  `X-Forwarded-Host` from a reverse proxy. Without either header (an old client, curl) the token alone decides.
- `FormTokens`: a form sent without a session (sign-in, every form of a server without authentication) carries a
  signed double-submit token: cookie and form hold the same value, and the value is a nonce, the time it was made
  and an HMAC of both with a secret made at random when the process starts. A value planted in the cookie by
  someone else is refused unless this process made it within FORM_TOKEN_TTL. (A session's forms carry the
  session's own token, kept on the server: sessions.py.)

The per-process secret costs little: a restart already signs everybody out, a sign-in form older than the
restart (or than FORM_TOKEN_TTL) asks for a reload, and several replicas need sticky sessions anyway.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .constants import FORM_TOKEN_TTL
from .errors import FormRefused
from .sessions import new_token, same

if TYPE_CHECKING:
    from starlette.requests import Request

_SAFE_SITES = frozenset({"same-origin", "none"})
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}
_QUOTED = 100  # characters of a header quoted back in a refusal
_AGAIN = "Open the dashboard at its own address and send the form from there."


def check_origin(request: Request) -> None:
    """Refuse (FormRefused, 403) a form that a browser says came from elsewhere than this server's own pages."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in _SAFE_SITES:
        raise FormRefused(
            f"this form was sent from another site (Sec-Fetch-Site: {site[:_QUOTED]}), so nothing was done: "
            f"the dashboard takes forms only from its own pages. {_AGAIN}"
        )
    origin = request.headers.get("origin")
    if origin is not None and not _own(origin, request):
        here = f"{request.url.scheme}://{(_hosts(request) or ['?'])[0]}"
        raise FormRefused(
            f"this form was sent from {origin[:_QUOTED]}, not from this dashboard ({here[:_QUOTED]}), so nothing "
            f"was done. {_AGAIN} Behind a reverse proxy, the proxy must pass the address browsers use in Host or "
            "X-Forwarded-Host."
        )


def _hosts(request: Request) -> list[str]:
    # A page cannot set X-Forwarded-Host on a form it sends elsewhere (and any other request that carries it needs
    # a CORS preflight this server never grants), so trusting it here gives a forger nothing.
    forwarded = request.headers.get("x-forwarded-host", "").split(",")[0]
    return [h.strip().lower() for h in (request.headers.get("host", ""), forwarded) if h.strip()]


def _own(origin: str, request: Request) -> bool:
    scheme, sep, authority = origin.strip().lower().partition("://")
    # https is accepted over a plain-http hop as well: a TLS proxy whose X-Forwarded-Proto uvicorn does not trust
    # (FORWARDED_ALLOW_IPS) makes every request look like http. An http page posting to https is still refused.
    if not sep or scheme not in (request.url.scheme, "https") or not authority or "/" in authority:
        return False  # "null" (a sandboxed or privacy-sensitive context) included
    return _bare(authority, scheme) in {_bare(host, scheme) for host in _hosts(request)}


def _bare(authority: str, scheme: str) -> str:
    default = _DEFAULT_PORTS.get(scheme, "")
    return authority[: -len(default)] if default and authority.endswith(default) else authority


class FormTokens:
    """Signed double-submit tokens for the forms sent without a session."""

    def __init__(
        self,
        *,
        secret: bytes | None = None,
        clock: Callable[[], float] = time.monotonic,
        ttl: float = FORM_TOKEN_TTL,
    ) -> None:
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self._clock = clock
        self._ttl = ttl

    def issue(self) -> str:
        body = f"{new_token()}.{int(self._clock())}"
        return f"{body}.{self._sign(body)}"

    def valid(self, token: str | None) -> bool:
        """Whether this process made `token` less than the TTL ago; constant time in the signature."""
        if not token or token.count(".") != 2:
            return False
        body, _, signature = token.rpartition(".")
        if not same(signature, self._sign(body)):
            return False
        issued = int(body.partition(".")[2])  # signed here, so a whole number
        return 0 <= self._clock() - issued < self._ttl

    def _sign(self, body: str) -> str:
        mac = hmac.new(self._secret, b"callme-form-token|" + body.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def __repr__(self) -> str:
        return f"FormTokens(ttl={self._ttl})"  # never the secret
