"""SEARCH: parsed search keys (commands.search_key) evaluated over a mailbox view.

Each key compiles to a predicate over (index, MessageMeta, Raw or None) and a cost:
0 reads only the meta (flags, dates, size, numbers), 1 also the envelope kept in the
database (FROM, SUBJECT...: through the shared cache), 2 the message itself (BODY,
TEXT, other header fields). Messages are read only for what the cheaper keys of an
AND left standing, and only when some key needs them.
"""

from __future__ import annotations

import asyncio
from datetime import date
from typing import Any, Callable

from agora.mail.imap.cache import ENVELOPE_FIELDS

Predicate = Callable[[int, Any, Any], bool]
READ_BATCH = 128  # messages read at once for BODY/TEXT searches
SLICE = 2000  # messages searched between two turns of the other sessions


class Raw:
    """One message's bytes and what SEARCH derives from them, each made once."""

    __slots__ = ("data", "_text", "_body")

    def __init__(self, data: bytes):
        self.data = data
        self._text: str | None = None
        self._body: str | None = None

    def text(self) -> str:
        if self._text is None:
            from agora.mail.message import text_for_search
            self._text = text_for_search(self.data).casefold()
        return self._text

    def body(self) -> str:
        if self._body is None:
            from agora.mail.message import body_text_for_search
            self._body = body_text_for_search(self.data).casefold()
        return self._body

    def header(self, name: str) -> list[str]:
        from agora.mail.message import header_values
        return [v.casefold() for v in header_values(self.data, name)]


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
        needle = key[1].casefold()
        return (lambda i, m, r: needle in r.body()), 2
    if kind == "TEXT":
        needle = key[1].casefold()
        return (lambda i, m, r: needle in r.text()), 2
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
    def matching(batch: list[int], raws: list[bytes | None]) -> list[int]:
        # A message expunged meanwhile (None) matches nothing.
        return [i for i, raw in zip(batch, raws) if raw is not None and predicate(i, metas[i], Raw(raw))]

    matches = []
    for batch in view.batches(candidates, READ_BATCH):
        raws = await view.read([metas[i].uid for i in batch])
        # Decoding MIME is slow work: off the event loop, so other sessions go on.
        matches += await asyncio.to_thread(matching, batch, raws)
    return matches
