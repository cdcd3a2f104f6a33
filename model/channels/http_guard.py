"""Network-facing guards for the REST API (docs/SECURITY.md): a header-read deadline and a per-client limit on
connections still sending their request at the HTTP protocol level (uvicorn has neither: a client trickling bytes
would hold its connections for ever, and crowd everyone else out), the uvicorn settings `serve` runs with, and
optional bearer tokens. Kept apart from model.channels.api so that each piece can be tested alone.
"""
from __future__ import annotations

import hmac
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

MAX_PENDING_PER_CLIENT = 8
"""Connections one client address may hold that are still sending a request (its headers or body, or idle between
requests). A new connection beyond this closes that client's oldest such connection: one slow or hostile client
can't take the server's connection slots, and its own new requests still get through. Behind a reverse proxy every
client shares the proxy's address, but a buffering proxy (nginx's default) sends each request whole and at once."""

MAX_CONNECTIONS = 64
"""Open connections uvicorn accepts (`serve --max-connections`); beyond it, requests are answered 503."""

PUBLIC_PATHS = frozenset({"/healthz"})
"""Paths answered without a token when tokens are configured (liveness probes)."""


class HeaderTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request's headers: a connection that hasn't sent a complete
    request line and headers within HEADER_TIMEOUT_S of connecting (or of the first byte of a later request on a
    kept-alive connection) is closed. And at most `max_pending_per_client` connections per client address may be
    pending (still sending a request, or idle): a new one closes that client's oldest pending connection. Pass it
    as `uvicorn.run(..., http=HeaderTimeoutH11Protocol)` (see uvicorn_options)."""

    header_timeout_s = HEADER_TIMEOUT_S
    max_pending_per_client = MAX_PENDING_PER_CLIENT
    _header_timer = None
    _since = 0.0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._since = self.loop.time()
        self._shed_oldest_pending()
        self._arm()

    def pending(self) -> bool:
        """Still sending a request (headers or body), or idle between requests: nothing the server works on."""
        return self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing()

    def _shed_oldest_pending(self) -> None:
        host = self.client[0] if self.client else None
        if host is None:
            return
        mine = sorted((c for c in self.connections if isinstance(c, HeaderTimeoutH11Protocol) and c is not self
                       and c.client and c.client[0] == host and c.pending()), key=lambda c: c._since)
        for oldest in mine[:max(0, len(mine) + 1 - self.max_pending_per_client)]:
            self.logger.info("closed a pending connection: its client holds more than %d",
                             self.max_pending_per_client)
            oldest.transport.close()

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


def uvicorn_options(max_connections: int = MAX_CONNECTIONS) -> dict:
    """The uvicorn settings `python -m model serve` runs with (tests start their servers with the same): header
    deadline and per-client pending limit (HeaderTimeoutH11Protocol), header size cap, short keep-alive, a
    connection limit, no server header. The body has its own deadline in model.channels.api (UPLOAD_TIMEOUT_S)."""
    return {"http": HeaderTimeoutH11Protocol, "timeout_keep_alive": KEEP_ALIVE_S,
            "h11_max_incomplete_event_size": MAX_HEADER_BYTES, "limit_concurrency": max_connections,
            "server_header": False}


def tokens_from_env() -> frozenset[str]:
    """$TORAX_API_TOKENS: comma-separated bearer tokens, each optionally named `name:token` (empty: no token
    needed)."""
    return frozenset(t.strip() for t in os.environ.get("TORAX_API_TOKENS", "").split(",") if t.strip())


def named_tokens(entries) -> dict[bytes, str]:
    """{token: name} from TORAX_API_TOKENS entries: `name:token` names its token (the name is what the record
    keeps as the user; the token after the first ':' may hold more); a bare token, which then can't contain ':', is
    named `token-` and the first 8 hex digits of its sha256, which tells tokens apart without revealing any."""
    import hashlib

    out = {}
    for entry in entries:
        name, sep, token = str(entry).strip().partition(":")
        if not sep or not name.strip():
            token, name = str(entry).strip(), f"token-{hashlib.sha256(str(entry).strip().encode()).hexdigest()[:8]}"
        if token.strip():
            out[token.strip().encode()] = name.strip()[:64]
    return out


class BearerAuth:
    """ASGI middleware: with tokens configured, every request but PUBLIC_PATHS needs `Authorization: Bearer <one
    of them>` (compared in constant time), else 401; the token's name is left in the request's state as `user`
    (model.channels.api records it). Tokens are never logged or echoed."""

    def __init__(self, app, tokens):
        self.app, self.named = app, named_tokens(tokens)
        self.tokens = tuple(self.named)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.tokens or scope["path"] in PUBLIC_PATHS:
            return await self.app(scope, receive, send)
        given = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    given = token.strip()
        ok, user = False, None
        for token in self.tokens:  # no early exit: the time taken doesn't say which token came close
            match = hmac.compare_digest(given, token)
            ok |= match
            user = self.named[token] if match else user
        if ok:
            scope.setdefault("state", {})["user"] = user
            return await self.app(scope, receive, send)
        body = json.dumps({"error": {"code": "unauthorized",
                                     "message": "This server needs a bearer token (Authorization: Bearer …)."}})
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body.encode()})
