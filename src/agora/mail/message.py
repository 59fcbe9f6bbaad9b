"""What the mail service needs to know about a message, protocol-free.

The store calls summarize() at delivery; IMAP uses the Summary's ENVELOPE/BODY
structures and section(); SEARCH uses header_values() and the *_for_search texts;
the webmail uses render(), attachment(), compose() and the subject helpers.
Byte offsets come from mime_structure (raw-faithful); decoding to text uses the
stdlib.  Nothing that reads a message raises on malformed input.
"""
from __future__ import annotations

import binascii
import html as html_lib
import itertools
import json
import mimetypes
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from email import policy as email_policy
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parsedate_to_datetime

import nh3

from . import mime_structure as ms


# --- RFC 2047 and charsets ------------------------------------------------------------------

_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([QqBb])\?([^?\s]*)\?=")


def _decode_bytes(data: bytes, charset: str | None) -> str:
    """Bytes in a declared charset as text; a wrong or unknown label falls back to UTF-8/Latin-1."""
    label = (charset or "").strip().strip('"').lower()
    for candidate in ([label] if label not in ("", "us-ascii", "ascii", "unknown-8bit") else []) + ["utf-8"]:
        try:
            return data.decode(candidate)
        except (LookupError, UnicodeError, ValueError, TypeError):
            continue
    try:
        return data.decode(label if label not in ("", "us-ascii", "ascii") else "latin-1", "replace")
    except (LookupError, ValueError, TypeError):
        return data.decode("latin-1")


def _b64(data: bytes) -> bytes:
    """Lenient base64: junk characters ignored, missing padding added, a dangling character dropped."""
    data = re.sub(rb"[^A-Za-z0-9+/]", b"", data)
    if len(data) % 4 == 1:
        data = data[:-1]
    try:
        return binascii.a2b_base64(data + b"=" * (-len(data) % 4))
    except binascii.Error:
        return b""


def decode_words(text: str) -> str:
    """Decode RFC 2047 encoded words; adjacent words in one charset are joined before decoding
    (senders split multi-byte characters across words), whitespace between words is dropped."""
    out: list[str] = []
    run: list[tuple[str, bytes]] = []  # (charset, bytes) of adjacent encoded words
    pos = 0

    def flush():
        for charset, group in itertools.groupby(run, key=lambda item: item[0].lower()):
            out.append(_decode_bytes(b"".join(data for _, data in group), charset))
        run.clear()

    for m in _ENCODED_WORD.finditer(text):
        between = text[pos:m.start()]
        if between.strip() or not run:
            flush()
            out.append(between)
        charset, enc, payload = m.group(1).split("*")[0], m.group(2).upper(), m.group(3)
        if enc == "B":
            data = _b64(payload.encode("ascii", "replace"))
        else:
            data = binascii.a2b_qp(payload.replace("_", " ").encode("latin-1", "replace"), header=True)
        run.append((charset, data))
        pos = m.end()
    flush()
    out.append(text[pos:])
    return "".join(out)


def _param_value(part: ms.Part, header: str, name: str) -> str | None:
    """A decoded Content-Type/Disposition parameter (RFC 2231 "name*", else RFC 2047 words)."""
    value = part.disposition if header == "content-disposition" else part.get(header)
    if value is None:
        return None
    params = {k.lower(): v for k, v in ms.parse_params(value)[1]}
    if name + "*" in params:
        pieces = params[name + "*"].split("'", 2)
        charset, encoded = (pieces[0], pieces[2]) if len(pieces) == 3 else ("utf-8", pieces[-1])
        return _decode_bytes(urllib.parse.unquote_to_bytes(encoded), charset)
    return decode_words(params[name]) if name in params else None


# --- Summary --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Summary:
    message_id: str | None   # as in the header (angle brackets kept), whitespace stripped
    subject: str             # decoded
    from_: str               # decoded display form of the first From address
    to: str                  # decoded, comma-joined
    cc: str
    date: datetime | None    # aware; None when absent or invalid
    envelope: list           # RFC 3501 ENVELOPE, raw strings
    body: list               # RFC 3501 BODY
    bodystructure: list      # RFC 3501 BODYSTRUCTURE
    has_attachments: bool

    def to_json(self) -> str:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["date"] = self.date.isoformat() if self.date else None
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "Summary":
        data = json.loads(text)
        data["date"] = datetime.fromisoformat(data["date"]) if data["date"] else None
        return cls(**data)


