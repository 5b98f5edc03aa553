"""Who may use the labelling server: the bind check, the token, and the Host check without one.

Bound to 127.0.0.1 by default; any other host needs a token, and when a token is set every request
must carry it (``Authorization: Bearer T``, ``?token=T`` or the cookie that ``?token=T`` sets), else
401/403. Without a token, requests whose Host header is not a loopback name are refused (DNS
rebinding).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from email.message import Message

from rlhf_control.errors import UserError
from rlhf_control.web.app import ApiError

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def check_bind(host: str, token: str | None) -> None:
    """Refuse a host beyond 127.0.0.1/localhost/::1 without a token, and a malformed token (ValueError)."""
    if token is not None:
        if not isinstance(token, str) or not token or not token.isascii() or not token.isprintable() \
                or any(c in token for c in " ;,\"\\"):
            raise UserError("token is not allowed; use a non-empty ASCII string without spaces, quotes, ';' or ','")
    elif host not in LOOPBACK_HOSTS:
        raise UserError(f"host {host!r} lets other machines reach the labelling app; give a token "
                         f"(--token T) or bind to 127.0.0.1")


def authorize(headers: Message, query: Mapping[str, list[str]], token: str | None,
              port: int) -> dict[str, str]:
    """Check one request's token (or, without one, its Host header) against the server's ``token``.

    ``headers``: the request headers; ``query``: its parsed query string; ``port``: the server's port
    (it names the cookie, so servers on one host keep theirs apart). Returns the headers to add to the
    response (the cookie, when the token came in the URL); raises :class:`ApiError` 401/403.
    """
    if token is None:
        host = (headers.get("Host") or "").strip()
        name = host[1:].partition("]")[0] if host.startswith("[") else host.rpartition(":")[0] or host
        if name.lower() not in LOOPBACK_HOSTS:
            raise ApiError(403, f"Host {host[:80]!r} is not allowed; open the app at http://127.0.0.1:{port}/")
        return {}
    cookie_name = f"rlhf_label_{port}"
    given, from_query = None, False
    auth = headers.get("Authorization") or ""
    if auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    elif "token" in query:
        given, from_query = query["token"][0], True
    else:
        for part in (headers.get("Cookie") or "").split(";"):
            k, _, v = part.strip().partition("=")
            if k == cookie_name:
                given = v
    if not given:
        raise ApiError(401, "this server needs a token: open the page with ?token=T or send 'Authorization: Bearer T'")
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise ApiError(403, "wrong token")
    if from_query:
        return {"Set-Cookie": f"{cookie_name}={token}; Path=/; HttpOnly; SameSite=Strict"}
    return {}
