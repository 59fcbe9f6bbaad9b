"""SEARCH: parsed search keys (commands.search_key) evaluated over a mailbox view.

Each key compiles to a predicate over (index, MessageMeta, Raw or None) and a cost:
0 reads only the meta (flags, dates, size, numbers), 1 also the envelope kept in the
database (FROM, SUBJECT...: through the shared cache), 2 the message itself (BODY,
TEXT, other header fields). Messages are read only for what the cheaper keys of an
AND left standing, and only when some key needs them: not at all for BODY when the
shared cache (cache.BodyTexts) has their body text.

Text is matched as RFC 3501 asks, a case-insensitive substring: both sides case-folded,
then as UTF-8 bytes (a UTF-8 needle is found in UTF-8 text exactly where the characters
match, and bytes are half the memory of most decoded text in the cache).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable, Iterator
from datetime import date
from typing import Any, Callable

from agora.core import offload
from agora.mail.imap.cache import ENVELOPE_FIELDS

Predicate = Callable[[int, Any, Any], bool]
READ_BATCH = 128  # messages read at once for BODY/TEXT searches
SLICE = 2000  # messages searched between two turns of the other sessions
# A message larger than this is searched slice by slice and its text is not kept: each
# step then holds the GIL (and so the event loop, waiting for it) for a slice's time;
# the whole 50 MB at once held it for tenths of a second per step.
LARGE = 4 * 1024 * 1024


def fold(text: str) -> bytes:
    """Case-folded UTF-8 (lone surrogates kept, as the needle's are: they then match alike)."""
    # lower() is casefold() for ASCII, and many times faster than casefold() there
    folded = text.lower() if text.isascii() else text.casefold()
    return folded.encode("utf-8", "surrogatepass")


class Raw:
    """One message as SEARCH reads it: its bytes (None when the cached body text is all
    a search needs) and what is derived from them, each made once."""

    __slots__ = ("data", "_text", "_body")

    def __init__(self, data: bytes | None, body: bytes | None = None):
        self.data = data
        self._text: bytes | None = None
        self._body = body

    def text(self) -> bytes:
        if self._text is None:
            from agora.mail.message import header_text_for_search
            self._text = fold(header_text_for_search(self.data) + "\n\n") + self.body()  # type: ignore[arg-type]
        return self._text

    def body(self) -> bytes:
        if self._body is None:
            from agora.mail.message import body_text_for_search
            self._body = fold(body_text_for_search(self.data))  # type: ignore[arg-type]
        return self._body

    def body_has(self, needle: bytes) -> bool:
        if self._body is None and self.data is not None and len(self.data) > LARGE:
            return _stream_has(self._body_slices(), needle)
        return needle in self.body()

    def text_has(self, needle: bytes) -> bool:
        if self._text is None and self._body is None and self.data is not None and len(self.data) > LARGE:
            from agora.mail.message import header_text_for_search
            head = fold(header_text_for_search(self.data) + "\n\n")
            return _stream_has(itertools.chain([head], self._body_slices()), needle)
        return needle in self.text()

    def _body_slices(self) -> Iterator[bytes]:
        from agora.mail.message import body_text_slices_for_search
        return (fold(text) for text in body_text_slices_for_search(self.data))  # type: ignore[arg-type]

    def known_body(self) -> bytes | None:
        """The body text if it is at hand by now (given, or made for a key that needed it)."""
        return self._body

    def header(self, name: str) -> list[str]:
        from agora.mail.message import header_values
        return [v.casefold() for v in header_values(self.data, name)]  # type: ignore[arg-type]


def _stream_has(slices: Iterable[bytes], needle: bytes) -> bool:
    """Whether ``needle`` is in the slices joined, also where it spans two of them."""
    if not needle:
        return True
    keep = len(needle) - 1
    tail = b""
    for piece in slices:
        window = tail + piece if tail else piece
        if needle in window:
            return True
        tail = window[-keep:] if keep else b""
    return False


def _date_test(op: str, day: date) -> Callable[[date], bool]:
    if op == "BEFORE":
        return lambda d: d < day
    if op == "ON":
        return lambda d: d == day
    return lambda d: d >= day  # SINCE


def compile_key(key: tuple[Any, ...], view: Any) -> tuple[Predicate, int]:
    kind = key[0]
    folder = view.folder
    cache = view.shared.cache
    if kind == "ALL":
        return (lambda i, m, r: True), 0
    if kind == "FLAG":
        flag, want = key[1], key[2]
        if flag.startswith("\\"):
            return ((lambda i, m, r: flag in m.flags) if want else (lambda i, m, r: flag not in m.flags)), 0
        lowered = flag.lower()
        return (lambda i, m, r: any(f.lower() == lowered for f in m.flags) == want), 0
    if kind in ("NEW", "OLD", "RECENT"):
        start = view.recent_from
        if kind == "RECENT":
            return (lambda i, m, r: m.uid >= start), 0
        if kind == "OLD":
            return (lambda i, m, r: m.uid < start), 0
        return (lambda i, m, r: m.uid >= start and "\\Seen" not in m.flags), 0
    if kind == "DATE":
        test = _date_test(key[1], key[2])
        return (lambda i, m, r: test(m.internaldate.date())), 0
    if kind == "SENT":
        test = _date_test(key[1], key[2])

        def sent(i: int, m: Any, r: Any) -> bool:
            day = cache.get(folder, m).sent_date(m)
            return day is not None and test(day)
        return sent, 1
    if kind == "SIZE":
        limit = key[2]
        if key[1] == "LARGER":
            return (lambda i, m, r: m.size > limit), 0
        return (lambda i, m, r: m.size < limit), 0
    if kind == "UID":
        uids = set(key[1].select_uids(view.uids))
        return (lambda i, m, r: m.uid in uids), 0
    if kind == "SEQ":
        count = len(view)
        numbers = {n for lo, hi in key[1].bounds(count) for n in range(lo, min(hi, count) + 1)}
        return (lambda i, m, r: i + 1 in numbers), 0
    if kind == "HEADER":
        name, needle = key[1], key[2].casefold()
        if name in ENVELOPE_FIELDS and name != "DATE":
            if not needle:
                return (lambda i, m, r: bool(cache.get(folder, m).field(m, name))), 1
            return (lambda i, m, r: needle in cache.get(folder, m).field(m, name)), 1  # type: ignore[operator]
        if not needle:
            return (lambda i, m, r: bool(r.header(name))), 2
        return (lambda i, m, r: any(needle in v for v in r.header(name))), 2
    if kind == "BODY":
        needle = fold(key[1])
        return (lambda i, m, r: r.body_has(needle)), 2
    if kind == "TEXT":
        needle = fold(key[1])
        return (lambda i, m, r: r.text_has(needle)), 2
    if kind == "NOT":
        inner, cost = compile_key(key[1], view)
        return (lambda i, m, r: not inner(i, m, r)), cost
    if kind == "OR":
        (a, ca), (b, cb) = sorted((compile_key(key[1], view), compile_key(key[2], view)), key=lambda p: p[1])
        return (lambda i, m, r: a(i, m, r) or b(i, m, r)), max(ca, cb)
    if kind == "AND":
        parts = sorted((compile_key(k, view) for k in key[1]), key=lambda p: p[1])
        predicates = [p for p, _ in parts]
        if len(predicates) == 2:
            first, second = predicates
            return (lambda i, m, r: first(i, m, r) and second(i, m, r)), parts[-1][1]
        return (lambda i, m, r: all(p(i, m, r) for p in predicates)), parts[-1][1]
    raise ValueError(f"unknown search key {kind}")


async def search(view: Any, key: tuple[Any, ...]) -> list[int]:
    """Indexes (0-based, ascending) of the messages of ``view`` that match ``key``."""
    metas = view.metas
    if key == ("ALL",):
        return list(range(len(metas)))
    if key[0] == "FLAG" and key[1].startswith("\\"):
        # The commonest search (UNSEEN, DELETED...): one pass, no call per message.
        flag = key[1]
        if key[2]:
            return [i for i, m in enumerate(metas) if flag in m.flags]
        return [i for i, m in enumerate(metas) if flag not in m.flags]
    predicate, cost = compile_key(key, view)
    if cost == 0:
        return [i for i, m in enumerate(metas) if predicate(i, m, None)]
    if cost == 1:
        # Envelopes not yet in the cache are parsed here: in slices, letting the other
        # sessions run in between.
        found: list[int] = []
        for start in range(0, len(metas), SLICE):
            found += [i for i in range(start, min(start + SLICE, len(metas))) if predicate(i, metas[i], None)]
            await asyncio.sleep(0)
        return found
    candidates = list(range(len(metas)))
    if key[0] == "AND":
        cheap = [p for p, c in (compile_key(k, view) for k in key[1]) if c < 2]
        candidates = [i for i in candidates if all(p(i, metas[i], None) for p in cheap)]
    folder, bodies = view.folder, view.shared.bodies

    def cache_key(i: int) -> tuple[int, int, int]:
        return folder.id, folder.uidvalidity, metas[i].uid

    matches: list[int] = []
    if not _reads_message(key):
        # BODY is all that looks into the messages: those with their body text in the cache
        # are not read. (One expunged by another session meanwhile is then still searched,
        # as this session still numbers it.)
        unread = []
        for start in range(0, len(candidates), SLICE):
            for i in candidates[start:start + SLICE]:
                body = bodies.get(cache_key(i))
                if body is None:
                    unread.append(i)
                elif predicate(i, metas[i], Raw(None, body)):
                    matches.append(i)
            await asyncio.sleep(0)
        candidates = unread

    def matching(batch: list[int], raws: list[bytes | None],
                 cached: list[bytes | None]) -> tuple[list[int], list[tuple[int, bytes]]]:
        """The matches of a batch, and the body texts made on the way (for the cache)."""
        found, made = [], []
        for i, raw, body in zip(batch, raws, cached):
            if raw is None:  # expunged meanwhile, and not in the cache: it matches nothing
                continue
            message = Raw(raw, body)
            if predicate(i, metas[i], message):
                found.append(i)
            if body is None and (known := message.known_body()) is not None:
                made.append((i, known))
        return found, made

    for batch in view.batches(candidates, READ_BATCH):
        raws = await view.read([metas[i].uid for i in batch])
        cached = [bodies.get(cache_key(i)) for i in batch]
        # Decoding MIME is slow work: off the event loop, so other sessions go on.
        found, made = await offload.run(matching, batch, raws, cached)
        matches += found
        for i, body in made:
            bodies.put(cache_key(i), body)
    return sorted(matches)


def _reads_message(key: tuple[Any, ...]) -> bool:
    """Whether a key needs the message itself, not only its body text (TEXT, and HEADER
    of a field the envelope does not hold)."""
    kind = key[0]
    if kind == "TEXT":
        return True
    if kind == "HEADER":
        return key[1] not in ENVELOPE_FIELDS or key[1] == "DATE"
    if kind == "NOT":
        return _reads_message(key[1])
    if kind == "OR":
        return _reads_message(key[1]) or _reads_message(key[2])
    if kind == "AND":
        return any(_reads_message(k) for k in key[1])
    return False
