"""The ASGI layers around the app: HEAD answered as GET, the request body's size and read-time
limits, and the security headers, which wrap everything else so that every response carries them, a
500 included."""

from __future__ import annotations

import asyncio
import time

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY_BYTES = 1 << 20  # 1 MiB
# Seconds the app waits for the next piece of a request body that has not all arrived. uvicorn has
# no such limit of its own (its --timeout-keep-alive covers idle connections between requests), so a
# client sending less than its Content-Length held a worker's connection open with no answer.
BODY_READ_TIMEOUT_S = 30.0
CONTENT_SECURITY_POLICY = "default-src 'self'; img-src 'self' data:; style-src 'self'"
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]


class BodyTooLarge(HTTPException):
    def __init__(self) -> None:
        super().__init__(status_code=413, detail=f"request body over {MAX_BODY_BYTES} bytes")


class BodyTimeout(Exception):
    """Not an HTTPException: it passes the app's error handlers to ``LimitBody``, whose plain 408
    closes the connection (the rest of that body may still be on its way)."""

    status_code = 408

    def __init__(self, seconds: float) -> None:
        self.detail = f"the request body did not arrive within {seconds:g} s"
        super().__init__(self.detail)


class LimitBody:
    """413 for a body over ``limit`` bytes: at once when Content-Length says so, else while the body
    streams in (the count is kept on every chunk the app reads). 408, closing the connection, when
    the next chunk of an unfinished body takes over ``read_timeout`` seconds to arrive."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES, read_timeout: float = BODY_READ_TIMEOUT_S) -> None:
        self.app, self.limit, self.read_timeout = app, limit, read_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None and (not length.strip().isdigit() or int(length) > self.limit):
            await plain(send, 413 if length.strip().isdigit() else 400, "request body too large or bad length")
            return
        received, started, complete = 0, False, False

        async def counting_receive() -> Message:
            nonlocal received, complete
            if complete:  # the body is in: waiting now is for a disconnect, which has no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.read_timeout)
            except TimeoutError:
                raise BodyTimeout(self.read_timeout) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > self.limit:
                    raise BodyTooLarge()
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except (BodyTooLarge, BodyTimeout) as exc:
            if started:
                raise
            await plain(send, exc.status_code, exc.detail)


class HeadAsGet:
    """HEAD wherever GET is (RFC 9110 §9.3.2): the request runs as a GET, and only its status and
    headers go out. FastAPI registers a ``@get`` route for GET alone, so without this HEAD is 405."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


class SecurityHeaders:
    """CSP without 'unsafe-inline', nosniff, no framing, same-origin referrers on every response;
    dynamic pages (they hold CSRF tokens and people's labels) are never cached. Also a
    ``Server-Timing`` header with the time the app took until its response started.

    Starlette answers an unhandled exception outside every middleware, without these headers; so
    this layer answers it itself (a plain 500, with them) and re-raises, for the server to log."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/static/")
        started_at, started = time.perf_counter(), False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in dict(SECURITY_HEADERS)]
                headers += SECURITY_HEADERS
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                # the app's own time on the request, for benchmarks/app.py and browsers' dev tools
                elapsed_ms = (time.perf_counter() - started_at) * 1000
                headers.append((b"server-timing", f"app;dur={elapsed_ms:.2f}".encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            if not started:
                await plain(send_with_headers, 500, "Internal Server Error")
            raise


async def plain(send: Send, status: int, text: str) -> None:
    body = text.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
