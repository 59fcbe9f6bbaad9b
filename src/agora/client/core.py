"""Calls of the core API: tokens, the caller's account, users and audit log (admin), health."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import quote

import httpx

from agora.client._http import Call, json_body, many, nothing, one, query
from agora.client.models import AuditEntry, AuditPage, Health, NewToken, Token, User, from_json

API = "/api/v1"


def _segment(value: str) -> str:
    # Names and ids go into the path; quoting keeps "../x" or "a/b" from addressing
    # anything but the resource named.
    return quote(str(value), safe="")


def create_token(username: str, password: str, name: str, expires_in: int | float | timedelta | None) -> Call[NewToken]:
    body: dict[str, Any] = {"username": username, "password": password, "name": name}
    if expires_in is not None:
        seconds = expires_in.total_seconds() if isinstance(expires_in, timedelta) else expires_in
        body["expires_in"] = int(seconds)
    return Call("POST", f"{API}/tokens", one(NewToken), json=body)


def tokens() -> Call[list[Token]]:
    return Call("GET", f"{API}/tokens", many(Token))


def revoke_token(token_id: str) -> Call[None]:
    return Call("DELETE", f"{API}/tokens/{_segment(token_id)}", nothing)


def me() -> Call[User]:
    return Call("GET", f"{API}/me", one(User))


def change_password(current: str, new: str) -> Call[None]:
    return Call("POST", f"{API}/me/password", nothing,
                json={"current_password": current, "new_password": new})


def users() -> Call[list[User]]:
    return Call("GET", f"{API}/users", many(User))


def user(name: str) -> Call[User]:
    return Call("GET", f"{API}/users/{_segment(name)}", one(User))


def create_user(name: str, password: str, role: str, quota_bytes: int | None) -> Call[User]:
    body: dict[str, Any] = {"name": name, "password": password, "role": role}
    if quota_bytes is not None:
        body["quota_bytes"] = quota_bytes
    return Call("POST", f"{API}/users", one(User), json=body)


def update_user(name: str, changes: dict[str, Any]) -> Call[User]:
    return Call("PATCH", f"{API}/users/{_segment(name)}", one(User),
                json={key: value for key, value in changes.items() if value is not None})


def delete_user(name: str) -> Call[None]:
    return Call("DELETE", f"{API}/users/{_segment(name)}", nothing)


def _audit_page(response: httpx.Response) -> AuditPage:
    data = json_body(response)
    return AuditPage(entries=[from_json(AuditEntry, item) for item in data["entries"]], next=data.get("next"))


def audit(limit: int, before: int | None, action: str | None, actor: str | None) -> Call[AuditPage]:
    return Call("GET", f"{API}/audit", _audit_page,
                params=query(limit=limit, before=before, action=action, actor=actor))


def health() -> Call[Health]:
    # 503 carries the same document, saying which check failed: an answer, not an error.
    return Call("GET", "/healthz", one(Health), accept=(503,))
