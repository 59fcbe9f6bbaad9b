"""The MIME structure of a raw message, by byte offsets, as IMAP needs it.

The stdlib ``email`` package re-serialises what it parses, so IMAP's byte-exact
sections and sizes are computed here on the raw bytes.  Where the RFCs leave room
(boundary matching, defaults, RFC 2231 continuations, repeated headers) this
follows what Dovecot does with the same input, so clients see the same answers.
Nothing here raises on bad input: every byte string gives some structure.

Conventions of the nested lists: None is NIL, str a string, int a number and a
list a parenthesised list.  Types, subtypes, encodings, disposition types and
parameter names are upper-cased; values are kept as in the message.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

MAX_DEPTH = 64  # deeper multiparts/messages are treated as opaque leaves

_BLANK_LINE = re.compile(rb"\n\r?\n")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_ADDRESS_HEADERS = ("from", "sender", "reply-to", "to", "cc", "bcc")


def to_text(data: bytes) -> str:
    """Header bytes as str: UTF-8 (RFC 6532) when valid, else Latin-1 (never fails)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


class Field(NamedTuple):
    name: str    # lower-case field name; "" for a line that is not a field
    value: str   # unfolded, leading whitespace removed, not decoded
    start: int   # offsets of the raw field lines (continuations included)
    end: int


@dataclass(eq=False)
class Part:
    start: int          # first byte of the header
    header_end: int     # end of the header lines (the blank line is after it)
    body_start: int     # after the blank line
    body_end: int
    fields: list[Field]
    mtype: str = "text"
    subtype: str = "plain"
    params: list[tuple[str, str]] = field(default_factory=list)
    kind: str = "leaf"  # "leaf", "multipart" or "message"
    mime: bool = True   # False: a message header with neither MIME-Version nor Content-Type
    children: list["Part"] = field(default_factory=list)  # a message has one: its root

    def get(self, name: str) -> str | None:
        """The first value of a header field (MIME headers use the first one)."""
        for f in self.fields:
            if f.name == name:
                return f.value
        return None

    def mime_get(self, name: str) -> str | None:
        """A Content-* field, if this header counts as MIME at all (as Dovecot decides)."""
        return self.get(name) if self.mime else None

    @property
    def disposition(self) -> str | None:
        """Content-Disposition: Dovecot takes the last one (and the first of other fields)."""
        values = [f.value for f in self.fields if f.name == "content-disposition"]
        return values[-1] if values else None

    def param(self, name: str) -> str | None:
        for key, value in self.params:
            if key.lower() == name:
                return value
        return None


@dataclass(eq=False)
class _Stop:
    """A boundary line found in a body: where it starts and ends, which one, if it closes."""
    line_start: int
    line_end: int
    boundary: tuple[bytes]  # a 1-tuple: each multipart's boundary is a distinct object
    close: bool
    outer_end: int = -1     # where the enclosing parts end (set by the part that found it)


# --- header fields and parameters -----------------------------------------------------

def parse_fields(raw: bytes, start: int, end: int) -> list[Field]:
    fields: list[Field] = []
    pos = start
    name, value_start, field_start = None, start, start
    while pos < end:
        nl = raw.find(b"\n", pos, end)
        line_end = end if nl < 0 else nl + 1
        if raw[pos:pos + 1] in (b" ", b"\t") and name is not None:
            pos = line_end
            continue
        if name is not None:
            fields.append(_field(raw, name, value_start, field_start, pos))
        colon = raw.find(b":", pos, line_end)
        if colon < 0:
            name, value_start = "", line_end
        else:
            name, value_start = to_text(raw[pos:colon]).strip().lower(), colon + 1
        field_start = pos
        pos = line_end
    if name is not None:
        fields.append(_field(raw, name, value_start, field_start, end))
    return fields


def _field(raw: bytes, name: str, value_start: int, start: int, end: int) -> Field:
    value = to_text(raw[value_start:end])
    if "\n " in value or "\n\t" in value:  # folded: the regex costs more than this test
        value = _FOLD.sub("", value)
    return Field(name, value.rstrip("\r\n").lstrip(" \t"), start, end)


