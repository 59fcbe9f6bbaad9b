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

Per request it also skips what uvicorn does for every request but a kept page does not
need: the ASGI scope (built only when the request goes to the app) and a keep-alive
timer armed and cancelled (one lazy timer per connection instead, see ``_completed``).
Measured in-process, these, the metrics kept as plain counts
(:class:`agora.core.metrics.HttpRequests`) and the disk looked at no more than once a
second per kept file (``sites.RECHECK``) took the Python time of a kept page from about
20 to 7 microseconds.

It leans on uvicorn's protocol attributes (``url``, ``headers``, ``parser``, ``cycle``,
``flow``, ``pipeline``, ``loop``, ``timeout_keep_alive``, ``server_state``,
``on_message_begin``); tests/test_sites.py drives it in-process, so an upgrade of
uvicorn that changes them shows up in the tests.
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
        _defaults: tuple[Any, bytes] = (None, b"")  # uvicorn's default headers, serialized
        _begun = 0  # requests begun on this connection
        _begun_when_armed = 0
        _idle_timer: Any = None  # the keep-alive check of answers given here

        def on_message_begin(self) -> None:
            self._begun += 1
            # The head deadline's stamps (web/guard.py), which uvicorn's own
            # on_message_begin, skipped here, would keep.
            if not self._head_started:
                self._head_started = self.loop.time()
            self._head_begun = True
            # uvicorn builds the request's ASGI scope here (a dict and a copy of the app
            # state): a kept page needs none, so it is built only for the app (below).
            self.url = b""
            self.expect_100_continue = False
            self.headers = []

        def on_headers_complete(self) -> None:
            if self.url[:2] == b"/~" and self._answer_kept():
                self._head_started = 0.0
                self._head_begun = False
                return
            url, headers, expect = self.url, self.headers, self.expect_100_continue
            super().on_message_begin()
            self.url, self.expect_100_continue = url, expect
            self.headers.extend(headers)  # the list the new scope holds
            super().on_headers_complete()

        def _default_headers(self) -> bytes:
            # uvicorn replaces the list each second (its Date header): serialized once per list.
            headers = self.server_state.default_headers
            cached = SitesProtocol._defaults
            if cached[0] is not headers:
                cached = SitesProtocol._defaults = (headers, serialize(headers))
            return cached[1]

        # Keep-alive. uvicorn arms a timer after each response and cancels it when the
        # next request's first bytes arrive: a sixth of the cost of a kept page. After
        # answers given here one timer per connection is armed instead, and when it fires
        # it closes the connection if no request has begun since it was armed, else
        # looks again one period later: an idle connection goes after one to two periods.

        def _completed(self) -> None:
            """uvicorn's on_response_complete, for an answer given here."""
            self.server_state.total_requests += 1
            if self.transport.is_closing():
                return
            self.flow.resume_reading()
            if self._idle_timer is None:
                self._arm_idle()

        def _arm_idle(self) -> None:
            self._begun_when_armed = self._begun
            self._idle_timer = self.loop.call_later(self.timeout_keep_alive, self._idle_check)

        def _idle_check(self) -> None:
            self._idle_timer = None
            if self.cycle is not ANSWERED or self.transport.is_closing():
                return  # the app's responses arm uvicorn's own timer
            if self._begun == self._begun_when_armed:
                self.transport.close()
            else:
                self._arm_idle()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
                self._idle_timer = None
            super().connection_lost(exc)

        def _answer_kept(self) -> bool:
            if self.pipeline:
                return False  # uvicorn starts those when the app's response completes
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                return False  # answers go out in order: this one waits behind the other
            if self.flow.write_paused:
                return False
            parser = self.parser
            method = parser.get_method()
            if method != b"GET" and method != b"HEAD":
                return False
            if (parser.get_http_version() != "1.1" or not parser.should_keep_alive()
                    or parser.should_upgrade()):
                return False
            path = self.url
            if b"?" in path:
                path = path.partition(b"?")[0]
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
            self.transport.write(b"".join((STATUS_LINE[status], self._default_headers(), block, b"\r\n", body)))
            self.cycle = ANSWERED
            self._completed()
            SitesProtocol.answered += 1
            sites.observe(method.decode(), status, time.perf_counter() - started, self.client, key)
            return True

    return SitesProtocol
