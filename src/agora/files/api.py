"""The files service's JSON API, ``/api/v1/files/...``, and (included here) share links.

A file's bytes are ``GET|HEAD|PUT|DELETE /api/v1/files/content/{path}``; the rest is
JSON. Every call acts on the caller's own tree, through :class:`UserFiles` in a thread.

Uploads (``PUT``) stream into an atomic upload: the new version replaces the old one
only once every byte is on disk, so a dropped connection, a quota breach or a failed
precondition leaves the old version as it was and nothing half-written anywhere.

Resumable uploads send the file in pieces, each ``Content-Range: bytes START-END/TOTAL``
(``TOTAL`` may be ``*``). A piece is written after the first START bytes of the file as
it now is, and is itself atomic: it is committed only when all its bytes have arrived,
and the file then has END+1 bytes. START must be 0 (start over) or the file's current
size (carry on): after an interruption, a client reads the size (``GET
/api/v1/files/stat/{path}``) and sends the rest from there, with ``If-Match`` set to
the ETag it last saw so that a file changed in between is not spliced (412). Until
its last piece arrives the file holds only the bytes committed so far, under its final
name: that is what makes it resumable, and why a client that must not expose a
partial file uploads it in one piece.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Literal
from urllib.parse import quote

import anyio
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from agora.core.errors import InvalidInput, NotFound, TooLarge
from agora.core.identity import User
from agora.core.passwords import MAX_PASSWORD_LENGTH
from agora.files import share_pages
from agora.files.access import user_files
from agora.files.shares import ShareLink, share_links_of
from agora.files.store import MAX_PATH_CHARS, Entry, Upload, UserFiles
from agora.files.transfer import download, preconditions, receive_into, validator_headers
from agora.web.auth import api_user, client_info
from agora.web.problems import problem

router = APIRouter()
api = APIRouter(prefix="/api/v1/files", tags=["files"])

PROBLEM = {"model": None, "content": {"application/problem+json": {}}}
AUTH_ERRORS = {401: {"description": "Missing, unknown, revoked or expired token", **PROBLEM}}
PATH_ERRORS = {**AUTH_ERRORS,
               403: {"description": "A symbolic link is in the way", **PROBLEM},
               404: {"description": "No such file or folder", **PROBLEM},
               422: {"description": "Not a valid path ('..', control characters, too long)", **PROBLEM}}
BINARY_BODY = {"requestBody": {"required": True, "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
FILE_BODY = {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}

_CONTENT_RANGE = re.compile(r"\s*bytes\s+(\d{1,19})-(\d{1,19})/(\d{1,19}|\*)\s*", re.IGNORECASE)
MAX_LIFETIME_FIELD = 100 * 365 * 86400  # the schema's bound; files.share_max_lifetime is the real one


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# -- models -------------------------------------------------------------------------


class FileEntry(BaseModel):
    name: str = Field(description="Empty for the root folder")
    path: str = Field(description="From the root of your tree, starting with '/'")
    type: Literal["file", "dir"]
    size: int = Field(description="Bytes; 0 for folders")
    mtime: datetime
    etag: str

    @classmethod
    def of(cls, entry: Entry) -> "FileEntry":
        return cls(name=entry.name, path=entry.path, type="dir" if entry.is_dir else "file", size=entry.size,
                   mtime=datetime.fromtimestamp(entry.mtime, timezone.utc), etag=entry.etag)


class Listing(BaseModel):
    path: str
    entries: list[FileEntry] = Field(description="Folders first, then files, each by name")


_ENTRIES = TypeAdapter(list[FileEntry])
SERIALISE_CHUNK = 1000  # entries serialised in one call, which holds the GIL throughout


def listing_json(path: str, entries: list[Entry]) -> bytes:
    """A Listing as JSON, made in slices: for a folder of 100,000 files one call to
    pydantic held every thread (the event loop's too) for half a second."""
    chunks = (_ENTRIES.dump_json([FileEntry.of(e) for e in entries[i:i + SERIALISE_CHUNK]])[1:-1]
              for i in range(0, len(entries), SERIALISE_CHUNK))
    return b'{"path":%s,"entries":[%s]}' % (json.dumps(path).encode(), b",".join(chunks))


class Usage(BaseModel):
    used: int = Field(description="Bytes stored")
    quota: int = Field(description="Bytes allowed")


class MkdirRequest(Strict):
    path: str = Field(max_length=MAX_PATH_CHARS)
    parents: bool = Field(False, description="Create missing parent folders too")


class MoveRequest(Strict):
    source: str = Field(alias="from", max_length=MAX_PATH_CHARS)
    target: str = Field(alias="to", max_length=MAX_PATH_CHARS)
    overwrite: bool = Field(False, description="Replace what is at `to` (a folder with all it holds)")


class ShareRequest(Strict):
    path: str = Field(max_length=MAX_PATH_CHARS)
    expires_in: int | None = Field(None, ge=1, le=MAX_LIFETIME_FIELD,
                                   description="Seconds until the link stops working; at most "
                                               "files.share_max_lifetime, which is also the default")
    password: str | None = Field(None, min_length=1, max_length=MAX_PASSWORD_LENGTH,
                                 description="Visitors must give it (form, or HTTP Basic with any user name)")


class ShareOut(BaseModel):
    id: str
    path: str
    created_at: datetime
    expires_at: datetime | None
    revoked: bool
    active: bool = Field(description="Not revoked and not expired")
    password: bool = Field(description="Whether the link needs a password")
    downloads: int

    @classmethod
    def of(cls, link: ShareLink) -> "ShareOut":
        return cls(id=link.id, path=link.path, created_at=link.created_at, expires_at=link.expires_at,
                   revoked=link.revoked_at is not None, active=link.active, password=link.has_password,
                   downloads=link.downloads)


class NewShareOut(ShareOut):
    token: str = Field(description="The secret part of the URL: shown only in this response")
    url: str = Field(description="The link to hand out")


# -- helpers ------------------------------------------------------------------------


def _files(request: Request, user: User) -> UserFiles:
    return user_files(request.app.state.runtime, user)


def _entry_response(entry: Entry, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    body = FileEntry.of(entry).model_dump(mode="json")
    return JSONResponse(body, status_code=status, headers={**validator_headers(entry), **(headers or {})})


def _current(files: UserFiles, path: str) -> Entry | None:
    try:
        return files.stat(path)
    except NotFound:
        return None


def _precondition_failed() -> Response:
    return problem(412, "the file is not in the state the request's If-Match / If-None-Match expects",
                   slug="precondition-failed", title="Precondition failed")


class _Changed(Exception):
    """The file changed while a conditional or resumed upload was arriving."""


def _content_range(value: str | None) -> tuple[int, int, int | None] | None:
    if value is None:
        return None
    match = _CONTENT_RANGE.fullmatch(value)
    if match is None:
        raise InvalidInput("Content-Range must be 'bytes START-END/TOTAL' (TOTAL may be '*')")
    start, end = int(match.group(1)), int(match.group(2))
    total = None if match.group(3) == "*" else int(match.group(3))
    if end < start or (total is not None and end >= total):
        raise InvalidInput("Content-Range: END must be at least START and below TOTAL")
    return start, end, total


def _content_length(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.strip().isdigit() or len(value) > 19:
        raise InvalidInput("Content-Length must be a number of bytes")
    return int(value)


def _commit(files: UserFiles, upload: Upload, path: str, before: Entry | None, guarded: bool) -> Entry:
    if guarded:
        now = _current(files, path)
        if (now.etag if now else None) != (before.etag if before else None):
            upload.abort()
            raise _Changed()
    return upload.commit()


async def _abort(upload: Upload) -> None:
    # Also when the request is being cancelled: the temporary file must go.
    with anyio.CancelScope(shield=True):
        await run_in_threadpool(upload.abort)


# -- listing and reading ------------------------------------------------------------


@api.get("/list", response_model=Listing, responses=PATH_ERRORS, summary="List your root folder")
@api.get("/list/{path:path}", response_model=Listing, summary="List a folder",
         responses={**PATH_ERRORS, 409: {"description": "It is a file", **PROBLEM}})
async def list_folder(request: Request, path: str = "", user: User = Depends(api_user)) -> Response:
    files = _files(request, user)
    entry = await run_in_threadpool(files.stat, path)
    entries = await run_in_threadpool(files.list, path)
    # Serialised in a worker thread: its cost grows with the folder (100,000 files took
    # 5 s of the event loop as models).
    return Response(await run_in_threadpool(listing_json, entry.path, entries), media_type="application/json")


@api.get("/stat/{path:path}", response_model=FileEntry, responses=PATH_ERRORS,
         summary="Describe a file or folder")
async def stat(request: Request, path: str, user: User = Depends(api_user)) -> Response:
    entry = await run_in_threadpool(_files(request, user).stat, path)
    return _entry_response(entry)


@api.api_route("/content/{path:path}", methods=["GET", "HEAD"], response_class=Response,
               summary="Download a file",
               responses={200: FILE_BODY, 206: {"description": "The requested range", **FILE_BODY},
                          304: {"description": "Not modified (If-None-Match / If-Modified-Since)"},
                          409: {"description": "It is a folder", **PROBLEM},
                          412: {"description": "If-Match / If-Unmodified-Since failed"},
                          416: {"description": "The range starts past the end"}, **PATH_ERRORS})
async def get_content(request: Request, path: str, user: User = Depends(api_user),
                      download_: bool = Query(False, alias="download",
                                              description="Ask the browser to save it (Content-Disposition)")) -> Response:
    """The file's bytes, streamed. Honours `Range` (one range), `If-Range`, `If-None-Match`,
    `If-Modified-Since`, `If-Match` and `If-Unmodified-Since`; sends `ETag`,
    `Last-Modified` and `Accept-Ranges: bytes`."""
    response, _ = await download(request, _files(request, user), path,
                                 disposition="attachment" if download_ else None)
    return response


# -- writing ------------------------------------------------------------------------


@api.put("/content/{path:path}", response_model=FileEntry, openapi_extra=BINARY_BODY,
         summary="Upload a file (whole, or resumable pieces with Content-Range)",
         responses={200: {"description": "Replaced"}, 201: {"description": "Created"},
                    400: {"description": "The body is shorter or longer than announced", **PROBLEM},
                    408: {"description": "The client stopped sending", **PROBLEM},
                    409: {"description": "It is a folder, or Content-Range's START is not the file's size",
                          **PROBLEM},
                    412: {"description": "If-Match / If-None-Match failed, or the file changed meanwhile",
                          **PROBLEM},
                    413: {"description": "Over files.max_upload or the quota; nothing stored", **PROBLEM},
                    **PATH_ERRORS})
async def put_content(request: Request, path: str, user: User = Depends(api_user)) -> Response:
    """Store the body as the file's new version, atomically (send it as
    `application/octet-stream`). `If-Match: <etag>` replaces only that version,
    `If-None-Match: *` only creates. `Content-Range: bytes START-END/TOTAL` sends one piece
    of a resumable upload: START is 0 or the file's current size (see the module docs)."""
    runtime = request.app.state.runtime
    files = _files(request, user)
    limit = runtime.config.files.max_upload
    span = _content_range(request.headers.get("content-range"))
    length = _content_length(request.headers.get("content-length"))
    offset = span[0] if span else 0
    expected = span[1] - span[0] + 1 if span else length
    if span and length is not None and length != expected:
        raise InvalidInput(f"Content-Length ({length}) differs from the Content-Range's length ({expected})")
    final = span[2] if span and span[2] is not None else (offset + expected if expected is not None else None)
    if final is not None and final > limit:
        raise TooLarge(f"files are limited to {limit} bytes (files.max_upload)")

    before = await run_in_threadpool(_current, files, path)
    if preconditions(request.headers, before, "PUT") is not None:  # only ever 412 for a PUT
        return _precondition_failed()
    size = before.size if before and not before.is_dir else 0
    if offset not in (0, size):
        return problem(409, f"this piece starts at byte {offset}, but the file has {size} bytes: "
                            f"send from byte {size}, or from 0 to start over",
                       slug="upload-offset", title="Wrong upload offset", size=size)
    guarded = offset > 0 or "if-match" in request.headers or "if-none-match" in request.headers
    upload = await run_in_threadpool(files.upload, path, offset=offset)
    try:
        if final is not None:
            await run_in_threadpool(upload.check_fits, final)
        received = await receive_into(request, upload, limit=limit, offset=offset)
        if expected is not None and received != expected:
            raise InvalidInput(f"the body has {received} bytes where {expected} were announced")
        entry = await run_in_threadpool(_commit, files, upload, path, before, guarded)
    except _Changed:
        return _precondition_failed()
    except ClientDisconnect:
        await _abort(upload)
        return Response(status_code=499)  # nobody is listening; for the access log
    except TimeoutError:
        await _abort(upload)
        return problem(408, "no data arrived for too long; the upload was dropped", slug="upload-timeout",
                       title="Request timeout", headers={"Connection": "close"})
    except BaseException:
        await _abort(upload)
        raise
    if before is None:
        return _entry_response(entry, 201, {"Location": "/api/v1/files/content" + quote(entry.path)})
    return _entry_response(entry)


@api.delete("/content/{path:path}", status_code=204, summary="Delete a file or folder",
            responses={409: {"description": "A folder that is not empty (use recursive=true)", **PROBLEM},
                       412: {"description": "If-Match failed", **PROBLEM}, **PATH_ERRORS})
async def delete_content(request: Request, path: str, user: User = Depends(api_user),
                         recursive: bool = Query(False, description="Delete a folder with all it holds")) -> Response:
    files = _files(request, user)
    if "if-match" in request.headers:
        if preconditions(request.headers, await run_in_threadpool(_current, files, path), "DELETE") is not None:
            return _precondition_failed()
    await run_in_threadpool(lambda: files.delete(path, recursive=recursive))
    return Response(status_code=204)


@api.post("/mkdir", status_code=201, response_model=FileEntry, summary="Create a folder",
          responses={409: {"description": "It exists already", **PROBLEM}, **PATH_ERRORS})
async def mkdir(body: MkdirRequest, request: Request, user: User = Depends(api_user)) -> Response:
    files = _files(request, user)
    entry = await run_in_threadpool(lambda: files.mkdir(body.path, parents=body.parents))
    return _entry_response(entry, 201)


@api.post("/move", response_model=FileEntry, summary="Move or rename a file or folder",
          responses={409: {"description": "The target exists (see overwrite), or a folder into itself", **PROBLEM},
                     **PATH_ERRORS})
async def move(body: MoveRequest, request: Request, user: User = Depends(api_user)) -> Response:
    files = _files(request, user)
    entry = await run_in_threadpool(lambda: files.move(body.source, body.target, overwrite=body.overwrite))
    return _entry_response(entry)


@api.post("/copy", status_code=201, response_model=FileEntry, summary="Copy a file or folder",
          responses={409: {"description": "The target exists (see overwrite), or a folder into itself", **PROBLEM},
                     413: {"description": "Over the quota", **PROBLEM}, **PATH_ERRORS})
async def copy(body: MoveRequest, request: Request, user: User = Depends(api_user)) -> Response:
    files = _files(request, user)
    entry = await run_in_threadpool(lambda: files.copy(body.source, body.target, overwrite=body.overwrite))
    return _entry_response(entry, 201)


@api.get("/usage", response_model=Usage, responses=AUTH_ERRORS, summary="Storage used and allowed")
async def usage(request: Request, user: User = Depends(api_user)) -> Usage:
    used = await run_in_threadpool(_files(request, user).usage)
    return Usage(used=used, quota=user.quota_bytes)


# -- share links --------------------------------------------------------------------


@api.post("/shares", status_code=201, response_model=NewShareOut, summary="Create a share link",
          responses={**PATH_ERRORS, 422: {"description": "Bad path, or expires_in over files.share_max_lifetime",
                                          **PROBLEM}})
async def create_share(body: ShareRequest, request: Request, user: User = Depends(api_user)) -> NewShareOut:
    """A read-only link to a file or folder that works without an account: `GET /s/{token}`.
    The token is shown only in this answer."""
    links = share_links_of(request.app.state.runtime)
    link, token = await links.create(user, body.path, expires_in=body.expires_in, password=body.password,
                                     client=client_info(request))
    url = f"{str(request.base_url).rstrip('/')}/s/{token}"
    return NewShareOut(**ShareOut.of(link).model_dump(), token=token, url=url)


@api.get("/shares", response_model=list[ShareOut], responses=AUTH_ERRORS, summary="Your share links")
async def list_shares(request: Request, user: User = Depends(api_user)) -> list[ShareOut]:
    return [ShareOut.of(link) for link in await share_links_of(request.app.state.runtime).of_user(user)]


@api.delete("/shares/{share_id}", status_code=204, summary="Revoke a share link",
            responses={**AUTH_ERRORS, 404: {"description": "No such link of yours", **PROBLEM}})
async def revoke_share(share_id: str, request: Request, user: User = Depends(api_user)) -> Response:
    await share_links_of(request.app.state.runtime).revoke(user, share_id, client=client_info(request))
    return Response(status_code=204)


router.include_router(api)
router.include_router(share_pages.router)