def _display(name: str | None, mailbox: str | None, host: str | None) -> str:
    address = mailbox if host in (None, "MISSING_DOMAIN") else f"{mailbox}@{host}"
    if not name:
        return address or ""
    name = decode_words(name)
    if re.search(r'[,;:<>@"()\[\]\\]', name):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <{address}>"


def format_addresses(addresses: list | None) -> str:
    """Envelope address lists as decoded display text: 'Name <a@b>, c@d, Group: e@f;'."""
    items: list[str] = []
    group: list[str] | None = None
    group_name = ""
    for name, _adl, mailbox, host in addresses or []:
        if mailbox is None:  # end of group
            if group is not None:
                items.append(f"{group_name}: {', '.join(group)};" if group else f"{group_name}:;")
            group = None
        elif host is None:  # start of group
            group, group_name = [], decode_words(mailbox)
        else:
            (group if group is not None else items).append(_display(name, mailbox, host))
    if group is not None:
        items.append(f"{group_name}: {', '.join(group)};")
    return ", ".join(items)


def _parse_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        date = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return date if date.tzinfo else date.replace(tzinfo=timezone.utc)


def summarize(raw: bytes) -> Summary:
    root = ms.parse(raw)
    env = ms.envelope(root)
    first_from = [a for a in env[2] or [] if a[3] is not None][:1]
    body, bodystructure = ms.body_structures(raw, root)
    return Summary(
        message_id=(env[9] or "").strip() or None,
        subject=decode_words(env[1] or "").strip(),
        from_=format_addresses(first_from),
        to=format_addresses(env[5]),
        cc=format_addresses(env[6]),
        date=_parse_date(env[0]),
        envelope=env,
        body=body,
        bodystructure=bodystructure,
        has_attachments=bool(_classify(root)[2]),
    )


# --- IMAP sections ----------------------------------------------------------------------------

_SECTION = re.compile(
    r"(?P<part>[1-9][0-9]*(?:\.[1-9][0-9]*)*)?(?(part)(?:\.(?P<text1>.+))?|(?P<text0>.+)?)", re.S)
_HEADER_FIELDS = re.compile(r"HEADER\.FIELDS(?P<not>\.NOT)?\s*\((?P<names>.*)\)", re.S | re.I)
_FIELD_NAME = re.compile(r'\s*(?:"((?:[^"\\]|\\.)*)"|([^\s()"]+))')


def _field_names(text: str) -> set[str]:
    names, pos = set(), 0
    while text[pos:].strip():
        m = _FIELD_NAME.match(text, pos)
        if m is None:
            raise ValueError(f"bad header list: {text!r}")
        names.add((m.group(2) or re.sub(r"\\(.)", r"\1", m.group(1) or "")).lower())
        pos = m.end()
    if not names:
        raise ValueError("empty header list")
    return names


def section(raw: bytes, spec: str) -> bytes:
    """IMAP BODY[spec] (without the <partial>), byte-exact from raw; b"" for a missing part.
    Raises ValueError for a spec that does not parse (the IMAP answer is BAD)."""
    m = _SECTION.fullmatch(spec)
    if m is None:
        raise ValueError(f"bad section: {spec!r}")
    text = (m.group("text1") or m.group("text0") or "").upper()
    fields = _HEADER_FIELDS.fullmatch(text)
    if text not in ("", "HEADER", "TEXT", "MIME") and fields is None:
        raise ValueError(f"bad section: {spec!r}")
    names = _field_names(fields.group("names")) if fields else set()
    if text == "MIME" and not m.group("part"):
        raise ValueError("MIME needs a part number")
    root = ms.parse(raw)
    if m.group("part"):
        part = ms.find_part(root, [int(n) for n in m.group("part").split(".")])
        if part is None:
            return b""
        if text == "":
            return raw[part.body_start:part.body_end]
        if text == "MIME":
            return raw[part.start:part.body_start]
        if part.kind != "message":
            return b""
        message = part.children[0]
    elif text == "":
        return raw
    else:
        message = root
    if text == "HEADER":
        return raw[message.start:message.body_start]
    if text == "TEXT":
        return raw[message.body_start:message.body_end]
    return ms.header_fields(raw, message, names, exclude=bool(fields.group("not")))


