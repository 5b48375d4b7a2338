"""The dashboard's guards, the same model as ``serve``: the Host header is checked (DNS rebinding), a key
is required for anything but loopback, and a state-changing request must come from the dashboard's own
pages or a script, never from another site.

- **Key.** ``Authorization: Bearer KEY`` (scripts), or the ``expertkit_dashboard`` cookie that
  ``POST /login`` sets (HttpOnly, SameSite=Strict); both compared in constant time. No key is ever
  written into a page or a log line.
- **Cross-site requests.** Every POST must carry ``Content-Type: application/json`` (a cross-site
  form cannot, and a cross-site ``fetch`` with it needs a CORS preflight this server never grants) and,
  when the browser sends ``Origin``, an origin whose host is the Host the request was sent to.
  ``POST /login`` is the one form; it checks ``Origin`` the same way.
"""

from __future__ import annotations

import hmac
from urllib.parse import urlparse

from fastapi import Request

COOKIE = "expertkit_dashboard"
OPEN_PATHS = frozenset({"/login", "/health"})


def authorised(request: Request, key: str | None) -> bool:
    if key is None:
        return True
    bearer = request.headers.get("authorization", "")
    cookie = request.cookies.get(COOKIE, "")
    return hmac.compare_digest(bearer.encode(), f"Bearer {key}".encode()) or hmac.compare_digest(
        cookie.encode(), key.encode()
    )


def same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not a browser, or a same-origin navigation that sent none
    return urlparse(origin).netloc.lower() == request.headers.get("host", "").lower()


def json_post(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"
