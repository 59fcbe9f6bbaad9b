"""A file's bytes over HTTP, for the files API and share links alike.

Downloads: conditional requests (RFC 9110 section 13: ``If-Match``, ``If-None-Match``,
``If-Modified-Since``, ``If-Unmodified-Since``), one byte range (section 14: ``Range``,
``If-Range``; a multi-range request gets the whole file, which the RFC allows) and a
response streamed from the descriptor that was checked, in a thread, a chunk at a time.

Uploads: the request body streamed into an atomic :class:`~agora.files.store.Upload`,
never held whole in memory.
"""

from __future__ import annotations

import asyncio
import dataclasses
import mimetypes
import os
import re
from email.utils import formatdate, parsedate_to_datetime
from typing import BinaryIO, Mapping
from urllib.parse import quote

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from agora.core.errors import TooLarge
from agora.files.store import Entry, Upload, UserFiles

CHUNK = 1024 * 1024  # per thread hop: large enough that the hops cost nothing
# An upload whose client sends nothing for this long is dropped (and aborted), so a
# stalled client cannot hold a temporary file and a worker forever.
UPLOAD_IDLE_TIMEOUT = 300.0
# A user's document that a browser would run (HTML, SVG, XML) is shown sandboxed, with
# nothing active: else an uploaded page with scripts, shared by link, would run as us.
# Other types keep the site's CSP: a sandbox would stop the PDF viewer, for one.
FILE_CSP = "default-src 'none'; img-src 'self' data:; media-src 'self'; style-src 'unsafe-inline'; sandbox"
ACTIVE_TYPES = ("text/html", "application/xhtml+xml", "text/xml", "application/xml", "image/svg+xml")

_ETAG = re.compile(r'(?:W/)?"[^"]*"')
_RANGE = re.compile(r"\s*bytes\s*=\s*(\d{0,19})\s*-\s*(\d{0,19})\s*", re.IGNORECASE)


class RangeNotSatisfiable(Exception):
    pass


# -- validators -----------------------------------------------------------------------


def http_date(timestamp: float) -> str:
    return formatdate(timestamp, usegmt=True)


def parse_http_date(value: str) -> float | None:
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _tags(value: str) -> list[str]:
    return _ETAG.findall(value)


def _strong_match(tag: str, etag: str) -> bool:
    return not tag.startswith("W/") and tag == etag


def _weak_match(tag: str, etag: str) -> bool:
    return tag.removeprefix("W/") == etag.removeprefix("W/")


def preconditions(headers: Mapping[str, str], entry: Entry | None, method: str) -> int | None:
    """304 or 412 when the request's conditions say so (RFC 9110 13.2.2), else None.

    ``entry`` is the current version, None when there is none.
    """
    safe = method in ("GET", "HEAD")
    if_match = headers.get("if-match")
    if if_match is not None:
        if entry is None or (if_match.strip() != "*" and not any(_strong_match(t, entry.etag) for t in _tags(if_match))):
            return 412
    elif entry is not None and (since := headers.get("if-unmodified-since")) is not None:
        date = parse_http_date(since)
        if date is not None and int(entry.mtime) > date:
            return 412
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        if entry is not None and (if_none_match.strip() == "*"
                                  or any(_weak_match(t, entry.etag) for t in _tags(if_none_match))):
            return 304 if safe else 412
    elif safe and entry is not None and (since := headers.get("if-modified-since")) is not None:
        date = parse_http_date(since)
        # HTTP dates have whole seconds: a file changed within the second stays "unmodified".
        if date is not None and int(entry.mtime) <= date:
            return 304
    return None


def requested_range(headers: Mapping[str, str], entry: Entry) -> tuple[int, int] | None:
    """The one range asked for, as (first, last) byte offsets; None for the whole file.

    Raises RangeNotSatisfiable when the range starts past the end.
    """
    value = headers.get("range")
    if value is None:
        return None
    if_range = headers.get("if-range")
    if if_range is not None:
        if_range = if_range.strip()
        if not (_strong_match(if_range, entry.etag) or if_range == http_date(entry.mtime)):
            return None  # the client's copy is of another version: send this one whole
    match = _RANGE.fullmatch(value)
    if match is None or not (match.group(1) or match.group(2)):
        return None  # malformed, or several ranges: the RFC lets us send the whole file
    size = entry.size
    first, last = match.group(1), match.group(2)
    if first:
        start = int(first)
        if last and int(last) < start:
            return None  # invalid: ignored, as the RFC asks
        if start >= size:
            raise RangeNotSatisfiable()
        return start, min(int(last), size - 1) if last else size - 1
    suffix = int(last)
    if suffix == 0 or size == 0:
        raise RangeNotSatisfiable()
    return max(0, size - suffix), size - 1


def validator_headers(entry: Entry) -> dict[str, str]:
    return {"ETag": entry.etag, "Last-Modified": http_date(entry.mtime)}


def content_disposition(kind: str, name: str) -> str:
    fallback = "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\;%' else "_" for c in name) or "download"
    encoded = quote(name, safe="")
    if encoded == name:
        return f'{kind}; filename="{name}"'
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


