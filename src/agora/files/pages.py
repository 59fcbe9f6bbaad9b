"""The file browser at ``/files``: folders, upload, download, rename, delete, share links,
the quota bar and the user's site settings.

Session pages, like the rest of the UI: every POST carries the session's CSRF token (a
form field, or the ``X-CSRF-Token`` header for htmx and the upload script) and calls the
store directly, never the bearer-token API. Uploads stream the request body into an
atomic :class:`~agora.files.store.Upload` (``static/files/browser.js`` sends each file
as the raw body so that it can show progress); a multipart form does the same without
JavaScript. Every path is in the session user's own tree: there is no way to name
another user's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from agora.core.errors import AgoraError, InvalidInput, TooLarge
from agora.core.identity import Session
from agora.files.access import user_files
from agora.files.shares import share_links_of
from agora.files.sites import PUBLIC, listings_enabled, set_listings, site_server
from agora.files.store import COPY_CHUNK, Entry, UserFiles, split_path, virtual
from agora.files.transfer import download, receive_into
from agora.web.auth import client_info
from agora.web.pages import PageRoute, actor, check_csrf, current_session, field, is_htmx, page, viewer
from agora.web.problems import status_of

router = APIRouter(prefix="/files", route_class=PageRoute, include_in_schema=False)

MAX_SHARE_DAYS = 365


# -- helpers --------------------------------------------------------------------------


def _runtime(request: Request) -> Any:
    return request.app.state.runtime


def _files(request: Request, session: Session) -> UserFiles:
    return user_files(_runtime(request), session.user)


def folder_of(value: str | None) -> str:
    """A folder parameter as a normalized virtual path ("/" when absent)."""
    return virtual(split_path(value or "/"))


def child(folder: str, name: str) -> str:
    """``folder/name`` for a single name typed by the user."""
    parts = split_path(name)
    if len(parts) != 1 or not name.strip() or "/" in name:
        raise InvalidInput("a name is one file or folder name: not empty, '.' or '..', and without '/'")
    return virtual(split_path(folder) + parts)


def browse_url(folder: str) -> str:
    return "/files" if folder == "/" else f"/files?dir={quote(folder, safe='/')}"


@dataclass(frozen=True)
class Row:
    entry: Entry
    modified: datetime

    @property
    def href(self) -> str:
        if self.entry.is_dir:
            return browse_url(self.entry.path)
        return f"/files/download?path={quote(self.entry.path, safe='/')}"


async def _listing_context(request: Request, session: Session, folder: str) -> dict[str, Any]:
    files = _files(request, session)

    def read() -> tuple[list[Entry], int]:
        return files.list(folder), files.usage()

    entries, used = await run_in_threadpool(read)
    quota = session.user.quota_bytes
    return {
        "folder": folder,
        "rows": [Row(entry, datetime.fromtimestamp(entry.mtime, timezone.utc)) for entry in entries],
        "used": used,
        "quota": quota,
        "percent": min(100, round(used * 100 / quota)) if quota else 100,
    }


def _crumbs(folder: str) -> list[tuple[str, str]]:
    parts = split_path(folder)
    return [("Home", browse_url("/"))] + [(part, browse_url(virtual(parts[:i + 1]))) for i, part in enumerate(parts)]


async def _site_context(request: Request, session: Session) -> dict[str, Any]:
    files = _files(request, session)
    return {
        "site_url": f"/~{session.user.name}/",
        "site_listings": await listings_enabled(_runtime(request).db, session.user.id),
        "site_exists": await run_in_threadpool(files.exists, f"/{PUBLIC}"),
    }


async def _browser(request: Request, session: Session, folder: str, *, status: int = 200,
                   **extra: Any) -> Response:
    context = await _listing_context(request, session, folder)
    context.update(await _site_context(request, session))
    links = await share_links_of(_runtime(request)).of_user(session.user)
    return page(request, "files/browser.html", session, status=status, crumbs=_crumbs(folder),
                links=[link for link in links if link.active], max_share_days=MAX_SHARE_DAYS, **context, **extra)


async def _after_change(request: Request, session: Session, folder: str, message: str) -> Response:
    """htmx gets the refreshed listing; a plain form post is sent back to the folder."""
    if is_htmx(request):
        context = await _listing_context(request, session, folder)
        return page(request, "files/_listing.html", session, message=message, **context)
    return RedirectResponse(browse_url(folder), status_code=303)


# -- browsing -------------------------------------------------------------------------


@router.get("", name="files.home")
async def browse(request: Request, session: Session = Depends(viewer)) -> Response:
    return await _browser(request, session, folder_of(request.query_params.get("dir")))


@router.get("/listing")
async def listing(request: Request, session: Session = Depends(viewer)) -> Response:
    """The listing and quota bar alone, which the page reloads after uploads."""
    context = await _listing_context(request, session, folder_of(request.query_params.get("dir")))
    return page(request, "files/_listing.html", session, **context)


@router.get("/download")
async def download_file(request: Request, session: Session = Depends(viewer)) -> Response:
    path = request.query_params.get("path", "")
    response, _ = await download(request, _files(request, session), path, disposition="attachment")
    return response


# -- uploads --------------------------------------------------------------------------


def _declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    return int(value) if value is not None and value.isdigit() else None


async def _store_part(files: UserFiles, path: str, source: UploadFile) -> Entry:
    """Copy a multipart part (spooled by the form parser) into the store."""
    def copy() -> Entry:
        with files.upload(path) as upload:
            source.file.seek(0)
            while chunk := source.file.read(COPY_CHUNK):
                upload.write(chunk)
        assert upload.entry is not None
        return upload.entry
    return await run_in_threadpool(copy)


@router.post("/upload")
async def upload(request: Request) -> Response:
    """One file as the raw body (``?dir=&name=``, answered in JSON for the upload
    script), or files of a multipart form (answered with a redirect, without JavaScript)."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        return await _upload_form(request)
    session = await current_session(request)
    if session is None:
        return JSONResponse({"detail": "your session has ended: log in again"}, status_code=401)
    limit = _runtime(request).config.files.max_upload
    try:
        await check_csrf(request, session.csrf_token)
        declared = _declared_length(request)
        if declared is not None and declared > limit:
            raise TooLarge(f"uploads are limited to {limit} bytes (files.max_upload)")
        files = _files(request, session)
        path = child(folder_of(request.query_params.get("dir")), request.query_params.get("name", ""))
        upload = await run_in_threadpool(files.upload, path)
        try:
            await receive_into(request, upload, limit=limit)
            entry = await run_in_threadpool(upload.commit)
        except BaseException:
            await run_in_threadpool(upload.abort)
            raise
    except AgoraError as error:
        return JSONResponse({"detail": error.detail}, status_code=status_of(error))
    except TimeoutError:
        return JSONResponse({"detail": "the upload stalled and was dropped"}, status_code=408)
    except ClientDisconnect:
        return Response(status_code=400)  # nobody is listening; the upload was aborted
    return JSONResponse({"path": entry.path, "size": entry.size}, status_code=201)


