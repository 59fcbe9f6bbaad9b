"""``postgres.workers``: PostgreSQL connections served by several processes.

One Python process answers its connections on one core. With ``postgres.workers`` N > 1
the server starts N worker processes (``python -m agora.sql.pgwire.workers``), each with
a runtime of its own on the same data dir and metadata database, as nodes of one
installation are. The server keeps accepting on the ``postgres`` port and hands each
new connection to the next worker in turn (the socket itself, over a Unix socket pair:
SCM_RIGHTS); it serves none itself.

What the workers share is what nodes share: the engine (the server's embedded cluster,
or the external one) and the metadata database. So a grant revoked through the server
reaches a worker's open sessions at their recheck (``sql.recheck_interval``), and each
worker takes its share of ``postgres.max_connections`` and ``max_connections_per_ip``
(connections are dealt in turn, so one address's spread evenly). A CancelRequest comes on
a connection of its own, which may be dealt to another worker than the session it
cancels: a worker that does not hold the process id passes it back, and the server
sends it to every other worker.

The server's /metrics counts the workers' connections and password checks: each worker
tells the server its number of open connections when it changes, and each login.

Messages on a worker's socket pair (SOCK_SEQPACKET: one message per send):
``c`` with a connection's file descriptor (server -> worker), ``k`` + process id + key
(a cancel, either way), ``r`` (worker -> server: ready), ``n`` + count (worker -> server:
open connections), ``l`` + protocol + NUL + outcome (worker -> server: a password check).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import signal
import socket
import struct
import subprocess
import sys
from typing import Any

from agora.config import Config
from agora.core import descriptors

log = logging.getLogger("agora.sql.pgwire")
READY_TIMEOUT = 60.0   # for a worker to open its runtime and say it is ready
RESTART_DELAY = 1.0    # before a worker that died is started again
MAX_MESSAGE = 128      # bytes of one message on a socket pair
ACCEPT_RETRY = 0.2     # out of descriptors: when accepting is tried again
_CANCEL = struct.Struct("!cii")
_COUNT = struct.Struct("!ci")


def share(limit: int, workers: int) -> int:
    """A worker's part of a connection limit."""
    return max(1, math.ceil(limit / workers))


class Worker:
    def __init__(self, index: int):
        self.index = index
        self.channel: socket.socket | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.connections = 0  # open, as it last said


class WorkerPool:
    """The server side: starts the workers, deals them connections, relays cancels."""

    def __init__(self, runtime: Any, sock: socket.socket, name: str = "postgres"):
        self.runtime = runtime
        self.sock = sock
        self.name = name
        self.workers = [Worker(i) for i in range(runtime.config.postgres.workers)]
        self.turn = 0
        self.stopping = False
        self.restarts: set[asyncio.Task[None]] = set()
        self.retry: asyncio.TimerHandle | None = None  # accepting again, after running out of descriptors

    async def start(self) -> None:
        await asyncio.gather(*(self._spawn(worker) for worker in self.workers))
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._accept)
        self.runtime.metrics.count_connections(self.name, lambda: sum(w.connections for w in self.workers))

    async def _spawn(self, worker: Worker) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            worker.process = subprocess.Popen(
                [sys.executable, "-m", "agora.sql.pgwire.workers", str(theirs.fileno()), str(worker.index)],
                stdin=subprocess.PIPE, pass_fds=(theirs.fileno(),))
        finally:
            theirs.close()
        assert worker.process.stdin is not None
        worker.process.stdin.write(json.dumps(self.runtime.config.values).encode())
        worker.process.stdin.close()
        ours.setblocking(False)
        try:
            ready = await asyncio.wait_for(loop.sock_recv(ours, 64), READY_TIMEOUT)
        except asyncio.TimeoutError:
            ready = b""
        if ready != b"r":
            ours.close()
            worker.process.kill()
            raise RuntimeError(f"PostgreSQL worker {worker.index} did not start (see its log above)")
        worker.channel = ours
        loop.add_reader(ours.fileno(), self._from_worker, worker)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if not descriptors.is_exhausted(error):
                    log.warning("postgres: accept failed: %s", error)
                    return
                # The socket stays readable while the connection waits in the queue:
                # looked at again a little later, not at once, so that this does not spin.
                descriptors.reporter.exhausted("the postgres listener", error)
                loop = asyncio.get_running_loop()
                loop.remove_reader(self.sock.fileno())
                self.retry = loop.call_later(ACCEPT_RETRY, loop.add_reader, self.sock.fileno(), self._accept)
                return
            with conn:
                for _ in range(len(self.workers)):
                    worker = self.workers[self.turn % len(self.workers)]
                    self.turn += 1
                    if worker.channel is not None and self._send(worker, b"c", conn.fileno()):
                        break

    def _send(self, worker: Worker, message: bytes, fd: int | None = None) -> bool:
        assert worker.channel is not None
        try:
            if fd is None:
                worker.channel.send(message)
            else:
                socket.send_fds(worker.channel, [message], [fd])
            return True
        except OSError:  # gone, or too far behind: another worker takes it
            return False

    def _from_worker(self, worker: Worker) -> None:
        assert worker.channel is not None
        try:
            message = worker.channel.recv(MAX_MESSAGE)
        except BlockingIOError:
            return
        except OSError:
            message = b""
        if not message:
            self._lost(worker)
        elif message[:1] == b"k" and len(message) == _CANCEL.size:
            for other in self.workers:
                if other is not worker and other.channel is not None:
                    self._send(other, message)
        elif message[:1] == b"n" and len(message) == _COUNT.size:
            worker.connections = max(0, _COUNT.unpack(message)[1])
        elif message[:1] == b"l" and message.count(b"\0") == 1:
            protocol, outcome = message[1:].decode("utf-8", "replace").split("\0")
            self.runtime.metrics.login(protocol, outcome)

    def _lost(self, worker: Worker) -> None:
        loop = asyncio.get_running_loop()
        assert worker.channel is not None
        loop.remove_reader(worker.channel.fileno())
        worker.channel.close()
        worker.channel = None
        worker.connections = 0
        if self.stopping:
            return
        code = worker.process.poll() if worker.process else None
        log.error("PostgreSQL worker %d stopped (exit code %s); starting it again", worker.index, code)
        task = loop.create_task(self._restart(worker))
        self.restarts.add(task)
        task.add_done_callback(self.restarts.discard)

    async def _restart(self, worker: Worker) -> None:
        if worker.process is not None:
            await asyncio.to_thread(worker.process.wait)
        while not self.stopping:
            await asyncio.sleep(RESTART_DELAY)
            try:
                await self._spawn(worker)
                return
            except Exception as error:
                log.error("PostgreSQL worker %d: %s", worker.index, error)

    async def stop(self, timeout: float) -> None:
        self.stopping = True
        loop = asyncio.get_running_loop()
        if self.retry is not None:
            self.retry.cancel()
        loop.remove_reader(self.sock.fileno())
        for task in list(self.restarts):
            task.cancel()
        running = [w.process for w in self.workers if w.process is not None and w.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        for worker in self.workers:
            if worker.channel is not None:
                loop.remove_reader(worker.channel.fileno())
        # A worker finishes its in-flight statements within the shutdown timeout itself.
        for process in running:
            try:
                await asyncio.to_thread(process.wait, timeout + 5)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)
        for worker in self.workers:
            if worker.channel is not None:
                worker.channel.close()
                worker.channel = None


