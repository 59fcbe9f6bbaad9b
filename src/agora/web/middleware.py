"""ASGI middleware: metrics and access log, body size limit, security headers."""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agora.core import looplag
from agora.core.metrics import Metrics
from agora.web.problems import MEDIA_TYPE

access_log = logging.getLogger("agora.http")


SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]
PAGE_CSP = (b"default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
            b"frame-ancestors 'none'; form-action 'self'; base-uri 'self'")


class _RequestActivity(looplag.Activity):
    """A request's activity: its user is known only once a route has authenticated them
    (``request.state.user``), so it is read when the watchdog asks."""

    __slots__ = ("state",)

    def __init__(self, command: str, state: dict[str, Any]):
        super().__init__("http", None, command)
        self.state = state

    def __str__(self) -> str:
        self.user = getattr(self.state.get("user"), "name", None)
        return super().__str__()


class ObserveMiddleware:
    """Count and time every request by route template, and log one access line each."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        # The warning quotes the command with repr(): a control character in a path is escaped there.
        looplag.attach(_RequestActivity(f"{scope['method']} {scope['path']}", scope.setdefault("state", {})))

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            # The template (/api/v1/users/{name}), never the raw path: labels stay few.
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.http.record(method, template, status, elapsed)
            client = scope.get("client") or ("-", 0)
            # json.dumps escapes control characters: a request for "/%00" must not put
            # a NUL in the log.
            access_log.info('%s "%s %s" %d %.1fms', client[0], method, json.dumps(scope["path"])[1:-1],
                            status, elapsed * 1000)


class BodyLimitMiddleware:
    """413 for request bodies over the limit, declared or streamed, of whatever type:
    every route but the streaming ones has its body read whole by the framework (a JSON
    route reads an octet-stream body too, before refusing it)."""

    def __init__(self, app: ASGIApp, limit: int, streaming: re.Pattern[str] | None = None):
        self.app = app
        self.limit = limit
        # Routes that stream bodies of any type to disk (file uploads, WebDAV PUT,
        # imports) enforce their own limits; a JSON file is still a file there.
        self.streaming = streaming

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self.streaming is not None and self.streaming.match(scope["path"])):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._too_large(send)
            return
        # Read the (small, capped) body here and replay it, so that an oversize
        # stream is refused before any route sees it.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send) -> None:
        body = json.dumps({"type": "urn:agora:problem:too-large", "title": "Content too large",
                           "status": 413, "detail": f"request bodies of this type are limited to {self.limit} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers: list[Any] = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                for name, value in SECURITY_HEADERS:
                    if name not in present:
                        headers.append((name, value))
                if b"content-security-policy" not in present:
                    headers.append((b"content-security-policy", PAGE_CSP))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_wrapper)
