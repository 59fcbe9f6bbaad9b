"""WebDAV properties: the live ones read from the tree, the dead ones clients set with
PROPPATCH (kept in the metadata database), and the PROPFIND and PROPPATCH methods."""

from __future__ import annotations

import hashlib
import json
from xml.sax.saxutils import escape

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from starlette.responses import Response

from agora.core.database import Database
from agora.files import dav_xml, httpfile
from agora.files.dav_locking import check
from agora.files.dav_locks import SUPPORTED_LOCK, Lock, LockStore
from agora.files.dav_request import Context, DavError
from agora.files.dav_tables import dav_properties
from agora.files.dav_xml import DAV, clark, element
from agora.files.store import Entry

# Dead properties of one resource, as stored (JSON of XML texts): a client setting
# ever more of them gets 507 past this.
MAX_PROPERTIES_BYTES = 256 * 1024
# Past this many resources (a Depth: 1 PROPFIND of a big folder, whose path comes
# first), dead properties are read for the folder's whole tree in one query.
MANY_PATHS = 256

# RFC 4331: asked for by name only (never in allprop), since usage costs a tree walk.
QUOTA = {clark(DAV, "quota-used-bytes"), clark(DAV, "quota-available-bytes")}
LIVE = {clark(DAV, name) for name in (
    "resourcetype", "displayname", "getlastmodified", "getetag", "getcontentlength",
    "getcontenttype", "supportedlock", "lockdiscovery")} | QUOTA


def _hash(path: str) -> str:
    return hashlib.sha256(path.encode()).hexdigest()


def _tree(path: str):  # type: ignore[no-untyped-def]
    if path == "/":
        return dav_properties.c.path.isnot(None)
    return or_(dav_properties.c.path == path, dav_properties.c.path.startswith(path + "/", autoescape=True))


def _moved(path: str, src: str, dst: str) -> str:
    return dst + path[len(src):]  # src is never the root: the store refuses to move or copy it


class PropertyStore:
    """Dead properties, one row (a JSON object of Clark name -> XML) per resource."""

    def __init__(self, db: Database):
        self.db = db

    async def get(self, user_id: int, paths: list[str]) -> dict[str, dict[str, str]]:
        if len(paths) > MANY_PATHS:
            return await self._get_in_folder(user_id, paths)
        async with self.db.read() as conn:
            rows = (await conn.execute(select(dav_properties.c.path, dav_properties.c.props).where(
                dav_properties.c.user_id == user_id,
                dav_properties.c.path_hash.in_([_hash(path) for path in paths])))).all()
        return {row.path: json.loads(row.props) for row in rows}

    async def _get_in_folder(self, user_id: int, paths: list[str]) -> dict[str, dict[str, str]]:
        """The dead properties of a folder (``paths[0]``) and its entries: one query for the
        rows of its tree, none when it has no dead property (the common case), where
        hashing each path into one query took seconds of the event loop for 100,000 files."""
        folder = paths[0]
        if not await self._any(user_id, folder):
            return {}
        async with self.db.read() as conn:
            rows = (await conn.execute(select(dav_properties.c.path, dav_properties.c.props).where(
                dav_properties.c.user_id == user_id, _tree(folder)))).all()
        wanted = set(paths)
        return {row.path: json.loads(row.props) for row in rows if row.path in wanted}

    async def patch(self, user_id: int, path: str, operations: list[tuple[str, str, str | None]]) -> None:
        """Apply ``(set | remove, name, XML)`` operations in order, all or none."""
        key = (dav_properties.c.user_id == user_id) & (dav_properties.c.path_hash == _hash(path))
        for attempt in range(2):
            try:
                async with self.db.write() as conn:
                    row = (await conn.execute(select(dav_properties.c.props).where(key)
                                              .with_for_update())).first()
                    props = json.loads(row.props) if row else {}
                    for action, name, value in operations:
                        if action == "set":
                            props[name] = value
                        else:
                            props.pop(name, None)
                    text = json.dumps(props, ensure_ascii=False)
                    if len(text.encode()) > MAX_PROPERTIES_BYTES:
                        raise DavError(507, "dead properties of one resource are limited to "
                                       f"{MAX_PROPERTIES_BYTES} bytes")
                    if row is None:
                        if props:
                            await conn.execute(insert(dav_properties).values(
                                user_id=user_id, path_hash=_hash(path), path=path, props=text))
                    elif props:
                        await conn.execute(update(dav_properties).where(key).values(props=text))
                    else:
                        await conn.execute(delete(dav_properties).where(key))
                return
            except IntegrityError:
                if attempt:  # another request created the row first: read it and apply again
                    raise

    async def _any(self, user_id: int, *paths: str) -> bool:
        """Whether any resource in these trees has dead properties: most have none, and
        a read is much cheaper than a durable write transaction."""
        async with self.db.read() as conn:
            found = await conn.execute(select(dav_properties.c.path_hash).where(
                dav_properties.c.user_id == user_id, or_(*(_tree(path) for path in paths))).limit(1))
            return found.first() is not None

    async def copy(self, user_id: int, src: str, dst: str, *, recursive: bool) -> None:
        """Give ``dst`` (and, ``recursive``, what is below it) the properties of ``src``."""
        if not await self._any(user_id, src, dst):
            return
        async with self.db.write() as conn:
            await conn.execute(delete(dav_properties).where(dav_properties.c.user_id == user_id, _tree(dst)))
            where = _tree(src) if recursive else dav_properties.c.path == src
            rows = (await conn.execute(select(dav_properties.c.path, dav_properties.c.props).where(
                dav_properties.c.user_id == user_id, where))).all()
            for row in rows:
                path = _moved(row.path, src, dst)
                await conn.execute(insert(dav_properties).values(
                    user_id=user_id, path_hash=_hash(path), path=path, props=row.props))

    async def move(self, user_id: int, src: str, dst: str) -> None:
        if not await self._any(user_id, src, dst):
            return
        async with self.db.write() as conn:
            await conn.execute(delete(dav_properties).where(dav_properties.c.user_id == user_id, _tree(dst)))
            rows = (await conn.execute(select(dav_properties.c.path).where(
                dav_properties.c.user_id == user_id, _tree(src)))).all()
            for row in rows:
                path = _moved(row.path, src, dst)
                await conn.execute(update(dav_properties).where(
                    dav_properties.c.user_id == user_id, dav_properties.c.path_hash == _hash(row.path))
                    .values(path=path, path_hash=_hash(path)))

    async def delete(self, user_id: int, path: str) -> None:
        if not await self._any(user_id, path):
            return
        async with self.db.write() as conn:
            await conn.execute(delete(dav_properties).where(dav_properties.c.user_id == user_id, _tree(path)))


