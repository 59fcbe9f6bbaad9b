"""Commands on mailboxes as a whole: LIST, LSUB, STATUS, CREATE, DELETE, RENAME,
SUBSCRIBE, UNSUBSCRIBE and APPEND (valid when authenticated or selected).

Mailbox names are the user's own: every call names ``session.user``, so another user's
mailboxes are never reachable, not even by name.
"""

from __future__ import annotations

import re
from typing import Any

from agora.core.errors import NotFound
from agora.mail.imap import responses

DELIMITER = "."


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """LIST wildcards: "*" matches anything, "%" anything but the delimiter. INBOX in
    any case is INBOX."""
    head, dot, rest = pattern.partition(DELIMITER)
    if head.upper() == "INBOX":
        pattern = "INBOX" + dot + rest
    out = []
    for char in pattern:
        out.append(".*" if char == "*" else "[^.]*" if char == "%" else re.escape(char))
    return re.compile("".join(out), re.DOTALL)


def _tree(folders: list[Any]) -> dict[str, Any]:
    """Every folder name, plus parents that exist only as a level of a child's name
    (listed \\Noselect), each mapped to its folder (None for those)."""
    tree: dict[str, Any] = {f.name: f for f in folders}
    for name in list(tree):
        parts = name.split(DELIMITER)
        for i in range(1, len(parts)):
            tree.setdefault(DELIMITER.join(parts[:i]), None)
    return tree


async def list_mailboxes(session: Any, command: Any) -> Any:
    lsub = command.name == "LSUB"
    if lsub:
        reference, patterns = command.args
        selection: list[str] = ["SUBSCRIBED"]
        returns: list[str] = []
    else:
        reference, patterns, selection, returns = command.args
    if patterns == [""]:
        # Asks for the delimiter and the root (RFC 3501 6.3.8).
        session.out += responses.untagged(f'{command.name} (\\Noselect) "." ""')
        return ("OK", None, f"{command.name} completed")
    folders = await session.store.folders(session.user)
    tree = _tree(folders)
    names = sorted(tree, key=lambda n: (n != "INBOX", n))
    regexes = [pattern_regex(reference + p) for p in patterns]
    subscribed_only = "SUBSCRIBED" in selection
    special_only = "SPECIAL-USE" in selection
    parents = {n.rsplit(DELIMITER, 1)[0] for n in tree if DELIMITER in n}
    out = session.out
    for name in names:
        if not any(r.fullmatch(name) for r in regexes):
            continue
        folder = tree[name]
        if subscribed_only and not (folder is not None and folder.subscribed):
            continue
        if special_only and not (folder is not None and folder.special_use):
            continue
        attributes = []
        if folder is None:
            attributes.append("\\Noselect")
        if not lsub:
            attributes.append("\\HasChildren" if name in parents else "\\HasNoChildren")
            if "SUBSCRIBED" in selection or "SUBSCRIBED" in returns:
                if folder is not None and folder.subscribed:
                    attributes.append("\\Subscribed")
        if folder is not None and folder.special_use:
            attributes.append(folder.special_use)
        out += b"* %s (%s) \".\" %s\r\n" % (command.name.encode(), " ".join(attributes).encode(),
                                            responses.mailbox(name))
    return ("OK", None, f"{command.name} completed")


async def status(session: Any, command: Any) -> Any:
    name, items = command.args
    state = await session.store.status(session.user, name)
    values = {"MESSAGES": state.messages, "RECENT": 0, "UIDNEXT": state.uidnext,
              "UIDVALIDITY": state.uidvalidity, "UNSEEN": state.unseen, "SIZE": state.size,
              "HIGHESTMODSEQ": state.highestmodseq}
    view = session.view
    if view is not None and view.name == name:
        values["RECENT"] = view.recent_count()
    body = " ".join(f"{item} {values[item]}" for item in items)
    session.out += b"* STATUS %s (%s)\r\n" % (responses.mailbox(name), body.encode())
    return ("OK", None, "STATUS completed")


async def create(session: Any, command: Any) -> Any:
    name = command.args[0].rstrip(DELIMITER)  # "a trailing delimiter announces a parent"
    if name == "INBOX":
        return ("NO", "ALREADYEXISTS", "INBOX exists")
    await session.store.create_folder(session.user, name)
    return ("OK", None, "CREATE completed")


async def delete(session: Any, command: Any) -> Any:
    name = command.args[0]
    if name == "INBOX":
        return ("NO", "CANNOT", "INBOX cannot be deleted")
    if session.view is not None and session.view.name == name:
        await session.deselect()
    await session.store.delete_folder(session.user, name)
    return ("OK", None, "DELETE completed")


async def rename(session: Any, command: Any) -> Any:
    old, new = command.args
    await session.store.rename_folder(session.user, old, new)
    view = session.view
    if view is not None and old != "INBOX" and (view.name == old or view.name.startswith(old + DELIMITER)):
        # Our own selection follows the rename; its watch stays on the same folder.
        view.name = new + view.name[len(old):]
    return ("OK", None, "RENAME completed")


async def subscribe(session: Any, command: Any) -> Any:
    try:
        await session.store.subscribe(session.user, command.args[0], command.name == "SUBSCRIBE")
    except NotFound:
        if command.name == "UNSUBSCRIBE":
            return ("OK", None, "UNSUBSCRIBE completed")
        raise
    return ("OK", None, f"{command.name} completed")


async def append(session: Any, command: Any) -> Any:
    name, flags, when, message = command.args
    if len(message) > session.max_message:
        return ("NO", "TOOBIG", f"messages are at most {session.max_message} bytes")
    try:
        uidvalidity, uid = await session.store.append(session.user, name, message, flags, when)
    except NotFound:
        return ("NO", "TRYCREATE", f"no mailbox {name}")
    return ("OK", f"APPENDUID {uidvalidity} {uid}", "APPEND completed")


HANDLERS = {
    "LIST": list_mailboxes, "LSUB": list_mailboxes, "STATUS": status, "CREATE": create,
    "DELETE": delete, "RENAME": rename, "SUBSCRIBE": subscribe, "UNSUBSCRIBE": subscribe,
    "APPEND": append,
}
