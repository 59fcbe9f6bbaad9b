"""WebDAV methods on content and names: GET, HEAD, PUT, DELETE, MKCOL, COPY, MOVE.

Each is a thin adapter over the user's tree (``files.store``): path safety, quota and
atomic writes are the store's; this module adds HTTP's statuses, the lock checks and
keeping dead properties with their resources.
"""

from __future__ import annotations

from html import escape as html_escape

from starlette.responses import HTMLResponse, Response

from agora.files import dav_xml, transfer
from agora.files.dav_locking import check
from agora.files.dav_locks import LockStore, is_below
from agora.files.dav_props import PropertyStore
from agora.files.dav_request import Context, DavError
from agora.files.store import split_path, virtual


# -- reading ----------------------------------------------------------------------

async def get(ctx: Context) -> Response:
    """GET and HEAD: a file as the files API sends it (conditional requests, one range,
    a sandboxing CSP so that an uploaded page never runs as this site); a folder as a
    plain list of links."""
    entry = await ctx.stat(ctx.path)
    if entry is None:
        raise DavError(404, "no such file or folder")
    if entry.is_dir:
        return HTMLResponse(b"" if ctx.request.method == "HEAD" else await _listing(ctx))
    response, _ = await transfer.download(ctx.request, ctx.files, ctx.path)
    return response


async def _listing(ctx: Context) -> bytes:
    """A plain page for a browser that opens a folder's URL."""
    entries = await ctx.run(ctx.files.list, ctx.path)
    title = html_escape(ctx.path if ctx.path.endswith("/") else ctx.path + "/")
    items = "".join(f'<li><a href="{dav_xml.href(ctx.root_path, e.path, e.is_dir)}">'
                    f'{html_escape(e.name)}{"/" if e.is_dir else ""}</a></li>' for e in entries)
    return (f'<!doctype html><meta charset="utf-8"><title>{title}</title>'
            f"<h1>{title}</h1><ul>{items}</ul>").encode()


# -- writing ----------------------------------------------------------------------

async def _require_parent(ctx: Context, path: str) -> str:
    parent = virtual(split_path(path)[:-1])
    entry = await ctx.stat(parent)
    if entry is None or not entry.is_dir:
        raise DavError(409, f"{parent} is not an existing folder")
    return parent


async def put(ctx: Context) -> Response:
    if ctx.path == "/":
        raise DavError(405, "the root folder is not a file")
    entry = await ctx.stat(ctx.path)
    if entry is not None and entry.is_dir:
        raise DavError(405, "a folder cannot be replaced by a file")
    parent = await _require_parent(ctx, ctx.path)
    await check(ctx, changed=(ctx.path,), members_of=() if entry else (parent,))
    status = transfer.preconditions(ctx.request.headers, entry, "PUT")
    if status is not None:
        raise DavError(status, "the file is not in the state the request's conditions name")
    if ctx.header("content-range"):
        # RFC 9110 14.4: a server that does not apply partial PUTs must refuse them.
        raise DavError(400, "partial PUT is not supported here; resume with the files API")
    limit = ctx.runtime.config.files.max_upload
    declared = ctx.header("content-length")
    length = int(declared) if declared and declared.isdigit() else None
    if length is not None and length > limit:
        raise DavError(413, f"uploads are limited to {limit} bytes")
    upload = await ctx.run(ctx.files.upload, ctx.path)
    try:
        if length is not None:
            await ctx.run(upload.check_fits, length)
        received = await transfer.receive_into(ctx.request, upload, limit=limit)
        if length is not None and received != length:
            raise DavError(400, f"the body had {received} bytes, Content-Length said {length}")
        stored = await ctx.run(upload.commit)
    finally:
        await ctx.run(upload.abort)  # after a commit, nothing; otherwise the old version stays
    return Response(status_code=204 if entry else 201, headers={"ETag": stored.etag})


async def delete(ctx: Context) -> Response:
    entry = await ctx.stat(ctx.path)
    if entry is None:
        raise DavError(404, "no such file or folder")
    if entry.is_dir:
        ctx.depth("infinity", ("infinity",))
    await check(ctx, removed=(ctx.path,), members_of=(ctx.parent,) if ctx.path != "/" else ())
    await ctx.run(ctx.files.delete, ctx.path, recursive=True)
    await _forget(ctx, ctx.path)
    return Response(status_code=204)


async def _forget(ctx: Context, path: str) -> None:
    await PropertyStore(ctx.runtime.db).delete(ctx.user.id, path)
    await LockStore(ctx.runtime.db).release_tree(ctx.user.id, path)


async def mkcol(ctx: Context) -> Response:
    if await ctx.body():
        raise DavError(415, "MKCOL with a body is not supported")
    if await ctx.stat(ctx.path) is not None:
        raise DavError(405, "it already exists")
    parent = await _require_parent(ctx, ctx.path)
    await check(ctx, changed=(ctx.path,), members_of=(parent,))
    await ctx.run(ctx.files.mkdir, ctx.path)
    return Response(status_code=201)


async def copy(ctx: Context) -> Response:
    return await _transfer(ctx, move=False)


async def move(ctx: Context) -> Response:
    return await _transfer(ctx, move=True)


async def _transfer(ctx: Context, *, move: bool) -> Response:
    destination = ctx.header("destination")
    if not destination:
        raise DavError(400, "a Destination header is required")
    target = ctx.local_path(destination)
    overwrite = (ctx.header("overwrite") or "T").strip().upper()
    if overwrite not in ("T", "F"):
        raise DavError(400, "Overwrite is T or F")
    source = await ctx.stat(ctx.path)
    if source is None:
        raise DavError(404, "no such file or folder")
    depth = "infinity"
    if source.is_dir:
        depth = ctx.depth("infinity", ("infinity",) if move else ("0", "infinity"))
    if target == ctx.path:
        raise DavError(403, "the source and the destination are the same")
    if ctx.path == "/" or target == "/":
        raise DavError(403, "the root folder cannot be moved, copied or replaced")
    if source.is_dir and is_below(target, ctx.path):
        raise DavError(409, "a folder cannot go inside itself")
    if is_below(ctx.path, target):
        raise DavError(409, "a resource cannot replace a folder it is in")
    target_parent = await _require_parent(ctx, target)
    existing = await ctx.stat(target)
    if existing is not None and overwrite == "F":
        raise DavError(412, "the destination exists and Overwrite is F")
    replaced = (target,) if existing else ()
    if move:
        await check(ctx, changed=(target,), removed=(ctx.path, *replaced),
                    members_of=(ctx.parent, target_parent))
    else:
        await check(ctx, changed=(target,), removed=replaced, members_of=(target_parent,))
    props = PropertyStore(ctx.runtime.db)
    if move:
        await ctx.run(ctx.files.move, ctx.path, target, overwrite=True)
        await props.move(ctx.user.id, ctx.path, target)
        await LockStore(ctx.runtime.db).release_tree(ctx.user.id, ctx.path)  # locks stay behind
    elif source.is_dir and depth == "0":
        if existing:
            await ctx.run(ctx.files.delete, target, recursive=True)
        await ctx.run(ctx.files.mkdir, target)
        await props.copy(ctx.user.id, ctx.path, target, recursive=False)
    else:
        await ctx.run(ctx.files.copy, ctx.path, target, overwrite=True)
        await props.copy(ctx.user.id, ctx.path, target, recursive=True)
    return Response(status_code=204 if existing else 201)
