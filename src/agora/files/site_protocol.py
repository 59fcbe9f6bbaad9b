"""Users' sites answered from uvicorn's protocol callback when nothing has to be awaited.

uvicorn runs every request as an asyncio task through the ASGI app. For a small page
already in memory that machinery (task, event, two writes) costs more than the answer
itself: measured here it halves the request rate. So this subclass of uvicorn's
httptools protocol looks at each request as soon as its headers are parsed: a GET or
HEAD for a kept site file (:meth:`Sites.kept`, still checked against the disk) whose
answer :func:`plan` can give without I/O is written out in one piece, right there.
Everything else (other paths, misses, large files, compression still to do, pipelined
requests behind an unfinished answer, HTTP/1.0, ``Connection: close``, a client not
reading) goes to uvicorn exactly as before. The class builds on
:func:`agora.web.sendfile.sendfile_protocol`, so large files that do go through the
app are sent with sendfile(2) (see ``Sites._stream``).

It leans on uvicorn's protocol attributes (``url``, ``headers``, ``parser``, ``cycle``,
``flow``, ``on_response_complete``); tests/test_sites.py checks that kept pages are
answered here, so an upgrade of uvicorn that changes them shows up in the tests.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from agora.files.sitecache import asked_of, plan, serialize
from agora.web.sendfile import sendfile_protocol

if TYPE_CHECKING:
    from agora.files.sites import Sites


class _Event:
    def set(self) -> None:
        pass


class _Answered:
    """Stands for the request cycle of a request answered here: uvicorn's later
    callbacks (body, message complete, connection lost) then see a finished cycle."""

    response_complete = True
    disconnected = False
    keep_alive = True
    message_event = _Event()


ANSWERED = _Answered()


def protocol_for(sites: "Sites") -> Any:
    """The uvicorn ``http`` protocol class serving ``sites`` (and zero-copy file
    bodies); "auto" without httptools."""
    base = sendfile_protocol()
    if base == "auto":  # pragma: no cover - httptools is a dependency on CPython
        return "auto"
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE

    class SitesProtocol(base):  # type: ignore[misc, valid-type]
        answered = 0  # requests answered here, for the tests

        def on_headers_complete(self) -> None:
            if self.url[:2] != b"/~" or not self._answer_kept():
                super().on_headers_complete()

        def _answer_kept(self) -> bool:
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                return False  # answers go out in order: this one waits behind the other
            if self.flow.write_paused:
                return False
            parser = self.parser
            method = parser.get_method()
            if method != b"GET" and method != b"HEAD":
                return False
            if parser.get_http_version() != "1.1" or not parser.should_keep_alive():
                return False
            path, _, _ = self.url.partition(b"?")
            if b"%" in path:
                return False  # uvicorn decodes it; the kept files are keyed by the decoded path
            started = time.perf_counter()
            try:
                key = path.decode("ascii")
            except UnicodeDecodeError:
                return False
            item = sites.kept(key)
            if item is None:
                return False
            reply = plan(item, asked_of(self.headers))
            if not reply.complete:
                return False
            status = reply.status
            body = b"" if method == b"HEAD" or status == 304 else reply.body
            block = reply.block if reply.block is not None else serialize(reply.headers)
            self.transport.write(b"".join((STATUS_LINE[status], serialize(self.server_state.default_headers),
                                           block, b"\r\n", body)))
            self.cycle = ANSWERED
            self.on_response_complete()
            SitesProtocol.answered += 1
            sites.observe(method.decode(), status, time.perf_counter() - started, self.client, key)
            return True

    return SitesProtocol
