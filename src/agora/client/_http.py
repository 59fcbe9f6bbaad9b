"""The request/decode core shared by the sync and the async client.

An API operation is a :class:`Call`: the request to send and how to decode the answer,
with no I/O in it. :class:`SyncTransport` and :class:`AsyncTransport` send calls over
httpx and turn failures into :mod:`agora.client.errors`. So every operation is written
once, and the two clients are thin façades over the same calls.

A service adds its sub-API as a module of calls plus a :class:`SyncAPI` and an
:class:`AsyncAPI` subclass, and one attribute in each client (``client.files = ...``).
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
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

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
# A proxy, an overloaded server or a blip of the server's database: the request did not
# run, or ran in a way its retry will answer the same (idempotent calls only).
RETRY_STATUSES = frozenset({502, 503, 504})
# Attempts of an idempotent call, and the first pause between them: doubling each time
# (1.5 s in all before a down server is reported), or what the server's Retry-After
# asks (4 s in all at the 1 s it asks after a database blip), at most MAX_PAUSE each.
RETRIES = 5
RETRY_PAUSE = 0.1
MAX_PAUSE = 10.0


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    decode: Callable[[httpx.Response], T]
    json: Any = None
    params: Mapping[str, Any] | None = None
    # Statuses besides 2xx whose body is an answer, not an error (503 from /healthz).
    accept: tuple[int, ...] = ()
    # Whether sending it twice does what sending it once does, so that it may be sent
    # again when the answer is lost or says "not now": None means by its method (GET,
    # HEAD, PUT, DELETE, OPTIONS); a POST that carries its own id (a bank transfer) is.
    idempotent: bool | None = None
    # How many times at most it is sent (None: the transport's ``retries``).
    attempts: int | None = None
    headers: Mapping[str, str] | None = None  # besides the client's own

    @property
    def repeatable(self) -> bool:
        return self.method in IDEMPOTENT_METHODS if self.idempotent is None else self.idempotent

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


def _sent(error: httpx.TransportError) -> bool:
    """Whether the request may have reached the server (so only an idempotent one may
    be sent again): not when the connection could not even be made."""
    return not isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout))


def _tls_refused(error: httpx.TransportError) -> bool:
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return True
        cause = cause.__cause__ or cause.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(error)


def _pause(attempt: int, response: httpx.Response | None) -> float:
    """Seconds to wait before the next attempt: the server's Retry-After when it gave
    one, else a doubling backoff; with jitter, so clients refused together do not all
    come back at the same instant."""
    pause = RETRY_PAUSE * 2 ** attempt
    if response is not None:
        try:
            pause = max(pause, float(response.headers.get("retry-after", "")))
        except ValueError:
            pass  # absent, or an HTTP date: the server never sends one
    return min(MAX_PAUSE, pause) * random.uniform(0.8, 1.2)


class _Transport:
    def __init__(self, http: httpx.Client | httpx.AsyncClient, retries: int = RETRIES):
        self.http = http
        self.retries = max(1, retries)

    def _attempts(self, call: Call[Any]) -> int:
        return max(1, call.attempts if call.attempts is not None else self.retries)

    def _again(self, call: Call[Any], attempt: int, *, response: httpx.Response | None = None,
               error: httpx.TransportError | None = None) -> bool:
        """Whether attempt number ``attempt`` (0-based) is to be followed by another."""
        if attempt + 1 >= self._attempts(call):
            return False
        if error is not None:
            if _tls_refused(error):
                return False  # an untrusted certificate stays untrusted
            return call.repeatable or not _sent(error)
        return response is not None and response.status_code in RETRY_STATUSES and call.repeatable

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
                 transport: httpx.BaseTransport | None = None, headers: Mapping[str, str] | None = None,
                 retries: int = RETRIES):
        super().__init__(httpx.Client(transport=transport, **_options(base_url, token, verify, timeout, headers)),
                         retries)

    def run(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = self.http.request(call.method, call.path, json=call.json, params=call.params,
                                             headers=call.headers)
            except httpx.TransportError as error:
                if not self._again(call, attempt, error=error):
                    raise _connection_failed(self.base_url, error) from None
                time.sleep(_pause(attempt, None))
            else:
                if not self._again(call, attempt, response=response):
                    return call.finish(response)
                response.close()
                time.sleep(_pause(attempt, response))
            attempt += 1

    def close(self) -> None:
        self.http.close()


class AsyncTransport(_Transport):
    http: httpx.AsyncClient

    def __init__(self, base_url: str, *, token: str | None = None, verify: Verify = True,
                 timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
                 transport: httpx.AsyncBaseTransport | None = None,
                 headers: Mapping[str, str] | None = None, retries: int = RETRIES):
        super().__init__(httpx.AsyncClient(transport=transport,
                                           **_options(base_url, token, verify, timeout, headers)), retries)

    async def run(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = await self.http.request(call.method, call.path, json=call.json, params=call.params,
                                             headers=call.headers)
            except httpx.TransportError as error:
                if not self._again(call, attempt, error=error):
                    raise _connection_failed(self.base_url, error) from None
                await asyncio.sleep(_pause(attempt, None))
            else:
                if not self._again(call, attempt, response=response):
                    return call.finish(response)
                await response.aclose()
                await asyncio.sleep(_pause(attempt, response))
            attempt += 1

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