# A line that may be a MIME-Version or Content-* field, in the lower-cased header after
# the line break that starts it (led by a literal, the regex engine skips from line to
# line). Around the name: what str.strip() drops in ASCII, and any non-ASCII byte, which
# may be Unicode whitespace; mime_fields() then reads the name exactly.
_MIME_FIELD = re.compile(rb"\n[ \t\r\x0b\x0c\x1c-\x1f\x80-\xff]*"
                         rb"(?:mime-version[ \t\r\x0b\x0c\x1c-\x1f\x80-\xff]*|content-[^:\n]*):")


def _is_mime(name: str) -> bool:
    return name.startswith("content-") or name == "mime-version"


def mime_fields(raw: bytes, start: int, end: int) -> list[Field]:
    """The MIME-Version and Content-* fields of parse_fields(raw, start, end), without
    reading the others (most of a message header)."""
    fields = []
    for m in _MIME_FIELD.finditer(b"\n" + raw[start:end].lower()):
        line = start + m.start()  # in raw: the line break before it was prepended
        if line > start and raw[line] in b" \t":  # a continuation line, not a field
            continue
        colon = start + m.end() - 2
        name = to_text(raw[line:colon]).strip().lower()
        if not _is_mime(name):
            continue
        field_end = line
        while True:  # the field runs on over the lines that start with a space or tab
            nl = raw.find(b"\n", field_end, end)
            field_end = end if nl < 0 else nl + 1
            if field_end >= end or raw[field_end] not in b" \t":
                break
        fields.append(_field(raw, name, colon + 1, line, field_end))
    return fields


def _unquote(text: str, i: int) -> tuple[str, int]:
    """The quoted string starting at text[i] == '"': its content and the index after it."""
    out = []
    i += 1
    while i < len(text) and text[i] != '"':
        if text[i] == "\\" and i + 1 < len(text):
            i += 1
        out.append(text[i])
        i += 1
    return "".join(out), i + 1


def _strip_comments(text: str) -> str:
    if "(" not in text:  # nearly always: then the loop below would copy every character
        return text
    out, depth, i = [], 0, 0
    while i < len(text):
        c = text[i]
        if depth == 0 and c == '"':
            _, j = _unquote(text, i)
            out.append(text[i:j])
            i = j
            continue
        if c == "\\" and depth:
            i += 2
            continue
        if c == "(":
            depth += 1
        elif c == ")" and depth:
            depth -= 1
        elif depth == 0:
            out.append(c)
        i += 1
    return "".join(out)


def parse_params(value: str) -> tuple[str, list[tuple[str, str]]]:
    """'main; a=b; c="d"' -> ('main', [('a', 'b'), ('c', 'd')]), RFC 2231 parts merged."""
    text = _strip_comments(value)
    if '"' not in text:  # no quoted ";" to step over
        pieces = text.split(";")
    else:
        pieces, i, begin = [], 0, 0
        while i < len(text):
            if text[i] == '"':
                _, i = _unquote(text, i)
                continue
            if text[i] == ";":
                pieces.append(text[begin:i])
                begin = i + 1
            i += 1
        pieces.append(text[begin:])
    params = []
    for piece in pieces[1:]:
        key, eq, val = piece.partition("=")
        key, val = key.strip(), val.strip()
        if not eq or not key:
            continue
        if val.startswith('"'):
            val = _unquote(val, 0)[0]
        params.append((key, val))
    return pieces[0].strip(), _merge_rfc2231(params)


_CONTINUATION = re.compile(r"^(.+?)\*(\d+)(\*?)$")