# -- the worker process ---------------------------------------------------------------

async def _work(config: Config, channel: socket.socket, index: int) -> None:
    from agora.core.runtime import Runtime
    from agora.server import attach_services
    from agora.sql.hosted import hosted_sql
    from agora.sql.pgwire.server import PGListener
    from agora.sql.pgwire.session import PGSession

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runtime = await Runtime.open(config, serving=True)
    attach_services(runtime)
    hosted_sql(runtime)
    await runtime.identity.sessions.start()  # this process's sessions end with their accounts too
    workers = config.postgres.workers

    def tell(message: bytes) -> None:
        try:
            channel.send(message[:MAX_MESSAGE])
        except OSError:  # the server is gone (receive() notices) or far behind: a metric lost
            pass

    runtime.identity.login_observers.append(
        lambda protocol, outcome: tell(b"l" + f"{protocol}\0{outcome}".encode()))
    listener = PGListener(runtime, None, limits=(share(config.postgres.max_connections, workers),
                                                 share(config.postgres.max_connections_per_ip, workers)),
                          relay=lambda pid, secret: tell(_CANCEL.pack(b"k", pid, secret)),
                          counted=lambda count: tell(_COUNT.pack(b"n", count)))

    handing: set[asyncio.Task[Any]] = set()  # connections being wrapped (tasks need a reference)

    def handed(task: asyncio.Task[Any]) -> None:
        handing.discard(task)
        if not task.cancelled() and task.exception() is not None:  # the client left at once
            log.debug("postgres: a connection could not be taken: %s", task.exception())

    def receive() -> None:
        while True:
            try:
                message, fds, _, _ = socket.recv_fds(channel, MAX_MESSAGE, 16)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                message, fds = b"", []
            if not message and not fds:
                stop.set()  # the server is gone
                loop.remove_reader(channel.fileno())
                return
            for fd in fds:
                sock = socket.socket(fileno=fd)
                if listener.stopping:
                    sock.close()
                    continue
                sock.setblocking(False)
                task = loop.create_task(loop.connect_accepted_socket(lambda: PGSession(listener), sock))
                handing.add(task)
                task.add_done_callback(handed)
            if message[:1] == b"k" and len(message) == _CANCEL.size:
                _, pid, secret = _CANCEL.unpack(message)
                listener.cancel(pid, secret, relayed=True)

    channel.setblocking(False)
    loop.add_reader(channel.fileno(), receive)
    channel.send(b"r")
    log.info("PostgreSQL worker %d ready (pid %d)", index, os.getpid())
    try:
        await stop.wait()
    finally:
        loop.remove_reader(channel.fileno())
        await listener.stop(config.shutdown_timeout)
        await runtime.identity.sessions.stop()
        await hosted_sql(runtime).close()
        await runtime.close()


def main() -> None:
    from agora.core import logs

    fd, index = int(sys.argv[1]), int(sys.argv[2])
    config = Config(json.loads(sys.stdin.buffer.read()))
    logs.setup(config.log_format, config.log_level, access_log=False)
    if config.postgres.worker_cpu_affinity and hasattr(os, "sched_setaffinity"):
        # Left to the scheduler, two busy workers now and then share one core while the
        # other runs the clients: a third of the throughput gone for seconds at a time.
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[index % len(cpus)]})
    channel = socket.socket(fileno=fd)
    try:
        import uvloop
        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - platforms without uvloop
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_work(config, channel, index))


if __name__ == "__main__":
    main()
