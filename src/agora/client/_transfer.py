"""What the blocking and the async file transfers share: where a download resumes and
whether its part file still fits, how an upload is cut into pieces, progress reports.

No I/O on the network here; local files only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Callable, Iterator

import httpx

from agora.client.errors import UnexpectedResponse
from agora.client.models import FileEntry, TransferProgress

CHUNK = 1024 * 1024
VERIFY = 64 * 1024
# Pieces of a resumable upload grow with what is already there (each costs the server
# a copy of that prefix), between these bounds.
PIECE = 16 * 1024**2
MAX_PIECE = 1024**3

Progress = Callable[[TransferProgress], None]


def part_path(local: Path) -> Path:
    return local.with_name(local.name + ".part")


def safe_name(name: str) -> str:
    """A name from a listing, before it becomes a local path: a server must not be able
    to write outside the target folder."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise UnexpectedResponse(None, "about:blank", "Unexpected response", f"unsafe file name {name!r}")
    return name


def pieces(offset: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) byte offsets of the pieces that carry a file from ``offset`` on."""
    while offset < size:
        length = min(max(PIECE, min(offset, MAX_PIECE)), size - offset)
        yield offset, offset + length - 1
        offset += length


def read_chunks(handle: IO[bytes], start: int, end: int) -> Iterator[bytes]:
    handle.seek(start)
    remaining = end - start + 1
    while remaining > 0:
        chunk = handle.read(min(CHUNK, remaining))
        if not chunk:
            raise OSError(f"{handle.name} shrank while it was being sent")
        remaining -= len(chunk)
        yield chunk


def local_bytes(local: Path, start: int, length: int) -> bytes:
    with open(local, "rb") as handle:
        handle.seek(start)
        return handle.read(length)


def resume_offset(size: int, existing: FileEntry | None) -> int:
    """Where a put may carry on, before the tail check: 0 when it cannot."""
    if existing is None or existing.is_dir or not 0 < existing.size < size:
        return 0
    return existing.size


def _span(response: httpx.Response) -> tuple[int, int | None]:
    """The first byte and the total size of a download's body."""
    if response.status_code == 206:
        value = response.headers.get("content-range", "")
        try:
            unit, _, rest = value.partition(" ")
            first = int(rest.split("-", 1)[0])
            total = int(rest.rsplit("/", 1)[1])
        except (ValueError, IndexError):
            raise UnexpectedResponse(206, "about:blank", "Unexpected response",
                                     f"bad Content-Range {value!r}") from None
        return first, total
    length = response.headers.get("content-length")
    return 0, int(length) if length and length.isdigit() else None


class Download:
    """Writes a download into ``NAME.part``: checks the overlap with what the part
    already holds, appends the rest, and renames the part when it is complete."""

    def __init__(self, entry: FileEntry, local: Path, have: int, progress: Progress | None):
        self.entry = entry
        self.local = local
        self.part = part_path(local)
        self.have = have
        self.overlap = min(have, VERIFY)
        self.progress = progress
        self.handle: IO[bytes] | None = None
        self.position = 0
        self.total: int | None = None
        self.resumed_from = 0
        self.unchecked = b""

    def request_headers(self) -> dict[str, str]:
        return {"Range": f"bytes={self.have - self.overlap}-"} if self.have else {}

    def begin(self, response: httpx.Response) -> bool:
        """False when the part cannot be used (another version, or longer than the file)."""
        first, self.total = _span(response)
        if self.have and response.status_code == 206 and first == self.have - self.overlap:
            self.unchecked = local_bytes(self.part, first, self.overlap)
            self.handle = open(self.part, "r+b")
            self.handle.seek(self.have)
            self.position = self.have
            self.resumed_from = self.have
        else:
            if first != 0:
                return False
            self.handle = open(self.part, "wb")
            self.position = 0
        self._report()
        return True

    def feed(self, chunk: bytes) -> bool:
        assert self.handle is not None
        if self.unchecked:
            head, chunk = chunk[:len(self.unchecked)], chunk[len(self.unchecked):]
            if head != self.unchecked[:len(head)]:
                return False
            self.unchecked = self.unchecked[len(head):]
        if chunk:
            self.handle.write(chunk)
            self.position += len(chunk)
            self._report()
        return True

    def finish(self) -> FileEntry:
        assert self.handle is not None
        self.close()
        if self.unchecked or (self.total is not None and self.position != self.total):
            raise UnexpectedResponse(None, "about:blank", "Incomplete download",
                                     f"{self.entry.path}: got {self.position} of {self.total} bytes; "
                                     "run it again to resume")
        os.replace(self.part, self.local)
        mtime = self.entry.mtime.timestamp()
        os.utime(self.local, (mtime, mtime))
        return self.entry

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()

    def _report(self) -> None:
        if self.progress:
            self.progress(TransferProgress(self.entry.path, str(self.local), self.position, self.total,
                                           self.resumed_from))


class Reporter:
    """Counts an upload's bytes into ``progress`` as they are sent."""

    def __init__(self, remote: str, local: Path, size: int, offset: int, progress: Progress | None):
        self.remote, self.local, self.size, self.offset, self.progress = remote, str(local), size, offset, progress
        self.done = offset
        self.advance(0)

    def through(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            yield chunk
            self.advance(len(chunk))

    def advance(self, sent: int) -> None:
        self.done += sent
        if self.progress:
            self.progress(TransferProgress(self.remote, self.local, self.done, self.size, self.offset))


def local_tree(root: Path) -> Iterator[tuple[Path, list[str]]]:
    """Each folder below ``root`` (itself first) with its entries' names, sorted; folders
    are walked after they are listed, so a put creates parents first."""
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        kept_dirs = [d for d in dirs if not (Path(folder) / d).is_symlink()]
        dirs[:] = kept_dirs
        yield Path(folder), kept_dirs + sorted(f for f in files if (Path(folder) / f).is_file())