def _merge_rfc2231(params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """name*0*=..; name*1=.. -> one "name*" (or "name") parameter, after the plain ones (as Dovecot)."""
    plain, sections = [], {}
    for key, val in params:
        m = _CONTINUATION.match(key)
        if m is None:
            plain.append((key, val))
        else:
            sections.setdefault(m.group(1).lower(), []).append((int(m.group(2)), m.group(1), bool(m.group(3)), val))
    for items in sections.values():
        items.sort(key=lambda item: item[0])
        if [item[0] for item in items] != list(range(len(items))):
            plain.extend((f"{n}*{i}{'*' if ext else ''}", v) for i, n, ext, v in items)
            continue
        extended = any(item[2] for item in items)
        merged = "".join(item[3] for item in items)
        if extended and not items[0][2]:
            merged = "''" + merged
        plain.append((items[0][1] + ("*" if extended else ""), merged))
    return plain


# --- the part tree ------------------------------------------------------------------------

def parse(raw: bytes, mime_only: bool = False) -> Part:
    """The part tree of a whole message (the root spans all of raw). With mime_only, each
    part's ``fields`` are only its MIME-Version and Content-* fields, all that the tree
    and the decoding of its parts need, for a fraction of the cost (SEARCH BODY)."""
    return _parse_part(raw, 0, [], ("text", "plain"), 0, True, mime_fields if mime_only else parse_fields)[0]


def _find_boundary(raw: bytes, pos: int, end: int, bounds: list[tuple[bytes]]) -> _Stop | None:
    """The first line in raw[pos:end] that starts with "--" + a boundary (the longest one wins,
    as in Dovecot: trailing junk after the boundary is allowed)."""
    if not bounds:
        return None
    # Each line is looked up once per boundary length, not compared with every boundary
    # (with 64 nested boundaries a deeply nested message cost seconds). Innermost first
    # among equals, so a reused boundary closes the inner part.
    by_text: dict[bytes, tuple[bytes]] = {}
    for b in bounds:
        by_text.setdefault(b[0], b)
    lengths = sorted({len(text) for text in by_text}, reverse=True)
    line = pos if raw.startswith(b"--", pos) else raw.find(b"\n--", pos, end) + 1 or None
    while line is not None and line < end:
        best = None
        for n in lengths:
            if (best := by_text.get(raw[line + 2:line + 2 + n])) is not None:
                break
        if best is not None:
            nl = raw.find(b"\n", line)
            line_end = len(raw) if nl < 0 else nl + 1
            return _Stop(line, line_end, best, raw.startswith(b"--", line + 2 + len(best[0])))
        line = raw.find(b"\n--", line, end) + 1 or None
    return None


def _content_end(raw: bytes, stop: _Stop, floor: int) -> int:
    """Content ends before the line break that precedes a boundary line (RFC 2046 5.1.1)."""
    end = stop.line_start
    if end > floor and raw[end - 1:end] == b"\n":
        end -= 1
        if end > floor and raw[end - 1:end] == b"\r":
            end -= 1
    return end


def _parse_part(raw: bytes, pos: int, bounds: list[tuple[bytes]], default: tuple[str, str], depth: int,
                message_root: bool, read_fields: Callable[[bytes, int, int], list[Field]]
                ) -> tuple[Part, _Stop | None]:
    """Parse one entity at pos; returns it and the boundary line that ended it (None at the end)."""
    # The header ends at a blank line, looked for only up to the next boundary line (so that
    # many parts without one cost linear time, not quadratic).
    stop = _find_boundary(raw, pos, len(raw), bounds)
    limit = len(raw) if stop is None else stop.line_start
    header_cut = False
    if raw.startswith(b"\n", pos) or raw.startswith(b"\r\n", pos):
        header_end, body_start = pos, raw.find(b"\n", pos) + 1
    elif (m := _BLANK_LINE.search(raw, pos, limit)) is not None:
        header_end, body_start = m.start() + 1, m.end()
    elif stop is not None:  # a boundary inside the header: the part has no body (see _end_at)
        header_end = body_start = _content_end(raw, stop, pos)
        stop.outer_end = stop.line_start
        header_cut = True
    else:
        header_end = body_start = len(raw)
    part = Part(pos, header_end, body_start, body_start, read_fields(raw, pos, header_end))
    part.mime = not message_root or any(f.name in ("mime-version", "content-type") for f in part.fields)
    _content_type(part, default, depth)
    if header_cut:
        if part.kind != "leaf":
            part.children.append(_empty(body_start))
        return part, stop

    if part.kind == "message":
        child, stop = _parse_part(raw, body_start, bounds, ("text", "plain"), depth + 1, True, read_fields)
        part.children.append(child)
        if stop is not None and stop.line_start == body_start:  # nothing inside: end it here
            return part, _end_at(raw, part, stop, header_end)
        part.body_end = len(raw) if stop is None else stop.outer_end
        return part, stop
    if part.kind == "leaf":  # the boundary line found above ends it
        return part, _end_at(raw, part, stop, header_end)

    boundary = part.param("boundary")
    own = (boundary.encode("utf-8", "replace"),) if boundary is not None else None
    inner = [own, *bounds] if own else bounds
    child_default = ("message", "rfc822") if part.subtype.lower() == "digest" else ("text", "plain")
    stop = _find_boundary(raw, body_start, len(raw), inner)
    floor = header_end
    while own and stop is not None and stop.boundary is own:
        if stop.close:  # the epilogue (the close line's own line break included) runs to an outer boundary
            floor = stop.line_end
            stop = _find_boundary(raw, floor, len(raw), bounds)
            break
        if not raw.endswith(b"\n", 0, stop.line_end):  # an unfinished last line starts no part
            stop = None
            break
        child, stop = _parse_part(raw, stop.line_end, inner, child_default, depth + 1, False, read_fields)
        part.children.append(child)
    else:
        if part.children:  # ended by an outer boundary inside the last child, which placed the end
            part.body_end = len(raw) if stop is None else stop.outer_end
            return part, stop
    if not part.children:  # IMAP needs at least one part; Dovecot gives an empty one
        part.children.append(_empty(body_start))
    return part, _end_at(raw, part, stop, floor)


def _end_at(raw: bytes, part: Part, stop: _Stop | None, floor: int) -> _Stop | None:
    """End the part that found the boundary line stop (or ran to the end of the message).
    As in Dovecot, when the line break before the boundary is the header's blank line, it
    leaves the header of this part only; the enclosing parts end after it."""
    if stop is None:
        part.body_end = len(raw)
        return None
    end = _content_end(raw, stop, floor)
    if end < part.body_start:
        part.body_start = end
        stop.outer_end = stop.line_start
    else:
        stop.outer_end = end
    part.body_end = end
    return stop


def _empty(pos: int) -> Part:
    return Part(pos, pos, pos, pos, [])


def _content_type(part: Part, default: tuple[str, str], depth: int) -> None:
    part.mtype, part.subtype = default
    value = part.get("content-type")
    if value is not None:
        main, params = parse_params(value)
        mtype, _, subtype = main.partition("/")
        mtype, subtype = mtype.strip(), subtype.split()[0] if subtype.split() else ""
        if mtype and subtype:  # RFC 2045 5.2: an invalid Content-Type means the default
            part.mtype, part.subtype, part.params = mtype, subtype, params
    if depth < MAX_DEPTH and part.mtype.lower() == "multipart":
        part.kind = "multipart"
    elif depth < MAX_DEPTH and (part.mtype.lower(), part.subtype.lower()) == ("message", "rfc822"):
        part.kind = "message"


# --- IMAP part numbers and sections ------------------------------------------------------

def find_part(root: Part, numbers: list[int]) -> Part | None:
    """The part an IMAP part number names (RFC 3501 6.4.5, resolved the way Dovecot does)."""
    part = root
    for i, num in enumerate(numbers):
        more = i + 1 < len(numbers)
        if part.kind == "multipart":
            if num > len(part.children):
                return None
            part = part.children[num - 1]
        elif num != 1 or (more and part.kind != "message"):
            return None
        if more and part.kind == "message":
            part = part.children[0]
    return part


def header_fields(raw: bytes, part: Part, names: set[str], exclude: bool) -> bytes:
    """HEADER.FIELDS[.NOT]: the matching raw field lines and the blank line."""
    out = [raw[f.start:f.end] for f in part.fields if (f.name in names) != exclude]
    blank = raw[part.header_end:part.body_start]
    out.append(blank if blank or exclude else b"\r\n")
    return b"".join(out)


# --- addresses (RFC 5322 3.4, read leniently) --------------------------------------------

_ATOM_END = frozenset(' \t\r\n()<>@,;:".[')


def _address_tokens(text: str) -> list[tuple[str, str, bool]]:
    """(kind, value, preceded by space): kind is atom, quoted, comment, literal or the special itself."""
    out, i, n, space = [], 0, len(text), False
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            space, i = True, i + 1
            continue
        if c == "(":
            depth, j, buf = 1, i + 1, []
            while j < n and depth:
                ch = text[j]
                if ch == "\\" and j + 1 < n:
                    buf.append(text[j + 1])
                    j += 2
                    continue
                depth += (ch == "(") - (ch == ")")
                if depth:
                    buf.append(ch)
                j += 1
            out.append(("comment", "".join(buf), space))
            i = j
        elif c == '"':
            value, i = _unquote(text, i)
            out.append(("quoted", value, space))
        elif c == "[":
            j = text.find("]", i)
            j = n if j < 0 else j + 1
            out.append(("literal", text[i:j], space))
            i = j
        elif c in _ATOM_END:
            out.append((c, c, space))
            i += 1
        else:
            j = i
            while j < n and text[j] not in _ATOM_END:
                j += 1
            out.append(("atom", text[i:j], space))
            i = j
        space = False
    return out


def parse_address_list(text: str) -> list[list]:
    """Envelope addresses [name, adl, mailbox, host] (raw, not RFC 2047 decoded); a group is
    [None, None, name, None], its members, then [None, None, None, None] (RFC 3501 7.4.2)."""
    tokens = _address_tokens(text)
    out: list[list] = []
    i = 0
    while i < len(tokens):
        i = _address(tokens, i, out, False)
    return out


def _phrase(words: list[tuple[str, str, bool]]) -> str | None:
    text = "".join((" " if space and k else "") + value for k, (_, value, space) in enumerate(words))
    return text or None


def _address(tokens: list, i: int, out: list, in_group: bool) -> int:
    n = len(tokens)
    words, comments = [], []
    while i < n and tokens[i][0] in ("atom", "quoted", ".", "literal", "comment"):
        if tokens[i][0] != "comment":
            words.append(tokens[i])
        elif words:  # a comment after the address may name it; one before it does not
            comments.append(tokens[i][1])
        i += 1
    kind = tokens[i][0] if i < n else None
    if kind == ":" and not in_group:
        out.append([None, None, _phrase(words) or "", None])
        i += 1
        while i < n and tokens[i][0] != ";":
            i = _address(tokens, i, out, True)
        out.append([None, None, None, None])
        return i + 1
    if kind == "<":
        name, adl, i = _phrase(words), None, i + 1
        if i < n and tokens[i][0] == "@":
            start = i
            while i < n and tokens[i][0] not in (":", ">"):
                i += 1
            adl = "".join(t[1] for t in tokens[start:i])
            if i < n and tokens[i][0] == ":":
                i += 1
        local = []
        while i < n and tokens[i][0] not in ("@", ">", ","):
            local.append(tokens[i])
            i += 1
        host, i, _ = _domain(tokens, i)
        out.append([name, adl, *_mailbox_host(local, host)])
        if i < n and tokens[i][0] == ">":
            i += 1
    elif kind == "@" or words:
        host, i, more = _domain(tokens, i)
        comments += more
        name = comments[0] if comments else None
        out.append([name or None, None, *_mailbox_host(words, host)])
    elif kind == ",":  # an empty element
        return i + 1
    elif kind is None or (kind == ";" and in_group):
        return i
    else:
        i += 1  # a stray special: skip it
    while i < n and tokens[i][0] != "," and not (in_group and tokens[i][0] == ";"):
        i += 1  # junk after an address, up to the next one
    return i + 1 if i < n and tokens[i][0] == "," else i


def _domain(tokens: list, i: int) -> tuple[str | None, int, list[str]]:
    """After '@': the domain (None when there is no '@'), the next index, the comments seen."""
    if i >= len(tokens) or tokens[i][0] != "@":
        return None, i, []
    i += 1
    parts, comments = [], []
    while i < len(tokens) and tokens[i][0] in ("atom", "quoted", ".", "literal", "comment"):
        (comments if tokens[i][0] == "comment" else parts).append(tokens[i][1])
        i += 1
    return "".join(parts), i, comments


def _mailbox_host(local: list, host: str | None) -> list[str]:
    mailbox = "".join(t[1] for t in local if t[0] != "comment")
    return [mailbox or "MISSING_MAILBOX", host or "MISSING_DOMAIN"]


# --- ENVELOPE and BODYSTRUCTURE -------------------------------------------------------------

def envelope(part: Part) -> list:
    """RFC 3501 ENVELOPE of a message (raw strings; repeated address fields are joined)."""
    last: dict[str, str] = {}
    addresses: dict[str, list] = {}
    for f in part.fields:
        if f.name == "subject":  # Dovecot normalises the subject's white space, no other field's
            last[f.name] = re.sub(r"[ \t\r\n]+", " ", f.value).strip(" ")
        elif f.name in ("date", "in-reply-to", "message-id"):
            last[f.name] = f.value
        elif f.name in _ADDRESS_HEADERS:
            addresses.setdefault(f.name, []).extend(parse_address_list(f.value))
    lists = {name: addresses.get(name) or None for name in _ADDRESS_HEADERS}
    for name in ("sender", "reply-to"):
        lists[name] = lists[name] or lists["from"]
    return [last.get("date"), last.get("subject"), lists["from"], lists["sender"], lists["reply-to"],
            lists["to"], lists["cc"], lists["bcc"], last.get("in-reply-to"), last.get("message-id")]


def _param_list(params: list[tuple[str, str]]) -> list | None:
    return [item for key, value in params for item in (key.upper(), value)] or None


def _disposition(part: Part) -> list | None:
    value = part.disposition if part.mime else None
    if value is None:
        return None
    main, params = parse_params(value)
    return [main.upper(), _param_list(params)]


def _extension(part: Part) -> list:
    language = part.mime_get("content-language")
    langs = [t.strip() for t in _strip_comments(language).split(",") if t.strip()] if language else []
    return [_disposition(part), langs or None, part.mime_get("content-location")]


def body_structures(raw: bytes, part: Part) -> tuple[list, list]:
    """RFC 3501 BODY and BODYSTRUCTURE of a part, made in one walk: the second is the
    first with extension data, so the work of both (parameters, envelopes of attached
    messages, line counts) is done once."""
    if part.kind == "multipart":
        pairs = [body_structures(raw, child) for child in part.children]
        subtype = part.subtype.upper()
        return ([basic for basic, _ in pairs] + [subtype],
                [extended for _, extended in pairs] + [subtype, _param_list(part.params), *_extension(part)])
    params = list(part.params)
    is_text = part.mtype.lower() == "text"
    if is_text and part.param("charset") is None:
        params.append(("charset", "us-ascii"))
    encoding = part.mime_get("content-transfer-encoding")
    encoding = encoding.split()[0] if encoding and encoding.split() else "7bit"
    fields = [part.mtype.upper(), part.subtype.upper(), _param_list(params), part.mime_get("content-id"),
              part.mime_get("content-description"), encoding.upper(), part.body_end - part.body_start]
    lines = raw.count(b"\n", part.body_start, part.body_end)
    if part.kind == "message":
        child = part.children[0]
        child_basic, child_extended = body_structures(raw, child)
        child_envelope = envelope(child)
        basic = fields + [child_envelope, child_basic, lines]
        extended = fields + [child_envelope, child_extended, lines]
    elif is_text:
        basic = fields + [lines]
        extended = list(basic)
    else:
        basic, extended = fields, list(fields)
    extended += [part.mime_get("content-md5"), *_extension(part)]
    return basic, extended


def walk(part: Part, into_messages: bool = True):
    """Every part, depth first (the parts of attached messages too, unless into_messages=False)."""
    yield part
    if part.kind == "multipart" or (into_messages and part.kind == "message"):
        for child in part.children:
            yield from walk(child, into_messages)
