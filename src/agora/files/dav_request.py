"""One authenticated WebDAV request: whose tree, which path, and errors as HTTP statuses."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, TypeVar
from urllib.parse import unquote_to_bytes, urlsplit

import anyio.to_thread
from starlette.requests import Request

from agora.core.errors import AgoraError, Conflict, Forbidden, InvalidInput, NotFound, StorageFull, TooLarge
from agora.core.identity import User
from agora.core.runtime import Runtime
from agora.files.store import Entry, QuotaExceeded, UserFiles, split_path, virtual

T = TypeVar("T")


class DavError(Exception):
    """A reply other than success; ``condition`` names an RFC 4918 precondition, sent
    as a DAV:error body."""

    def __init__(self, status: int, detail: str = "", condition: str | None = None, content: str = "",
                 headers: dict[str, str] | None = None):
        super().__init__(detail or str(status))
        self.status = status
        self.detail = detail
        self.condition = condition
        self.content = content
        self.headers = headers or {}


# Most specific first: QuotaExceeded is a TooLarge.
_STATUSES: list[tuple[type[AgoraError], int]] = [
    (QuotaExceeded, 507), (StorageFull, 507), (TooLarge, 413), (NotFound, 404), (Conflict, 409),
    (Forbidden, 403), (InvalidInput, 400),
]


def status_of(error: AgoraError) -> int:
    for kind, status in _STATUSES:
        if isinstance(error, kind):
            return status
    return 500


def _without_default_port(netloc: str) -> str:
    host = netloc.rsplit("@", 1)[-1].lower()
    for port in (":80", ":443"):
        if host.endswith(port):
            return host[: -len(port)]
    return host


@dataclass
class Context:
    request: Request
    runtime: Runtime
    user: User
    files: UserFiles
    path: str  # the request's virtual path, normalised: "/" or "/a/b"
    root_path: str  # where the DAV tree is mounted, "/dav"

    @property
    def parts(self) -> list[str]:
        return split_path(self.path)

    @property
    def parent(self) -> str:
        return virtual(self.parts[:-1])

    def header(self, name: str) -> str | None:
        return self.request.headers.get(name)

    async def run(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A blocking store call, in a worker thread."""
        return await anyio.to_thread.run_sync(partial(function, *args, **kwargs))

    async def stat(self, path: str) -> Entry | None:
        try:
            return await self.run(self.files.stat, path)
        except NotFound:
            return None

    def depth(self, default: str, allowed: tuple[str, ...]) -> str:
        value = (self.header("depth") or default).strip().lower()
        if value not in allowed:
            raise DavError(400, f"Depth: {value} is not allowed here (use {' or '.join(allowed)})")
        return value

    async def body(self) -> bytes:
        """The whole request body, for the XML methods; capped like any in-memory body."""
        limit = self.runtime.config.http.max_json_body
        declared = self.header("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise DavError(413, f"XML request bodies are limited to {limit} bytes")
        chunks, size = [], 0
        async for chunk in self.request.stream():
            size += len(chunk)
            if size > limit:
                raise DavError(413, f"XML request bodies are limited to {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def local_path(self, url: str) -> str:
        """The virtual path a URL (Destination, If tags) names in this user's tree.

        Another server, or a place outside the DAV tree, is refused with 502 Bad Gateway,
        as RFC 4918 says for a COPY or MOVE the server cannot carry out itself.
        """
        parsed = urlsplit(url.strip())
        if parsed.netloc:
            if _without_default_port(parsed.netloc) != _without_default_port(self.header("host") or ""):
                raise DavError(502, "the URL names another server")
        prefix = self.root_path + "/"
        if parsed.path != self.root_path and not parsed.path.startswith(prefix):
            raise DavError(502, f"the URL is outside {prefix}")
        try:
            # Header values arrive as latin-1 text: back to the bytes sent, then UTF-8.
            path = unquote_to_bytes(parsed.path[len(self.root_path):].encode("latin-1")).decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            raise DavError(400, "the URL is not UTF-8") from None
        return virtual(split_path(path))
