"""FTP with explicit FTPS (AUTH TLS, PBSZ, PROT P) and implicit FTPS (TLS from the first
byte, on a port of its own), on pyftpdlib, beside the asyncio server.

pyftpdlib brings its own I/O loop rather than asyncio, so it runs in threads of this
process: one accepts on the socket server.py bound, and each session gets a thread (and
a loop) of its own. A session blocks now and then, on a password check (made on the
asyncio loop, and waited for) and on the fsync that commits an upload, and must not
stall the others meanwhile. Downloads go out with sendfile().
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

from OpenSSL import SSL
from pyftpdlib.ioloop import IOLoop
from pyftpdlib.servers import ThreadedFTPServer

from agora.core import descriptors
from agora.core.runtime import Runtime
from agora.files.ftp_session import Authorizer, ImplicitSession, Session, Sessions, TLSDataHandler

log = logging.getLogger("agora.ftp")

# How often the accepting thread looks up from its loop to see whether it should stop.
ACCEPT_POLL = 0.2
# Most bytes one sendfile() call may send (pyftpdlib's default is 64 KiB). The socket
# takes what fits in its buffer; a larger cap means a GiB takes a few hundred trips
# through the loop instead of sixteen thousand.
SENDFILE_CHUNK = 4 * 1024 * 1024


class _Server(ThreadedFTPServer):
    poll_timeout = 0.5  # how soon a session thread notices that the server stops

    def __init__(self, sock: socket.socket, handler: type[Session], ioloop: IOLoop, backlog: int, name: str):
        # pyftpdlib calls listen() again on the socket, with 100 unless told otherwise.
        super().__init__(sock, handler, ioloop=ioloop, backlog=backlog)
        self.name = name
        # pyftpdlib's are class-wide; a server of its own stops only its own sessions.
        self._exit = threading.Event()
        self._lock = threading.Lock()

    def _start_task(self, *args, **kwargs):
        return threading.Thread(*args, daemon=True, **kwargs)

    def handle_accept(self) -> None:
        # Out of descriptors, pyftpdlib would log a traceback and close the listening
        # socket for good. The connection waits in the queue instead, and is taken
        # once a descriptor is free again.
        try:
            super().handle_accept()
        except OSError as error:
            if not descriptors.is_exhausted(error):
                raise
            descriptors.reporter.exhausted(f"the {self.name} listener", error)
            time.sleep(ACCEPT_POLL)


def tls_context(runtime: Runtime) -> SSL.Context:
    assert runtime.tls is not None
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    # Not TLS 1.3: there the server sends session tickets after the handshake, which a
    # client uploading on a data connection never reads; closing with them unread, it
    # resets the connection, and the end of the upload is lost (pyftpdlib issue 602,
    # proftpd 959). In TLS 1.2 tickets are part of the handshake.
    context.set_max_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(SSL.OP_NO_COMPRESSION)
    context.use_certificate_chain_file(str(runtime.tls.cert))
    context.use_privatekey_file(str(runtime.tls.key))
    # A session cache, so that clients which resume the control connection's TLS
    # session on data connections (FileZilla, lftp) can.
    context.set_session_id(b"agora-ftp")
    return context


def session_class(runtime: Runtime, loop: asyncio.AbstractEventLoop, sessions: Sessions,
                  implicit: bool = False) -> type[Session]:
    """The session class of one server, configured from the ftp.* and files.* settings;
    ``implicit`` for the ftps listener."""
    config = runtime.config
    passive = None
    if config.ftp.passive_ports:
        first, last = map(int, config.ftp.passive_ports.split("-"))
        passive = list(range(first, last + 1))

    class Data(TLSDataHandler):
        timeout = config.ftp.data_timeout
        ac_out_buffer_size = SENDFILE_CHUNK

    class ServerSession(ImplicitSession if implicit else Session):
        authorizer = Authorizer(runtime, loop)
        dtp_handler = Data
        ssl_context = tls_context(runtime)
        timeout = config.ftp.idle_timeout
        passive_ports = passive
        masquerade_address = config.ftp.masquerade_address or None
        active_mode = config.ftp.active_mode
        max_upload = config.files.max_upload
        registry = sessions

    return ServerSession


class _IntoOurs(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        record.name = log.name
        log.handle(record)


def _route_library_logs() -> None:
    """pyftpdlib logs every session and transfer at INFO: keep its warnings, as ours."""
    library = logging.getLogger("pyftpdlib")
    library.setLevel(logging.WARNING)
    library.propagate = False
    if not any(isinstance(handler, _IntoOurs) for handler in library.handlers):
        library.addHandler(_IntoOurs())


class FTPListener:
    """One listening socket: ``ftp`` (explicit FTPS) or ``ftps`` (implicit)."""

    def __init__(self, runtime: Runtime, sock: socket.socket, name: str = "ftp"):
        self.runtime = runtime
        self.sock = sock
        self.name = name
        self.sessions = Sessions()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.server: _Server | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        _route_library_logs()
        config = self.runtime.config.ftp
        handler = session_class(self.runtime, loop, self.sessions, implicit=self.name == "ftps")
        self.server = _Server(self.sock, handler, IOLoop(), descriptors.backlog(self.runtime.config), self.name)
        self.server.max_cons = config.max_connections
        self.server.max_cons_per_ip = config.max_connections_per_ip
        self.runtime.metrics.count_connections(self.name, lambda: len(self.sessions))
        self._thread = threading.Thread(target=self._accept, name=f"agora-{self.name}", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        assert self.server is not None
        ioloop = self.server.ioloop
        while not self._stopping.is_set():
            try:
                ioloop.poll(ACCEPT_POLL)
                ioloop.sched.poll()
            except Exception:
                log.exception("FTP accept loop")
                time.sleep(ACCEPT_POLL)

    def stop(self, timeout: float) -> None:
        """Stop accepting, let transfers in flight finish within ``timeout``, close the
        rest. Blocking: the service calls it in a worker thread."""
        if self.server is None or self._thread is None:
            return
        self._stopping.set()
        self._thread.join()
        self.server.close()  # the listening socket: new clients are refused from now on
        self.sessions.draining = True
        deadline = time.monotonic() + timeout
        while self.sessions.transferring() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.sessions.transferring():
            log.warning("closing FTP transfers still running after %.0f s", timeout)
        self.server.close_all()
