"""The request/decode core shared by the sync and the async client.

An API operation is a :class:`Call`: the request to send and how to decode the answer,
with no I/O in it. :class:`SyncTransport` and :class:`AsyncTransport` send calls over
httpx and turn failures into :mod:`agora.client.errors`. So every operation is written
once, and the two clients are thin façades over the same calls.

A service adds its sub-API as a module of calls plus a :class:`SyncAPI` and an
:class:`AsyncAPI` subclass, and one attribute in each client (``client.files = ...``).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from os import PathLike
from typing import Any, Awaitable, Callable, Generic, Mapping, TypeVar, Union

import httpx

from agora import __version__
from agora.client.errors import ConnectionFailed, UnexpectedResponse, error_for
from agora.client.models import from_json

T = TypeVar("T")
M = TypeVar("M")

# True: the system's CAs; False: no verification; a path: that CA bundle (PEM), for a
# server with a self-signed certificate.
Verify = Union[bool, str, PathLike]

DEFAULT_TIMEOUT = 30.0
USER_AGENT = f"agora-client/{__version__}"


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    decode: Callable[[httpx.Response], T]
    json: Any = None
    params: Mapping[str, Any] | None = None
    # Statuses besides 2xx whose body is an answer, not an error (503 from /healthz).
    accept: tuple[int, ...] = ()

    def finish(self, response: httpx.Response) -> T:
        if not (response.is_success or response.status_code in self.accept):
            raise error_for(response)
        try:
            return self.decode(response)
        except (ValueError, TypeError, KeyError) as error:
            raise UnexpectedResponse(response.status_code, "about:blank", "Unexpected response",
                                     f"cannot read the answer to {self.method} {self.path}: {error}") from None


# -- decoders -----------------------------------------------------------------------


def json_body(response: httpx.Response) -> Any:
    if response.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise ValueError(f"expected JSON, got {response.headers.get('content-type') or 'no content type'}")
    return response.json()


def one(cls: type[M]) -> Callable[[httpx.Response], M]:
    return lambda response: from_json(cls, json_body(response))


def many(cls: type[M]) -> Callable[[httpx.Response], list[M]]:
    def decode(response: httpx.Response) -> list[M]:
        items = json_body(response)
        if not isinstance(items, list):
            raise ValueError("expected a JSON array")
        return [from_json(cls, item) for item in items]

    return decode


def nothing(response: httpx.Response) -> None:
    return None


def query(**params: Any) -> dict[str, Any]:
    """Query parameters without the unset ones."""
    return {name: value for name, value in params.items() if value is not None}


# -- transports ---------------------------------------------------------------------


def ssl_verify(verify: Verify) -> bool | ssl.SSLContext:
    if isinstance(verify, bool):
        return verify
    # httpx deprecates CA paths as `verify`; a context says the same thing explicitly.
    return ssl.create_default_context(cafile=str(verify))


def _options(base_url: str, token: str | None, verify: Verify, timeout: float | httpx.Timeout | None,
             headers: Mapping[str, str] | None) -> dict[str, Any]:
    if not base_url.startswith(("http://", "https://")):
        raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
    all_headers = {"User-Agent": USER_AGENT, "Accept": "application/json, application/problem+json"}
    all_headers.update(headers or {})
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    return {"base_url": base_url.rstrip("/"), "headers": all_headers, "verify": ssl_verify(verify),
            "timeout": timeout}


def _connection_failed(base_url: str, error: httpx.TransportError) -> ConnectionFailed:
    reason = str(error) or type(error).__name__
    if isinstance(error, httpx.TimeoutException):
        reason = f"timed out ({type(error).__name__})"
    elif "CERTIFICATE_VERIFY_FAILED" in reason:
        reason = "its TLS certificate is not trusted"
    return ConnectionFailed(f"cannot reach {base_url}: {reason}")


class _Transport:
    def __init__(self, http: httpx.Client | httpx.AsyncClient):
        self.http = http

    @property
    def base_url(self) -> str:
        return str(self.http.base_url).rstrip("/")

    @property
    def token(self) -> str | None:
        value = self.http.headers.get("Authorization", "")
        return value[len("Bearer "):] if value.startswith("Bearer ") else None

    @token.setter
    def token(self, token: str | None) -> None:
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"
        else:
            self.http.headers.pop("Authorization", None)


class SyncTransport(_Transport):
    http: httpx.Client

    def __init__(self, base_url: str, *, token: str | None = None, verify: Verify = True,
                 timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
                 transport: httpx.BaseTransport | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(httpx.Client(transport=transport, **_options(base_url, token, verify, timeout, headers)))

    def run(self, call: Call[T]) -> T:
        try:
            response = self.http.request(call.method, call.path, json=call.json, params=call.params)
        except httpx.TransportError as error:
            raise _connection_failed(self.base_url, error) from None
        return call.finish(response)

    def close(self) -> None:
        self.http.close()


class AsyncTransport(_Transport):
    http: httpx.AsyncClient

    def __init__(self, base_url: str, *, token: str | None = None, verify: Verify = True,
                 timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
                 transport: httpx.AsyncBaseTransport | None = None,
                 headers: Mapping[str, str] | None = None):
        super().__init__(httpx.AsyncClient(transport=transport,
                                           **_options(base_url, token, verify, timeout, headers)))

    async def run(self, call: Call[T]) -> T:
        try:
            response = await self.http.request(call.method, call.path, json=call.json, params=call.params)
        except httpx.TransportError as error:
            raise _connection_failed(self.base_url, error) from None
        return call.finish(response)

    async def close(self) -> None:
        await self.http.aclose()


class SyncAPI:
    """Base of a sync sub-API: runs its calls on the client's transport."""

    def __init__(self, transport: SyncTransport):
        self._transport = transport

    def _run(self, call: Call[T]) -> T:
        return self._transport.run(call)


class AsyncAPI:
    """Base of an async sub-API."""

    def __init__(self, transport: AsyncTransport):
        self._transport = transport

    def _run(self, call: Call[T]) -> Awaitable[T]:
        return self._transport.run(call)
