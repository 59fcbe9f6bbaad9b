"""Who is calling the WebDAV tree: HTTP Basic (through identity.authenticate) or a token.

WebDAV clients send their password with every request, and a file manager browsing a
folder sends dozens at once; an argon2 check on each would make browsing crawl and hand
anyone a cheap way to burn CPU. So a successful Basic login is remembered for
``CACHE_SECONDS``, under a keyed hash of name and password (the password itself is
never kept). Each cached use re-reads the user, so a disabled account or a changed
password ends access at once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from datetime import datetime

from starlette.requests import Request

from agora.core.errors import AuthenticationFailed, EncryptionRequired, RateLimited
from agora.core.identity import TOKEN_PREFIX, ClientInfo, Identity, User
from agora.files.dav_request import DavError

CACHE_SECONDS = 60.0
MAX_CACHED = 4096
CHALLENGE = {"WWW-Authenticate": 'Basic realm="agora", charset="UTF-8"'}


def _unauthorized(detail: str) -> DavError:
    return DavError(401, detail, headers=CHALLENGE)


class DavAuthenticator:
    def __init__(self, identity: Identity):
        self.identity = identity
        self._key = secrets.token_bytes(32)  # per process: the cache means nothing elsewhere
        self._cache: dict[bytes, tuple[float, datetime]] = {}  # digest -> (expiry, user's updated_at)

    async def user(self, request: Request) -> User:
        header = request.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer":
            user = await self.identity.user_for_token(credentials.strip())
            if user is None:
                raise _unauthorized("the token is unknown, revoked or expired")
            return user
        if scheme != "basic":
            raise _unauthorized("log in with your user name and password, or a token as the password")
        name, password = _basic(credentials)
        if password.startswith(TOKEN_PREFIX):
            # A token as the password: for clients (OS mounts) that only know Basic.
            user = await self.identity.user_for_token(password)
            if user is None or user.name != name:
                raise _unauthorized("the token is unknown, revoked or expired")
            return user
        return await self._password(request, name, password)

    async def _password(self, request: Request, name: str, password: str) -> User:
        client = ClientInfo(address=request.client.host if request.client else "unknown",
                            protocol="dav", secure=request.url.scheme == "https")
        # How the password travelled is part of the key: a login remembered from TLS or
        # loopback must not let the same password through in clear from elsewhere.
        protected = client.secure or client.loopback
        digest = hmac.new(self._key, f"{name}\0{password}\0{protected}".encode("utf-8", "surrogatepass"),
                          hashlib.sha256).digest()
        cached = self._cache.get(digest)
        if cached and cached[0] > time.monotonic():
            user = await self.identity.find_user(name)
            if user is not None and not user.disabled and user.updated_at == cached[1]:
                return user
        self._cache.pop(digest, None)
        try:
            user = await self.identity.authenticate(name, password, client)
        except RateLimited as error:
            retry = str(max(1, round(error.retry_after)))
            raise DavError(429, error.detail, headers={"Retry-After": retry}) from None
        except EncryptionRequired as error:
            raise DavError(403, f"{error.detail}: use https") from None
        except AuthenticationFailed as error:
            raise _unauthorized(error.detail) from None
        self._remember(digest, user.updated_at)
        return user

    def _remember(self, digest: bytes, updated_at: datetime) -> None:
        now = time.monotonic()
        if len(self._cache) >= MAX_CACHED:
            for key in [key for key, (expiry, _) in self._cache.items() if expiry <= now]:
                del self._cache[key]
            while len(self._cache) >= MAX_CACHED:
                del self._cache[next(iter(self._cache))]  # the oldest
        self._cache[digest] = (now + CACHE_SECONDS, updated_at)


def _basic(credentials: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise _unauthorized("malformed Basic credentials") from None
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        text = decoded.decode("latin-1")  # what older clients send
    name, colon, password = text.partition(":")
    if not colon:
        raise _unauthorized("malformed Basic credentials")
    return name, password