# --- search -----------------------------------------------------------------------------------

def _top_fields(raw: bytes) -> list[ms.Field]:
    if raw.startswith(b"\n") or raw.startswith(b"\r\n"):
        return []
    m = re.search(rb"\n\r?\n", raw)
    return ms.parse_fields(raw, 0, m.start() + 1 if m else len(raw))


def header_values(raw: bytes, name: str) -> list[str]:
    """Decoded values of every occurrence of a top-level header field (SEARCH FROM/TO/HEADER)."""
    name = name.strip().lower()
    return [decode_words(f.value).strip() for f in _top_fields(raw) if f.name == name]


def _part_bytes(raw: bytes, part: ms.Part) -> bytes:
    body = raw[part.body_start:part.body_end]
    encoding = (part.get("content-transfer-encoding") or "").strip().lower()
    if encoding == "base64":
        return _b64(body)
    if encoding == "quoted-printable":
        return binascii.a2b_qp(body)
    return body


def _part_text(raw: bytes, part: ms.Part) -> str:
    return _decode_bytes(_part_bytes(raw, part), part.param("charset")).replace("\r\n", "\n")


def _html_to_text(text: str) -> str:
    # nh3 drops scripts and styles and escapes every "<" that is not a tag, in linear time
    return html_lib.unescape(re.sub(r"<[^>]*>", " ", nh3.clean(text)))


def body_text_for_search(raw: bytes) -> str:
    """Decoded text of every text/* part, attached messages included (SEARCH BODY)."""
    texts = []
    # Only the MIME fields: the others are most of the header and nothing here reads them.
    for part in ms.walk(ms.parse(raw, mime_only=True)):
        if part.kind == "leaf" and part.mtype.lower() == "text":
            text = _part_text(raw, part)
            texts.append(_html_to_text(text) if part.subtype.lower() == "html" else text)
    return "\n".join(texts)


SLICE_BYTES = 1024 * 1024  # of a part's body decoded at once by body_text_slices_for_search
# Charsets in which a line break byte may be part of another character: their parts are
# decoded whole.
_WIDE_CHARSETS = ("utf-16", "utf16", "utf-32", "utf32", "ucs-2", "ucs2", "ucs-4", "ucs4")


def body_text_slices_for_search(raw: bytes) -> Iterator[str]:
    """body_text_for_search's text in slices of about SLICE_BYTES, for a big message:
    each step of decoding, folding and matching then holds the GIL (every thread's, the
    event loop's too) for the time of a slice, not of 50 MB."""
    first = True
    for part in ms.walk(ms.parse(raw, mime_only=True)):
        if part.kind == "leaf" and part.mtype.lower() == "text":
            if not first:
                yield "\n"
            first = False
            html = part.subtype.lower() == "html"
            charset = part.param("charset")
            if (charset or "").strip().strip('"').lower().startswith(_WIDE_CHARSETS):
                text = _part_text(raw, part)
                yield _html_to_text(text) if html else text
                continue
            # Cut after a line break (after a tag's end in HTML): no character, CRLF or
            # tag is cut in two, as long as the charset is ASCII-compatible.
            for piece in _decoded_slices(raw, part, b">" if html else b"\n"):
                text = _decode_bytes(piece, charset).replace("\r\n", "\n")
                yield _html_to_text(text) if html else text


def _decoded_slices(raw: bytes, part: ms.Part, cut: bytes) -> Iterator[bytes]:
    """A part's body, transfer-decoded, in slices that end just after ``cut`` (unless a
    slice's worth of bytes has none)."""
    encoding = (part.get("content-transfer-encoding") or "").strip().lower()
    encoded = encoding in ("base64", "quoted-printable")
    held = b""      # decoded bytes after the last cut, for the next slice
    quartets = b""  # base64 characters short of a whole quartet, for the next slice
    start, end = part.body_start, part.body_end
    while start < end:
        stop = min(end, start + SLICE_BYTES)
        if stop < end:  # encoded, a line stays whole (base64 quartets, QP escapes)
            stop = _slice_end(raw, start, stop, b"\n" if encoded else cut)
        piece = raw[start:stop]
        start = stop
        if not encoded:
            yield piece
            continue
        if encoding == "base64":
            piece = quartets + re.sub(rb"[^A-Za-z0-9+/]", b"", piece)
            whole = len(piece) if start >= end else len(piece) - len(piece) % 4
            piece, quartets = _b64(piece[:whole]), piece[whole:]
        else:
            piece = binascii.a2b_qp(piece)
        piece = held + piece
        held = b""
        if start < end:
            at = _slice_end(piece, 0, len(piece), cut)
            piece, held = piece[:at], piece[at:]
        yield piece


