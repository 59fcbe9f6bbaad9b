"""FETCH: each message's requested items, built from the session's metadata, the shared
cache of serialised envelopes and structures, and the message file only when content
is asked for. Responses collect in the session's buffer, which goes out in large
writes."""

from __future__ import annotations

from typing import Any, Callable

from agora.core import offload
from agora.mail.imap import responses
from agora.mail.imap.grammar import FetchAtt

CONTENT = ("RFC822", "RFC822.HEADER", "RFC822.TEXT")
FLUSH_AT = 256 * 1024  # bytes of responses that go out while a FETCH goes on
Item = Callable[[int, Any, Any], bytes]  # (index, meta, raw message or None) -> "NAME value"


def _section(raw: bytes, spec: str) -> bytes | None:
    from agora.mail.message import section
    try:
        return section(raw, spec)
    except ValueError:
        return None


def _spec(att: FetchAtt) -> str | None:
    """The section an item cuts out of the parsed message, if it needs one."""
    if att.name in ("RFC822.HEADER", "RFC822.TEXT"):
        return att.name[7:]
    return att.section or None  # BODY[] is the message as it is: nothing to parse


def _sections(batch: list[int], raws: list[Any], specs: set[str]) -> dict[tuple[int, str], bytes | None]:
    """Every section a batch asks for: MIME parsing, whose cost grows with what a sender
    nested, done in a worker thread so that the other sessions go on meanwhile."""
    return {(i, spec): _section(raw, spec) for i, raw in zip(batch, raws) if raw is not None for spec in specs}


def _item(att: FetchAtt, view: Any, sections: dict[tuple[int, str], bytes | None]) -> Item:
    """The builder of one fetch item's response (sections: those _sections made)."""
    name = att.name
    folder = view.folder
    cache = view.shared.cache
    if name == "UID":
        return lambda i, m, raw: b"UID %d" % m.uid
    if name == "FLAGS":
        start = view.recent_from
        return lambda i, m, raw: b"FLAGS " + responses.flags(m.flags if m.uid < start else m.flags | {"\\Recent"})
    if name == "INTERNALDATE":
        return lambda i, m, raw: b"INTERNALDATE " + responses.internaldate(m.internaldate)
    if name == "RFC822.SIZE":
        return lambda i, m, raw: b"RFC822.SIZE %d" % m.size
    if name == "ENVELOPE":
        return lambda i, m, raw: b"ENVELOPE " + cache.get(folder, m).envelope_bytes(m)
    if name == "BODYSTRUCTURE":
        return lambda i, m, raw: b"BODYSTRUCTURE " + cache.get(folder, m).bodystructure_bytes(m)
    if name == "BODY" and att.section is None:
        return lambda i, m, raw: b"BODY " + cache.get(folder, m).body_bytes(m)
    if name == "RFC822":
        return lambda i, m, raw: b"RFC822 " + responses.literal(raw)
    if name in ("RFC822.HEADER", "RFC822.TEXT"):
        spec = name[7:]
        label = name.encode()

        def part(i: int, m: Any, raw: bytes) -> bytes:
            data = sections[(i, spec)]
            return label + b" " + (b"NIL" if data is None else responses.literal(data))
        return part
    label = att.label
    spec = att.section or ""
    partial = att.partial

    def body_section(i: int, m: Any, raw: bytes) -> bytes:
        data = raw if spec == "" else sections[(i, spec)]
        if data is None:
            return label + b" NIL"
        if partial is not None:
            data = data[partial[0]:partial[0] + partial[1]]
        return label + b" " + responses.literal(data)
    return body_section


def _marks_seen(att: FetchAtt) -> bool:
    return (att.section is not None and not att.peek) or att.name in ("RFC822", "RFC822.TEXT")


async def fetch(session: Any, command: Any) -> Any:
    view = session.view
    sequence, atts = command.args
    try:
        indexes = view.select(sequence, command.uid)
    except ValueError:
        return ("BAD", None, "no such message (message numbers are past the end)")
    atts = list(dict.fromkeys(atts))
    if command.uid and FetchAtt("UID") not in atts:
        atts.insert(0, FetchAtt("UID"))
    content = any(a.section is not None or a.name in CONTENT for a in atts)
    newly_seen: set[int] = set()
    if not view.readonly and any(_marks_seen(a) for a in atts):
        unseen = [view.uids[i] for i in indexes if "\\Seen" not in view.metas[i].flags]
        if unseen:
            for meta in await session.store.store_flags(session.user, view.name, unseen, ["\\Seen"], "add"):
                view.replace(meta)
                newly_seen.add(meta.uid)
    sections: dict[tuple[int, str], bytes | None] = {}
    specs = {spec for a in atts if (spec := _spec(a))}
    items = [_item(a, view, sections) for a in atts]
    flags_item = None if FetchAtt("FLAGS") in atts else _item(FetchAtt("FLAGS"), view, sections)
    out = session.out
    metas = view.metas
    gone = 0
    if not content and not newly_seen:
        if len(items) == 1:
            only = items[0]
            for i in indexes:
                out += b"* %d FETCH (%s)\r\n" % (i + 1, only(i, metas[i], None))
                if len(out) > FLUSH_AT:
                    await session.flush(partial=True)
        else:
            for i in indexes:
                meta = metas[i]
                out += b"* %d FETCH (%s)\r\n" % (i + 1, b" ".join([item(i, meta, None) for item in items]))
                if len(out) > FLUSH_AT:
                    await session.flush(partial=True)
        return ("OK", None, f"{'UID ' if command.uid else ''}FETCH completed")
    for batch in view.batches(indexes):
        raws = await view.read([metas[i].uid for i in batch]) if content else [None] * len(batch)
        if specs:
            sections.clear()
            sections.update(await offload.run(_sections, batch, raws, specs))
        for i, raw in zip(batch, raws):
            meta = metas[i]
            if content and raw is None:
                gone += 1
                continue
            parts = [item(i, meta, raw) for item in items]
            if flags_item is not None and meta.uid in newly_seen:
                parts.append(flags_item(i, meta, raw))
            out += b"* %d FETCH (%s)\r\n" % (i + 1, b" ".join(parts))
        if len(out) > FLUSH_AT:
            await session.flush(partial=True)
    if gone:
        return ("NO", "EXPUNGEISSUED", "some of the messages were expunged meanwhile")
    return ("OK", None, f"{'UID ' if command.uid else ''}FETCH completed")
