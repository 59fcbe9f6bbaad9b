"""What uvicorn leaves open on an HTTP connection: a deadline for the request head, and
a limit on the connections of one address.

uvicorn times only the idle time after a response (keep-alive). Before the first
request, and once a request's first byte has come, it waits for ever: 2,050 silent
connections from one address took every slot of ``http.max_connections``, and every
other client got 503 for as long as they stayed; a client sending a byte every five
seconds did the same. Here the whole head (request line and headers) has
``http.header_timeout``, counted from the connection's start (first request) or from
the request's first byte (later ones) and not renewed by the bytes that trickle in;
and one address holds at most ``http.max_connections_per_ip`` connections per listener
(trusted proxies excepted, as every client comes through them), as every other
listener's per-address limit does. Beyond it the connection is told 503 and closed at
once, before anything of it is read.

The deadline costs no timer per request: one timer per connection looks at the time
the head in progress began and re-arms itself, so a head is cut off one to two
timeouts after it began. (The sites' fast path answers most requests without a task
or a timer of uvicorn's; it keeps the two stamps below up to date itself.)

It leans on uvicorn's protocol attributes (``server_state``, ``client``, ``cycle``,
``loop``, ``transport``); tests/test_connection_limits.py runs it in a server.
"""

from __future__ import annotations

import ipaddress
from functools import cache
from typing import Any

REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
           b"Retry-After: 5\r\nConnection: close\r\nContent-Length: 39\r\n\r\n"
           b"Too many connections from your address\n")
TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


class Guard:
    """One listener's limits and the connections it holds per client address (kept on
    uvicorn's ServerState as ``guard``, where each connection's protocol finds it)."""

    def __init__(self, header_timeout: float, per_address: int, trusted: list[str]):
        self.header_timeout = header_timeout
        self.per_address = per_address
        self.trusted = [ipaddress.ip_network(network, strict=False) for network in trusted]
        self.counts: dict[str, int] = {}

    def admit(self, address: str) -> bool:
        count = self.counts.get(address, 0)
        if count >= self.per_address and not self._trusted(address):
            return False
        self.counts[address] = count + 1
        return True

    def release(self, address: str) -> None:
        count = self.counts.get(address, 1) - 1
        if count > 0:
            self.counts[address] = count
        else:
            self.counts.pop(address, None)

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.trusted)


@cache
def guarded_protocol() -> Any:
    """uvicorn's httptools protocol with the head deadline and the per-address limit;
    None without httptools."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # pragma: no cover - httptools is a dependency on CPython
        return None

    class GuardedProtocol(HttpToolsProtocol):
        # Loop time the head being waited for began (the connection's start, or its
        # request's first byte); 0 while none is awaited (a request being answered).
        _head_started = 0.0
        _head_begun = False  # some of that head has arrived
        _head_timer: Any = None
        _guard: Guard | None = None
        _address = ""
        _refused = False

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            guard = getattr(self.server_state, "guard", None)
            if guard is None:  # not run by the web service (the tests' in-process protocol)
                super().connection_made(transport)
                return
            peer = transport.get_extra_info("peername")
            address = str(peer[0]) if isinstance(peer, tuple) else ""
            if not guard.admit(address):
                # Turned away before uvicorn sets the connection up: a flood of them
                # should cost as little as can be.
                self._refused = True
                self.transport = transport
                transport.write(REFUSAL)
                transport.close()
                return
            super().connection_made(transport)
            self._guard, self._address = guard, address
            self._head_started = self.loop.time()
            self._head_timer = self.loop.call_later(guard.header_timeout, self._check_head)

        def data_received(self, data: bytes) -> None:
            if not self._refused:
                super().data_received(data)

        def on_message_begin(self) -> None:
            if not self._head_started:
                self._head_started = self.loop.time()
            self._head_begun = True
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._head_started = 0.0
            self._head_begun = False
            super().on_headers_complete()

        def _check_head(self) -> None:
            self._head_timer = None
            guard = self._guard
            if guard is None or self.transport.is_closing():
                return
            now = self.loop.time()
            started = self._head_started
            cycle = self.cycle
            if started and cycle is not None and not cycle.response_complete:
                # A pipelined head behind a response still going out: uvicorn may have
                # stopped reading meanwhile, so its time starts once that is done.
                started = self._head_started = now
            if started and now - started >= guard.header_timeout:
                if self._head_begun:
                    self.transport.write(TIMED_OUT)
                self.transport.close()
                return
            delay = guard.header_timeout - (now - started) if started else guard.header_timeout
            self._head_timer = self.loop.call_later(delay, self._check_head)

        def connection_lost(self, exc: Exception | None) -> None:
            if self._refused:
                return  # uvicorn never knew it
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            if self._guard is not None:
                self._guard.release(self._address)
                self._guard = None
            super().connection_lost(exc)

    return GuardedProtocol
