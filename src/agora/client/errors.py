"""What the client raises: one class per kind of refusal, each carrying the server's
RFC 9457 problem details, so callers can branch on the class and show ``detail``."""

from __future__ import annotations

from typing import Any

import httpx


class AgoraError(Exception):
    """A request the server refused (or that never reached it: see ConnectionFailed).

    ``status`` is the HTTP status (None when there was no answer), ``type``, ``title``
    and ``detail`` come from the problem document, ``problem`` is the whole document
    (extension members such as ``errors`` for invalid input included).
    """

    def __init__(self, status: int | None, type: str, title: str, detail: str | None,
                 problem: dict[str, Any] | None = None):
        super().__init__(detail or title)
        self.status = status
        self.type = type
        self.title = title
        self.detail = detail
        self.problem = dict(problem or {})

    @property
    def message(self) -> str:
        """One line for a person: the detail, else the title."""
        return self.detail or self.title

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status!r}, detail={self.message!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # The default rebuilds from self.args (the message alone), which the
        # constructors do not take; errors must survive pickling (process pools).
        return _restore, (type(self), self.message, self.__dict__)


def _restore(cls: type[AgoraError], message: str, state: dict[str, Any]) -> AgoraError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class ConnectionFailed(AgoraError):
    """No answer: the server is down, unreachable, too slow, or its TLS is not trusted."""

    def __init__(self, detail: str):
        super().__init__(None, "urn:agora:client:connection-failed", "Connection failed", detail)


class UnexpectedResponse(AgoraError):
    """The server answered, but not with what the API promises (a proxy's page, say)."""


class InvalidRequest(AgoraError):
    """400 or 422: the request itself is wrong; ``problem.get("errors")`` says where."""


class Unauthorized(AgoraError):
    """401: no token, or one that is unknown, revoked or expired; or a wrong password."""


class Forbidden(AgoraError):
    """403: authenticated, but not allowed (not an admin, wrong current password...)."""


class NotFound(AgoraError):
    """404."""


class Conflict(AgoraError):
    """409: the name is taken, or the change would leave no enabled admin."""


class PreconditionFailed(AgoraError):
    """412: the file is no longer the version the request named (If-Match)."""


class TooLarge(AgoraError):
    """413: the request body exceeds a configured limit, or a quota."""


class RateLimited(AgoraError):
    """429: too many failed attempts; try again after ``retry_after`` seconds."""

    def __init__(self, *args: Any, retry_after: float | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.retry_after = retry_after


class ServerError(AgoraError):
    """5xx: the server failed; the details are in its log, not here."""


_BY_STATUS: dict[int, type[AgoraError]] = {
    400: InvalidRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict,
    412: PreconditionFailed, 413: TooLarge, 422: InvalidRequest, 429: RateLimited,
}


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: the server never sends one, a proxy might


def error_for(response: httpx.Response) -> AgoraError:
    """The exception for a non-success response, problem details included when present."""
    status = response.status_code
    problem: dict[str, Any] = {}
    if response.headers.get("content-type", "").split(";")[0].strip() in (
            "application/problem+json", "application/json"):
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            problem = body
    title = str(problem.get("title") or response.reason_phrase or f"HTTP {status}")
    detail = problem.get("detail")
    if detail is None and not problem:
        # Not a problem document: keep a short, single-line excerpt of what came back.
        excerpt = " ".join(response.text.split())[:200]
        detail = f"HTTP {status} {response.reason_phrase}" + (f": {excerpt}" if excerpt else "")
    args = (status, str(problem.get("type") or "about:blank"), title,
            str(detail) if detail is not None else None, problem)
    if status >= 500:
        return ServerError(*args)
    cls = _BY_STATUS.get(status)
    if cls is RateLimited:
        return RateLimited(*args, retry_after=_retry_after(response))
    if cls is None:
        return UnexpectedResponse(*args)
    return cls(*args)
