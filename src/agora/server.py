"""Compose the enabled services, bind their listeners, run until told to stop.

Start-up order: validate config (done by the caller), bind every listener (so a port in
use fails fast, before anything is written), open storage, start services, write
``run/ports.json`` and log ``ready``. SIGTERM/SIGINT: services stop accepting and finish
in-flight work within ``shutdown_timeout``, storage closes, ports.json goes.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import json
import logging
import signal
import socket
import sys
import time

from agora.config import LISTENERS, Config, ConfigError
from agora.core import descriptors
from agora.core import offload
from agora.core.database import DatabaseError, SchemaTooNew
from agora.core.fsutil import write_atomically
from agora.core.runtime import Runtime
from agora.core.service import Service

log = logging.getLogger("agora")


def enabled_services(config: Config) -> list[type[Service]]:
    """Every service this configuration runs; each new service adds one line here.

    Imported only when enabled, so a disabled service costs no start-up time.
    """
    services: list[type[Service]] = []
    if config.web.enabled:
        from agora.web.service import WebService
        services.append(WebService)
    if config.files.enabled:
        from agora.files.service import FilesService
        services.append(FilesService)
    if config.mail.enabled:
        from agora.mail.service import MailService
        services.append(MailService)
    if config.bank.enabled:
        from agora.bank.service import BankService
        services.append(BankService)
    if config.sql.enabled:
        from agora.sql.service import SQLService
        services.append(SQLService)
    return services


def attach_services(runtime: Runtime) -> None:
    """What every enabled service hooks into the core, whether a server runs or the CLI
    works on the data dir alone (deleting a user must delete their data either way).

    Regardless of which services are enabled: data on disk outlives a disabled service.
    """
    from agora.bank.ledger import refuse_deleting_holders
    from agora.files.access import forget_user_files
    from agora.mail.store import forget_user_mail
    from agora.sql.hosted import forget_user_sql
    # First: it refuses to delete a user who holds money (money must never vanish), and
    # must do so before the other hooks have deleted their files, mail and databases.
    runtime.identity.deletion_hooks.insert(0, refuse_deleting_holders(runtime))
    runtime.identity.deletion_hooks.append(forget_user_files(runtime))
    runtime.identity.deletion_hooks.append(forget_user_mail(runtime))
    runtime.identity.deletion_hooks.append(forget_user_sql(runtime))


def _bind(name: str, address: str, port: int, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and address == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((address, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as error:
        sock.close()
        key = LISTENERS[name]
        if error.errno == errno.EADDRINUSE:
            raise ConfigError(f"{key}: port {port} on {address} is already in use ({name} listener)") from None
        if error.errno == errno.EACCES:
            raise ConfigError(f"{key}: not allowed to bind port {port} on {address} ({name} listener)") from None
        raise ConfigError(f"{key}: cannot listen on {address}:{port} ({name} listener): {error.strerror}") from None
    return sock


def bind_listeners(config: Config, names: list[str]) -> dict[str, socket.socket]:
    sockets: dict[str, socket.socket] = {}
    try:
        for name in names:
            port = config.port(name)
            if port is not None:
                sockets[name] = _bind(name, config.bind, port, descriptors.backlog(config))
    except ConfigError:
        for sock in sockets.values():
            sock.close()
        raise
    return sockets


async def serve(config: Config) -> int:
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    classes = enabled_services(config)
    listeners = [name for cls in classes for name in cls.listeners]
    # Bound before anything is written, so that a port in use stops a first start
    # before it has created (and printed the password of) the admin account.
    sockets = bind_listeners(config, listeners)
    descriptors.raise_limit(descriptors.needed(config, listeners))
    descriptors.check_backlog(config)
    try:
        runtime = await Runtime.open(config, serving=True)
    except BaseException:
        for sock in sockets.values():
            sock.close()
        raise
    attach_services(runtime)
    offload.configure(config.heavy_work_threads, config.heavy_work_timeout)
    services = [cls(runtime) for cls in classes]
    ports = {name: sock.getsockname()[1] for name, sock in sockets.items()}
    ports_file = runtime.data_dir / "run" / "ports.json"
    running: list[Service] = []
    watch = descriptors.Watch()
    try:
        watch.start()
        await runtime.identity.sessions.start()  # open sessions end with their accounts
        for service in services:
            await service.start({n: s for n, s in sockets.items() if n in service.listeners})
            running.append(service)
        runtime.metrics.loop_lag.start(config.slow_callback)
        # What start-up made lives as long as the server: the collector need not look at
        # it again. (A full collection over it took tenths of a second, every thread and
        # so the event loop stopped, while a request made 100,000 objects.)
        gc.freeze()
        write_atomically(ports_file, json.dumps(ports, indent=2).encode() + b"\n")
        log.info("ready in %.2f s: %s (data dir %s)", time.monotonic() - started,
                 ", ".join(f"{name} {config.bind}:{port}" for name, port in ports.items()) or "no listeners",
                 runtime.data_dir, extra={"ports": ports})
        await stop.wait()
        log.info("stopping: finishing in-flight requests (at most %.0f s)", config.shutdown_timeout)
    finally:
        await asyncio.gather(*(service.stop(config.shutdown_timeout) for service in running),
                             return_exceptions=True)
        await watch.stop()
        await runtime.identity.sessions.stop()
        runtime.metrics.loop_lag.stop()
        for sock in sockets.values():
            sock.close()
        ports_file.unlink(missing_ok=True)
        await runtime.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("stopped")
    return 0


def run(config: Config) -> int:
    """Run the server on uvloop where available; returns the exit code.

    A schema newer than this code exits 2 like a bad setting (the installation is
    wrong, retrying will not help); unreachable storage exits 1.
    """
    try:
        import uvloop
        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - platforms without uvloop
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        try:
            return runner.run(serve(config))
        except DatabaseError as error:
            print(f"agora: {error}", file=sys.stderr, flush=True)
            return 2 if isinstance(error, SchemaTooNew) else 1