def _slice_end(data: bytes, start: int, stop: int, cut: bytes) -> int:
    """Where a slice of data[start:stop] ends: after its last ``cut``, else after its last
    line break, else (a line longer than a slice) not inside a UTF-8 character or CRLF
    (what is cut off goes with the next slice)."""
    for sep in dict.fromkeys((cut, b"\n")):
        at = data.rfind(sep, start, stop)
        if at >= start:
            return at + 1
    end = stop
    while end - 1 > start and 0x80 <= data[end - 1] < 0xC0:
        end -= 1
    if end - 1 > start and data[end - 1] >= 0xC0:
        end -= 1  # the lead byte of a character that may go on past stop
    elif end == stop and data[end - 1:end] == b"\r":
        end -= 1
    return end


def header_text_for_search(raw: bytes) -> str:
    """Decoded top-level header fields, "name: value" a line (SEARCH TEXT: these, a blank
    line, then the body text)."""
    return "\n".join(f"{f.name}: {decode_words(f.value)}" for f in _top_fields(raw) if f.name)


# --- reading: body and attachments ------------------------------------------------------------

@dataclass(frozen=True)
class Attachment:
    index: int
    filename: str
    content_type: str
    size: int   # decoded bytes


@dataclass(frozen=True)
class Rendered:
    summary: Summary
    text: str | None   # the text/plain body, decoded
    html: str | None   # the text/html body, sanitised
    attachments: list[Attachment]


def _classify(root: ms.Part) -> tuple[list[ms.Part], list[ms.Part], list[ms.Part]]:
    """(text/plain body parts, text/html body parts, attachments) in message order.
    Attached messages are attachments; their parts are not looked into."""
    plain, html, attachments = [], [], []
    for part in ms.walk(root, into_messages=False):
        if part.kind == "multipart":
            continue
        ctype = f"{part.mtype}/{part.subtype}".lower()
        disposition = ms.parse_params(part.disposition or "")[0].lower()
        named = _param_value(part, "content-disposition", "filename") or _param_value(part, "content-type", "name")
        inline = disposition != "attachment" and (not named or disposition == "inline")
        if part.kind == "leaf" and inline and ctype == "text/plain":
            plain.append(part)
        elif part.kind == "leaf" and inline and ctype == "text/html":
            html.append(part)
        elif part.body_end > part.body_start or named:
            attachments.append(part)
    return plain, html, attachments


def _filename(part: ms.Part, index: int) -> str:
    name = _param_value(part, "content-disposition", "filename") or _param_value(part, "content-type", "name")
    name = re.sub(r"[\x00-\x1f\x7f]", "", (name or "").replace("\\", "/")).split("/")[-1].strip(" .")
    if not name and part.kind == "message":  # a forwarded message: name it by its subject
        subject = decode_words(part.children[0].get("subject") or "")
        name = re.sub(r'[\x00-\x1f\x7f/\\:*?"<>|]', "_", subject).strip(" .")[:100] + ".eml" if subject.strip() else ""
    if not name:
        ctype = f"{part.mtype}/{part.subtype}".lower()
        name = f"attachment-{index + 1}{mimetypes.guess_extension(ctype) or '.bin'}"
    return name


def _content_type(part: ms.Part) -> str:
    return f"{part.mtype}/{part.subtype}".lower()


_URL_ATTRIBUTES = {"href", "src", "srcset", "background", "poster", "cite", "longdesc", "action",
                   "formaction", "data", "codebase", "lowsrc", "dynsrc", "usemap", "xlink:href"}


def _filter_attribute(tag: str, attribute: str, value: str) -> str | None:
    """Only cid: images (no remote resources, no tracking pixels); links to the web and mailto."""
    if attribute not in _URL_ATTRIBUTES:
        return value
    scheme = re.sub(r"[\x00-\x20]", "", value).split(":", 1)[0].lower() if ":" in value else ""
    if attribute == "src" and scheme == "cid":
        return value
    if attribute == "href" and tag == "a" and scheme in ("https", "http", "mailto"):
        return value
    return None


