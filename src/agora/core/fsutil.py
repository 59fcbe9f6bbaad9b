"""Small filesystem helpers with the durability every service needs."""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from agora.core.errors import StorageFull

# What the kernel answers when the filesystem (ENOSPC) or the process's disk quota
# (EDQUOT) has no room: the request fails, the server goes on.
FULL = (errno.ENOSPC, errno.EDQUOT)


SQLITE_FULL = 13
DISK_FULL_SQLSTATE = "53100"  # PostgreSQL's disk_full


def is_full(error: BaseException) -> bool:
    """Whether ``error`` (or the driver error a database error wraps) says the disk is
    full: ENOSPC/EDQUOT, SQLite's SQLITE_FULL, PostgreSQL's disk_full."""
    seen = 0
    current: BaseException | None = error
    while current is not None and seen < 5:
        if isinstance(current, OSError) and current.errno in FULL:
            return True
        if getattr(current, "sqlite_errorcode", None) == SQLITE_FULL:
            return True
        if getattr(current, "sqlstate", None) == DISK_FULL_SQLSTATE:
            return True
        current = getattr(current, "orig", None) or current.__cause__
        seen += 1
    return False


@contextmanager
def full_disk_refused() -> Iterator[None]:
    """Turn "no space left" from anything in the block (write, fsync, mkdir, rename, a
    database commit) into StorageFull, the error every protocol answers with its own
    code."""
    try:
        yield
    except Exception as error:
        if is_full(error):
            raise StorageFull("the server's disk is full") from error
        raise


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write every byte of ``data`` to ``fd`` or raise.

    write(2) may store fewer bytes than asked (a nearly full disk stores what fits and
    says so in its count); the rest is retried, and a disk with no room left raises
    StorageFull, so that no caller can take a short write for a whole one.
    """
    view = memoryview(data).cast("B")
    with full_disk_refused():
        while view:
            written = os.write(fd, view)
            if written <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            view = view[written:]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: Path, data: bytes, mode: int, *, exclusive: bool = False) -> None:
    """``data``, whole, into the file ``path`` (made, or with ``exclusive`` refused if it
    exists), fsynced; on any failure nothing is left at ``path``. The caller renames
    it into place."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC), mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write a whole file or nothing: temporary file, fsync, rename, fsync the directory."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with full_disk_refused():
        write_synced(tmp, data, mode)
        os.replace(tmp, path)
        fsync_dir(path.parent)
