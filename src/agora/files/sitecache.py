"""What users' sites keep in memory, and the answer to a request for a kept file.

A :class:`CachedFile` is one version of one file (small ones with their bytes, and
compressed forms made on first demand), with its response headers built once.
:func:`plan` decides the answer to a GET or HEAD from the request's headers alone, with
no I/O, so the site server can answer from the protocol layer when nothing has to be
awaited (see ``site_protocol.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import NamedTuple

from agora.files import httpfile
from agora.files.store import file_etag

CACHE_FILE_MAX = 1024**2  # larger files are streamed from disk on each request
COMPRESS_MAX = 16 * 1024**2  # larger text files go uncompressed rather than stall a request
ENTRY_OVERHEAD = 512  # what an entry costs besides its bytes, for the memory bound

Headers = list[tuple[bytes, bytes]]

CSP = (b"sandbox allow-scripts allow-forms allow-popups allow-popups-to-escape-sandbox allow-modals "
       b"allow-downloads; frame-ancestors 'self'")
# Sent with every site response (sites.py says why the sandbox and the CORS header).
COMMON: Headers = [
    (b"content-security-policy", CSP),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"SAMEORIGIN"),
    (b"referrer-policy", b"same-origin"),
    (b"access-control-allow-origin", b"*"),
]
# Revalidated on every use (cheap with the ETag), so a new upload is seen at once.
CACHE_CONTROL = (b"cache-control", b"no-cache")


def serialize(headers: Headers) -> bytes:
    return b"".join(name + b": " + value + b"\r\n" for name, value in headers)


class Reply(NamedTuple):
    """An answer: complete (``body``), or still needing I/O: bytes ``stream``ed from
    disk as (offset, length), or a compressed form to ``compress`` first."""

    status: int
    headers: Headers
    body: bytes = b""
    block: bytes | None = None  # ``headers`` serialized, when made once ahead
    stream: tuple[int, int] | None = None
    compress: str | None = None

    @property
    def complete(self) -> bool:
        return self.stream is None and self.compress is None


@dataclass(eq=False)
class CachedFile:
    """One file version as served. ``body`` is None for a file too large to keep: then
    only its metadata (and compressed forms) are kept."""

    key: str  # the request path it is cached under
    owner: str
    real: str
    dev: int
    ino: int
    size: int
    mtime_ns: int
    mtime: float
    kind: str
    body: bytes | None
    etag: str = ""
    last_modified: str = ""
    compressible: bool = False
    variants: dict[str, bytes] = field(default_factory=dict)
    incompressible: set[str] = field(default_factory=set)
    headers: dict[str | None, Headers] = field(default_factory=dict)
    blocks: dict[str | None, bytes] = field(default_factory=dict)
    cost: int = 0
    plain: "Reply | None" = None  # the answer to a GET asking for nothing special
    # Until when the file is believed unchanged on disk, as long as the store's
    # generation is still ``seen`` (see Sites._unchanged).
    fresh_until: float = 0.0
    seen: int = -1
    _etags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.etag = file_etag(self.size, self.mtime_ns)
        self._etags = (self.etag, self.etag_of("br"), self.etag_of("gzip"))
        self.last_modified = httpfile.http_date(self.mtime)
        self.compressible = (httpfile.compressible(self.kind)
                             and httpfile.MIN_COMPRESS <= self.size <= COMPRESS_MAX)
        self.cost = ENTRY_OVERHEAD + (len(self.body) if self.body is not None else 0)
        self._set_headers(None, self.size)
        if self.body is not None:
            self.plain = Reply(200, self.headers[None], self.body, self.blocks[None])

    def etag_of(self, encoding: str | None) -> str:
        # Each encoding is its own representation, so it gets its own strong ETag.
        return self.etag if encoding is None else f"{self.etag[:-1]}-{encoding}\""

    def etags(self) -> tuple[str, ...]:
        """The ETags of every representation: any of them validates this version."""
        return self._etags

    def validators(self, encoding: str | None) -> Headers:
        headers = [(b"etag", self.etag_of(encoding).encode()), (b"last-modified", self.last_modified.encode()),
                   CACHE_CONTROL]
        if self.compressible:
            headers.append((b"vary", b"accept-encoding"))
        return headers + COMMON

    def _set_headers(self, encoding: str | None, length: int) -> None:
        headers = [(b"content-type", self.kind.encode()), (b"content-length", str(length).encode())]
        if encoding:
            headers.append((b"content-encoding", encoding.encode()))
        else:
            headers.append((b"accept-ranges", b"bytes"))
        headers += self.validators(encoding)
        self.headers[encoding] = headers
        self.blocks[encoding] = serialize(headers)

    def add_variant(self, encoding: str, data: bytes | None) -> int:
        """Keep a compressed form (None: it does not shrink); returns how much more
        memory the entry now takes."""
        if data is None:
            self.incompressible.add(encoding)
            return 0
        old = self.variants.get(encoding)
        self.variants[encoding] = data
        self._set_headers(encoding, len(data))
        grown = len(data) - (len(old) if old is not None else 0)
        self.cost += grown
        return grown

    def same_file(self, st: os.stat_result) -> bool:
        return (st.st_ino == self.ino and st.st_mtime_ns == self.mtime_ns and st.st_size == self.size
                and st.st_dev == self.dev)


def plan(item: CachedFile, asked: dict[bytes, str]) -> Reply:
    """The answer to a GET for ``item``; ``asked`` holds the request's conditional,
    range and accept-encoding headers (:func:`asked_of`)."""
    if not asked and item.plain is not None:
        return item.plain
    wanted_range = asked.get(b"range")
    if wanted_range is not None and not httpfile.range_applies(asked.get(b"if-range"), item.etag,
                                                               item.last_modified):
        wanted_range = None
    encoding = None
    if item.compressible and wanted_range is None:
        encoding = httpfile.pick_encoding(asked.get(b"accept-encoding"))
        if encoding in item.incompressible:
            encoding = None
    if httpfile.not_modified(asked.get(b"if-none-match"), asked.get(b"if-modified-since"),
                             item.etags(), item.mtime):
        return Reply(304, item.validators(encoding))
    if encoding is not None:
        data = item.variants.get(encoding)
        if data is None:
            return Reply(0, [], compress=encoding)
        return Reply(200, item.headers[encoding], data, item.blocks[encoding])
    if wanted_range is not None:
        span = httpfile.parse_range(wanted_range, item.size)
        if span == httpfile.UNSATISFIABLE:
            return Reply(416, [(b"content-range", f"bytes */{item.size}".encode()),
                               (b"content-length", b"0")] + COMMON)
        if span is not None:
            first, last = span
            headers = [(b"content-type", item.kind.encode()),
                       (b"content-length", str(last - first + 1).encode()),
                       (b"content-range", f"bytes {first}-{last}/{item.size}".encode()),
                       (b"accept-ranges", b"bytes")] + item.validators(None)
            if item.body is not None:
                return Reply(206, headers, item.body[first:last + 1])
            return Reply(206, headers, stream=(first, last + 1 - first))
    if item.body is not None:
        return Reply(200, item.headers[None], item.body, item.blocks[None])
    return Reply(200, item.headers[None], stream=(0, item.size))


CONDITIONAL = frozenset((b"if-none-match", b"if-modified-since", b"range", b"if-range", b"accept-encoding"))


def asked_of(headers: list[tuple[bytes, bytes]]) -> dict[bytes, str]:
    """The request headers :func:`plan` reads, from ASGI-style (lower-case) pairs, with
    their values as httpfile takes them."""
    return {name: value.decode("latin-1") for name, value in headers if name in CONDITIONAL}
