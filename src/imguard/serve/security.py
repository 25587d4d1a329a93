"""What keeps ``imguard serve`` to its owner: allowed Host names, same-origin writes, a
per-server secret, a request body bounded while it is read, and security headers.

All of it is one plain ASGI middleware (:class:`Guard`) in front of the FastAPI app, so every
request passes the same checks before any route runs:

- **Host** must be one the server is known by (``localhost``, ``127.0.0.1``, ``[::1]``, the
  bound address, ``--allow-host`` names): a DNS-rebinding page reaches the server under its
  own name and is refused.
- **Origin / Referer** of a state-changing request (POST, PUT, PATCH, DELETE) must be the
  page's own origin when the browser sends one: a page on another site cannot queue jobs or
  delete them. Clients that send neither (curl, scripts) are not browsers and pass.
- **Token**: with a ``token`` (always when the server listens beyond loopback) every request
  but the page itself and its static files needs it, as the ``imguard_token`` cookie (set when
  the page is opened with ``?token=...``), an ``X-Imguard-Token`` header or ``?token=``.
- **Body**: a ``Content-Length`` above the limit is refused at once; otherwise the bytes of
  the ``http.request`` messages are counted as they arrive and the request is refused (413)
  the moment they pass the limit, or (408) when the whole body takes longer than the read
  timeout (a slow upload holding a connection open).
- **Headers**: a Content-Security-Policy the page passes (no inline script or style),
  ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY``, ``Referrer-Policy``, and
  ``Cache-Control: no-store`` on the API (photos stay out of caches).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import socket
import time
from typing import Any, Iterable
from urllib.parse import parse_qs, urlsplit

__all__ = ["CSP", "Guard", "LOOPBACK_HOSTS", "TOKEN_COOKIE", "allowed_hosts", "is_loopback"]

log = logging.getLogger("imguard.serve")

TOKEN_COOKIE = "imguard_token"
TOKEN_HEADER = "x-imguard-token"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
#: The page's policy: its own script, style and images (plus blob: previews of the chosen files).
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
#: Paths readable without the token: the page and its static files (they hold no photo).
PUBLIC_PATHS = ("/", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/",)


class BodyTooLarge(Exception):
    pass


class BodyTooSlow(Exception):
    pass


def is_loopback(host: str) -> bool:
    """True for names and addresses that only this computer reaches."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts(bound: str, extra: Iterable[str] = ()) -> set[str]:
    """Host names (lower case, no port, IPv6 without brackets) the server answers to.

    Loopback names always; the bound address; for a wildcard bind (``0.0.0.0``, ``::``) this
    computer's name and addresses, since that is how other computers reach it; plus ``extra``
    (``"*"`` allows any Host: only sensible with the token, which the CLI then requires).
    """
    hosts = {h.lower() for h in LOOPBACK_HOSTS}
    bound = bound.strip("[]").lower()
    if bound in ("0.0.0.0", "::", ""):
        name = socket.gethostname()
        hosts.update({name.lower(), socket.getfqdn().lower()})
        try:
            hosts.update(info[4][0].lower() for info in socket.getaddrinfo(name, None))
        except OSError:
            pass
    else:
        hosts.add(bound)
    hosts.update(h.strip().strip("[]").lower() for h in extra if h.strip())
    return hosts


