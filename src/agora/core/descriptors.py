"""File descriptors and listen queues: what every listener needs from the system.

Each connection holds a descriptor (an FTP session up to three, a PostgreSQL-protocol
session two: the client's and the engine's). A soft RLIMIT_NOFILE of 1024, the usual
default, ran out long before the connection limits did, and then connections were
dropped without a word: uvloop (libuv) accepts and closes them itself when accept()
fails with EMFILE, and tells no one. So at start the soft limit is raised to what the
connection limits add up to (at most the hard limit; a warning says when that is not
enough), and a watch notices when the process runs out anyway and says so in the log.

The listen queue: asyncio's create_server(sock=...) calls listen() again, with 100
unless told otherwise, so every listener is given ``listen_backlog`` explicitly
(:func:`backlog`); the kernel caps it at net.core.somaxconn, which is said at start.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("agora")

# Listener -> (the setting that caps its connections, descriptors one connection holds).
PER_CONNECTION: dict[str, tuple[str, int]] = {
    "http": ("http.max_connections", 2),        # the socket, a file being sent
    "https": ("http.max_connections", 2),
    "ftp": ("ftp.max_connections", 3),          # control, data, a passive listener
    "ftps": ("ftp.max_connections", 3),
    "smtp": ("mail.max_connections", 1),
    "submission": ("mail.max_connections", 1),
    "imap": ("mail.max_connections", 1),
    "imaps": ("mail.max_connections", 1),
    "pop3": ("mail.max_connections", 1),
    "pop3s": ("mail.max_connections", 1),
    "postgres": ("postgres.max_connections", 2),  # the client's, the engine's
}
# Beyond the connections: the metadata database, files being written, the engine's
# pipes, log files, the libraries' own.
RESERVE = 1024
SOMAXCONN = Path("/proc/sys/net/core/somaxconn")
# At most one warning about running out per this many seconds (the rest are counted).
REPORT_EVERY = 60.0
# How often the watch looks whether a descriptor can still be had.
WATCH_INTERVAL = 1.0
_EXHAUSTED = (errno.EMFILE, errno.ENFILE)


def needed(config: Any, listeners: list[str]) -> int:
    total = RESERVE
    for name in listeners:
        if name in PER_CONNECTION and config.port(name) is not None:
            key, each = PER_CONNECTION[name]
            total += config.values[key] * each
    return total


def raise_limit(need: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards ``need`` (never lower it, never past the
    hard limit); warn when the result is below ``need``. Returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = hard == resource.RLIM_INFINITY
    target = need if unlimited else min(need, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as error:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, target, error)
    if soft != resource.RLIM_INFINITY and soft < need:
        log.warning("open-files limit is %d (hard limit %s) but the connection limits may need %d: "
                    "raise the hard limit (ulimit -Hn, systemd LimitNOFILE) or lower the "
                    "max_connections settings; past it new connections are closed unanswered",
                    soft, "unlimited" if unlimited else hard, need)
    return soft


def backlog(config: Any) -> int:
    """The listen() backlog every listener is given."""
    return int(config.listen_backlog)


def check_backlog(config: Any) -> None:
    """Say at start when the kernel caps the configured backlog."""
    try:
        cap = int(SOMAXCONN.read_text())
    except (OSError, ValueError):
        return
    if cap < backlog(config):
        log.warning("listen_backlog %d is capped at %d by net.core.somaxconn: raise that sysctl for "
                    "bursts of connections beyond it", backlog(config), cap)


class _Reporter:
    """Rate-limited warnings about running out of descriptors, from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = -REPORT_EVERY
        self._unsaid = 0

    def exhausted(self, where: str, error: OSError) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last < REPORT_EVERY:
                self._unsaid += 1
                return
            unsaid, self._unsaid, self._last = self._unsaid, 0, now
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        more = f" ({unsaid} more times since the last warning)" if unsaid else ""
        log.warning("out of file descriptors (%s; open-files limit %d) in %s: new connections are "
                    "being refused until some close%s", os.strerror(error.errno or 0), soft, where, more)


reporter = _Reporter()


def is_exhausted(error: OSError) -> bool:
    return error.errno in _EXHAUSTED


class Watch:
    """Notices when the process cannot open a descriptor: the event loop's accept
    (libuv's) says nothing when that happens, so a descriptor is asked for now and then."""

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self._fd = -1

    def start(self) -> None:
        self._fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="descriptor-watch")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            try:
                os.close(os.dup(self._fd))
            except OSError as error:
                if not is_exhausted(error):
                    raise
                reporter.exhausted("the listeners", error)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