def live_properties(ctx: Context, entry: Entry, locks: list[Lock]) -> dict[str, str]:
    """Clark name -> XML content of each live property of ``entry``."""
    props = {
        clark(DAV, "resourcetype"): "<D:collection/>" if entry.is_dir else "",
        clark(DAV, "displayname"): escape(entry.name),
        clark(DAV, "getlastmodified"): httpfile.http_date(entry.mtime),
        clark(DAV, "getetag"): escape(entry.etag),
        clark(DAV, "supportedlock"): SUPPORTED_LOCK,
        # A lock rooted elsewhere covers this entry through depth infinity: its root is a folder.
        clark(DAV, "lockdiscovery"): "".join(
            lock.activelock(ctx.root_path, entry.is_dir or lock.path != entry.path)
            for lock in locks if lock.covers(entry.path)),
    }
    if not entry.is_dir:
        props[clark(DAV, "getcontentlength")] = str(entry.size)
        props[clark(DAV, "getcontenttype")] = escape(httpfile.content_type(entry.name))
    return props


def _describe(ctx: Context, entry: Entry, request: dav_xml.PropfindRequest, dead: dict[str, str],
              locks: list[Lock], quota: dict[str, str]) -> str:
    live = live_properties(ctx, entry, locks)
    if entry.is_dir:
        live.update(quota)
    found: list[str] = []
    missing: list[str] = []
    if request.kind == "propname":
        found = [element(name) for name in [*live, *dead]]
    else:
        if request.kind == "allprop":
            found = [element(name, value) for name, value in live.items()] + list(dead.values())
            wanted = [name for name in request.names if name not in live and name not in dead]
        else:
            wanted = request.names
        for name in wanted:
            if name in live:
                found.append(element(name, live[name]))
            elif name in dead:
                found.append(dead[name])
            else:
                missing.append(element(name))
    return dav_xml.response(dav_xml.href(ctx.root_path, entry.path, entry.is_dir), {200: found, 404: missing})


async def propfind(ctx: Context) -> Response:
    depth = ctx.depth("infinity", ("0", "1", "infinity"))
    if depth == "infinity":
        raise DavError(403, "PROPFIND with Depth: infinity is not served; walk with Depth: 1",
                       condition="propfind-finite-depth")
    request = dav_xml.propfind_request(dav_xml.parse(await ctx.body(), ctx.runtime.config.files.dav_max_xml_depth))
    entry = await ctx.stat(ctx.path)
    if entry is None:
        raise DavError(404, "no such file or folder")
    entries = [entry]
    if depth == "1" and entry.is_dir:
        entries += await ctx.run(ctx.files.list, ctx.path)
    paths = await ctx.run(lambda: [e.path for e in entries])
    dead = await PropertyStore(ctx.runtime.db).get(ctx.user.id, paths)
    locks = await LockStore(ctx.runtime.db).live(ctx.user.id)
    quota = {}
    if request.kind == "prop" and QUOTA & set(request.names):
        used = await ctx.run(ctx.files.usage)
        quota = {clark(DAV, "quota-used-bytes"): str(used),
                 clark(DAV, "quota-available-bytes"): str(max(0, ctx.files.quota - used))}
    # In a worker thread: the answer grows with the folder (100,000 files took 12 s).
    body = await ctx.run(lambda: dav_xml.multistatus([_describe(ctx, e, request, dead.get(e.path, {}), locks, quota)
                                                      for e in entries]))
    return Response(body, 207, media_type=dav_xml.MEDIA_TYPE)


async def proppatch(ctx: Context) -> Response:
    operations = dav_xml.propertyupdate_request(dav_xml.parse(await ctx.body(),
                                                              ctx.runtime.config.files.dav_max_xml_depth))
    entry = await ctx.stat(ctx.path)
    if entry is None:
        raise DavError(404, "no such file or folder")
    await check(ctx, changed=(ctx.path,))
    names = list(dict.fromkeys(name for _, name, _ in operations))
    protected = [name for name in names if name in LIVE]
    url = dav_xml.href(ctx.root_path, entry.path, entry.is_dir)
    if protected:
        # All or nothing (RFC 4918 9.2): the others fail because these did.
        others = [element(name) for name in names if name not in protected]
        refused = [element(name) for name in protected]
        body = dav_xml.multistatus([dav_xml.response(url, {403: refused, 424: others})])
        return Response(body, 207, media_type=dav_xml.MEDIA_TYPE)
    await PropertyStore(ctx.runtime.db).patch(ctx.user.id, ctx.path, [
        (action, name, dav_xml.fragment(value) if action == "set" else None)
        for action, name, value in operations])
    body = dav_xml.multistatus([dav_xml.response(url, {200: [element(name) for name in names]})])
    return Response(body, 207, media_type=dav_xml.MEDIA_TYPE)
