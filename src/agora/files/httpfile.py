"""HTTP semantics of serving one stored file: the one definition that users' sites, the
files API, share links and WebDAV all answer by.

Content types, dates, validators and conditional requests (RFC 9110 13), one byte range
(RFC 9110 14), gzip/br negotiation. Pure functions over str and numbers: no sockets and
no framework, so that the sites fast path can call them without Starlette's overhead.
Header values are str as Starlette gives them; the fast path decodes the few it passes
here from latin-1 (as Starlette does), once per request.
"""

from __future__ import annotations

import gzip
import mimetypes
import re
from datetime import timezone
from email.utils import formatdate, parsedate_to_datetime
from typing import Collection
from urllib.parse import quote

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
# Text that is not text/*: without a charset a browser guesses, and guesses wrong for
# anything but ASCII.
CHARSET_TYPES = ("application/json", "application/xml", "image/svg+xml")
# Compressing these pays; images, fonts (woff2 already is) and archives do not shrink.
COMPRESSIBLE = {"application/json", "application/xml", "image/svg+xml", "application/wasm",
                "application/manifest+json", "font/ttf", "font/otf", "image/x-icon"}
# Below this, the headers outweigh what compression saves.
MIN_COMPRESS = 256
ENCODINGS = ("br", "gzip")


def content_type(name: str) -> str:
    """The Content-Type of a file called ``name``, whichever protocol serves it."""
    dot = name.rfind(".")
    kind = TYPES.get(name[dot:].lower()) if dot > 0 else None
    if kind is None:
        guessed, encoding = mimetypes.guess_type(name, strict=False)
        # drawing.svgz is gzip bytes: labelled as SVG, a browser would try to read them as
        # text, or unpack them behind the user's back.
        kind = guessed if guessed and not encoding else "application/octet-stream"
    if kind.startswith("text/") or kind in CHARSET_TYPES:
        return kind + "; charset=utf-8"
    return kind


def compressible(kind: str) -> bool:
    base = kind.split(";", 1)[0]
    return base.startswith("text/") or base in COMPRESSIBLE or base.endswith("+xml") or base.endswith("+json")


def compress(data: bytes, encoding: str) -> bytes:
    # Compressed once per file version and kept, so small files get the best ratio;
    # large ones a level that does not stall the first request for seconds.
    small = len(data) <= 256 * 1024
    if encoding == "br":
        return brotli.compress(data, quality=11 if small else 5)
    return gzip.compress(data, compresslevel=9 if small else 6, mtime=0)


def content_disposition(kind: str, name: str) -> str:
    """``kind`` ("attachment" or "inline") with ``name``; RFC 6266's filename* carries a
    name that is not plain ASCII, the plain fallback is for clients that predate it."""
    fallback = "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\;%' else "_" for c in name) or "download"
    encoded = quote(name, safe="")
    if encoded == name:
        return f'{kind}; filename="{name}"'
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


# -- dates ----------------------------------------------------------------------------


def http_date(timestamp: float) -> str:
    return formatdate(timestamp, usegmt=True)


def parse_http_date(value: str) -> float | None:
    """The time in an HTTP date (any of its three formats), or None when it is not one."""
    try:
        date = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if date.tzinfo is None:
        # asctime dates carry no zone; HTTP dates are all GMT, never the server's local time.
        date = date.replace(tzinfo=timezone.utc)
    try:
        return date.timestamp()
    except (ValueError, OverflowError):
        return None


def modified_since(value: str, mtime: float) -> bool | None:
    """Whether a file of ``mtime`` changed after the date in ``value``; None when
    ``value`` is no date, and the header that sent it is then ignored (RFC 9110 13.1.3-4)."""
    since = parse_http_date(value)
    if since is None:
        return None
    # HTTP dates have whole seconds: a file changed within the second is "unmodified".
    return int(mtime) > since


# -- entity tags ----------------------------------------------------------------------

# A comma may sit inside a tag's quotes, so a list is read tag by tag, not split on commas.
_ETAG = re.compile(r'(?:W/)?"[^"]*"')


def etag_matches(if_match: str, etag: str) -> bool:
    """If-Match's strong comparison: ``etag``, the current version's, is listed as is."""
    if if_match.strip() == "*":
        return True
    return any(tag == etag and not tag.startswith("W/") for tag in _ETAG.findall(if_match))


def none_match(if_none_match: str, etags: Collection[str]) -> bool:
    """If-None-Match's weak comparison: a listed tag, W/ or not, is one of ``etags`` (the
    strong tags of this version's representations), or the list is ``*``."""
    value = if_none_match.strip()
    if value in etags or value == "*":
        return True  # a browser revalidating sends the one tag it has: no need to parse a list
    return any(tag.removeprefix("W/") in etags for tag in _ETAG.findall(value))


def not_modified(if_none_match: str | None, if_modified_since: str | None,
                 etags: Collection[str], mtime: float) -> bool:
    """Whether a GET or HEAD is answered 304 (RFC 9110 13.2.2, steps 3 and 4)."""
    if if_none_match is not None:
        # When both are sent, If-None-Match decides alone.
        return none_match(if_none_match, etags)
    if if_modified_since is not None:
        return modified_since(if_modified_since, mtime) is False
    return False


# -- ranges ---------------------------------------------------------------------------


def range_applies(if_range: str | None, etag: str, last_modified: str) -> bool:
    """If-Range: the range only if the client's copy is this version (strong comparison;
    a date must be this Last-Modified exactly)."""
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith('"') or value.startswith("W/"):
        return value == etag
    return value == last_modified


UNSATISFIABLE = (-1, -1)
# ASCII digits only (str.isdigit would take "²", which int() refuses), and no more than
# an offset can need, so a hostile header cannot make a huge int.
_RANGE = re.compile(r"\s*bytes\s*=\s*([0-9]{0,19})\s*-\s*([0-9]{0,19})\s*", re.IGNORECASE | re.ASCII)


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(first, last) inclusive for one satisfiable range; UNSATISFIABLE; or None to
    ignore the header and send the whole file (malformed, not bytes, or several ranges:
    a 200 is always a correct answer to those)."""
    match = _RANGE.fullmatch(header)
    if match is None:
        return None
    first_text, last_text = match.groups()
    if not first_text:
        if not last_text:
            return None
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            return UNSATISFIABLE
        return max(0, size - suffix), size - 1
    first = int(first_text)
    if last_text and int(last_text) < first:
        return None  # invalid, so ignored (RFC 9110 14.1.1)
    if first >= size:
        return UNSATISFIABLE
    return first, min(int(last_text), size - 1) if last_text else size - 1


# -- content coding -------------------------------------------------------------------

_encoding_memo: dict[str, str | None] = {}


def pick_encoding(accept: str | None) -> str | None:
    """The best of br and gzip that Accept-Encoding allows, or None for identity."""
    if not accept:
        return None
    known = _encoding_memo.get(accept)
    if known is not None or accept in _encoding_memo:
        return known
    weights: dict[str, float] = {}
    for item in accept.lower().split(","):
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
