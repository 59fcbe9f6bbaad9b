"""The arguments of each command (see grammar.py for what each returns)."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, Callable

from agora.mail.imap.grammar import MAX_DEPTH, Bad, FetchAtt, Reader, _ASTRING

STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "SIZE", "HIGHESTMODSEQ")
SIMPLE_FETCH = ("ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822", "RFC822.HEADER", "RFC822.SIZE",
                "RFC822.TEXT", "BODY", "BODYSTRUCTURE", "UID")
MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_FETCH_NAME = re.compile(rb"[A-Za-z0-9.]+")
_SECTION_SPEC = re.compile(rb"[A-Za-z0-9.]*")
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")
_SECTION = re.compile(r"(?:(\d+(?:\.\d+)*)(?:\.|$))?(HEADER|HEADER\.FIELDS|HEADER\.FIELDS\.NOT|TEXT|MIME)?")
_STORE_ITEM = re.compile(rb"[+-]?[A-Za-z.]+")
_WORD = re.compile(rb"[A-Za-z]*")
_BASE64 = re.compile(rb"[A-Za-z0-9+/]*={0,2}")


def _none(reader: Reader) -> tuple[Any, ...]:
    return ()


def _mailbox(reader: Reader) -> tuple[Any, ...]:
    reader.sp()
    return (reader.mailbox(),)


def _select(reader: Reader) -> tuple[Any, ...]:
    reader.sp()
    name = reader.mailbox()
    if reader.maybe(b" "):
        _skip_value(reader)  # select parameters (CONDSTORE...): none is offered
    return (name,)


def _login(reader: Reader) -> tuple[Any, ...]:
    reader.sp()
    user = reader.text_arg("a user name")
    reader.sp()
    return (user, reader.text_arg("a password"))


def _authenticate(reader: Reader) -> tuple[Any, ...]:
    reader.sp()
    mechanism = reader.atom("a SASL mechanism").upper()
    initial = None
    if reader.maybe(b" "):
        initial = decode_sasl(reader._match(_BASE64, "a base64 initial response"))
    return (mechanism, initial)


def decode_sasl(data: bytes) -> bytes:
    """A SASL response; "=" is the empty one (RFC 4959)."""
    if data.strip() == b"=":
        return b""
    try:
        return base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise Bad("not valid base64") from None


def _rename(reader: Reader) -> tuple[Any, ...]:
    reader.sp()
    old = reader.mailbox()
    reader.sp()
    return (old, reader.mailbox())


def _list(reader: Reader) -> tuple[Any, ...]:
    reader.sp()
    selection: list[str] = []
    if reader.peek() == 0x28:
        selection = [a.upper() for a in reader.paren_list(reader.atom)]
        reader.sp()
    reference = reader.list_mailbox()
    reader.sp()
    if reader.peek() == 0x28:
        patterns = reader.paren_list(reader.list_mailbox)
    else:
        patterns = [reader.list_mailbox()]
    returns: list[str] = []
    if reader.maybe(b" "):
        if reader.atom("RETURN").upper() != "RETURN":
            raise Bad("expected RETURN")
        reader.sp()
        reader.expect(b"(")
        while not reader.maybe(b")"):
            if returns:
                reader.sp()
            returns.append(reader.atom("a return option").upper())
            if reader.peek() == 0x20 and reader.text[reader.pos + 1:reader.pos + 2] == b"(":
                reader.sp()
                _skip_value(reader)
    return (reference, patterns, selection, returns)


def _lsub(reader: Reader) -> tuple[Any, ...]:
    reference, patterns, _, _ = _list(reader)
    return (reference, patterns)


def _status(reader: Reader) -> tuple[Any, ...]:
    reader.sp()
    name = reader.mailbox()
    reader.sp()
    items = [a.upper() for a in reader.paren_list(reader.atom)]
    for item in items:
        if item not in STATUS_ITEMS:
            raise Bad(f"unknown STATUS item {item[:30]}")
    if not items:
        raise Bad("STATUS needs at least one item")
    return (name, items)


def _append(reader: Reader) -> tuple[Any, ...]:
    reader.sp()
    name = reader.mailbox()
    reader.sp()
    flags: list[str] = []
    when = None
    if reader.peek() == 0x28:
        flags = [f for f in reader.flag_list() if f not in ("\\Recent", "\\*")]
        reader.sp()
    if reader.peek() == 0x22:
        when = reader.date_time()
        reader.sp()
    if reader.peek() not in (0x7B, 0x7E):
        raise Bad("expected the message as a literal")
    return (name, flags, when, reader.literal())


def _search(reader: Reader) -> tuple[Any, ...]:
    reader.sp()
    charset = None
    keys = []
    start = reader.pos
    if reader._match(_WORD, "").upper() == b"CHARSET" and reader.peek() == 0x20:
        reader.sp()
        charset = reader.astring("a charset").decode("ascii", "replace").upper()
        reader.sp()
    else:
        reader.pos = start
    keys.append(search_key(reader))
    while reader.maybe(b" "):
        keys.append(search_key(reader))
    return (charset, keys[0] if len(keys) == 1 else ("AND", keys))


_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True), "UNANSWERED": ("\\Answered", False),
    "DELETED": ("\\Deleted", True), "UNDELETED": ("\\Deleted", False),
    "DRAFT": ("\\Draft", True), "UNDRAFT": ("\\Draft", False),
    "FLAGGED": ("\\Flagged", True), "UNFLAGGED": ("\\Flagged", False),
    "SEEN": ("\\Seen", True), "UNSEEN": ("\\Seen", False),
}
_ADDRESS_KEYS = ("FROM", "TO", "CC", "BCC", "SUBJECT")


def search_key(reader: Reader) -> tuple[Any, ...]:
    char = reader.peek()
    if char is not None and (0x30 <= char <= 0x39 or char == 0x2A):
        return ("SEQ", reader.sequence_set())
    if char == 0x28:
        reader.depth += 1
        if reader.depth > MAX_DEPTH:
            raise Bad("search keys nested too deeply")
        keys = reader.paren_list(lambda: search_key(reader))
        reader.depth -= 1
        if not keys:
            raise Bad("empty search key list")
        return keys[0] if len(keys) == 1 else ("AND", keys)
    name = reader.atom("a search key").upper()
    if name in _FLAG_KEYS:
        return ("FLAG", *_FLAG_KEYS[name])
    if name in ("ALL", "NEW", "OLD", "RECENT"):
        return (name,)
    reader.sp()
    if name in ("KEYWORD", "UNKEYWORD"):
        return ("FLAG", reader.flag(), name == "KEYWORD")
    if name in ("BEFORE", "ON", "SINCE"):
        return ("DATE", name, reader.date())
    if name in ("SENTBEFORE", "SENTON", "SENTSINCE"):
        return ("SENT", name[4:], reader.date())
    if name in ("LARGER", "SMALLER"):
        return ("SIZE", name, reader.number())
    if name == "UID":
        return ("UID", reader.sequence_set())
    if name in _ADDRESS_KEYS:
        return ("HEADER", name, reader.text_arg())
    if name == "HEADER":
        field = reader.astring("a header field name").decode("ascii", "replace").upper()
        reader.sp()
        return ("HEADER", field, reader.text_arg())
    if name in ("BODY", "TEXT"):
        return (name, reader.text_arg())
    if name in ("NOT", "OR"):
        reader.depth += 1
        if reader.depth > MAX_DEPTH:
            raise Bad("search keys nested too deeply")
        first = search_key(reader)
        if name == "NOT":
            reader.depth -= 1
            return ("NOT", first)
        reader.sp()
        second = search_key(reader)
        reader.depth -= 1
        return ("OR", first, second)
    raise Bad(f"unknown search key {name[:30]}")


def _fetch(reader: Reader) -> tuple[Any, ...]:
    reader.sp()
    sequence = reader.sequence_set()
    reader.sp()
    if reader.peek() == 0x28:
        atts = reader.paren_list(lambda: fetch_att(reader))
        if not atts:
            raise Bad("empty fetch attribute list")
    else:
        start = reader.pos
        word = reader._match(_FETCH_NAME, "a fetch attribute").decode().upper()
        if word in MACROS and reader.peek() != 0x5B:
            atts = [FetchAtt(n) for n in MACROS[word]]
        else:
            reader.pos = start
            atts = [fetch_att(reader)]
    return (sequence, atts)


def fetch_att(reader: Reader) -> FetchAtt:
    name = reader._match(_FETCH_NAME, "a fetch attribute").decode().upper()
    if reader.peek() != 0x5B:  # "["
        if name not in SIMPLE_FETCH:
            raise Bad(f"unknown fetch attribute {name[:30]}")
        return FetchAtt(name)
    if name not in ("BODY", "BODY.PEEK"):
        raise Bad(f"{name[:30]} takes no section")
    reader.pos += 1
    section = fetch_section(reader)
    partial = None
    if reader.maybe(b"<"):
        origin = reader.number("an offset")
        reader.expect(b".")
        count = reader.number("a length")
        if count == 0:
            raise Bad("a partial length is at least 1")
        reader.expect(b">")
        partial = (origin, count)
    return FetchAtt("BODY", section, partial, peek=name == "BODY.PEEK")


def fetch_section(reader: Reader) -> str:
    spec = reader._match(_SECTION_SPEC, "a section").decode().upper()
    match = _SECTION.fullmatch(spec)
    if not match or (match.group(2) == "MIME" and not match.group(1)):
        raise Bad(f"bad section {spec[:40]}")
    if spec.endswith("."):
        raise Bad(f"bad section {spec[:40]}")
    if match.group(2) in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        reader.sp()
        fields = reader.paren_list(lambda: reader.astring("a header field name").decode("ascii", "replace"))
        if not fields or not all(_FIELD_NAME.fullmatch(f) for f in fields):
            raise Bad("bad header field list")
        spec = f"{spec} ({' '.join(f.upper() for f in fields)})"
    reader.expect(b"]")
    return spec


def _store(reader: Reader) -> tuple[Any, ...]:
    reader.sp()
    sequence = reader.sequence_set()
    reader.sp()
    item = reader._match(_STORE_ITEM, "+FLAGS, -FLAGS or FLAGS").decode().upper()
    mode = {"+": "add", "-": "remove"}.get(item[0], "set")
    item = item.lstrip("+-")
    if item not in ("FLAGS", "FLAGS.SILENT"):
        raise Bad("expected FLAGS, +FLAGS or -FLAGS")
    reader.sp()
    if reader.peek() == 0x28:
        flags = reader.flag_list()
    else:
        flags = [reader.flag()]
        while reader.maybe(b" "):
            flags.append(reader.flag())
    flags = [f for f in flags if f not in ("\\Recent", "\\*")]
    return (sequence, mode, item.endswith(".SILENT"), flags)


def _copy(reader: Reader) -> tuple[Any, ...]:
    reader.sp()
    sequence = reader.sequence_set()
    reader.sp()
    return (sequence, reader.mailbox())


def _id(reader: Reader) -> tuple[Any, ...]:
    reader.sp()
    if reader.peek() != 0x28:
        if reader.atom("NIL or a list").upper() != "NIL":
            raise Bad("expected NIL or a list")
        return (None,)
    reader.expect(b"(")
    fields: dict[str, str | None] = {}
    while not reader.maybe(b")"):
        if fields:
            reader.sp()
        key = reader.string().decode("utf-8", "replace")[:64]
        reader.sp()
        value = reader.nstring()
        if len(fields) < 30:
            fields[key] = value.decode("utf-8", "replace")[:1024] if value is not None else None
    return (fields,)


def _enable(reader: Reader) -> tuple[Any, ...]:
    names = []
    while reader.maybe(b" "):
        names.append(reader.atom("a capability").upper())
    if not names:
        raise Bad("ENABLE needs a capability")
    return tuple(names)


def _skip_value(reader: Reader) -> None:
    """Read one value of any shape (an atom, a string, a nested list) and ignore it."""
    if reader.peek() == 0x28:
        reader.depth += 1
        if reader.depth > MAX_DEPTH:
            raise Bad("nested too deeply")
        reader.paren_list(lambda: _skip_value(reader))
        reader.depth -= 1
    elif reader.peek() in (0x22, 0x7B):
        reader.string()
    else:
        reader._match(_ASTRING, "a value")


ARGUMENTS: dict[str, Callable[[Reader], tuple[Any, ...]]] = {
    "CAPABILITY": _none, "NOOP": _none, "LOGOUT": _none, "STARTTLS": _none, "CHECK": _none,
    "CLOSE": _none, "UNSELECT": _none, "EXPUNGE": _none, "IDLE": _none, "NAMESPACE": _none,
    "LOGIN": _login, "AUTHENTICATE": _authenticate,
    "SELECT": _select, "EXAMINE": _select, "CREATE": _mailbox, "DELETE": _mailbox,
    "SUBSCRIBE": _mailbox, "UNSUBSCRIBE": _mailbox, "RENAME": _rename,
    "LIST": _list, "LSUB": _lsub, "STATUS": _status, "APPEND": _append,
    "SEARCH": _search, "FETCH": _fetch, "STORE": _store, "COPY": _copy, "MOVE": _copy,
    "ID": _id, "ENABLE": _enable,
}
