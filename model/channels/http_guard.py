"""Network-facing guards for the REST API (docs/SECURITY.md): a header-read deadline at the HTTP protocol level
(uvicorn has none: a client trickling header bytes would hold its connection for ever), optional bearer tokens,
and log-safe text. Kept apart from model.channels.api so that each piece can be tested alone.
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import os

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_S = 10.0
"""Longest a client may take to send a request's line and headers, from its first byte (or from connecting)."""

MAX_HEADER_BYTES = 16 * 1024
"""Largest request line + headers accepted (h11's incomplete-event limit; uvicorn answers 400 beyond it)."""

KEEP_ALIVE_S = 5
"""Idle time after a response before a kept-alive connection is closed (uvicorn's timeout_keep_alive)."""

PUBLIC_PATHS = frozenset({"/healthz"})
"""Paths answered without a token when tokens are configured (liveness probes)."""


class HeaderTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request's headers: a connection that hasn't sent a complete
    request line and headers within HEADER_TIMEOUT_S of connecting (or of the first byte of a later request on a
    kept-alive connection) is closed. Pass it as `uvicorn.run(..., http=HeaderTimeoutH11Protocol)`."""

    header_timeout_s = HEADER_TIMEOUT_S
    _header_timer = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:
            self._arm()  # still waiting for (the rest of) a request's headers
        else:
            self._disarm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_timer is None and not self.transport.is_closing():
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_deadline)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_deadline(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.logger.info("closed a connection that did not send its request headers in %g s",
                             self.header_timeout_s)
            self.transport.close()


def tokens_from_env() -> frozenset[str]:
    """$TORAX_API_TOKENS: comma-separated bearer tokens (empty: no token needed)."""
    return frozenset(t.strip() for t in os.environ.get("TORAX_API_TOKENS", "").split(",") if t.strip())


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class BearerAuth:
    """ASGI middleware: with tokens configured, every request but PUBLIC_PATHS needs `Authorization: Bearer <one
    of them>` (compared in constant time), else 401. Tokens are never logged or echoed."""

    def __init__(self, app, tokens):
        self.app, self.tokens = app, tuple(t.encode() for t in tokens)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.tokens or scope["path"] in PUBLIC_PATHS:
            return await self.app(scope, receive, send)
        given = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    given = token.strip()
        ok = False
        for token in self.tokens:  # no early exit: the time taken doesn't say which token came close
            ok |= hmac.compare_digest(given, token)
        if ok:
            return await self.app(scope, receive, send)
        body = json.dumps({"error": {"code": "unauthorized",
                                     "message": "This server needs a bearer token (Authorization: Bearer …)."}})
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body.encode()})
