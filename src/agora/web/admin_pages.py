"""The admin pages: the user directory. Every change goes through core.identity, which
validates and audits it; this module only turns forms into calls and errors into messages."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from agora.config import parse_size
from agora.core.errors import AgoraError, Conflict, Forbidden, InvalidInput
from agora.core.identity import ClientInfo, Session, User
from agora.web.auth import client_info, identity, runtime
from agora.web.pages import PageRoute, check_csrf, field, is_htmx, page, viewer
from agora.web.problems import status_of

router = APIRouter(prefix="/admin", route_class=PageRoute, include_in_schema=False)

MAX_QUOTA = 2**62


def parse_quota(text: str) -> int | None:
    """Bytes from "500M", "2 GiB", "1.5G" or a plain number; None when left empty."""
    text = text.strip()
    if not text:
        return None
    try:
        quota = parse_size(text)
    except ValueError:
        raise InvalidInput("a quota is a size such as 500M, 2G or 1.5 GiB") from None
    if quota > MAX_QUOTA:
        raise InvalidInput("that quota is larger than any disk")
    return quota


async def admin_viewer(session: Session = Depends(viewer)) -> Session:
    if not session.user.is_admin:
        raise Forbidden("the admin pages are for admin accounts only")
    return session


async def admin_actor(request: Request, session: Session = Depends(admin_viewer)) -> Session:
    await check_csrf(request, session.csrf_token)
    return session


async def users_page(request: Request, session: Session, *, status: int = 200, **context: Any) -> Response:
    context.setdefault("form", {})
    return page(request, "admin_users.html", session, status=status,
                users=await identity(request).list_users(),
                default_quota=runtime(request).config.identity.default_quota, **context)


@router.get("")
async def admin_home() -> Response:
    return RedirectResponse("/admin/users", status_code=303)


@router.get("/users")
async def users(request: Request, session: Session = Depends(admin_viewer)) -> Response:
    return await users_page(request, session)


@router.post("/users")
async def create_user(request: Request, session: Session = Depends(admin_actor)) -> Response:
    form = await request.form()
    values = {key: field(form, key) for key in ("name", "role", "quota")}
    values["name"] = values["name"].strip()
    try:
        user = await identity(request).create_user(
            values["name"], field(form, "password"), role=values["role"] or "user",
            quota_bytes=parse_quota(values["quota"]), actor=session.user.name,
            client=client_info(request, "web"))
    except AgoraError as error:
        # Keep what was typed (except the password) so that the admin can fix it.
        return await users_page(request, session, status=status_of(error), error=error.detail, form=values)
    return await users_page(request, session, status=201, message=f"User {user.name} created.")


# -- changes to one user: each answers htmx with the user's new table row -------------


Change = Callable[[ClientInfo], Awaitable[User | None]]


async def change(request: Request, session: Session, name: str, note: str, apply: Change) -> Response:
    try:
        user = await apply(client_info(request, "web"))
    except AgoraError as error:
        if is_htmx(request):
            raise  # PageRoute shows it in the page's message area
        return await users_page(request, session, status=status_of(error), error=error.detail)
    if is_htmx(request):
        return page(request, "_user_row.html", session, row=user, name=name, note=note)
    return await users_page(request, session, message=note)


def not_yourself(session: Session, name: str, what: str) -> None:
    # The directory would allow it while another admin exists, but from this page it is
    # nearly always a slip that locks the admin out mid-session.
    if name == session.user.name:
        raise Conflict(f"you cannot {what} your own account here; another admin can")


@router.post("/users/{name}/disable")
async def disable_user(name: str, request: Request, session: Session = Depends(admin_actor)) -> Response:
    async def apply(client: ClientInfo) -> User:
        not_yourself(session, name, "disable")
        return await identity(request).update_user(name, disabled=True, actor=session.user.name, client=client)
    return await change(request, session, name, f"{name} is disabled and logged out everywhere.", apply)


@router.post("/users/{name}/enable")
async def enable_user(name: str, request: Request, session: Session = Depends(admin_actor)) -> Response:
    async def apply(client: ClientInfo) -> User:
        return await identity(request).update_user(name, disabled=False, actor=session.user.name, client=client)
    return await change(request, session, name, f"{name} is enabled.", apply)


@router.post("/users/{name}/role")
async def set_role(name: str, request: Request, session: Session = Depends(admin_actor)) -> Response:
    role = field(await request.form(), "role")

    async def apply(client: ClientInfo) -> User:
        if role != "admin":
            not_yourself(session, name, "demote")
        return await identity(request).update_user(name, role=role, actor=session.user.name, client=client)
    return await change(request, session, name, f"{name} is now {'an admin' if role == 'admin' else 'a user'}.",
                        apply)


@router.post("/users/{name}/password")
async def reset_password(name: str, request: Request, session: Session = Depends(admin_actor)) -> Response:
    password = field(await request.form(), "password")

    async def apply(client: ClientInfo) -> User:
        return await identity(request).update_user(name, password=password, actor=session.user.name,
                                                   client=client)
    return await change(request, session, name, f"Password of {name} changed; their web sessions have ended.",
                        apply)


@router.post("/users/{name}/quota")
async def set_quota(name: str, request: Request, session: Session = Depends(admin_actor)) -> Response:
    text = field(await request.form(), "quota")

    async def apply(client: ClientInfo) -> User:
        quota = parse_quota(text)
        if quota is None:
            raise InvalidInput("enter a quota, such as 500M or 2G")
        return await identity(request).update_user(name, quota_bytes=quota, actor=session.user.name,
                                                   client=client)
    return await change(request, session, name, f"Quota of {name} changed.", apply)


@router.post("/users/{name}/delete")
async def delete_user(name: str, request: Request, session: Session = Depends(admin_actor)) -> Response:
    async def apply(client: ClientInfo) -> None:
        not_yourself(session, name, "delete")
        await identity(request).delete_user(name, actor=session.user.name, client=client)
    return await change(request, session, name, f"User {name} and their tokens were deleted.", apply)

