"""Users' sites: ``DATA_DIR/files/<user>/public/`` served at ``/~user/``.

Freshness. Small files are kept in memory (``sitecache.py``) keyed by the request path
and checked against one ``lstat`` per request (inode, size, mtime), so a file replaced
by FTP, WebDAV or the API is served at once: nothing is kept that a stat would not
notice. Misses go through the store (:class:`~agora.files.store.UserFiles`), which owns
path safety: symlinks anywhere, ``..`` and control characters are refused there. A hit
is safe without that walk because it serves the bytes of the very inode the store vetted.

Speed. :class:`SitesFastPath` wraps the web app so that ``/~`` requests skip routing
and the middleware stack, and its ``http_protocol`` answers kept files straight from
uvicorn's protocol callback, without an ASGI task (``site_protocol.py``): that is what
brings a small page near nginx's rate. Without the wrapper, ``router`` serves the same.

Isolation. Users' pages share the web UI's origin, and with it the session cookie: a
script on a user's page could otherwise fetch /api/ or the UI as its visitor. So every
site response carries ``Content-Security-Policy: sandbox ...`` without
``allow-same-origin``: the page runs in an opaque origin, cookies and storage of this
origin are out of its reach, and its requests to the UI are cross-site (Lax cookies are
not sent, answers are unreadable). Scripts, forms and popups still work. Because the
page's own origin is opaque, its module scripts, fonts and fetches of its own files are
cross-origin too; site files are public, so ``Access-Control-Allow-Origin: *`` lets
those work without exposing anything that is not already public.
"""

from __future__ import annotations

import asyncio
import html
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter
from sqlalchemy import select, update
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from agora.core.database import RETRY_AFTER, Database, unavailable
from agora.core.errors import AgoraError, InvalidInput, NotFound
from agora.core.identity import validate_name
from agora.core.runtime import Runtime
from agora.files import httpfile
from agora.files.access import file_store
from agora.files.sitecache import (CACHE_CONTROL, CACHE_FILE_MAX, COMMON, CachedFile, Headers, Reply, asked_of,
                                   plan)
from agora.files.store import FileStore, UserFiles, split_path, virtual
from agora.files.tables import site_settings
from agora.web.sendfile import ZEROCOPY

PUBLIC = "public"
# How long "this user exists and is enabled" is believed: a deleted or disabled user's
# site goes dark within this; the UI's own changes take effect at once.
OWNER_TTL = 5.0
# How long a kept file is believed unchanged on disk without a look (lstat, which cost
# about as much as the rest of answering a kept page), while nothing was written through
# this process's file store: FTP, WebDAV and API uploads show at once, files changed by
# another node or behind Agora's back within this.
RECHECK = 1.0
MAX_OWNERS = 10_000
CACHE_BYTES = 64 * 1024**2
CHUNK = 1024**2
ROUTE = "/~{user}/{path}"  # the metrics label

access_log = logging.getLogger("agora.http")

NOT_FOUND_PAGE = (b"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>404 Not Found</title></head>"
                  b"<body><h1>Not Found</h1><p>There is no page at this address.</p></body></html>\n")


# -- site settings (the files service's site_settings table) -------------------------


async def listings_enabled(db: Database, user_id: int) -> bool:
    async with db.read() as conn:
        value = (await conn.execute(select(site_settings.c.listings)
                                    .where(site_settings.c.user_id == user_id))).scalar()
    return bool(value)


async def set_listings(db: Database, user_id: int, enabled: bool) -> None:
    async with db.write() as conn:
        changed = await conn.execute(update(site_settings).where(site_settings.c.user_id == user_id)
                                     .values(listings=int(enabled)))
        if changed.rowcount == 0:
            await conn.execute(site_settings.insert().values(user_id=user_id, listings=int(enabled)))


# -- owners -------------------------------------------------------------------------


@dataclass(frozen=True)
class Owner:
    name: str
    user_id: int
    listings: bool


