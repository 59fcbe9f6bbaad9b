"""RFC 9457 problem details for every API error, and never a stack trace to a client."""

from __future__ import annotations

import logging
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from agora.core import errors
from agora.core.database import RETRY_AFTER, unavailable, unavailable_classes

log = logging.getLogger("agora.http")

MEDIA_TYPE = "application/problem+json"

STATUS = {
    errors.InvalidInput: 422,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.Forbidden: 403,
    errors.AuthenticationFailed: 401,
    errors.EncryptionRequired: 403,
    errors.RateLimited: 429,
    errors.TooLarge: 413,
    errors.StorageFull: 507,
    errors.TooSlow: 503,  # the work asked for outlasted heavy_work_timeout
}

_TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found",
           405: "Method not allowed", 406: "Not acceptable", 409: "Conflict", 413: "Content too large",
           415: "Unsupported media type", 422: "Invalid input", 429: "Too many requests",
           507: "Insufficient storage", 500: "Internal server error", 503: "Service unavailable"}


def problem_type(slug: str) -> str:
    return f"urn:agora:problem:{slug}"


def problem(status: int, detail: str | None = None, *, slug: str | None = None, title: str | None = None,
            headers: dict[str, str] | None = None, instance: str | None = None,
            **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {
        "type": problem_type(slug) if slug else "about:blank",
        "title": title or _TITLES.get(status, "Error"),
        "status": status,
    }
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers, media_type=MEDIA_TYPE)


def status_of(error: errors.AgoraError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


def _wants_html(request: Request) -> bool:
    return not request.url.path.startswith("/api/") and "text/html" in request.headers.get("accept", "")


HtmlRenderer = Callable[[Request, int, str, str], Response]


def install(app: FastAPI, html: HtmlRenderer | None = None) -> None:
    """Register the handlers; ``html`` renders errors for browsers outside /api/."""

    def respond(request: Request, status: int, detail: str, slug: str | None, title: str | None = None,
                headers: dict[str, str] | None = None, **extra: Any) -> Response:
        if html is not None and _wants_html(request):
            response = html(request, status, title or _TITLES.get(status, "Error"), detail)
            if headers:
                response.headers.update(headers)
            return response
        return problem(status, detail, slug=slug, title=title, headers=headers,
                       instance=request.url.path, **extra)

    def respond_unavailable(request: Request, error: BaseException) -> Response:
        # A blip of the metadata database (restart, failover, lock held too long): the
        # request may be tried again as it is, so 503 and when, never 500.
        log.warning("%s %s: the database is unavailable: %s", request.method, request.url.path,
                    str(error).splitlines()[0][:300] if str(error) else type(error).__name__)
        return respond(request, 503, "the database is unavailable for a moment; try again", "unavailable",
                       "Service unavailable", {"Retry-After": str(RETRY_AFTER)})

    async def database_error(request: Request, error: Exception) -> Response:
        if unavailable(error):
            return respond_unavailable(request, error)
        raise error  # a real fault: on to the 500 handler below, which logs it

    # Registered by class rather than left to the catch-all below, whose answer
    # Starlette follows by raising the error again for the server to log as a crash.
    for cls in unavailable_classes():
        app.add_exception_handler(cls, database_error)

    @app.exception_handler(errors.AgoraError)
    async def agora_error(request: Request, error: errors.AgoraError) -> Response:
        status = status_of(error)
        headers = {}
        if isinstance(error, errors.RateLimited):
            headers["Retry-After"] = str(max(1, int(error.retry_after + 0.999)))
        if status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="agora"'
        return respond(request, status, error.detail, error.slug, error.title, headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        detail = error.detail if isinstance(error.detail, str) else None
        return respond(request, error.status_code, detail or _TITLES.get(error.status_code, ""),
                       None, headers=dict(error.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> Response:
        # Echo where and what, never the input itself (it may be a password).
        details = [{"loc": [str(part) for part in item.get("loc", ())], "msg": str(item.get("msg", "")),
                    "type": str(item.get("type", ""))} for item in error.errors()]
        summary = "; ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in details[:5])
        return respond(request, 422, summary or "invalid request", "invalid-input", "Invalid input",
                       errors=details)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> Response:
        if unavailable(error):
            return respond_unavailable(request, error)
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return respond(request, 500, "an unexpected error occurred; it has been logged", "internal")