def media_type(name: str) -> str:
    guessed, encoding = mimetypes.guess_type(name, strict=False)
    if guessed is None or encoding is not None:
        # report.txt.gz is gzip bytes, not text: labelled as its encoding would make a
        # browser unpack it behind the user's back.
        return "application/octet-stream"
    if guessed.startswith("text/") or guessed in ("application/json", "application/javascript", "image/svg+xml"):
        return f"{guessed}; charset=utf-8" if guessed.startswith("text/") else guessed
    return guessed


# -- downloads ------------------------------------------------------------------------


class FileDownload(Response):
    """``length`` bytes of ``handle`` from ``offset``, read in a thread a chunk at a time.

    The handle is the one whose stat made the headers, so the bytes match the ETag even
    if the file is replaced meanwhile (the old inode stays readable). It is closed when
    the response ends, however it ends.
    """

    def __init__(self, handle: BinaryIO, offset: int, length: int, *, status_code: int,
                 headers: Mapping[str, str]):
        self.handle = handle
        self.offset = offset
        self.length = length
        self.background = None
        self.status_code = status_code
        self.init_headers({**headers, "Content-Length": str(length)})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            if scope["method"] == "HEAD" or not self.length:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            async with anyio.create_task_group() as group:
                async def stream() -> None:
                    await self._stream(send)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                # ASGI 2.3 servers do not fail send() when the client has gone; the
                # disconnect arrives on receive(), and ends the transfer early.
                while (await receive())["type"] != "http.disconnect":
                    pass
                group.cancel_scope.cancel()
        finally:
            self.handle.close()

    async def _stream(self, send: Send) -> None:
        fd = self.handle.fileno()
        position, end = self.offset, self.offset + self.length
        while position < end:
            chunk = await run_in_threadpool(os.pread, fd, min(CHUNK, end - position), position)
            if not chunk:
                raise RuntimeError("the file shrank while it was being sent")
            position += len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": position < end})


def _open(files: UserFiles, path: str) -> tuple[Entry, BinaryIO]:
    entry = files.stat(path)
    handle = files.open(path)
    try:
        st = os.fstat(handle.fileno())
    except BaseException:
        handle.close()
        raise
    return dataclasses.replace(entry, size=st.st_size, mtime=st.st_mtime, mtime_ns=st.st_mtime_ns), handle


async def download(request: Request, files: UserFiles, path: str, *, disposition: str | None = None,
                   cache_control: str = "private, no-cache") -> tuple[Response, bool]:
    """The response to GET/HEAD of a file; and whether it sends the file from its first
    byte (what a share link counts as a download). ``disposition``: "attachment" (save
    it), "inline" (show it, saved under its own name), or None (no header)."""
    entry, handle = await run_in_threadpool(_open, files, path)
    try:
        headers = {**validator_headers(entry), "Cache-Control": cache_control, "Accept-Ranges": "bytes"}
        status = preconditions(request.headers, entry, request.method)
        if status is not None:
            handle.close()
            return Response(status_code=status, headers=headers), False
        try:
            span = requested_range(request.headers, entry)
        except RangeNotSatisfiable:
            handle.close()
            return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{entry.size}"}), False
        headers["Content-Type"] = kind = media_type(entry.name)
        if kind.split(";")[0] in ACTIVE_TYPES or kind.split(";")[0].endswith("+xml"):
            headers["Content-Security-Policy"] = FILE_CSP
        if disposition:
            headers["Content-Disposition"] = content_disposition(disposition, entry.name)
        if span is None:
            return FileDownload(handle, 0, entry.size, status_code=200, headers=headers), request.method == "GET"
        start, end = span
        headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
        response = FileDownload(handle, start, end - start + 1, status_code=206, headers=headers)
        return response, request.method == "GET" and start == 0
    except BaseException:
        handle.close()
        raise


# -- uploads --------------------------------------------------------------------------


async def receive_into(request: Request, upload: Upload, *, limit: int, offset: int = 0) -> int:
    """Write the request body into ``upload``; returns the number of bytes received.

    Raises TooLarge when the file would pass ``limit`` bytes (the body comes after
    ``offset`` kept ones), QuotaExceeded (from the upload), TimeoutError
    when the client stalls, ClientDisconnect when it goes away. The caller aborts the
    upload on any of them.
    """
    buffer = bytearray()
    received = 0
    stream = request.stream()
    try:
        while True:
            try:
                async with asyncio.timeout(UPLOAD_IDLE_TIMEOUT):
                    chunk = await anext(stream)
            except StopAsyncIteration:
                break
            received += len(chunk)
            if offset + received > limit:
                raise TooLarge(f"files are limited to {limit} bytes (files.max_upload)")
            buffer += chunk
            if len(buffer) >= CHUNK:
                await run_in_threadpool(upload.write, buffer)
                buffer.clear()
        if buffer:
            await run_in_threadpool(upload.write, buffer)
    finally:
        await stream.aclose()
    return received