class Owners:
    """Site owners by name, believed for OWNER_TTL: a site must not query the database
    on every request."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self._known: dict[str, tuple[float, Owner | None]] = {}

    def current(self, name: str, now: float) -> bool:
        """Whether ``name`` is known to own a site at ``now`` (time.monotonic())."""
        known = self._known.get(name)
        return known is not None and known[1] is not None and known[0] > now

    async def get(self, name: str) -> Owner | None:
        known = self._known.get(name)
        if known is not None and known[0] > time.monotonic():
            return known[1]
        owner = None
        user = await self.runtime.identity.find_user(name)
        if user is not None and not user.disabled:
            owner = Owner(user.name, user.id, await listings_enabled(self.runtime.db, user.id))
        if len(self._known) >= MAX_OWNERS:
            self._known.clear()
        self._known[name] = (time.monotonic() + OWNER_TTL, owner)
        return owner

    def forget(self, name: str) -> None:
        self._known.pop(name, None)


# -- the server ---------------------------------------------------------------------


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _answer(send: Send, status: int, headers: Headers, body: bytes, head: bool) -> int:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})
    return status


class Sites:
    """Answers GET and HEAD for ``/~user/...``; one per process (see :func:`site_server`)."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.store: FileStore = file_store(runtime)
        self.owners = Owners(runtime)
        self.cache: OrderedDict[str, CachedFile] = OrderedDict()
        self.cached_bytes = 0

    # -- the cache ----------------------------------------------------------------------

    def _keep(self, item: CachedFile) -> None:
        self._drop(item.key)
        self.cache[item.key] = item
        self.cached_bytes += item.cost
        self._trim()

    def _drop(self, path: str) -> None:
        old = self.cache.pop(path, None)
        if old is not None:
            self.cached_bytes -= old.cost

    def _trim(self) -> None:
        while self.cached_bytes > CACHE_BYTES and self.cache:
            _, old = self.cache.popitem(last=False)
            self.cached_bytes -= old.cost

    def forget_owner(self, name: str) -> None:
        """Called by the UI when a user changes their site settings."""
        self.owners.forget(name)

    def _unchanged(self, path: str, now: float) -> CachedFile | None:
        """The kept file for a request path, if it is still the file on disk."""
        item = self.cache.get(path)
        if item is None:
            return None
        generation = self.store.generation  # read before looking: a change during the look shows next time
        if item.seen == generation and now < item.fresh_until:
            return item
        try:
            st = os.lstat(item.real)
        except OSError:
            st = None
        if st is not None and item.same_file(st):
            item.seen, item.fresh_until = generation, now + RECHECK
            return item
        self._drop(path)
        return None

    def kept(self, path: str) -> CachedFile | None:
        """The kept file for a request path when it can be served without awaiting
        anything: unchanged on disk, and its owner known to be current."""
        now = time.monotonic()
        item = self._unchanged(path, now)
        if item is None or not self.owners.current(item.owner, now):
            return None
        self.cache.move_to_end(path)
        return item

    def observe(self, method: str, status: int, elapsed: float, client: Any, path: str) -> None:
        """The metrics and access log line that the app's middleware records for others."""
        self.runtime.metrics.http.record(method, ROUTE, status, elapsed)
        if access_log.isEnabledFor(logging.INFO):
            access_log.info('%s "%s %s" %d %.1fms', (client or ("-", 0))[0], method, path, status, elapsed * 1000)

    # -- requests -----------------------------------------------------------------------

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> int:
        """Answer one request; returns the status sent."""
        try:
            return await self._handle(scope, receive, send)
        except Exception as error:
            # Outside the app's error handlers (the fast path wraps the app): a blip of
            # the database, met looking up the site's owner, is said here, as they say it.
            if not unavailable(error):
                raise
            access_log.warning("%s: the database is unavailable: %s", scope["path"][:200], type(error).__name__)
            body = b"Temporarily unavailable; try again.\n"
            return await _answer(send, 503, [(b"content-type", b"text/plain; charset=utf-8"),
                                             (b"content-length", str(len(body)).encode()),
                                             (b"retry-after", str(RETRY_AFTER).encode())] + COMMON,
                                 body, scope["method"] == "HEAD")

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> int:
        method = scope["method"]
        if method != "GET" and method != "HEAD":
            return await _answer(send, 405, [(b"allow", b"GET, HEAD"), (b"content-length", b"0")] + COMMON,
                                 b"", True)
        head = method == "HEAD"
        path = scope["path"]
        now = time.monotonic()
        item = self._unchanged(path, now)
        # An owner believed too long is looked up again, keeping the file (and the
        # compressed forms made of it) when they are still there.
        if item is not None and (self.owners.current(item.owner, now) or await self.owners.get(item.owner)):
            if self.cache.get(path) is item:  # it may have gone while the owner was looked up
                self.cache.move_to_end(path)
            return await self._serve(item, scope, receive, send, head)
        return await self._resolve(scope, receive, send, path, head)

    async def _resolve(self, scope: Scope, receive: Receive, send: Send, path: str, head: bool) -> int:
        name, slash, rest = path[2:].partition("/")
        try:
            validate_name(name)
            parts = split_path(rest)
        except InvalidInput:
            return await self._not_found(send, head)
        if any(part.startswith(".") for part in parts):
            return await self._not_found(send, head)
        owner = await self.owners.get(name)
        if owner is None:
            return await self._not_found(send, head)
        if not slash:
            return await self._redirect(scope, send, head)
        files = self.store.for_user(owner.name, 0)
        target = [PUBLIC, *parts]
        try:
            if files.stat(virtual(target)).is_dir:
                if not path.endswith("/"):
                    return await self._redirect(scope, send, head)
                index = target + ["index.html"]
                try:
                    has_index = not files.stat(virtual(index)).is_dir
                except NotFound:
                    has_index = False
                if not has_index:
                    if owner.listings:
                        return await self._listing(send, files, target, path, head)
                    return await self._not_found(send, head)
                target = index
            elif path.endswith("/"):
                return await self._not_found(send, head)
            handle = files.open(virtual(target))
        except AgoraError:
            return await self._not_found(send, head)
        with handle:
            st = os.fstat(handle.fileno())
            body = None
            if st.st_size <= CACHE_FILE_MAX:
                body = await asyncio.to_thread(handle.read)
                if len(body) != st.st_size:  # written in place behind the store's back
                    return await self._not_found(send, head)
            item = CachedFile(key=path, owner=owner.name, real=str(files.root.joinpath(*target)), dev=st.st_dev,
                              ino=st.st_ino, size=st.st_size, mtime_ns=st.st_mtime_ns, mtime=st.st_mtime,
                              kind=httpfile.content_type(target[-1]), body=body)
            self._keep(item)
            return await self._serve(item, scope, receive, send, head, handle.fileno())

    async def _serve(self, item: CachedFile, scope: Scope, receive: Receive, send: Send, head: bool,
                     fd: int | None = None) -> int:
        asked = asked_of(scope["headers"])
        reply = plan(item, asked)
        if reply.compress is not None:
            await self._compress(item, reply.compress, fd)
            reply = plan(item, asked)
        if reply.stream is not None:
            return await self._stream(item, scope, receive, send, reply, head, fd)
        return await _answer(send, reply.status, reply.headers, reply.body, head or reply.status == 304)

    async def _compress(self, item: CachedFile, encoding: str, fd: int | None) -> None:
        source = item.body
        if source is None:
            source = await asyncio.to_thread(self._read_whole, item, fd)
        data = None
        if source is not None:
            data = await asyncio.to_thread(httpfile.compress, source, encoding)
            if len(data) >= item.size:
                data = None  # does not shrink: identity it is (the Vary header still holds)
        grown = item.add_variant(encoding, data)
        if self.cache.get(item.key) is item:
            self.cached_bytes += grown
            self._trim()

    @staticmethod
    def _read_whole(item: CachedFile, fd: int | None) -> bytes | None:
        own = fd is None
        if own:
            try:
                fd = os.open(item.real, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                return None
        try:
            if not item.same_file(os.fstat(fd)):
                return None
            data = os.pread(fd, item.size, 0)
            return data if len(data) == item.size else None
        finally:
            if own:
                os.close(fd)

    async def _stream(self, item: CachedFile, scope: Scope, receive: Receive, send: Send, reply: Reply,
                      head: bool, fd: int | None) -> int:
        assert reply.stream is not None
        offset, length = reply.stream
        own = fd is None
        if own:
            try:
                fd = os.open(item.real, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                return await self._not_found(send, head)
        try:
            # Checked on the open descriptor: the path may have been replaced since lstat.
            if not item.same_file(os.fstat(fd)):
                return await self._not_found(send, head)
            await send({"type": "http.response.start", "status": reply.status, "headers": reply.headers})
            if head or not length:
                await send({"type": "http.response.body", "body": b""})
                return reply.status
            if ZEROCOPY in scope.get("extensions", ()):
                # The server sends the bytes from the page cache itself (sendfile), and
                # notices a client that goes away.
                await send({"type": ZEROCOPY, "file": fd, "offset": offset, "count": length})
                return reply.status
            # An ASGI server's send() does not fail once the client has gone (the news
            # comes through receive()): without this watch, a dropped download of a
            # large file would still be read to its end.
            gone = asyncio.get_running_loop().create_task(_disconnected(receive))
            try:
                end = offset + length
                while offset < end and not gone.done():
                    chunk = await asyncio.to_thread(os.pread, fd, min(CHUNK, end - offset), offset)
                    if not chunk:
                        # Truncated in place behind the store's back: the Content-Length
                        # sent cannot be honoured, so the connection is dropped (by the server).
                        raise OSError(f"{item.real} shrank while being sent")
                    offset += len(chunk)
                    await send({"type": "http.response.body", "body": chunk, "more_body": offset < end})
            finally:
                gone.cancel()
            return reply.status
        finally:
            if own:
                os.close(fd)

    # -- other answers ------------------------------------------------------------------

    async def _not_found(self, send: Send, head: bool) -> int:
        headers = [(b"content-type", b"text/html; charset=utf-8"),
                   (b"content-length", str(len(NOT_FOUND_PAGE)).encode()), CACHE_CONTROL] + COMMON
        return await _answer(send, 404, headers, NOT_FOUND_PAGE, head)

    async def _redirect(self, scope: Scope, send: Send, head: bool) -> int:
        location = (scope.get("raw_path") or quote(scope["path"]).encode()) + b"/"
        if scope.get("query_string"):
            location += b"?" + scope["query_string"]
        return await _answer(send, 301, [(b"location", location), (b"content-length", b"0"), CACHE_CONTROL] + COMMON,
                             b"", True)

    async def _listing(self, send: Send, files: UserFiles, target: list[str], path: str, head: bool) -> int:
        entries = [entry for entry in files.list(virtual(target)) if not entry.name.startswith(".")]
        shown = html.escape(path)
        rows = [] if len(target) == 1 else ['<tr><td><a href="../">../</a></td><td></td><td></td></tr>']
        for entry in entries:
            name = entry.name + ("/" if entry.is_dir else "")
            rows.append(f'<tr><td><a href="{quote(name)}">{html.escape(name)}</a></td>'
                        f'<td>{"" if entry.is_dir else entry.size}</td>'
                        f'<td>{time.strftime("%Y-%m-%d %H:%M", time.gmtime(entry.mtime))}</td></tr>')
        body = ("<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Index of " + shown + "</title></head>"
                "<body><h1>Index of " + shown + "</h1><table><thead><tr><th>Name</th><th>Size</th>"
                "<th>Modified (UTC)</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table></body></html>\n"
                ).encode()
        headers = [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(body)).encode()),
                   CACHE_CONTROL] + COMMON
        return await _answer(send, 200, headers, body, head)


def site_server(runtime: Runtime) -> Sites:
    return runtime.shared("files.sites", lambda: Sites(runtime))


class SitesFastPath:
    """Wraps the web app: ``/~...`` requests are answered here, everything else passes
    through; ``http_protocol`` is the uvicorn protocol class to serve it with."""

    def __init__(self, app: ASGIApp, runtime: Runtime):
        self.app = app
        self.sites = site_server(runtime)
        from agora.files.site_protocol import protocol_for
        self.http_protocol = protocol_for(self.sites)

    def __getattr__(self, name: str) -> Any:
        # Stands in for the app it wraps (``.state``, ``.url_path_for``...).
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/~"):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        try:
            status = await self.sites.handle(scope, receive, send)
        finally:
            self.sites.observe(scope["method"], status, time.perf_counter() - started, scope.get("client"),
                               scope["path"])


class _SiteEndpoint:
    """The same handler as a route of the app, for when the fast path is not wired in."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await site_server(scope["app"].state.runtime).handle(scope, receive, send)


router = APIRouter(include_in_schema=False)
router.routes.append(Route("/~{rest:path}", _SiteEndpoint(), include_in_schema=False))
