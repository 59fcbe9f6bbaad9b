"""The ASGI app: every service's JSON routes and pages, health, metrics, static assets."""

from __future__ import annotations

import re

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from agora import __version__
from agora.core.metrics import CONTENT_TYPE
from agora.core.runtime import Runtime
from agora.web import admin_pages, api, pages, problems
from agora.web.middleware import BodyLimitMiddleware, ObserveMiddleware, SecurityHeadersMiddleware

STATIC = Path(__file__).parent / "static"
# Routes that read big bodies themselves, each against its own limit (files.max_upload,
# mail.max_message, sql.max_upload), rather than http.max_json_body.
# Routes that read their bodies as streams, each with its own limit (files.max_upload,
# mail.max_message, sql.max_upload): the JSON body limit does not apply to them.
STREAMING_ROUTES = re.compile(r"/dav/|/api/v1/files/content/|/files/upload|/api/v1/mail/send|/mail/send"
                              r"|/sql/import|/api/v1/sql/databases/[^/]+/sqlite$")


def create_app(runtime: Runtime) -> FastAPI:
    app = FastAPI(
        title="Agora",
        version=__version__,
        description="Web, files, mail, bank and hosted SQL behind one user directory.",
        openapi_url="/api/openapi.json",
        docs_url=None,  # served by pages.py from our own copy of Swagger UI (no CDN)
        redoc_url=None,
    )
    app.state.runtime = runtime
    problems.install(app, html=pages.render_error)

    if runtime.config.bank.enabled:
        # First: a request is matched against the routes in order, and at thousands of
        # transfers a second trying a hundred other routes first is a third of the CPU.
        # Only /api/v1/bank/... matches these, so the order changes nothing else.
        from agora.bank import api as bank_api
        app.include_router(bank_api.router)
    app.include_router(api.router)
    app.include_router(pages.router)
    app.include_router(admin_pages.router)
    # Each service adds its routers here, imported only when enabled.
    if runtime.config.files.enabled:
        from agora.files import api as files_api, dav, pages as files_pages, sites
        app.include_router(files_api.router)
        app.include_router(files_pages.router)
        app.include_router(sites.router)
        app.mount("/dav", dav.create_app(runtime))
    if runtime.config.mail.enabled:
        from agora.mail import api as mail_api, pages as mail_pages
        app.include_router(mail_api.router)
        app.include_router(mail_pages.router)
    if runtime.config.bank.enabled:
        from agora.bank import pages as bank_pages
        app.include_router(bank_pages.router)
    if runtime.config.sql.enabled:
        from agora.sql import api as sql_api, pages as sql_pages
        app.include_router(sql_api.router)
        app.include_router(sql_pages.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz", tags=["health"], responses={503: {"description": "Storage is unreachable"}})
    async def healthz(request: Request) -> JSONResponse:
        """Liveness and storage: 200 when the metadata database answers."""
        try:
            await runtime.db.ping()
        except Exception as error:  # any failure of storage is "unhealthy", not a crash
            return JSONResponse({"status": "unhealthy", "checks": {"database": str(error)[:200]}}, status_code=503)
        return JSONResponse({"status": "ok", "version": __version__, "checks": {"database": "ok"}})

    if runtime.config.http.metrics:
        @app.get("/metrics", tags=["health"], response_class=Response,
                 responses={200: {"content": {"text/plain": {}}}})
        async def metrics() -> Response:
            """Prometheus metrics: requests, latencies, connections per listener, logins."""
            return Response(runtime.metrics.render(), media_type=CONTENT_TYPE)

    app.add_middleware(BodyLimitMiddleware, limit=runtime.config.http.max_json_body,
                       streaming=STREAMING_ROUTES)
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(ObserveMiddleware, metrics=runtime.metrics)
    return app
