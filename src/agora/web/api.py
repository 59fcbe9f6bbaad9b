"""The core JSON API: tokens, the caller's own account, users (admin) and the audit log."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from agora.core.audit import MAX_PAGE, AuditEntry
from agora.core.errors import AuthenticationFailed, Forbidden
from agora.core.identity import MAX_NAME_LENGTH, MAX_TOKEN_NAME_LENGTH, Token, User
from agora.core.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH
from agora.core.tables import utcnow
from agora.web.auth import api_admin, api_user, client_info, identity

router = APIRouter(prefix="/api/v1")

# The schema's approximation of identity.validate_name (JSON Schema regexes have no
# lookahead); the domain check is the exact one.
NAME_PATTERN = r"^[a-z][a-z0-9._-]*$"

# Ten years: long enough for any real use, short enough to stay a valid datetime.
MAX_TOKEN_LIFETIME = 10 * 365 * 86400

PROBLEM = {"model": None, "content": {"application/problem+json": {}}}
AUTH_ERRORS = {401: {"description": "Missing, unknown, revoked or expired token", **PROBLEM}}
ADMIN_ERRORS = {**AUTH_ERRORS, 403: {"description": "Not an admin", **PROBLEM}}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- models -------------------------------------------------------------------------


class UserOut(BaseModel):
    name: str
    role: Literal["admin", "user"]
    disabled: bool
    quota_bytes: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, user: User) -> "UserOut":
        return cls(name=user.name, role=user.role, disabled=user.disabled, quota_bytes=user.quota_bytes,  # type: ignore[arg-type]
                   created_at=user.created_at, updated_at=user.updated_at)


class TokenOut(BaseModel):
    id: str
    name: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked: bool

    @classmethod
    def of(cls, token: Token) -> "TokenOut":
        return cls(id=token.id, name=token.name, created_at=token.created_at, expires_at=token.expires_at,
                   last_used_at=token.last_used_at, revoked=token.revoked_at is not None)


class NewTokenOut(TokenOut):
    token: str = Field(description="The secret: shown only in this response")


class TokenRequest(Strict):
    username: str = Field(max_length=MAX_NAME_LENGTH)
    password: str = Field(max_length=MAX_PASSWORD_LENGTH)
    name: str = Field("api", min_length=1, max_length=MAX_TOKEN_NAME_LENGTH, description="A label for the token")
    expires_in: int | None = Field(None, ge=60, le=MAX_TOKEN_LIFETIME,
                                   description="Seconds until the token stops working; none for no expiry")


class PasswordChange(Strict):
    current_password: str = Field(max_length=MAX_PASSWORD_LENGTH)
    new_password: str = Field(min_length=MIN_PASSWORD_LENGTH, max_length=MAX_PASSWORD_LENGTH)


class UserCreate(Strict):
    name: str = Field(min_length=1, max_length=MAX_NAME_LENGTH, pattern=NAME_PATTERN,
                      description="Lowercase letters, digits, '-', '_' and single inner dots; starts with a letter")
    password: str = Field(min_length=MIN_PASSWORD_LENGTH, max_length=MAX_PASSWORD_LENGTH)
    role: Literal["admin", "user"] = "user"
    quota_bytes: int | None = Field(None, ge=0, le=2**62)


class UserPatch(Strict):
    password: str | None = Field(None, min_length=MIN_PASSWORD_LENGTH, max_length=MAX_PASSWORD_LENGTH)
    role: Literal["admin", "user"] | None = None
    disabled: bool | None = None
    quota_bytes: int | None = Field(None, ge=0, le=2**62)


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor: str | None
    action: str
    target: str | None
    outcome: str
    protocol: str | None
    client_addr: str | None
    details: dict | None

    @classmethod
    def of(cls, entry: AuditEntry) -> "AuditOut":
        return cls(**entry.__dict__)


class AuditPage(BaseModel):
    entries: list[AuditOut]
    next: int | None = Field(description="Pass as `before` for the next (older) page")


# -- tokens -------------------------------------------------------------------------


@router.post("/tokens", status_code=201, response_model=NewTokenOut, tags=["tokens"],
             responses={401: {"description": "Wrong user name or password", **PROBLEM},
                        403: {"description": "Password sent without TLS from a remote address", **PROBLEM},
                        429: {"description": "Too many failed attempts; see Retry-After", **PROBLEM}})
async def create_token(body: TokenRequest, request: Request) -> NewTokenOut:
    """Log in with a user name and password and get an API token (the secret is shown once)."""
    client = client_info(request)
    user = await identity(request).authenticate(body.username, body.password, client)
    expires = utcnow() + timedelta(seconds=body.expires_in) if body.expires_in else None
    token, secret = await identity(request).create_token(user, body.name, expires_at=expires, client=client)
    return NewTokenOut(**TokenOut.of(token).model_dump(), token=secret)


@router.get("/tokens", response_model=list[TokenOut], tags=["tokens"], responses=AUTH_ERRORS)
async def list_tokens(request: Request, user: User = Depends(api_user)) -> list[TokenOut]:
    return [TokenOut.of(t) for t in await identity(request).list_tokens(user)]


@router.delete("/tokens/{token_id}", status_code=204, tags=["tokens"],
               responses={**AUTH_ERRORS, 404: {"description": "No such token of yours", **PROBLEM}})
async def revoke_token(token_id: str, request: Request, user: User = Depends(api_user)) -> Response:
    await identity(request).revoke_token(user, token_id, client=client_info(request))
    return Response(status_code=204)


# -- me -----------------------------------------------------------------------------


@router.get("/me", response_model=UserOut, tags=["me"], responses=AUTH_ERRORS)
async def me(user: User = Depends(api_user)) -> UserOut:
    return UserOut.of(user)


@router.post("/me/password", status_code=204, tags=["me"],
             responses={**AUTH_ERRORS, 403: {"description": "Current password is wrong", **PROBLEM},
                        422: {"description": "New password not acceptable", **PROBLEM},
                        429: {"description": "Too many failed attempts", **PROBLEM}})
async def change_password(body: PasswordChange, request: Request, user: User = Depends(api_user)) -> Response:
    client = client_info(request)
    try:
        await identity(request).authenticate(user.name, body.current_password, client)
    except AuthenticationFailed:
        # The token is fine; it is the password that is wrong: 403, not 401.
        raise Forbidden("the current password is wrong") from None
    await identity(request).update_user(user.name, password=body.new_password, actor=user.name, client=client)
    return Response(status_code=204)


# -- users (admin) ------------------------------------------------------------------


@router.get("/users", response_model=list[UserOut], tags=["users"], responses=ADMIN_ERRORS)
async def list_users(request: Request, admin: User = Depends(api_admin)) -> list[UserOut]:
    return [UserOut.of(u) for u in await identity(request).list_users()]


@router.post("/users", status_code=201, response_model=UserOut, tags=["users"],
             responses={**ADMIN_ERRORS, 409: {"description": "The name is taken", **PROBLEM}})
async def create_user(body: UserCreate, request: Request, admin: User = Depends(api_admin)) -> UserOut:
    user = await identity(request).create_user(body.name, body.password, role=body.role,
                                               quota_bytes=body.quota_bytes, actor=admin.name,
                                               client=client_info(request))
    return UserOut.of(user)


@router.get("/users/{name}", response_model=UserOut, tags=["users"],
            responses={**ADMIN_ERRORS, 404: {"description": "No such user", **PROBLEM}})
async def get_user(name: str, request: Request, admin: User = Depends(api_admin)) -> UserOut:
    return UserOut.of(await identity(request).get_user(name))


@router.patch("/users/{name}", response_model=UserOut, tags=["users"],
              responses={**ADMIN_ERRORS, 404: {"description": "No such user", **PROBLEM},
                         409: {"description": "Would leave no enabled admin", **PROBLEM}})
async def update_user(name: str, body: UserPatch, request: Request, admin: User = Depends(api_admin)) -> UserOut:
    user = await identity(request).update_user(
        name, password=body.password, role=body.role, disabled=body.disabled,
        quota_bytes=body.quota_bytes, actor=admin.name, client=client_info(request))
    return UserOut.of(user)


@router.delete("/users/{name}", status_code=204, tags=["users"],
               responses={**ADMIN_ERRORS, 404: {"description": "No such user", **PROBLEM},
                          409: {"description": "Would leave no enabled admin", **PROBLEM}})
async def delete_user(name: str, request: Request, admin: User = Depends(api_admin)) -> Response:
    await identity(request).delete_user(name, actor=admin.name, client=client_info(request))
    return Response(status_code=204)


# -- audit log (admin) --------------------------------------------------------------


@router.get("/audit", response_model=AuditPage, tags=["audit"], responses=ADMIN_ERRORS)
async def audit(request: Request, admin: User = Depends(api_admin),
                limit: int = Query(100, ge=1, le=MAX_PAGE),
                before: int | None = Query(None, ge=1, le=2**62, description="Continue below this id"),
                action: str | None = Query(None, max_length=64),
                actor: str | None = Query(None, max_length=64)) -> AuditPage:
    entries = await request.app.state.runtime.audit.entries(limit=limit, before=before, action=action, actor=actor)
    return AuditPage(entries=[AuditOut.of(e) for e in entries],
                     next=entries[-1].id if len(entries) == limit else None)
