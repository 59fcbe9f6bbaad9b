"""Who is calling: API bearer tokens, browser sessions, and the client's address."""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from agora.core.errors import Forbidden, NotAuthenticated
from agora.core.identity import ClientInfo, Identity, User
from agora.core.runtime import Runtime

SESSION_COOKIE = "agora_session"

bearer = HTTPBearer(auto_error=False, description="An API token from POST /api/v1/tokens")


def runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def identity(request: Request) -> Identity:
    return request.app.state.runtime.identity


def client_info(request: Request, protocol: str = "http") -> ClientInfo:
    address = request.client.host if request.client else "unknown"
    return ClientInfo(address=address, protocol=protocol, secure=request.url.scheme == "https")


async def api_user(request: Request,
                   credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> User:
    """The user of a valid, unrevoked, unexpired token whose account is enabled."""
    if credentials is None:
        raise NotAuthenticated("send Authorization: Bearer <token>; get one from POST /api/v1/tokens")
    user = await identity(request).user_for_token(credentials.credentials)
    if user is None:
        raise NotAuthenticated("the token is unknown, revoked or expired, or its user is disabled")
    request.state.user = user
    return user


async def api_admin(user: User = Depends(api_user)) -> User:
    if not user.is_admin:
        raise Forbidden("this needs an admin account")
    return user