async def _upload_form(request: Request) -> Response:
    session = await viewer(request)
    limit = _runtime(request).config.files.max_upload
    declared = _declared_length(request)
    # The form parser spools parts to temporary files before we see the token: refuse
    # what could never be stored before it is read.
    if declared is None or declared > limit:
        raise TooLarge(f"uploads are limited to {limit} bytes (files.max_upload); the form must declare its size")
    await check_csrf(request, session.csrf_token)
    form = await request.form()
    folder = folder_of(field(form, "dir"))
    files = _files(request, session)
    parts = [part for part in form.getlist("files") if isinstance(part, UploadFile) and part.filename]
    if not parts:
        raise InvalidInput("choose at least one file to upload")
    for part in parts:
        await _store_part(files, child(folder, part.filename or ""), part)
    return RedirectResponse(browse_url(folder), status_code=303)


# -- changes --------------------------------------------------------------------------


@router.post("/mkdir")
async def mkdir(request: Request, session: Session = Depends(actor)) -> Response:
    form = await request.form()
    folder = folder_of(field(form, "dir"))
    path = child(folder, field(form, "name"))
    await run_in_threadpool(_files(request, session).mkdir, path)
    return await _after_change(request, session, folder, f"Folder {path} created.")


@router.post("/rename")
async def rename(request: Request, session: Session = Depends(actor)) -> Response:
    form = await request.form()
    source = virtual(split_path(field(form, "path")))
    parent = virtual(split_path(source)[:-1])
    target = child(parent, field(form, "name"))
    await run_in_threadpool(_files(request, session).move, source, target)
    return await _after_change(request, session, parent, f"Renamed to {target}.")


@router.post("/delete")
async def delete(request: Request, session: Session = Depends(actor)) -> Response:
    form = await request.form()
    path = virtual(split_path(field(form, "path")))
    await run_in_threadpool(lambda: _files(request, session).delete(path, recursive=True))
    return await _after_change(request, session, virtual(split_path(path)[:-1]), f"Deleted {path}.")


# -- share links ------------------------------------------------------------------------


def _share_days(text: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    if not text.isdigit() or not 1 <= int(text) <= MAX_SHARE_DAYS:
        raise InvalidInput(f"a link lasts 1 to {MAX_SHARE_DAYS} days (empty: as long as allowed)")
    return int(text) * 86400.0


@router.post("/share")
async def share(request: Request, session: Session = Depends(actor)) -> Response:
    form = await request.form()
    path = virtual(split_path(field(form, "path")))
    password = field(form, "password") or None
    runtime = _runtime(request)
    expires_in = _share_days(field(form, "expires_days"))
    if expires_in is not None:
        expires_in = min(expires_in, runtime.config.files.share_max_lifetime)
    link, token = await share_links_of(runtime).create(session.user, path, expires_in=expires_in,
                                                       password=password, client=client_info(request, "web"))
    url = f"{str(request.base_url).rstrip('/')}/s/{token}"
    if is_htmx(request):
        return page(request, "files/_share_created.html", session, link=link, url=url)
    folder = virtual(split_path(path)[:-1])
    return await _browser(request, session, folder, status=201, created=link, created_url=url)


@router.post("/shares/{link_id}/revoke")
async def revoke_share(link_id: str, request: Request, session: Session = Depends(actor)) -> Response:
    await share_links_of(_runtime(request)).revoke(session.user, link_id, client=client_info(request, "web"))
    if is_htmx(request):
        return Response(status_code=200)  # the row is removed by htmx (outerHTML swap of nothing)
    return RedirectResponse("/files", status_code=303)


# -- the user's site ----------------------------------------------------------------------


@router.post("/site")
async def site_settings(request: Request, session: Session = Depends(actor)) -> Response:
    form = await request.form()
    runtime = _runtime(request)
    enabled = field(form, "listings") in ("on", "1", "true")
    await set_listings(runtime.db, session.user.id, enabled)
    site_server(runtime).forget_owner(session.user.name)
    files = _files(request, session)
    if field(form, "create") and not await run_in_threadpool(files.exists, f"/{PUBLIC}"):
        await run_in_threadpool(files.mkdir, f"/{PUBLIC}")
    if is_htmx(request):
        return page(request, "files/_site.html", session, **await _site_context(request, session),
                    message="Site settings saved.")
    return RedirectResponse("/files", status_code=303)

