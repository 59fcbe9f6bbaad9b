"""Placeholder being written in this session; replaced before commit."""

from starlette.responses import PlainTextResponse


def create_app(runtime):
    return PlainTextResponse("WebDAV is not built yet", status_code=501)