def _host_only(value: str) -> str:
    """``"Example.org:8000"`` -> ``"example.org"``, ``"[::1]:8000"`` -> ``"::1"``."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value[1:]
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


class Guard:
    """The ASGI middleware described in the module docstring."""

    def __init__(self, app: Any, *, hosts: set[str], token: str | None, max_body: int, read_timeout: float,
                 api_docs: bool = False):
        self.app = app
        self.hosts = hosts
        self.token = token
        self.max_body = max_body
        self.read_timeout = read_timeout
        self.api_docs = api_docs

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        path = scope.get("path", "")
        method = scope.get("method", "GET").upper()
        send = self._with_headers(send, path)

        host = _host_only(headers.get("host", ""))
        if "*" not in self.hosts and host not in self.hosts:
            log.warning("refused a request for Host %r (allowed: %s)", headers.get("host"), ", ".join(sorted(self.hosts)))
            return await _reply(send, 400, f"this server does not answer to the name {host!r}; open it as "
                                           "http://localhost:PORT/ (or start it with --allow-host NAME)")
        if method in UNSAFE_METHODS and not self._same_origin(headers):
            log.warning("refused a cross-site %s %s from %r", method, path, headers.get("origin") or headers.get("referer"))
            return await _reply(send, 403, "this request came from another web site; use the imguard page itself")
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if self.token is not None and not self._public(path):
            given = _cookie(headers.get("cookie", ""), TOKEN_COOKIE) or headers.get(TOKEN_HEADER) or (query.get("token") or [""])[0]
            if not given or not hmac.compare_digest(given.encode(), self.token.encode()):
                return await _reply(send, 401, "this server needs its access link: open the address with ?token=... that "
                                               "`imguard serve` printed when it started")
        if self.token is not None and path == "/" and query.get("token"):
            given = query["token"][0]
            if hmac.compare_digest(given.encode(), self.token.encode()):
                return await _redirect_with_cookie(send, self.token)

        length = headers.get("content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return await _reply(send, 400, "the Content-Length header is not a number")
            if n > self.max_body:
                return await _reply(send, 413, _too_large(self.max_body))

        state = {"bytes": 0, "deadline": None, "started": False}

        async def bounded_receive():
            if state["deadline"] is None:
                state["deadline"] = time.monotonic() + self.read_timeout
            left = state["deadline"] - time.monotonic()
            if left <= 0:
                raise BodyTooSlow
            try:
                message = await asyncio.wait_for(receive(), timeout=left)
            except asyncio.TimeoutError:
                raise BodyTooSlow from None
            if message["type"] == "http.request":
                state["bytes"] += len(message.get("body", b""))
                if state["bytes"] > self.max_body:
                    raise BodyTooLarge
            return message

        async def tracking_send(message):
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracking_send)
        except BodyTooLarge:
            log.warning("refused a %s %s: the body passed %d bytes", method, path, self.max_body)
            if not state["started"]:
                await _reply(send, 413, _too_large(self.max_body))
        except BodyTooSlow:
            log.warning("refused a %s %s: the body took longer than %.0f s", method, path, self.read_timeout)
            if not state["started"]:
                await _reply(send, 408, f"the upload took longer than {self.read_timeout:.0f} s; try again (or upload fewer photos at once)")

    def _public(self, path: str) -> bool:
        return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)

    def _same_origin(self, headers: dict[str, str]) -> bool:
        source = headers.get("origin") or headers.get("referer")
        if not source:
            return True  # not sent by a browser: no other site's page is behind it
        if source == "null":
            return False
        parts = urlsplit(source)
        return parts.scheme in ("http", "https") and parts.netloc.lower() == headers.get("host", "").lower()

    def _with_headers(self, send, path: str):
        docs = self.api_docs and (path.startswith("/docs") or path.startswith("/redoc"))

        async def wrapped(message):
            if message["type"] == "http.response.start":
                extra = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                         (b"referrer-policy", b"same-origin"), (b"cross-origin-opener-policy", b"same-origin"),
                         (b"cross-origin-resource-policy", b"same-origin")]
                if not docs:  # the API docs page loads Swagger UI from a CDN, with inline script
                    extra.append((b"content-security-policy", CSP.encode()))
                if path.startswith("/api/"):
                    extra.append((b"cache-control", b"no-store"))
                have = {k.lower() for k, _ in message.get("headers", [])}
                message = {**message, "headers": list(message.get("headers", [])) + [(k, v) for k, v in extra if k not in have]}
            await send(message)

        return wrapped


def _too_large(limit: int) -> str:
    return (f"the upload is larger than {limit / 2**20:.0f} MB in all, the limit per request; upload fewer or smaller "
            "photos at once (or start the server with a larger --max-mb)")


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        k, _, v = part.strip().partition("=")
        if k == name:
            return v
    return None


async def _reply(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


async def _redirect_with_cookie(send, token: str) -> None:
    """The page opened with its access link: keep the token in a cookie, drop it from the URL."""
    cookie = f"{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
    await send({"type": "http.response.start", "status": 303,
                "headers": [(b"location", b"/"), (b"set-cookie", cookie.encode()), (b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})
