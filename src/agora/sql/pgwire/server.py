"""The ``postgres`` listener: accepts connections, enforces connection limits, keeps the
cancel keys, and runs one :class:`~agora.sql.pgwire.session.PGSession` per connection."""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import ssl
from typing import Any, Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from agora.core import descriptors
from agora.core.runtime import Runtime
from agora.core.tls import server_context

log = logging.getLogger("agora.sql.pgwire")
REFUSAL_TIMEOUT = 5.0  # how long a refused connection may take to hear why


def _end_point_hash(cert_path: Any) -> bytes | None:
    """tls-server-end-point channel binding (RFC 5929): the certificate's hash, with
    SHA-256 where the certificate's own signature uses MD5 or SHA-1 or SHA-256."""
    try:
        cert = x509.load_pem_x509_certificate(open(cert_path, "rb").read())
    except (OSError, ValueError):
        return None
    algorithm = cert.signature_hash_algorithm
    if algorithm is None or algorithm.name in ("md5", "sha1", "sha256"):
        algorithm = hashes.SHA256()
    return cert.fingerprint(algorithm)


class PGListener:
    """``sock``: the listening socket, or None in a worker process (workers.py), which
    is handed its connections; ``limits``: (connections, connections per address) if not
    the settings'; ``relay``: where a cancel for a process id not held here goes."""

    def __init__(self, runtime: Runtime, sock: socket.socket | None, name: str = "postgres", *,
                 limits: tuple[int, int] | None = None, relay: Callable[[int, int], None] | None = None,
                 counted: Callable[[int], None] | None = None):
        self.runtime = runtime
        self.sock = sock
        self.name = name
        self.settings = runtime.config.postgres
        self.max_connections, self.max_connections_per_ip = limits or (self.settings.max_connections,
                                                                       self.settings.max_connections_per_ip)
        self.relay = relay
        self.counted = counted  # told the number of open connections when it changes
        self.ssl_context: ssl.SSLContext | None = server_context(runtime.tls) if runtime.tls else None
        self.channel_binding = _end_point_hash(runtime.tls.cert) if runtime.tls else None
        self.server: asyncio.AbstractServer | None = None
        self.sessions: dict[int, Any] = {}       # process id -> session (for CancelRequest)
        self.per_address: dict[str, int] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        # For made-up SCRAM salts of unknown users: stable within this process.
        self.secret = secrets.token_bytes(32)

    async def start(self) -> None:
        from agora.sql.pgwire.session import PGSession

        loop = asyncio.get_running_loop()
        if self.sock is not None:
            self.server = await loop.create_server(lambda: PGSession(self), sock=self.sock,
                                                   backlog=descriptors.backlog(self.runtime.config))
        self.runtime.metrics.count_connections(self.name, lambda: len(self.tasks))

    def accepted(self, session: Any) -> None:
        """A new connection (from the session's connection_made): admitted or refused."""
        refusal = self._admit(session.address)
        loop = asyncio.get_running_loop()
        if refusal:
            session.refusal = refusal
            session.task = loop.create_task(self._refuse(session))
            return
        sock = session.transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = session.task = loop.create_task(self._serve(session))
        self.tasks.add(task)
        task.add_done_callback(self._ended)
        if self.counted is not None:
            self.counted(len(self.tasks))

    def _ended(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if self.counted is not None:
            self.counted(len(self.tasks))

    async def _refuse(self, session: Any) -> None:
        # Said after the startup packet (and TLS, if asked), as PostgreSQL does: an error
        # in place of the answer to SSLRequest reaches no one readably.
        try:
            await asyncio.wait_for(session.run(), REFUSAL_TIMEOUT)
        except (asyncio.TimeoutError, ConnectionError, ssl.SSLError):
            pass
        finally:
            session.transport.close()

    async def _serve(self, session: Any) -> None:
        try:
            await session.run()
        except (ConnectionError, ssl.SSLError):
            pass
        except Exception:
            log.exception("PostgreSQL session from %s failed", session.address)
        finally:
            self.sessions.pop(session.process_id, None)
            count = self.per_address.get(session.address, 1) - 1
            if count > 0:
                self.per_address[session.address] = count
            else:
                self.per_address.pop(session.address, None)
            await session.close()

    def _admit(self, address: str) -> str | None:
        if self.stopping:
            return "the server is shutting down"
        if len(self.tasks) >= self.max_connections:
            return "sorry, too many clients already"
        count = self.per_address.get(address, 0)
        if count >= self.max_connections_per_ip:
            return "too many connections from your address"
        self.per_address[address] = count + 1
        return None

    def register(self, session: Any) -> tuple[int, int]:
        """A process id and secret key for a session's BackendKeyData."""
        while True:
            pid = secrets.randbelow(2**31 - 2) + 1
            if pid not in self.sessions:
                break
        self.sessions[pid] = session
        return pid, secrets.randbits(32)

    def cancel(self, pid: int, secret: int, relayed: bool = False) -> None:
        session = self.sessions.get(pid)
        if session is None and self.relay is not None and not relayed:
            self.relay(pid, secret)  # another worker's session, perhaps
            return
        # The secret is compared in constant time: it is what makes a cancel legitimate.
        if session is not None and secrets.compare_digest(session.secret.to_bytes(4, "big"),
                                                          (secret & 0xFFFFFFFF).to_bytes(4, "big")):
            session.cancel()

    async def stop(self, timeout: float) -> None:
        self.stopping = True
        if self.server is not None:
            self.server.close()
        for session in list(self.sessions.values()):
            session.stop()
        tasks = list(self.tasks)
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=timeout)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=1.0)
