"""Commands on the messages of the selected mailbox: SEARCH, STORE, COPY, MOVE, EXPUNGE
(FETCH is in fetch.py); each also in its UID form."""

from __future__ import annotations

from typing import Any

from agora.core.errors import NotFound
from agora.mail.imap import responses
from agora.mail.imap.fetch import fetch
from agora.mail.imap.search import search as run_search
from agora.mail.imap.sequence import compress

CHARSETS = ("UTF-8", "US-ASCII")


def _name(command: Any) -> str:
    return ("UID " if command.uid else "") + command.name


def _indexes(view: Any, command: Any) -> list[int] | None:
    try:
        return view.select(command.args[0], command.uid)
    except ValueError:
        return None


async def search(session: Any, command: Any) -> Any:
    charset, key = command.args
    if charset is not None and charset not in CHARSETS:
        return ("NO", "BADCHARSET (UTF-8 US-ASCII)", f"charset {charset[:30]} is not supported")
    view = session.view
    found = await run_search(view, key)
    if command.uid:
        uids = view.uids
        numbers = [uids[i] for i in found]
    else:
        numbers = [i + 1 for i in found]
    listed = " ".join(map(str, numbers)).encode()  # fastest for 10,000 numbers
    session.out += b"* SEARCH " + listed + b"\r\n" if listed else b"* SEARCH\r\n"
    return ("OK", None, f"{_name(command)} completed")


async def store(session: Any, command: Any) -> Any:
    view = session.view
    _, mode, silent, flags = command.args
    if view.readonly:
        return ("NO", "READ-ONLY", "the mailbox is read-only (EXAMINE)")
    indexes = _indexes(view, command)
    if indexes is None:
        return ("BAD", None, "no such message (message numbers are past the end)")
    uids = [view.uids[i] for i in indexes]
    if uids:
        for meta in await session.store.store_flags(session.user, view.name, uids, flags, mode):
            view.replace(meta)
    if not silent:
        out = session.out
        for i in indexes:
            uid = b"UID %d " % view.uids[i] if command.uid else b""
            out += b"* %d FETCH (%sFLAGS %s)\r\n" % (i + 1, uid, responses.flags(view.flags(i)))
    return ("OK", None, f"{_name(command)} completed")


async def copy(session: Any, command: Any) -> Any:
    view = session.view
    dest = command.args[1]
    move = command.name == "MOVE"
    if move and view.readonly:
        return ("NO", "READ-ONLY", "the mailbox is read-only (EXAMINE)")
    indexes = _indexes(view, command)
    if indexes is None:
        return ("BAD", None, "no such message (message numbers are past the end)")
    uids = [view.uids[i] for i in indexes]
    try:
        await session.store.folder(session.user, dest)
    except NotFound:
        return ("NO", "TRYCREATE", f"no mailbox {dest}")
    if not uids:
        return ("OK", None, f"{_name(command)} completed (no messages)")
    operation = session.store.move if move else session.store.copy
    uidvalidity, pairs = await operation(session.user, view.name, uids, dest)
    code = None
    if pairs:
        code = f"COPYUID {uidvalidity} {compress([s for s, _ in pairs])} {compress([d for _, d in pairs])}"
    if move:
        # RFC 6851: COPYUID goes in an untagged OK, before the EXPUNGEs.
        if code:
            session.out += responses.untagged(f"OK [{code}] Moved")
            code = None
        view.remove([s for s, _ in pairs], session.out)
    return ("OK", code, f"{_name(command)} completed")


async def expunge(session: Any, command: Any) -> Any:
    view = session.view
    if view.readonly:
        return ("NO", "READ-ONLY", "the mailbox is read-only (EXAMINE)")
    uids = None
    if command.uid:
        uids = command.args[0].select_uids(view.uids)
        if not uids:
            return ("OK", None, "UID EXPUNGE completed")
    gone = await session.store.expunge(session.user, view.name, uids)
    view.remove(gone, session.out)
    return ("OK", None, f"{_name(command)} completed")


HANDLERS = {
    "FETCH": fetch, "SEARCH": search, "STORE": store, "COPY": copy, "MOVE": copy, "EXPUNGE": expunge,
}
