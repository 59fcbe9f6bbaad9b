"""The If header, lock-token checks before a change, and the LOCK and UNLOCK methods.

RFC 4918 section 10.4: the If header is a set of lists of conditions (a lock token held
on a resource, an entity tag), each list about the request's resource or a tagged one.
The request goes ahead when some list is wholly true (412 otherwise); the lock tokens
named in it are the ones the client "submits", and every lock covering what the request
changes must have one of its tokens submitted (423 otherwise).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from starlette.responses import Response

from agora.core.errors import AgoraError
from agora.files import dav_xml
from agora.files.dav_locks import Lock, LockConflict, LockStore, is_below, timeout_of
from agora.files.dav_request import Context, DavError
from agora.files.store import Entry

_TOKEN = re.compile(r"\s*(?:<([^>]*)>|(\()|(\))|\[([^\]]*)\]|(not)(?=[\s<\[]))", re.IGNORECASE)


@dataclass(frozen=True)
class Condition:
    negated: bool
    token: str | None = None  # a state token (lock token, or e.g. DAV:no-lock)
    etag: str | None = None


@dataclass(frozen=True)
class ConditionList:
    resource: str | None  # the tag's URL; None for the request's resource
    conditions: tuple[Condition, ...]


def parse_if(value: str) -> list[ConditionList]:
    lists: list[ConditionList] = []
    tag: str | None = None
    position = 0
    value = value.strip()
    while position < len(value):
        match = _TOKEN.match(value, position)
        if not match:
            raise DavError(400, "malformed If header")
        position = match.end()
        if match.group(1) is not None:
            tag = match.group(1)
            continue
        if not match.group(2):
            raise DavError(400, "malformed If header: a condition outside a list")
        conditions: list[Condition] = []
        negated = False
        while True:
            match = _TOKEN.match(value, position)
            if not match:
                raise DavError(400, "malformed If header: an unclosed list")
            position = match.end()
            if match.group(5):
                negated = True
            elif match.group(1) is not None:
                conditions.append(Condition(negated, token=match.group(1)))
                negated = False
            elif match.group(4) is not None:
                conditions.append(Condition(negated, etag=match.group(4)))
                negated = False
            elif match.group(3) and conditions and not negated:
                break
            else:
                raise DavError(400, "malformed If header")
        lists.append(ConditionList(tag, tuple(conditions)))
    if not lists:
        raise DavError(400, "empty If header")
    return lists


def _same_etag(a: str, b: str) -> bool:
    return a.removeprefix("W/") == b.removeprefix("W/")


async def submitted_tokens(ctx: Context, locks: list[Lock]) -> set[str]:
    """The lock tokens the request submits; 412 when its If header is false."""
    headers = ctx.request.headers.getlist("if")
    if not headers:
        return set()
    lists = parse_if(" ".join(headers))
    entries: dict[str, Entry | None] = {}
    for condition_list in lists:
        try:
            path = ctx.local_path(condition_list.resource) if condition_list.resource else ctx.path
        except (DavError, AgoraError):
            continue  # a resource that is not ours, or no valid path: none of its conditions hold
        if path not in entries:
            entries[path] = await ctx.stat(path)
        entry = entries[path]
        if all(_holds(condition, path, entry, locks) != condition.negated
               for condition in condition_list.conditions):
            return {c.token for lst in lists for c in lst.conditions if c.token and not c.negated}
    raise DavError(412, "no list of the If header matches the resource's state")


def _holds(condition: Condition, path: str, entry: Entry | None, locks: list[Lock]) -> bool:
    if condition.token is not None:
        return any(lock.token == condition.token and lock.covers(path) for lock in locks)
    return entry is not None and condition.etag is not None and _same_etag(entry.etag, condition.etag)


async def check(ctx: Context, *, changed: tuple[str, ...] = (), removed: tuple[str, ...] = (),
                members_of: tuple[str, ...] = ()) -> None:
    """Evaluate the If header, then require a submitted token for every lock on what the
    request changes: ``changed`` resources (content or properties), ``removed`` ones (with
    everything below them), and folders whose ``members_of`` change."""
    store = LockStore(ctx.runtime.db)
    locks = await store.live(ctx.user.id)
    if not locks and not ctx.request.headers.get("if"):
        return
    tokens = await submitted_tokens(ctx, locks)
    by_root: dict[str, list[Lock]] = {}
    for lock in locks:
        if (any(lock.covers(path) for path in changed + removed + members_of)
                or any(is_below(lock.path, path) for path in removed)):
            by_root.setdefault(lock.path, []).append(lock)
    for root, held in sorted(by_root.items()):
        if not any(lock.token in tokens for lock in held):
            raise DavError(423, f"{root} is locked", condition="lock-token-submitted",
                           content=f"<D:href>{dav_xml.href(ctx.root_path, root, False)}</D:href>")


def _discovery(ctx: Context, lock: Lock, is_dir: bool) -> bytes:
    return dav_xml.prop_body(f"<D:lockdiscovery>{lock.activelock(ctx.root_path, is_dir)}</D:lockdiscovery>")


async def lock(ctx: Context) -> Response:
    store = LockStore(ctx.runtime.db)
    timeout = timeout_of(ctx.header("timeout"))
    root = dav_xml.parse(await ctx.body(), ctx.runtime.config.files.dav_max_xml_depth)
    entry = await ctx.stat(ctx.path)
    if root is None:
        return await _refresh(ctx, store, timeout, entry)
    infinite = ctx.depth("infinity", ("0", "infinity")) == "infinity"
    scope, owner = dav_xml.lockinfo_request(root)
    if entry is None:
        parent = await ctx.stat(ctx.parent)
        if parent is None or not parent.is_dir:
            raise DavError(409, "the parent folder does not exist")
        await check(ctx, members_of=(ctx.parent,))
    else:
        await check(ctx)
    try:
        new = await store.create(ctx.user.id, ctx.path, infinite=infinite, scope=scope,
                                 owner=owner, timeout=timeout)
    except LockConflict as conflict:
        held = conflict.lock
        if held is None:
            raise DavError(507, "too many locks are held at once") from None
        raise DavError(423, f"{held.path} is locked", condition="no-conflicting-lock",
                       content=f"<D:href>{dav_xml.href(ctx.root_path, held.path, False)}</D:href>") from None
    status = 200
    if entry is None:
        # RFC 4918 7.3: locking an unmapped URL makes a locked empty resource.
        try:
            entry = await ctx.run(ctx.files.write_bytes, ctx.path, b"")
        except BaseException:
            await store.release(ctx.user.id, new.token)
            raise
        status = 201
    return Response(_discovery(ctx, new, entry.is_dir), status, media_type=dav_xml.MEDIA_TYPE,
                    headers={"Lock-Token": f"<{new.token}>"})


async def _refresh(ctx: Context, store: LockStore, timeout: int, entry: Entry | None) -> Response:
    if not ctx.request.headers.get("if"):
        raise DavError(400, "a LOCK without a body refreshes a lock named in the If header")
    if entry is None:
        raise DavError(404, "no such resource")
    locks = await store.live(ctx.user.id)
    tokens = await submitted_tokens(ctx, locks)
    held = next((lock for lock in locks if lock.token in tokens and lock.covers(ctx.path)), None)
    if held is None:
        raise DavError(412, "no lock of the If header covers this resource",
                       condition="lock-token-matches-request-uri")
    refreshed = await store.refresh(ctx.user.id, held, timeout)
    root_entry = entry if refreshed.path == ctx.path else await ctx.stat(refreshed.path)
    return Response(_discovery(ctx, refreshed, bool(root_entry and root_entry.is_dir)), 200,
                    media_type=dav_xml.MEDIA_TYPE)


async def unlock(ctx: Context) -> Response:
    token = (ctx.header("lock-token") or "").strip()
    if not (token.startswith("<") and token.endswith(">")):
        raise DavError(400, "UNLOCK needs a Lock-Token: <token> header")
    token = token[1:-1]
    store = LockStore(ctx.runtime.db)
    held = next((lock for lock in await store.live(ctx.user.id)
                 if lock.token == token and lock.covers(ctx.path)), None)
    if held is None:
        raise DavError(409, "no such lock on this resource", condition="lock-token-matches-request-uri")
    await store.release(ctx.user.id, token)
    return Response(status_code=204)
