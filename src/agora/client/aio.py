"""The asynchronous client: the same calls as :class:`agora.client.Client`, awaited."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Mapping

import httpx

from agora.client import core
from agora.client._http import DEFAULT_TIMEOUT, RETRIES, AsyncAPI, AsyncTransport, Verify
from agora.client.bank import AsyncBank
from agora.client.files import AsyncFiles
from agora.client.mail import AsyncMail
from agora.client.sql import AsyncSQL
from agora.client.models import AuditPage, Health, NewToken, Token, User


class AsyncClient(AsyncAPI):
    """Agora's HTTP API for asyncio; see :class:`agora.client.Client` for the arguments."""

    def __init__(self, base_url: str, token: str | None = None, *, verify: Verify = True,
                 timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
                 transport: httpx.AsyncBaseTransport | None = None,
                 headers: Mapping[str, str] | None = None, retries: int = RETRIES):
        super().__init__(AsyncTransport(base_url, token=token, verify=verify, timeout=timeout,
                                        transport=transport, headers=headers, retries=retries))
        self.files = AsyncFiles(self._transport)
        self.bank = AsyncBank(self._transport)
        self.mail = AsyncMail(self._transport)
        self.sql = AsyncSQL(self._transport)

    @property
    def base_url(self) -> str:
        return self._transport.base_url

    @property
    def token(self) -> str | None:
        return self._transport.token

    @token.setter
    def token(self, token: str | None) -> None:
        self._transport.token = token

    async def aclose(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    # -- tokens and the caller's account --------------------------------------------

    async def login(self, username: str, password: str, *, name: str = "agora-client",
                    expires_in: int | float | timedelta | None = None) -> NewToken:
        """Create a token with a password; the client uses it from now on."""
        new = await self._run(core.create_token(username, password, name, expires_in))
        self.token = new.token
        return new

    async def me(self) -> User:
        return await self._run(core.me())

    async def tokens(self) -> list[Token]:
        return await self._run(core.tokens())

    async def revoke_token(self, token_id: str) -> None:
        await self._run(core.revoke_token(token_id))

    async def change_password(self, current: str, new: str) -> None:
        await self._run(core.change_password(current, new))

    async def health(self) -> Health:
        return await self._run(core.health())

    # -- admin ----------------------------------------------------------------------

    async def users(self) -> list[User]:
        return await self._run(core.users())

    async def user(self, name: str) -> User:
        return await self._run(core.user(name))

    async def create_user(self, name: str, password: str, role: str = "user",
                          quota_bytes: int | None = None) -> User:
        return await self._run(core.create_user(name, password, role, quota_bytes))

    async def update_user(self, name: str, *, password: str | None = None, role: str | None = None,
                          disabled: bool | None = None, quota_bytes: int | None = None) -> User:
        changes = {"password": password, "role": role, "disabled": disabled, "quota_bytes": quota_bytes}
        return await self._run(core.update_user(name, changes))

    async def delete_user(self, name: str) -> None:
        await self._run(core.delete_user(name))

    async def audit(self, limit: int = 100, before: int | None = None, action: str | None = None,
                    actor: str | None = None) -> AuditPage:
        return await self._run(core.audit(limit, before, action, actor))
