"""The synchronous client."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Mapping

import httpx

from agora.client import core
from agora.client._http import DEFAULT_TIMEOUT, RETRIES, SyncAPI, SyncTransport, Verify
from agora.client.bank import SyncBank
from agora.client.files import SyncFiles
from agora.client.mail import SyncMail
from agora.client.sql import SyncSQL
from agora.client.models import AuditPage, Health, NewToken, Token, User


class Client(SyncAPI):
    """Agora's HTTP API, blocking.

    ``verify``: True (system CAs), False, or the path of a CA bundle such as the
    server's self-signed ``DATA_DIR/tls/cert.pem``. ``transport``: an httpx transport
    (for a local address, say); it then owns TLS settings and ``verify`` is unused.
    ``retries``: how many times at most an idempotent call (GET, PUT, DELETE, a bank
    transfer with its id) is sent when no answer comes or the answer is 502/503/504,
    waiting as the server's Retry-After asks; 1 sends each call once.
    Errors are :class:`agora.client.errors.AgoraError` subclasses.
    """

    def __init__(self, base_url: str, token: str | None = None, *, verify: Verify = True,
                 timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
                 transport: httpx.BaseTransport | None = None, headers: Mapping[str, str] | None = None,
                 retries: int = RETRIES):
        super().__init__(SyncTransport(base_url, token=token, verify=verify, timeout=timeout,
                                       transport=transport, headers=headers, retries=retries))
        self.files = SyncFiles(self._transport)
        self.bank = SyncBank(self._transport)
        self.mail = SyncMail(self._transport)
        self.sql = SyncSQL(self._transport)

    @property
    def base_url(self) -> str:
        return self._transport.base_url

    @property
    def token(self) -> str | None:
        return self._transport.token

    @token.setter
    def token(self, token: str | None) -> None:
        self._transport.token = token

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- tokens and the caller's account --------------------------------------------

    def login(self, username: str, password: str, *, name: str = "agora-client",
              expires_in: int | float | timedelta | None = None) -> NewToken:
        """Create a token with a password; the client uses it from now on."""
        new = self._run(core.create_token(username, password, name, expires_in))
        self.token = new.token
        return new

    def me(self) -> User:
        return self._run(core.me())

    def tokens(self) -> list[Token]:
        return self._run(core.tokens())

    def revoke_token(self, token_id: str) -> None:
        self._run(core.revoke_token(token_id))

    def change_password(self, current: str, new: str) -> None:
        self._run(core.change_password(current, new))

    def health(self) -> Health:
        return self._run(core.health())

    # -- admin ----------------------------------------------------------------------

    def users(self) -> list[User]:
        return self._run(core.users())

    def user(self, name: str) -> User:
        return self._run(core.user(name))

    def create_user(self, name: str, password: str, role: str = "user", quota_bytes: int | None = None) -> User:
        return self._run(core.create_user(name, password, role, quota_bytes))

    def update_user(self, name: str, *, password: str | None = None, role: str | None = None,
                    disabled: bool | None = None, quota_bytes: int | None = None) -> User:
        changes = {"password": password, "role": role, "disabled": disabled, "quota_bytes": quota_bytes}
        return self._run(core.update_user(name, changes))

    def delete_user(self, name: str) -> None:
        self._run(core.delete_user(name))

    def audit(self, limit: int = 100, before: int | None = None, action: str | None = None,
              actor: str | None = None) -> AuditPage:
        return self._run(core.audit(limit, before, action, actor))
