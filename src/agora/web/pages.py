"""Web UI pages (placeholder until the UI lands)."""

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)


def render_error(request: Request, status: int, title: str, detail: str) -> HTMLResponse:
    return HTMLResponse(f"<h1>{status} {title}</h1><p>{detail}</p>", status_code=status)
