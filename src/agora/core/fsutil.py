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


def is_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in FULL


@contextmanager
def full_disk_refused() -> Iterator[None]:
    """Turn "no space left" from any file operation in the block (write, fsync, mkdir,
    rename) into StorageFull, the error every protocol answers with its own code."""
    try:
        yield
    except OSError as error:
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


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write a whole file or nothing: temporary file, fsync, rename, fsync the directory."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with full_disk_refused():
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            write_all(fd, data)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
