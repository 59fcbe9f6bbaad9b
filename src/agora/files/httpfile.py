"""HTTP semantics of serving one stored file, shared by users' sites and the file browser.

Validators and conditional GET (RFC 9110 13), one byte range (RFC 9110 14), content
types and gzip/br negotiation. Pure functions over bytes and numbers: no sockets and no
framework, so that the sites fast path can call them without Starlette's overhead.
"""

from __future__ import annotations

import gzip
import mimetypes
from email.utils import formatdate, parsedate_to_datetime

import brotli

# mimetypes reads the system's tables, which differ between machines; these are the
# types a web site relies on, pinned.
TYPES = {
    ".html": "text/html", ".htm": "text/html", ".css": "text/css", ".js": "text/javascript",
    ".mjs": "text/javascript", ".json": "application/json", ".map": "application/json",
    ".txt": "text/plain", ".md": "text/markdown", ".csv": "text/csv", ".xml": "application/xml",
    ".svg": "image/svg+xml", ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
    ".gif": "image/gif", ".webp": "image/webp", ".avif": "image/avif", ".ico": "image/x-icon",
    ".wasm": "application/wasm", ".pdf": "application/pdf", ".woff": "font/woff",
    ".woff2": "font/woff2", ".ttf": "font/ttf", ".otf": "font/otf", ".mp4": "video/mp4",
    ".webm": "video/webm", ".mp3": "audio/mpeg", ".ogg": "audio/ogg", ".zip": "application/zip",
    ".gz": "application/gzip", ".tar": "application/x-tar", ".webmanifest": "application/manifest+json",
}
# Compressing these pays; images, fonts (woff2 already is) and archives do not shrink.
COMPRESSIBLE = {"application/json", "application/xml", "image/svg+xml", "application/wasm",
                "application/manifest+json", "font/ttf", "font/otf", "image/x-icon"}
# Below this, the headers outweigh what compression saves.
MIN_COMPRESS = 256
ENCODINGS = ("br", "gzip")


def content_type(name: str) -> str:
    dot = name.rfind(".")
    kind = TYPES.get(name[dot:].lower()) if dot > 0 else None
    if kind is None:
        guessed, encoding = mimetypes.guess_type(name, strict=False)
        # drawing.svgz is gzip bytes: labelled as SVG, a browser would try to read them as text.
        kind = guessed if guessed and not encoding else "application/octet-stream"
    if kind.startswith("text/") or kind in ("application/json", "application/xml", "image/svg+xml"):
        return kind + "; charset=utf-8"
    return kind


def compressible(kind: str) -> bool:
    base = kind.split(";", 1)[0]
    return base.startswith("text/") or base in COMPRESSIBLE or base.endswith("+xml") or base.endswith("+json")


def http_date(timestamp: float) -> str:
    return formatdate(timestamp, usegmt=True)


def compress(data: bytes, encoding: str) -> bytes:
    # Compressed once per file version and kept, so small files get the best ratio;
    # large ones a level that does not stall the first request for seconds.
    small = len(data) <= 256 * 1024
    if encoding == "br":
        return brotli.compress(data, quality=11 if small else 5)
    return gzip.compress(data, compresslevel=9 if small else 6, mtime=0)


# -- request headers ----------------------------------------------------------------

_encoding_memo: dict[bytes, str | None] = {}


def pick_encoding(accept: bytes | None) -> str | None:
    """The best of br and gzip that Accept-Encoding allows, or None for identity."""
    if not accept:
        return None
    known = _encoding_memo.get(accept)
    if known is not None or accept in _encoding_memo:
        return known
    weights: dict[str, float] = {}
    for item in accept.decode("latin-1").lower().split(","):
        token, _, params = item.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        weights[token.strip()] = q
    star = weights.get("*", 0.0)
    choice = None
    best = 0.0
    for encoding in ENCODINGS:
        q = weights.get(encoding, star)
        if q > best:
            choice, best = encoding, q
    # Browsers send a handful of distinct values; the memo stays tiny unless someone
    # varies the header on purpose, and then it is simply dropped.
    if len(_encoding_memo) > 512:
        _encoding_memo.clear()
    _encoding_memo[accept] = choice
    return choice


def _opaque(tag: str) -> str:
    tag = tag.strip()
    return tag[2:] if tag.startswith("W/") else tag


def etag_matches(if_none_match: bytes, etags: tuple[str, ...]) -> bool:
    """Weak comparison, as If-None-Match asks: any representation of this version."""
    value = if_none_match.decode("latin-1").strip()
    if value == "*":
        return True
    return any(_opaque(tag) in etags for tag in value.split(","))


def modified_since(if_modified_since: bytes, mtime: float) -> bool:
    try:
        since = parsedate_to_datetime(if_modified_since.decode("latin-1")).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return True  # an unreadable date is ignored, as RFC 9110 says
    return int(mtime) > since


def not_modified(if_none_match: bytes | None, if_modified_since: bytes | None,
                 etags: tuple[str, ...], mtime: float) -> bool:
    if if_none_match is not None:
        # When both are sent, If-None-Match decides alone.
        return etag_matches(if_none_match, etags)
    if if_modified_since is not None:
        return not modified_since(if_modified_since, mtime)
    return False


def range_applies(if_range: bytes | None, etag: str, last_modified: str) -> bool:
    """If-Range: the range only if the client's copy is this version (strong match)."""
    if if_range is None:
        return True
    value = if_range.decode("latin-1").strip()
    if value.startswith('"') or value.startswith("W/"):
        return value == etag
    return value == last_modified


UNSATISFIABLE = (-1, -1)


def parse_range(header: bytes, size: int) -> tuple[int, int] | None:
    """(first, last) inclusive for one satisfiable range; UNSATISFIABLE; or None to
    ignore the header and send the whole file (malformed, not bytes, or several ranges:
    a 200 is always a correct answer to those)."""
    value = header.decode("latin-1").strip()
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition("-")
    first_text, last_text = first_text.strip(), last_text.strip()
    if not dash or not (first_text.isdigit() or last_text.isdigit()):
        return None
    if not first_text:
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            return UNSATISFIABLE
        return max(0, size - suffix), size - 1
    first = int(first_text)
    if last_text and (not last_text.isdigit() or int(last_text) < first):
        return None
    if first >= size:
        return UNSATISFIABLE
    return first, min(int(last_text), size - 1) if last_text else size - 1