def sanitize_html(text: str) -> str:
    return nh3.clean(text, url_schemes={"https", "http", "mailto", "cid"}, attribute_filter=_filter_attribute,
                     link_rel="noopener noreferrer", set_tag_attribute_values={"a": {"target": "_blank"}})


def render(raw: bytes) -> Rendered:
    root = ms.parse(raw)
    plain, html, parts = _classify(root)
    attachments = [Attachment(i, _filename(p, i), _content_type(p), len(_attachment_bytes(raw, p)))
                   for i, p in enumerate(parts)]
    text = "\n".join(_part_text(raw, p) for p in plain) if plain else None
    markup = sanitize_html("\n".join(_part_text(raw, p) for p in html)) if html else None
    return Rendered(summarize(raw), text, markup, attachments)


def _attachment_bytes(raw: bytes, part: ms.Part) -> bytes:
    return raw[part.body_start:part.body_end] if part.kind == "message" else _part_bytes(raw, part)


def attachment(raw: bytes, index: int) -> tuple[str, str, bytes]:
    """(filename, content type, decoded bytes) of the attachment render() lists at index."""
    parts = _classify(ms.parse(raw))[2]
    if not 0 <= index < len(parts):
        raise IndexError(f"no attachment {index}")
    part = parts[index]
    return _filename(part, index), _content_type(part), _attachment_bytes(raw, part)


# --- writing ----------------------------------------------------------------------------------

def compose(*, sender: str, to: list[str], cc: list[str] = (), bcc: list[str] = (), subject: str, text: str,
            attachments: list[tuple[str, str, bytes]] = (), in_reply_to: str | None = None,
            references: list[str] = (), domain: str = "localhost", date: datetime | None = None) -> bytes:
    """A complete RFC 5322 message with CRLF line ends.  Bcc is the envelope's business only:
    it is accepted here so callers pass one recipient set, and never written."""
    msg = EmailMessage(policy=email_policy.SMTP)
    msg["From"] = sender
    if to:
        msg["To"] = ", ".join(to)
    if cc:
        msg["Cc"] = ", ".join(cc)
    msg["Subject"] = subject
    date = date or datetime.now(timezone.utc)
    msg["Date"] = format_datetime(date if date.tzinfo else date.replace(tzinfo=timezone.utc))
    msg["Message-ID"] = make_msgid(domain=domain)
    refs = list(references)
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        if in_reply_to not in refs:
            refs.append(in_reply_to)
    if refs:
        msg["References"] = " ".join(refs)
    msg.set_content(text)
    for filename, content_type, data in attachments:
        maintype, _, subtype = (content_type or "application/octet-stream").partition("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype or "octet-stream", filename=filename)
    for part in msg.walk():
        if part is not msg:  # the email package stamps every part it creates
            del part["MIME-Version"]
    return msg.as_bytes(policy=email_policy.SMTP)


_REPLY_PREFIX = re.compile(r"^\s*(?:(?:re|aw|sv|antw)(?:\[\d+\])?\s*:\s*)+", re.I)
_FORWARD_PREFIX = re.compile(r"^\s*(?:(?:fwd?|wg)\s*:\s*)+", re.I)


def reply_subject(subject: str) -> str:
    return "Re: " + _REPLY_PREFIX.sub("", subject or "").strip()


def forward_subject(subject: str) -> str:
    return "Fwd: " + _FORWARD_PREFIX.sub("", subject or "").strip()


def quote(text: str, author: str, date: datetime | None) -> str:
    """The quoted original for a reply: 'On <date>, <author> wrote:' and '> ' lines."""
    intro = f"On {date:%a, %d %b %Y %H:%M}, {author} wrote:" if date else f"{author} wrote:"
    lines = [(">" + line if line.startswith(">") else "> " + line).rstrip() if line else ">"
             for line in (text or "").replace("\r\n", "\n").split("\n")]
    if lines and lines[-1] == ">" and (text or "").endswith("\n"):
        lines.pop()
    return intro + "\n" + "\n".join(lines) + "\n"
