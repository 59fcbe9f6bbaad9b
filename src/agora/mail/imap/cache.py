"""What the session computes once per message and keeps in memory, shared by all
sessions of this process: serialised ENVELOPE/BODYSTRUCTURE/BODY, the decoded
header values SEARCH looks at and the body text SEARCH BODY/TEXT looks into. Keyed by
(folder id, UIDVALIDITY, UID), which never names two different messages (and a
message never changes), so nothing here is ever stale; all of it can be made again."""

from __future__ import annotations

import weakref
from collections import OrderedDict
from datetime import date
from typing import Any

from agora.mail.imap import responses

MAX_ENTRIES = 60_000
# ENVELOPE's fields, in its order (RFC 3501 7.4.2), and which SEARCH keys read them.
ENVELOPE_FIELDS = {"DATE": 0, "SUBJECT": 1, "FROM": 2, "SENDER": 3, "REPLY-TO": 4, "TO": 5, "CC": 6,
                   "BCC": 7, "IN-REPLY-TO": 8, "MESSAGE-ID": 9}


def summary(meta: Any) -> Any:
    """The message's Summary, without keeping the parsed form on the meta (it is several
    times the size of its JSON, and a session holds the metas of its whole mailbox)."""
    parsed = meta.__dict__.get("summary") if hasattr(meta, "__dict__") else None
    if parsed is not None:
        return parsed
    text = getattr(meta, "summary_json", None)
    if text is None:
        return meta.summary
    from agora.mail.message import Summary
    return Summary.from_json(text)


class Entry:
    """What is kept of one message: bytes and strings only, never the meta itself."""

    __slots__ = ("envelope", "bodystructure", "body", "fields", "sent")

    def __init__(self) -> None:
        self.envelope: bytes | None = None
        self.bodystructure: bytes | None = None
        self.body: bytes | None = None
        self.fields: dict[str, str] | None = None
        self.sent: date | None | bool = False  # False: not computed yet

    def envelope_bytes(self, meta: Any) -> bytes:
        if self.envelope is None:
            self.envelope = responses.encode(summary(meta).envelope)
        return self.envelope

    def bodystructure_bytes(self, meta: Any) -> bytes:
        if self.bodystructure is None:
            self.bodystructure = responses.encode(summary(meta).bodystructure)
        return self.bodystructure

    def body_bytes(self, meta: Any) -> bytes:
        if self.body is None:
            self.body = responses.encode(summary(meta).body)
        return self.body

    def field(self, meta: Any, name: str) -> str | None:
        """A header field from the envelope, decoded and case-folded for SEARCH; None
        when the envelope does not carry it (the message must be read)."""
        index = ENVELOPE_FIELDS.get(name)
        if index is None:
            return None
        if self.fields is None:
            # All of them at once: one parse of the summary for every field searched.
            envelope = summary(meta).envelope
            self.fields = {key: _search_text(envelope[i]).casefold()
                           for key, i in ENVELOPE_FIELDS.items() if key != "DATE"}
        return self.fields.get(name)

    def sent_date(self, meta: Any) -> date | None:
        """The Date: header's day as written there (RFC 3501: time and zone do not count)."""
        if self.sent is False:
            when = summary(meta).date
            self.sent = when.date() if when is not None else None
        return self.sent  # type: ignore[return-value]


def _search_text(value: Any) -> str:
    """An envelope field as decoded text: a string, or an address list as
    "Name <mailbox@host>, ..."."""
    from agora.mail.message import decode_words, format_addresses
    if value is None:
        return ""
    if isinstance(value, str):
        return decode_words(value)
    try:
        return format_addresses(value)
    except (TypeError, ValueError):
        return ""


class MessageCache:
    def __init__(self, max_entries: int = MAX_ENTRIES):
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[int, int, int], Entry] = OrderedDict()

    def get(self, folder: Any, meta: Any) -> Entry:
        key = (folder.id, folder.uidvalidity, meta.uid)
        entries = self._entries
        entry = entries.get(key)
        if entry is None:
            entry = entries[key] = Entry()
            if len(entries) > self.max_entries:
                entries.popitem(last=False)
        else:
            entries.move_to_end(key)
        return entry

    def clear(self) -> None:
        self._entries.clear()


class BodyTexts:
    """Messages' body text as SEARCH BODY/TEXT match it (case-folded, UTF-8), up to
    ``max_bytes`` in all, the least recently used dropped first. Decoding MIME is most of
    the cost of such a search; this makes the next one over the same messages a scan of
    memory. Used from the event loop only (no lock)."""

    ENTRY_OVERHEAD = 200  # bytes of the dict entry, key and bytes object, counted in the budget

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.size = 0
        self._texts: OrderedDict[tuple[int, int, int], bytes] = OrderedDict()

    def get(self, key: tuple[int, int, int]) -> bytes | None:
        text = self._texts.get(key)
        if text is not None:
            self._texts.move_to_end(key)
        return text

    def put(self, key: tuple[int, int, int], text: bytes) -> None:
        cost = len(text) + self.ENTRY_OVERHEAD
        if cost > self.max_bytes or key in self._texts:
            return
        self._texts[key] = text
        self.size += cost
        while self.size > self.max_bytes:
            _, dropped = self._texts.popitem(last=False)
            self.size -= len(dropped) + self.ENTRY_OVERHEAD


class Shared:
    """What the IMAP sessions over one store share: the message cache, the body texts
    SEARCH keeps, the folder watches (watch.py) and the change queries in flight (view.py)."""

    def __init__(self, search_cache: int) -> None:
        self.cache = MessageCache()
        self.bodies = BodyTexts(search_cache)
        self.hubs: dict[int, Any] = {}
        self.queries: dict[tuple[int, int], Any] = {}


_SHARED: "weakref.WeakKeyDictionary[Any, Shared]" = weakref.WeakKeyDictionary()


def shared(store: Any, search_cache: int) -> Shared:
    """The one Shared of a store (per store, not per process: folder ids and UIDs are
    only unique within one database); search_cache is the setting mail.search_cache."""
    state = _SHARED.get(store)
    if state is None:
        state = _SHARED[store] = Shared(search_cache)
    return state
